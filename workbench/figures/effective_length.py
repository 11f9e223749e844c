"""Figure of effective lengths (store group ``arm_effective_length``, ``workbench.evals.effective_length``).

- :func:`effective_lengths`: per arm (or reference model), the two effective lengths of one task (RULER's fixed
  threshold, NoLiMa's fraction of the model's own short-length score) as grouped bars with bootstrap intervals.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import plotly.graph_objects as go
import xarray as xr


def effective_lengths(ds: xr.Dataset, task: str, *, arms: Sequence[str] | None = None) -> go.Figure:
    """Grouped bars: effective length per arm, one bar per criterion, with its interval."""
    tasks = [str(t) for t in ds["task"].values]
    if task not in tasks:
        raise ValueError(f"no task {task!r} in the effective lengths (has: {', '.join(tasks)})")
    names = [str(a) for a in ds["arm"].values] if arms is None else [a for a in arms if a in ds["arm"].values]
    labels = {
        "threshold": f"accuracy >= {ds.attrs.get('threshold', '?')}",
        "relative": f">= {ds.attrs.get('fraction', '?')} x own score at {int(ds['length'].values[0])}",
    }
    fig = go.Figure()
    for crit in map(str, ds["criterion"].values):
        cell = ds.sel(task=task, criterion=crit, arm=names)
        y = cell["effective_length"].values
        fig.add_trace(
            go.Bar(
                x=names,
                y=y,
                name=labels.get(crit, crit),
                error_y=dict(
                    type="data",
                    symmetric=False,
                    array=np.maximum(cell["effective_length_hi"].values - y, 0),
                    arrayminus=np.maximum(y - cell["effective_length_lo"].values, 0),
                ),
            )
        )
    fig.update_layout(
        barmode="group",
        template="plotly_white",
        title=f"Effective length ({task}): the longest length whose accuracy stays above the line "
        "(95 % bootstrap interval)",
        yaxis=dict(title="tokens", type="log"),
        xaxis_title="arm",
    )
    return fig
