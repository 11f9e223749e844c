"""The trainer end to end on tiny models: phases and theta, checkpoints, clear errors, NaN guard, exact resume."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import yaml
from tiny import tiny_student

from workbench import checkpoint_io, config, models
from workbench.cli import main as cli_main
from workbench.evals import training_eval
from workbench.runs import RunDir
from workbench.train import TrainingDiverged, distill, phases, train

ROOT = Path(__file__).resolve().parents[1]
STUDENT = tiny_student()
TEACHER = dict(STUDENT, hidden_size=48, num_layers=2, num_heads=3, intermediate_size=96, rope_theta=2000.0)


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory) -> Path:
    """A random-weight teacher saved as a workbench checkpoint (its own theta, same vocabulary)."""
    path = tmp_path_factory.mktemp("teacher") / "teacher"
    checkpoint_io.save_checkpoint(
        models.build_model(config.ModelConfig(**TEACHER), seed=7), path, {"phase": "t", "step": 0}
    )
    return path


def run_cfg(teacher: Path | None, **over) -> dict:
    cfg = {
        "name": "t",
        "model": dict(STUDENT),
        "seed": 3,
        "data": {"kind": "synthetic-short", "doc_len_min": 16, "doc_len_max": 48},
        "optim": {"micro_batch_size": 2, "grad_accum_steps": 2},
        "checkpoint": {"every": 2, "keep_last": 1},
        "loss": {"chunk_size": 40},
        "phases": [
            {"name": "short", "steps": 3, "seq_len": 64, "rope_theta": 100, "lr": 3e-3, "objective": "kd"},
            {"name": "long", "steps": 3, "seq_len": 128, "rope_theta": 5000, "lr": 1e-3, "objective": "kd"},
        ],
    }
    if teacher is not None:
        cfg["teacher"] = {"path": str(teacher)}
    cfg.update(over)
    return cfg


def records(run: Path, kind: str = "train") -> list[dict]:
    return [r for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if r["kind"] == kind]


@pytest.mark.slow
def test_two_phase_kd_run_checkpoints_theta_and_loss(tmp_path, teacher_dir):
    cfg = config.from_dict(config.RunConfig, run_cfg(teacher_dir))
    run = train(cfg, out=str(tmp_path / "run"), progress=False)
    names = sorted(p.name for p in run.glob("ckpt-*"))
    # every 2 steps + both phase ends; keep_last=1 pruned ckpt-000002 but never a phase end
    assert names == ["ckpt-000003", "ckpt-000004", "ckpt-000006"]
    m3, m6 = checkpoint_io.read_manifest(run / "ckpt-000003"), checkpoint_io.read_manifest(run / "ckpt-000006")
    assert (m3["phase"], m3["phase_end"], m3["rope_theta"]) == ("short", True, 100.0)
    assert (m6["phase"], m6["phase_end"], m6["rope_theta"], m6["parent"]) == ("long", True, 5000.0, "ckpt-000004")
    assert m6["objective"] == "kd" and m6["teacher"] == str(teacher_dir) and m6["config_hash"]
    assert json.loads((run / "ckpt-000006" / "config.json").read_text())["rope_parameters"]["rope_theta"] == 5000.0
    assert yaml.safe_load((run / "run.yaml").read_text())["phases"][1]["rope_theta"] == 5000.0
    recs = records(run)
    assert [r["step"] for r in recs] == [1, 2, 3, 4, 5, 6]
    assert [r["rope_theta"] for r in recs] == [100.0] * 3 + [5000.0] * 3
    assert set(recs[0]) >= {"loss", "ce", "kd", "lr", "tokens", "tokens_per_s", "peak_mem_mb", "loss_by_bucket"}
    assert recs[-1]["tokens"] == 3 * 4 * 64 + 3 * 4 * 128
    assert set(recs[-1]["loss_by_bucket"]) == {"0-64", "64-128"}

    # Step 4 recomputed independently: plain transformers at the phase-2 theta, the teacher, the same
    # batches, a dense KL from torch.nn.functional. Equal => theta really switched and the loss is right.
    from transformers import LlamaForCausalLM

    from workbench.data import make_stream

    student, _ = checkpoint_io.load(run / "ckpt-000003")
    hf_cfg = student.config
    hf_cfg.rope_parameters = {"rope_type": "default", "rope_theta": 5000.0}
    fresh = LlamaForCausalLM(hf_cfg)
    fresh.load_state_dict(student.state_dict())
    teacher, _ = checkpoint_io.load(teacher_dir)
    stream = make_stream(cfg.data, 128, 2, phases.phase_seed(cfg, 1))
    kl_sum, count = 0.0, 0
    with torch.no_grad():
        for _ in range(2):
            b = stream.next()
            s = fresh(input_ids=b["input_ids"], position_ids=b["position_ids"]).logits[:, :-1]
            t = teacher(input_ids=b["input_ids"], position_ids=b["position_ids"]).logits[:, :-1]
            valid = b["labels"][:, 1:] != -100
            kl = F.kl_div(s.log_softmax(-1), t.log_softmax(-1), log_target=True, reduction="none").sum(-1)
            kl_sum += float(kl[valid].sum())
            count += int(valid.sum())
    assert recs[3]["loss"] == pytest.approx(kl_sum / count, rel=1e-5)
    assert recs[3]["kd"] == pytest.approx(kl_sum / count, rel=1e-5)


def _write(tmp_path, cfg: dict) -> str:
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return str(path)


@pytest.mark.parametrize(
    "change,message",
    [
        (lambda c, t: c.update(teacher={"path": str(t) + "-missing"}), "teacher.path: directory"),
        (lambda c, t: c["phases"][1].update(seq_len=1024), "beyond the model's max_position_embeddings 512"),
        (lambda c, t: c.pop("teacher"), "needs a teacher"),
        (lambda c, t: c["data"].update(kind="nope"), "data.kind: 'nope'"),
    ],
)
def test_bad_input_fails_before_compute(tmp_path, teacher_dir, capsys, change, message):
    cfg = run_cfg(teacher_dir)
    change(cfg, teacher_dir)
    out = tmp_path / "run"
    assert cli_main(["train", _write(tmp_path, cfg), "--out", str(out), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "workbench train: error:" in err and message in err
    assert not out.exists()


def test_teacher_vocab_and_window_mismatch(tmp_path, capsys):
    for over, message in (
        (dict(vocab_size=96), "has no tokenizer and 96 embedding rows"),
        (dict(max_position_embeddings=64), "beyond the teacher's max_position_embeddings 64"),
    ):
        t = tmp_path / f"t{len(over)}{over.popitem()[0] if False else ''}{message[:5]}"
        checkpoint_io.save_checkpoint(models.build_model(config.ModelConfig(**{**TEACHER, **over})), t, {"step": 0})
        out = tmp_path / "run"
        assert cli_main(["train", _write(tmp_path, run_cfg(t)), "--out", str(out), "--no-progress"]) == 2
        assert message in capsys.readouterr().err and not out.exists()


def test_existing_run_is_not_overwritten(tmp_path, teacher_dir, capsys):
    cfg = run_cfg(None, phases=[{"name": "a", "steps": 1, "seq_len": 64, "rope_theta": 100}])
    path = _write(tmp_path, cfg)
    out = str(tmp_path / "run")
    assert cli_main(["train", path, "--out", out, "--no-progress"]) == 0
    assert cli_main(["train", path, "--out", out, "--no-progress"]) == 2
    assert "already holds a run" in capsys.readouterr().err


def test_nan_guard_stops_with_last_good_checkpoint(tmp_path, monkeypatch):
    calls = {"n": 0}
    real = distill.chunked_loss

    def poisoned(*a, **k):  # micro-batch 5 (step 3 of 2 micro-batches each) returns NaN
        calls["n"] += 1
        r = real(*a, **k)
        if calls["n"] == 5:
            r.loss = r.loss * float("nan")
            r.per_token = r.per_token * float("nan")
        return r

    monkeypatch.setattr(distill, "chunked_loss", poisoned)
    cfg = config.from_dict(
        config.RunConfig,
        run_cfg(None, phases=[{"name": "a", "steps": 5, "seq_len": 64, "rope_theta": 100, "objective": "ce"}]),
    )
    with pytest.raises(TrainingDiverged, match="step 3 .*Last good checkpoint: .*ckpt-000002"):
        train(cfg, out=str(tmp_path / "run"), progress=False)
    assert sorted(p.name for p in (tmp_path / "run").glob("ckpt-*")) == ["ckpt-000002"]
    checkpoint_io.verify_checkpoint(tmp_path / "run" / "ckpt-000002", full_hash=True)
    assert records(tmp_path / "run", "error")[0]["step"] == 3


def _launch(cfg_path: str, out: Path, *extra: str) -> subprocess.Popen:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    return subprocess.Popen(
        [sys.executable, "-m", "workbench.train", cfg_path, "--out", str(out), "--no-progress", *extra],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )


def _last_step(metrics: Path) -> int:
    """The step of the last complete metrics line (the file is being appended to)."""
    try:
        lines = metrics.read_text().splitlines()
    except FileNotFoundError:
        return 0
    for ln in reversed(lines):
        try:
            return json.loads(ln)["step"]
        except json.JSONDecodeError:
            continue
    return 0


@pytest.mark.slow
def test_sigkill_then_resume_gives_bit_identical_losses(tmp_path, teacher_dir):
    cfg = run_cfg(
        teacher_dir, checkpoint={"every": 5, "keep_last": 2}, optim={"micro_batch_size": 2, "grad_accum_steps": 2}
    )
    cfg["phases"][0].update(steps=12, objective="ce+kd")
    cfg["phases"][1].update(steps=36)  # a long phase 2 leaves a wide window to kill it in
    cfg["loss"] = {"chunk_size": 40, "ce_weight": 0.5}
    path = _write(tmp_path, cfg)
    full = _launch(path, tmp_path / "full")
    killed = _launch(path, tmp_path / "killed")
    metrics = tmp_path / "killed" / "metrics.jsonl"
    deadline = time.time() + 240
    while time.time() < deadline:  # kill mid-phase 2, between checkpoints (steps 15 and 20)
        if _last_step(metrics) >= 17:
            break
        time.sleep(0.002)
    killed.send_signal(signal.SIGKILL)
    assert killed.wait() == -signal.SIGKILL
    assert full.wait(timeout=300) == 0, full.stdout.read().decode()
    last = _last_step(metrics)
    assert 17 <= last < 48, "the run was not killed mid-phase 2"
    assert (tmp_path / "killed" / "ckpt-000015").is_dir()  # resume starts from here, mid-phase
    with open(metrics, "a") as f:
        f.write('{"kind": "train", "step": 9')  # a line a kill can cut short
    resumed = _launch(path, tmp_path / "killed", "--resume")
    assert resumed.wait(timeout=300) == 0, resumed.stdout.read().decode()
    a, b = records(tmp_path / "full"), records(tmp_path / "killed")
    assert [r["step"] for r in b] == list(range(1, 49))
    assert [(r["step"], r["loss"], r["ce"], r["kd"]) for r in a] == [
        (r["step"], r["loss"], r["ce"], r["kd"]) for r in b
    ]
    sa = checkpoint_io.load(tmp_path / "full" / "ckpt-000048")[0].state_dict()
    sb = checkpoint_io.load(tmp_path / "killed" / "ckpt-000048")[0].state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)


def test_teacher_cache_with_full_topk_reproduces_online_kd(tmp_path, teacher_dir):
    from workbench.train import teacher_cache

    base = run_cfg(teacher_dir, checkpoint={"every": 0, "keep_last": 1}, loss={"chunk_size": 40, "temperature": 2.0})
    base["phases"][0]["steps"] = base["phases"][1]["steps"] = 2
    online = config.from_dict(config.RunConfig, base)
    assert (
        cli_main(
            [
                "teacher-cache",
                _write(tmp_path, base),
                "--out",
                str(tmp_path / "cache"),
                "--top-k",
                "128",
                "--batch-size",
                "3",
                "--no-progress",
            ]
        )
        == 0
    )
    cached = config.from_dict(
        config.RunConfig, {**base, "teacher": {"path": str(teacher_dir), "cache": str(tmp_path / "cache")}}
    )
    a = records(train(online, out=str(tmp_path / "a"), progress=False))
    b = records(train(cached, out=str(tmp_path / "b"), progress=False))
    assert [r["loss"] for r in b] == pytest.approx([r["loss"] for r in a], rel=1e-4)
    # a cache for other data is refused before training
    other = {**base, "seed": 99, "teacher": {"path": str(teacher_dir), "cache": str(tmp_path / "cache")}}
    with pytest.raises(config.ConfigError, match="seed"):
        train(config.from_dict(config.RunConfig, other), out=str(tmp_path / "c"), progress=False)
    assert teacher_cache.check(tmp_path / "cache", online)["k"] == 128


def test_teacher_cache_with_reset_positions_reproduces_online_reset_kd(tmp_path, teacher_dir):
    """teacher.positions: reset is the cached teacher's view too; a cache of the other view is refused."""
    base = run_cfg(
        teacher_dir,
        checkpoint={"every": 0, "keep_last": 1},
        phases=[{"name": "short", "steps": 2, "seq_len": 64, "rope_theta": 100, "lr": 3e-3, "objective": "kd"}],
    )
    base["teacher"]["positions"] = "reset"
    assert (
        cli_main(
            [
                "teacher-cache",
                _write(tmp_path, base),
                "--out",
                str(tmp_path / "cache"),
                "--top-k",
                "128",
                "--no-progress",
            ]
        )
        == 0
    )
    cached = {**base, "teacher": {**base["teacher"], "cache": str(tmp_path / "cache")}}
    a = records(train(config.from_dict(config.RunConfig, base), out=str(tmp_path / "a"), progress=False))
    b = records(train(config.from_dict(config.RunConfig, cached), out=str(tmp_path / "b"), progress=False))
    assert [r["loss"] for r in b] == pytest.approx([r["loss"] for r in a], rel=1e-4)
    same = {**cached, "teacher": {**cached["teacher"], "positions": "same"}}
    with pytest.raises(config.ConfigError, match="teacher.positions"):
        train(config.from_dict(config.RunConfig, same), out=str(tmp_path / "c"), progress=False)
    other_theta = {**cached, "teacher": {**cached["teacher"], "rope_theta": 1234.0}}
    with pytest.raises(config.ConfigError, match="teacher.rope_theta"):
        train(config.from_dict(config.RunConfig, other_theta), out=str(tmp_path / "d"), progress=False)


