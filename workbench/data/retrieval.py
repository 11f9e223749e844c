"""Held-out retrieval probes in the language: passkey and key-value prompts, and a greedy scorer.

Used to measure the teacher while it trains (loss alone does not show retrieval). One prompt is a
haystack of filler with the needle at a chosen depth, then the query and its answer; the prompt has
exactly ``length`` tokens including the answer. Scoring is teacher-forced argmax over the answer tokens:
all of them right is the same event as greedy decoding producing the whole answer.
"""

from __future__ import annotations

import numpy as np
import torch

from workbench.data import synthetic as syn

Sample = tuple[np.ndarray, int]  # (ids [length], index of the first answer token)


def passkey_sample(rng: np.random.Generator, length: int, depth: float) -> Sample:
    """``filler PASS d d d d d filler ASK PASS d d d d d`` with the needle at ``depth`` in [0, 1]."""
    digits = rng.choice(syn.DIGITS, size=syn.PASSKEY_DIGITS)
    return _sample(rng, length, depth, np.r_[syn.PASS, digits], np.r_[syn.ASK, syn.PASS], digits)


def kv_sample(rng: np.random.Generator, length: int, depth: float, num_pairs: int = 4) -> Sample:
    """``num_pairs`` facts ``SET k v`` in filler, one queried ``ASK k v``; the queried one sits at ``depth``."""
    keys = rng.choice(syn.KEYS, size=num_pairs, replace=False)
    values = rng.choice(syn.VALUES, size=num_pairs)
    ids, answer_at = _sample(rng, length, depth, np.r_[syn.SET, keys[0], values[0]], np.r_[syn.ASK, keys[0]],
                             values[:1])
    # distractors at random depths inside the haystack (never over the needle or the query)
    needle_at = int(np.flatnonzero(ids == syn.SET)[0])
    free = [p for p in range(answer_at - 2 - 3) if abs(p - needle_at) >= 3]
    taken: list[int] = []
    for k, v in zip(keys[1:], values[1:]):
        choices = [p for p in free if all(abs(p - q) >= 3 for q in taken)]
        if not choices:
            break
        p = int(rng.choice(choices))
        taken.append(p)
        ids[p:p + 3] = (syn.SET, k, v)
    return ids, answer_at


def _sample(rng, length, depth, needle, query, answer) -> Sample:
    n_fill = length - len(needle) - len(query) - len(answer)
    if n_fill < 0:
        raise ValueError(f"length {length} is too short for a retrieval prompt")
    if not 0.0 <= depth <= 1.0:
        raise ValueError(f"depth must be in [0, 1], got {depth}")
    before = round(depth * n_fill)
    ids = np.concatenate([syn.filler(rng, before), needle, syn.filler(rng, n_fill - before), query, answer])
    return ids.astype(np.int64), length - len(answer)


@torch.no_grad()
def answer_hits(model, samples: list[Sample], batch_size: int = 8) -> list[np.ndarray]:
    """Per sample, which answer tokens the model's argmax gets right (teacher-forced)."""
    if not samples:
        raise ValueError("no samples to score")
    hits = []
    device = next(model.parameters()).device
    for i in range(0, len(samples), batch_size):
        chunk = samples[i:i + batch_size]
        ids = torch.as_tensor(np.stack([s[0] for s in chunk]), device=device)
        pos = torch.arange(ids.shape[1], device=device).expand_as(ids)
        pred = model(input_ids=ids, position_ids=pos).logits.argmax(-1).cpu().numpy()
        for row, (sample_ids, start) in enumerate(chunk):
            hits.append(pred[row, start - 1:len(sample_ids) - 1] == sample_ids[start:])
    return hits


def accuracy(model, samples: list[Sample], batch_size: int = 8) -> float:
    """Fraction of samples whose whole answer the model gets right (teacher-forced argmax == greedy)."""
    return float(np.mean([h.all() for h in answer_hits(model, samples, batch_size)]))


def token_accuracy(model, samples: list[Sample], batch_size: int = 8) -> float:
    """Fraction of answer tokens right (partial credit; shows progress before whole answers are right)."""
    return float(np.mean(np.concatenate(answer_hits(model, samples, batch_size))))


def passkey_accuracy(model, length: int, n: int = 32, seed: int = 0, batch_size: int = 8) -> float:
    """Greedy passkey accuracy at ``length`` over ``n`` seeded prompts, depths spread evenly over [0, 1]."""
    rng = np.random.default_rng([seed, length])
    depths = np.linspace(0.0, 1.0, n)
    return accuracy(model, [passkey_sample(rng, length, float(d)) for d in depths], batch_size)


def kv_accuracy(model, length: int, n: int = 32, seed: int = 0, num_pairs: int = 4, batch_size: int = 8) -> float:
    """Greedy key-value accuracy at ``length`` with ``num_pairs`` facts (one queried)."""
    rng = np.random.default_rng([seed, length, num_pairs])
    depths = np.linspace(0.0, 1.0, n)
    return accuracy(model, [kv_sample(rng, length, float(d), num_pairs) for d in depths], batch_size)
