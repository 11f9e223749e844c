"""The Dash app: a header naming RUNS_DIR, one tab per view, deep links via the URL query.

``create_app(runs_dir)`` builds the app for a runs directory (the demo and the tests call it);
``serve(runs_dir, host, port)`` runs it (``workbench app`` calls it). Everything the app reads is
confined to RUNS_DIR (``app.paths``).
"""

from __future__ import annotations

import importlib
import logging
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import plotly.graph_objects as go
from dash import Dash, Input, Output, dcc, html
from dash.exceptions import DependencyException
from flask import request

from app.paths import root_of
from app.views import retrieval, spectrum, traces, training, updates

VIEWS = [updates, traces, retrieval, training, spectrum]
DEFAULT_TAB = "training"
MAX_REQUEST = 8 << 20  # bytes: a callback call carries control values and a click (the app has no uploads)


def tab_from_query(search: str | None) -> str | None:
    """The tab a deep link (``?tab=NAME``) asks for, or None for an unknown or missing one."""
    wanted = parse_qs((search or "").lstrip("?")).get("tab", [None])[0]
    return wanted if wanted in {v.TAB[0] for v in VIEWS} else None


def create_app(runs_dir: str | Path) -> Dash:
    """The dashboard for ``runs_dir`` (must exist); reads nothing outside it."""
    root = root_of(runs_dir)
    app = Dash(
        __name__,
        title="RoPE-KD workbench",
        assets_folder=str(Path(__file__).parent / "assets"),
        update_title=None,
        serve_locally=True,
    )
    app.layout = html.Div(
        [
            dcc.Location(id="url", refresh=False),
            html.Div(
                [html.H1("RoPE-KD workbench"), html.Span(f"RUNS_DIR: {root}", className="wb-root")],
                className="wb-header",
            ),
            html.Div(
                [
                    dcc.Tabs(
                        id="tabs",
                        value=None,
                        children=[  # set from the URL: no view computes before that
                            dcc.Tab(label=v.TAB[1], value=v.TAB[0], id=f"tab-{v.TAB[0]}", children=v.layout())
                            for v in VIEWS
                        ],
                    )
                ],
                className="wb-body",
            ),
        ]
    )

    @app.callback(Output("tabs", "value"), Input("url", "search"))
    def tab_from_url(search: Any):
        return (tab_from_query(search) if isinstance(search, str) else None) or DEFAULT_TAB

    for view in VIEWS:
        view.register(app, root)
    # Dash refuses unregistered script paths (e.g. /_dash-component-suites/dash/../../x) by raising; answer
    # them as what they are, a 404, instead of a 500 with a server-side traceback.
    app.server.register_error_handler(DependencyException, lambda exc: ("not found", 404))
    app.server.config["MAX_CONTENT_LENGTH"] = MAX_REQUEST  # a bigger request is a 413, never parsed
    dispatch = app.config.routes_pathname_prefix + "_dash-update-component"
    app.server.before_request(lambda: malformed_call(app) if request.path == dispatch else None)
    warm_up()
    return app


def malformed_call(app: Dash) -> tuple[str, int] | None:
    """A 400 naming what is wrong for a POST to the callback endpoint that is no Dash callback call (not a
    JSON object, an unknown output, inputs that are not a list of {id, property}); None lets Dash answer.
    Dash itself would raise on these (an HTTP 500); the values inside a well-formed call are each
    callback's business (``views.common.guarded``)."""
    body = request.get_json(silent=True)
    if not isinstance(body, dict):
        return "a callback call is a JSON object", 400
    if not isinstance(body.get("output"), str) or body["output"] not in app.callback_map:
        return "unknown callback output", 400
    if not isinstance(body.get("outputs"), (dict, list)):
        return "'outputs' must be an object or a list", 400
    for key in ("inputs", "state"):
        items = body.get(key, [])
        if not isinstance(items, list) or not all(
            isinstance(i, dict) and "id" in i and "property" in i or isinstance(i, list) for i in items
        ):
            return f"'{key}' must be a list of {{id, property, value}}", 400
        want = len(app.callback_map[body["output"]].get(key) or [])
        if len(items) != want:  # Dash indexes them by position: too few is an IndexError (HTTP 500)
            return f"'{key}' must have {want} entries for this callback, got {len(items)}", 400
    changed = body.get("changedPropIds", [])
    if not isinstance(changed, list) or not all(isinstance(c, str) for c in changed):
        return "'changedPropIds' must be a list of strings", 400
    return None


def warm_up() -> None:
    """Pay one-time import costs at start-up instead of in the first callback a user waits for: xarray
    imports dask.array and scipy.sparse on its first indexing (~0.8 s here), plotly its layout validators
    on the first Figure (~0.25 s)."""
    for name in ("dask.array", "scipy.sparse"):
        try:
            importlib.import_module(name)
        except ImportError:
            pass
    go.Figure()


def serve(runs_dir: str | Path, host: str = "127.0.0.1", port: int = 8050, debug: bool = False) -> None:
    """Serve the dashboard (blocking)."""
    app = create_app(runs_dir)
    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    print(f"workbench app: serving {root_of(runs_dir)} on http://{host}:{port}/ (Ctrl-C stops)", flush=True)
    app.run(host=host, port=port, debug=debug)
