"""Causal ablations the paper leaves as future work.

1. **Band interventions at evaluation time**: zero or rotate the RoPE pairs of a frequency band in every
   layer's queries and keys and measure the retrieval drop. Zeroing or rotating pair j by a fixed angle
   commutes with RoPE (each pair turns in its own plane, and plane rotations commute), so it is applied to
   the q_proj/k_proj outputs with plain forward hooks on the Hugging Face model; the test suite checks it
   against the interpretability engine's post-RoPE edit through nnsight.
2. **Position-invariant KD targets**: the teacher sees every packed document with positions reset and
   attention masked to the document, so its targets carry no long-range positional signal
   (``RunConfig.teacher_positions``).
3. **Frozen band during extension**: the W_q/W_k rows of a band get no update in the long phase
   (``PhaseConfig.freeze_pairs``).
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from typing import Iterator, Literal

import numpy as np
import torch
import xarray as xr

from workbench import models, rope, store


def band_pairs(theta: float, head_dim: int, min_wavelength: float, max_wavelength: float = math.inf) -> np.ndarray:
    """Indices of the pairs whose wavelength at ``theta`` lies in [min, max]."""
    lam = rope.wavelengths(theta, head_dim)
    return np.flatnonzero((lam >= min_wavelength) & (lam <= max_wavelength))


def _edit_pairs(out: torch.Tensor, n_heads: int, head_dim: int, pairs: torch.Tensor, op: str, angle: float) -> torch.Tensor:
    x = out.reshape(*out.shape[:-1], n_heads, head_dim)
    half = head_dim // 2
    a, b = x[..., pairs], x[..., pairs + half]
    if op == "zero":
        a, b = torch.zeros_like(a), torch.zeros_like(b)
    else:
        cos, sin = math.cos(angle), math.sin(angle)
        a, b = a * cos - b * sin, b * cos + a * sin
    x = x.clone()
    x[..., pairs], x[..., pairs + half] = a, b
    return x.reshape(out.shape)


@contextmanager
def band_intervention(model, pairs, op: Literal["zero", "rotate"] = "zero", angle: float = math.pi / 2,
                      target: Literal["q", "k", "both"] = "both") -> Iterator[None]:
    """Zero or rotate RoPE pairs ``pairs`` (pair j = dims j, j + d/2) of every head in every layer."""
    if op not in ("zero", "rotate"):
        raise ValueError(f"op must be 'zero' or 'rotate', got {op!r}")
    cfg = model.config
    d = cfg.head_dim
    idx = torch.as_tensor(np.asarray(pairs, dtype=np.int64))
    if idx.numel() and (idx.min() < 0 or idx.max() >= d // 2):
        raise ValueError(f"pair indices must be in [0, {d // 2}), got {idx.tolist()}")
    handles = []
    for layer in model.model.layers:
        attn = layer.self_attn
        for proj, n_heads, which in ((attn.q_proj, cfg.num_attention_heads, "q"),
                                     (attn.k_proj, cfg.num_key_value_heads, "k")):
            if target in (which, "both"):
                handles.append(proj.register_forward_hook(
                    lambda mod, inp, out, n=n_heads: _edit_pairs(out, n, d, idx, op, angle)))
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def band_conditions(theta: float, head_dim: int, doc_length: int) -> dict[str, tuple[str, str, np.ndarray]]:
    """The evaluation-time conditions, name -> (op, target, pairs): clean; zero the short band (lambda <= doc
    length) or the long band (lambda > doc length, which short documents never see turn fully) in q and k;
    rotate the long band of q only by pi/2 (rotating q and k alike would leave every q.k unchanged)."""
    short = band_pairs(theta, head_dim, 0, doc_length)
    long = band_pairs(theta, head_dim, doc_length + 1e-9)
    return {"clean": ("zero", "both", np.array([], dtype=np.int64)),
            f"zero lambda<={doc_length}": ("zero", "both", short),
            f"zero lambda>{doc_length}": ("zero", "both", long),
            f"rotate q lambda>{doc_length} by pi/2": ("rotate", "q", long)}


def band_ablation(checkpoints: dict[str, str], *, tasks, lengths, depths, samples, seed, doc_length: int = 256) -> xr.Dataset:
    """Accuracy (condition, model, task, length) of each checkpoint under each band condition."""
    from workbench.evals import grid

    rendering = grid.load_rendering("synthetic")
    per_model = []
    for name, path in checkpoints.items():
        model, _ = models.load(path, allow_plain_hf=True)
        conds = band_conditions(models.rope_theta(model), model.config.head_dim, doc_length)
        per_cond = []
        for cond, (op, target, pairs) in conds.items():
            with band_intervention(model, pairs, op, target=target):
                ds = grid.evaluate_model(model, rendering, tasks=tasks, lengths=lengths, depths=depths,
                                         samples=samples, seed=seed)
            per_cond.append(ds["correct"].astype(float).mean(["depth", "sample"]))
        per_model.append(xr.concat(per_cond, dim=xr.DataArray(np.array(list(conds), dtype=object), dims="condition")))
    acc = xr.concat(per_model, dim=xr.DataArray(np.array(list(checkpoints), dtype=object), dims="model"))
    return xr.Dataset({"accuracy": acc.transpose("condition", "model", "task", "length")},
                      attrs=store.provenance(kind="ablations", doc_length=doc_length, seed=seed,
                                             checkpoints=checkpoints))


ABLATION_ARMS = {
    # KD whose teacher sees every document alone from position 0: its targets carry no long-range position
    "posfree": {"teacher_positions": "reset"},
    # KD whose long-wavelength pairs (lambda > 256 at the phase-2 theta) may not adapt during extension
    "freeze-long": {"freeze_wavelengths": [256.0, float("inf")]},
}


def run_all(opts, state) -> None:
    """--full: train the ablation arms (KD, phase-wise theta) and evaluate them like the main arms, then the
    band interventions at evaluation time; the latter go into the store's ``ablations`` group."""
    from workbench.demo.arms import Arm
    from workbench.demo.pipeline import evaluate_retrieval, train_students
    from workbench.evals import grid

    for variant, options in ABLATION_ARMS.items():
        todo = [Arm("kd", "phasewise", s, variant) for s in range(opts.seeds)]
        train_students(opts, state, todo, **options)
        evaluate_retrieval(opts, state, [state.final(a) for a in todo])
    if store.has_group(opts.store, "ablations"):
        return
    chosen = {grid.checkpoint_name(state.teacher): str(state.teacher)}
    for arm in state.runs:
        if arm.schedule == "phasewise" and not arm.variant and arm.seed == 0:
            chosen[grid.checkpoint_name(state.final(arm))] = str(state.final(arm))
    ds = band_ablation(chosen, tasks=["passkey"], lengths=[256, 1024],  # the documents, the window
                       depths=[50.0], samples=max(8, opts.eval_samples), seed=99)
    store.write(opts.store, "ablations", ds)
