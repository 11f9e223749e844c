"""Causal ablations the paper leaves as future work: the demo's ablation runner.

1. **Band interventions at evaluation time** (:mod:`workbench.interventions.bands`): zero or rotate the RoPE
   pairs of a frequency band in every layer's queries and keys and measure the retrieval drop
   (:func:`band_ablation`, :func:`band_effects`).
2. **Position-invariant KD targets**: the teacher sees every packed document with positions reset and
   attention masked to the document, so its targets carry no long-range positional signal
   (``teacher: {positions: reset}``).
3. **Frozen band during extension**: the W_q/W_k rows of a band get no update in the long phase
   (``PhaseConfig.freeze_wavelengths``).
"""

from __future__ import annotations

import numpy as np
import xarray as xr

from workbench import arms, checkpoint_io, models, stats, store
from workbench.evals import grid
from workbench.interventions.bands import band_conditions, band_intervention


def band_ablation(
    checkpoints: dict[str, str], *, tasks, lengths, depths, samples, seed, doc_length: int = 256
) -> xr.Dataset:
    """Per-sample greedy exact match (condition, model, task, length, depth, sample) of each checkpoint under
    each band condition; the same prompts for every condition and model (so differences are paired)."""
    rendering = grid.load_rendering("synthetic")
    per_model = []
    for path in checkpoints.values():
        model, _ = checkpoint_io.load(path)
        conds = band_conditions(models.model_inv_freq(model).double().numpy(), doc_length)
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
