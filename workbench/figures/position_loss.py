"""Figures of loss and KL-to-teacher by position (store group ``position_loss``, ``workbench.evals.position_loss``).

- :func:`by_position`: two panels (loss, KL to the teacher) against the position bucket, one line per checkpoint
  with its bootstrap interval as a band; buckets beyond a checkpoint's trained positions drawn dashed.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import plotly.graph_objects as go
import xarray as xr
from plotly.subplots import make_subplots

from workbench.figures.kd_signal import _checkpoints


def by_position(ds: xr.Dataset, *, tokens: str = "answers", checkpoints: Sequence[str] | None = None) -> go.Figure:
    """Loss and KL(teacher || checkpoint) by position bucket, mean and interval over documents."""
    if tokens not in ds["tokens"].values:
        raise ValueError(f"tokens {tokens!r} not in the data (has {', '.join(map(str, ds['tokens'].values))})")
    names = _checkpoints(ds, checkpoints)
    has_kl = bool(np.isfinite(ds["kl"].values).any())
    panels = ["loss (nats)"] + (["KL(teacher || checkpoint) (nats)"] if has_kl else [])
    fig = make_subplots(rows=1, cols=len(panels), subplot_titles=panels)
    x = [str(b) for b in ds["position_bucket"].values]
    palette = [
        "#1f77b4",
        "#d62728",
        "#2ca02c",
        "#ff7f0e",
        "#9467bd",
        "#8c564b",
        "#e377c2",
        "#7f7f7f",
        "#bcbd22",
        "#17becf",
    ]
    for i, name in enumerate(names):
        color = palette[i % len(palette)]
        for col, var in enumerate(["loss", "kl"][: len(panels)], start=1):
            cell = ds.sel(checkpoint=name, tokens=tokens)
            y, lo, hi = (cell[v].values for v in (var, f"{var}_lo", f"{var}_hi"))
            extra = cell["extrapolation"].values if "extrapolation" in cell.coords else np.zeros(len(x), bool)
            fig.add_trace(
                go.Scatter(
                    x=x + x[::-1],
                    y=list(hi) + list(lo[::-1]),
                    fill="toself",
                    line=dict(width=0),
                    fillcolor=color,
                    opacity=0.15,
                    hoverinfo="skip",
                    showlegend=False,
                    legendgroup=name,
                ),
                row=1,
                col=col,
            )
            inside = np.where(extra, np.nan, y)
            beyond = np.where(extra | np.r_[extra[1:], False], y, np.nan)  # joined to the last inside point
            fig.add_trace(
                go.Scatter(
                    x=x,
                    y=inside,
                    mode="lines+markers",
                    name=name,
                    line=dict(color=color),
                    legendgroup=name,
                    showlegend=col == 1,
                ),
                row=1,
                col=col,
            )
            fig.add_trace(
                go.Scatter(
                    x=x,
                    y=beyond,
                    mode="lines+markers",
                    name=f"{name} (beyond its window)",
                    line=dict(color=color, dash="dash"),
                    legendgroup=name,
                    showlegend=False,
                ),
                row=1,
                col=col,
            )
    fig.update_xaxes(title_text="position of the predicted token (bucket)")
    what = "answer tokens" if tokens == "answers" else "all tokens"
    fig.update_layout(
        title=f"Held-out long documents: loss and KL to the teacher by position ({what}; "
        f"mean and {ds['loss_lo'].attrs.get('description', 'interval')}); dashed = beyond the "
        "checkpoint's trained positions",
        template="plotly_white",
    )
    return fig
