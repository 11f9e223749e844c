"""Unit tests of the dashboard's data access and callbacks (no browser): confinement to RUNS_DIR,
half-written and foreign runs as messages, live metrics reading, the spectrum and training views, and the
Dash callback endpoint refusing paths that leave RUNS_DIR."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from tiny import tiny_student

from app import create_app
from app import runs as R
from app import stores as S
from app.main import tab_from_query
from app.paths import OutsideRunsDir, inside, root_of
from app.views import spectrum as spectrum_view
from app.views import training as training_view
from workbench.runs import RunDir

# ------------------------------------------------------------------------------------------- fixtures


def write_metrics(
    path: Path,
    *,
    steps: int = 40,
    switch: int = 20,
    theta_a: float = 500.0,
    theta_b: float = 20000.0,
    evals: bool = True,
    seed: int = 0,
) -> list[dict]:
    """A metrics.jsonl in the trainer's documented record format: two phases with a theta switch."""
    import random

    rng = random.Random(seed)
    records = []
    for step in range(1, steps + 1):
        phase, theta = ("short", theta_a) if step <= switch else ("long", theta_b)
        loss = 4.0 / (1 + 0.05 * step) + (0.3 if step == switch + 1 else 0) + rng.random() * 0.05
        records.append(
            {
                "kind": "train",
                "step": step,
                "phase": phase,
                "rope_theta": theta,
                "loss": loss,
                "ce": loss * 0.4,
                "kd": loss * 0.6,
                "lr": 1e-3,
                "tokens": step * 4096,
                "tokens_per_s": 1000.0,
                "peak_mem_mb": 100.0,
                "loss_by_bucket": {"0-256": loss},
                "time": float(step),
            }
        )
        if evals and step % 10 == 0:
            for length in (256, 1024):
                records.append(
                    {
                        "kind": "eval",
                        "step": step,
                        "phase": phase,
                        "task": "passkey",
                        "length": length,
                        "accuracy": min(1.0, step / steps * (256 / length) ** 0.5),
                        "answer_logprob": -1.0,
                    }
                )
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return records


def write_run_yaml(run: Path, *, short: int = 256, long: int = 1024) -> None:
    run.joinpath("run.yaml").write_text(
        f"name: {run.name}\nphases:\n"
        f"  - {{name: short, steps: 20, seq_len: {short}, rope_theta: 500.0}}\n"
        f"  - {{name: long, steps: 20, seq_len: {long}, rope_theta: 20000.0}}\n"
    )


@pytest.fixture(scope="module")
def runs_dir(tmp_path_factory) -> Path:
    """RUNS_DIR with a complete run (config, metrics, a real checkpoint, a save in progress), a run whose
    last metrics line is being written, a directory that is not a run, and a symlink leading outside."""
    from workbench.checkpoint_io import save_checkpoint
    from workbench.config import ModelConfig
    from workbench.models import build_model

    base = tmp_path_factory.mktemp("app")
    root = base / "runs"
    good = root / "kd-phasewise"
    good.mkdir(parents=True)
    write_run_yaml(good)
    write_metrics(good / "metrics.jsonl")
    cfg = ModelConfig(**tiny_student(vocab_size=32, max_position_embeddings=1024, rope_theta=500.0))
    save_checkpoint(build_model(cfg, seed=0), good / "ckpt-000020", {"phase": "short", "step": 20})
    (good / ".tmp-ckpt-000040-abcd").mkdir()
    os.utime(good / ".tmp-ckpt-000040-abcd", (0, 0))  # a save killed long ago (a young one counts as live)
    (good / "ckpt-000040").mkdir()  # no manifest: incomplete
    live = root / "ce-live"
    live.mkdir()
    write_metrics(live / "metrics.jsonl", steps=10, evals=False)
    with open(live / "metrics.jsonl", "a") as f:
        f.write('{"kind": "train", "step": 11, "pha')  # the trainer is mid-write
    (root / "notes").mkdir()
    (root / "notes" / "readme.txt").write_text("not a run")
    outside = base / "outside"
    outside.mkdir()
    write_metrics(outside / "metrics.jsonl")
    (root / "escape").symlink_to(outside, target_is_directory=True)
    return root


