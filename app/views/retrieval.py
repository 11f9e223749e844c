"""Retrieval view (store group 'retrieval'), drawn through workbench.figures.retrieval."""

from __future__ import annotations

from pathlib import Path

from dash import Dash, html

from app.views.common import graph, register_store_picker, store_picker

TAB = ("retrieval", "Retrieval")
GROUP = "retrieval"


def layout() -> html.Div:
    return html.Div([html.Div([store_picker("retrieval")], className="wb-controls"),
                     html.Div(id="retrieval-messages"), graph("retrieval-graph")])


def register(app: Dash, root: Path) -> None:
    register_store_picker(app, root, "retrieval", GROUP)
