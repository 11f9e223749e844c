"""Retrieval tasks: passkey, NIAH single, and the RULER variants (multi-key, multi-value, multi-query,
variable tracking), generated deterministically by seed with an exact length and an exact needle depth.

A task draws its abstract content (keys, values, digits, names) from a seeded generator; a
:class:`~workbench.evals.render.Rendering` turns it into ids. A sample is ``prefix + haystack + query``
with exactly ``length`` ids; the gold answer follows the query (it is not part of the prompt).

Depth (percent, 0-100) places the *target* needle (the asked needle; for multi-value, multi-query and
variable tracking the first gold needle in order of appearance) so that its first token sits at haystack
index ``round(depth / 100 * (H - G))``, H being the haystack length and G the total length of the gold
needles (just the needle for single-needle tasks): 0 % = right after the instruction prefix, 100 % = the
gold needles flush against the query. The other gold needles follow it in order at random
places; distractors go anywhere (chains keep their order). Every distance varies from sample to sample.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from workbench.evals.render import Item, Rendering


@dataclass(frozen=True)
class TaskSpec:
    """A task and its size parameters (defaults follow RULER's niah_* / vt configurations)."""

    name: str
    description: str
    keys: int = 1  # distinct keys among the needles (multi-key: 1 asked + distractors)
    values: int = 1  # values per asked key (multi-value)
    queries: int = 1  # keys asked at once (multi-query)
    chains: int = 1  # variable tracking: chains (1 gold + distractor chains)
    hops: int = 4  # variable tracking: aliases per chain


TASKS: dict[str, TaskSpec] = {
    t.name: t
    for t in (
        TaskSpec("passkey", "a 5-digit pass key hidden in repeated filler (LongLoRA / Landmark Attention)"),
        TaskSpec("niah", "one key-value needle in the haystack (RULER niah_single)"),
        TaskSpec(
            "multikey", "the asked needle among 3 distractor needles with other keys (RULER niah_multikey)", keys=4
        ),
        TaskSpec(
            "multivalue", "4 needles with the same key; answer all values in order (RULER niah_multivalue)", values=4
        ),
        TaskSpec("multiquery", "4 needles, all 4 keys asked at once (RULER niah_multiquery)", keys=4, queries=4),
        TaskSpec(
            "vt", "a chain of variable assignments; answer every name bound to the value (RULER vt)", chains=1, hops=4
        ),
    )
}

PASSKEY_DIGITS = 5
DEPTH_DEFINITION = (
    "target needle's first token at haystack index round(depth/100 * (H - G)); H = haystack "
    "tokens, G = tokens of the gold needles; 0 = right after the prefix, 100 = against the query"
)


@dataclass(frozen=True, eq=False)
class Sample:
    """One prompt. ``input_ids`` has exactly ``length`` ids; ``answer_ids`` is the gold continuation;
    ``refs`` are RULER's references (each must appear in the output); ``needle_position`` is the index of
    the target needle's first token (``needle_ids`` are its ids); the haystack (filler + needles) spans
    ``input_ids[haystack_start:haystack_end]``, the instruction prefix is before it, the query after it."""

    task: str
    length: int
    depth: float
    index: int
    input_ids: np.ndarray
    answer_ids: np.ndarray
    refs: tuple[str, ...]
    needle_position: int
    needle_ids: np.ndarray
    haystack_start: int
    haystack_end: int


def parse_tasks(names: str | Sequence[str]) -> list[str]:
    """``"passkey,niah"`` or a list -> validated task names (ValueError naming the unknown one)."""
    items = [n.strip() for n in names.split(",")] if isinstance(names, str) else [str(n) for n in names]
    items = [n for n in items if n]
    if not items:
        raise ValueError("no tasks given")
    for n in items:
        if n not in TASKS:
            raise ValueError(f"unknown task {n!r}; known tasks: {', '.join(TASKS)}")
    if len(set(items)) != len(items):
        raise ValueError(f"task listed twice in {items}")
    return items


def depth_grid(n: int) -> list[float]:
    """``n`` depths evenly spaced over 0-100 % (n = 1 gives 50 %)."""
    if n < 1:
        raise ValueError(f"need at least 1 depth, got {n}")
    return [50.0] if n == 1 else [float(d) for d in np.linspace(0.0, 100.0, n)]


def sample_rng(seed: int, task: str, length: int, depth: float, index: int) -> np.random.Generator:
    """The generator of one sample: a pure function of (seed, task, length, depth, index), so a cell's
    samples do not depend on which other cells are asked for."""
    return np.random.default_rng([int(seed), zlib.crc32(task.encode()), int(length), round(depth * 1000), int(index)])


def _digits(rng: np.random.Generator, rendering: Rendering) -> str:
    first = 0 if rendering.word_boundary else 1  # text renderings write a 5-digit number without leading zero
    return str(int(rng.integers(first, 10))) + "".join(str(int(d)) for d in rng.integers(0, 10, PASSKEY_DIGITS - 1))


def _content(spec: TaskSpec, rng: np.random.Generator, rendering: Rendering):
    """Abstract content: (gold needles in order, distractor groups, query item, gold answer parts)."""
    if spec.name == "passkey":
        digits = _digits(rng, rendering)
        return [("passkey", digits)], [], ("passkey",), [("digits", digits)]
    if spec.name == "vt":
        n = spec.hops + 1
        names = rng.choice(rendering.n_names, size=n * spec.chains, replace=False).tolist()
        values: list[str] = []
        while len(values) < spec.chains:
            d = _digits(rng, rendering)
            if d not in values:
                values.append(d)
        chains = []
        for c in range(spec.chains):
            chain_names = names[c * n : (c + 1) * n]
            chain: list[Item] = [("var", chain_names[0], values[c])]
            chain += [("alias", chain_names[i + 1], chain_names[i]) for i in range(spec.hops)]
            chains.append((chain, chain_names))
        gold, gold_names = chains[0]
        return gold, [c for c, _ in chains[1:]], ("vt", values[0], n), [("name", x) for x in gold_names]
    keys = rng.choice(rendering.n_keys, size=spec.keys, replace=False).tolist()
    if spec.values > 1:  # multi-value: one key, several distinct values, answered in order of appearance
        vals = rng.choice(rendering.n_values, size=spec.values, replace=False).tolist()
        gold = [("kv", keys[0], v) for v in vals]
        distractors = [[("kv", k, int(rng.integers(rendering.n_values)))] for k in keys[1:]]
        return gold, distractors, ("kv", [keys[0]]), [("value", v) for v in vals]
    vals = rng.choice(rendering.n_values, size=spec.keys, replace=False).tolist()
    needles = [("kv", k, v) for k, v in zip(keys, vals)]
    if spec.queries > 1:  # multi-query: the asked needles appear in a random order, asked in another
        asked = needles[: spec.queries]
        order = rng.permutation(len(asked)).tolist()
        asked_in_query = [asked[i] for i in order]
        return (
            asked,
            [[n] for n in needles[spec.queries :]],
            ("kv", [n[1] for n in asked_in_query]),
            [("value", n[2]) for n in asked_in_query],
        )
    return [needles[0]], [[n] for n in needles[1:]], ("kv", [keys[0]]), [("value", vals[0])]


def _place(
    rng: np.random.Generator,
    haystack: int,
    depth: float,
    gold: list[list[int]],
    distractors: list[list[list[int]]],
    where: str,
) -> tuple[int, dict[str, tuple[int, list[list[int]]]]]:
    """Lay out needles in a haystack of ``haystack`` ids.

    Returns (target start, {"before"|"after": (filler tokens, needle ids in order)}). The target
    (``gold[0]``) starts exactly at ``round(depth/100 * (haystack - G))``, G the total length of the gold
    needles (the other gold needles go after it, in order); each distractor group keeps its order.
    """
    total = sum(map(len, gold)) + sum(len(n) for g in distractors for n in g)
    if total > haystack:
        raise ValueError(
            f"{where}: needles need {total} tokens but the haystack has only {haystack}; use a longer length"
        )
    target = gold[0]
    p = round(depth / 100.0 * (haystack - sum(map(len, gold))))
    room = {"before": p, "after": haystack - p - len(target)}
    items: list[list] = []  # [u, region, ids, movable]
    for ids, u in zip(gold[1:], np.sort(rng.uniform(p, haystack, size=len(gold) - 1))):
        items.append([float(u), "after", ids, False])
    for group in distractors:
        for ids, u in zip(group, np.sort(rng.uniform(0, haystack, size=len(group)))):
            items.append([float(u), "before" if u < p else "after", ids, True])

    def used(region: str) -> int:
        return sum(len(it[2]) for it in items if it[1] == region)

    # move movable needles across the target (keeping every group's order) until both regions fit
    for _ in range(len(items) + 1):
        if used("before") > room["before"]:
            last = max((it for it in items if it[1] == "before"), key=lambda it: it[0])
            last[0], last[1] = p + 1e-9, "after"  # first of the after-region
        elif used("after") > room["after"]:
            movable = [it for it in items if it[1] == "after" and it[3]]
            if not movable:
                break
            first = min(movable, key=lambda it: it[0])
            first[0], first[1] = p - 1e-9, "before"  # last of the before-region
        else:
            break
    if used("before") > room["before"] or used("after") > room["after"]:
        raise ValueError(
            f"{where}: the needles do not fit around depth {depth:g}% in {haystack} haystack "
            "tokens; use a longer length"
        )
    regions = {}
    for region in ("before", "after"):
        seq = sorted((it for it in items if it[1] == region), key=lambda it: it[0])
        regions[region] = (room[region] - sum(len(it[2]) for it in seq), [it[2] for it in seq])
    return p, regions


def _snapper(rendering: Rendering, shift: int):
    """Nearest sentence start of the filler stream (global filler index) within [lo, hi], or None."""
    starts, period = rendering.sentence_starts, rendering.filler_period
    if not starts or not period:
        return None
    start_set = set(starts)

    def snap(g: int, lo: int, hi: int) -> int:
        for d in range(period + 1):
            for cand in (g - d, g + d):
                if lo <= cand <= hi and (shift + cand) % period in start_set:
                    return cand
        return g

    return snap


def make_sample(
    task: str | TaskSpec, length: int, depth: float, rendering: Rendering, *, seed: int = 0, index: int = 0
) -> Sample:
    """One sample of ``task`` with exactly ``length`` prompt ids and its target needle at ``depth`` percent.

    Pure: the same (task, length, depth, rendering, seed, index) gives the same sample.
    """
    spec = TASKS[task] if isinstance(task, str) else task
    where = f"task {spec.name} at length {length}"
    if not 0.0 <= depth <= 100.0:
        raise ValueError(f"{where}: depth must be a percentage in [0, 100], got {depth}")
    rng = sample_rng(seed, spec.name, length, depth, index)
    gold_items, distractor_groups, query_item, answer_parts = _content(spec, rng, rendering)
    prefix = rendering.prefix(spec.name)
    query = rendering.query(spec.name, query_item)
    haystack = length - len(prefix) - len(query)
    gold = [rendering.needle(it) for it in gold_items]
    distractors = [[rendering.needle(it) for it in g] for g in distractor_groups]
    p, regions = _place(rng, haystack, depth, gold, distractors, where)
    # text renderings: the filler stream is shifted so the target needle starts a sentence, and the other
    # needles are moved to the nearest sentence start (their places are random anyway)
    period = rendering.filler_period
    shift = 0
    if rendering.sentence_starts and period:
        shift = (
            rendering.sentence_starts[int(rng.integers(len(rendering.sentence_starts)))] - regions["before"][0]
        ) % period
    snap = _snapper(rendering, shift)
    ids: list[int] = list(prefix)
    emitted = 0
    for region in ("before", "after"):
        if region == "after":
            ids += gold[0]
        free, needles = regions[region]
        base, prev = emitted, 0
        for cut in np.sort(rng.integers(0, free + 1, size=len(needles))).tolist():
            if snap is not None:
                cut = snap(base + cut, base + prev, base + free) - base
            ids += rendering.filler(rng, cut - prev, shift + emitted)
            emitted += cut - prev
            prev = cut
            ids += needles.pop(0)
        ids += rendering.filler(rng, free - prev, shift + emitted)
        emitted += free - prev
    ids += query
    assert len(ids) == length, (len(ids), length)
    refs = rendering.refs(answer_parts)
    return Sample(
        task=spec.name,
        length=length,
        depth=float(depth),
        index=index,
        input_ids=np.asarray(ids, dtype=np.int64),
        answer_ids=np.asarray(rendering.answer(refs), dtype=np.int64),
        refs=tuple(refs),
        needle_position=len(prefix) + p,
        needle_ids=np.asarray(gold[0], dtype=np.int64),
        haystack_start=len(prefix),
        haystack_end=len(prefix) + haystack,
    )


def make_samples(
    task: str, length: int, depths: Sequence[float], samples: int, rendering: Rendering, *, seed: int = 0
) -> list[Sample]:
    """``samples`` samples at each depth (depth-major order)."""
    return [make_sample(task, length, d, rendering, seed=seed, index=i) for d in depths for i in range(samples)]
