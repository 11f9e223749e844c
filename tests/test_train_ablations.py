"""Training-time ablations: position-invariant teacher targets and frozen RoPE-pair rows."""

from __future__ import annotations

import dataclasses

import numpy as np
import torch

from workbench import checkpoint_io, config, models, rope
from workbench.data import attention_mask, reset_positions
from workbench.runs import RunDir
from workbench.train import train

STUDENT = {
    "vocab_size": 128,
    "hidden_size": 64,
    "num_layers": 2,
    "num_heads": 4,
    "num_kv_heads": 2,
    "head_dim": 16,
    "intermediate_size": 128,
    "max_position_embeddings": 512,
    "rope_theta": 500.0,
}


def test_reset_positions_restart_per_document():
    doc_ids = torch.tensor([[0, 0, 0, 1, 1, 2, 2, 2, 2], [5, 5, 5, 5, 5, 5, 6, 6, 6]])
    assert reset_positions(doc_ids).tolist() == [[0, 1, 2, 0, 1, 0, 1, 2, 3], [0, 1, 2, 3, 4, 5, 0, 1, 2]]


@torch.no_grad()
def test_reset_teacher_sees_each_document_as_if_alone():
    """The teacher's view under positions='reset' equals running every document on its own (transformers)."""
    model = models.build_model(config.ModelConfig(**STUDENT), seed=0)
    doc_ids = torch.tensor([[0] * 40 + [1] * 25 + [2] * 35])
    ids = torch.randint(0, 128, doc_ids.shape, generator=torch.Generator().manual_seed(1))
    packed = model(
        ids, position_ids=reset_positions(doc_ids), attention_mask=attention_mask(doc_ids, "document", torch.float32)
    ).logits
    start = 0
    for n in (40, 25, 35):
        alone = model(ids[:, start : start + n], position_ids=torch.arange(n)[None]).logits
        torch.testing.assert_close(packed[:, start : start + n], alone, atol=1e-5, rtol=0)
        start += n


def _run_cfg(tmp_path, **phase2):
    teacher = checkpoint_io.save_checkpoint(
        models.build_model(config.ModelConfig(**STUDENT), seed=9), tmp_path / "teacher", {}
    )
    return config.from_dict(
        config.RunConfig,
        {
            "name": "abl",
            "model": STUDENT,
            "teacher": {"path": str(teacher), "positions": "reset"},
            "data": {"kind": "synthetic-short", "doc_len_min": 32, "doc_len_max": 64},
            "optim": {"micro_batch_size": 2},
            "checkpoint": {"every": 0},
            "phases": [
                {"name": "short", "steps": 3, "seq_len": 128, "rope_theta": 500, "lr": 3e-3, "objective": "kd"},
                {
                    "name": "long",
                    "steps": 3,
                    "seq_len": 256,
                    "rope_theta": 10000,
                    "lr": 3e-3,
                    "objective": "kd",
                    **phase2,
                },
            ],
        },
    )


def test_frozen_band_rows_do_not_move_during_the_phase(tmp_path):
    cfg = _run_cfg(tmp_path, freeze_wavelengths=[300.0, float("inf")])
    run = train(cfg, out=str(tmp_path / "run"), progress=False)
    ends = [p for p in RunDir(run).checkpoints() if checkpoint_io.read_manifest(p)["phase_end"]]
    (a, _), (b, _) = checkpoint_io.load(ends[0]), checkpoint_io.load(ends[1])
    frozen = rope.pairs_in_wavelengths(10000.0, 16, 300.0, float("inf"))
    assert 0 < len(frozen) < 8 and (rope.wavelengths(10000.0, 16)[frozen] >= 300).all()
    moving = np.setdiff1d(np.arange(8), frozen)
    for la, lb in zip(a.model.layers, b.model.layers):
        for proj in ("q_proj", "k_proj"):
            wa = getattr(la.self_attn, proj).weight.view(-1, 16, 64)
            wb = getattr(lb.self_attn, proj).weight.view(-1, 16, 64)
            for rows in (frozen, frozen + 8):
                assert torch.equal(wa[:, rows], wb[:, rows])
            assert not torch.equal(wa[:, moving], wb[:, moving])


def test_bad_freeze_band_is_refused(tmp_path):
    import pytest

    with pytest.raises(config.ConfigError, match=r"phases\[1\]\.freeze_wavelengths"):
        _run_cfg(tmp_path, freeze_wavelengths=[500.0, 100.0])
    cfg = _run_cfg(tmp_path / "x", freeze_wavelengths=[1.0, 2.0])
    assert dataclasses.replace(cfg).teacher.positions == "reset"