def _tiny_run_config(name: str, theta_long: float, teacher: str | None = None):
    """A run config the real trainer finishes in seconds: a 2-layer width-32 student, two phases with a
    theta switch, checkpoints every 2 steps, a held-out passkey eval every 2 steps."""
    import dataclasses

    from workbench import config

    cfg = config.load_run_config(Path(__file__).resolve().parents[1] / "data/configs/tiny-ce-phasewise.yaml")
    cfg.name = name
    cfg.model = dataclasses.replace(
        cfg.model,
        hidden_size=32,
        intermediate_size=64,
        num_heads=2,
        num_kv_heads=1,
        head_dim=16,
        max_position_embeddings=256,
    )
    cfg.init_from = None  # from scratch, two phases: a short one at theta 500, a long one at theta_long
    cfg.phases = [
        dataclasses.replace(cfg.phases[0], name="short", steps=3, seq_len=64, rope_theta=500.0, warmup_steps=1),
        dataclasses.replace(cfg.phases[0], name="long", steps=3, seq_len=128, rope_theta=theta_long, warmup_steps=1),
    ]
    cfg.eval_tasks = ["passkey"]
    cfg.optim.micro_batch_size = 2
    cfg.checkpoint.every, cfg.checkpoint.keep_last = 3, 10
    cfg.eval_every, cfg.eval_lengths, cfg.eval_samples = 3, [64, 128], 1
    if teacher:
        cfg.teacher = config.TeacherConfig(path=teacher)
        for ph in cfg.phases:
            ph.objective = "kd"
    config.validate(cfg)
    return cfg


def build_tiny_runs(root: Path) -> Path:
    """RUNS_DIR made only by the workbench's own writers: two real training runs (CE phase-wise, and KD
        from the CE run's last checkpoint as teacher), then ``results.zarr`` with the per-pair update groups
        (updates_weights, updates_states, bands) of the KD run, traces and repeated tokens of both final
        checkpoints (two specs), the retrieval grid of both final checkpoints, and the arm summaries of both
    runs (one seed each)."""
    from workbench import measurements, store
    from workbench.evals import grid, training_eval
    from workbench.train.trainer import train

    ce = train(
        _tiny_run_config("ce-phasewise", 10000.0),
        out=str(root / "ce-phasewise"),
        progress=False,
        evaluate=training_eval,
    )
    teacher = RunDir(ce).checkpoints()[-1]
    kd = train(
        _tiny_run_config("kd-phasewise", 10000.0, teacher=str(teacher)),
        out=str(root / "kd-phasewise"),
        progress=False,
        evaluate=training_eval,
    )
    out = root / "results.zarr"
    ckpts = RunDir(kd).checkpoints()
    weights = measurements.weight_updates(ckpts)
    store.save(out, "updates_weights", weights)
    store.save(out, "updates_states", measurements.state_updates(ckpts, seq_len=32, n_windows=1))
    store.save(out, "bands", measurements.band_summary(weights, [64, 128]))
    from workbench import interventions

    specs = [
        interventions.Spec("q-shift-16", [interventions.shift(16, "q")]),
        interventions.Spec("theta-swap", [interventions.theta_swap(50.0)]),
    ]
    for ckpt in (teacher, ckpts[-1]):
        be = interventions.load_backend(ckpt, "nnsight")
        inputs = interventions.default_inputs(be.vocab_size, batch=1, length=64)
        interventions.write_traces(out, interventions.run_trace(ckpt, specs, inputs, backend=be, buckets=4))
        interventions.write_repeated(
            out, interventions.repeated_tokens(ckpt, specs[:1], backend=be, window=128, period=16, copies=4, samples=1)
        )
    plan = grid.plan([teacher, ckpts[-1]], tasks="passkey", lengths=[64, 128], depths=2, samples=1, store=out)
    store.save(out, "retrieval", grid.evaluate_plan(plan, device="cpu", progress=False))
    from workbench import arms as A

    ret = store.open_group(out, "retrieval").load()  # the arm summaries, as `workbench compare` writes them
    store.save(out, "arm_retrieval", A.retrieval_summary(ret))
    store.save(out, "arm_comparisons", A.retrieval_comparisons(ret, [("kd-phasewise", "ce-phasewise")]))
    store.save(out, "arm_updates", A.arm_means(weights, "comparison"))
    return root


def shared_tiny_runs(tmp_path_factory) -> Path:
    """The tiny RUNS_DIR, built once per test session (both app test modules use it)."""
    root = tmp_path_factory.getbasetemp() / "app-tiny-runs"
    done = root / ".complete"
    if not done.exists():
        import shutil

        shutil.rmtree(root, ignore_errors=True)
        root.mkdir()
        build_tiny_runs(root)
        done.write_text("ok")
    return root


