"""Perturbation-traces view: how a RoPE perturbation of q/k spreads layer by layer into the logits
(divergence by layer per spec, layer x position-bucket heatmap, final-KL bars) and the repeated-token
experiment (KL against the copy's offset). Clicking a heatmap cell shows the by-layer curves of that
position bucket (the cross-link). Drawn through ``workbench.figures.traces`` from the store groups
``traces`` and ``repeated_tokens`` (written by ``workbench trace``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from dash import Dash, Input, Output, State, callback_context, dcc, html, no_update

from app import stores as S
from app.views.common import (
    control,
    graph,
    guarded,
    no_data,
    notice,
    register_store_picker,
    shown,
    store_picker,
    with_picker_messages,
)
from workbench import store as wstore
from workbench.figures import traces as figs

TAB = ("traces", "Perturbation traces")
GROUP = wstore.TRACES
REPEATED = wstore.REPEATED_TOKENS
LAYER_VARS = ["lens_kl", "resid_rel_l2", "resid_cos", "attn_out_rel_l2", "q_rel_l2", "k_rel_l2", "pattern_js"]
FINAL_VARS = ["final_kl", "final_js", "top1_flip"]
REPEATED_VARS = ["kl_to_mean", "kl_to_first", "kl_vs_clean"]
MEAN = -1  # bucket value meaning "mean over position buckets"


def choices(root: Path, store: str) -> dict[str, list]:
    """Checkpoints, specs, layer variables and position buckets of the store's traces group ({} without one)."""
    if GROUP not in S.groups_of(root, store):
        return {}
    ds = S.open_group(root, store, GROUP)
    if "bucket_start" in ds.coords:
        buckets = [f"{int(a)}-{int(b) - 1}" for a, b in zip(ds["bucket_start"].values, ds["bucket_stop"].values)]
    else:
        buckets = [str(b) for b in ds["position_bucket"].values]
    return {
        "checkpoints": [str(c) for c in ds["checkpoint"].values],
        "specs": [str(s) for s in ds["spec"].values if str(s) != "clean"],
        "vars": [v for v in LAYER_VARS if v in ds.data_vars],
        "buckets": [{"label": "mean over positions", "value": MEAN}]
        + [{"label": f"positions {b}", "value": i} for i, b in enumerate(buckets)],
    }


def _checked(options: list, value: Any, what: str) -> Any:
    if value not in options:
        raise ValueError(f"unknown {what} {value!r}")
    return value


def trace_figures(root: Path, store: str, checkpoint: Any, var: Any, spec: Any, bucket: Any):
    """(divergence by layer, layer x bucket heatmap, final-KL bars) for the controls."""
    c = choices(root, store)
    if not c:
        raise ValueError(f"{store} has no '{GROUP}' group (only repeated-token results)")
    checkpoint = _checked(c["checkpoints"], checkpoint, "checkpoint")
    var = _checked(c["vars"], var, "variable")
    spec = _checked(c["specs"], spec, "spec")
    bucket = _checked([b["value"] for b in c["buckets"]], bucket, "position bucket")
    ds = S.open_group(root, store, GROUP)
    lines = figs.divergence_by_layer(ds, var, checkpoint=checkpoint, bucket=None if bucket == MEAN else int(bucket))
    heat = figs.divergence_heatmap(ds, spec, var, checkpoint=checkpoint)
    bars = figs.final_kl_bars(ds, "final_kl")
    return lines, heat, bars


def repeated_figure(root: Path, store: str, var: Any):
    """Repeated-token ``var`` against offset (None when the store has no repeated-token group)."""
    if REPEATED not in S.groups_of(root, store):
        return None
    var = _checked(REPEATED_VARS, var, "repeated-token variable")
    return figs.repeated_kl_vs_offset(S.open_group(root, store, REPEATED), var)


def bucket_from_click(click: Any, buckets: list[dict]) -> int | None:
    """The position bucket of a clicked layer x bucket cell: its column (``pointNumber`` is [row, col]),
    else its x label."""
    try:
        point = click["points"][0]
    except (TypeError, KeyError, IndexError):
        return None
    number = point.get("pointNumber") if isinstance(point, dict) else None
    values = [b["value"] for b in buckets if b["value"] != MEAN]
    if isinstance(number, list) and len(number) == 2 and number[1] in values:
        return int(number[1])
    for b in buckets:
        if b["label"] == f"positions {point.get('x')}":
            return b["value"]
    return None


