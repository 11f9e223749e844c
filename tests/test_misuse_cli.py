"""Misuse and faults through the command line (issue 21, CLI side): nothing replaced or raced, every bad value
refused before work with one line naming the key and the file, filesystem errors as one line, runaway sizes
refused with an estimate. Refusals train nothing; the few runs that train take 1-2 steps of a tiny model."""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path

import pytest
import yaml
from tiny import tiny_student

from workbench import checkpoint_io, config, models, writable
from workbench.cli import main as cli_main
from workbench.runlock import RunLock
from workbench.train import rundir, train

STUDENT = tiny_student(max_position_embeddings=256)
PRESET = "data/configs/presets/tiny-student.yaml"
ROOT = Path(__file__).resolve().parents[1]


def ce_cfg(**over) -> dict:
    cfg = {
        "name": "m",
        "model": dict(STUDENT),
        "seed": 1,
        "data": {"kind": "synthetic-short", "doc_len_min": 16, "doc_len_max": 32},
        "optim": {"micro_batch_size": 2},
        "checkpoint": {"every": 1, "keep_last": 0},
        "phases": [{"name": "a", "steps": 2, "seq_len": 32, "rope_theta": 100, "lr": 1e-3}],
    }
    cfg.update(over)
    return cfg


def write(tmp_path: Path, cfg: dict, name: str = "cfg.yaml") -> str:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(cfg))
    return str(path)


def train_cli(tmp_path, cfg: dict, out: Path, *extra: str) -> int:
    return cli_main(["train", write(tmp_path, cfg), "--out", str(out), "--no-progress", *extra])


# ------------------------------------------------------------------------------- data replaced or raced


