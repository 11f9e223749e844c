"""RoPE spectrum math as pure functions of (theta, head_dim[, scaling]).

Convention (Hugging Face half-split layout): pair j of a head is dimensions (j, j + d/2), rotated by
omega_j * position with omega_j = theta^(-2j/d) (before any scaling). Everything per-dimension in the
workbench is indexed by pair j and labelled with its wavelength lambda_j = 2*pi/omega_j (in tokens).

`scaling` is a transformers-style ``rope_parameters`` dict without ``rope_theta``, e.g.
``{"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 2048}``.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

SCALING_TYPES = ("default", "linear", "dynamic", "yarn", "longrope", "llama3")


def _check(theta: float, head_dim: int) -> None:
    if not theta > 0:
        raise ValueError(f"rope theta must be > 0, got {theta}")
    if head_dim <= 0 or head_dim % 2:
        raise ValueError(f"head_dim must be a positive even number, got {head_dim}")


def _base_inv_freq(theta: float, dim: int) -> np.ndarray:
    return 1.0 / (theta ** (np.arange(0, dim, 2, dtype=np.float64) / dim))


def inv_freq(
    theta: float,
    head_dim: int,
    scaling: Mapping[str, Any] | None = None,
    *,
    max_position_embeddings: int | None = None,
    seq_len: int | None = None,
) -> np.ndarray:
    """Angular frequency omega_j (radians per token) of each RoPE pair, shape (head_dim // 2,).

    Matches transformers' ``ROPE_INIT_FUNCTIONS`` for every scaling type. ``max_position_embeddings`` is
    needed by "dynamic" (and "yarn"/"longrope" when ``factor`` is absent); ``seq_len`` selects the
    dynamic-NTK length or LongRoPE's long factors.
    """
    _check(theta, head_dim)
    scaling = dict(scaling or {})
    kind = scaling.get("rope_type", scaling.get("type", "default"))
    if kind not in SCALING_TYPES:
        raise ValueError(f"unknown rope scaling type {kind!r}; known: {', '.join(SCALING_TYPES)}")
    dim = int(head_dim * scaling.get("partial_rotary_factor", 1.0))
    base = _base_inv_freq(theta, dim)
    if kind == "default":
        return base
    if kind == "linear":
        return base / float(scaling["factor"])
    if kind == "dynamic":
        if max_position_embeddings is None:
            raise ValueError("dynamic NTK scaling needs max_position_embeddings")
        factor = float(scaling["factor"])
        length = max(seq_len or max_position_embeddings, max_position_embeddings)
        new_theta = theta * ((factor * length / max_position_embeddings) - (factor - 1)) ** (dim / (dim - 2))
        return _base_inv_freq(new_theta, dim)
    if kind == "llama3":
        factor = float(scaling["factor"])
        low, high = float(scaling["low_freq_factor"]), float(scaling["high_freq_factor"])
        old_len = float(scaling["original_max_position_embeddings"])
        wavelen = 2 * math.pi / base
        out = np.where(wavelen > old_len / low, base / factor, base)
        smooth = (old_len / wavelen - low) / (high - low)
        smoothed = (1 - smooth) * out / factor + smooth * out
        medium = ~(wavelen < old_len / high) & ~(wavelen > old_len / low)
        return np.where(medium, smoothed, out)
    if kind == "yarn":
        orig = float(scaling["original_max_position_embeddings"])
        factor = scaling.get("factor") or max_position_embeddings / orig
        beta_fast = scaling.get("beta_fast") or 32
        beta_slow = scaling.get("beta_slow") or 1

        def correction_dim(rotations: float) -> float:
            return dim * math.log(orig / (rotations * 2 * math.pi)) / (2 * math.log(theta))

        low, high = correction_dim(beta_fast), correction_dim(beta_slow)
        if scaling.get("truncate", True):
            low, high = math.floor(low), math.ceil(high)
        low, high = max(low, 0), min(high, dim - 1)
        if low == high:
            high += 0.001
        ramp = np.clip((np.arange(dim // 2, dtype=np.float64) - low) / (high - low), 0, 1)
        extrapolation = 1 - ramp
        return (base / factor) * (1 - extrapolation) + base * extrapolation
    # longrope
    orig = scaling["original_max_position_embeddings"]
    factors = scaling["long_factor"] if seq_len and seq_len > orig else scaling["short_factor"]
    return base / np.asarray(factors, dtype=np.float64)


def attention_factor(scaling: Mapping[str, Any] | None, *, max_position_embeddings: int | None = None) -> float:
    """The cos/sin multiplier transformers applies for a scaling type (YaRN's mscale, LongRoPE's factor)."""
    scaling = dict(scaling or {})
    kind = scaling.get("rope_type", scaling.get("type", "default"))
    if scaling.get("attention_factor") is not None:
        return float(scaling["attention_factor"])
    if kind == "yarn":
        orig = scaling["original_max_position_embeddings"]
        factor = scaling.get("factor") or max_position_embeddings / orig

        def mscale(scale: float, m: float = 1.0) -> float:
            return 1.0 if scale <= 1 else 0.1 * m * math.log(scale) + 1.0

        if scaling.get("mscale") and scaling.get("mscale_all_dim"):
            return mscale(factor, scaling["mscale"]) / mscale(factor, scaling["mscale_all_dim"])
        return mscale(factor)
    if kind == "longrope":
        orig = scaling["original_max_position_embeddings"]
        factor = scaling.get("factor") or max_position_embeddings / orig
        return 1.0 if factor <= 1 else math.sqrt(1 + math.log(factor) / math.log(orig))
    return 1.0


def wavelengths(theta: float, head_dim: int, scaling: Mapping[str, Any] | None = None, **kw: Any) -> np.ndarray:
    """Wavelength lambda_j = 2*pi/omega_j of each pair, in tokens."""
    return 2 * math.pi / inv_freq(theta, head_dim, scaling, **kw)


def wavelength_mask(
    frequencies: np.ndarray, min_wavelength: float = 0.0, max_wavelength: float = math.inf
) -> np.ndarray:
    """Boolean mask [d/2] of the pairs whose wavelength 2*pi/omega_j lies in [min_wavelength, max_wavelength]
    (inclusive), from the frequencies omega_j themselves: `inv_freq` or the ones a model really runs with."""
    lam = 2 * math.pi / np.asarray(frequencies)
    return (lam >= min_wavelength) & (lam <= max_wavelength)


def pairs_in_wavelengths(
    theta: float,
    head_dim: int,
    min_wavelength: float = 0.0,
    max_wavelength: float = math.inf,
    scaling: Mapping[str, Any] | None = None,
) -> np.ndarray:
    """Indices j of the pairs whose wavelength at ``theta`` lies in [min_wavelength, max_wavelength] (inclusive)."""
    return np.flatnonzero(wavelength_mask(inv_freq(theta, head_dim, scaling), min_wavelength, max_wavelength))


def pair_dims(pairs: Sequence[int] | np.ndarray, head_dim: int) -> np.ndarray:
    """The dims of a head that pairs ``pairs`` occupy: ``[*pairs, *(pairs + d/2)]`` (pair j = dims j, j + d/2).
    Row h*d + these are the pairs' rows of head h in a q/k projection."""
    _check(1.0, head_dim)
    idx = np.asarray(pairs, dtype=np.int64).reshape(-1)
    half = head_dim // 2
    if idx.size and (idx.min() < 0 or idx.max() >= half):
        raise ValueError(f"pair indices must be in [0, {half}), got {idx.tolist()}")
    return np.concatenate([idx, idx + half])


def pair_view(x, dim: int = -1):
    """View axis ``dim`` (size d, a head's dims) of a torch tensor or numpy array as RoPE pairs: that axis
    becomes two, (2, d/2), so ``v[..., 0, j, ...]`` is dim j and ``v[..., 1, j, ...]`` is dim j + d/2 of
    pair j. A reshape (a view of a contiguous input, no arithmetic); ``[..., d] -> [..., 2, d/2]`` by default."""
    axis = dim % x.ndim
    d = x.shape[axis]
    _check(1.0, d)
    return x.reshape(*x.shape[:axis], 2, d // 2, *x.shape[axis + 1 :])


def critical_dimension(theta: float, head_dim: int, train_length: int) -> int:
    """Critical dimension d_extra = 2*ceil((d/2) * log_theta(L / (2*pi))) of arXiv 2310.05209.

    Dimensions below it (pairs j < d_extra/2) complete a full period within L and are seen at every
    phase during training; pairs at or above it do not and extrapolate poorly beyond L.
    """
    _check(theta, head_dim)
    value = 2 * math.ceil((head_dim / 2) * math.log(train_length / (2 * math.pi)) / math.log(theta))
    return int(min(max(value, 0), head_dim))


def critical_pair(theta: float, head_dim: int, train_length: int) -> int:
    """Index of the first pair that does not complete a full rotation within train_length."""
    return critical_dimension(theta, head_dim, train_length) // 2


def first_pair_beyond(frequencies: np.ndarray, train_length: int) -> int:
    """:func:`critical_pair` from the frequencies a model runs with (its theta and any RoPE scaling): the first
    pair whose wavelength 2*pi/omega_j reaches train_length (d/2 when none does)."""
    beyond = np.flatnonzero(2 * math.pi / np.asarray(frequencies, dtype=np.float64) >= train_length)
    return int(beyond[0]) if beyond.size else len(frequencies)


def theta_for_target_length(theta: float, train_length: int, target_length: int) -> float:
    """The theta that keeps the critical dimension of (theta, train_length) when the context grows to
    target_length (arXiv 2310.05209): theta' = theta ** (log(T/2pi) / log(L/2pi)), independent of d."""
    if not theta > 0:
        raise ValueError(f"rope theta must be > 0, got {theta}")
    if train_length <= 2 * math.pi or target_length <= 2 * math.pi:
        raise ValueError("lengths must exceed 2*pi tokens")
    return float(theta ** (math.log(target_length / (2 * math.pi)) / math.log(train_length / (2 * math.pi))))


def theta_for_full_rotation(head_dim: int, length: int) -> float:
    """The largest theta at which every pair (the last one, j = d/2 - 1, included) completes a full
    rotation within ``length`` tokens: lambda_{d/2-1} = 2*pi*theta^((d-2)/d) = length."""
    _check(1.0 + 1e-9, head_dim)
    if head_dim == 2:
        return math.inf
    return float((length / (2 * math.pi)) ** (head_dim / (head_dim - 2)))


def long_range_sum(theta: float, head_dim: int, length: int) -> np.ndarray:
    """B(m) = sum_j cos(m * omega_j) for m = 0..length (arXiv 2405.14591, eq. for the base bound)."""
    m = np.arange(length + 1, dtype=np.float64)[:, None]
    return np.cos(m * inv_freq(theta, head_dim)[None, :]).sum(axis=1)


BOUND_STEPS_PER_DECADE = 10_000  # the base bound's grid: theta_k = 10 ** (k / 10000)
BOUND_RESOLUTION = 10 ** (1 / BOUND_STEPS_PER_DECADE) - 1  # its relative step: 0.023 %
BOUND_DECADES = (0, 12)  # scanned by default: theta in [1, 1e12]
BOUND_TABLE = Path(__file__).resolve().parents[1] / "data" / "rope" / "base_lower_bound.csv"
BOUND_GRID_LABEL = f"log grid 10^(k/{BOUND_STEPS_PER_DECADE}), relative step {BOUND_RESOLUTION:.3%}"
_WITNESSES = 32  # how many recently failing m are tried first at the next theta


def bound_grid(
    lo_decade: int = BOUND_DECADES[0], hi_decade: int = BOUND_DECADES[1], steps_per_decade: int = BOUND_STEPS_PER_DECADE
) -> np.ndarray:
    """The grid that defines the base bound: theta_k = 10 ** (k / steps_per_decade), both ends included."""
    k = np.arange(lo_decade * steps_per_decade, hi_decade * steps_per_decade + 1, dtype=np.float64)
    return 10.0 ** (k / steps_per_decade)


def _sums_at(m: np.ndarray, omega: np.ndarray) -> np.ndarray:
    """B(m) at the given m, in long_range_sum's arithmetic (the reference)."""
    return np.cos(m[:, None] * omega[None, :]).sum(axis=1)


def _fast_sums(omega: np.ndarray, length: int) -> np.ndarray:
    """B(m) for m = 0..length by angle addition over m = m0 + k: two sqrt(L)-sized matmuls, few cosines."""
    block = max(16, math.isqrt(length + 1))
    k = np.arange(block, dtype=np.float64)[:, None] * omega
    m0 = np.arange(0, length + 1, block, dtype=np.float64)[:, None] * omega
    return (np.cos(m0) @ np.cos(k).T - np.sin(m0) @ np.sin(k).T).reshape(-1)[: length + 1]


def _slack(head_dim: int, length: int) -> float:
    """More than the rounding gap between the reference B(m) and _fast_sums or _upper_sums (~ d/2 eps L)."""
    return 64.0 * head_dim * (length + 1) * float(np.finfo(np.float64).eps) + 1e-12


def _upper_sums(m: np.ndarray, omega_small: np.ndarray, omega_large: np.ndarray) -> np.ndarray:
    """Upper bound on B(m) for every theta between two: per pair, the largest cosine on the phase interval
    [m omega_small, m omega_large] (1 where it holds a multiple of 2 pi)."""
    lo, hi = m[:, None] * omega_small, m[:, None] * omega_large
    turn = np.floor(hi * (0.5 / math.pi)) > np.floor(lo * (0.5 / math.pi))  # lo on a multiple: cos(lo) = 1 anyway
    return np.where(turn, 1.0, np.maximum(np.cos(lo), np.cos(hi))).sum(axis=1)


def _remember(witnesses: dict[int, None], m: int) -> None:
    witnesses.pop(m, None)
    witnesses[m] = None  # most recently failing last
    while len(witnesses) > _WITNESSES:
        witnesses.pop(next(iter(witnesses)))


def _point_fails(omega: np.ndarray, length: int, floor: float, slack: float, witnesses: dict[int, None]) -> bool:
    """Whether B(m) < floor for some m <= length, as the reference arithmetic decides it."""
    if witnesses:
        m = np.fromiter(witnesses, np.float64)
        bad = np.flatnonzero(_sums_at(m, omega) < floor)
        if bad.size:
            _remember(witnesses, int(m[bad[0]]))
            return True
    sums = _fast_sums(omega, length)
    worst = int(np.argmin(sums))
    if sums[worst] < floor - slack:
        _remember(witnesses, worst)
        return True
    near = np.flatnonzero(sums < floor + slack)  # too close to call: recompute them as the reference does
    if near.size and (exact := _sums_at(near.astype(np.float64), omega)).min() < floor:
        _remember(witnesses, int(near[np.argmin(exact)]))
        return True
    return False


def _interval_fails(
    omega_a: np.ndarray,
    omega_b: np.ndarray,
    length: int,
    floor: float,
    slack: float,
    witnesses: dict[int, None],
    probe: int = 32,
) -> bool:
    """True only if every theta between theta_a < theta_b fails at one m: the latest witness, another
    witness, else some m <= probe."""
    recent = np.fromiter(witnesses, np.float64)
    for m in (recent[-1:], recent[:-1], np.arange(min(length, probe) + 1, dtype=np.float64)):
        if m.size and (_upper_sums(m, omega_b, omega_a) < floor - slack).any():
            return True
    return False


def scan_base_bound(head_dim: int, length: int, thetas: Sequence[float], tolerance: float = 0.0) -> int | None:
    """Index of the first theta of the increasing grid ``thetas`` with B(m) >= -tolerance for all m <= length
    (None if none): what testing each grid point in turn gives. Stretches of the grid where one m fails
    throughout (an upper bound on B(m) there is < 0) are skipped at once; the rest is halved down to points."""
    grid = np.asarray(thetas, dtype=np.float64)
    if grid.ndim != 1 or grid.size == 0 or np.any(np.diff(grid) <= 0):
        raise ValueError("thetas must be a non-empty, strictly increasing sequence")
    floor, slack = -float(tolerance), _slack(head_dim, length)
    omegas: dict[int, np.ndarray] = {}

    def omega(i: int) -> np.ndarray:
        if i not in omegas:
            omegas[i] = inv_freq(float(grid[i]), head_dim)
        return omegas[i]

    witnesses: dict[int, None] = {}
    block = 256
    stack = [(a, min(a + block, grid.size) - 1) for a in range(0, grid.size, block)][::-1]
    while stack:
        a, b = stack.pop()
        if a == b:
            if not _point_fails(omega(a), length, floor, slack, witnesses):
                return a
        elif not _interval_fails(omega(a), omega(b), length, floor, slack, witnesses):
            mid = (a + b) // 2
            stack += [(mid + 1, b), (a, mid)]
    return None


@functools.lru_cache(maxsize=1)
def shipped_base_bounds() -> dict[tuple[int, int], float]:
    """(head_dim, length) -> base bound from data/rope/base_lower_bound.csv (analyses/base_bound_table.py),
    rows at this grid's resolution only; {} without the file."""
    if not BOUND_TABLE.is_file():
        return {}
    lines = [line.split(",") for line in BOUND_TABLE.read_text().splitlines() if line and not line.startswith("#")]
    col = {name: i for i, name in enumerate(lines[0])}
    return {
        (int(r[col["head_dim"]]), int(r[col["length"]])): float(r[col["base_lower_bound"]])
        for r in lines[1:]
        if int(r[col["steps_per_decade"]]) == BOUND_STEPS_PER_DECADE
    }


def base_lower_bound(
    head_dim: int, length: int, *, thetas: Sequence[float] | None = None, tolerance: float = 0.0
) -> float:
    """Base lower bound of arXiv 2405.14591 at a stated resolution: the first theta of the log grid
    :func:`bound_grid` (10 ** (k / 10000), relative step BOUND_RESOLUTION = 0.023 %, theta in [1, 1e12]) with
    B(m) = sum_j cos(m * omega_j) >= -tolerance for all 0 <= m <= length.

    The passing thetas form narrow windows between failures (more as L grows), so the grid is part of the
    definition. ``thetas`` scans another increasing grid. The shipped table answers its own (head_dim, length).
    """
    if length < 1:
        raise ValueError(f"length must be >= 1, got {length}")
    _check(1.0 + 1e-9, head_dim)
    if thetas is None and tolerance == 0.0 and (hit := shipped_base_bounds().get((head_dim, length))):
        return hit
    grid = bound_grid() if thetas is None else np.asarray(thetas, dtype=np.float64)
    i = scan_base_bound(head_dim, length, grid, tolerance)
    if i is None:
        raise ValueError(
            f"no theta in the scanned range [{grid[0]:.3g}, {grid[-1]:.3g}] satisfies "
            f"B(m) >= {0.0 - tolerance:g} up to {length}"
        )
    return float(grid[i])


def rotations_within(theta: float, head_dim: int, length: int, scaling: Mapping[str, Any] | None = None) -> np.ndarray:
    """Number of full turns L*omega_j/(2*pi) each pair makes over a context of ``length`` tokens."""
    return length * inv_freq(theta, head_dim, scaling) / (2 * math.pi)


@dataclass(frozen=True)
class Utilisation:
    """How much of the rotational spectrum a context of ``length`` tokens uses."""

    full_rotation_fraction: float  # fraction of pairs completing >= 1 full rotation within length
    mean_coverage: float  # mean over pairs of min(1, L*omega_j/(2*pi))
    n_full_pairs: int  # pairs completing a rotation (= critical pair index for a non-integer bound)


def utilisation(theta: float, head_dim: int, length: int, scaling: Mapping[str, Any] | None = None) -> Utilisation:
    """Spectrum utilisation of (theta, d, L): the paper's "rotational spectrum utilisation", measured two ways."""
    turns = rotations_within(theta, head_dim, length, scaling)
    return Utilisation(
        full_rotation_fraction=float((turns >= 1).mean()),
        mean_coverage=float(np.minimum(1.0, turns).mean()),
        n_full_pairs=int((turns >= 1).sum()),
    )


def band_edges_label(context_lengths: Sequence[int]) -> list[str]:
    """Names of the bands for sorted context lengths L1 < L2 < ...: 'lambda<=L1', 'L1<lambda<=L2', ..., 'lambda>Ln'."""
    lengths = sorted(int(x) for x in context_lengths)
    labels = [f"lambda<={lengths[0]}"]
    labels += [f"{a}<lambda<={b}" for a, b in zip(lengths, lengths[1:])]
    labels.append(f"lambda>{lengths[-1]}")
    return labels


def assign_bands(
    theta: float, head_dim: int, context_lengths: Sequence[int], scaling: Mapping[str, Any] | None = None
) -> np.ndarray:
    """Band index of each pair: 0 if its wavelength fits in the shortest context (rotates fully there),
    k if it fits in the (k+1)-th context but not the k-th, len(context_lengths) if it fits in none."""
    return wavelength_bands(wavelengths(theta, head_dim, scaling), context_lengths)


def wavelength_bands(lam: np.ndarray, context_lengths: Sequence[int]) -> np.ndarray:
    """:func:`assign_bands` from the wavelengths themselves (e.g. the scaled ones a store records), any shape."""
    if not context_lengths:
        raise ValueError("context_lengths must not be empty")
    lengths = np.sort(np.asarray(context_lengths, dtype=np.float64))
    return np.searchsorted(lengths, np.asarray(lam), side="left").astype(np.int64)


def spectrum_table(theta: float, head_dim: int, length: int, scaling: Mapping[str, Any] | None = None) -> list[dict]:
    """One row per pair: index, dims, omega, wavelength, turns within length, and whether it completes one."""
    omega = inv_freq(theta, head_dim, scaling)
    half = head_dim // 2
    turns = length * omega / (2 * math.pi)
    return [
        {
            "pair": j,
            "dims": (j, j + half),
            "omega": float(omega[j]),
            "wavelength": float(2 * math.pi / omega[j]),
            "turns": float(turns[j]),
            "full_rotation": bool(turns[j] >= 1),
        }
        for j in range(half)
    ]


def format_spectrum(theta: float, head_dim: int, length: int, scaling: Mapping[str, Any] | None = None) -> str:
    """Human-readable per-pair table plus summary numbers (what `workbench rope` prints)."""
    rows = spectrum_table(theta, head_dim, length, scaling)
    util = utilisation(theta, head_dim, length, scaling)
    lines = [
        f"RoPE spectrum: theta={theta:g} head_dim={head_dim} length={length} scaling={dict(scaling or {}) or 'none'}"
    ]
    lines.append(f"{'pair':>4} {'dims':>11} {'omega':>12} {'wavelength':>13} {'turns in L':>12}  full")
    for r in rows:
        dims = f"({r['dims'][0]},{r['dims'][1]})"
        mark = "yes" if r["full_rotation"] else "-"
        lines.append(
            f"{r['pair']:>4} {dims:>11} {r['omega']:>12.6g} {r['wavelength']:>13.6g} {r['turns']:>12.4g}  {mark}"
        )
    lines.append("")
    lines.append(
        f"critical dimension (2310.05209): {critical_dimension(theta, head_dim, length)}"
        f"  -> critical pair {critical_pair(theta, head_dim, length)}"
    )
    lines.append(f"largest theta with every pair rotating within L: {theta_for_full_rotation(head_dim, length):.6g}")
    lines.append(f"pairs completing >= 1 rotation in L: {util.full_rotation_fraction:.3f}")
    lines.append(f"mean coverage min(1, L*omega/2pi): {util.mean_coverage:.3f}")
    return "\n".join(lines)
