"""Retrieval view: depth x length heatmaps of several checkpoints side by side (KD vs CE, theta schedules),
accuracy against length, and, on a click on a cell, that task and length's accuracy over training from
the run's metrics.jsonl (the cross-link). Drawn through ``workbench.figures.retrieval`` and
``workbench.figures.training`` from the store group ``retrieval`` (written by ``workbench eval``).

With "arms" shown, the same views are per arm (the seeds of one config pooled) from ``arm_retrieval``
(written by ``workbench compare``): depth x length grids side by side, accuracy against length with the
hierarchical-bootstrap interval, and the paired differences A - B among the picked arms (those stored in
``arm_comparisons``, else computed from ``retrieval`` when exactly two arms are picked)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from dash import Dash, Input, Output, State, callback_context, dcc, html, no_update

from app import runs as R
from app import stores as S
from app.paths import is_inside
from app.views.common import (
    control,
    graph,
    guarded,
    mode_picker,
    notice,
    picked,
    register_store_picker,
    require_group,
    shown,
    store_picker,
    with_picker_messages,
)
from workbench import arms as A
from workbench import store as wstore
from workbench.figures import effective_length as eff_figs
from workbench.figures import findings as arm_figs
from workbench.figures import retrieval as figs
from workbench.figures import training as training_figs
from workbench.runs import RunDir

TAB = ("retrieval", "Retrieval")
GROUP = wstore.RETRIEVAL
ARMS_GROUP, COMPARISONS_GROUP = wstore.ARM_RETRIEVAL, wstore.ARM_COMPARISONS
ALL = "__all__"
MAX_SIDE_BY_SIDE = 6
MODES = {"checkpoints": "checkpoints", "arms": "arms (mean over seeds, 95% interval)"}


def choices(root: Path, store: str) -> tuple[list[str], list[str], list[str]]:
    """(tasks, metrics, checkpoints) stored in the group."""
    ds = S.open_group(root, store, GROUP)
    metrics = [m for m in figs.LABELS if m in ds.data_vars]
    return [str(t) for t in ds["task"].values], metrics, [str(c) for c in ds["checkpoint"].values]


def default_checkpoints(names: list[str]) -> list[str]:
    """The checkpoints shown side by side before the user picks: the last stored checkpoint of each run
    (names are ``<run>/<ckpt>``), i.e. the final models of the arms, at most MAX_SIDE_BY_SIDE."""
    last: dict[str, str] = {}
    for name in names:
        last[name.split("/")[0]] = name
    finals = list(last.values())
    return (finals if len(finals) > 1 else names)[:MAX_SIDE_BY_SIDE]


def _args(task: Any, metric: Any, checkpoints: Any) -> tuple[str | None, str, list[str]]:
    if not isinstance(metric, str) or metric not in figs.LABELS:
        raise ValueError(f"unknown metric {metric!r}; one of {', '.join(figs.LABELS)}")
    names = picked(checkpoints, "checkpoint", most=MAX_SIDE_BY_SIDE)
    return (None if task in (None, ALL) else str(task)), metric, names


def grids(root: Path, store: str, task: Any, metric: Any, checkpoints: Any):
    """(side-by-side heatmaps, accuracy-vs-length lines) for the chosen checkpoints."""
    task, metric, names = _args(task, metric, checkpoints)
    ds = S.loaded(root, store, GROUP, metric)
    return (
        figs.heatmaps(ds, names, task=task, metric=metric),
        figs.accuracy_vs_length(ds, task=task, metric=metric, checkpoints=names),
    )


def arm_choices(root: Path, store: str) -> tuple[list[str], list[str]]:
    """(tasks, arms) of the store's arm summary; trained arms first, reference models last."""
    require_group(root, store, ARMS_GROUP, f"`workbench compare {store}`")
    ds = S.open_group(root, store, ARMS_GROUP)
    names = [str(a) for a in ds["arm"].values]
    refs = set(np.array(names)[ds["is_reference"].values]) if "is_reference" in ds.coords else set()
    return [str(t) for t in ds["task"].values], [n for n in names if n not in refs] + [n for n in names if n in refs]


def default_arms(root: Path, store: str) -> list[str]:
    """Two arms side by side before the user picks: the first stored comparison's A and B (the paper's
    KD - CE question), else the first two trained arms."""
    _, arms = arm_choices(root, store)
    if COMPARISONS_GROUP in S.groups_of(root, store):
        comp = S.open_group(root, store, COMPARISONS_GROUP)
        if comp.sizes.get("comparison") and "arm_a" in comp.coords:
            pair = [str(comp["arm_a"].values[0]), str(comp["arm_b"].values[0])]
            if all(a in arms for a in pair):
                return pair
    return arms[:2]


def _arm_args(root: Path, store: str, task: Any, value: Any) -> tuple[str, list[str]]:
    tasks, arms = arm_choices(root, store)
    names = picked(value, "arm", most=MAX_SIDE_BY_SIDE, known=arms, where=f"{store}/{ARMS_GROUP}")
    task = tasks[0] if task in (None, ALL) else str(task)
    if task not in tasks:
        raise ValueError(f"no task {task!r} in {store}/{ARMS_GROUP} (has: {', '.join(tasks)})")
    return task, names