def test_teacher_cache_of_another_teacher_or_theta_is_refused_before_training(tmp_path, teacher_dir):
    """The cache records the teacher's weights hash and theta: a run whose teacher.path holds other weights,
    or whose teacher runs at its own config.json theta while the cache was built at teacher.rope_theta, is
    one ConfigError in preflight (before, both silently distilled the cached targets)."""
    from workbench.train import teacher_cache

    base = run_cfg(
        teacher_dir,
        checkpoint={"every": 0, "keep_last": 1},
        phases=[{"name": "short", "steps": 1, "seq_len": 64, "rope_theta": 100, "lr": 3e-3, "objective": "kd"}],
    )
    at_1234 = {**base, "teacher": {**base["teacher"], "rope_theta": 1234.0}}
    assert (
        cli_main(
            [
                "teacher-cache",
                _write(tmp_path, at_1234),
                "--out",
                str(tmp_path / "cache"),
                "--top-k",
                "8",
                "--no-progress",
            ]
        )
        == 0
    )
    cache = str(tmp_path / "cache")
    assert (
        teacher_cache.check(
            Path(cache),
            config.from_dict(config.RunConfig, {**at_1234, "teacher": {**at_1234["teacher"], "cache": cache}}),
        )["teacher_theta"]
        == 1234.0
    )
    own_theta = config.from_dict(config.RunConfig, {**base, "teacher": {**base["teacher"], "cache": cache}})
    with pytest.raises(config.ConfigError, match=r"config.json's rope_theta is 2000"):
        teacher_cache.check(Path(cache), own_theta)
    other = tmp_path / "other-teacher"
    checkpoint_io.save_checkpoint(
        models.build_model(config.ModelConfig(**TEACHER), seed=8), other, {"phase": "t", "step": 0}
    )
    with pytest.raises(config.ConfigError, match="another teacher"):
        train(
            config.from_dict(
                config.RunConfig, {**at_1234, "teacher": {**at_1234["teacher"], "path": str(other), "cache": cache}}
            ),
            out=str(tmp_path / "x"),
            progress=False,
        )
    assert not (tmp_path / "x").exists()


