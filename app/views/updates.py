"""Query-updates view: which RoPE pairs of W_q / W_k (or of the q/k states) moved between two checkpoints.

Layer x pair heatmap (colour = relative update, pair axis labelled with wavelengths, the critical pair
of every phase length overlaid), head x pair for one layer (clicking a heatmap cell selects its layer),
and band bars. Drawn through ``workbench.figures.updates`` from the store groups ``updates_weights``,
``updates_states`` and ``bands`` (written by ``workbench updates``).

With "arms" shown, the W_q / W_k views are per arm (seeds pooled) from ``arm_updates`` and ``arm_bands``
(written by ``workbench demo``'s pair analysis): layer x pair heatmaps of two or more arms side by side,
and the band means with their interval over seeds.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from dash import Dash, Input, Output, State, callback_context, dcc, html, no_update

from app import runs as R
from app import stores as S
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
from workbench.figures import findings as arm_figs
from workbench.figures import updates as figs

TAB = ("updates", "Query updates")
GROUP = wstore.UPDATES_WEIGHTS
ARMS_GROUP, ARM_BANDS_GROUP = wstore.ARM_UPDATES, wstore.ARM_BANDS
MODES = {"pairs": "checkpoint pair", "arms": "arms (mean over seeds)"}
MAX_SIDE_BY_SIDE = 4
# source -> (store group, variable)
SOURCES = {
    "W_q": (wstore.UPDATES_WEIGHTS, "q_rel_update"),
    "W_k": (wstore.UPDATES_WEIGHTS, "k_rel_update"),
    "q states": (wstore.UPDATES_STATES, "q_norm_change"),
    "k states": (wstore.UPDATES_STATES, "k_norm_change"),
}


def source_of(source: Any) -> tuple[str, str]:
    if source not in SOURCES:
        raise ValueError(f"unknown source {source!r}; one of {', '.join(SOURCES)}")
    return SOURCES[source]


def available_sources(root: Path, store: str) -> list[str]:
    """The sources the store holds data for."""
    groups = set(S.groups_of(root, store))
    return [name for name, (group, _) in SOURCES.items() if group in groups]


def comparisons(root: Path, store: str, source: str) -> list[str]:
    """Checkpoint pairs ("A -> B") of the source's group, in stored order."""
    group, _ = source_of(source)
    return [str(c) for c in S.open_group(root, store, group)["comparison"].values]


def layers(root: Path, store: str, source: str) -> list[int]:
    group, _ = source_of(source)
    return [int(x) for x in S.open_group(root, store, group)["layer"].values]


def phase_lengths(root: Path, store: str, source: str = "W_q") -> list[int]:
    """Phase context lengths for the overlays: those recorded with the store's band summary, else the
    phases' ``seq_len`` in the run.yaml of the run the compared checkpoints come from (labels are
    ``<run>/<ckpt>``), else []."""
    if wstore.BANDS in S.groups_of(root, store):
        values = S.open_group(root, store, wstore.BANDS)["phase_length"].values
        return [int(x) for x in values if math.isfinite(float(x)) and x > 0]  # a crafted NaN: no overlay for it
    group, _ = source_of(source)
    if group not in S.groups_of(root, store):
        return []
    ds = S.open_group(root, store, group)
    labels = [str(x) for x in ds["after"].values] if "after" in ds.coords else []
    for name in dict.fromkeys(label.split("/")[0] for label in labels if "/" in label):
        run = R.find_run(root, name)
        if run is None:
            continue
        try:
            lengths = R.phase_lengths_of(R.run_config(root, run))  # run.yaml only: no checkpoint or metrics reads
        except (ValueError, OSError):
            continue
        if lengths:
            return lengths
    return []


def _slice(root: Path, store: str, group: str, var: str, comparison: Any):
    """The variable for one comparison (all of them when ``comparison`` is None), in memory."""
    if comparison is None:
        return S.loaded(root, store, group, var)
    if not isinstance(comparison, str):
        raise ValueError(f"checkpoint pair must be a string, got {comparison!r}")
    return S.loaded(root, store, group, var, comparison=[comparison])