@pytest.fixture(scope="module")
def tiny_runs(tmp_path_factory) -> Path:
    return shared_tiny_runs(tmp_path_factory)


# ---------------------------------------------------------------------------------------- confinement


@pytest.mark.parametrize(
    "bad",
    [
        "../outside",
        "/etc",
        "escape",
        "escape/metrics.jsonl",
        "a/../../outside",
        "kd-phasewise/../../outside",
        "..",
        "",
        "x\x00y",
    ],
)
def test_paths_outside_runs_dir_are_refused(runs_dir, bad):
    with pytest.raises(OutsideRunsDir):
        inside(root_of(runs_dir), bad)


def test_paths_inside_runs_dir_are_accepted(runs_dir):
    root = root_of(runs_dir)
    assert inside(root, "kd-phasewise") == root / "kd-phasewise"
    assert inside(root, "kd-phasewise/./ckpt-000020") == root / "kd-phasewise" / "ckpt-000020"


def test_missing_or_file_runs_dir_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        root_of(tmp_path / "nope")
    (tmp_path / "f").write_text("x")
    with pytest.raises(ValueError, match="not a directory"):
        root_of(tmp_path / "f")


def test_list_runs_skips_non_runs_and_symlinks_out(runs_dir):
    assert R.list_runs(root_of(runs_dir)) == ["ce-live", "kd-phasewise"]


def test_runs_are_found_in_subdirectories(tmp_path):
    for rel in ("students/kd-s0", "students/ce-s0", "a/b/c/too-deep", "x.zarr/inner", "students/kd-s0/nested"):
        (tmp_path / rel).mkdir(parents=True)
        (tmp_path / rel / "metrics.jsonl").write_text("")
    assert R.list_runs(root_of(tmp_path)) == ["students/ce-s0", "students/kd-s0"]
    assert R.find_run(root_of(tmp_path), "kd-s0") == "students/kd-s0"
    assert R.find_run(root_of(tmp_path), "nope") is None


def test_store_discovery_ignores_stores_outside(runs_dir, tmp_path):
    import xarray as xr

    from workbench import store

    outside = tmp_path / "elsewhere.zarr"
    store.write(outside, "retrieval", xr.Dataset({"accuracy": ("length", [1.0])}, coords={"length": [1]}))
    link = runs_dir / "linked.zarr"
    link.symlink_to(outside, target_is_directory=True)
    try:
        assert S.find_stores(root_of(runs_dir)) == []
        with pytest.raises(OutsideRunsDir):
            S.open_group(root_of(runs_dir), "linked.zarr", "retrieval")
    finally:
        link.unlink()


# ------------------------------------------------------------------------------------------ run data


def test_run_info_reports_half_written_parts(runs_dir):
    info = R.run_info(root_of(runs_dir), "kd-phasewise")
    assert info.checkpoints == ["ckpt-000020"]
    assert info.phase_lengths == [256, 1024]
    text = " ".join(info.messages)
    assert "left by a writer that stopped" in text and ".tmp-ckpt-000040-abcd" in text  # no live trainer
    assert info.in_progress == []
    assert "ckpt-000040 without manifest.json" in text
    live = R.run_info(root_of(runs_dir), "ce-live")
    assert len(live.metrics.records) == 10 and live.metrics.partial_line
    assert any("incomplete" in m for m in live.messages)


def test_run_info_foreign_and_missing(runs_dir):
    root = root_of(runs_dir)
    notes = R.run_info(root, "notes")
    assert any("not a workbench run" in m for m in notes.messages) and notes.metrics is None
    with pytest.raises(FileNotFoundError, match="not found"):
        R.run_info(root, "no-such-run")


def test_metrics_are_read_incrementally_as_the_trainer_appends(tmp_path):
    run = tmp_path / "r"
    run.mkdir()
    path = run / "metrics.jsonl"
    path.write_text('{"kind": "train", "step": 1, "loss": 1.0}\n{"kind": "train", "st')
    first = R.read_metrics(run)
    assert [r["step"] for r in first.records] == [1] and first.partial_line
    with open(path, "a") as f:  # the trainer finishes the line and writes another, plus junk
        f.write('ep": 2, "loss": 0.9}\nnot json\n[1, 2]\n{"kind": "train", "step": 3, "loss": 0.8}\n')
    second = R.read_metrics(run)
    assert [r["step"] for r in second.records] == [1, 2, 3]
    assert second.bad_lines == 2 and not second.partial_line
    path.write_text('{"kind": "train", "step": 1, "loss": 5.0}\n')  # rewritten (new run): start over
    assert [r["loss"] for r in R.read_metrics(run).records] == [5.0]