def test_model_out_refuses_an_existing_checkpoint_and_overwrite_replaces_it(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(ROOT)
    out = tmp_path / "ck"
    assert cli_main(["model", PRESET, "--out", str(out), "--seed", "1"]) == 0
    before = (out / "model.safetensors").read_bytes()
    assert cli_main(["model", PRESET, "--out", str(out), "--seed", "2"]) == 2
    assert "already exists (a checkpoint); pass --overwrite" in capsys.readouterr().err
    assert (out / "model.safetensors").read_bytes() == before  # untouched
    (tmp_path / "plain").mkdir()
    (tmp_path / "plain" / "notes.txt").write_text("mine")
    assert cli_main(["model", PRESET, "--out", str(tmp_path / "plain")]) == 2
    assert (tmp_path / "plain" / "notes.txt").read_text() == "mine"
    assert cli_main(["model", PRESET, "--out", str(tmp_path / "plain"), "--overwrite"]) == 2  # not a checkpoint
    assert "not a model checkpoint" in capsys.readouterr().err
    assert sorted(p.name for p in (tmp_path / "plain").iterdir()) == ["notes.txt"]
    (tmp_path / "file").write_text("x")
    assert cli_main(["model", PRESET, "--out", str(tmp_path / "file"), "--overwrite"]) == 2
    assert "replaces checkpoint directories only" in capsys.readouterr().err
    assert cli_main(["model", PRESET, "--out", str(out), "--seed", "2", "--overwrite"]) == 0
    assert (out / "model.safetensors").read_bytes() != before
    assert not [p for p in tmp_path.iterdir() if p.name.startswith((".tmp-", ".old-"))]  # atomic, nothing left


def test_second_trainer_on_a_locked_run_fails_at_once_naming_the_holder(tmp_path, capsys):
    out = tmp_path / "run"
    with RunLock(out):  # a live writer (this process, another file description: flock conflicts)
        assert train_cli(tmp_path, ce_cfg(), out) == 2
        err = capsys.readouterr().err
        assert f"pid {os.getpid()}" in err and "another trainer is writing this run" in err
        assert train_cli(tmp_path, ce_cfg(), out, "--resume") == 2
        assert "another trainer" in capsys.readouterr().err
    assert not (out / "metrics.jsonl").exists() and not list(out.glob("ckpt-*"))


def test_a_live_writer_on_another_host_is_seen_by_its_heartbeat(tmp_path, capsys, monkeypatch):
    """flock does not reach across hosts on every shared file system: a lock of another host with a recent
    heartbeat is refused in one line (nothing written), a stale one is taken over; the writer beats while it
    trains."""
    import time

    from workbench import runlock

    out = tmp_path / "run"
    out.mkdir()
    other = {"pid": 4242, "host": "node-7", "since": time.time() - 3600, "beat": time.time() - 30}
    (out / "run.lock").write_text(json.dumps(other))
    assert runlock.writer_alive(out)
    assert train_cli(tmp_path, ce_cfg(), out) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "a trainer on node-7 (pid 4242) is writing this run" in err[0], err
    assert json.loads((out / "run.lock").read_text()) == other and not list(out.glob("ckpt-*"))
    (out / "run.lock").write_text(json.dumps(dict(other, beat=time.time() - runlock.STALE_AFTER - 1)))
    assert not runlock.writer_alive(out)
    monkeypatch.setattr(runlock, "BEAT_EVERY", 0.0)
    beats = []
    monkeypatch.setattr(runlock.RunLock, "_record", lambda self, now: beats.append(now) or setattr(self, "beaten", now))
    with pytest.warns(UserWarning, match="taking over the lock of pid 4242"):
        assert train_cli(tmp_path, ce_cfg(), out) == 0
    assert len(beats) >= 1 + 2  # the claim, then one per training step


def test_stale_lock_is_taken_over_and_dead_writers_leftovers_are_removed(tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    (out / "run.lock").write_text(json.dumps({"pid": 2**22 + 12345, "host": "elsewhere-dead", "since": 1.0}))
    (out / ".tmp-ckpt-000001-deadbeef").mkdir()
    (out / ".tmp-ckpt-000001-deadbeef" / "model.safetensors").write_bytes(b"half")
    (out / ".run.yaml.tmp").write_text("half")
    with pytest.warns(UserWarning, match="taking over the lock of pid"):
        assert train_cli(tmp_path, ce_cfg(), out) == 0
    err = capsys.readouterr().err
    assert "removed 2 leftover(s) of an interrupted writer" in err
    assert not (out / ".tmp-ckpt-000001-deadbeef").exists() and not (out / ".run.yaml.tmp").exists()
    assert sorted(p.name for p in out.glob("ckpt-*")) == ["ckpt-000001", "ckpt-000002"]
    assert (out / "run.lock").read_text() == ""  # released: nobody holds it now


def test_corrupt_latest_checkpoint_stops_resume_naming_it(tmp_path, capsys):
    out = tmp_path / "run"
    cfg = ce_cfg()
    assert train_cli(tmp_path, cfg, out) == 0
    cfg["phases"][0]["steps"] = 3
    cfg = ce_cfg(phases=[dict(ce_cfg()["phases"][0], steps=3)])
    for damage in ("{not json", json.dumps({"format": "other"})):
        (out / "ckpt-000002" / "manifest.json").write_text(damage)
        assert train_cli(tmp_path, cfg, out, "--resume") == 2
        err = capsys.readouterr().err
        assert "ckpt-000002" in err and "--resume stops here" in err
        assert (out / "ckpt-000002" / "manifest.json").read_text() == damage  # never skipped and overwritten
        assert not (out / "ckpt-000003").exists()


def test_eval_record_survives_a_kill_right_after_its_checkpoint(tmp_path, monkeypatch):
    out = tmp_path / "run"
    cfg = config.from_dict(config.RunConfig, ce_cfg(eval_every=1, eval_lengths=[32], eval_samples=1))
    rows = lambda model, c: [{"task": "probe-order", "accuracy": 1.0}]  # noqa: E731 (what is recorded, not how)
    save = checkpoint_io.save_checkpoint  # the kill: right after ckpt-000001 is committed

    def save_then_die(model, path, *a, **kw):
        final = save(model, path, *a, **kw)
        if Path(path).name == "ckpt-000001":
            raise KeyboardInterrupt
        return final

    monkeypatch.setattr(checkpoint_io, "save_checkpoint", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        train(cfg, out=str(out), progress=False, evaluate=rows)
    monkeypatch.setattr(checkpoint_io, "save_checkpoint", save)
    evals = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in evals if r["kind"] == "eval"] == [1]  # recorded before the checkpoint
    train(cfg, out=str(out), resume=True, progress=False, evaluate=rows)
    evals = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in evals if r["kind"] == "eval"] == [1, 2]  # each once


def test_train_refuses_a_foreign_out_directory_and_a_fresh_start_rewrites_run_yaml(tmp_path, capsys):
    foreign = tmp_path / "photos"
    foreign.mkdir()
    (foreign / "a.jpg").write_bytes(b"x")
    assert train_cli(tmp_path, ce_cfg(), foreign) == 2
    assert "is not a run directory (it holds a.jpg)" in capsys.readouterr().err
    assert sorted(p.name for p in foreign.iterdir()) == ["a.jpg"]
    out = tmp_path / "run"  # what a failed start left: a run.yaml describing another config
    out.mkdir()
    (out / "run.yaml").write_text(yaml.safe_dump(ce_cfg(name="the-failed-one")))
    assert train_cli(tmp_path, ce_cfg(phases=[dict(ce_cfg()["phases"][0], steps=1)]), out) == 0
    assert yaml.safe_load((out / "run.yaml").read_text())["name"] == "m"


# ----------------------------------------------------------------------------------- bad values accepted


def _phase(**kw) -> list[dict]:
    return [dict(ce_cfg()["phases"][0], **kw)]


@pytest.mark.parametrize(
    "over,message",
    [
        (dict(model=dict(STUDENT, rope_theta=float("inf"))), "model.rope_theta: must be a finite number"),
        (dict(phases=_phase(rope_theta=float("inf"))), "phases[0].rope_theta: must be a finite number"),
        (dict(phases=_phase(rope_theta=float("nan"))), "phases[0].rope_theta: must be > 0"),
        (dict(phases=_phase(min_lr_ratio=-0.5)), "phases[0].min_lr_ratio: must be in [0.0, 1.0]"),
        (dict(phases=_phase(min_lr_ratio=1.5)), "phases[0].min_lr_ratio: must be in [0.0, 1.0]"),
        (dict(phases=_phase(warmup_steps=-1)), "phases[0].warmup_steps: must be >= 0"),
        (dict(phases=_phase(lr=float("inf"))), "phases[0].lr: must be a finite number"),
        (dict(optim={"grad_clip": float("nan")}), "optim.grad_clip: must be a finite number"),
        (dict(optim={"grad_clip": 0}), "optim.grad_clip: must be > 0"),
        (dict(optim={"betas": [0.9]}), "optim.betas: expected two numbers"),
        (dict(optim={"betas": [0.9, 1.0]}), "optim.betas[1]: must be in [0.0, 1.0)"),
        (dict(optim={"eps": -1e-8}), "optim.eps: must be > 0"),
        (dict(optim={"weight_decay": float("nan")}), "optim.weight_decay: must be a finite number"),
        (dict(name="../escape"), "name: '../escape' must be a plain name"),
        (dict(name="a/b"), "name: 'a/b' must be a plain name"),
        (dict(phases=_phase(name="..")), "phases[0].name: '..' must be a plain name"),
        (dict(metrics_every=0), "metrics_every: must be >= 1"),
        (dict(checkpoint={"every": -1}), "checkpoint.every: must be >= 0"),
        (dict(loss={"temperature": float("nan")}), "loss.temperature: must be a finite number"),
        (dict(loss={"kd_weight": -1.0}), "loss.kd_weight: must be >= 0"),
        (dict(eval_tasks=["passkey", "bogus"]), "eval_tasks[1]: unknown task 'bogus'"),
        (
            dict(eval_every=1, eval_lengths=[128, 4096]),
            "eval_lengths[1]: 4096 is beyond the model's max_position_embeddings 256",
        ),
        (dict(data={"kind": "synthetic-short", "doc_len_min": 0, "doc_len_max": 8}), "data.doc_len_min: must be >= 1"),
        (dict(data={"kind": "synthetic-short", "num_pairs_min": -1}), "data.num_pairs_min: must be >= 0"),
        (dict(loss={"jsd_beta": float("nan")}), "loss.jsd_beta: must be a finite number"),
        (
            dict(model=dict(STUDENT, rope_scaling={"rope_type": "linear", "factor": float("inf")})),
            "model.rope_scaling.factor: must be a finite number",
        ),
        (dict(model=dict(STUDENT, rms_norm_eps=0.0)), "model.rms_norm_eps: must be > 0"),
        (dict(model=dict(STUDENT, stated_params=float("nan"))), "model.stated_params: must be a finite number"),
        (dict(teacher={"path": "/nowhere", "rope_theta": float("nan")}), "teacher.rope_theta: must be a finite number"),
        (dict(optim={"betas": [0.9, 0.95, 0.99]}), "optim.betas: expected two numbers"),
        (dict(optim={"betas": [-0.1, 0.95]}), "optim.betas[0]: must be in [0.0, 1.0)"),
        (dict(name="a\\b"), "must be a plain name"),
        (dict(phases=_phase(freeze_wavelengths=[float("nan"), 10.0])), "phases[0].freeze_wavelengths[0]: must be >= 0"),
    ],
)
def test_bad_values_are_refused_naming_key_and_file_before_anything_is_written(tmp_path, capsys, over, message):
    out = tmp_path / "run"
    assert train_cli(tmp_path, ce_cfg(**over), out) == 2
    err = capsys.readouterr().err
    assert message in err and "cfg.yaml" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not out.exists()


def test_grad_clip_null_is_an_explicit_off(tmp_path):
    cfg = config.from_dict(config.RunConfig, ce_cfg(optim={"grad_clip": None}))
    assert cfg.optim.grad_clip is None


def test_presets_and_shipped_configs_still_load():
    for path in sorted((ROOT / "data" / "configs").rglob("*.yaml")):
        config.load_config(path)


def test_teacher_without_tokenizer_must_have_the_run_tokenizers_rows(tmp_path, capsys):
    teacher = tmp_path / "teacher"
    checkpoint_io.save_checkpoint(models.build_model(config.ModelConfig(**dict(STUDENT, vocab_size=200))), teacher, {})
    cfg = ce_cfg(model=dict(STUDENT, vocab_size=200), teacher={"path": str(teacher)}, phases=_phase(objective="kd"))
    assert train_cli(tmp_path, cfg, tmp_path / "run") == 2
    err = capsys.readouterr().err
    assert "has no tokenizer and 200 embedding rows, but the run's tokenizer has 128 tokens" in err
    assert "matches the student" not in err and not (tmp_path / "run").exists()


# ------------------------------------------------------------------------------ tracebacks and late errors


def test_broken_teacher_config_json_and_garbage_data_are_named(tmp_path, capsys):
    teacher = tmp_path / "teacher"
    checkpoint_io.save_checkpoint(models.build_model(config.ModelConfig(**STUDENT)), teacher, {})
    (teacher / "config.json").write_text("{ garbage")
    assert (
        train_cli(tmp_path, ce_cfg(teacher={"path": str(teacher)}, phases=_phase(objective="kd")), tmp_path / "run")
        == 2
    )
    err = capsys.readouterr().err
    assert f"{teacher}/config.json" in err and "Traceback" not in err
    junk = tmp_path / "junk.jsonl"
    junk.write_bytes(b"\x00\xff not json at all\n{]\n")
    cfg = ce_cfg(data={"kind": "jsonl", "paths": [str(junk)], "tokenizer": None})
    assert train_cli(tmp_path, cfg, tmp_path / "run2") == 2
    err = capsys.readouterr().err
    assert "junk.jsonl" in err and "Traceback" not in err


@pytest.mark.parametrize(
    "code,words",
    [
        (errno.ENOSPC, "no space left on the device"),
        (errno.EROFS, "read-only file system"),
        (errno.EACCES, "permission denied"),
    ],
)
def test_unwritable_run_directory_is_one_line_before_any_work(tmp_path, capsys, monkeypatch, code, words):
    real_write = os.write

    def failing_write(fd, data):  # the write probe hits a full / read-only / forbidden location
        if os.readlink(f"/proc/self/fd/{fd}").startswith(str(tmp_path / "run")):
            raise OSError(code, os.strerror(code))
        return real_write(fd, data)

    monkeypatch.setattr(writable.os, "write", failing_write)
    out = tmp_path / "run"
    assert train_cli(tmp_path, ce_cfg(), out) == 2
    err = capsys.readouterr().err
    assert f"{out}" in err and words in err and len(err.strip().splitlines()) == 1
    assert not out.exists()  # the probe removed what it made


def test_filesystem_error_during_a_run_is_one_line_and_keeps_the_last_checkpoint(tmp_path, capsys, monkeypatch):
    out = tmp_path / "run"
    save = checkpoint_io.save_checkpoint

    def full_at_step_2(model, path, *a, **kw):  # the disk fills up while the second checkpoint is written
        if Path(path).name == "ckpt-000002":
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(out / ".tmp-ckpt-000002-x"))
        return save(model, path, *a, **kw)

    monkeypatch.setattr(checkpoint_io, "save_checkpoint", full_at_step_2)
    assert train_cli(tmp_path, ce_cfg(), out) == 2
    err = capsys.readouterr().err
    assert "no space left on the device" in err and ".tmp-ckpt-000002" in err and "Traceback" not in err
    assert sorted(p.name for p in out.glob("ckpt-*")) == ["ckpt-000001"]
    checkpoint_io.verify_checkpoint(out / "ckpt-000001")  # what existed is intact
    monkeypatch.setattr(checkpoint_io, "save_checkpoint", save)
    assert train_cli(tmp_path, ce_cfg(), out, "--resume") == 0  # and the run goes on from it
    assert (out / "ckpt-000002").is_dir()