def heatmap(root: Path, store: str, source: str, comparison: str | None):
    """Layer x pair heatmap of the source for one comparison."""
    group, var = source_of(source)
    ds = _slice(root, store, group, var, comparison)
    return figs.layer_pair_heatmap(ds, comparison=comparison, var=var, phase_lengths=phase_lengths(root, store, source))


def heads(root: Path, store: str, source: str, comparison: str | None, layer: Any):
    """Head x pair heatmap for one layer."""
    group, var = source_of(source)
    try:
        layer = int(layer)
    except (TypeError, ValueError):
        raise ValueError(f"layer must be an integer, got {layer!r}") from None
    ds = _slice(root, store, group, var, comparison)
    return figs.head_pair_heatmap(
        ds, layer, comparison=comparison, var=var, phase_lengths=phase_lengths(root, store, source)
    )


def bands(root: Path, store: str, source: str, comparison: str | None):
    """Band bars of the weight updates (None for state sources or a store without a band summary)."""
    group, var = source_of(source)
    if group != GROUP or wstore.BANDS not in S.groups_of(root, store):
        return None
    return figs.band_bars(S.open_group(root, store, wstore.BANDS), comparison=comparison, var=var)


def arms(root: Path, store: str) -> list[str]:
    """Arms of the store's ``arm_updates`` group (one clear error when it has none)."""
    require_group(root, store, ARMS_GROUP, "per-arm means over seeds: the demo's pair analysis")
    return [str(a) for a in S.open_group(root, store, ARMS_GROUP)["arm"].values]


def _arm_args(root: Path, store: str, source: str, value: Any) -> tuple[str, list[str]]:
    group, var = source_of(source)
    if group != GROUP:
        raise ValueError(f"arms are summarised for the weights (W_q, W_k), not for {source!r}")
    return var, picked(value, "arm", most=MAX_SIDE_BY_SIDE, known=arms(root, store), where=f"{store}/{ARMS_GROUP}")


def arm_heatmaps(root: Path, store: str, source: str, value: Any):
    """Layer x pair heatmaps of the picked arms side by side (mean over heads and seeds)."""
    var, names = _arm_args(root, store, source, value)
    return figs.arm_layer_pair_heatmaps(
        S.loaded(root, store, ARMS_GROUP, var), names, var=var, phase_lengths=phase_lengths(root, store, source)
    )


def arm_bands(root: Path, store: str, source: str, value: Any):
    """Band means of the picked arms with their interval over seeds (None without ``arm_bands``)."""
    var, names = _arm_args(root, store, source, value)
    if ARM_BANDS_GROUP not in S.groups_of(root, store):
        return None
    table = S.open_group(root, store, ARM_BANDS_GROUP)
    return arm_figs.band_update_intervals(table.sel(arm=[n for n in names if n in table["arm"].values]).load(), var=var)


def default_arms(names: list[str]) -> list[str]:
    """The first KD arm and its CE twin when both exist (``arms.objective_pairs``), else the first two arms."""
    pairs = A.objective_pairs(names)
    return list(pairs[0]) if pairs else names[:2]


def layer_from_click(click: Any) -> int | None:
    """The layer of a clicked layer x pair cell (the cross-link to the head x pair view)."""
    try:
        return int(click["points"][0]["y"])
    except (TypeError, KeyError, IndexError, ValueError):
        return None


def layout() -> html.Div:
    return html.Div(
        [
            html.Div(
                [
                    store_picker("updates"),
                    mode_picker("updates", MODES, "pairs"),
                    control(
                        "what", dcc.RadioItems(id="updates-source", options=list(SOURCES), value="W_q", inline=True)
                    ),
                    control(
                        "checkpoint pair",
                        dcc.Dropdown(id="updates-comparison", clearable=False, style={"minWidth": "320px"}),
                    ),
                    control("layer (or click a cell)", dcc.Dropdown(id="updates-layer", clearable=False)),
                    control(
                        "arms (side by side)", dcc.Dropdown(id="updates-arms", multi=True, style={"minWidth": "320px"})
                    ),
                ],
                className="wb-controls",
            ),
            html.Div(id="updates-messages"),
            html.Div(id="updates-picker-messages"),
            graph("updates-graph", 460),
            html.Div([graph("updates-heads", 400), graph("updates-bands", 400)], className="wb-row"),
        ]
    )