# ---------------------------------------------------------------------------------------- views


def test_spectrum_view_numbers_follow_the_controls():
    wave, style, curve, curve_style, rows, msgs = spectrum_view.update(10000, 64, 4096, "1024, 32768")
    assert style["display"] == "block" and curve_style["display"] == "block" and not msgs
    assert list(wave.data[0].y) == pytest.approx(list(__import__("workbench").rope.wavelengths(10000, 64)))
    import math

    assert any(a.text == "L = 4,096" and a.y == pytest.approx(math.log10(4096)) for a in wave.layout.annotations)
    table = {r.children[0].children: r.children[1].children for r in rows}
    assert table["critical pair"] == "23"
    assert "theta keeping this critical dim at L = 32,768" in table
    wave2, *_ = spectrum_view.update(500000, 64, 4096, "")
    assert wave2.data[0].y[-1] > wave.data[0].y[-1]  # larger theta, longer wavelengths


@pytest.mark.parametrize(
    "args, match",
    [
        ((None, 64, 4096, ""), "theta must be a number"),
        ((-5, 64, 4096, ""), "theta must be in"),
        ((1e4, 63, 4096, ""), "even"),
        ((1e4, 64, 10**9, ""), "length must be in"),
        ((1e4, 64, 4096, "12, abc"), "phase lengths"),
    ],
)
def test_spectrum_view_rejects_bad_controls(args, match):
    with pytest.raises(ValueError, match=match):
        spectrum_view.update(*args)


def test_spectrum_view_skips_slow_scans_for_long_contexts():
    rows = dict(spectrum_view.summary(1e6, 128, 131072, []))
    assert "workbench rope --base-bound" in rows["base lower bound (2405.14591)"]


def test_training_view_draws_phases_and_theta_switch(runs_dir):
    fig, messages, info = training_view.training_view(root_of(runs_dir), ["kd-phasewise", "ce-live"], "loss")
    names = [t.name for t in fig.data]
    assert "kd-phasewise / short" in names and "kd-phasewise / long" in names and "ce-live / short" in names
    assert any(t.name == "kd-phasewise passkey@1024" for t in fig.data)
    switch = [s for s in fig.layout.shapes if s.x0 == 21]
    assert switch, "the theta switch at step 21 is marked"
    assert any("theta 500 -> 20000" in a.text for a in fig.layout.annotations)
    assert any("incomplete" in m for m in messages)
    assert info[0][0] == "kd-phasewise" and "ckpt-000020" in info[0][2]


def test_training_view_messages_instead_of_tracebacks(runs_dir):
    root = root_of(runs_dir)
    fig, messages, _ = training_view.training_view(root, ["notes"], "loss")
    assert fig is None and any("not a workbench run" in m for m in messages)
    with pytest.raises(OutsideRunsDir):
        training_view.training_view(root, ["../outside"], "loss")
    with pytest.raises(ValueError, match="unknown metric"):
        training_view.training_view(root, ["kd-phasewise"], "accuracy; rm -rf")
    with pytest.raises(ValueError, match="not a run"):
        training_view.run_from_query(root, "?tab=training&run=notes")
    assert training_view.run_from_query(root, "?run=ce-live") == "ce-live"


def test_tab_from_query():
    assert tab_from_query("?tab=spectrum") == "spectrum"
    assert tab_from_query("?tab=../../etc") is None and tab_from_query(None) is None


# ------------------------------------------------------------------------------- through the server


def _post(client, output: str, outputs: list[tuple[str, str]], inputs: list[dict], state: list[dict] | None = None):
    body = {
        "output": output,
        "outputs": [{"id": i, "property": p} for i, p in outputs],
        "inputs": inputs,
        "state": state or [],
        "changedPropIds": [f"{inputs[0]['id']}.{inputs[0]['property']}"],
    }
    resp = client.post("/_dash-update-component", json=body)
    assert resp.status_code == 200, resp.data[:500]
    return resp.get_json()["response"]


TRAIN_OUT = (
    "..train-graph.figure...train-graph.style...train-messages.children...train-info.children...train-stamp.data.."
)
TRAIN_OUTPUTS = [
    ("train-graph", "figure"),
    ("train-graph", "style"),
    ("train-messages", "children"),
    ("train-info", "children"),
    ("train-stamp", "data"),
]


