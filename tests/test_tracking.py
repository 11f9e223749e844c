"""Experiment tracking (workbench.train.tracking): TensorBoard event files beside metrics.jsonl, same numbers."""

from __future__ import annotations

import json

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tiny import tiny_student

from workbench import config
from workbench.train import train
from workbench.train.tracking import scalars

STUDENT = tiny_student()


def _cfg(**over) -> config.RunConfig:
    d = {
        "name": "tb",
        "model": dict(STUDENT),
        "seed": 1,
        "data": {"kind": "synthetic-short", "doc_len_min": 16, "doc_len_max": 48},
        "optim": {"micro_batch_size": 2},
        "checkpoint": {"every": 0, "keep_last": 1},
        "phases": [
            {"name": "a", "steps": 3, "seq_len": 64, "rope_theta": 100, "lr": 3e-3},
            {"name": "b", "steps": 2, "seq_len": 64, "rope_theta": 1000, "lr": 1e-3},
        ],
        **over,
    }
    return config.from_dict(config.RunConfig, d)


def test_tensorboard_event_files_hold_the_same_losses_as_metrics_jsonl(tmp_path):
    run = train(_cfg(), out=str(tmp_path / "run"), progress=False)
    recs = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    train_recs = [r for r in recs if r["kind"] == "train"]
    ea = EventAccumulator(str(run / "tensorboard"), size_guidance={"scalars": 0})
    ea.Reload()
    tags = set(ea.Tags()["scalars"])
    for key in ("loss", "ce", "kd", "lr", "rope_theta", "tokens_per_s", "peak_mem_mb", "grad_norm"):
        assert f"train/{key}" in tags, key
    assert any(t.startswith("train/loss_by_bucket/") for t in tags)
    events = ea.Scalars("train/loss")
    assert [e.step for e in events] == [r["step"] for r in train_recs] == [1, 2, 3, 4, 5]
    assert [e.value for e in events] == pytest.approx([r["loss"] for r in train_recs], rel=1e-6)  # float32 in TB
    thetas = [e.value for e in ea.Scalars("train/rope_theta")]
    assert thetas == [100, 100, 100, 1000, 1000]


def test_tensorboard_off_and_eval_tags():
    cfg = _cfg(logging={"tensorboard": False})
    assert cfg.logging.tensorboard is False and cfg.logging.wandb is None
    assert config.config_hash(_cfg()) == config.config_hash(_cfg(logging={"tensorboard": True}))
    row = {
        "kind": "eval",
        "step": 4,
        "phase": "b",
        "rope_theta": 1000.0,
        "task": "passkey",
        "length": 256,
        "accuracy": 0.5,
        "answer_logprob": -1.25,
    }
    assert scalars(row) == {
        "eval/passkey/256/rope_theta": 1000.0,
        "eval/passkey/256/accuracy": 0.5,
        "eval/passkey/256/answer_logprob": -1.25,
    }
    wb = _cfg(logging={"wandb": {"project": "p"}})
    assert wb.logging.wandb.mode == "offline"
