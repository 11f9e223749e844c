"""Training view: loss curves per phase with theta switches marked, live while runs write metrics.jsonl
(a ``dcc.Interval`` polls; a poll redraws only when a metrics file changed)."""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

from dash import Dash, Input, Output, State, callback_context, dcc, html, no_update

from app import runs as R
from app.paths import NotRegular, OutsideRunsDir, inside, read_regular
from app.views.common import control, graph, guarded, notice, only_when_shown, shown
from workbench.figures import pair_tracking as pair_figs
from workbench.figures import training as figs
from workbench.runs import RunDir

TAB = ("training", "Training")
METRICS = ["loss", "ce", "kd"]
POLL_MS = 2000
PAIR_UPDATES = "pair_updates.jsonl"  # written by workbench.train.pair_tracking when track_every > 0
MAX_RUNS = 8


def selected_runs(value: Any) -> list[str]:
    """The dropdown value as a list of run names (validated as strings, at most MAX_RUNS)."""
    names = [value] if isinstance(value, str) else list(value or [])
    if not all(isinstance(n, str) for n in names):
        raise ValueError("run names must be strings")
    if len(names) > MAX_RUNS:
        raise ValueError(f"at most {MAX_RUNS} runs at once, got {len(names)}")
    return names


def training_view(root: Path, names: list[str], metric: str):
    """(figure or None, messages, info rows) for the selected runs; every broken run becomes a message."""
    if metric not in METRICS:
        raise ValueError(f"unknown metric {metric!r}; one of {', '.join(METRICS)}")
    if not names:
        return None, [f"no run selected; runs in RUNS_DIR: {', '.join(R.list_runs(root)) or 'none'}"], []
    data: dict[str, list[dict]] = {}
    messages: list[str] = []
    info = []
    for name in names:
        try:
            run = R.run_info(root, name)
        except FileNotFoundError as exc:
            messages.append(str(exc))
            continue
        messages.extend(run.messages)
        phases = ", ".join(
            f"{p.get('name')} ({p.get('steps')} steps, L={p.get('seq_len')}, theta={p.get('rope_theta')})"
            for p in run.phases
        ) or ("unknown (no run.yaml)" if run.config is None else "unknown (run.yaml lists no phases)")
        info.append((name, phases, ", ".join(run.checkpoints) or "none complete"))
        records = run.metrics.records if run.metrics else []
        if any(r.get("kind") == "train" and r.get(metric) is not None for r in records):
            data[name] = records
        elif records:
            messages.append(f"{name}: no train records with {metric!r} yet")
    if not data:
        return None, messages or ["no metrics to draw"], info
    return figs.training_figure(data, metric=metric), messages, info


def pair_updates_view(root: Path, names: list[str]):
    """The tracked pair updates (W_q) of the first selected run that has them, or None. The file is read
    confined to RUNS_DIR (a link leaving it, or a FIFO, counts as no file)."""
    import json

    for name in names:
        try:
            text = read_regular(root, inside(root, name) / PAIR_UPDATES)
        except (OutsideRunsDir, NotRegular, OSError):
            continue
        records = []
        for line in text.splitlines():
            try:
                records.append(json.loads(line))
            except ValueError:  # a line being written
                continue
        if records:
            return pair_figs.pair_updates_figure(records, run=name)
    return None


def run_from_query(root: Path, search: str | None) -> str | None:
    """The run a deep link (``?tab=training&run=NAME``) asks for, confined to RUNS_DIR."""
    values = parse_qs((search or "").lstrip("?")).get("run")
    if not values:
        return None
    name = values[0]
    path = inside(root, name)
    if not path.is_dir() or not RunDir(path).is_run():
        raise ValueError(f"run {name!r} from the URL is not a run in RUNS_DIR")
    return name


