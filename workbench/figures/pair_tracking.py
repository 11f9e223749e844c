"""Figure of the pair updates tracked during training (``pair_updates.jsonl`` records of
``workbench.train.pair_tracking``): which RoPE pairs of W_q / W_k move while a phase trains.

- :func:`pair_updates_figure`: left, the latest record's relative update since the phase start per
  (layer, head) x pair; right, the mean over layers and heads per pair against the step (one row a record).
  The phase's critical pair (the first that does not complete a rotation within the phase's length) is marked.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots


def pair_updates_figure(records: Sequence[dict[str, Any]], *, which: str = "q", run: str = "") -> go.Figure:
    """Heatmaps of the tracked relative updates of W_``which`` (q or k); records of the latest phase only."""
    if which not in ("q", "k"):
        raise ValueError(f"which must be 'q' or 'k', got {which!r}")
    key = f"{which}_rel_update"
    records = [r for r in records if r.get("kind") == "pair_updates" and key in r]
    if not records:
        raise ValueError(f"no pair-update records{f' in {run}' if run else ''} (set track_every in the run config)")
    phase = records[-1]["phase"]
    recs = [r for r in records if r["phase"] == phase]
    last = np.asarray(recs[-1][key], dtype=np.float64)  # [layer, head, pair]
    n_layers, n_heads, n_pairs = last.shape
    rows = [f"L{i}.H{h}" for i in range(n_layers) for h in range(n_heads)]
    steps = [int(r["step"]) for r in recs]
    by_step = np.stack([np.asarray(r[key], dtype=np.float64).mean(axis=(0, 1)) for r in recs])  # [record, pair]
    fig = make_subplots(
        rows=1,
        cols=2,
        column_widths=[0.5, 0.5],
        subplot_titles=(f"step {steps[-1]}: per layer.head and pair", "mean over layers and heads, by step"),
    )
    fig.add_trace(
        go.Heatmap(
            z=last.reshape(-1, n_pairs),
            x=list(range(n_pairs)),
            y=rows,
            coloraxis="coloraxis",
            hovertemplate="%{y} pair %{x}: %{z:.3g}<extra></extra>",
        ),
        row=1,
        col=1,
    )
    fig.add_trace(
        go.Heatmap(
            z=by_step,
            x=list(range(n_pairs)),
            y=steps,
            coloraxis="coloraxis",
            hovertemplate="step %{y} pair %{x}: %{z:.3g}<extra></extra>",
        ),
        row=1,
        col=2,
    )
    critical = recs[-1].get("critical_pair")
    if critical is not None:
        for col in (1, 2):
            fig.add_vline(x=critical - 0.5, line=dict(color="black", dash="dash"), row=1, col=col)
        fig.add_annotation(
            x=critical, y=1.0, yref="paper", xref="x", text="critical pair", showarrow=False, yanchor="bottom"
        )
    fig.update_xaxes(title_text="RoPE pair j (higher = longer wavelength)")
    fig.update_yaxes(title_text="step", row=1, col=2)
    fig.update_layout(
        title=f"{run + ': ' if run else ''}relative update of W_{which} since the start of phase "
        f"{phase!r} (theta {recs[-1].get('rope_theta', '?'):g}, L={recs[-1].get('seq_len', '?')})",
        coloraxis=dict(colorscale="Viridis", colorbar=dict(title="|dW|/|W|")),
        template="plotly_white",
    )
    return fig