def _train_inputs(runs):
    return [
        {"id": "train-runs", "property": "value", "value": runs},
        {"id": "train-metric", "property": "value", "value": "loss"},
        {"id": "train-poll", "property": "n_intervals", "value": None},
        {"id": "tabs", "property": "value", "value": "training"},
    ]


def test_server_callback_draws_a_run(runs_dir):
    client = create_app(runs_dir).server.test_client()
    resp = _post(
        client,
        TRAIN_OUT,
        TRAIN_OUTPUTS,
        _train_inputs(["kd-phasewise"]),
        [{"id": "train-stamp", "property": "data", "value": None}],
    )
    assert resp["train-graph"]["style"]["display"] == "block"
    assert len(resp["train-graph"]["figure"]["data"]) >= 2


@pytest.mark.parametrize("bad", [["../outside"], ["escape"], [os.sep + "etc"], "../../..", [["nested"]]])
def test_server_callback_refuses_paths_outside(runs_dir, bad):
    client = create_app(runs_dir).server.test_client()
    resp = _post(
        client, TRAIN_OUT, TRAIN_OUTPUTS, _train_inputs(bad), [{"id": "train-stamp", "property": "data", "value": None}]
    )
    assert resp["train-graph"]["style"]["display"] == "none"
    text = json.dumps(resp["train-messages"]["children"])
    assert "refused" in text or "must be strings" in text
    assert "Traceback" not in text


@pytest.mark.parametrize(
    "url",
    [
        "/assets/../../pyproject.toml",
        "/assets/%2e%2e/%2e%2e/pyproject.toml",
        "/assets/..%2f..%2fpyproject.toml",
        "/_dash-component-suites/dash/../../../../etc/passwd",
        "/_dash-component-suites/os/path.py",
    ],
)
def test_urls_cannot_read_files_outside(runs_dir, url):
    resp = create_app(runs_dir).server.test_client().get(url)
    assert resp.status_code == 404 and b"[project]" not in resp.data and b"root:" not in resp.data


def test_cli_app_errors_are_one_line(tmp_path, capsys):
    from workbench.cli import main

    assert main(["app", str(tmp_path / "missing")]) == 2
    assert "workbench app: error: RUNS_DIR" in capsys.readouterr().err
    assert main(["app", str(tmp_path), "--port", "70000"]) == 2
    assert "--port must be in" in capsys.readouterr().err


# ------------------------------------------------------------------------- data views on real writers


def test_updates_view_reads_the_analysis_groups(tiny_runs):
    from app.views import updates

    root = root_of(tiny_runs)
    assert S.stores_with_group(root, updates.GROUP, updates.wstore.UPDATES_STATES) == ["results.zarr"]
    assert updates.available_sources(root, "results.zarr") == ["W_q", "W_k", "q states", "k states"]
    comps = updates.comparisons(root, "results.zarr", "W_q")
    assert len(comps) == 1 and "->" in comps[0]
    assert updates.phase_lengths(root, "results.zarr") == [64, 128]
    q = updates.heatmap(root, "results.zarr", "W_q", comps[-1])
    k = updates.heatmap(root, "results.zarr", "W_k", comps[-1])
    z_q, z_k = q.data[0].z, k.data[0].z
    assert len(z_q) == 2 and len(z_q[0]) == 8  # 2 layers x 8 pairs (head_dim 16)
    assert (z_q != z_k).any()
    ticks = list(q.layout.xaxis.ticktext)
    assert len(ticks) == 8 and all(any(ch.isdigit() for ch in t) for t in ticks)  # wavelength labels
    heads = updates.heads(root, "results.zarr", "W_q", comps[-1], 1)
    assert len(heads.data[0].z) == 2  # 2 query heads
    assert updates.bands(root, "results.zarr", "W_q", comps[-1]) is not None
    assert updates.bands(root, "results.zarr", "q states", comps[-1]) is None


def test_updates_view_refuses_bad_input(tiny_runs):
    from app.views import updates

    root = root_of(tiny_runs)
    with pytest.raises(ValueError, match="unknown source"):
        updates.heatmap(root, "results.zarr", "W_v", None)
    with pytest.raises(ValueError, match="no comparison"):
        updates.heatmap(root, "results.zarr", "W_q", "nope -> nope")
    with pytest.raises(ValueError, match="no layer"):
        updates.heads(root, "results.zarr", "W_q", None, 7)
    with pytest.raises(OutsideRunsDir):
        updates.heatmap(root, "../results.zarr", "W_q", None)
    assert updates.layer_from_click({"points": [{"x": 3, "y": 1}]}) == 1
    assert updates.layer_from_click({"points": []}) is None and updates.layer_from_click("junk") is None