def test_probe_max_train_zero_and_eval_runaway_depths_are_refused(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(ROOT)
    ck = tmp_path / "ck"
    assert cli_main(["model", PRESET, "--out", str(ck)]) == 0
    capsys.readouterr()
    assert cli_main(["probe", str(ck), "--max-train", "0", "--out", str(tmp_path / "s.zarr")]) == 2
    assert "--max-train must be >= --buckets" in capsys.readouterr().err
    assert cli_main(["eval", str(ck), "--depths", "100000", "--lengths", "64", "--out", str(tmp_path / "e.zarr")]) == 2
    assert "100000 depths but the shortest length has only 64 positions" in capsys.readouterr().err
    assert (
        cli_main(
            [
                "eval",
                str(ck),
                "--depths",
                "60",
                "--samples",
                "100000",
                "--lengths",
                "64",
                "--out",
                str(tmp_path / "e.zarr"),
            ]
        )
        == 2
    )
    assert "prompts" in capsys.readouterr().err and not (tmp_path / "e.zarr").exists()


# ------------------------------------------------------------------------------------------ runaway sizes


@pytest.mark.parametrize(
    "over,message",
    [
        (dict(model=dict(STUDENT, max_position_embeddings=10**9), phases=_phase(seq_len=10**9)), "GiB"),
        (dict(optim={"micro_batch_size": 10**6}), "one step of 1000000 x 32 tokens needs about"),
        (
            dict(
                model=dict(STUDENT, max_position_embeddings=10**6),
                phases=_phase(seq_len=10**6),
                data={
                    "kind": "synthetic-short",
                    "doc_len_min": 16,
                    "doc_len_max": 32,
                    "packing": {"attention": "document"},
                },
            ),
            "GiB",
        ),
    ],
)
def test_runaway_sizes_are_refused_with_an_estimate(tmp_path, capsys, over, message, monkeypatch):
    monkeypatch.setenv("WORKBENCH_MEMORY_BUDGET_GB", "8")
    assert train_cli(tmp_path, ce_cfg(**over), tmp_path / "run") == 2
    err = capsys.readouterr().err
    assert message in err and "budget is 8.0 GiB" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    "command",
    [
        ["eval", "--lengths", "64", "--depths", "2", "--samples", "1"],
        ["probe", "--windows", "4", "--seq-len", "16", "--no-scores"],
        ["updates", "--no-states"],
    ],
)
def test_unwritable_store_is_refused_before_any_model_runs(tmp_path, capsys, monkeypatch, command):
    monkeypatch.chdir(ROOT)
    ck = tmp_path / "ck"
    assert cli_main(["model", PRESET, "--out", str(ck)]) == 0
    capsys.readouterr()
    real_write, store = os.write, tmp_path / "ro.zarr"

    def read_only(fd, data):
        if os.readlink(f"/proc/self/fd/{fd}").startswith(str(store)):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS))
        return real_write(fd, data)

    monkeypatch.setattr(writable.os, "write", read_only)
    if command[0] == "updates":  # two checkpoints to compare
        assert cli_main(["model", PRESET, "--out", str(tmp_path / "ck2"), "--seed", "1"]) == 0
        capsys.readouterr()
    args = [command[0], str(ck)] + ([str(tmp_path / "ck2")] if command[0] == "updates" else []) + command[1:]
    assert cli_main(args + ["--out", str(store)]) == 2
    err = capsys.readouterr().err
    # the probe's words: refused before the evaluation / the probes ran, not when their results were saved
    assert "cannot write this directory (read-only file system)" in err and str(store) in err
    assert not store.exists()


