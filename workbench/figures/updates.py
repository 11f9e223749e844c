"""Figures of the per-RoPE-pair analysis (``workbench.measurements``), from the store groups
``updates_weights``, ``updates_states``, ``bands``, ``score_decomposition`` and ``probes``.

- :func:`layer_pair_heatmap`: layer x pair, colour = relative update (mean over heads), the pair axis
  labelled with wavelengths, vertical lines at the critical pair of every phase context length;
- :func:`head_pair_heatmap`: head x pair for one layer;
- :func:`band_bars`: mean update per frequency band and layer;
- :func:`arm_layer_pair_heatmaps`: the layer x pair heatmap side by side for several arms of an
  ``arm_updates`` group (mean over each arm's seeds), on one colour scale;
- :func:`probe_curves`: position-probe R^2 or accuracy against layer, one line per checkpoint;
- :func:`score_profile`: mean per-pair score term by relative-distance bucket for one layer.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import plotly.graph_objects as go
import xarray as xr
from plotly.subplots import make_subplots

from workbench import rope

TITLES = {
    "q_rel_update": "|delta W_q| / |W_q| per pair",
    "k_rel_update": "|delta W_k| / |W_k| per pair",
    "q_cosine": "cosine(W_q before, after) per pair",
    "k_cosine": "cosine(W_k before, after) per pair",
    "q_norm_change": "relative change of the query-state pair norm",
    "k_norm_change": "relative change of the key-state pair norm",
    "r2": "held-out R^2 (ridge on log position)",
    "accuracy": "held-out accuracy (position buckets)",
}


def _pick(ds: xr.Dataset, dim: str, value: str | None) -> str:
    names = [str(v) for v in ds[dim].values]
    if not names:
        raise ValueError(f"no {dim} in the data")
    if value is None:
        return names[-1]
    if value not in names:
        raise ValueError(f"no {dim} {value!r} in the data (has: {', '.join(names)})")
    return value


def _var(ds: xr.Dataset, var: str) -> xr.DataArray:
    if var not in ds:
        raise ValueError(f"no variable {var!r} in the data (has {', '.join(map(str, ds.data_vars))})")
    return ds[var]


def _pair_axis(ds: xr.Dataset, ticks: list[str]) -> dict:
    """x axis of a pair heatmap: every pair ticked with its index and wavelength (upright when few)."""
    return dict(
        title="pair j / wavelength (tokens)",
        tickmode="array",
        tickvals=ds["pair"].values,
        ticktext=ticks,
        tickangle=0 if len(ticks) <= 20 else -90,
        tickfont_size=10,
    )


def _pair_labels(ds: xr.Dataset, comparison: str | None) -> tuple[np.ndarray, list[str]]:
    """Wavelengths of the pairs (at the comparison's after-theta when stored) and tick labels."""
    if comparison is not None and "wavelength_after" in ds.coords:
        waves = ds["wavelength_after"].sel(comparison=comparison).values
    else:
        waves = ds["wavelength"].values
    return waves, [f"{j}<br>{w:.3g}" for j, w in zip(ds["pair"].values, waves)]


def _phase_overlays(
    fig: go.Figure,
    theta: float | None,
    head_dim: int | None,
    phase_lengths: Sequence[int] | None,
    n_pairs: int,
    *,
    annotate: bool = True,
    **where,
) -> None:
    """A vertical line before the critical pair of each phase length (first pair with wavelength > L);
    ``where`` (row, col) places it in one subplot."""
    if theta is None or head_dim is None:
        return
    for k, length in enumerate(sorted(int(x) for x in phase_lengths or ())):
        crit = rope.critical_pair(theta, head_dim, length)
        if crit >= n_pairs:
            continue
        text = (
            dict(
                annotation_text=f"lambda > {length:,} from pair {crit} (critical pair)",
                annotation_position="top right" if k % 2 else "bottom right",
                annotation_font_size=11,
                annotation_bgcolor="rgba(255,255,255,0.85)",
            )
            if annotate
            else {}
        )
        fig.add_vline(
            x=crit - 0.5,
            line_color="#ff4136",
            line_width=3 if annotate else 2,
            line_dash="solid" if k else "dash",
            **text,
            **where,
        )


def layer_pair_heatmap(
    ds: xr.Dataset,
    *,
    comparison: str | None = None,
    var: str = "q_rel_update",
    phase_lengths: Sequence[int] | None = None,
    title: str | None = None,
) -> go.Figure:
    """Layer x pair heatmap of ``var`` (mean over heads) for one comparison of an updates group."""
    comparison = _pick(ds, "comparison", comparison)
    da = _var(ds, var).sel(comparison=comparison)
    da = da.mean([d for d in ("head", "kv_head") if d in da.dims])
    waves, ticks = _pair_labels(ds, comparison)
    fig = go.Figure(
        go.Heatmap(
            z=da.transpose("layer", "pair").values,
            x=ds["pair"].values,
            y=ds["layer"].values,
            colorscale="Viridis",
            colorbar_title=var,
            customdata=np.broadcast_to(waves, (ds.sizes["layer"], len(waves))),
            hovertemplate="layer %{y}, pair %{x} (wavelength %{customdata:.4g})<br>" + var + " %{z:.4g}<extra></extra>",
        )
    )
    theta = float(ds["rope_theta_after"].sel(comparison=comparison)) if "rope_theta_after" in ds.coords else None
    _phase_overlays(fig, theta, int(ds.attrs.get("head_dim", 2 * ds.sizes["pair"])), phase_lengths, ds.sizes["pair"])
    fig.update_layout(
        title=title or f"{TITLES.get(var, var)} (mean over heads)<br><sup>{comparison}</sup>",
        xaxis=_pair_axis(ds, ticks),
        yaxis=dict(title="layer", dtick=1),
        margin=dict(t=80, r=20, b=70, l=60),
    )
    return fig


def arm_layer_pair_heatmaps(
    arm_updates: xr.Dataset,
    arms: Sequence[str],
    *,
    var: str = "q_rel_update",
    phase_lengths: Sequence[int] | None = None,
) -> go.Figure:
    """Layer x pair heatmaps of ``var`` (mean over heads and over each arm's seeds) side by side for ``arms``
    of an ``arm_updates`` group, one colour scale, the critical pairs of the phase lengths overlaid at each
    arm's final theta (when the seeds of the arm share it)."""
    known = [str(a) for a in arm_updates["arm"].values]
    missing = [a for a in arms if a not in known]
    if missing or not arms:
        raise ValueError(f"no arm {missing[0] if missing else None!r} in the arm updates (has {', '.join(known)})")
    da = _var(arm_updates, var)
    da = da.mean([d for d in ("head", "kv_head") if d in da.dims])
    grids = [da.sel(arm=a).transpose("layer", "pair").values for a in arms]
    zmax = float(np.nanmax([np.nanmax(g) for g in grids]))
    titles = [
        f"{a} ({int(arm_updates['n_seeds'].sel(arm=a))} seed(s))" if "n_seeds" in arm_updates.coords else a
        for a in arms
    ]
    fig = make_subplots(
        rows=1,
        cols=len(arms),
        subplot_titles=titles,
        shared_yaxes=True,
        horizontal_spacing=min(0.06, 0.3 / max(1, len(arms))),
    )
    head_dim = int(arm_updates.attrs.get("head_dim", 2 * arm_updates.sizes["pair"]))
    for i, (arm, z) in enumerate(zip(arms, grids)):
        waves = (
            arm_updates["wavelength_after"].sel(arm=arm).values
            if "wavelength_after" in arm_updates.coords
            else arm_updates["wavelength"].values
        )
        fig.add_trace(
            go.Heatmap(
                z=z,
                x=arm_updates["pair"].values,
                y=arm_updates["layer"].values,
                zmin=0,
                zmax=zmax,
                colorscale="Viridis",
                colorbar_title=var,
                showscale=i == len(arms) - 1,
                customdata=np.broadcast_to(waves, z.shape),
                hovertemplate=arm
                + "<br>layer %{y}, pair %{x} (wavelength %{customdata:.4g})<br>"
                + var
                + " %{z:.4g}<extra></extra>",
            ),
            row=1,
            col=i + 1,
        )
        fig.update_xaxes(title_text="pair j", row=1, col=i + 1)
        theta = (
            float(arm_updates["rope_theta_after"].sel(arm=arm)) if "rope_theta_after" in arm_updates.coords else None
        )
        _phase_overlays(
            fig, theta, head_dim, phase_lengths, arm_updates.sizes["pair"], annotate=False, row=1, col=i + 1
        )
    fig.update_yaxes(title_text="layer", dtick=1, row=1, col=1)
    fig.update_layout(
        title=f"{TITLES.get(var, var)} (mean over heads and seeds; red line: critical pair of each "
        "phase length at the arm's final theta)",
        margin=dict(t=90, r=20, b=50, l=60),
    )
    return fig


def head_pair_heatmap(
    ds: xr.Dataset,
    layer: int,
    *,
    comparison: str | None = None,
    var: str = "q_rel_update",
    phase_lengths: Sequence[int] | None = None,
) -> go.Figure:
    """Head x pair heatmap of ``var`` for one layer of one comparison (KV heads for ``k_`` variables)."""
    comparison = _pick(ds, "comparison", comparison)
    if int(layer) not in [int(x) for x in ds["layer"].values]:
        raise ValueError(f"no layer {layer} in the data (has 0..{ds.sizes['layer'] - 1})")
    da = _var(ds, var).sel(comparison=comparison, layer=int(layer))
    head_dim = "head" if "head" in da.dims else "kv_head"
    waves, ticks = _pair_labels(ds, comparison)
    fig = go.Figure(
        go.Heatmap(
            z=da.transpose(head_dim, "pair").values,
            x=ds["pair"].values,
            y=da[head_dim].values,
            colorscale="Viridis",
            colorbar_title=var,
        )
    )
    theta = float(ds["rope_theta_after"].sel(comparison=comparison)) if "rope_theta_after" in ds.coords else None
    _phase_overlays(fig, theta, int(ds.attrs.get("head_dim", 2 * ds.sizes["pair"])), phase_lengths, ds.sizes["pair"])
    fig.update_layout(
        title=f"{TITLES.get(var, var)}, layer {layer}<br><sup>{comparison}</sup>",
        xaxis=_pair_axis(ds, ticks),
        yaxis=dict(title=head_dim.replace("_", " "), dtick=1),
        margin=dict(t=80, r=20, b=70, l=60),
    )
    return fig


def band_bars(bands: xr.Dataset, *, comparison: str | None = None, var: str = "q_rel_update") -> go.Figure:
    """Grouped bars: mean ``var`` per layer, one bar per frequency band (pairs per band in the legend)."""
    comparison = _pick(bands, "comparison", comparison)
    da = _var(bands, var).sel(comparison=comparison)
    n_pairs = bands["n_pairs"].sel(comparison=comparison).values
    fig = go.Figure()
    for b, label in enumerate(map(str, bands["band"].values)):
        fig.add_bar(
            x=[f"layer {int(x)}" for x in bands["layer"].values],
            y=da.isel(band=b).values,
            name=f"{label} ({int(n_pairs[b])} pairs)",
        )
    crit = bands["critical_pair"].sel(comparison=comparison, end="after").values
    lengths = bands["phase_length"].values
    sub = ", ".join(f"L={int(L):,}: critical pair {int(c)}" for L, c in zip(lengths, crit))
    fig.update_layout(
        barmode="group",
        title=f"{TITLES.get(var, var)} by frequency band<br><sup>{comparison}; "
        f"theta after {float(bands['rope_theta_after'].sel(comparison=comparison)):g}; {sub}</sup>",
        yaxis_title=var,
        legend_title="band (wavelength lambda)",
        margin=dict(t=80, r=20, b=50, l=60),
    )
    return fig


def probe_curves(probes: xr.Dataset, *, metric: str = "r2") -> go.Figure:
    """Probe ``metric`` (r2 or accuracy) against residual site, one line per checkpoint (chance dotted)."""
    da = _var(probes, metric)
    sites = [str(s) for s in probes["site"].values] if "site" in probes.coords else list(probes["layer"].values)
    fig = go.Figure()
    for ckpt in map(str, probes["checkpoint"].values):
        fig.add_scatter(x=sites, y=da.sel(checkpoint=ckpt).values, mode="lines+markers", name=ckpt)
        if metric == "accuracy" and "chance" in probes:
            fig.add_scatter(
                x=sites,
                y=probes["chance"].sel(checkpoint=ckpt).values,
                mode="lines",
                line_dash="dot",
                name=f"chance ({ckpt})",
                showlegend=False,
                line_color="grey",
            )
    fig.update_layout(
        title=f"Position probes: {TITLES.get(metric, metric)}",
        xaxis_title="residual stream site",
        yaxis_title=metric,
        margin=dict(t=60, r=20, b=50, l=60),
    )
    return fig


def score_profile(
    scores: xr.Dataset, layer: int, *, checkpoint: str | None = None, var: str = "contribution"
) -> go.Figure:
    """Pair x distance-bucket heatmap of the mean per-pair score term (mean over heads) for one layer."""
    checkpoint = _pick(scores, "checkpoint", checkpoint)
    da = _var(scores, var).sel(checkpoint=checkpoint, layer=int(layer)).mean("head")
    lo, hi = scores["distance"].values, scores["distance_hi"].values
    labels = [f"{a}" if a == b else f"{a}-{b}" for a, b in zip(lo, hi)]
    waves = (
        scores["wavelength_ckpt"].sel(checkpoint=checkpoint).values
        if "wavelength_ckpt" in scores.coords
        else scores["wavelength"].values
    )
    fig = go.Figure(
        go.Heatmap(
            z=da.transpose("pair", "distance").values,
            x=labels,
            y=[f"{j} ({w:.3g})" for j, w in zip(scores["pair"].values, waves)],
            colorscale="RdBu",
            zmid=0,
            colorbar_title=var,
        )
    )
    fig.update_layout(
        title=f"Per-pair score terms by distance, layer {layer}<br><sup>{checkpoint}</sup>",
        xaxis_title="relative distance (tokens)",
        yaxis_title="pair j (wavelength)",
        margin=dict(t=80, r=20, b=50, l=90),
    )
    return fig
