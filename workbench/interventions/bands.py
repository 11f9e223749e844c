"""Band interventions: zero or rotate the RoPE pairs of a frequency band in every layer's queries and keys of a
Hugging Face model, for evaluation (generation) under the edit.

Zeroing or rotating pair j by a fixed angle commutes with RoPE (each pair turns in its own plane, and plane
rotations commute), so the engines' spec edit (:func:`band_spec`, :func:`workbench.interventions.perturb.apply_spec`)
is applied to the pre-RoPE q/k (:func:`workbench.architectures.pre_rope_hooks`) of the model that generates; the
test suite checks it against the engine's post-RoPE edit through nnsight. The demo's ablation runner
(:mod:`workbench.demo.ablations`) evaluates retrieval under :func:`band_conditions`.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Literal

import numpy as np
import torch

from workbench import architectures, rope
from workbench.interventions.perturb import apply_spec, touches
from workbench.interventions.specs import Geometry, PairSet, Spec, identity, rotate, zero


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
        return identity()
    chosen = PairSet(indices=idx)
    edit = zero(target, pairs=chosen) if op == "zero" else rotate(angle, target, pairs=chosen)
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
    geom = Geometry.of(model)
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


def band_conditions(frequencies: np.ndarray, doc_length: int) -> dict[str, tuple[str, str, np.ndarray]]:
    """The evaluation-time conditions, name -> (op, target, pairs): clean; zero the short band (lambda <= doc
    length) or the long band (lambda > doc length, which short documents never see turn fully) in q and k;
    rotate the long band of q only by pi/2 (rotating q and k alike would leave every q.k unchanged).

    ``frequencies`` [d/2] are the omega_j the model runs with (``models.model_inv_freq``: theta and any RoPE
    scaling), or ``rope.inv_freq(theta, head_dim)``."""
    short = np.flatnonzero(rope.wavelength_mask(frequencies, 0, doc_length))
    long = np.flatnonzero(rope.wavelength_mask(frequencies, doc_length + 1e-9))
    return {
        "clean": ("zero", "both", np.array([], dtype=np.int64)),
        f"zero lambda<={doc_length}": ("zero", "both", short),
        f"zero lambda>{doc_length}": ("zero", "both", long),
        f"rotate q lambda>{doc_length} by pi/2": ("rotate", "q", long),
    }