def layout() -> html.Div:
    return html.Div(
        [
            html.Div(
                [
                    control("runs", dcc.Dropdown(id="train-runs", multi=True, placeholder="pick runs")),
                    control("metric", dcc.RadioItems(id="train-metric", options=METRICS, value="loss", inline=True)),
                    control(
                        "live",
                        dcc.Checklist(
                            id="train-live", options=[{"label": " poll metrics.jsonl", "value": "on"}], value=["on"]
                        ),
                    ),
                ],
                className="wb-controls",
            ),
            dcc.Interval(id="train-poll", interval=POLL_MS),
            dcc.Store(id="train-stamp"),
            dcc.Store(id="train-pairs-stamp"),
            html.Div(id="train-url-messages"),
            html.Div(id="train-messages"),
            graph("train-graph", 560),
            graph("train-pairs", 420),
            html.Table(id="train-info", className="wb-summary"),
        ]
    )


def register(app: Dash, root: Path) -> None:
    @app.callback(Output("train-poll", "disabled"), Input("train-live", "value"))
    def toggle_live(live: Any) -> bool:
        return not (isinstance(live, list) and "on" in live)

    def refresh(_n: Any, search: str | None, tab: Any, current: Any):
        """Keep the run list current while the view is shown; a deep link selects its run."""
        only_when_shown(tab, TAB[0])
        names = R.list_runs(root)
        value = [n for n in selected_runs(current) if n in names] if current else names[:MAX_RUNS]
        first = callback_context.triggered_id == "url" or not current  # a deep link wins on first display only
        wanted = run_from_query(root, search) if first else None
        if wanted:
            value = [wanted]
        return [{"label": n, "value": n} for n in names], value, []

    app.callback(
        Output("train-runs", "options"),
        Output("train-runs", "value"),
        Output("train-url-messages", "children"),
        Input("train-poll", "n_intervals"),
        Input("url", "search"),
        Input("tabs", "value"),
        State("train-runs", "value"),
    )(guarded(refresh, lambda m: (no_update, no_update, notice([m], "error"))))

    def draw(value: Any, metric: str, _n: Any, tab: Any, stamp: Any):
        only_when_shown(tab, TAB[0])
        names = selected_runs(value)
        now = [names, metric, R.metrics_mtime(root, names)]
        if callback_context.triggered_id == "train-poll" and stamp == now:
            return no_update, no_update, no_update, no_update, no_update
        fig, messages, info = training_view(root, names, metric)
        rows = [html.Tr([html.Th("run"), html.Th("phases"), html.Th("checkpoints")])] + [
            html.Tr([html.Td(a), html.Td(b), html.Td(c)]) for a, b, c in info
        ]
        return (
            fig or {},
            shown(fig is not None, 560),
            notice(messages, "info" if fig else "error"),
            rows if info else [],
            now,
        )

    app.callback(
        Output("train-graph", "figure"),
        Output("train-graph", "style"),
        Output("train-messages", "children"),
        Output("train-info", "children"),
        Output("train-stamp", "data"),
        Input("train-runs", "value"),
        Input("train-metric", "value"),
        Input("train-poll", "n_intervals"),
        Input("tabs", "value"),
        State("train-stamp", "data"),
    )(guarded(draw, lambda m: ({}, shown(False, 560), notice([m], "error"), [], None)))

    def pairs(value: Any, _n: Any, tab: Any, stamp: Any):
        only_when_shown(tab, TAB[0])
        names = selected_runs(value)
        now = [names, R.metrics_mtime(root, names, PAIR_UPDATES)]
        if callback_context.triggered_id == "train-poll" and stamp == now:
            return no_update, no_update, no_update  # a poll re-reads the file only when it changed
        fig = pair_updates_view(root, names)
        return fig or {}, shown(fig is not None, 420), now

    app.callback(
        Output("train-pairs", "figure"),
        Output("train-pairs", "style"),
        Output("train-pairs-stamp", "data"),
        Input("train-runs", "value"),
        Input("train-poll", "n_intervals"),
        Input("tabs", "value"),
        State("train-pairs-stamp", "data"),
    )(guarded(pairs, lambda m: ({}, shown(False, 420), None)))
