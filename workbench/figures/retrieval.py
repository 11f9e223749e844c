"""Retrieval figures from the store's ``retrieval`` group (dims checkpoint, task, length, depth, sample).

- :func:`heatmap`: depth x length accuracy grid of one checkpoint (the needle-in-a-haystack picture);
- :func:`heatmaps`: the same grid side by side for several checkpoints (shared colour scale);
- :func:`accuracy_vs_length`: one line per checkpoint, accuracy averaged over depths and samples against
  length (the KD vs CE x theta-schedule comparison), with a vertical marker at each checkpoint's trained length;
- :func:`arm_heatmaps`: the depth x length grid side by side for several arms of an ``arm_retrieval`` group
  (mean over each arm's seeds; the intervals are drawn by ``workbench.figures.findings``).

``metric`` is any per-sample variable: ``correct`` (greedy exact match, default), ``match_all``,
``match_part`` (RULER) or ``answer_logprob``. ``task=None`` averages over all tasks in the data.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import plotly.graph_objects as go
import xarray as xr
from plotly.subplots import make_subplots

LABELS = {
    "correct": "accuracy (exact match)",
    "match_all": "RULER string_match_all",
    "match_part": "RULER string_match_part",
    "answer_logprob": "log p(gold answer)",
}
_BOUNDED = {"correct", "match_all", "match_part"}


def _cell_means(ds: xr.Dataset, metric: str, task: str | None) -> xr.DataArray:
    if metric not in ds:
        raise ValueError(f"no variable {metric!r} in the retrieval data (has {', '.join(map(str, ds.data_vars))})")
    da = ds[metric]
    if task is not None:
        tasks = [str(t) for t in ds["task"].values]
        if task not in tasks:
            raise ValueError(f"no task {task!r} in the retrieval data (has {', '.join(tasks)})")
        da = da.sel(task=task)
    return da.astype(np.float64).mean([d for d in ("task", "sample") if d in da.dims])


def _pick(ds: xr.Dataset, checkpoint: str | None) -> str:
    names = [str(c) for c in ds["checkpoint"].values]
    if checkpoint is None:
        return names[0]
    if checkpoint not in names:
        raise ValueError(f"no checkpoint {checkpoint!r} in the retrieval data (has {', '.join(names)})")
    return checkpoint


def _what(metric: str, task: str | None) -> str:
    return f"{LABELS.get(metric, metric)}, {'all tasks' if task is None else task}"


def _heat(grid: xr.DataArray, metric: str, showscale: bool, zrange) -> go.Heatmap:
    z = grid.transpose("depth", "length").values
    lengths = [str(int(n)) for n in grid["length"].values]  # categorical axis: evenly spaced cells
    depths = [f"{float(d):g}%" for d in grid["depth"].values]
    return go.Heatmap(
        z=z,
        x=lengths,
        y=depths,
        zmin=zrange[0],
        zmax=zrange[1],
        colorscale="RdYlGn",
        showscale=showscale,
        colorbar=dict(title=metric),
        text=np.round(z, 2),
        texttemplate="%{text}",
        hovertemplate="length %{x}<br>depth %{y}<br>" + metric + " %{z:.3f}<extra></extra>",
    )


def _zrange(values: np.ndarray, metric: str) -> tuple[float, float]:
    if metric in _BOUNDED:
        return 0.0, 1.0
    finite = values[np.isfinite(values)]
    return (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)


def heatmap(
    ds: xr.Dataset,
    checkpoint: str | None = None,
    *,
    task: str | None = None,
    metric: str = "correct",
    title: str | None = None,
) -> go.Figure:
    """Depth (rows) x length (columns) grid of ``metric`` averaged over samples for one checkpoint
    (default: the first); each cell is annotated with its value."""
    name = _pick(ds, checkpoint)
    grid = _cell_means(ds.sel(checkpoint=name), metric, task)
    fig = go.Figure(_heat(grid, metric, True, _zrange(grid.values, metric)))
    fig.update_layout(
        title=title or f"{name}: {_what(metric, task)}",
        xaxis_title="length (tokens)",
        yaxis_title="needle depth",
        yaxis_autorange="reversed",
        margin=dict(t=60, r=20, b=50, l=70),
    )
    return fig


def heatmaps(
    ds: xr.Dataset,
    checkpoints: Sequence[str] | None = None,
    *,
    task: str | None = None,
    metric: str = "correct",
    title: str | None = None,
) -> go.Figure:
    """The depth x length grid side by side for several checkpoints, on one colour scale."""
    names = [_pick(ds, c) for c in checkpoints] if checkpoints else [str(c) for c in ds["checkpoint"].values]
    grids = [_cell_means(ds.sel(checkpoint=n), metric, task) for n in names]
    zrange = _zrange(np.concatenate([g.values.ravel() for g in grids]), metric)
    fig = make_subplots(
        rows=1,
        cols=len(names),
        subplot_titles=names,
        shared_yaxes=True,
        horizontal_spacing=min(0.05, 0.3 / max(1, len(names))),
    )
    for i, g in enumerate(grids):
        fig.add_trace(_heat(g, metric, i == len(grids) - 1, zrange), row=1, col=i + 1)
        fig.update_xaxes(title_text="length (tokens)", row=1, col=i + 1)
    fig.update_yaxes(title_text="needle depth", autorange="reversed", row=1, col=1)
    fig.update_layout(title=title or _what(metric, task), margin=dict(t=80, r=20, b=50, l=70))
    return fig


def arm_heatmaps(summary: xr.Dataset, arms: Sequence[str], *, task: str, metric: str = "correct") -> go.Figure:
    """Depth x length grids of ``{metric}_by_depth`` (mean over seeds and samples) side by side for ``arms``
    of an ``arm_retrieval`` group, on one colour scale; titles give each arm's seed count."""
    var = f"{metric}_by_depth"
    if var not in summary:
        raise ValueError(f"no variable {var!r} in the arm summary (has {', '.join(map(str, summary.data_vars))})")
    known = [str(a) for a in summary["arm"].values]
    missing = [a for a in arms if a not in known]
    if missing or not arms:
        raise ValueError(f"no arm {missing[0] if missing else None!r} in the arm summary (has {', '.join(known)})")
    tasks = [str(t) for t in summary["task"].values]
    if task not in tasks:
        raise ValueError(f"no task {task!r} in the arm summary (has {', '.join(tasks)})")
    grids = [summary[var].sel(arm=a, task=task) for a in arms]
    titles = [f"{a} ({int(summary['n_seeds'].sel(arm=a))} seed(s))" if "n_seeds" in summary.coords else a for a in arms]
    fig = make_subplots(
        rows=1,
        cols=len(arms),
        subplot_titles=titles,
        shared_yaxes=True,
        horizontal_spacing=min(0.05, 0.3 / max(1, len(arms))),
    )
    for i, g in enumerate(grids):
        fig.add_trace(_heat(g, metric, i == len(grids) - 1, (0.0, 1.0)), row=1, col=i + 1)
        fig.update_xaxes(title_text="length (tokens)", row=1, col=i + 1)
    fig.update_yaxes(title_text="needle depth", autorange="reversed", row=1, col=1)
    fig.update_layout(title=f"{_what(metric, task)}: mean over each arm's seeds", margin=dict(t=80, r=20, b=50, l=70))
    return fig


