"""All figures of the workbench: plotly figures built from store Datasets, in one place.

The app, the analysis scripts and the notebooks draw only through these builders. One module per area:
``spectrum`` (RoPE theory), ``training`` (loss curves), ``retrieval`` (depth x length grids),
``traces`` (perturbation propagation, repeated tokens), ``updates`` (per-pair query/key updates, bands,
probes). Builders take xarray Datasets/DataArrays (or plain records) and return ``plotly.graph_objects.Figure``;
``jobs`` maps a results store to one figure family (the analyses' scripts and the demo run them).
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import plotly.graph_objects as go

CHROMIUM = "/usr/bin/chromium"


def save_figure(
    fig: go.Figure, stem: str | Path, *, png: bool = True, html: bool = True, width: int = 1000, height: int = 600
) -> list[Path]:
    """Write ``stem.html`` (interactive; plotly.min.js beside it, so it opens offline) and ``stem.png``
    (kaleido through Debian's chromium). Each file is written to a temp name and renamed."""
    stem = Path(stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    written = []
    if html:
        target = stem.with_suffix(".html")
        tmp = target.with_name(f".{target.name}.{uuid.uuid4().hex[:6]}")
        fig.write_html(str(tmp), include_plotlyjs="directory", full_html=True)  # plotly.min.js once per folder
        os.replace(tmp, target)
        written.append(target)
    if png:
        if os.path.exists(CHROMIUM):
            os.environ.setdefault("BROWSER_PATH", CHROMIUM)
        target = stem.with_suffix(".png")
        tmp = target.with_name(f".{target.stem}.{uuid.uuid4().hex[:6]}.png")
        fig.write_image(str(tmp), width=width, height=height)
        os.replace(tmp, target)
        written.append(target)
    return written


def save_figures(
    figs: dict[str, go.Figure],
    out_dir: str | Path,
    *,
    png: bool = True,
    html: bool = True,
    width: int = 1000,
    height: int = 600,
) -> list[Path]:
    """Write many figures as ``out_dir/<name>.html`` and ``.png``; the PNGs are rendered in one kaleido
    batch (one browser start instead of one per figure: several times faster than :func:`save_figure`)."""
    import plotly.io as pio  # lazy: image export (kaleido) only when PNGs are written

    out_dir = Path(out_dir)
    written = []
    for name, fig in figs.items():
        written += save_figure(fig, out_dir / name, png=False, html=html)
    if png and figs:
        if os.path.exists(CHROMIUM):
            os.environ.setdefault("BROWSER_PATH", CHROMIUM)
        targets = [out_dir / f"{name}.png" for name in figs]
        tmps = [t.with_name(f".{t.stem}.{uuid.uuid4().hex[:6]}.png") for t in targets]
        pio.write_images(list(figs.values()), tmps, width=width, height=height)
        for tmp, target in zip(tmps, targets):
            os.replace(tmp, target)
        written += targets
    return written
