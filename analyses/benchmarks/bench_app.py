"""Benchmark of the dashboard: server-side heatmap callbacks on a paper-sized updates store, and the first
render in headless chromium.

The store is made by the real writer (``workbench.measurements.weight_updates``) from 21 random-weight
checkpoints shaped like the paper's attention (32 layers, 32 query heads, head_dim 128 = 64 RoPE pairs;
a narrow hidden size (32) keeps the files small), so the ``updates_weights`` group is 20 comparisons x 32
layers x 32 heads x 64 pairs, chunked as the writer chunks it.

Measured side by side in one run (goals from issue 7: callback <= 100 ms, first render <= 3 s):
- the layer x pair heatmap callback body (``app.views.updates.heatmap``): cold (first call opens the
  group and reads the variable) and warm (every other checkpoint pair), and the same through Dash's HTTP
  endpoint (JSON serialisation included);
- the head x pair callback;
- first render in headless chromium of the updates view (time from navigation until the heatmap has data),
  cold (first visit, JS bundles fetched) and warm (reload).

Usage: .venv/bin/python analyses/benchmarks/bench_app.py [--keep DIR] [--checkpoints 21]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import threading
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def build_store(root: Path, n_ckpts: int) -> str:
    """RUNS_DIR/bench/ckpt-* and RUNS_DIR/bench/updates.zarr (updates_weights) made by the real writers."""
    import torch

    from workbench import measurements, store
    from workbench.checkpoint_io import save_checkpoint
    from workbench.config import ModelConfig
    from workbench.models import build_model

    run = root / "bench"
    cfg = ModelConfig(
        vocab_size=128,
        hidden_size=32,
        num_layers=32,
        num_heads=32,
        num_kv_heads=4,
        head_dim=128,
        intermediate_size=8,
        max_position_embeddings=4096,
        rope_theta=10000.0,
    )
    model = build_model(cfg, seed=0)
    paths = []
    for i in range(n_ckpts):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(0.01 * torch.randn_like(p))
        paths.append(save_checkpoint(model, run / f"ckpt-{i:06d}", {"phase": "bench", "step": i}))
    store.save(run / "updates.zarr", store.UPDATES_WEIGHTS, measurements.weight_updates(paths))
    return "bench/updates.zarr"


def timed(fn, *args) -> float:
    start = time.perf_counter()
    fn(*args)
    return (time.perf_counter() - start) * 1000


def callback_times(root: Path, store: str) -> dict[str, float]:
    from app import create_app
    from app.views import updates

    dash_app = create_app(root)  # as a user's session would: the app exists before the first callback
    comps = updates.comparisons(root, store, "W_q")
    out = {"comparisons": len(comps)}
    out["heatmap cold ms (first call)"] = timed(updates.heatmap, root, store, "W_q", comps[0])
    warm = [timed(updates.heatmap, root, store, "W_q", c) for c in comps[1:]]
    out["heatmap ms, each new pair (median)"] = statistics.median(warm)
    out["heatmap ms, each new pair (max)"] = max(warm)
    out["head x pair ms, cached slice (median)"] = statistics.median(
        [timed(updates.heads, root, store, "W_q", c, 7) for c in comps]
    )
    client = dash_app.server.test_client()
    output = next(k for k in dash_app.callback_map if k.startswith("..updates-graph.figure..."))
    body = lambda c: {  # noqa: E731
        "output": output,
        "outputs": [
            {"id": "updates-graph", "property": "figure"},
            {"id": "updates-graph", "property": "style"},
            {"id": "updates-bands", "property": "figure"},
            {"id": "updates-bands", "property": "style"},
            {"id": "updates-messages", "property": "children"},
        ],
        "inputs": [
            {"id": "updates-store", "property": "value", "value": store},
            {"id": "updates-mode", "property": "value", "value": "pairs"},
            {"id": "updates-source", "property": "value", "value": "W_q"},
            {"id": "updates-comparison", "property": "value", "value": c},
            {"id": "updates-arms", "property": "value", "value": None},
        ],
        "changedPropIds": ["updates-comparison.value"],
        "state": [],
    }
    http = []
    for c in comps:
        start = time.perf_counter()
        resp = client.post("/_dash-update-component", json=body(c))
        http.append((time.perf_counter() - start) * 1000)
        assert resp.status_code == 200, resp.data[:300]
    out["heatmap via Dash HTTP ms, cached (median)"] = statistics.median(http)
    return out


def baseline_app():
    """The reference page: a bare Dash app with one static plotly figure and no callbacks."""
    from dash import Dash, dcc

    from workbench.figures import spectrum

    app = Dash(__name__)
    app.layout = dcc.Graph(id="updates-graph", figure=spectrum.wavelength_figure(10000, 128, 4096))
    return app


def first_render(root: Path) -> dict[str, float]:
    """Seconds from navigation until the heatmap has data, for the dashboard and for the bare baseline page
    (each in a fresh browser context, so the first visit fetches every bundle)."""
    import logging

    from playwright.sync_api import sync_playwright
    from werkzeug.serving import make_server

    from app import create_app

    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    ready = """() => { const gd = document.querySelector('#updates-graph .js-plotly-plot');
                       return !!gd && !!gd._fullData
                              && gd._fullData.some(t => (t.z && t.z.length) || (t.y && t.y.length)); }"""
    out = {}
    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path="/usr/bin/chromium",
            args=[
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--no-first-run",
            ],
        )
        for name, app, query in (
            ("baseline (bare Dash page)", baseline_app(), ""),
            ("dashboard updates view", create_app(root), "?tab=updates"),
        ):
            srv = make_server("127.0.0.1", 0, app.server, threaded=True)
            threading.Thread(target=srv.serve_forever, daemon=True).start()
            try:
                page = browser.new_context(viewport={"width": 1300, "height": 950}).new_page()
                for visit in ("cold", "warm reload"):
                    start = time.perf_counter()
                    page.goto(f"http://127.0.0.1:{srv.server_port}/{query}")
                    page.wait_for_function(ready, timeout=60_000)
                    out[f"first render {visit} s: {name}"] = time.perf_counter() - start
            finally:
                srv.shutdown()
        browser.close()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--keep", default=None, help="build the RUNS_DIR here (reused when it already has the store)")
    parser.add_argument(
        "--checkpoints", type=int, default=21, help="checkpoints, at least 3 (comparisons = this - 1; default 21)"
    )
    args = parser.parse_args()
    if args.checkpoints < 3:  # the warm timings are every comparison after the first
        parser.error(f"--checkpoints: at least 3 (two comparisons), not {args.checkpoints}")
    import torch

    torch.set_num_threads(1)
    root = Path(args.keep or tempfile.mkdtemp(prefix="bench-app-")).resolve()
    root.mkdir(parents=True, exist_ok=True)
    store = "bench/updates.zarr"
    start = time.perf_counter()
    if not (root / store).exists():
        store = build_store(root, args.checkpoints)
    print(f"RUNS_DIR {root}: store ready in {time.perf_counter() - start:.1f} s")
    from workbench import store as wstore

    ds = wstore.open_group(root / store, wstore.UPDATES_WEIGHTS)
    print("updates_weights sizes:", dict(ds.sizes))
    results = {**callback_times(root, store), **first_render(root)}
    print(f"{'measure':<62} {'value':>9}  goal")
    for key, value in results.items():
        goal = "<= 100 ms" if " ms" in key and "max" not in key else ("<= 3 s" if "dashboard" in key else "")
        print(f"{key:<62} {value:>9.2f}  {goal}")
    ratio = (
        results["first render cold s: dashboard updates view"]
        / results["first render cold s: baseline (bare Dash page)"]
    )
    print(f"{'first render cold, dashboard / bare Dash page (same run)':<62} {ratio:>9.2f}")
    print(f"load average during the run: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")


if __name__ == "__main__":
    main()
