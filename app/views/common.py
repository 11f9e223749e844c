"""Pieces every view uses: message boxes, graph containers, and the error boundary for callbacks."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from typing import Any

from dash import Input, Output, State, dcc, html
from dash.exceptions import PreventUpdate

from app import stores
from workbench.checkpoint_io import CheckpointError

log = logging.getLogger("workbench.app")

# Problems a callback turns into a message: bad input, a path outside RUNS_DIR, a missing/half-written
# run or store (StoreError and OutsideRunsDir are ValueErrors), a checkpoint that is not complete.
EXPECTED = (ValueError, KeyError, IndexError, OSError, CheckpointError)

GRAPH_CONFIG = {"displaylogo": False, "responsive": True}


def graph(id_: str, height: int = 480) -> dcc.Graph:
    """A plotly graph slot, hidden until a callback gives it a figure."""
    return dcc.Graph(id=id_, figure={}, config=GRAPH_CONFIG, style={"height": f"{height}px", "display": "none"})


def shown(visible: bool, height: int = 480) -> dict[str, str]:
    """The style of a graph slot that is (not) showing a figure."""
    return {"height": f"{height}px", "display": "block" if visible else "none"}


def notice(messages: Iterable[str], kind: str = "info") -> list[html.Div]:
    """One box per message; kind 'error' for what stopped the view, 'info' for what it skipped."""
    cls = "wb-error" if kind == "error" else "wb-info"
    return [html.Div(m, className=f"wb-notice {cls}") for m in messages]


def no_data(*groups: str) -> str:
    """The message for a view whose kind of result is not in RUNS_DIR."""
    names = " or ".join(f"'{g}'" for g in groups)
    return (
        f"no data of this kind in RUNS_DIR: no store holds a {names} group "
        f"(see docs/store-schema.md for the command that writes it)"
    )


def guarded(fn: Callable[..., Any], fallback: Callable[[str], Any]) -> Callable[..., Any]:
    """Run ``fn``; a problem becomes ``fallback(message)`` instead of a traceback or an HTTP 500 (expected
    problems as their own message, anything else as one line naming the error, logged with its traceback)."""

    def wrapper(*args: Any) -> Any:
        try:
            return fn(*args)
        except PreventUpdate:
            raise
        except EXPECTED as exc:
            log.info("view refused input: %s", exc)
            message = exc.args[0] if isinstance(exc, KeyError) and exc.args else str(exc)
            return fallback(str(message))
        except TypeError as exc:  # a payload of the wrong type (a number or list where a name is expected)
            log.info("view refused input of the wrong type: %s", exc)
            return fallback(f"refused input of the wrong type ({exc})")
        except Exception as exc:  # never an HTTP 500: the page gets a message, the server log the traceback
            log.exception("view failed")
            return fallback(f"this view failed ({type(exc).__name__}: {exc}); see the server log")

    wrapper.__name__ = getattr(fn, "__name__", "callback")
    wrapper.__doc__ = fn.__doc__
    return wrapper


def with_picker_messages(fn: Callable[..., tuple]) -> Callable[..., tuple]:
    """A pickers callback that also clears the view's ``{prefix}-picker-messages`` box (one more output,
    ``[]``), so that ``guarded(..., lambda m: (..., notice([m], "error")))`` can say why a picked store
    offers no choices (confined away, half-written) instead of leaving the controls empty without a word."""

    def wrapper(*args: Any) -> tuple:
        return (*fn(*args), [])

    wrapper.__name__ = getattr(fn, "__name__", "pickers")
    wrapper.__doc__ = fn.__doc__
    return wrapper


def picked(value: Any, what: str, *, most: int, known: Iterable[str] | None = None, where: str = "") -> list[str]:
    """A multi-select dropdown's value as a list of names: at least one, at most ``most``, each in ``known``
    (when given); anything else is one message naming what is wrong."""
    names = [value] if isinstance(value, str) else list(value or [])
    if not names or not all(isinstance(n, str) for n in names):
        raise ValueError(f"pick at least one {what}")
    if len(names) > most:
        raise ValueError(f"at most {most} {what}s side by side, got {len(names)}")
    if known is not None:
        known = list(known)
        unknown = [n for n in names if n not in known]
        if unknown:
            raise ValueError(f"no {what} {unknown[0]!r} in {where} (has: {', '.join(known)})")
    return names


def only_when_shown(tab: Any, name: str) -> None:
    """Skip a callback while its view's tab is hidden: the first page load then only runs the shown view
    (switching tabs fires it)."""
    if tab != name:
        raise PreventUpdate


def control(label: str, component: Any) -> html.Div:
    """A labelled control in a view's control row."""
    return html.Div([html.Label(label, className="wb-label"), component], className="wb-control")


def mode_picker(prefix: str, modes: dict[str, str], value: str) -> html.Div:
    """The "show" radio of a view with a per-checkpoint and a per-arm mode (``{prefix}-mode``)."""
    options = [{"label": v, "value": k} for k, v in modes.items()]
    return control("show", dcc.RadioItems(id=f"{prefix}-mode", options=options, value=value, inline=True))


def require_group(root: Any, store: str, group: str, writer: str) -> None:
    """One message, naming what writes it, when the store has no ``group`` (a view's per-arm summary)."""
    if group not in stores.groups_of(root, store):
        raise ValueError(f"{store} has no {group!r} group ({writer} writes it)")


def store_picker(prefix: str) -> html.Div:
    """The store dropdown of a data view (``{prefix}-store``)."""
    return control("store", dcc.Dropdown(id=f"{prefix}-store", placeholder="pick a store", clearable=False))


def register_store_picker(app: Any, root: Any, prefix: str, *groups: str) -> None:
    """Fill ``{prefix}-store`` with the stores holding any of ``groups`` whenever the tabs change;
    ``{prefix}-messages`` says when none does, and why each ``*.zarr`` that is no store was left out."""

    def fill(tab: Any, current: Any):
        only_when_shown(tab, prefix)
        skipped: list[str] = []
        found = stores.stores_with_group(root, *groups, skipped=skipped)
        value = current if current in found else (found[0] if found else None)
        messages = ([] if found else notice([no_data(*groups)], "error")) + notice(skipped)
        return [{"label": s, "value": s} for s in found], value, messages

    app.callback(
        Output(f"{prefix}-store", "options"),
        Output(f"{prefix}-store", "value"),
        Output(f"{prefix}-messages", "children"),
        Input("tabs", "value"),
        State(f"{prefix}-store", "value"),
    )(guarded(fill, lambda m: ([], None, notice([m], "error"))))