def layout() -> html.Div:
    return html.Div(
        [
            html.Div(
                [
                    store_picker("traces"),
                    control("checkpoint", dcc.Dropdown(id="traces-checkpoint", clearable=False)),
                    control("variable", dcc.Dropdown(id="traces-var", clearable=False)),
                    control("spec (heatmap)", dcc.Dropdown(id="traces-spec", clearable=False)),
                    control("position bucket (or click a cell)", dcc.Dropdown(id="traces-bucket", clearable=False)),
                ],
                className="wb-controls",
            ),
            html.Div(id="traces-messages"),
            html.Div(id="traces-picker-messages"),
            html.Div([graph("traces-heatmap", 420), graph("traces-graph", 420)], className="wb-row"),
            html.Div(
                [
                    graph("traces-bars", 380),
                    html.Div(
                        [
                            control(
                                "repeated tokens",
                                dcc.RadioItems(
                                    id="traces-repeated-var", options=REPEATED_VARS, value="kl_to_mean", inline=True
                                ),
                            ),
                            graph("traces-repeated", 380),
                        ]
                    ),
                ],
                className="wb-row",
            ),
            html.Div(id="traces-repeated-messages"),
        ]
    )


def register(app: Dash, root: Path) -> None:
    register_store_picker(app, root, "traces", GROUP, REPEATED)

    def pickers(store: Any, click: Any, ckpt: Any, var: Any, spec: Any, bucket: Any):
        c = choices(root, store) if store else {}
        if not c:
            return [], None, [], None, [], None, [], None
        if callback_context.triggered_id == "traces-heatmap":
            clicked = bucket_from_click(click, c["buckets"])
            bucket = clicked if clicked is not None else bucket
        pick = lambda opts, v, default: v if v in opts else default  # noqa: E731
        values = [b["value"] for b in c["buckets"]]
        return (
            c["checkpoints"],
            pick(c["checkpoints"], ckpt, c["checkpoints"][-1]),
            c["vars"],
            pick(c["vars"], var, c["vars"][0]),
            c["specs"],
            pick(c["specs"], spec, c["specs"][0] if c["specs"] else None),
            c["buckets"],
            pick(values, bucket, MEAN),
        )

    app.callback(
        Output("traces-checkpoint", "options"),
        Output("traces-checkpoint", "value"),
        Output("traces-var", "options"),
        Output("traces-var", "value"),
        Output("traces-spec", "options"),
        Output("traces-spec", "value"),
        Output("traces-bucket", "options"),
        Output("traces-bucket", "value"),
        Output("traces-picker-messages", "children"),
        Input("traces-store", "value"),
        Input("traces-heatmap", "clickData"),
        State("traces-checkpoint", "value"),
        State("traces-var", "value"),
        State("traces-spec", "value"),
        State("traces-bucket", "value"),
    )(guarded(with_picker_messages(pickers), lambda m: ([], None, [], None, [], None, [], None, notice([m], "error"))))

    hidden = ({}, shown(False, 420), {}, shown(False, 420), {}, shown(False, 380))

    def draw(store: Any, ckpt: Any, var: Any, spec: Any, bucket: Any):
        if not store or ckpt is None or var is None or spec is None or bucket is None:
            return (*hidden, no_update)
        lines, heat, bars = trace_figures(root, store, ckpt, var, spec, bucket)
        return lines, shown(True, 420), heat, shown(True, 420), bars, shown(True, 380), []

    app.callback(
        Output("traces-graph", "figure"),
        Output("traces-graph", "style"),
        Output("traces-heatmap", "figure"),
        Output("traces-heatmap", "style"),
        Output("traces-bars", "figure"),
        Output("traces-bars", "style"),
        Output("traces-messages", "children", allow_duplicate=True),
        Input("traces-store", "value"),
        Input("traces-checkpoint", "value"),
        Input("traces-var", "value"),
        Input("traces-spec", "value"),
        Input("traces-bucket", "value"),
        prevent_initial_call="initial_duplicate",
    )(guarded(draw, lambda m: (*hidden, notice([m], "error"))))

    def draw_repeated(store: Any, var: Any):
        if not store:
            return {}, shown(False, 380), []
        fig = repeated_figure(root, store, var)
        if fig is None:
            return {}, shown(False, 380), notice([no_data(REPEATED)])
        return fig, shown(True, 380), []

    app.callback(
        Output("traces-repeated", "figure"),
        Output("traces-repeated", "style"),
        Output("traces-repeated-messages", "children"),
        Input("traces-store", "value"),
        Input("traces-repeated-var", "value"),
    )(guarded(draw_repeated, lambda m: ({}, shown(False, 380), notice([m], "error"))))
