"""Effective length: retrieval accuracy by length summarised as the longest length a model still handles.

Two definitions from the long-context literature, per checkpoint or arm and task, over the evaluated lengths
L_1 < L_2 < ... (accuracy = mean over depths and samples, and over seeds for an arm):

- ``threshold`` (RULER): the longest L_k such that the accuracy at L_1..L_k all stay >= a fixed threshold;
- ``relative`` (NoLiMa): the longest L_k such that the accuracy at L_1..L_k all stay >= ``fraction`` (default
  0.85) of the model's own accuracy at the shortest length L_1 (a model at 0 there has none).

0 when the shortest length already fails. Intervals: the same hierarchical bootstrap as the accuracies
(:func:`workbench.stats.resampled_means`: seeds, then prompts within each seed, one joint resample over all
lengths), the effective length of every resample, percentile interval (of observed values: always evaluated lengths).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import xarray as xr

from workbench import stats

CRITERIA = ("threshold", "relative")
THRESHOLD = 0.5
FRACTION = 0.85


def longest_passing(acc: np.ndarray, lengths: Sequence[int], floor: np.ndarray | float) -> np.ndarray:
    """acc [..., length] -> the longest length whose accuracy and every shorter one's are >= ``floor`` [...]
    (0 where the shortest fails)."""
    acc = np.asarray(acc, dtype=np.float64)
    ok = np.cumprod(acc >= np.asarray(floor, dtype=np.float64)[..., None] - 1e-12, axis=-1).astype(bool)
    lens = np.r_[0, np.asarray(lengths, dtype=np.int64)]
    return lens[ok.sum(-1)]


def effective_lengths(
    acc: np.ndarray, lengths: Sequence[int], *, threshold: float = THRESHOLD, fraction: float = FRACTION
) -> dict[str, np.ndarray]:
    """acc [..., length] (lengths ascending) -> {"threshold": [...], "relative": [...]} effective lengths."""
    acc = np.asarray(acc, dtype=np.float64)
    base = acc[..., 0]
    rel = np.where(base > 0, longest_passing(acc, lengths, fraction * base), 0)
    return {"threshold": longest_passing(acc, lengths, threshold), "relative": rel}


def check(threshold: float, fraction: float) -> None:
    if not 0 < threshold <= 1 or not 0 < fraction <= 1:
        raise ValueError(f"effective length needs threshold and fraction in (0, 1], got {threshold}, {fraction}")


def arm_effective_lengths(
    ds: xr.Dataset,
    groups: dict[str, list[str]],
    *,
    metric: str = "correct",
    threshold: float = THRESHOLD,
    fraction: float = FRACTION,
    n_boot: int = stats.N_BOOT,
    level: float = stats.LEVEL,
    seed: int = 0,
) -> xr.Dataset:
    """Per group (an arm: its checkpoints, one per seed; or one checkpoint) x task x criterion: the effective
    length of the pooled accuracy, with a percentile interval over hierarchical resamples. ``ds`` is a
    ``retrieval`` group (dims checkpoint, task, length, depth, sample)."""
    check(threshold, fraction)
    lengths = [int(n) for n in ds["length"].values]
    if sorted(lengths) != lengths:
        raise ValueError(f"retrieval lengths must be ascending, got {lengths}")
    tasks = [str(t) for t in ds["task"].values]
    shape = (len(groups), len(tasks), len(CRITERIA))
    point, lo, hi = (np.zeros(shape) for _ in range(3))
    acc_out = np.full((len(groups), len(tasks), len(lengths)), np.nan)
    tail = (1.0 - level) / 2.0
    for g, members in enumerate(groups.values()):
        for t, task in enumerate(tasks):
            da = ds[metric].sel(task=task).astype(np.float64).transpose("checkpoint", "depth", "sample", "length")
            x = np.stack([da.sel(checkpoint=c).values.reshape(-1, len(lengths)) for c in members])  # [seed, prompt, L]
            acc = x.mean(axis=(0, 1))
            acc_out[g, t] = acc
            boot = effective_lengths(
                stats.resampled_means(x, n_boot=n_boot, seed=seed), lengths, threshold=threshold, fraction=fraction
            )
            est = effective_lengths(acc, lengths, threshold=threshold, fraction=fraction)
            for c, crit in enumerate(CRITERIA):
                point[g, t, c] = est[crit]
                lo[g, t, c], hi[g, t, c] = np.quantile(boot[crit], [tail, 1.0 - tail], method="inverted_cdf")
    dims = ("arm", "task", "criterion")
    out = xr.Dataset(
        {
            "effective_length": (dims, point),
            "effective_length_lo": (dims, lo),
            "effective_length_hi": (dims, hi),
            metric: (("arm", "task", "length"), acc_out),
        },
        coords={
            "arm": np.array(list(groups), dtype=object),
            "task": np.array(tasks, dtype=object),
            "criterion": np.array(CRITERIA, dtype=object),
            "length": np.array(lengths, dtype=np.int64),
            "members": ("arm", np.array([" ".join(m) for m in groups.values()], dtype=object)),
        },
    )
    out["effective_length"].attrs["description"] = (
        f"longest evaluated length whose {metric} and every shorter length's stay >= {threshold} (threshold) or "
        f">= {fraction} x its own {metric} at the shortest length (relative); 0 = the shortest length fails"
    )
    out["effective_length_lo"].attrs["description"] = (
        f"{level:.0%} percentile interval over {n_boot} hierarchical bootstrap resamples (seeds, then prompts)"
    )
    out.attrs.update(
        threshold=threshold,
        fraction=fraction,
        metric=metric,
        n_boot=n_boot,
        level=level,
        bootstrap_seed=seed,
        method=__doc__.split("\n\n")[1].replace("\n", " "),
    )
    return out


def markdown(ds: xr.Dataset) -> str:
    """One row per (arm, task): both effective lengths with intervals."""
    lines = [
        f"| arm | task | effective length (>= {ds.attrs['threshold']:g}) | "
        f"effective length (>= {ds.attrs['fraction']:g} x own @{int(ds['length'].values[0])}) |",
        "|---|---|---|---|",
    ]
    for task in map(str, ds["task"].values):
        for arm in map(str, ds["arm"].values):
            cell = ds.sel(arm=arm, task=task)
            cols = [
                f"{int(cell['effective_length'].sel(criterion=c))} "
                f"[{int(cell['effective_length_lo'].sel(criterion=c))}, "
                f"{int(cell['effective_length_hi'].sel(criterion=c))}]"
                for c in CRITERIA
            ]
            lines.append(f"| {arm} | {task} | {cols[0]} | {cols[1]} |")
    return "\n".join(lines)
