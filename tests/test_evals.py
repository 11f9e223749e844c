"""Retrieval evaluation: exact lengths and depths, determinism, RULER scoring, batched greedy decoding,
the ``workbench eval`` command and its store."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from workbench.config import ModelConfig
from workbench.data import tokenizer as syn
from workbench.evals import TASKS, SyntheticRendering, make_sample, quick_eval

TINY = ModelConfig(vocab_size=128, hidden_size=32, num_layers=1, num_heads=2, num_kv_heads=1, head_dim=16,
                   intermediate_size=64, max_position_embeddings=512, rope_theta=500.0)


@pytest.fixture(scope="module")
def tiny_model():
    from workbench.models import build_model

    return build_model(TINY, seed=0)


def test_quick_eval_rows(tiny_model):
    rows = quick_eval(tiny_model, lengths=[64, 96], samples=4, tasks=("passkey", "niah"))
    assert [(r["task"], r["length"]) for r in rows] == [("passkey", 64), ("passkey", 96), ("niah", 64), ("niah", 96)]
    for r in rows:
        assert set(r) == {"task", "length", "accuracy", "answer_logprob"}
        assert 0.0 <= r["accuracy"] <= 1.0 and r["answer_logprob"] < 0
    assert rows == quick_eval(tiny_model, lengths=[64, 96], samples=4, tasks=("passkey", "niah"))
