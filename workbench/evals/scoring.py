"""Scores of retrieval outputs: greedy exact match, RULER's ``string_match_all`` / ``string_match_part``,
and the teacher-forced log-probability of the gold answer.

RULER (NVIDIA, ``scripts/eval/synthetic/constants.py``) scores a prediction against its list of
references with a case-insensitive *substring* test: ``string_match_all`` is the fraction of references
found (niah_*, vt), ``string_match_part`` is 1 if any reference is found (qa); both are averaged over
samples and reported in percent rounded to 2 decimals. Predictions are first cleaned as RULER's
``postprocess_pred`` does (control characters removed, whitespace stripped).

For the synthetic vocabulary a substring test would let ``v1`` match inside ``v12``, so
``word_boundary=True`` tests whole space-separated tokens instead (the same test, on token boundaries).
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np
import torch

_CONTROL = re.compile(r"[\x00-\x1f]")


def postprocess_pred(pred: str) -> str:
    """RULER's prediction cleaning: drop control characters, strip whitespace."""
    return _CONTROL.sub("", pred.strip()).strip()


def _found(ref: str, pred: str, word_boundary: bool) -> bool:
    ref, pred = ref.lower(), pred.lower()
    if word_boundary:
        return f" {' '.join(ref.split())} " in f" {' '.join(pred.split())} "
    return ref in pred


def match_all(pred: str, refs: Sequence[str], *, word_boundary: bool = False) -> float:
    """One sample's ``string_match_all``: the fraction (0-1) of references found in the prediction."""
    if not refs:
        raise ValueError("a sample needs at least one reference")
    pred = postprocess_pred(pred)
    return sum(_found(r, pred, word_boundary) for r in refs) / len(refs)


def match_part(pred: str, refs: Sequence[str], *, word_boundary: bool = False) -> float:
    """One sample's ``string_match_part``: 1.0 if any reference is found in the prediction, else 0.0."""
    if not refs:
        raise ValueError("a sample needs at least one reference")
    pred = postprocess_pred(pred)
    return float(any(_found(r, pred, word_boundary) for r in refs))


def string_match_all(preds: Sequence[str], refs: Sequence[Sequence[str]], *, word_boundary: bool = False) -> float:
    """RULER's corpus-level ``string_match_all`` in percent, rounded to 2 decimals."""
    _check(preds, refs)
    return round(sum(match_all(p, r, word_boundary=word_boundary) for p, r in zip(preds, refs)) / len(preds) * 100, 2)


def string_match_part(preds: Sequence[str], refs: Sequence[Sequence[str]], *, word_boundary: bool = False) -> float:
    """RULER's corpus-level ``string_match_part`` in percent, rounded to 2 decimals."""
    _check(preds, refs)
    return round(sum(match_part(p, r, word_boundary=word_boundary) for p, r in zip(preds, refs)) / len(preds) * 100, 2)


def _check(preds: Sequence[str], refs: Sequence[Sequence[str]]) -> None:
    if not preds:
        raise ValueError("no predictions to score")
    if len(preds) != len(refs):
        raise ValueError(f"{len(preds)} predictions but {len(refs)} reference lists")


def exact_match(generated: Sequence[int], gold: Sequence[int]) -> bool:
    """Greedy exact match: the first ``len(gold)`` generated ids are the gold answer ids."""
    gen = np.asarray(generated)[: len(gold)]
    return len(gen) == len(gold) and bool(np.array_equal(gen, np.asarray(gold)))


def answer_logprob(logits: torch.Tensor, gold: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Teacher-forced log p(gold answer | prompt), summed over answer tokens.

    ``logits`` [batch, answer, vocab] are the predictions *for* each answer token (position t predicts
    gold[:, t]); ``mask`` [batch, answer] marks real (not padding) answer tokens. Returns [batch] float32.
    """
    logp = torch.log_softmax(logits.float(), dim=-1)
    token_lp = logp.gather(-1, gold.unsqueeze(-1)).squeeze(-1)
    return (token_lp * mask).sum(-1)
