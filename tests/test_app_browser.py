"""The dashboard in a real browser: Playwright driving Debian's /usr/bin/chromium against the app served on
a free localhost port, over a tiny RUNS_DIR made by the workbench's own writers (trainer, analysis, evals,
interp). Every view renders a plotly graph with data, changing a control redraws the heatmap, clicking a
heatmap cell opens the matching curve, training curves grow while a run writes, and a refused deep link is
a message. One screenshot per view goes to test-artifacts/screenshots/."""

from __future__ import annotations

import json
import shutil
import threading
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.browser

CHROMIUM = "/usr/bin/chromium"
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
SHOTS = Path(__file__).resolve().parents[1] / "test-artifacts" / "screenshots"
TIMEOUT_MS = 90_000  # a wait returns as soon as the page is ready; under a loaded machine Dash callbacks took > 30 s

HAS_DATA = """id => { const gd = document.querySelector(`#${id} .js-plotly-plot`);
    return !!gd && !!gd._fullData && gd.offsetParent !== null &&
           gd._fullData.some(t => (t.y && t.y.length) || (t.z && t.z.length)); }"""


@pytest.fixture(scope="module")
def tiny_runs(tmp_path_factory) -> Path:
    from test_app import shared_tiny_runs

    return shared_tiny_runs(tmp_path_factory)


@pytest.fixture(scope="module")
def server(tiny_runs):
    """The app on a free 127.0.0.1 port in a background thread."""
    import logging

    from werkzeug.serving import make_server

    from app import create_app

    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    srv = make_server("127.0.0.1", 0, create_app(tiny_runs).server, threaded=True)
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{srv.server_port}/"
    srv.shutdown()
    thread.join(timeout=10)


@pytest.fixture(scope="module")
def wb_page():
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: `make chromium` installs Debian's chromium")
    from playwright.sync_api import sync_playwright

    SHOTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        pg = browser.new_page(viewport={"width": 1300, "height": 950})
        pg.set_default_timeout(TIMEOUT_MS)
        errors: list[str] = []
        pg.on("pageerror", lambda exc: errors.append(str(exc)))
        pg.errors = errors  # type: ignore[attr-defined]
        yield pg
        browser.close()


def wait_for_graph(page, graph_id: str) -> None:
    page.wait_for_function(HAS_DATA, arg=graph_id, timeout=TIMEOUT_MS)


def graph_eval(page, graph_id: str, expr: str):
    """Evaluate ``expr`` with ``gd`` bound to the plotly div of ``graph_id``."""
    return page.evaluate(
        f"id => {{ const gd = document.querySelector(`#${{id}} .js-plotly-plot`); return {expr}; }}", graph_id
    )


def wait_until(page, graph_id: str, expr: str, arg=None) -> None:
    page.wait_for_function(
        f"([id, arg]) => {{ const gd = document.querySelector(`#${{id}} .js-plotly-plot`); "
        f"return !!gd && !!gd._fullData && ({expr}); }}",
        arg=[graph_id, arg],
        timeout=TIMEOUT_MS,
    )


def click_heatmap_cell(page, graph_id: str, row: int, col: int) -> None:
    """Click the centre of cell (row, col) of the first heatmap in ``graph_id``."""
    box = graph_eval(
        page,
        graph_id,
        """(() => {
        const xa = gd._fullLayout.xaxis, ya = gd._fullLayout.yaxis, r = gd.getBoundingClientRect();
        return {x0: r.left + xa._offset, w: xa._length, y0: r.top + ya._offset, h: ya._length,
                nx: gd._fullData[0].z[0].length, ny: gd._fullData[0].z.length,
                yrev: ya.autorange === 'reversed'}; })()""",
    )
    x = box["x0"] + (col + 0.5) * box["w"] / box["nx"]
    r = row if box["yrev"] else box["ny"] - 1 - row
    y = box["y0"] + (r + 0.5) * box["h"] / box["ny"]
    page.mouse.click(x, y)