def test_eval_records_from_quick_eval(tmp_path):
    cfg = config.from_dict(
        config.RunConfig,
        run_cfg(
            None,
            eval_every=2,
            eval_lengths=[64],
            eval_samples=2,
            phases=[{"name": "a", "steps": 2, "seq_len": 64, "rope_theta": 100, "objective": "ce"}],
        ),
    )
    run = train(cfg, out=str(tmp_path / "run"), progress=False, evaluate=training_eval)
    ev = records(run, "eval")
    assert ev and all(r["step"] == 2 and r["length"] == 64 and 0.0 <= r["accuracy"] <= 1.0 for r in ev)
    assert {"task", "answer_logprob", "phase"} <= set(ev[0])


def test_tiny_student_presets_share_a_budget_and_differ_in_theta_and_objective():
    """The demo's stage-2 arms: same tokens, packed short documents, each extending the stage-1 student of
    its schedule's first theta to the 1024 window at the schedule's second theta."""
    paths = sorted((ROOT / "data" / "configs").glob("tiny-[ck][ed]-*.yaml"))
    cfgs = {p.stem: config.load_run_config(p) for p in paths}
    assert set(cfgs) == {f"tiny-{o}-{v}" for o in ("kd", "ce") for v in ("phasewise", "fixed-small", "fixed-large")}
    budget = {
        name: sum(ph.steps * ph.seq_len for ph in c.phases) * c.optim.micro_batch_size * c.optim.grad_accum_steps
        for name, c in cfgs.items()
    }
    assert len(set(budget.values())) == 1
    for name, c in cfgs.items():
        (extend,) = c.phases
        assert extend.seq_len == 1024 and c.data.kind == "synthetic-short"
        assert c.data.packing.positions == "continue" and 64 <= c.data.doc_len_min <= c.data.doc_len_max <= 256
        assert all(ph.objective == ("kd" if "-kd-" in name else "ce") for ph in c.phases)
        assert (c.teacher is not None) == ("-kd-" in name)
        start = checkpoint_io.read_manifest(ROOT / c.init_from)
        assert start["seq_len"] == 256  # a short-context (stage-1) student
        thetas = (start["rope_theta"], extend.rope_theta)
        assert (
            thetas
            == {"phasewise": (500.0, 10000.0), "fixed-small": (500.0, 500.0), "fixed-large": (10000.0, 10000.0)}[
                name.split("-", 2)[2]
            ]
        )


