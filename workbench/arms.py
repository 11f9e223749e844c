"""Training arms: runs that share a config up to the seed, and their results with intervals.

A researcher trains each setting (objective x theta schedule x ablation ...) with several seeds. An *arm*
is the set of runs whose resolved configs (``run.yaml``) are equal once ``name``, ``seed``, ``out_dir`` and
``description`` are left out; it is labelled by the run name without its seed suffix (:func:`parse_arm`,
the one parser of arm names: ``kd-phasewise-s2`` -> ``kd-phasewise``, seed 2). Checkpoints outside any run
directory (a shipped teacher, a plain HF model) are *references*: reported on their own, never pooled.

:func:`retrieval_summary` turns a ``retrieval`` group into per-arm means with hierarchical bootstrap
intervals (``workbench.stats``) and :func:`retrieval_comparisons` into paired differences between arms:
same prompts (the retrieval grid is seeded per cell, so every checkpoint sees the same prompts) and the
same seed index (seeds sorted within each arm).
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import xarray as xr

from workbench import stats
from workbench.runs import RunDir

NOT_ARM_KEYS = ("name", "seed", "out_dir", "description")
SEED_SUFFIX = re.compile(r"[-_.]?(?:s|seed)(\d+)$")
PROTOCOL_ARM = re.compile(r"[a-z]+-[a-z-]+(?:\+[a-z0-9-]+)?")  # <objective>-<schedule>[+<variant>]


@dataclass(frozen=True)
class ArmName:
    """A run name read as an arm and a seed: ``kd-fixed-small+posfree-s1`` -> arm ``kd-fixed-small+posfree``
    (objective ``kd``, schedule ``fixed-small``, variant ``posfree``), seed 1."""

    run: str
    arm: str  # the run name without its seed suffix (the whole name when it has none)
    seed: int | None  # None: no seed suffix

    @property
    def objective(self) -> str:
        return self.arm.partition("-")[0]

    @property
    def schedule(self) -> str:
        return self.arm.partition("-")[2].split("+")[0]

    @property
    def variant(self) -> str:
        return self.arm.partition("+")[2]

    @property
    def is_protocol_arm(self) -> bool:
        """A seeded run named ``<objective>-<schedule>[+<variant>]-s<seed>``, as the demo names its students
        (a teacher or a stage-1 student is not one)."""
        return self.seed is not None and PROTOCOL_ARM.fullmatch(self.arm) is not None


def parse_arm(label: str) -> ArmName:
    """The arm and seed of a run name, a checkpoint label ``<run>/<ckpt>`` or a comparison ``A -> <run>/<ckpt>``
    (its after side). The one parser of arm names."""
    run = str(label).split(" -> ")[-1].split("/")[0]
    match = SEED_SUFFIX.search(run)
    if match is None or match.start() == 0:
        return ArmName(run, run, None)
    return ArmName(run, run[: match.start()], int(match.group(1)))


@dataclass(frozen=True)
class Member:
    """One checkpoint of one run of an arm."""

    checkpoint: str  # the label used in the store
    run: str
    seed: int
    step: int


def arm_key(run_config: dict) -> str:
    """Hash of a resolved run config without the keys that differ between seeds of one arm."""
    rest = {k: v for k, v in run_config.items() if k not in NOT_ARM_KEYS}
    return hashlib.sha256(json.dumps(rest, sort_keys=True, default=str).encode()).hexdigest()[:12]


def group_checkpoints(
    paths: dict[str, str | Path], steps: dict[str, int] | None = None, which: str = "final"
) -> tuple[dict[str, list[Member]], list[str]]:
    """Store labels -> checkpoint paths, grouped into arms: ({arm: members sorted by seed}, references).

    ``which="final"`` keeps, per run, the checkpoint with the highest step (the end of training);
    ``"all"`` keeps every checkpoint (then an arm may hold several per seed: use it for curves only).
    Two different configs with the same label get the config hash appended to tell them apart.
    """
    steps = steps or {}
    by_key: dict[tuple[str, str], list[Member]] = {}
    labels: dict[str, set[str]] = {}
    references = []
    for label, path in paths.items():
        run = RunDir.of_checkpoint(path)
        if run is None:
            references.append(label)
            continue
        cfg = run.config()
        name = parse_arm(str(cfg.get("name", run.path.name))).arm
        key = arm_key(cfg)
        by_key.setdefault((name, key), []).append(
            Member(label, run.path.name, int(cfg.get("seed", 0)), int(steps.get(label, -1)))
        )
        labels.setdefault(name, set()).add(key)
    arms: dict[str, list[Member]] = {}
    for label, keys in sorted(labels.items()):
        for key in sorted(keys):
            members = by_key[(label, key)]
            if which == "final":
                last: dict[str, Member] = {}
                for m in members:
                    if m.run not in last or m.step > last[m.run].step:
                        last[m.run] = m
                members = list(last.values())
            name = label if len(keys) == 1 else f"{label}#{key[:6]}"
            arms[name] = sorted(members, key=lambda m: (m.seed, m.step))
    return arms, references


def retrieval_arms(ds: xr.Dataset, which: str = "final") -> tuple[dict[str, list[Member]], list[str]]:
    """Arms and references of the checkpoints of a ``retrieval`` group (by its ``checkpoint_path``)."""
    names = [str(c) for c in ds["checkpoint"].values]
    if "checkpoint_path" not in ds.coords:
        return {}, names
    paths = dict(zip(names, map(str, ds["checkpoint_path"].values)))
    steps = dict(zip(names, map(int, ds["step"].values))) if "step" in ds.coords else {}
    return group_checkpoints(paths, steps, which)


def _per_seed_prompts(ds: xr.Dataset, members: Sequence[Member], task: str, length: int, metric: str) -> np.ndarray:
    """[seed, prompt] values of one arm at one (task, length): prompts = depth x sample."""
    da = ds[metric].sel(task=task, length=length).astype(np.float64).transpose("checkpoint", "depth", "sample")
    return np.stack([da.sel(checkpoint=m.checkpoint).values.reshape(-1) for m in members])


def retrieval_summary(
    ds: xr.Dataset, *, metric: str = "correct", n_boot: int = stats.N_BOOT, level: float = stats.LEVEL, seed: int = 0
) -> xr.Dataset:
    """Per arm (and per reference model) x task x length: mean, hierarchical-bootstrap interval, the per-seed
    means, and the mean per depth (over seeds and samples). Dims: (arm, task, length[, depth][, seed_index])."""
    arms, refs = retrieval_arms(ds)
    groups = {**{name: members for name, members in arms.items()}, **{ref: [Member(ref, ref, 0, -1)] for ref in refs}}
    if not groups:
        raise ValueError("no checkpoints in the retrieval data")
    tasks = [str(t) for t in ds["task"].values]
    lengths = [int(n) for n in ds["length"].values]
    depths = ds["depth"].values
    n_seed = max(len(m) for m in groups.values())
    shape = (len(groups), len(tasks), len(lengths))
    mean, lo, hi = (np.full(shape, np.nan) for _ in range(3))
    per_seed = np.full((*shape, n_seed), np.nan)
    by_depth = np.full((*shape, len(depths)), np.nan)
    for a, members in enumerate(groups.values()):
        for t, task in enumerate(tasks):
            for n, length in enumerate(lengths):
                x = _per_seed_prompts(ds, members, task, length, metric)
                iv = stats.hierarchical_bootstrap(x, n_boot=n_boot, level=level, seed=seed)
                mean[a, t, n], lo[a, t, n], hi[a, t, n] = iv.mean, iv.lo, iv.hi
                per_seed[a, t, n, : len(members)] = x.mean(axis=1)
                by_depth[a, t, n] = x.reshape(len(members), len(depths), -1).mean(axis=(0, 2))
    dims = ("arm", "task", "length")
    out = xr.Dataset(
        {
            metric: (dims, mean),
            f"{metric}_lo": (dims, lo),
            f"{metric}_hi": (dims, hi),
            f"{metric}_per_seed": ((*dims, "seed_index"), per_seed),
            f"{metric}_by_depth": ((*dims, "depth"), by_depth),
        },
        coords={
            "arm": np.array(list(groups), dtype=object),
            "task": np.array(tasks, dtype=object),
            "length": np.array(lengths, dtype=np.int64),
            "depth": depths,
            "seed_index": np.arange(n_seed),
            "n_seeds": ("arm", np.array([len(m) for m in groups.values()], dtype=np.int64)),
            "seeds": ("arm", np.array([",".join(str(m.seed) for m in ms) for ms in groups.values()], dtype=object)),
            "members": ("arm", np.array([" ".join(m.checkpoint for m in ms) for ms in groups.values()], dtype=object)),
            "is_reference": ("arm", np.array([name in refs for name in groups], dtype=bool)),
        },
    )
    out[metric].attrs["description"] = (
        f"mean of {metric} over seeds and prompts (prompts = depth x sample; the same prompts for every checkpoint)"
    )
    out[f"{metric}_lo"].attrs["description"] = _interval_doc(level, n_boot)
    out.attrs.update(
        method="hierarchical bootstrap: resample seeds, then prompts within each seed",
        level=level,
        n_boot=n_boot,
        bootstrap_seed=seed,
        metric=metric,
        prompts_per_seed=int(ds.sizes["depth"] * ds.sizes["sample"]),
    )
    return out


def effective_length_summary(ds: xr.Dataset, **kw) -> xr.Dataset:
    """Effective lengths (``workbench.evals.effective_length``) of every arm and reference of a ``retrieval``
    group, with intervals from the same hierarchical bootstrap as :func:`retrieval_summary`."""
    from workbench.evals.effective_length import arm_effective_lengths

    arms, refs = retrieval_arms(ds)
    groups = {**{name: [m.checkpoint for m in members] for name, members in arms.items()}, **{r: [r] for r in refs}}
    if not groups:
        raise ValueError("no checkpoints in the retrieval data")
    out = arm_effective_lengths(ds, groups, **kw)
    return out.assign_coords(is_reference=("arm", np.array([name in refs for name in groups], dtype=bool)))


def _interval_doc(level: float, n_boot: int) -> str:
    return (
        f"{level:.0%} percentile interval, {n_boot} hierarchical bootstrap resamples "
        "(seeds, then prompts within each seed)"
    )


def parse_comparison(text: str) -> tuple[str, str]:
    """``"kd-phasewise - ce-phasewise"`` (or ``A:B``) -> (A, B)."""
    for sep in (" - ", ":"):
        if sep in text:
            a, b = (s.strip() for s in text.split(sep, 1))
            if a and b:
                return a, b
    raise ValueError(f"comparison {text!r}: write it as 'ARM_A - ARM_B' or 'ARM_A:ARM_B'")


def retrieval_comparisons(
    ds: xr.Dataset,
    pairs: Iterable[tuple[str, str]],
    *,
    metric: str = "correct",
    questions: Sequence[str] | None = None,
    n_boot: int = stats.N_BOOT,
    level: float = stats.LEVEL,
    seed: int = 0,
) -> xr.Dataset:
    """Paired differences A - B per task x length (same prompts, same seed index) with hierarchical
    bootstrap intervals. Dims: (comparison, task, length)."""
    arms, _ = retrieval_arms(ds)
    pairs = list(pairs)
    for a, b in pairs:
        for arm in (a, b):
            if arm not in arms:
                raise ValueError(f"comparison {a} - {b}: no arm {arm!r} in the store (arms: {', '.join(arms)})")
    tasks = [str(t) for t in ds["task"].values]
    lengths = [int(n) for n in ds["length"].values]
    shape = (len(pairs), len(tasks), len(lengths))
    mean, lo, hi, p_pos = (np.full(shape, np.nan) for _ in range(4))
    n_pairs = np.zeros(len(pairs), dtype=np.int64)
    for c, (a, b) in enumerate(pairs):
        n_pairs[c] = min(len(arms[a]), len(arms[b]))
        for t, task in enumerate(tasks):
            for n, length in enumerate(lengths):
                iv = stats.paired_bootstrap(
                    _per_seed_prompts(ds, arms[a], task, length, metric),
                    _per_seed_prompts(ds, arms[b], task, length, metric),
                    n_boot=n_boot,
                    level=level,
                    seed=seed,
                )
                mean[c, t, n], lo[c, t, n], hi[c, t, n], p_pos[c, t, n] = iv.mean, iv.lo, iv.hi, iv.p_positive
    dims = ("comparison", "task", "length")
    out = xr.Dataset(
        {
            "difference": (dims, mean),
            "difference_lo": (dims, lo),
            "difference_hi": (dims, hi),
            "p_positive": (dims, p_pos),
        },
        coords={
            "comparison": np.array([f"{a} - {b}" for a, b in pairs], dtype=object),
            "arm_a": ("comparison", np.array([a for a, _ in pairs], dtype=object)),
            "arm_b": ("comparison", np.array([b for _, b in pairs], dtype=object)),
            "question": ("comparison", np.array(list(questions or [""] * len(pairs)), dtype=object)),
            "seed_pairs": ("comparison", n_pairs),
            "task": np.array(tasks, dtype=object),
            "length": np.array(lengths, dtype=np.int64),
        },
    )
    out["difference"].attrs["description"] = f"mean over seed indices and prompts of {metric}(A) - {metric}(B)"
    out["difference_lo"].attrs["description"] = _interval_doc(level, n_boot)
    out["p_positive"].attrs["description"] = "share of bootstrap resamples with a difference > 0"
    out.attrs.update(
        method="paired hierarchical bootstrap over (seed index, prompt) differences",
        level=level,
        n_boot=n_boot,
        bootstrap_seed=seed,
        metric=metric,
    )
    return out


def objective_pairs(arm_names: Iterable[str]) -> list[tuple[str, str]]:
    """KD - CE for every pair of arm labels that differ only in a leading ``kd`` / ``ce`` word."""
    names = set(arm_names)
    return [(n, "ce" + n[2:]) for n in sorted(names) if n.startswith("kd") and "ce" + n[2:] in names]


def seed_interval(values: np.ndarray, **kw) -> stats.Interval:
    """Mean over seeds of per-seed values [seed] with a bootstrap over seeds (one level)."""
    v = np.asarray(values, dtype=np.float64).reshape(-1, 1)
    return stats.hierarchical_bootstrap(v, **kw)


def _markdown(columns: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])


def summary_markdown(summary: xr.Dataset, metric: str = "correct", tasks: Sequence[str] | None = None) -> str:
    """One row per (arm, task): mean [interval] at every length, and the seeds it pools."""
    lengths = [int(n) for n in summary["length"].values]
    rows = []
    for task in tasks or [str(t) for t in summary["task"].values]:
        for arm in map(str, summary["arm"].values):
            cell = summary.sel(arm=arm, task=task)
            rows.append(
                [arm, task, str(int(cell["n_seeds"]))]
                + [
                    f"{float(cell[metric].sel(length=n)):.2f} [{float(cell[f'{metric}_lo'].sel(length=n)):.2f}, "
                    f"{float(cell[f'{metric}_hi'].sel(length=n)):.2f}]"
                    for n in lengths
                ]
            )
    return _markdown(["arm", "task", "seeds", *[f"@{n}" for n in lengths]], rows)


def comparisons_markdown(comp: xr.Dataset, tasks: Sequence[str] | None = None) -> str:
    """One row per (comparison, task): the paired difference [interval] at every length (* = excludes 0)."""
    lengths = [int(n) for n in comp["length"].values]
    rows = []
    for task in tasks or [str(t) for t in comp["task"].values]:
        for c in map(str, comp["comparison"].values):
            cell = comp.sel(comparison=c, task=task)
            row = [c, task]
            for n in lengths:
                m, lo, hi = (float(cell[v].sel(length=n)) for v in ("difference", "difference_lo", "difference_hi"))
                row.append(f"{m:+.2f} [{lo:+.2f}, {hi:+.2f}]" + ("*" if lo > 0 or hi < 0 else ""))
            rows.append(row)
    return _markdown(["A - B", "task", *[f"@{n}" for n in lengths]], rows)


def members_by_label(labels: Iterable[str]) -> dict[str, list[str]]:
    """Labels along a dim (checkpoints or comparisons) grouped by arm: run name without its seed suffix.
    (For stores without checkpoint paths; :func:`retrieval_arms` groups by config.)"""
    groups: dict[str, list[str]] = {}
    for label in map(str, labels):
        groups.setdefault(parse_arm(label).arm, []).append(label)
    return groups


def arm_means(ds: xr.Dataset, dim: str, *, min_members: int = 1) -> xr.Dataset:
    """Every variable with ``dim``, averaged over the members of each arm (``dim`` -> ``arm``), with the
    member count; arms with fewer than ``min_members`` members are left out."""
    groups = {a: m for a, m in members_by_label(ds[dim].values).items() if len(m) >= min_members}
    if not groups:
        raise ValueError(f"no arm along {dim!r} has {min_members} members")
    numeric = [v for v in ds.data_vars if dim in ds[v].dims and ds[v].dtype.kind in "fiub"]
    means = [ds[numeric].sel({dim: m}).astype(np.float64).mean(dim) for m in groups.values()]
    out = xr.concat(means, dim=xr.DataArray(np.array(list(groups), dtype=object), dims="arm"))
    out = out.assign_coords(
        n_seeds=("arm", np.array([len(m) for m in groups.values()], dtype=np.int64)),
        members=("arm", np.array([" | ".join(m) for m in groups.values()], dtype=object)),
    )
    for name, coord in ds.coords.items():  # per-member coords all members of an arm share (e.g. rope_theta_after)
        if name == dim or dim not in coord.dims:
            continue
        shared = [coord.sel({dim: m}) for m in groups.values()]
        if all(bool((c == c.isel({dim: 0})).all()) for c in shared):
            first = [c.isel({dim: 0}, drop=True) for c in shared]
            out = out.assign_coords({name: (("arm", *first[0].dims), np.stack([c.values for c in first]))})
    out.attrs = {**ds.attrs, "aggregate": f"mean over the seeds of each arm (along {dim})"}
    return out


def band_table(bands: xr.Dataset, var: str = "q_rel_update", **kw) -> xr.Dataset:
    """F3 per arm x band: mean over layers of ``var``, averaged over seeds with a bootstrap interval over
    seeds. ``bands`` is a ``bands`` group (dims comparison, layer, band)."""
    groups = members_by_label(bands["comparison"].values)
    per = bands[var].mean("layer")
    labels = [str(b) for b in bands["band"].values]
    mean, lo, hi = (np.full((len(groups), len(labels)), np.nan) for _ in range(3))
    for a, members in enumerate(groups.values()):
        for b, band in enumerate(labels):
            iv = seed_interval(per.sel(comparison=members, band=band).values, **kw)
            mean[a, b], lo[a, b], hi[a, b] = iv.mean, iv.lo, iv.hi
    dims = ("arm", "band")
    return xr.Dataset(
        {var: (dims, mean), f"{var}_lo": (dims, lo), f"{var}_hi": (dims, hi)},
        coords={
            "arm": np.array(list(groups), dtype=object),
            "band": np.array(labels, dtype=object),
            "n_seeds": ("arm", np.array([len(m) for m in groups.values()], dtype=np.int64)),
        },
        attrs={"method": "mean over layers, then over seeds; 95% bootstrap interval over seeds"},
    )


# ----------------------------------------------------------------------------- the paper's arms and comparisons
# The arms as the shipped configs and the demo name them: ``<objective>-<schedule>[+<ablation>]``, one run per
# seed named ``<arm>-s<seed>`` (read by :func:`parse_arm`). Shared by the demo's comparisons, its report and the
# figure jobs.

OBJECTIVES = ("kd", "ce")
SCHEDULES = ("fixed-small", "fixed-large", "phasewise")  # theta: small, large, sized to each phase (F1)
FIXED_SCHEDULES = SCHEDULES[:2]


def paper_comparisons(arm_names: Iterable[str]) -> list[tuple[str, str, str]]:
    """The paired differences A - B that answer the paper's questions, as (A, B, question), for the arms
    present: KD - CE per theta schedule; phase-wise - each fixed schedule under KD, then under CE; each
    ablation arm (``<base>+<variant>``) - its base arm."""
    names = [str(n) for n in arm_names]
    candidates = [(f"kd-{s}", f"ce-{s}", f"does KD beat CE under the {s} schedule?") for s in SCHEDULES]
    candidates += [
        (f"{o}-phasewise", f"{o}-{fixed}", f"F1: does phase-wise theta beat {fixed} under {o.upper()}?")
        for o in OBJECTIVES
        for fixed in FIXED_SCHEDULES
    ]
    candidates += [
        (a, a.split("+")[0], f"ablation: what does {a.split('+')[1]} change against its base arm?")
        for a in names
        if "+" in a
    ]
    return [(a, b, q) for a, b, q in candidates if a in names and b in names]
