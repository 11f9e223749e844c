"""Figures of the cross-document KD signal (store group ``kd_signal``, ``workbench.measurements.cross_document``).

- :func:`kl_by_distance`: mean KL(full || document-masked) by distance of the token to its document start,
  one line per checkpoint (log-spaced buckets on a categorical axis, log y);
- :func:`kl_by_kind`: mean KL by kind of the predicted token, bars grouped by kind, one colour per checkpoint.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import plotly.graph_objects as go
import xarray as xr

YLABEL = "KL(full window || own document) [nats]"


def _checkpoints(ds: xr.Dataset, checkpoints: Sequence[str] | None) -> list[str]:
    names = [str(c) for c in ds["checkpoint"].values]
    if checkpoints is None:
        return names
    missing = [c for c in checkpoints if c not in names]
    if missing:
        raise ValueError(f"checkpoint(s) {missing} not in the data (has: {', '.join(names)})")
    return list(checkpoints)


def _title(ds: xr.Dataset, what: str) -> str:
    tokens = "KD targets" if ds.attrs.get("summary_tokens", "kd_targets") == "kd_targets" else "all tokens"
    return (
        f"Cross-document KD signal {what}: mean over {tokens} "
        f"({ds.attrs.get('n_windows', '?')} windows of {ds.attrs.get('seq_len', '?')} tokens)"
    )


def kl_by_distance(
    ds: xr.Dataset, *, stat: str = "mean", checkpoints: Sequence[str] | None = None, log_y: bool = True
) -> go.Figure:
    """Lines: ``{stat}_by_distance`` (mean, median, p95) against the distance bucket, one per checkpoint."""
    var = f"{stat}_by_distance"
    if var not in ds:
        raise ValueError(f"no variable {var!r} in the data (stat is one of mean, median, p95, share)")
    x = [str(b) for b in ds["distance_bucket"].values]
    counts = ds["n_by_distance"].values if "n_by_distance" in ds.coords else np.zeros(len(x))
    fig = go.Figure()
    for name in _checkpoints(ds, checkpoints):
        y = ds[var].sel(checkpoint=name).values.astype(float)
        fig.add_trace(
            go.Scatter(
                x=x,
                y=y,
                mode="lines+markers",
                name=name,
                customdata=counts,
                hovertemplate="distance %{x}<br>" + stat + " KL %{y:.3g} nats<br>%{customdata} tokens"
                "<extra>" + name + "</extra>",
            )
        )
    fig.update_layout(
        title=_title(ds, "by distance to the document start"),
        template="plotly_white",
        xaxis_title="distance of the token to its document start [tokens] (0: the document's first token)",
        yaxis_title=YLABEL.replace("KL", f"{stat} KL"),
        legend_title="checkpoint",
    )
    fig.update_xaxes(type="category")
    if log_y:
        fig.update_yaxes(type="log")
    return fig


def kl_by_kind(
    ds: xr.Dataset, *, stat: str = "mean", checkpoints: Sequence[str] | None = None, log_y: bool = False
) -> go.Figure:
    """Grouped bars: ``{stat}_by_kind`` per kind of the predicted token, one bar colour per checkpoint
    (kinds no token of the data has are left out)."""
    var = f"{stat}_by_kind"
    if var not in ds:
        raise ValueError(f"no variable {var!r} in the data (stat is one of mean, median, p95, share)")
    kinds = [str(k) for k in ds["kind"].values]
    counts = ds["n_by_kind"].values if "n_by_kind" in ds.coords else np.ones(len(kinds))
    keep = [i for i, c in enumerate(counts) if c > 0]
    fig = go.Figure()
    for name in _checkpoints(ds, checkpoints):
        y = ds[var].sel(checkpoint=name).values.astype(float)
        fig.add_trace(
            go.Bar(
                x=[kinds[i] for i in keep],
                y=[y[i] for i in keep],
                name=name,
                customdata=[int(counts[i]) for i in keep],
                hovertemplate="%{x}<br>" + stat + " KL %{y:.3g} nats<br>%{customdata} tokens"
                "<extra>" + name + "</extra>",
            )
        )
    fig.update_layout(
        title=_title(ds, "by kind of the predicted token"),
        template="plotly_white",
        barmode="group",
        xaxis_title="kind of the predicted token",
        yaxis_title=YLABEL.replace("KL", f"{stat} KL"),
        legend_title="checkpoint",
    )
    if log_y:
        fig.update_yaxes(type="log")
    return fig


def figures(ds: xr.Dataset) -> dict[str, go.Figure]:
    """Both figures, named for ``workbench.figures.save_figures``."""
    return {"kd-signal-by-distance": kl_by_distance(ds), "kd-signal-by-kind": kl_by_kind(ds)}
