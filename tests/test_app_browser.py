"""The dashboard in a real browser: Playwright driving Debian's /usr/bin/chromium against the app served on
a free localhost port. Every view renders a plotly graph with data (or, for a kind of result RUNS_DIR does
not hold, says so), changing a control redraws, training curves grow while a run writes, and a refused
deep link is a message. A screenshot per view goes to test-artifacts/screenshots/."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.browser

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run"]
SHOTS = Path(__file__).resolve().parents[1] / "test-artifacts" / "screenshots"
TIMEOUT_MS = 20_000


@pytest.fixture(scope="module")
def browser_runs(tmp_path_factory) -> Path:
    """A tiny RUNS_DIR: two runs with metrics (one writing live) plus the stores the data views read."""
    from test_app import write_metrics, write_run_yaml

    root = tmp_path_factory.mktemp("browser") / "runs"
    for name in ("kd-phasewise", "ce-live"):
        run = root / name
        run.mkdir(parents=True)
        write_run_yaml(run)
        write_metrics(run / "metrics.jsonl", steps=40 if name == "kd-phasewise" else 12,
                      seed=1 if name == "ce-live" else 0)
    return root


@pytest.fixture(scope="module")
def server(browser_runs):
    """The app on a free 127.0.0.1 port in a background thread."""
    import logging

    from werkzeug.serving import make_server

    from app import create_app

    logging.getLogger("werkzeug").setLevel(logging.WARNING)

    srv = make_server("127.0.0.1", 0, create_app(browser_runs).server, threaded=True)
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


def trace_count(wb_page, graph_id: str) -> int:
    """Traces with points in the plotly graph ``graph_id`` (0 when it has none or is hidden)."""
    return wb_page.evaluate(
        """id => { const gd = document.querySelector(`#${id} .js-plotly-plot`);
                   if (!gd || !gd._fullData || gd.offsetParent === null) return 0;
                   return gd._fullData.filter(t => (t.y && t.y.length) || (t.z && t.z.length)).length; }""", graph_id)


def graph_json(wb_page, graph_id: str, expr: str):
    return wb_page.evaluate(f"id => {{ const gd = document.querySelector(`#${{id}} .js-plotly-plot`); return {expr}; }}",
                         graph_id)


def wait_for_graph(wb_page, graph_id: str) -> None:
    wb_page.wait_for_function(
        """id => { const gd = document.querySelector(`#${id} .js-plotly-plot`);
                   return gd && gd._fullData && gd.offsetParent !== null &&
                          gd._fullData.some(t => (t.y && t.y.length) || (t.z && t.z.length)); }""",
        arg=graph_id, timeout=TIMEOUT_MS)


def open_tab(wb_page, label: str) -> None:
    wb_page.get_by_role("tab", name=label).click() if wb_page.get_by_role("tab", name=label).count() else \
        wb_page.get_by_text(label, exact=True).click()


def test_page_loads_and_training_view_draws(server, wb_page):
    start = time.perf_counter()
    wb_page.goto(server)
    wait_for_graph(wb_page, "train-graph")
    print(f"first render of the training view: {time.perf_counter() - start:.2f} s")
    assert wb_page.title() == "RoPE-KD workbench"
    assert trace_count(wb_page, "train-graph") >= 4  # 2 runs x 2 phases (+ eval curves)
    annotations = graph_json(wb_page, "train-graph", "gd.layout.annotations.map(a => a.text)")
    assert any("theta 500 -> 20000" in a for a in annotations)
    wb_page.screenshot(path=str(SHOTS / "training.png"), full_page=True)
    assert not wb_page.errors


def test_training_curves_grow_while_the_run_writes(server, wb_page, browser_runs):
    wb_page.goto(server + "?tab=training&run=ce-live")
    wait_for_graph(wb_page, "train-graph")
    x_max = "Math.max(...gd._fullData.filter(t => t.name.startsWith('ce-live')).flatMap(t => t.x))"
    before = graph_json(wb_page, "train-graph", x_max)
    assert before == 12
    with open(browser_runs / "ce-live" / "metrics.jsonl", "a") as f:
        for step in range(13, 16):
            f.write(json.dumps({"kind": "train", "step": step, "phase": "long", "rope_theta": 20000.0,
                                "loss": 1.0, "ce": 0.4, "kd": 0.6}) + "\n")
    wb_page.wait_for_function(
        f"() => {{ const gd = document.querySelector('#train-graph .js-plotly-plot'); return {x_max} >= 15; }}",
        timeout=TIMEOUT_MS)
    wb_page.screenshot(path=str(SHOTS / "training-live.png"), full_page=True)


def test_spectrum_controls_redraw(server, wb_page):
    wb_page.goto(server + "?tab=spectrum")
    wait_for_graph(wb_page, "spec-wavelengths")
    wait_for_graph(wb_page, "spec-longrange")
    longest = "Math.max(...gd._fullData[0].y)"
    before = graph_json(wb_page, "spec-wavelengths", longest)
    wb_page.screenshot(path=str(SHOTS / "spectrum.png"), full_page=True)
    theta = wb_page.locator("#spec-theta")
    theta.fill("1000000")
    theta.press("Enter")
    wb_page.wait_for_function(
        f"b => {{ const gd = document.querySelector('#spec-wavelengths .js-plotly-plot'); return {longest} > 10 * b; }}",
        arg=before, timeout=TIMEOUT_MS)
    assert "1e+06" in wb_page.locator("#spec-wavelengths").inner_text()
    theta.fill("-3")
    theta.press("Enter")
    wb_page.get_by_text("theta must be in").wait_for()


def test_refused_deep_link_is_a_message(server, wb_page):
    wb_page.goto(server + "?tab=training&run=../../etc")
    wb_page.get_by_text("refused path").wait_for()
    assert not wb_page.errors