@pytest.mark.parametrize("theta", ["500", "10000"])
def test_stage1_recipes_still_train(tmp_path, theta):
    """The shipped stage-1 students' recipes, two steps per phase: every phase runs and checkpoints."""
    import dataclasses

    cfg = config.load_run_config(ROOT / "data" / "configs" / "stage1" / f"tiny-student-short-theta{theta}.yaml")
    assert max(ph.seq_len for ph in cfg.phases) <= 256
    cfg = dataclasses.replace(
        cfg,
        phases=[dataclasses.replace(ph, steps=2, warmup_steps=1) for ph in cfg.phases],
        eval_every=0,
        optim=dataclasses.replace(cfg.optim, micro_batch_size=2),
    )
    run = train(cfg, out=str(tmp_path / "run"), progress=False)
    ends = [p for p in RunDir(run).checkpoints() if checkpoint_io.read_manifest(p).get("phase_end")]
    assert len(ends) == len(cfg.phases) and checkpoint_io.read_manifest(ends[-1])["rope_theta"] == float(theta)


def test_lr_schedule_warmup_then_cosine_to_min_per_phase():
    from workbench.train.schedule import lr_at

    lrs = [lr_at(i, 10, 1e-3, warmup_steps=2, min_lr_ratio=0.1) for i in range(10)]
    assert lrs[0] == pytest.approx(5e-4) and lrs[1] == pytest.approx(1e-3) and lrs[2] == pytest.approx(1e-3)
    assert lrs[-1] == pytest.approx(1e-4)
    assert all(a >= b for a, b in zip(lrs[1:], lrs[2:]))


