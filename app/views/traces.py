"""Perturbation traces view (store group 'traces'), drawn through workbench.figures.traces."""

from __future__ import annotations

from pathlib import Path

from dash import Dash, html

from app.views.common import graph, register_store_picker, store_picker

TAB = ("traces", "Perturbation traces")
GROUP = "traces"


def layout() -> html.Div:
    return html.Div([html.Div([store_picker("traces")], className="wb-controls"),
                     html.Div(id="traces-messages"), graph("traces-graph")])


def register(app: Dash, root: Path) -> None:
    register_store_picker(app, root, "traces", GROUP)