def test_init_from_a_model_other_than_the_config_describes_is_refused(tmp_path, capsys):
    start = tmp_path / "start"
    checkpoint_io.save_checkpoint(models.build_model(config.ModelConfig(**STUDENT)), start)
    wider = dict(STUDENT, hidden_size=64, intermediate_size=128)
    assert train_cli(tmp_path, ce_cfg(model=wider, init_from=str(start)), tmp_path / "run") == 2
    err = capsys.readouterr().err
    assert "not the model the config's model section describes (hidden_size 32 vs 64, intermediate_size" in err
    assert not (tmp_path / "run").exists()
    assert (
        train_cli(
            tmp_path, ce_cfg(init_from=str(start), phases=[dict(ce_cfg()["phases"][0], steps=1)]), tmp_path / "ok"
        )
        == 0
    )


def test_a_start_killed_before_its_first_record_is_still_a_run_directory(tmp_path, monkeypatch, capsys):
    """Killed in its first step (or while tokenising): run.yaml, tensorboard/ and the pair tracker's phase start
    are there but no metrics.jsonl; a new start and --resume both go ahead (they were refused as foreign)."""
    from workbench.train import trainer

    cfg = ce_cfg(track_every=1, logging={"tensorboard": True})
    out = tmp_path / "run"
    step = trainer.train_step

    def killed(*a, **kw):
        raise KeyboardInterrupt

    monkeypatch.setattr(trainer, "train_step", killed)
    with pytest.raises(KeyboardInterrupt):
        train(config.from_dict(config.RunConfig, cfg), out=str(out), progress=False)
    monkeypatch.setattr(trainer, "train_step", step)
    assert {"run.yaml", "tensorboard", "pair_updates.start.pt"} <= {p.name for p in out.iterdir()}
    assert not (out / "metrics.jsonl").exists()
    assert train_cli(tmp_path, cfg, out, "--resume") == 0, capsys.readouterr().err
    assert [json.loads(x)["step"] for x in (out / "metrics.jsonl").read_text().splitlines()] == [1, 2]