def test_page_loads_and_training_view_draws(server, wb_page):
    page = wb_page
    start = time.perf_counter()
    page.goto(server)
    wait_for_graph(page, "train-graph")
    print(f"\nfirst render (training view) in chromium: {time.perf_counter() - start:.2f} s")
    assert page.title() == "RoPE-KD workbench"
    names = graph_eval(page, "train-graph", "gd._fullData.map(t => t.name)")
    assert {"ce-phasewise / short", "ce-phasewise / long", "kd-phasewise / long"} <= set(names)
    assert any("passkey@128" in n for n in names)  # the trainer's held-out evals
    annotations = graph_eval(page, "train-graph", "gd._fullLayout.annotations.map(a => a.text)")
    assert any("theta 500 -> 10000" in a for a in annotations)
    page.screenshot(path=str(SHOTS / "training.png"), full_page=True)
    assert not page.errors


def test_training_curves_grow_while_a_run_writes(server, wb_page, tiny_runs):
    page = wb_page
    run = tiny_runs / "live-run"
    run.mkdir()
    try:
        lines = [
            {
                "kind": "train",
                "step": s,
                "phase": "short" if s <= 4 else "long",
                "rope_theta": 500.0 if s <= 4 else 10000.0,
                "loss": 5.0 - 0.1 * s,
                "ce": 5.0 - 0.1 * s,
                "kd": 0.0,
            }
            for s in range(1, 9)
        ]
        (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines[:3]) + '{"kind": "tr')
        page.goto(server + "?tab=training&run=live-run")
        wait_for_graph(page, "train-graph")
        last_step = "Math.max(...gd._fullData.filter(t => t.name.startsWith('live-run')).flatMap(t => Array.from(t.x)))"
        assert graph_eval(page, "train-graph", last_step) == 3
        page.get_by_text("still being written").wait_for()
        with open(run / "metrics.jsonl", "w") as f:  # the trainer finishes the line and goes on
            f.write("".join(json.dumps(r) + "\n" for r in lines))
        wait_until(page, "train-graph", f"{last_step} >= 8")
        annotations = graph_eval(page, "train-graph", "gd._fullLayout.annotations.map(a => a.text)")
        assert any("theta 500 -> 10000" in a for a in annotations)
        page.screenshot(path=str(SHOTS / "training-live.png"), full_page=True)
    finally:
        shutil.rmtree(run)


def test_updates_view_controls_and_click(server, wb_page):
    page = wb_page
    page.goto(server + "?tab=updates")
    for gid in ("updates-graph", "updates-heads", "updates-bands"):
        wait_for_graph(page, gid)
    ticks = graph_eval(page, "updates-graph", "gd._fullLayout.xaxis.ticktext")
    assert len(ticks) == 8 and all("<br>" in t for t in ticks)  # pair index over its wavelength
    page.screenshot(path=str(SHOTS / "updates.png"), full_page=True)
    z_q = graph_eval(page, "updates-graph", "JSON.stringify(gd._fullData[0].z)")
    page.get_by_label("W_k").check()
    wait_until(page, "updates-graph", "JSON.stringify(gd._fullData[0].z) !== arg", z_q)
    assert "W_k" in graph_eval(page, "updates-graph", "gd._fullLayout.title.text")
    page.get_by_label("q states").check()
    wait_until(page, "updates-graph", "gd._fullLayout.title.text.includes('query-state')")
    page.get_by_label("W_q").check()
    wait_until(page, "updates-graph", "gd._fullLayout.title.text.includes('W_q')")
    wait_until(page, "updates-heads", "gd._fullLayout.title.text.includes('layer 0')")
    click_heatmap_cell(page, "updates-graph", row=1, col=5)  # layer 1 -> head x pair of layer 1
    wait_until(page, "updates-heads", "gd._fullLayout.title.text.includes('layer 1')")
    assert not page.errors