def test_activation_checkpointing_leaves_the_losses_unchanged(tmp_path, monkeypatch):
    from transformers import LlamaForCausalLM

    calls = []
    real = LlamaForCausalLM.activation_checkpointing_enable
    monkeypatch.setattr(
        LlamaForCausalLM, "activation_checkpointing_enable", lambda self, **kw: calls.append(kw) or real(self, **kw)
    )
    losses = []
    for ac in (False, True):
        cfg = run_cfg(
            None,
            optim={"micro_batch_size": 2, "grad_accum_steps": 1, "activation_checkpointing": ac},
            phases=[{"name": "a", "steps": 2, "seq_len": 64, "rope_theta": 100, "objective": "ce"}],
        )
        run = train(config.from_dict(config.RunConfig, cfg), out=str(tmp_path / str(ac)), progress=False)
        losses.append([r["loss"] for r in records(run)])
    assert len(calls) == 1 and losses[0] == pytest.approx(losses[1], rel=1e-6)


def test_teacher_runs_at_its_configured_theta(teacher_dir):
    from transformers import LlamaForCausalLM

    raw = run_cfg(teacher_dir)
    raw["teacher"]["rope_theta"] = 777
    cfg = config.from_dict(config.RunConfig, raw)
    teacher = distill.load_teacher(cfg, torch.device("cpu"))
    assert not any(p.requires_grad for p in teacher.parameters())
    hf_cfg = teacher.config
    hf_cfg.rope_parameters = {"rope_type": "default", "rope_theta": 777.0}
    fresh = LlamaForCausalLM(hf_cfg).eval()
    fresh.load_state_dict(teacher.state_dict())
    ids = torch.randint(0, 128, (1, 200), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.allclose(teacher(ids).logits, fresh(ids).logits, atol=1e-5)
        assert not torch.allclose(checkpoint_io.load(teacher_dir)[0](ids).logits, fresh(ids).logits, atol=1e-3)


def _fields(cls) -> set[str]:
    import dataclasses

    return {f.name for f in dataclasses.fields(cls)}


def test_ce_plus_kd_with_default_weights_trains_and_run_yaml_holds_every_default(tmp_path, teacher_dir):
    cfg = run_cfg(teacher_dir, checkpoint={"every": 0, "keep_last": 1})  # no loss weights: the defaults
    cfg["phases"] = [dict(cfg["phases"][0], steps=2, objective="ce+kd")]
    run = train(config.load_run_config(_write(tmp_path, cfg)), out=str(tmp_path / "run"), progress=False)
    for r in records(run):  # default weights: 0.5 * CE + 1.0 * KD
        assert r["ce"] > 0 and r["kd"] > 0 and r["loss"] == pytest.approx(0.5 * r["ce"] + 1.0 * r["kd"], rel=1e-5)
    resolved = yaml.safe_load((run / "run.yaml").read_text())
    assert resolved["loss"]["ce_weight"] == 0.5 and resolved["loss"]["kd_weight"] == 1.0
    assert resolved["optim"]["precision"] == "auto" and resolved["optim"]["eps"] == 1e-8
    for section, cls in (
        ("", config.RunConfig),
        ("loss", config.LossConfig),
        ("optim", config.OptimConfig),
        ("checkpoint", config.CheckpointConfig),
        ("model", config.ModelConfig),
        ("teacher", config.TeacherConfig),
        ("data", config.DataConfig),
    ):
        assert set(resolved[section] if section else resolved) == _fields(cls), section
    assert set(resolved["phases"][0]) == _fields(config.PhaseConfig)
    manifest = checkpoint_io.read_manifest(run / "ckpt-000002")
    assert manifest["config_hash_version"] == config.HASH_VERSION and manifest["precision"] == "fp32"
    assert manifest["compiled"] is False  # optim.compile: auto, on CPU


def test_resume_refuses_a_changed_config_and_a_run_of_hash_version_1(tmp_path, capsys):
    """A changed setting is refused; a checkpoint without config_hash_version (version 1) is one line."""
    cfg = run_cfg(None, phases=[{"name": "a", "steps": 1, "seq_len": 64, "rope_theta": 100}])
    path = _write(tmp_path, cfg)
    out = tmp_path / "run"
    assert cli_main(["train", path, "--out", str(out), "--no-progress"]) == 0
    changed = dict(cfg, phases=[dict(cfg["phases"][0], lr=2e-3)])
    with pytest.raises(config.ConfigError, match="differs from the one the run was started with"):
        train(config.from_dict(config.RunConfig, changed), out=str(out), resume=True, progress=False)
    with pytest.raises(config.ConfigError, match="differs at phases\\[0\\].lr\\)"):  # the key, named
        train(config.from_dict(config.RunConfig, changed), out=str(out), resume=True, progress=False)
    ckpt = RunDir(out).checkpoints()[-1]
    manifest = json.loads((ckpt / checkpoint_io.MANIFEST).read_text())
    del manifest["config_hash_version"]
    (ckpt / checkpoint_io.MANIFEST).write_text(json.dumps(manifest))
    capsys.readouterr()
    assert cli_main(["train", path, "--out", str(out), "--resume", "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "config_hash_version 1 (this workbench: 3)" in err[0] and "retrain" in err[0], err


def test_resume_takes_a_changed_description_logging_or_eval_and_records_it(tmp_path, capsys):
    """What the hash leaves out (version 3: description, logging, evaluation, checkpointing) may change on --resume:
    a note names the keys and run.yaml takes the new values. A version-2 checkpoint (which hashed them) resumes
    with its own config and refuses the changed one."""
    cfg = run_cfg(None, phases=[{"name": "a", "steps": 2, "seq_len": 64, "rope_theta": 100}])
    out = tmp_path / "run"
    assert cli_main(["train", _write(tmp_path, cfg), "--out", str(out), "--no-progress"]) == 0
    changed = dict(cfg, description="rerun with evals", eval_every=1, logging={"tensorboard": False})
    capsys.readouterr()
    train(config.from_dict(config.RunConfig, changed), out=str(out), resume=True, progress=False)
    err = capsys.readouterr().err
    assert "resuming with a changed description, eval_every, logging.tensorboard" in err, err
    assert yaml.safe_load((out / "run.yaml").read_text())["description"] == "rerun with evals"
    ckpt = RunDir(out).checkpoints()[-1]
    manifest = json.loads((ckpt / checkpoint_io.MANIFEST).read_text())
    manifest.update(config_hash_version=2, config_hash=config.config_hash(config.from_dict(config.RunConfig, cfg), 2))
    (ckpt / checkpoint_io.MANIFEST).write_text(json.dumps(manifest))
    (out / "run.yaml").write_text(yaml.safe_dump(config.to_dict(config.from_dict(config.RunConfig, cfg))))
    with pytest.raises(config.ConfigError, match="differs at description"):
        train(config.from_dict(config.RunConfig, changed), out=str(out), resume=True, progress=False)
    train(config.from_dict(config.RunConfig, cfg), out=str(out), resume=True, progress=False)
