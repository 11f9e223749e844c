"""Figures of perturbation traces and the repeated-token experiment, from the store groups ``traces`` and
``repeated_tokens`` (``workbench.interventions``).

- :func:`divergence_by_layer`: one line per spec, a trace variable (residual change, logit-lens KL ...)
  against layer, for one checkpoint, averaged over position buckets or for one bucket;
- :func:`divergence_heatmap`: layer x position bucket for one spec;
- :func:`final_kl_bars`: final-logit KL (or JS / top-1 flips) per spec, one bar group per checkpoint;
- :func:`repeated_kl_vs_offset`: repeated-token KL (to the first copy, KD signal, vs clean) against the
  copy's absolute offset, one line per (checkpoint, spec).
"""

from __future__ import annotations

from collections.abc import Sequence

import plotly.graph_objects as go
import xarray as xr

TITLES = {
    "resid_rel_l2": "residual stream ||x' - x|| / ||x||",
    "resid_cos": "residual stream cosine(x', x)",
    "attn_out_rel_l2": "attention output relative change",
    "q_rel_l2": "post-RoPE q relative change",
    "k_rel_l2": "post-RoPE k relative change",
    "lens_kl": "logit-lens KL(clean || perturbed) [nats]",
    "pattern_js": "attention-pattern JS divergence [nats]",
    "final_kl": "final-logit KL(clean || perturbed) [nats]",
    "final_js": "final-logit JS divergence [nats]",
    "top1_flip": "fraction of top-1 flips",
    "kl_to_first": "KL(copy || first copy) [nats]",
    "kl_to_mean": "KD signal KL(copy || copy mean) [nats]",
    "kl_vs_clean": "KL(clean || perturbed) at the copy [nats]",
}


def _checkpoint(ds: xr.Dataset, checkpoint: str | None) -> xr.Dataset:
    names = [str(c) for c in ds["checkpoint"].values]
    if not names:
        raise ValueError("no checkpoint in the data")
    if checkpoint is None:
        checkpoint = names[-1]
    if checkpoint not in names:
        raise ValueError(f"no checkpoint {checkpoint!r} in the data (has: {', '.join(names)})")
    return ds.sel(checkpoint=checkpoint)


def _var(ds: xr.Dataset, var: str) -> xr.DataArray:
    if var not in ds:
        raise ValueError(f"no variable {var!r} in the data (has {', '.join(map(str, ds.data_vars))})")
    return ds[var]


def _specs(ds: xr.Dataset, specs: Sequence[str] | None, *, skip_clean: bool) -> list[str]:
    names = [str(s) for s in ds["spec"].values]
    chosen = list(specs) if specs is not None else [s for s in names if not (skip_clean and s == "clean")]
    missing = [s for s in chosen if s not in names]
    if missing:
        raise ValueError(f"no spec {missing[0]!r} in the data (has: {', '.join(names)})")
    return chosen


def _bucket_labels(ds: xr.Dataset) -> list[str]:
    if "bucket_start" in ds.coords:
        return [f"{int(a)}-{int(b) - 1}" for a, b in zip(ds["bucket_start"].values, ds["bucket_stop"].values)]
    return [str(b) for b in ds["position_bucket"].values]


def divergence_by_layer(
    ds: xr.Dataset,
    var: str = "resid_rel_l2",
    *,
    checkpoint: str | None = None,
    specs: Sequence[str] | None = None,
    bucket: int | None = None,
    log: bool = True,
) -> go.Figure:
    """``var`` against layer, one line per spec (mean over position buckets, or bucket ``bucket``)."""
    d = _checkpoint(ds, checkpoint)
    arr = _var(d, var)
    arr = arr.mean("position_bucket") if bucket is None else arr.isel(position_bucket=bucket)
    fig = go.Figure()
    for s in _specs(d, specs, skip_clean=True):
        fig.add_trace(go.Scatter(x=d["layer"].values, y=arr.sel(spec=s).values, mode="lines+markers", name=s))
    where = "mean over positions" if bucket is None else f"positions {_bucket_labels(d)[bucket]}"
    fig.update_layout(
        title=f"{TITLES.get(var, var)} by layer ({d['checkpoint'].item()}, {where})",
        xaxis_title="layer",
        yaxis_title=TITLES.get(var, var),
        template="plotly_white",
        yaxis_type="log" if log and var != "resid_cos" else "linear",
    )
    fig.update_xaxes(dtick=1)
    return fig


def divergence_heatmap(ds: xr.Dataset, spec: str, var: str = "lens_kl", *, checkpoint: str | None = None) -> go.Figure:
    """Layer x position bucket heatmap of ``var`` for one spec: where along the context a perturbation bites."""
    d = _checkpoint(ds, checkpoint)
    _specs(d, [spec], skip_clean=False)
    arr = _var(d, var).sel(spec=spec).transpose("layer", "position_bucket")
    fig = go.Figure(
        go.Heatmap(
            z=arr.values,
            x=_bucket_labels(d),
            y=[f"layer {i}" for i in d["layer"].values],
            colorscale="Viridis",
            colorbar={"title": var},
        )
    )
    fig.update_layout(
        title=f"{TITLES.get(var, var)}: {spec} ({d['checkpoint'].item()})",
        xaxis_title="position bucket",
        yaxis_title="layer",
        template="plotly_white",
    )
    return fig


def final_kl_bars(
    ds: xr.Dataset, var: str = "final_kl", *, specs: Sequence[str] | None = None, log: bool = True
) -> go.Figure:
    """Per-spec bars of a final-output variable (mean over position buckets), grouped by checkpoint."""
    arr = _var(ds, var).mean("position_bucket")
    chosen = _specs(ds, specs, skip_clean=True)
    fig = go.Figure()
    for ck in ds["checkpoint"].values:
        fig.add_trace(go.Bar(x=chosen, y=arr.sel(checkpoint=ck, spec=chosen).values, name=str(ck)))
    fig.update_layout(
        title=f"{TITLES.get(var, var)} per spec",
        barmode="group",
        xaxis_title="spec",
        yaxis_title=TITLES.get(var, var),
        template="plotly_white",
        yaxis_type="log" if log and var != "top1_flip" else "linear",
    )
    return fig


def repeated_kl_vs_offset(
    ds: xr.Dataset,
    var: str = "kl_to_mean",
    *,
    specs: Sequence[str] | None = None,
    checkpoints: Sequence[str] | None = None,
    log: bool = True,
) -> go.Figure:
    """Repeated-token ``var`` against the copy's absolute offset, one line per (checkpoint, spec)."""
    arr = _var(ds, var)
    cks = list(checkpoints) if checkpoints is not None else [str(c) for c in ds["checkpoint"].values]
    fig = go.Figure()
    for ck in cks:
        d = _checkpoint(ds, ck)
        for s in _specs(d, specs, skip_clean=False):
            fig.add_trace(
                go.Scatter(
                    x=d["offset"].values,
                    y=arr.sel(checkpoint=ck, spec=s).values,
                    mode="lines+markers",
                    name=f"{ck} · {s}",
                )
            )
    fig.update_layout(
        title=f"Repeated tokens: {TITLES.get(var, var)} vs absolute offset",
        xaxis_title="absolute offset of the copy (tokens)",
        yaxis_title=TITLES.get(var, var),
        template="plotly_white",
        yaxis_type="log" if log else "linear",
    )
    return fig