def test_symlinked_lock_or_out_and_a_file_as_out_are_refused_untouched(tmp_path, capsys):
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    out = tmp_path / "run"
    out.mkdir()
    (out / "run.lock").symlink_to(victim)
    assert train_cli(tmp_path, ce_cfg(), out) == 2
    assert "run.lock: is not a plain file" in capsys.readouterr().err
    assert victim.read_text() == "precious"
    (tmp_path / "link").symlink_to(tmp_path / "elsewhere", target_is_directory=True)
    assert train_cli(tmp_path, ce_cfg(), tmp_path / "link") == 2
    assert "is a symlink, not a run directory" in capsys.readouterr().err
    assert train_cli(tmp_path, ce_cfg(), victim) == 2
    assert "is a file, not a run directory" in capsys.readouterr().err and victim.read_text() == "precious"


def test_lock_held_by_another_process_then_its_death(tmp_path, capsys):
    import subprocess
    import sys

    out = tmp_path / "run"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from workbench.runlock import RunLock; "
            f"RunLock({str(out)!r}).acquire(); print('held', flush=True); time.sleep(60)",
        ],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        assert train_cli(tmp_path, ce_cfg(), out) == 2
        err = capsys.readouterr().err
        assert f"pid {holder.pid}" in err and len(err.strip().splitlines()) == 1
    finally:
        holder.kill()
        holder.wait()
    with pytest.warns(UserWarning, match=f"taking over the lock of pid {holder.pid}"):
        assert train_cli(tmp_path, ce_cfg(phases=_phase(steps=1)), out) == 0


