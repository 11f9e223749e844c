"""Causal ablations the paper leaves as future work.

1. **Band interventions at evaluation time**: zero or rotate the RoPE pairs of a frequency band in every
   layer's queries and keys and measure the retrieval drop. Zeroing or rotating pair j by a fixed angle
   commutes with RoPE (each pair turns in its own plane, and plane rotations commute), so the engines' spec
   edit (:func:`band_spec`, :func:`workbench.interventions.perturb.apply_spec`) is applied to the pre-RoPE q/k
   (:func:`workbench.architectures.pre_rope_hooks`) of the Hugging Face model that generates; the test suite
   checks it against the engine's post-RoPE edit through nnsight.
2. **Position-invariant KD targets**: the teacher sees every packed document with positions reset and
   attention masked to the document, so its targets carry no long-range positional signal
   (``teacher: {positions: reset}``).
3. **Frozen band during extension**: the W_q/W_k rows of a band get no update in the long phase
   (``PhaseConfig.freeze_wavelengths``).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Literal

import numpy as np
import torch
import xarray as xr

from workbench import architectures, arms, checkpoint_io, interventions, models, rope, stats, store
from workbench.evals import grid
from workbench.interventions.perturb import apply_spec, touches
from workbench.interventions.specs import Spec


def band_spec(
    pairs,
    op: Literal["zero", "rotate"] = "zero",
    angle: float = math.pi / 2,
    target: Literal["q", "k", "both"] = "both",
) -> Spec:
    """The interpretability spec of a band condition: zero or rotate ``pairs`` of every head in every layer
    (the identity for no pairs)."""
    if op not in ("zero", "rotate"):
        raise ValueError(f"op must be 'zero' or 'rotate', got {op!r}")
    idx = [int(j) for j in np.asarray(pairs, dtype=np.int64).reshape(-1)]
    if not idx:
        return interventions.identity()
    chosen = interventions.PairSet(indices=idx)
    edit = (
        interventions.zero(target, pairs=chosen) if op == "zero" else interventions.rotate(angle, target, pairs=chosen)
    )
    return Spec(f"{op}-{target}", [edit])


@contextmanager
def band_intervention(
    model,
    pairs,
    op: Literal["zero", "rotate"] = "zero",
    angle: float = math.pi / 2,
    target: Literal["q", "k", "both"] = "both",
) -> Iterator[None]:
    """Zero or rotate RoPE pairs ``pairs`` (pair j = dims j, j + d/2) of every head in every layer of a Hugging
    Face model (generation runs on it): the spec :func:`band_spec`, applied by the engines' edit
    (:func:`workbench.interventions.perturb.apply_spec`) to the pre-RoPE q/k at
    :func:`workbench.architectures.pre_rope_hooks` (both ops commute with RoPE)."""
    spec = band_spec(pairs, op, angle, target)
    if spec.is_identity:
        yield
        return
    geom = interventions.Geometry.of(model)
    rope.pair_dims(spec.ops[0].pairs.indices, geom.head_dim)  # pair indices in range, before any hook
    spec.validate(geom)

    def edit(which: str, out: torch.Tensor, layer: int) -> torch.Tensor | None:
        if not touches(spec, which, layer):
            return None
        x = out.unflatten(-1, (-1, geom.head_dim)).transpose(-3, -2)  # [B, H, T, d]
        positions = torch.zeros(x.shape[0], x.shape[2], dtype=torch.long, device=x.device)  # unused: no position scope
        return apply_spec(spec, x, which, layer, positions, geom).transpose(-3, -2).reshape(out.shape)

    handles = []
    try:
        for i, layer in enumerate(model.model.layers):
            handles += architectures.pre_rope_hooks(
                layer.self_attn, model.config, lambda which, out, i=i: edit(which, out, i)
            )
        yield
    finally:
        for h in handles:
            h.remove()


def band_conditions(theta: float, head_dim: int, doc_length: int) -> dict[str, tuple[str, str, np.ndarray]]:
    """The evaluation-time conditions, name -> (op, target, pairs): clean; zero the short band (lambda <= doc
    length) or the long band (lambda > doc length, which short documents never see turn fully) in q and k;
    rotate the long band of q only by pi/2 (rotating q and k alike would leave every q.k unchanged)."""
    short = rope.pairs_in_wavelengths(theta, head_dim, 0, doc_length)
    long = rope.pairs_in_wavelengths(theta, head_dim, doc_length + 1e-9)
    return {
        "clean": ("zero", "both", np.array([], dtype=np.int64)),
        f"zero lambda<={doc_length}": ("zero", "both", short),
        f"zero lambda>{doc_length}": ("zero", "both", long),
        f"rotate q lambda>{doc_length} by pi/2": ("rotate", "q", long),
    }


def band_ablation(
    checkpoints: dict[str, str], *, tasks, lengths, depths, samples, seed, doc_length: int = 256
) -> xr.Dataset:
    """Per-sample greedy exact match (condition, model, task, length, depth, sample) of each checkpoint under
    each band condition; the same prompts for every condition and model (so differences are paired)."""
    rendering = grid.load_rendering("synthetic")
    per_model = []
    for path in checkpoints.values():
        model, _ = checkpoint_io.load(path)
        conds = band_conditions(models.rope_theta(model), model.config.head_dim, doc_length)
        per_cond = []
        for op, target, pairs in conds.values():
            with band_intervention(model, pairs, op, target=target):
                ds = grid.evaluate_model(
                    model, rendering, tasks=tasks, lengths=lengths, depths=depths, samples=samples, seed=seed
                )
            per_cond.append(ds["correct"])
        per_model.append(xr.concat(per_cond, dim=xr.DataArray(np.array(list(conds), dtype=object), dims="condition")))
    correct = xr.concat(per_model, dim=xr.DataArray(np.array(list(checkpoints), dtype=object), dims="model"))
    return xr.Dataset(
        {"correct": correct.transpose("condition", "model", "task", "length", "depth", "sample")},
        attrs=store.provenance(kind=store.ABLATIONS, doc_length=doc_length, seed=seed, checkpoints=checkpoints),
    )


def band_effects(ds: xr.Dataset) -> xr.Dataset:
    """Each condition minus clean, per arm (models pooled by run name without the seed suffix; a model
    outside any arm is its own) x task x length: paired hierarchical bootstrap over (seed, prompt)."""
    models_ = [str(m) for m in ds["model"].values]
    groups: dict[str, list[str]] = {}
    for m in models_:
        groups.setdefault(arms.parse_arm(m).arm, []).append(m)
    conds = [str(c) for c in ds["condition"].values if str(c) != "clean"]
    tasks, lengths = [str(t) for t in ds["task"].values], [int(n) for n in ds["length"].values]
    shape = (len(groups), len(conds), len(tasks), len(lengths))
    mean, lo, hi, clean = (np.full(shape, np.nan) for _ in range(4))
    x = (
        ds["correct"]
        .astype(np.float64)
        .stack(prompt=("depth", "sample"))
        .transpose("condition", "model", "task", "length", "prompt")
    )
    for g, members in enumerate(groups.values()):
        for c, cond in enumerate(conds):
            for t, task in enumerate(tasks):
                for n, length in enumerate(lengths):
                    cell = x.sel(model=members, task=task, length=length)
                    iv = stats.paired_bootstrap(cell.sel(condition=cond).values, cell.sel(condition="clean").values)
                    mean[g, c, t, n], lo[g, c, t, n], hi[g, c, t, n] = iv.mean, iv.lo, iv.hi
                    clean[g, c, t, n] = float(cell.sel(condition="clean").mean())
    dims = ("arm", "condition", "task", "length")
    return xr.Dataset(
        {
            "difference": (dims, mean),
            "difference_lo": (dims, lo),
            "difference_hi": (dims, hi),
            "clean_accuracy": (dims, clean),
        },
        coords={
            "arm": np.array(list(groups), dtype=object),
            "condition": np.array(conds, dtype=object),
            "task": np.array(tasks, dtype=object),
            "length": np.array(lengths, dtype=np.int64),
            "n_models": ("arm", np.array([len(m) for m in groups.values()], dtype=np.int64)),
        },
        attrs={
            "method": "condition - clean, paired hierarchical bootstrap (seeds, then prompts)",
            "level": stats.LEVEL,
            "n_boot": stats.N_BOOT,
        },
    )


VARIANTS = ("posfree", "freeze-long")  # data/configs/ablations/tiny-kd-phasewise-<variant>.yaml