def test_retrieval_view_side_by_side_and_cross_link(tiny_runs):
    from app.views import retrieval

    root = root_of(tiny_runs)
    tasks, metrics, ckpts = retrieval.choices(root, "results.zarr")
    assert tasks == ["passkey"] and "correct" in metrics and len(ckpts) == 2
    heat, lines = retrieval.grids(root, "results.zarr", retrieval.ALL, "answer_logprob", ckpts)
    assert len(heat.data) == 2  # one depth x length grid per checkpoint, side by side
    assert sum(any(c in (t.name or "") for c in ckpts) for t in lines.data) == 2  # one line per checkpoint
    assert retrieval.run_of_checkpoint(root, "results.zarr", ckpts[1]) == ckpts[1].split("/")[0]
    click = {"points": [{"x": "128", "y": "100%", "curveNumber": 1}]}
    fig, message = retrieval.clicked_curve(root, "results.zarr", retrieval.ALL, ckpts, click)
    assert message == "" and fig.data[0].name == ckpts[1].split("/")[0]
    assert list(fig.data[0].x) == [3, 6]  # the run's held-out evals at length 128 (every 3 steps)
    assert retrieval.default_checkpoints(["a/c1", "a/c2", "b/c1", "b/c2", "c/c9"]) == ["a/c2", "b/c2", "c/c9"]
    assert retrieval.default_checkpoints(["a/c1", "a/c2"]) == ["a/c1", "a/c2"]
    with pytest.raises(ValueError, match="unknown metric"):
        retrieval.grids(root, "results.zarr", None, "__class__", ckpts)
    with pytest.raises(ValueError, match="no checkpoint"):
        retrieval.grids(root, "results.zarr", None, "correct", ["x/ckpt-1"])


def test_data_views_say_when_runs_dir_has_no_such_data(runs_dir):
    from dash import html

    from app.views import common

    client = create_app(runs_dir).server.test_client()
    resp = _post(
        client,
        "..retrieval-store.options...retrieval-store.value...retrieval-messages.children..",
        [("retrieval-store", "options"), ("retrieval-store", "value"), ("retrieval-messages", "children")],
        [{"id": "tabs", "property": "value", "value": "retrieval"}],
        [{"id": "retrieval-store", "property": "value", "value": None}],
    )
    assert resp["retrieval-store"]["options"] == []
    assert "no data of this kind in RUNS_DIR" in json.dumps(resp["retrieval-messages"]["children"])
    assert isinstance(common.notice(["x"])[0], html.Div)


def test_traces_view_reads_the_interp_groups(tiny_runs):
    from app.views import traces

    root = root_of(tiny_runs)
    assert S.stores_with_group(root, traces.GROUP, traces.REPEATED) == ["results.zarr"]
    c = traces.choices(root, "results.zarr")
    assert len(c["checkpoints"]) == 2 and c["specs"] == ["q-shift-16", "theta-swap"]
    assert [b["value"] for b in c["buckets"]] == [traces.MEAN, 0, 1, 2, 3]
    lines, heat, bars = traces.trace_figures(
        root, "results.zarr", c["checkpoints"][0], "lens_kl", "theta-swap", traces.MEAN
    )
    assert [t.name for t in lines.data] == ["q-shift-16", "theta-swap"]
    assert len(heat.data[0].z) == 2 and len(heat.data[0].z[0]) == 4  # 2 layers x 4 buckets
    assert len(bars.data) == 2  # one bar group per checkpoint
    one, *_ = traces.trace_figures(root, "results.zarr", c["checkpoints"][0], "lens_kl", "theta-swap", 3)
    assert list(one.data[1].y) != list(lines.data[1].y)  # bucket 3 alone differs from the mean
    rep = traces.repeated_figure(root, "results.zarr", "kl_to_first")
    assert len(rep.data) == 4 and len(rep.data[0].x) == 4  # 2 checkpoints x (clean, spec), 4 copies
    assert traces.bucket_from_click({"points": [{"x": "x", "pointNumber": [1, 2]}]}, c["buckets"]) == 2
    assert traces.bucket_from_click(None, c["buckets"]) is None
    with pytest.raises(ValueError, match="unknown spec"):
        traces.trace_figures(root, "results.zarr", c["checkpoints"][0], "lens_kl", "rm -rf", traces.MEAN)
    with pytest.raises(ValueError, match="unknown repeated-token variable"):
        traces.repeated_figure(root, "results.zarr", "entropy; drop")


