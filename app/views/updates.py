"""Query updates view (store group 'updates_weights'), drawn through workbench.figures.updates."""

from __future__ import annotations

from pathlib import Path

from dash import Dash, html

from app.views.common import graph, register_store_picker, store_picker

TAB = ("updates", "Query updates")
GROUP = "updates_weights"


def layout() -> html.Div:
    return html.Div([html.Div([store_picker("updates")], className="wb-controls"),
                     html.Div(id="updates-messages"), graph("updates-graph")])


def register(app: Dash, root: Path) -> None:
    register_store_picker(app, root, "updates", GROUP)