def accuracy_vs_length(
    ds: xr.Dataset,
    *,
    task: str | None = None,
    metric: str = "correct",
    checkpoints: Sequence[str] | None = None,
    title: str | None = None,
) -> go.Figure:
    """One line per checkpoint: ``metric`` averaged over depths and samples against length (log2 x axis).
    A dotted vertical line marks each checkpoint's trained/configured length (``max_positions``)."""
    names = [_pick(ds, c) for c in checkpoints] if checkpoints else [str(c) for c in ds["checkpoint"].values]
    fig = go.Figure()
    lows, highs, limits = [], [], set()
    for name in names:
        sub = ds.sel(checkpoint=name)
        line = _cell_means(sub, metric, task).mean("depth")
        lows.append(float(np.nanmin(line.values)))
        highs.append(float(np.nanmax(line.values)))
        label = name
        if "rope_theta" in sub.coords:
            label += f" (theta {float(sub['rope_theta']):g})"
        fig.add_trace(
            go.Scatter(
                x=line["length"].values,
                y=line.values,
                mode="lines+markers",
                name=label,
                hovertemplate="length %{x}<br>" + metric + " %{y:.3f}<extra>" + name + "</extra>",
            )
        )
        if "max_positions" in sub.coords:
            limits.add(int(sub["max_positions"]))
    # trained lengths as dotted vertical traces (shapes misplace x on log axes)
    y0, y1 = (0.0, 1.0) if metric in _BOUNDED else (min(lows), max(highs))
    for limit in sorted(limits):
        fig.add_trace(
            go.Scatter(
                x=[limit, limit],
                y=[y0, y1],
                mode="lines",
                name=f"trained length {limit}",
                line=dict(dash="dot", color="grey"),
                hoverinfo="skip",
            )
        )
    fig.update_layout(
        title=title or f"{_what(metric, task)} vs length",
        xaxis_title="length (tokens)",
        yaxis_title=LABELS.get(metric, metric),
        xaxis_type="log",
        margin=dict(t=60, r=20, b=50, l=70),
    )
    fig.update_xaxes(tickvals=[int(n) for n in ds["length"].values])
    if metric in _BOUNDED:
        fig.update_yaxes(range=[-0.02, 1.02])
    return fig