def test_memory_check_counts_the_dense_mask_only_where_the_step_uses_it(monkeypatch):
    """A document-masked 64k window: on CPU the student's step backpropagates through the dense [B, 1, T, T] mask
    (16 GiB) and is refused; on CUDA it runs under FlexAttention (no T x T tensor), so the same budget holds."""

    monkeypatch.setenv("WORKBENCH_MEMORY_BUDGET_GB", "8")
    cfg = config.from_dict(
        config.RunConfig,
        ce_cfg(
            model=dict(STUDENT, max_position_embeddings=65536),
            data={
                "kind": "synthetic-short",
                "doc_len_min": 16,
                "doc_len_max": 32,
                "packing": {"attention": "document"},
            },
            optim={"micro_batch_size": 1},
            phases=[{"name": "a", "steps": 1, "seq_len": 65536, "rope_theta": 100, "lr": 1e-3}],
        ),
    )
    with pytest.raises(config.ConfigError, match="phases\\[0\\]"):
        rundir.check_memory(cfg, 1, "cpu")
    rundir.check_memory(cfg, 1, "cuda")  # flex: only the model's own step is counted


def test_pruning_leaves_a_symlinked_checkpoint_and_its_target_alone(tmp_path):
    from workbench.train import state

    run = tmp_path / "run"
    run.mkdir()
    elsewhere = tmp_path / "elsewhere"
    model = models.build_model(config.ModelConfig(**STUDENT))
    checkpoint_io.save_checkpoint(model, elsewhere, {"step": 1})
    (run / "ckpt-000001").symlink_to(elsewhere, target_is_directory=True)  # a user's link, not the trainer's
    for step in (2, 3):
        checkpoint_io.save_checkpoint(model, run / f"ckpt-{step:06d}", {"step": step})
    assert [p.name for p in state.prune(run, keep_last=1)] == ["ckpt-000002"]  # it raised on the link before
    assert (run / "ckpt-000001").is_symlink() and (elsewhere / checkpoint_io.MANIFEST).is_file()


