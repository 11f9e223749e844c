"""The tiny Llama shape the training tests share (one decoder block, two heads, head_dim 16): trains a step in
well under a second on 2 cores. Each file overrides what it needs (``tiny_student(num_layers=2)``)."""

from __future__ import annotations

from typing import Any

TINY_STUDENT: dict[str, Any] = dict(
    vocab_size=128,
    hidden_size=32,
    num_layers=1,
    num_heads=2,
    num_kv_heads=1,
    head_dim=16,
    intermediate_size=64,
    max_position_embeddings=512,
    rope_theta=100.0,
)


def tiny_student(**over: Any) -> dict[str, Any]:
    """A fresh copy of the tiny shape with ``over`` applied (a model section for a run config or ModelConfig)."""
    return {**TINY_STUDENT, **over}
