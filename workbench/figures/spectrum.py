"""RoPE spectrum figures: per-pair wavelengths against context lengths, and the long-range sum B(m).

These draw the theory of ``workbench.rope`` (nothing is computed here that rope.py does not define):
which pairs complete a full rotation within a context (arXiv 2310.05209's critical dimension), and where
B(m) = sum_j cos(m * omega_j) turns negative (arXiv 2405.14591's base lower bound).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import plotly.graph_objects as go

from workbench import rope

FULL = "#1f77b4"  # pairs that complete a rotation within L
PARTIAL = "#d62728"  # pairs that do not
MAX_CURVE_POINTS = 4000  # B(m) is drawn on at most this many m (the minimum is kept exactly)


def wavelength_figure(
    theta: float,
    head_dim: int,
    length: int,
    *,
    scaling: Mapping[str, Any] | None = None,
    phase_lengths: Sequence[int] | None = None,
    title: str | None = None,
) -> go.Figure:
    """Wavelength of every pair (log scale) as bars, coloured by whether it rotates fully within
    ``length``; a horizontal line at ``length`` (and at each of ``phase_lengths``) and a vertical line at
    the critical pair, so the pairs a context never sees a full turn of stand out."""
    table = rope.spectrum_table(theta, head_dim, length, scaling)
    pairs = [r["pair"] for r in table]
    waves = np.array([r["wavelength"] for r in table])
    full = [r["full_rotation"] for r in table]
    crit = rope.critical_pair(theta, head_dim, length)
    fig = go.Figure(
        go.Bar(
            x=pairs,
            y=waves,
            marker_color=[FULL if f else PARTIAL for f in full],
            customdata=np.stack([[r["turns"] for r in table], [f"{r['dims'][0]},{r['dims'][1]}" for r in table]], -1),
            hovertemplate="pair %{x} (dims %{customdata[1]})<br>wavelength %{y:.4g} tokens"
            "<br>turns in L %{customdata[0]:.4g}<extra></extra>",
            name="wavelength",
        )
    )
    _length_line(fig, length, f"L = {length:,}", "dash", "black")
    for other in sorted(set(int(p) for p in (phase_lengths or ())) - {int(length)}):
        _length_line(fig, other, f"phase L = {other:,}", "dot", "grey")
    if crit < len(pairs):
        fig.add_vline(
            x=crit - 0.5,
            line_color="black",
            line_width=2,
            annotation_text=f"critical pair {crit} (dim {2 * crit})",
            annotation_position="top right",
        )
    fig.update_layout(
        title=title or f"RoPE wavelengths: theta={theta:g}, head_dim={head_dim}, L={length:,}",
        xaxis_title="pair j (dims j, j+d/2)",
        yaxis_title="wavelength lambda_j (tokens)",
        yaxis_type="log",
        bargap=0.05,
        showlegend=False,
        margin=dict(t=60, r=20, b=50, l=70),
    )
    return fig


def _length_line(fig: go.Figure, length: int, text: str, dash: str, colour: str) -> None:
    """A horizontal line at ``length`` tokens on the log wavelength axis, labelled at its left end.
    (Shape annotations from ``add_hline`` land at 10**length on a log axis, so the label is placed here
    in the axis' log10 units.)"""
    fig.add_hline(y=length, line_dash=dash, line_color=colour)
    fig.add_annotation(
        x=0,
        xref="x domain",
        xanchor="left",
        y=float(np.log10(length)),
        yref="y",
        yanchor="bottom",
        text=text,
        showarrow=False,
        font=dict(color=colour, size=11),
        bgcolor="rgba(255,255,255,0.7)",
    )


def long_range_figure(theta: float, head_dim: int, length: int, *, bound: float | None = None) -> go.Figure:
    """B(m) = sum_j cos(m * omega_j) for m = 0..length, with the zero line; where it dips below zero,
    theta is under the base lower bound for this length (``bound`` is shown in the title when known)."""
    values = rope.long_range_sum(theta, head_dim, length)
    m = np.arange(values.size)
    if values.size > MAX_CURVE_POINTS:  # keep the shape and the exact minimum, not every point
        idx = np.unique(
            np.concatenate([np.linspace(0, values.size - 1, MAX_CURVE_POINTS).astype(int), [int(values.argmin())]])
        )
        m, values = m[idx], values[idx]
    fig = go.Figure(
        go.Scatter(x=m, y=values, mode="lines", name="B(m)", hovertemplate="m %{x}<br>B(m) %{y:.3f}<extra></extra>")
    )
    fig.add_hline(y=0, line_dash="dash", line_color=PARTIAL)
    lowest = int(m[values.argmin()])
    fig.add_trace(
        go.Scatter(
            x=[lowest],
            y=[values.min()],
            mode="markers",
            marker=dict(color=PARTIAL, size=9),
            name=f"min B = {values.min():.3f} at m = {lowest}",
        )
    )
    subtitle = f"; base lower bound for L: {bound:.4g}" if bound is not None else ""
    fig.update_layout(
        title=f"Long-range sum B(m), theta={theta:g}{subtitle}",
        xaxis_title="relative distance m (tokens)",
        yaxis_title="B(m) = sum_j cos(m omega_j)",
        legend=dict(orientation="h", y=-0.2),
        margin=dict(t=60, r=20, b=50, l=70),
    )
    return fig