def test_a_prune_killed_part_way_leaves_no_half_checkpoint(tmp_path, monkeypatch):
    """kill -9 during pruning left a ckpt-* with some files and no manifest, for ever; now the doomed checkpoint
    is renamed to a .old-* leftover first, which the next start removes under the lock."""
    import shutil

    from workbench.train import state

    run = tmp_path / "run"
    model = models.build_model(config.ModelConfig(**STUDENT))
    for step in (1, 2):
        checkpoint_io.save_checkpoint(model, run / f"ckpt-{step:06d}", {"step": step})

    def killed(path, *a, **kw):
        raise KeyboardInterrupt

    monkeypatch.setattr(shutil, "rmtree", killed)
    with pytest.raises(KeyboardInterrupt):
        state.prune(run, keep_last=1)
    monkeypatch.undo()
    names = sorted(p.name for p in run.iterdir())
    assert names[1:] == ["ckpt-000002"] and names[0].startswith(".old-ckpt-000001-")
    assert rundir.LEFTOVER.match(names[0])
    rundir.clean_leftovers(run)
    assert [p.name for p in run.iterdir()] == ["ckpt-000002"]


def test_memory_check_counts_the_teacher_of_kd_phases(tmp_path, monkeypatch):
    """A 7B-shaped teacher beside a tiny student: its weights (13 GiB in bf16) were left out of the estimate."""
    from transformers import LlamaConfig

    big = tmp_path / "teacher"
    LlamaConfig(
        vocab_size=128, hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32
    ).save_pretrained(big)  # config.json only: the check reads no weights
    monkeypatch.setenv("WORKBENCH_MEMORY_BUDGET_GB", "4")
    phases = [dict(ce_cfg()["phases"][0], objective="ce"), dict(ce_cfg()["phases"][0], name="b", objective="kd")]
    cfg = config.from_dict(config.RunConfig, ce_cfg(teacher={"path": str(big)}, phases=phases))
    with pytest.raises(config.ConfigError, match="phases\\[0\\] \\(a\\).*GiB.*teacher.cache"):
        rundir.check_memory(cfg, 1, "cpu")  # the teacher is loaded for the run: the CE phase before it holds it too
    cfg.phases = cfg.phases[:1]  # a run without a KD phase loads no teacher
    rundir.check_memory(cfg, 1, "cpu")


