"""The run directory (workbench.runs.RunDir): its layout, checkpoints, phase ends, the latest checkpoint, metrics."""

from __future__ import annotations

import json
import shutil

import yaml

from workbench import checkpoint_io, runs
from workbench.runs import RunDir


def _checkpoint(run, saved_checkpoint, step: int, phase_end: bool = False, state: bool = True):
    """A copy of a saved checkpoint as ``ckpt-<step>`` with the manifest's step and phase_end set."""
    path = run.checkpoint_path(step)
    shutil.copytree(saved_checkpoint, path)
    manifest = checkpoint_io.read_manifest(path)
    (path / checkpoint_io.MANIFEST).write_text(json.dumps({**manifest, "step": step, "phase_end": phase_end}))
    if state:
        (path / checkpoint_io.STATE_DIR).mkdir()
        (path / checkpoint_io.STATE_DIR / checkpoint_io.STATE_FILE).write_bytes(b"")
    return path


def test_names_and_what_counts_as_a_run(tmp_path):
    run = RunDir(tmp_path / "r")
    assert run.checkpoint_path(40).name == "ckpt-000040" and runs.step_of(run.checkpoint_path(40)) == 40
    assert runs.step_of(tmp_path / "ckpt-x") is None and runs.is_checkpoint_name("ckpt-1")
    assert not run.is_run() and not run.has_progress()
    run.path.mkdir()
    run.config_path.write_text(yaml.safe_dump({"name": "r", "seed": 1}))
    assert run.is_run() and not run.has_progress()  # a config alone: started, no training yet
    assert run.config() == {"name": "r", "seed": 1}
    run.metrics_path.write_text("")
    assert run.has_progress()
    assert RunDir.of_checkpoint(run.checkpoint_path(1)) == RunDir(run.path.resolve())
    assert RunDir.of_checkpoint(tmp_path / "teacher" / "tiny") is None


def test_checkpoints_phase_ends_incomplete_and_latest(tmp_path, saved_checkpoint):
    run = RunDir(tmp_path / "r")
    _checkpoint(run, saved_checkpoint, 10, phase_end=True)
    _checkpoint(run, saved_checkpoint, 20, state=False)
    _checkpoint(run, saved_checkpoint, 30)
    (run.checkpoint_path(40)).mkdir()  # a save that never wrote its manifest
    assert [p.name for p in run.checkpoint_dirs()] == ["ckpt-000010", "ckpt-000020", "ckpt-000030", "ckpt-000040"]
    assert [p.name for p in run.checkpoints()] == ["ckpt-000010", "ckpt-000020", "ckpt-000030"]
    assert [p.name for p in run.phase_ends()] == ["ckpt-000010"]
    assert run.incomplete() == ["ckpt-000040"]
    assert run.latest_checkpoint().name == "ckpt-000030"
    (run.checkpoint_path(30) / checkpoint_io.WEIGHTS).write_bytes(b"short")  # sizes no longer match
    assert run.latest_checkpoint().name == "ckpt-000020"
    assert run.latest_checkpoint(resumable=True).name == "ckpt-000010"  # 20 has no trainer state


def test_metrics_records_skip_and_count_malformed_lines(tmp_path):
    run = RunDir(tmp_path)
    run.metrics_path.write_text(
        '{"kind": "train", "step": 1, "loss": 1.0}\nnot json\n{"kind": "train", "step": -1}\n'
        '{"kind": "eval", "step": 2, "accuracy": 0.5}\n{"kind": "train", "st'
    )
    first = run.metrics()
    assert [r["step"] for r in first.records] == [1, 2] and first.bad_lines == 2 and first.partial_line
    with open(run.metrics_path, "a") as f:
        f.write('ep": 3, "loss": 0.5}\n')
    second = run.metrics(first)  # only the appended bytes are parsed
    assert [r["step"] for r in second.records] == [1, 2, 3] and not second.partial_line
    assert run.metrics(second) is second  # nothing new
