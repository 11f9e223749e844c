"""Statistics over results: intervals over seeds and prompts (the hierarchical, two-level bootstrap) and the
rank correlation of a per-pair quantity with the pair index.

A training arm is run with several seeds and each seed is scored on the same prompts. The variation that
matters has two levels (which seed, which prompts), so a resample first draws seeds with replacement, then
prompts with replacement within each drawn seed, and takes the mean. A paired comparison of two arms
bootstraps the per-(seed index, prompt) differences the same way: the same prompts and the same seed
index on both sides, so what they share cancels.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

N_BOOT = 2000
LEVEL = 0.95


@dataclass(frozen=True)
class Interval:
    """A mean with a percentile bootstrap interval and the share of resamples above zero."""

    mean: float
    lo: float
    hi: float
    p_positive: float

    def excludes_zero(self) -> bool:
        return self.lo > 0 or self.hi < 0

    def __str__(self) -> str:
        return f"{self.mean:.2f} [{self.lo:.2f}, {self.hi:.2f}]"


def hierarchical_bootstrap(
    values: np.ndarray, *, n_boot: int = N_BOOT, level: float = LEVEL, seed: int = 0
) -> Interval:
    """Mean of ``values`` [seed, prompt] with a two-level bootstrap interval (seeds, then prompts within
    each seed). NaN rows (a seed not scored) are dropped; one seed gives a prompt-only interval."""
    x = np.asarray(values, dtype=np.float64)
    if x.ndim != 2:
        raise ValueError(f"need values shaped [seed, prompt], got shape {x.shape}")
    x = x[~np.isnan(x).any(axis=1)]
    if x.size == 0:
        return Interval(np.nan, np.nan, np.nan, np.nan)
    means = resampled_means(x, n_boot=n_boot, seed=seed)
    tail = (1.0 - level) / 2.0
    lo, hi = np.quantile(means, [tail, 1.0 - tail])
    return Interval(float(x.mean()), float(lo), float(hi), float((means > 0).mean()))


def resampled_means(values: np.ndarray, *, n_boot: int = N_BOOT, seed: int = 0) -> np.ndarray:
    """The hierarchical resamples' means of ``values`` [seed, prompt, ...] -> [n_boot, ...]: seeds with
    replacement, then prompts within each seed (the same prompt indices for every trailing entry, so a
    statistic of several cells, e.g. an effective length over lengths, is taken on one joint resample)."""
    x = np.asarray(values, dtype=np.float64)
    n_seeds, n_prompts = x.shape[:2]
    rng = np.random.default_rng(seed)
    seeds = rng.integers(n_seeds, size=(n_boot, n_seeds))
    prompts = rng.integers(n_prompts, size=(n_boot, n_seeds, n_prompts))
    return x[seeds[..., None], prompts].mean(axis=(1, 2))


def paired_bootstrap(a: np.ndarray, b: np.ndarray, **kw) -> Interval:
    """Mean of ``a - b`` (both [seed index, prompt], the same prompts in the same order) with the
    hierarchical interval; seed indices present on only one side are dropped."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape[1:] != b.shape[1:]:
        raise ValueError(f"paired values need the same prompts: shapes {a.shape} and {b.shape}")
    n = min(len(a), len(b))
    return hierarchical_bootstrap(a[:n] - b[:n], **kw)


def average_ranks(values: np.ndarray) -> np.ndarray:
    """Ranks 1..n along the last axis, ties sharing their average rank (as ``scipy.stats.rankdata``)."""
    x = np.asarray(values, dtype=np.float64)
    order = np.argsort(x, axis=-1, kind="stable")
    ranks = np.empty_like(x)
    for row, (xs, o) in enumerate(zip(x.reshape(-1, x.shape[-1]), order.reshape(-1, x.shape[-1]))):
        s = xs[o]
        new = np.r_[True, s[1:] != s[:-1]]
        starts = np.flatnonzero(new)
        ends = np.r_[starts[1:], s.size]
        r = np.empty(s.size)
        r[o] = ((starts + ends + 1) / 2)[np.cumsum(new) - 1]
        ranks.reshape(-1, x.shape[-1])[row] = r
    return ranks


def index_spearman(values: np.ndarray) -> np.ndarray:
    """Spearman rank correlation between the index 0..n-1 and ``values`` along the last axis -> [...]: > 0 when
    later entries (higher pair index) are larger. Ties get average ranks; NaN where a row is constant or
    holds a NaN."""
    x = np.asarray(values, dtype=np.float64)
    out = np.full(x.shape[:-1], np.nan)
    idx = np.arange(x.shape[-1], dtype=np.float64)
    ranks = average_ranks(x)
    for i in np.ndindex(*x.shape[:-1]):
        if np.ptp(x[i]) > 0:  # constant (e.g. no update at all) or NaN: undefined
            out[i] = np.corrcoef(idx, ranks[i])[0, 1]
    return out
