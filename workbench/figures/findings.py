"""Figures of the paper's findings across training arms (objective x theta schedule x seed).

Inputs are the per-arm groups of a store (``arm_retrieval``, ``arm_comparisons``, ``arm_bands`` from
:mod:`workbench.arms`, ``ablation_effects``); the single-store figures live in ``retrieval``, ``traces`` and
``updates``.
"""

from __future__ import annotations

import plotly.graph_objects as go
import xarray as xr

from workbench.arms import parse_arm

OBJECTIVE_COLOURS = {"kd": "#1f77b4", "ce": "#d62728", "teacher": "#2ca02c"}
SCHEDULE_DASH = {"phasewise": "solid", "fixed-small": "dot", "fixed-large": "dash"}


def _style(arm: str) -> dict:
    name = parse_arm(arm)
    return dict(color=OBJECTIVE_COLOURS.get(name.objective, "#7f7f7f"), dash=SCHEDULE_DASH.get(name.schedule, "solid"))


def arm_accuracy_intervals(
    summary: xr.Dataset,
    task: str,
    *,
    metric: str = "correct",
    doc_length: int | None = None,
    window: int | None = None,
    arms: list[str] | None = None,
) -> go.Figure:
    """F1 with intervals: mean accuracy against length per arm (seeds pooled), shaded band = the
    hierarchical bootstrap interval; reference models (teacher, stage-1 students) as thin grey lines.
    ``summary`` is an ``arm_retrieval`` Dataset (dims arm, task, length)."""
    fig = go.Figure()
    x = [int(n) for n in summary["length"].values]
    for arm in arms or [str(a) for a in summary["arm"].values]:
        cell = summary.sel(arm=arm, task=task)
        ref = bool(cell["is_reference"]) if "is_reference" in cell.coords else False
        style = dict(color="#7f7f7f", dash="dot", width=1) if ref else _style(arm)
        mean, lo, hi = (cell[v].values for v in (metric, f"{metric}_lo", f"{metric}_hi"))
        label = f"{arm} (ref)" if ref else f"{arm} (n={int(cell['n_seeds'])} seeds)"
        if not ref:
            fig.add_scatter(
                x=x + x[::-1],
                y=list(hi) + list(lo[::-1]),
                fill="toself",
                mode="lines",
                line=dict(width=0),
                fillcolor=_rgba(style["color"], 0.12),
                hoverinfo="skip",
                showlegend=False,
                legendgroup=arm,
            )
        fig.add_scatter(
            x=x,
            y=mean,
            mode="lines+markers",
            name=label,
            line=style,
            legendgroup=arm,
            customdata=list(zip(lo, hi)),
            hovertemplate="%{x}: %{y:.2f} [%{customdata[0]:.2f}, %{customdata[1]:.2f}]",
        )
    for pos, text in ((doc_length, "max doc length"), (window, "training window")):
        if pos:
            fig.add_vline(x=pos, line_dash="dot", line_color="grey", annotation_text=text, annotation_position="top")
    level = float(summary.attrs.get("level", 0.95))
    fig.update_layout(
        title=f"{task}: accuracy by arm (mean, {level:.0%} hierarchical bootstrap interval)",
        xaxis_title="context length (tokens)",
        yaxis_title="greedy exact match",
        xaxis_type="log",
        yaxis_range=[-0.05, 1.05],
        margin=dict(t=60, r=20, b=50, l=70),
        legend_title="arm",
    )
    fig.update_xaxes(tickvals=x)
    return fig


def comparison_intervals(comp: xr.Dataset, task: str) -> go.Figure:
    """Paired differences A - B with their intervals, one row per comparison, one marker per length."""
    fig = go.Figure()
    labels = [str(c) for c in comp["comparison"].values]
    for n in comp["length"].values:
        cell = comp.sel(task=task, length=n)
        mean, lo, hi = (cell[v].values for v in ("difference", "difference_lo", "difference_hi"))
        fig.add_scatter(
            x=mean,
            y=labels,
            mode="markers",
            name=f"length {int(n)}",
            error_x=dict(type="data", symmetric=False, array=hi - mean, arrayminus=mean - lo),
        )
    fig.add_vline(x=0, line_color="black", line_width=1)
    level = float(comp.attrs.get("level", 0.95))
    fig.update_layout(
        title=f"{task}: paired differences A - B (same prompts, same seed index; {level:.0%} interval)",
        xaxis_title="accuracy difference",
        yaxis_autorange="reversed",
        margin=dict(t=60, r=20, b=50, l=260),
        legend_title="context length",
    )
    return fig


def band_update_intervals(table: xr.Dataset, *, var: str = "q_rel_update") -> go.Figure:
    """F3 across arms with intervals: mean update per band, bars per arm, error bars = bootstrap interval
    over seeds. ``table`` has ``var``, ``var_lo``, ``var_hi`` over (arm, band)."""
    fig = go.Figure()
    arms = [str(a) for a in table["arm"].values]
    for label in map(str, table["band"].values):
        cell = table.sel(band=label)
        mean = cell[var].values
        fig.add_bar(
            x=arms,
            y=mean,
            name=label,
            error_y=dict(
                type="data",
                symmetric=False,
                array=cell[f"{var}_hi"].values - mean,
                arrayminus=mean - cell[f"{var}_lo"].values,
            ),
        )
    fig.update_layout(
        barmode="group",
        title=f"{var} by frequency band, stage 1 -> end of extension (mean over layers and heads; interval over seeds)",
        yaxis_title=var,
        legend_title="band (wavelength lambda)",
        margin=dict(t=60, r=20, b=80, l=70),
    )
    return fig


def ablation_effects(effects: xr.Dataset, task: str, length: int) -> go.Figure:
    """Eval-time band interventions: accuracy change against clean per condition, bars per arm/model."""
    fig = go.Figure()
    for cond in map(str, effects["condition"].values):
        cell = effects.sel(condition=cond, task=task, length=length)
        mean = cell["difference"].values
        fig.add_bar(
            x=[str(a) for a in effects["arm"].values],
            y=mean,
            name=cond,
            error_y=dict(
                type="data",
                symmetric=False,
                array=cell["difference_hi"].values - mean,
                arrayminus=mean - cell["difference_lo"].values,
            ),
        )
    fig.update_layout(
        barmode="group",
        title=f"Band interventions at evaluation time: {task} at {length} tokens, "
        "change against clean (paired interval)",
        yaxis_title="accuracy difference",
        margin=dict(t=60, r=20, b=80, l=70),
    )
    return fig


def _rgba(hex_colour: str, alpha: float) -> str:
    h = hex_colour.lstrip("#")
    return f"rgba({int(h[0:2], 16)}, {int(h[2:4], 16)}, {int(h[4:6], 16)}, {alpha})"