def test_retrieval_view_side_by_side_and_click_opens_training_curve(server, wb_page):
    page = wb_page
    page.goto(server + "?tab=retrieval")
    wait_for_graph(page, "retrieval-graph")
    wait_for_graph(page, "retrieval-lines")
    assert graph_eval(page, "retrieval-graph", "gd._fullData.filter(t => t.type === 'heatmap').length") == 2
    page.screenshot(path=str(SHOTS / "retrieval.png"), full_page=True)
    click_heatmap_cell(page, "retrieval-graph", row=1, col=1)  # depth 100 %, length 128 of the first run
    wait_for_graph(page, "retrieval-curve")
    # the curve may already show the default cell (length 64): wait for the click's redraw, not any data
    wait_until(page, "retrieval-curve", "gd._fullLayout.title.text.includes('length 128')")
    title = graph_eval(page, "retrieval-curve", "gd._fullLayout.title.text")
    assert "passkey at length 128" in title
    page.screenshot(path=str(SHOTS / "retrieval-click.png"), full_page=True)


def test_retrieval_and_updates_views_show_arms(server, wb_page):
    page = wb_page
    page.goto(server + "?tab=retrieval")
    wait_for_graph(page, "retrieval-graph")
    page.get_by_label("arms (mean over seeds, 95% interval)").check()
    wait_for_graph(page, "retrieval-differences")
    wait_until(page, "retrieval-graph", "gd._fullLayout.title.text.includes('mean over each arm')")
    assert graph_eval(page, "retrieval-graph", "gd._fullData.filter(t => t.type === 'heatmap').length") == 2
    assert graph_eval(page, "retrieval-differences", "gd._fullData[0].y[0]") == "kd-phasewise - ce-phasewise"
    assert graph_eval(page, "retrieval-lines", "gd._fullData.filter(t => t.fill === 'toself').length") == 2
    page.screenshot(path=str(SHOTS / "retrieval-arms.png"), full_page=True)
    page.goto(server + "?tab=updates")
    wait_for_graph(page, "updates-graph")
    page.get_by_label("arms (mean over seeds)").check()
    wait_until(page, "updates-graph", "gd._fullLayout.title.text.includes('mean over heads and seeds')")
    assert "kd-phasewise" in graph_eval(page, "updates-graph", "gd._fullLayout.annotations[0].text")
    page.screenshot(path=str(SHOTS / "updates-arms.png"), full_page=True)
    assert not page.errors


def test_traces_view_and_bucket_cross_link(server, wb_page):
    page = wb_page
    page.goto(server + "?tab=traces")
    for gid in ("traces-graph", "traces-heatmap", "traces-bars", "traces-repeated"):
        wait_for_graph(page, gid)
    assert "mean over positions" in graph_eval(page, "traces-graph", "gd._fullLayout.title.text")
    page.screenshot(path=str(SHOTS / "traces.png"), full_page=True)
    click_heatmap_cell(page, "traces-heatmap", row=0, col=2)  # a cell of positions 32-47
    wait_until(page, "traces-graph", "gd._fullLayout.title.text.includes('positions 32-47')")
    assert not page.errors


def test_spectrum_controls_redraw(server, wb_page):
    page = wb_page
    page.goto(server + "?tab=spectrum")
    wait_for_graph(page, "spec-wavelengths")
    wait_for_graph(page, "spec-longrange")
    longest = "Math.max(...Array.from(gd._fullData[0].y))"
    before = graph_eval(page, "spec-wavelengths", longest)
    page.screenshot(path=str(SHOTS / "spectrum.png"), full_page=True)
    theta = page.locator("#spec-theta")
    theta.fill("1000000")
    theta.press("Enter")
    wait_until(page, "spec-wavelengths", f"{longest} > 10 * arg", before)
    assert "1e+06" in page.locator("#spec-wavelengths").inner_text()
    theta.fill("-3")
    theta.press("Enter")
    page.get_by_text("theta must be in").wait_for()


def test_refused_deep_link_is_a_message(server, wb_page):
    page = wb_page
    page.goto(server + "?tab=training&run=../../etc")
    page.get_by_text("refused path").wait_for()
    assert not page.errors