def arm_differences(root: Path, store: str, arms: list[str]):
    """Paired differences A - B among ``arms``: the stored ones (``arm_comparisons``) whose two sides are
    both picked; when none is stored and exactly two arms are picked, computed now from ``retrieval``
    (the same paired hierarchical bootstrap ``workbench compare`` writes). None when there is nothing."""
    chosen = set(arms)
    if COMPARISONS_GROUP in S.groups_of(root, store):
        comp = S.open_group(root, store, COMPARISONS_GROUP)
        keep = [
            str(c)
            for c, a, b in zip(comp["comparison"].values, comp["arm_a"].values, comp["arm_b"].values)
            if str(a) in chosen and str(b) in chosen
        ]
        if keep:
            return comp.sel(comparison=keep).load()
    if len(arms) != 2 or GROUP not in S.groups_of(root, store):
        return None
    trained = A.retrieval_arms(S.open_group(root, store, GROUP))[0]
    if not all(a in trained for a in arms):
        return None  # a reference model (teacher) has no seeds to pair
    return A.retrieval_comparisons(S.loaded(root, store, GROUP, "correct"), [(arms[0], arms[1])])


def arm_grids(root: Path, store: str, task: Any, value: Any):
    """(side-by-side arm grids, accuracy vs length with intervals, paired differences or None)."""
    task, names = _arm_args(root, store, task, value)
    summary = S.open_group(root, store, ARMS_GROUP).load()
    diffs = arm_differences(root, store, names)
    return (
        figs.arm_heatmaps(summary, names, task=task),
        arm_figs.arm_accuracy_intervals(summary, task, arms=names),
        arm_figs.comparison_intervals(diffs, task) if diffs is not None else None,
    )


def effective_figure(root: Path, store: str, task: Any, value: Any):
    """Effective lengths of the picked arms (``arm_effective_length``, written by ``workbench compare``), or None."""
    if wstore.ARM_EFFECTIVE_LENGTH not in S.groups_of(root, store):
        return None
    task, names = _arm_args(root, store, task, value)
    return eff_figs.effective_lengths(S.open_group(root, store, wstore.ARM_EFFECTIVE_LENGTH).load(), task, arms=names)


def run_of_checkpoint(root: Path, store: str, checkpoint: str) -> str | None:
    """The run (relative to RUNS_DIR) a stored checkpoint came from, when that run is under RUNS_DIR."""
    ds = S.open_group(root, store, GROUP)
    names = [str(c) for c in ds["checkpoint"].values]
    if checkpoint not in names:
        raise ValueError(f"no checkpoint {checkpoint!r} in {store}")
    if "checkpoint_path" in ds.coords:
        run_dir = Path(str(ds["checkpoint_path"].values[names.index(checkpoint)])).parent
        if is_inside(root, run_dir) and RunDir(run_dir).is_run():
            return run_dir.resolve().relative_to(root).as_posix() or "."
    return R.find_run(root, checkpoint.split("/")[0]) if "/" in checkpoint else None


def clicked_curve(root: Path, store: str, task: Any, checkpoints: Any, click: Any):
    """The cross-link: accuracy over training for the clicked cell's task and length, from the run's
    metrics.jsonl. Returns (figure or None, message)."""
    try:
        point = click["points"][0]
        length = int(point["x"])
        index = int(point.get("curveNumber", 0))
    except (TypeError, KeyError, IndexError, ValueError):
        raise ValueError("click a heatmap cell to see that length's accuracy during training") from None
    names = [checkpoints] if isinstance(checkpoints, str) else list(checkpoints or [])
    if not 0 <= index < len(names):
        raise ValueError("the clicked heatmap is no longer shown")
    run = run_of_checkpoint(root, store, names[index])
    if run is None:
        raise ValueError(f"{names[index]}: its run directory is not in RUNS_DIR, so there is no training curve")
    tasks = [str(task)] if task not in (None, ALL) else choices(root, store)[0]
    info = R.run_info(root, run)
    records = info.metrics.records if info.metrics else []
    for t in tasks:
        if any(
            r.get("kind") == "eval" and str(r.get("task")) == t and int(r.get("length", -1)) == length for r in records
        ):
            return training_figs.eval_curve_figure({run: records}, t, length), ""
    return None, (
        f"run {run} logged no held-out eval of {', '.join(tasks)} at length {length} during training "
        f"(its metrics.jsonl has {sum(r.get('kind') == 'eval' for r in records)} eval records)"
    )


def layout() -> html.Div:
    return html.Div(
        [
            html.Div(
                [
                    store_picker("retrieval"),
                    mode_picker("retrieval", MODES, "checkpoints"),
                    control("task", dcc.Dropdown(id="retrieval-task", clearable=False)),
                    control("metric", dcc.Dropdown(id="retrieval-metric", clearable=False)),
                    control(
                        "checkpoints or arms (side by side)",
                        dcc.Dropdown(id="retrieval-checkpoints", multi=True, style={"minWidth": "420px"}),
                    ),
                ],
                className="wb-controls",
            ),
            html.Div(id="retrieval-messages"),
            html.Div(id="retrieval-picker-messages"),
            graph("retrieval-graph", 420),
            html.Div([graph("retrieval-lines", 380), graph("retrieval-curve", 380)], className="wb-row"),
            html.Div(id="retrieval-curve-messages"),
            graph("retrieval-differences", 360),
            graph("retrieval-effective", 360),
        ]
    )


