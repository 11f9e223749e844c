"""Figures of the paper's findings across training arms (objective x theta schedule x seed).

Inputs are the aggregates of :mod:`workbench.demo.findings` (DataArrays with an ``arm`` dim and, where seeds
exist, a ``seed`` dim); the single-store figures live in ``retrieval``, ``traces`` and ``updates``.
"""

from __future__ import annotations

import plotly.graph_objects as go
import xarray as xr

OBJECTIVE_COLOURS = {"kd": "#1f77b4", "ce": "#d62728", "teacher": "#2ca02c"}
SCHEDULE_DASH = {"phasewise": "solid", "fixed-small": "dot", "fixed-large": "dash"}


def _style(arm: str) -> dict:
    objective, _, schedule = arm.partition("-")
    schedule = schedule.split("+")[0]
    return dict(color=OBJECTIVE_COLOURS.get(objective, "#7f7f7f"), dash=SCHEDULE_DASH.get(schedule, "solid"))


def accuracy_by_arm(acc: xr.DataArray, *, title: str = "Retrieval accuracy by objective x theta schedule",
                    doc_length: int | None = None, window: int | None = None) -> go.Figure:
    """F1: mean accuracy over seeds against length, one line per arm, error bars = std over seeds.
    ``acc`` has dims (arm, seed, length); NaN seeds (missing runs) are ignored."""
    fig = go.Figure()
    for arm in map(str, acc["arm"].values):
        da = acc.sel(arm=arm)
        mean = da.mean("seed", skipna=True) if "seed" in da.dims else da
        std = da.std("seed", skipna=True) if "seed" in da.dims else xr.zeros_like(da)
        n = int(da.notnull().any("length").sum()) if "seed" in da.dims else 1
        fig.add_scatter(x=acc["length"].values, y=mean.values, mode="lines+markers", name=f"{arm} (n={n})",
                        line=_style(arm), error_y=dict(type="data", array=std.values, visible=True))
    for x, text in ((doc_length, "max doc length"), (window, "training window")):
        if x:
            fig.add_vline(x=x, line_dash="dot", line_color="grey", annotation_text=text, annotation_position="top")
    fig.update_layout(title=title, xaxis_title="context length (tokens)", yaxis_title="accuracy (mean ± std over seeds)",
                      xaxis_type="log", yaxis_range=[-0.05, 1.05], margin=dict(t=60, r=20, b=50, l=70),
                      legend_title="arm (objective-schedule)")
    fig.update_xaxes(tickvals=[int(x) for x in acc["length"].values])
    return fig


def band_update_by_arm(bands: xr.DataArray, *, var: str = "q_rel_update") -> go.Figure:
    """F3 across arms: mean relative W_q update per frequency band (phase 1 -> phase 2), bars per arm,
    error bars = std over seeds. ``bands`` has dims (arm, seed, band)."""
    fig = go.Figure()
    for b, label in enumerate(map(str, bands["band"].values)):
        da = bands.isel(band=b)
        fig.add_bar(x=list(map(str, bands["arm"].values)), y=da.mean("seed", skipna=True).values, name=label,
                    error_y=dict(type="data", array=da.std("seed", skipna=True).values, visible=True))
    fig.update_layout(barmode="group", title=f"{var} by frequency band, phase 1 -> phase 2 (mean over layers, heads)",
                      yaxis_title=var, legend_title="band (wavelength lambda)", margin=dict(t=60, r=20, b=80, l=70))
    return fig


def ablation_bars(drop: xr.DataArray, *, title: str = "Ablations: retrieval accuracy") -> go.Figure:
    """Accuracy per ablation condition and model (dims condition, model), e.g. clean vs band-zeroed."""
    fig = go.Figure()
    for cond in map(str, drop["condition"].values):
        fig.add_bar(x=list(map(str, drop["model"].values)), y=drop.sel(condition=cond).values, name=cond)
    fig.update_layout(barmode="group", title=title, yaxis_title="accuracy", yaxis_range=[0, 1.05],
                      margin=dict(t=60, r=20, b=80, l=70))
    return fig


def summary_table_figure(rows: list[dict], columns: list[str]) -> go.Figure:
    """The results table as a plotly table (for the dashboard and the HTML report)."""
    values = [[r.get(c, "") for r in rows] for c in columns]
    fig = go.Figure(go.Table(header=dict(values=columns, align="left"), cells=dict(values=values, align="left")))
    fig.update_layout(margin=dict(t=10, r=10, b=10, l=10), height=60 + 28 * len(rows))
    return fig


