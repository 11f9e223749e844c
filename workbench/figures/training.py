"""Training figures from ``metrics.jsonl`` records: loss curves per phase with the theta switches marked,
and held-out retrieval accuracy over training.

Records are the trainer's dicts: ``{"kind": "train", "step", "phase", "rope_theta", "loss", "ce", "kd",
...}`` and ``{"kind": "eval", "step", "phase", "task", "length", "accuracy", ...}``. Builders accept
several runs at once (``{run name: records}``) so KD/CE or theta schedules can be overlaid.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import plotly.graph_objects as go
from plotly.colors import qualitative
from plotly.subplots import make_subplots

Records = Sequence[Mapping[str, Any]]
PALETTE = qualitative.Plotly
DASHES = ("solid", "dash", "dot", "dashdot", "longdash", "longdashdot")


@dataclass(frozen=True)
class ThetaSwitch:
    """A step at which the RoPE base (or the phase) changed between consecutive train records."""

    step: int
    old_theta: float
    new_theta: float
    phase: str


def train_records(records: Records) -> list[Mapping[str, Any]]:
    """The train records, ordered by step."""
    return sorted((r for r in records if r.get("kind") == "train" and "step" in r), key=lambda r: r["step"])


def eval_records(records: Records) -> list[Mapping[str, Any]]:
    """The eval records, ordered by step."""
    return sorted((r for r in records if r.get("kind") == "eval" and "step" in r), key=lambda r: r["step"])


def theta_switches(records: Records) -> list[ThetaSwitch]:
    """Where ``rope_theta`` changes between consecutive train records (the phase boundaries of a
    phase-wise schedule)."""
    out: list[ThetaSwitch] = []
    prev = None
    for r in train_records(records):
        theta = r.get("rope_theta")
        if (
            prev is not None
            and theta is not None
            and prev.get("rope_theta") is not None
            and float(theta) != float(prev["rope_theta"])
        ):
            out.append(ThetaSwitch(int(r["step"]), float(prev["rope_theta"]), float(theta), str(r.get("phase", ""))))
        prev = r
    return out


def _phases(records: Sequence[Mapping[str, Any]]) -> list[str]:
    seen: list[str] = []
    for r in records:
        p = str(r.get("phase", ""))
        if p not in seen:
            seen.append(p)
    return seen


def training_figure(runs: Mapping[str, Records], *, metric: str = "loss", title: str | None = None) -> go.Figure:
    """Loss curves (``metric``: loss, ce or kd) per run and phase, one colour per run and one dash per
    phase, vertical lines at every theta switch; a second panel with eval accuracy per task and length
    when the runs logged evals."""
    has_eval = any(eval_records(recs) for recs in runs.values())
    fig = make_subplots(
        rows=2 if has_eval else 1,
        cols=1,
        shared_xaxes=True,
        vertical_spacing=0.1,
        subplot_titles=(f"train {metric}", "eval accuracy") if has_eval else None,
    )
    for i, (name, recs) in enumerate(runs.items()):
        colour = PALETTE[i % len(PALETTE)]
        train = [r for r in train_records(recs) if r.get(metric) is not None]
        for k, phase in enumerate(_phases(train)):
            rows = [r for r in train if str(r.get("phase", "")) == phase]
            fig.add_trace(
                go.Scatter(
                    x=[r["step"] for r in rows],
                    y=[r[metric] for r in rows],
                    mode="lines",
                    line=dict(color=colour, dash=DASHES[k % len(DASHES)]),
                    name=f"{name} / {phase}" if phase else name,
                    legendgroup=name,
                    customdata=[[r.get("rope_theta")] for r in rows],
                    hovertemplate=f"{name} {phase}<br>step %{{x}}<br>{metric} %{{y:.4f}}"
                    "<br>theta %{customdata[0]:g}<extra></extra>",
                ),
                row=1,
                col=1,
            )
        for sw in theta_switches(recs):
            fig.add_vline(
                x=sw.step,
                line_dash="dash",
                line_color=colour,
                row="all",
                col=1,
                annotation_text=f"theta {sw.old_theta:g} -> {sw.new_theta:g}",
                annotation_position="top left",
                annotation_font_size=10,
            )
        if has_eval:
            evals = eval_records(recs)
            keys = sorted({(str(r.get("task")), int(r.get("length", 0))) for r in evals})
            for k, (task, length) in enumerate(keys):
                rows = [r for r in evals if str(r.get("task")) == task and int(r.get("length", 0)) == length]
                fig.add_trace(
                    go.Scatter(
                        x=[r["step"] for r in rows],
                        y=[r.get("accuracy") for r in rows],
                        mode="lines+markers",
                        line=dict(color=colour, dash=DASHES[k % len(DASHES)]),
                        marker=dict(size=5),
                        name=f"{name} {task}@{length}",
                        legendgroup=name,
                        hovertemplate=f"{name} {task} L={length}<br>step %{{x}}<br>accuracy %{{y:.3f}}<extra></extra>",
                    ),
                    row=2,
                    col=1,
                )
    fig.update_xaxes(title_text="step", row=2 if has_eval else 1, col=1)
    fig.update_yaxes(title_text=metric, row=1, col=1)
    if has_eval:
        fig.update_yaxes(title_text="accuracy", range=[-0.05, 1.05], row=2, col=1)
    fig.update_layout(
        title=title or "Training", hovermode="closest", margin=dict(t=70, r=20, b=50, l=70), legend=dict(font_size=10)
    )
    return fig


def eval_curve_figure(runs: Mapping[str, Records], task: str, length: int) -> go.Figure:
    """Accuracy over training steps for one task at one length, per run (the cross-link target of a
    retrieval heatmap cell), theta switches marked."""
    fig = go.Figure()
    for i, (name, recs) in enumerate(runs.items()):
        colour = PALETTE[i % len(PALETTE)]
        rows = [
            r for r in eval_records(recs) if str(r.get("task")) == str(task) and int(r.get("length", -1)) == int(length)
        ]
        if rows:
            fig.add_trace(
                go.Scatter(
                    x=[r["step"] for r in rows],
                    y=[r.get("accuracy") for r in rows],
                    mode="lines+markers",
                    line=dict(color=colour),
                    name=name,
                )
            )
        for sw in theta_switches(recs):
            fig.add_vline(
                x=sw.step,
                line_dash="dash",
                line_color=colour,
                annotation_text=f"theta -> {sw.new_theta:g}",
                annotation_font_size=10,
            )
    fig.update_layout(
        title=f"{task} at length {length}: accuracy during training",
        xaxis_title="step",
        yaxis_title="accuracy",
        yaxis_range=[-0.05, 1.05],
        margin=dict(t=60, r=20, b=50, l=70),
    )
    return fig
