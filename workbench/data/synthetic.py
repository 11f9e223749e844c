"""Synthetic documents in THE LANGUAGE of ``workbench.data.tokenizer``.

A document is a ``Doc``: token ids plus a boolean ``target`` mask saying which tokens carry a loss (HF
convention: ``target[t]`` means "predict ``ids[t]`` from ``ids[:t]``"). Every document is built from items
placed in random filler:

- needles: ``PASS d d d d d`` (passkey) and ``SET k v`` (key-value fact, distinct keys per document);
- queries: ``ASK PASS d d d d d`` and ``ASK k v``; each query comes after its needle, at a random distance,
  and several queries per needle give dense supervision;
- echoes (optional): a stretch of filler that recurs later in the same document. Still plain haystack,
  but every recurring token is predictable by copying: dense practice for the induction (match-and-copy)
  circuit that both queries need, which a tiny model otherwise forms slowly.

Queries only ever refer to needles of the same document, so no target depends on anything before the
document's first token (packed student data is built from :func:`document` and relies on this).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from workbench.data.tokenizer import VOCAB

Supervise = Literal["all", "answers"]

PASS, SET, ASK = VOCAB.marker["PASS"], VOCAB.marker["SET"], VOCAB.marker["ASK"]
PASSKEY_DIGITS = 5
FILLER = np.array(VOCAB.filler, dtype=np.int64)
DIGITS = np.array(VOCAB.digits, dtype=np.int64)
KEYS = np.array(VOCAB.keys, dtype=np.int64)
VALUES = np.array(VOCAB.values, dtype=np.int64)


@dataclass
class Doc:
    """One document: ids [n] int64 and target [n] bool (which tokens are predicted with a loss)."""

    ids: np.ndarray
    target: np.ndarray

    def __len__(self) -> int:
        return len(self.ids)


def filler(rng: np.random.Generator, n: int) -> np.ndarray:
    return rng.choice(FILLER, size=n)


def _needles(
    rng: np.random.Generator, num_pairs: int, passkey: bool, echoes: int = 0, echo_len: tuple[int, int] = (8, 16)
):
    """(needle tokens, query tokens, answer length) for each fact of one document (echoes last)."""
    facts = []
    if passkey:
        digits = rng.choice(DIGITS, size=PASSKEY_DIGITS)
        facts.append((np.r_[PASS, digits], np.r_[ASK, PASS, digits], PASSKEY_DIGITS))
    num_pairs = min(num_pairs, len(KEYS))
    for k, v in zip(rng.choice(KEYS, size=num_pairs, replace=False), rng.choice(VALUES, size=num_pairs)):
        facts.append((np.array([SET, k, v]), np.array([ASK, k, v]), 1))
    for _ in range(echoes):
        span = filler(rng, int(rng.integers(echo_len[0], echo_len[1] + 1)))
        facts.append((span, span, len(span) - 1))
    return facts


def document(
    rng: np.random.Generator,
    length: int,
    *,
    num_pairs: int = 1,
    passkey: bool = True,
    queries_per_fact: int = 2,
    supervise: Supervise = "all",
    echoes: int = 0,
) -> Doc:
    """A document of exactly ``length`` tokens: facts hidden in filler, each queried later.

    Needle and query times are drawn so that query-needle distances spread over the whole document
    (needle at u ~ U(0,1), each of its queries at U(u, 1)), never at a fixed offset. Facts that do not fit
    are dropped, so any ``length >= 1`` works (a tiny document is plain filler). ``supervise="answers"``
    puts the loss on answer tokens only (for an echo: every recurring token but its first); ``"all"`` on
    every token but the first. Each echo recurs once.
    """
    if length < 1:
        raise ValueError(f"document length must be >= 1, got {length}")
    facts = _needles(rng, num_pairs, passkey, echoes)
    size = [len(n) + (1 if n is q else queries_per_fact) * len(q) for n, q, _ in facts]
    while facts and sum(size) > length:
        facts.pop()  # drop echoes first, then key-value facts, the passkey last
        size.pop()
    items = []  # (time, tokens, answer length)
    for needle, query, n_ans in facts:
        t = rng.uniform(0.0, 1.0)
        items.append((t, needle, 0))
        items.extend((rng.uniform(t, 1.0), query, n_ans) for _ in range(1 if needle is query else queries_per_fact))
    items.sort(key=lambda item: item[0])
    n_fill = length - sum(len(tok) for _, tok, _ in items)
    # filler before each item: the cumulative filler up to time t is round(t * n_fill)
    cuts = [round(t * n_fill) for t, _, _ in items]
    ids, target, used = [], [], 0
    for cut, (_, tok, n_ans) in zip(cuts, items):
        ids.append(filler(rng, cut - used))
        target.append(np.full(cut - used, supervise == "all"))
        used = cut
        ids.append(tok)
        mask = np.full(len(tok), supervise == "all")
        if n_ans:
            mask[-n_ans:] = True
        target.append(mask)
    ids.append(filler(rng, n_fill - used))
    target.append(np.full(n_fill - used, supervise == "all"))
    doc = Doc(np.concatenate(ids).astype(np.int64), np.concatenate(target).astype(bool))
    doc.target[0] = False  # nothing inside the document predicts its first token
    assert len(doc) == length
    return doc


def repeated_window(rng: np.random.Generator, seq_len: int, period: int, gap: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """One random sequence of ``period`` filler tokens repeated through a window.

    Returns (ids [seq_len], offsets [copies]): copy c starts at ``offsets[c]``; with ``gap > 0`` copies are
    separated by ``gap`` tokens of fresh filler. Identical content at different absolute positions, for the
    repeated-token experiment (every difference between copies' logits is positional).
    """
    if period < 1 or gap < 0:
        raise ValueError(f"period must be >= 1 and gap >= 0, got period={period}, gap={gap}")
    if period > seq_len:
        raise ValueError(f"period {period} is longer than the window {seq_len}")
    pattern = filler(rng, period)
    copies = (seq_len + gap) // (period + gap)
    offsets = np.arange(copies, dtype=np.int64) * (period + gap)
    ids = filler(rng, seq_len)
    for off in offsets:
        ids[off : off + period] = pattern
    return ids.astype(np.int64), offsets
