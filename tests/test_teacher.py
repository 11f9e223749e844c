"""The shipped tiny teacher: it loads, it retrieves within its window, and its regeneration command runs."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from workbench import checkpoint_io, models
from workbench.config import load_run_config
from workbench.evals import quick_eval
from workbench.runs import RunDir

ROOT = Path(__file__).resolve().parents[1]
TEACHER = ROOT / "data" / "teacher" / "tiny-teacher"
CONFIG = ROOT / "data" / "configs" / "tiny-teacher.yaml"


@pytest.fixture(scope="module")
def teacher():
    return checkpoint_io.load(TEACHER)


def test_shipped_teacher_is_a_small_complete_checkpoint_of_its_config(teacher):
    model, manifest = teacher
    checkpoint_io.verify_checkpoint(TEACHER, full_hash=True)
    assert sum(f.stat().st_size for f in TEACHER.rglob("*") if f.is_file()) < 5e6
    cfg = load_run_config(CONFIG)
    assert models.model_config_of(model).hidden_size == cfg.model.hidden_size
    assert manifest["run"] == cfg.name and manifest["seq_len"] == cfg.phases[-1].seq_len
    assert manifest["rope_theta"] == models.rope_theta(model) == cfg.phases[-1].rope_theta
    assert manifest["objective"] == "ce" and manifest["phase"] == cfg.phases[-1].name


def test_shipped_teacher_retrieves_within_its_window(teacher):
    """NIAH (one key-value needle) >= 0.9 at the training length, the bar of issue 8 ("passkey/NIAH").

    The 5-digit passkey is harder for this 0.6 M-parameter model: measured 0.66 at 1024 tokens (1.0 on its
    first digit), so it is held to >= 0.5 here, far above chance (1e-5); see README "Tiny teacher".
    """
    model, _ = teacher
    length = load_run_config(CONFIG).phases[-1].seq_len
    # the project's own evaluation (greedy decoding, exact match) on 32 fresh seeded prompts per task,
    # needle depths spread over the whole window; the seed is one the training stream never used
    rows = {
        r["task"]: r["accuracy"]
        for r in quick_eval(model, lengths=[length], samples=32, seed=20260417, tasks=["niah", "passkey"], batch_size=8)
    }
    assert rows["niah"] >= 0.9, f"NIAH accuracy {rows['niah']:.2f} at {length} tokens"
    assert rows["passkey"] >= 0.5, f"passkey accuracy {rows['passkey']:.2f} at {length} tokens"


def small_copy(config: Path, tmp_path: Path, **overrides) -> Path:
    """The config with 1 step per phase and micro-batch 2 (everything else as shipped)."""
    raw = yaml.safe_load(config.read_text())
    raw["model"] = str((config.parent / raw["model"]).resolve())
    for phase in raw["phases"]:
        phase["steps"] = 1
    raw["optim"]["micro_batch_size"] = 2
    raw.update(eval_every=0, **overrides)
    small = tmp_path / config.name
    small.write_text(yaml.safe_dump(raw))
    return small


def test_regeneration_command_starts_and_trains(tmp_path):
    from workbench.cli import main

    out = tmp_path / "run"
    assert main(["train", str(small_copy(CONFIG, tmp_path)), "--out", str(out), "--no-progress"]) == 0
    ckpts = RunDir(out).checkpoints()
    phases = load_run_config(CONFIG).phases
    assert len(ckpts) == len(phases)  # one phase-end checkpoint per curriculum stage
    last = checkpoint_io.read_manifest(ckpts[-1])
    assert last["phase"] == phases[-1].name and last["step"] == len(phases) and last["objective"] == "ce"
    assert (out / "metrics.jsonl").read_text().strip()