def register(app: Dash, root: Path) -> None:
    register_store_picker(app, root, "updates", GROUP, wstore.UPDATES_STATES)

    def pickers(store: Any, source: Any, click: Any, comparison: Any, layer: Any):
        """Comparison and layer choices for the store and source; a heatmap click picks the layer."""
        if not store:
            return [], None, [], None, no_update
        have = available_sources(root, store)
        if source not in have:
            return no_update, no_update, no_update, no_update, have[0] if have else no_update
        comps = comparisons(root, store, source)
        lays = layers(root, store, source)
        if callback_context.triggered_id == "updates-graph":
            clicked = layer_from_click(click)
            layer = clicked if clicked is not None else layer
        return (
            comps,
            comparison if comparison in comps else comps[-1],
            lays,
            layer if layer in lays else lays[0],
            no_update,
        )

    app.callback(
        Output("updates-comparison", "options"),
        Output("updates-comparison", "value"),
        Output("updates-layer", "options"),
        Output("updates-layer", "value"),
        Output("updates-source", "value"),
        Output("updates-picker-messages", "children"),
        Input("updates-store", "value"),
        Input("updates-source", "value"),
        Input("updates-graph", "clickData"),
        State("updates-comparison", "value"),
        State("updates-layer", "value"),
    )(guarded(with_picker_messages(pickers), lambda m: ([], None, [], None, no_update, notice([m], "error"))))

    def arm_picker(store: Any, mode: Any, current: Any):
        if not store or mode != "arms":
            return [], []
        names = arms(root, store)
        return names, [a for a in (current or []) if a in names] or default_arms(names)

    app.callback(
        Output("updates-arms", "options"),
        Output("updates-arms", "value"),
        Input("updates-store", "value"),
        Input("updates-mode", "value"),
        State("updates-arms", "value"),
    )(guarded(arm_picker, lambda m: ([], [])))

    def draw(store: Any, mode: Any, source: Any, comparison: Any, chosen: Any):
        if mode == "arms" and store:
            if not chosen:
                arms(root, store)  # says so when the store has no arm summary
                return {}, shown(False, 460), {}, shown(False, 400), no_update
            bars = arm_bands(root, store, source, chosen)
            return (
                arm_heatmaps(root, store, source, chosen),
                shown(True, 460),
                bars or {},
                shown(bars is not None, 400),
                [],
            )
        if not store or not comparison:
            return {}, shown(False, 460), {}, shown(False, 400), no_update
        fig = heatmap(root, store, source, comparison)
        bars = bands(root, store, source, comparison)
        return fig, shown(True, 460), bars or {}, shown(bars is not None, 400), []

    app.callback(
        Output("updates-graph", "figure"),
        Output("updates-graph", "style"),
        Output("updates-bands", "figure"),
        Output("updates-bands", "style"),
        Output("updates-messages", "children", allow_duplicate=True),
        Input("updates-store", "value"),
        Input("updates-mode", "value"),
        Input("updates-source", "value"),
        Input("updates-comparison", "value"),
        Input("updates-arms", "value"),
        prevent_initial_call="initial_duplicate",
    )(guarded(draw, lambda m: ({}, shown(False, 460), {}, shown(False, 400), notice([m], "error"))))

    def draw_heads(store: Any, mode: Any, source: Any, comparison: Any, layer: Any):
        if mode == "arms" or not store or not comparison or layer is None:
            return {}, shown(False, 400)
        return heads(root, store, source, comparison, layer), shown(True, 400)

    app.callback(
        Output("updates-heads", "figure"),
        Output("updates-heads", "style"),
        Input("updates-store", "value"),
        Input("updates-mode", "value"),
        Input("updates-source", "value"),
        Input("updates-comparison", "value"),
        Input("updates-layer", "value"),
    )(guarded(draw_heads, lambda m: ({}, shown(False, 400))))
