"""RoPE spectrum explorer: theta, head dim and length controls showing wavelengths, the critical
dimension, the base lower bound and spectrum utilisation (all from ``workbench.rope``)."""

from __future__ import annotations

import functools
import math
from pathlib import Path
from typing import Any

from dash import Dash, Input, Output, dcc, html

from app.views.common import control, graph, guarded, notice, only_when_shown, shown
from workbench import rope
from workbench.figures import spectrum as figs

TAB = ("spectrum", "RoPE spectrum")
HEAD_DIMS = [16, 32, 64, 96, 128, 256]
MAX_LENGTH = 1 << 21  # 2M tokens
MAX_CURVE_CELLS = 1 << 24  # B(m) over L x d/2 cells: larger is refused (memory, time)
MAX_BOUND_CELLS = 1 << 17  # the base-bound scan (<~1 s at this size; shipped-table rows: instant) runs up to this


def parse_inputs(theta: Any, head_dim: Any, length: Any, phases: Any) -> tuple[float, int, int, list[int]]:
    """Validate the controls; a ValueError names the bad one."""
    try:
        theta = float(theta)
    except (TypeError, ValueError):
        raise ValueError(f"theta must be a number, got {theta!r}") from None
    if not (math.isfinite(theta) and 1.0 < theta <= 1e12):
        raise ValueError(f"theta must be in (1, 1e12], got {theta:g}")
    try:
        head_dim = int(head_dim)
        length = int(length)
    except (TypeError, ValueError):
        raise ValueError(f"head dim and length must be integers, got {head_dim!r}, {length!r}") from None
    if head_dim < 4 or head_dim > 1024 or head_dim % 2:
        raise ValueError(f"head dim must be an even number in [4, 1024], got {head_dim}")
    if not 8 <= length <= MAX_LENGTH:
        raise ValueError(f"length must be in [8, {MAX_LENGTH:,}] tokens, got {length}")
    lengths: list[int] = []
    for part in str(phases or "").replace(";", ",").split(","):
        if part.strip():
            try:
                value = int(float(part))
            except ValueError:
                raise ValueError(f"phase lengths must be integers separated by commas, got {part.strip()!r}") from None
            if not 8 <= value <= MAX_LENGTH:
                raise ValueError(f"phase length {value} out of [8, {MAX_LENGTH:,}]")
            lengths.append(value)
    return theta, head_dim, length, lengths


@functools.lru_cache(maxsize=256)
def base_bound(head_dim: int, length: int) -> float | None:
    """The base lower bound (first passing theta on rope's 0.023 % log grid), cached; None when the scan is
    too long for an interactive view."""
    if length * head_dim // 2 > MAX_BOUND_CELLS:
        return None
    return rope.base_lower_bound(head_dim, length)


def summary(theta: float, head_dim: int, length: int, phases: list[int]) -> list[tuple[str, str]]:
    """The numbers the explorer prints beside the figures, as (label, value) rows."""
    util = rope.utilisation(theta, head_dim, length)
    bound = base_bound(head_dim, length)
    crit = rope.critical_dimension(theta, head_dim, length)
    rows = [
        (
            "critical dimension (2310.05209)",
            f"{crit} (pairs 0..{crit // 2 - 1} rotate fully within L)"
            if crit
            else "0 (no pair rotates fully within L)",
        ),
        ("critical pair", str(rope.critical_pair(theta, head_dim, length))),
        (
            "pairs with >= 1 full rotation in L",
            f"{util.n_full_pairs} of {head_dim // 2} ({util.full_rotation_fraction:.1%})",
        ),
        ("mean coverage min(1, L omega / 2pi)", f"{util.mean_coverage:.3f}"),
        ("largest theta with every pair rotating in L", f"{rope.theta_for_full_rotation(head_dim, length):.4g}"),
        (
            "base lower bound (2405.14591)",
            f"{bound:.4g}: first theta with B(m) >= 0 for all m <= L on the {rope.BOUND_GRID_LABEL} "
            f"({'theta is above it' if theta >= bound else 'theta is BELOW it'})"
            if bound is not None
            else f"not scanned in the app for L x d/2 > {MAX_BOUND_CELLS:,}; run `workbench rope --base-bound "
            f"--head-dim {head_dim} --length {length}` (instant for the shipped table's d = 64, 128 and "
            f"L = 1k..128k)",
        ),
    ]
    for other in phases:
        if other != length and other > 2 * math.pi and length > 2 * math.pi:
            rows.append(
                (
                    f"theta keeping this critical dim at L = {other:,}",
                    f"{rope.theta_for_target_length(theta, length, other):.4g}",
                )
            )
    return rows


def figures(theta: float, head_dim: int, length: int, phases: list[int]):
    """(wavelength figure, B(m) figure or None when too large to draw here)."""
    wave = figs.wavelength_figure(theta, head_dim, length, phase_lengths=phases)
    curve = None
    if length * head_dim // 2 <= MAX_CURVE_CELLS:
        curve = figs.long_range_figure(theta, head_dim, length, bound=base_bound(head_dim, length))
    return wave, curve


def layout() -> html.Div:
    return html.Div(
        [
            html.Div(
                [
                    control("theta", dcc.Input(id="spec-theta", type="number", value=10000, debounce=True)),
                    control("head dim", dcc.Dropdown(id="spec-head-dim", options=HEAD_DIMS, value=64, clearable=False)),
                    control(
                        "length L", dcc.Input(id="spec-length", type="number", value=4096, min=8, step=1, debounce=True)
                    ),
                    control(
                        "other phase lengths",
                        dcc.Input(
                            id="spec-phases", type="text", value="", placeholder="e.g. 1024, 32768", debounce=True
                        ),
                    ),
                ],
                className="wb-controls",
            ),
            html.Div(id="spec-messages"),
            html.Table(id="spec-summary", className="wb-summary"),
            graph("spec-wavelengths", 420),
            graph("spec-longrange", 360),
        ]
    )


def update(theta: Any, head_dim: Any, length: Any, phases: Any):
    """Callback body: controls -> (wavelength fig, its style, B(m) fig, its style, summary rows, messages)."""
    theta, head_dim, length, lengths = parse_inputs(theta, head_dim, length, phases)
    wave, curve = figures(theta, head_dim, length, lengths)
    rows = [html.Tr([html.Th(k), html.Td(v)]) for k, v in summary(theta, head_dim, length, lengths)]
    msgs = [] if curve is not None else notice([f"B(m) not drawn for L x d/2 > {MAX_CURVE_CELLS:,}"])
    return wave, shown(True, 420), curve or {}, shown(curve is not None, 360), rows, msgs


def shown_update(theta: Any, head_dim: Any, length: Any, phases: Any, tab: Any):
    """:func:`update`, run only while the spectrum tab is shown."""
    only_when_shown(tab, TAB[0])
    return update(theta, head_dim, length, phases)


def register(app: Dash, root: Path) -> None:
    def fallback(message: str):
        return {}, shown(False, 420), {}, shown(False, 360), [], notice([message], "error")

    app.callback(
        Output("spec-wavelengths", "figure"),
        Output("spec-wavelengths", "style"),
        Output("spec-longrange", "figure"),
        Output("spec-longrange", "style"),
        Output("spec-summary", "children"),
        Output("spec-messages", "children"),
        Input("spec-theta", "value"),
        Input("spec-head-dim", "value"),
        Input("spec-length", "value"),
        Input("spec-phases", "value"),
        Input("tabs", "value"),
    )(guarded(shown_update, fallback))