def test_memory_estimate_counts_the_reset_teachers_dense_mask_where_flex_cannot_run(tmp_path):
    """``teacher.positions: reset`` masks every document for the teacher: on CPU below flex's window that is a
    second dense [B, 1, T, T] mask (fp32, the hidden states' dtype) beside the student's; on CUDA, flex: none."""
    import torch
    from transformers import LlamaConfig

    from workbench import attention

    teacher = tmp_path / "teacher"
    LlamaConfig(
        vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2
    ).save_pretrained(teacher)  # config.json only
    phases = [dict(ce_cfg()["phases"][0], objective="kd")]
    seq = phases[0]["seq_len"]
    same, reset = (
        config.from_dict(config.RunConfig, ce_cfg(teacher={"path": str(teacher), "positions": p}, phases=phases))
        for p in ("same", "reset")
    )
    assert seq < attention.CPU_FLEX_MIN_TOKENS  # dense on CPU
    cpu = [rundir.phase_memory(c, 1, "cpu")[0].mask for c in (same, reset)]
    assert cpu[1] - cpu[0] == attention.dense_mask_bytes(same.optim.micro_batch_size, seq, torch.float32)
    assert rundir.phase_memory(reset, 1, "cuda")[0].mask == 0


def test_heartbeat_overwrites_the_lock_record_in_place(tmp_path, monkeypatch):
    """Each heartbeat is one fixed-width write over the record, so a reader never finds the file empty mid-run
    (a truncate-then-write would show another host 'no holder' between the two)."""
    from workbench import runlock

    lock = runlock.RunLock(tmp_path).acquire()
    try:
        first = runlock.holder(tmp_path)
        assert (tmp_path / "run.lock").stat().st_size == runlock.RECORD_BYTES and first["pid"] == os.getpid()
        monkeypatch.setattr(runlock, "BEAT_EVERY", 0.0)
        truncations = []
        monkeypatch.setattr(runlock.os, "ftruncate", lambda *a: truncations.append(a))
        lock.beat()
        again = runlock.holder(tmp_path)
        assert again["beat"] >= first["beat"] and again["since"] == first["since"] and not truncations
    finally:
        monkeypatch.undo()
        lock.release()
    assert (tmp_path / "run.lock").read_text() == ""