def test_damaged_or_foreign_stores_are_messages(tiny_runs, tmp_path):
    import shutil

    import zarr

    from app.views import updates

    root = tmp_path / "runs"
    shutil.copytree(tiny_runs / "results.zarr", root / "damaged.zarr")
    chunk = next(
        p
        for p in (root / "damaged.zarr" / "updates_weights" / "q_rel_update").rglob("*")
        if p.is_file() and p.name != "zarr.json"
    )
    chunk.write_bytes(chunk.read_bytes()[:7])  # a writer killed mid-chunk
    foreign = zarr.open_group(str(root / "foreign.zarr"), mode="w", zarr_format=3)
    foreign.attrs["schema"] = "someone-else/1"
    root = root_of(root)
    assert S.stores_with_group(root, updates.GROUP, updates.wstore.UPDATES_STATES) == [
        "damaged.zarr"
    ]  # not the foreign
    comp = updates.comparisons(root, "damaged.zarr", "W_q")[-1]
    with pytest.raises(ValueError, match="half-written or damaged"):
        updates.heatmap(root, "damaged.zarr", "W_q", comp)
    assert updates.heatmap(root, "damaged.zarr", "W_k", comp).data[0].z is not None  # other variables still draw
    with pytest.raises(ValueError, match="not found"):
        updates.heatmap(root, "gone.zarr", "W_q", comp)


def test_phase_overlays_fall_back_to_the_runs_config(tiny_runs, tmp_path):
    import shutil

    from app.views import updates

    root = tmp_path / "runs"
    shutil.copytree(tiny_runs / "results.zarr", root / "nobands.zarr")
    shutil.rmtree(root / "nobands.zarr" / "bands")
    assert updates.phase_lengths(root_of(root), "nobands.zarr") == []  # no bands, no run.yaml: no overlay
    (root / "kd-phasewise").mkdir()
    shutil.copy(tiny_runs / "kd-phasewise" / "run.yaml", root / "kd-phasewise" / "run.yaml")
    assert updates.phase_lengths(root_of(root), "nobands.zarr") == [64, 128]
    fig = updates.heatmap(root_of(root), "nobands.zarr", "W_q", None)
    assert any("critical pair" in (a.text or "") for a in fig.layout.annotations)


def _arm_store(tiny_runs: Path, root: Path, *, comparisons: bool = True) -> str:
    """A store in ``root`` holding the tiny runs' retrieval grid and per-pair updates of both runs, with the
    arm summaries written by the real functions (``workbench compare`` and the demo's pair analysis)."""
    import shutil

    import xarray as xr

    from workbench import arms as A
    from workbench import measurements, store

    out = root / "arms.zarr"
    shutil.copytree(tiny_runs / "results.zarr", out)
    shutil.rmtree(out / "updates_weights")
    shutil.rmtree(out / "bands")
    weights = measurements.weight_updates(
        [
            *RunDir(tiny_runs / "ce-phasewise").checkpoints()[-2:],
            *RunDir(tiny_runs / "kd-phasewise").checkpoints()[-2:],
        ]
    )
    weights = weights.isel(comparison=[0, 2])  # ce: ckpt-3 -> ckpt-6; kd: ckpt-3 -> ckpt-6
    store.save(out, "updates_weights", weights)
    store.save(out, "bands", measurements.band_summary(weights, [64, 128]))
    ret = store.open_group(out, "retrieval").load()
    store.save(out, "arm_retrieval", A.retrieval_summary(ret))
    if comparisons:
        store.save(out, "arm_comparisons", A.retrieval_comparisons(ret, [("kd-phasewise", "ce-phasewise")]))
    store.save(out, "arm_updates", A.arm_means(store.open_group(out, "updates_weights").load(), "comparison"))
    bands = store.open_group(out, "bands").load()
    store.save(
        out,
        "arm_bands",
        xr.merge([A.band_table(bands, "q_rel_update"), A.band_table(bands, "k_rel_update")], compat="no_conflicts"),
    )
    return "arms.zarr"