def register(app: Dash, root: Path) -> None:
    register_store_picker(app, root, "retrieval", GROUP)

    def pickers(store: Any, mode: Any, task: Any, metric: Any, current: Any):
        if not store:
            return [], None, [], None, [], []
        if mode == "arms":
            tasks, arms = arm_choices(root, store)
            switched = callback_context.triggered_id == "retrieval-mode"  # checkpoint picks are not arm picks
            keep = ([] if switched else [a for a in (current or []) if a in arms]) or default_arms(root, store)
            return (
                [{"label": t, "value": t} for t in tasks],
                task if task in tasks else tasks[0],
                ["correct"],
                "correct",
                arms,
                keep,
            )
        tasks, metrics, ckpts = choices(root, store)
        switched = callback_context.triggered_id == "retrieval-mode"
        keep = ([] if switched else [c for c in (current or []) if c in ckpts]) or default_checkpoints(ckpts)
        task_opts = [{"label": "all tasks", "value": ALL}] + [{"label": t, "value": t} for t in tasks]
        return (
            task_opts,
            task if task in tasks else ALL,
            metrics,
            metric if metric in metrics else metrics[0],
            ckpts,
            keep,
        )

    app.callback(
        Output("retrieval-task", "options"),
        Output("retrieval-task", "value"),
        Output("retrieval-metric", "options"),
        Output("retrieval-metric", "value"),
        Output("retrieval-checkpoints", "options"),
        Output("retrieval-checkpoints", "value"),
        Output("retrieval-picker-messages", "children"),
        Input("retrieval-store", "value"),
        Input("retrieval-mode", "value"),
        State("retrieval-task", "value"),
        State("retrieval-metric", "value"),
        State("retrieval-checkpoints", "value"),
    )(guarded(with_picker_messages(pickers), lambda m: ([], None, [], None, [], [], notice([m], "error"))))

    hidden = ({}, shown(False, 420), {}, shown(False, 380), {}, shown(False, 360))

    def draw(store: Any, mode: Any, task: Any, metric: Any, checkpoints: Any):
        if not store or not metric:
            return (*hidden, no_update)
        if mode == "arms":
            heat, lines, diffs = arm_grids(root, store, task, checkpoints)
            return (
                heat,
                shown(True, 420),
                lines,
                shown(True, 380),
                diffs or {},
                shown(diffs is not None, 360),
                []
                if diffs is not None
                else notice(["no paired difference among the picked arms (pick two trained arms)"]),
            )
        heat, lines = grids(root, store, task, metric, checkpoints)
        return heat, shown(True, 420), lines, shown(True, 380), {}, shown(False, 360), []

    app.callback(
        Output("retrieval-graph", "figure"),
        Output("retrieval-graph", "style"),
        Output("retrieval-lines", "figure"),
        Output("retrieval-lines", "style"),
        Output("retrieval-differences", "figure"),
        Output("retrieval-differences", "style"),
        Output("retrieval-messages", "children", allow_duplicate=True),
        Input("retrieval-store", "value"),
        Input("retrieval-mode", "value"),
        Input("retrieval-task", "value"),
        Input("retrieval-metric", "value"),
        Input("retrieval-checkpoints", "value"),
        prevent_initial_call="initial_duplicate",
    )(guarded(draw, lambda m: (*hidden, notice([m], "error"))))

    def curve(click: Any, store: Any, mode: Any, task: Any, checkpoints: Any):
        if mode == "arms":
            return {}, shown(False, 380), []
        if not click or not store:
            return {}, shown(False, 380), notice(["click a heatmap cell to see that length's accuracy during training"])
        fig, message = clicked_curve(root, store, task, checkpoints, click)
        return fig or {}, shown(fig is not None, 380), notice([message]) if message else []

    app.callback(
        Output("retrieval-curve", "figure"),
        Output("retrieval-curve", "style"),
        Output("retrieval-curve-messages", "children"),
        Input("retrieval-graph", "clickData"),
        State("retrieval-store", "value"),
        Input("retrieval-mode", "value"),
        State("retrieval-task", "value"),
        State("retrieval-checkpoints", "value"),
    )(guarded(curve, lambda m: ({}, shown(False, 380), notice([m], "error"))))

    def effective(store: Any, mode: Any, task: Any, value: Any):
        fig = effective_figure(root, store, task, value) if store and mode == "arms" else None
        return fig or {}, shown(fig is not None, 360)

    app.callback(
        Output("retrieval-effective", "figure"),
        Output("retrieval-effective", "style"),
        Input("retrieval-store", "value"),
        Input("retrieval-mode", "value"),
        Input("retrieval-task", "value"),
        Input("retrieval-checkpoints", "value"),
    )(guarded(effective, lambda m: ({}, shown(False, 360))))