def test_retrieval_view_shows_arms_with_intervals_and_paired_differences(tiny_runs, tmp_path):
    import numpy as np

    from app.views import retrieval
    from workbench import store

    root = root_of(tmp_path)
    name = _arm_store(tiny_runs, root)
    tasks, arms = retrieval.arm_choices(root, name)
    assert tasks == ["passkey"] and set(arms) == {"kd-phasewise", "ce-phasewise"}
    assert retrieval.default_arms(root, name) == ["kd-phasewise", "ce-phasewise"]  # the stored comparison
    heat, lines, diffs = retrieval.arm_grids(root, name, retrieval.ALL, ["kd-phasewise", "ce-phasewise"])
    summary = store.open_group(root / name, "arm_retrieval").load()
    assert len(heat.data) == 2
    np.testing.assert_allclose(
        heat.data[0].z,
        summary["correct_by_depth"].sel(arm="kd-phasewise", task="passkey").transpose("depth", "length").values,
    )
    means = [t for t in lines.data if t.mode == "lines+markers"]
    assert [t.name for t in means] == ["kd-phasewise (n=1 seeds)", "ce-phasewise (n=1 seeds)"]
    assert sum(t.fill == "toself" for t in lines.data) == 2  # one interval band per arm
    stored = store.open_group(root / name, "arm_comparisons").load()
    assert list(diffs.data[0].y) == ["kd-phasewise - ce-phasewise"]
    np.testing.assert_allclose([t.x[0] for t in diffs.data], stored["difference"].sel(task="passkey").values[0])
    # without a stored comparison the two picked arms are compared on the fly, with the same numbers
    other = tmp_path / "other"
    other.mkdir()
    bare = _arm_store(tiny_runs, other, comparisons=False)
    _, _, again = retrieval.arm_grids(root_of(other), bare, "passkey", ["kd-phasewise", "ce-phasewise"])
    np.testing.assert_allclose([t.x[0] for t in again.data], [t.x[0] for t in diffs.data])
    assert retrieval.arm_grids(root, name, "passkey", ["kd-phasewise"])[2] is None
    with pytest.raises(ValueError, match="no arm 'nope'"):
        retrieval.arm_grids(root, name, "passkey", ["nope"])
    with pytest.raises(ValueError, match="no task 'niah'"):
        retrieval.arm_grids(root, name, "niah", ["kd-phasewise"])


def test_updates_view_shows_two_arms_side_by_side_with_band_intervals(tiny_runs, tmp_path):
    import shutil

    import numpy as np

    from app.views import updates
    from workbench import store

    root = root_of(tmp_path)
    name = _arm_store(tiny_runs, root)
    assert updates.arms(root, name) == ["ce-phasewise", "kd-phasewise"]
    assert updates.default_arms(updates.arms(root, name)) == ["kd-phasewise", "ce-phasewise"]
    fig = updates.arm_heatmaps(root, name, "W_q", ["kd-phasewise", "ce-phasewise"])
    weights = store.open_group(root / name, "updates_weights").load()
    kd = [str(c) for c in weights["comparison"].values if c.startswith("kd")]
    np.testing.assert_allclose(
        fig.data[0].z, weights["q_rel_update"].sel(comparison=kd[0]).mean("head").transpose("layer", "pair").values
    )
    assert len(fig.data) == 2 and fig.data[0].zmax == fig.data[1].zmax  # one colour scale
    assert fig.layout.shapes, "critical-pair lines at the arms' final theta"
    bars = updates.arm_bands(root, name, "W_k", ["kd-phasewise"])
    assert list(bars.data[0].x) == ["kd-phasewise"] and bars.data[0].error_y.array is not None
    with pytest.raises(ValueError, match="not for 'q states'"):
        updates.arm_heatmaps(root, name, "q states", ["kd-phasewise"])
    with pytest.raises(ValueError, match="no arm 'x'"):
        updates.arm_heatmaps(root, name, "W_q", ["x"])
    shutil.rmtree(root / name / "arm_updates")
    with pytest.raises(ValueError, match="no 'arm_updates' group"):
        updates.arms(root, name)


def test_arms_mode_without_an_arm_summary_says_what_writes_it(tmp_path):
    """The pickers and the draw of the retrieval view say the same one line for a store without
    ``arm_retrieval`` (was: a StoreError naming the store's absolute path from the draw)."""
    import numpy as np
    import xarray as xr

    from app.views import retrieval
    from workbench import store

    ds = xr.Dataset({"x": (("pair",), np.arange(4.0))}, coords={"pair": np.arange(4)})
    store.write(tmp_path / "results.zarr", "other", ds)
    root = root_of(tmp_path)
    with pytest.raises(ValueError, match=r"results.zarr has no 'arm_retrieval' group \(`workbench compare"):
        retrieval.arm_grids(root, "results.zarr", None, ["a", "b"])
