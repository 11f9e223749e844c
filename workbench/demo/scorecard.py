"""The demo's continuous scorecard: what loss and KL-to-teacher by position, effective lengths and the pair
updates tracked during training add to the retrieval verdicts (a REPORT.md section).

Position regions on the held-out long documents (one document per window, twice the extension window long):
inside the training documents (< 256 tokens), beyond them inside the 1024-token window, beyond the window.
Arm values pool seeds and documents (hierarchical bootstrap: seeds, then documents within each seed); paired
differences pair the same seed index and the same documents.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import xarray as xr

from workbench import arms as A
from workbench import stats
from workbench import store as wstore
from workbench.evals import effective_length
from workbench.evals import position_loss as pl
from workbench.train import pair_tracking

REGIONS = (256, 1024)


def groups_of(ds: xr.Dataset) -> dict[str, list[str]]:
    """Arm (or reference model) -> its checkpoint labels, seeds in order."""
    names = [str(c) for c in ds["checkpoint"].values]
    paths = dict(zip(names, map(str, ds["checkpoint_path"].values)))
    arms, refs = A.group_checkpoints(paths, dict(zip(names, map(int, ds["step"].values))))
    return {**{r: [r] for r in refs}, **{a: [m.checkpoint for m in ms] for a, ms in arms.items()}}


def _per_doc(ds: xr.Dataset, var: str, tokens: str) -> xr.DataArray:
    return (ds[f"{var}_sum"] / ds["count"].where(ds["count"] > 0)).sel(tokens=tokens)


def region_table(ds: xr.Dataset, groups: dict[str, list[str]], *, tokens: str = "answers") -> list[str]:
    """Markdown: per arm and region, loss and KL to the teacher, mean [95 % interval] over seeds x documents."""
    regions = [str(b) for b in ds["position_bucket"].values]
    lines = [
        "| arm | seeds | "
        + " | ".join(f"loss {r}" for r in regions)
        + " | "
        + " | ".join(f"KL {r}" for r in regions)
        + " |",
        "|---|---|" + "---|" * (2 * len(regions)),
    ]
    for arm, members in groups.items():
        row = [arm, str(len(members))]
        for var in ("loss", "kl"):
            x = _per_doc(ds, var, tokens)
            for r in regions:
                v = np.stack([x.sel(checkpoint=c, position_bucket=r).values for c in members])  # [seed, doc]
                iv = stats.hierarchical_bootstrap(v[:, np.isfinite(v).all(axis=0)])  # documents with tokens there
                row.append(f"{iv.mean:.3f} [{iv.lo:.3f}, {iv.hi:.3f}]")
        lines.append("| " + " | ".join(row) + " |")
    return lines


def paired_table(
    ds: xr.Dataset, groups: dict[str, list[str]], pairs: Sequence[tuple[str, str]], *, tokens: str = "answers"
) -> tuple[list[str], dict[str, list[stats.Interval]]]:
    """Markdown of the paired differences A - B in KL to the teacher and in loss per region (* = excludes 0),
    and the KL intervals by comparison."""
    regions = [str(b) for b in ds["position_bucket"].values]
    lines = [
        "| A - B | " + " | ".join(f"KL {r}" for r in regions) + " | " + " | ".join(f"loss {r}" for r in regions) + " |",
        "|---|" + "---|" * (2 * len(regions)),
    ]
    kl = {}
    for a, b in pairs:
        if a not in groups or b not in groups:
            continue
        cells = []
        for var in ("kl", "loss"):
            ivs = pl.paired_difference(ds, groups[a], groups[b], var=var, tokens=tokens)
            if var == "kl":
                kl[f"{a} - {b}"] = ivs
            cells += [
                f"{iv.mean:+.3f} [{iv.lo:+.3f}, {iv.hi:+.3f}]" + ("*" if iv.excludes_zero() else "") for iv in ivs
            ]
        lines.append(f"| {a} - {b} | " + " | ".join(cells) + " |")
    return lines, kl


def tracked_f3(run_dirs: dict[str, Path]) -> list[str]:
    """Per run: the extension phase's tracked W_q update, mean over layers and heads, of the pairs below the
    phase's critical pair and of the pairs from it on, at each tracked step."""
    lines = []
    for name, run_dir in run_dirs.items():
        recs = [r for r in pair_tracking.read_records(run_dir) if r.get("critical_pair") is not None]
        if not recs:
            continue
        phase = recs[-1]["phase"]
        parts = []
        for r in (r for r in recs if r["phase"] == phase):
            by_pair = np.asarray(r["q_rel_update"], dtype=np.float64).mean(axis=(0, 1))
            c = r["critical_pair"]
            parts.append(f"step {r['step']}: {by_pair[:c].mean():.4f} / {by_pair[c:].mean():.4f}")
        rho = stats.index_spearman(np.asarray(recs[-1]["q_rel_update"], dtype=np.float64).mean(axis=(0, 1)))
        lines.append(
            f"- `{name}` (phase {phase!r}, critical pair {recs[-1]['critical_pair']}; W_q update below / "
            f"from the critical pair): " + "; ".join(parts) + f"; Spearman(pair index, update) at the end "
            f"{float(rho):+.2f}"
        )
    return lines


def _retrieval_verdict(comp: xr.Dataset | None, name: str) -> str:
    """Where the retrieval paired differences of a comparison exclude 0 (task@length), in words."""
    if comp is None or name not in comp["comparison"].values:
        return "not compared"
    cell = comp.sel(comparison=name)
    hits = [
        f"{t}@{int(n)}"
        for t in map(str, cell["task"].values)
        for n in cell["length"].values
        if float(cell["difference_lo"].sel(task=t, length=n)) > 0
        or float(cell["difference_hi"].sel(task=t, length=n)) < 0
    ]
    return ("differs (interval excludes 0) at " + ", ".join(hits)) if hits else "differs at no task and length"


def section(store: Path, run_dirs: dict[str, Path], pairs: Sequence[tuple[str, str]]) -> list[str]:
    """The REPORT.md section: loss / KL by position per arm, paired differences, effective lengths, F3 over steps."""
    lines: list[str] = []
    if wstore.has_group(store, wstore.POSITION_LOSS):
        ds = wstore.open_group(store, wstore.POSITION_LOSS).load()
        coarse = pl.regroup(ds, [e for e in REGIONS if e < int(ds["bucket_stop"].values[-1])])
        groups = groups_of(coarse)
        lines += [
            f"Held-out long documents ({ds.attrs.get('n_documents', '?')} synthetic documents of "
            f"{ds.attrs.get('length', '?')} tokens, seeded apart from training; answer tokens: query answers "
            "and recurring spans): loss and KL(teacher || model), mean [95 % interval] over seeds x "
            "documents, by position of the predicted token.",
            "",
            *region_table(coarse, groups),
            "",
            "Paired differences (same seed index, same documents; * = interval excludes 0). Negative KL "
            "difference = A is closer to the teacher.",
            "",
        ]
        table, kl = paired_table(coarse, groups, pairs)
        lines += table + [""]
        comp = (
            wstore.open_group(store, wstore.ARM_COMPARISONS).load()
            if wstore.has_group(store, wstore.ARM_COMPARISONS)
            else None
        )
        lines += ["What this adds to the retrieval verdicts:", ""]
        for name, ivs in kl.items():
            regions = list(map(str, coarse["position_bucket"].values))
            sep = [f"{r} ({iv.mean:+.3f})" for r, iv in zip(regions, ivs) if iv.excludes_zero()]
            lines.append(
                f"- `{name}`: retrieval {_retrieval_verdict(comp, name)}; KL to the teacher separates in "
                f"{', '.join(sep) if sep else 'no region'}."
            )
        lines.append("")
    eff = (
        wstore.open_group(store, wstore.ARM_EFFECTIVE_LENGTH).load()
        if wstore.has_group(store, wstore.ARM_EFFECTIVE_LENGTH)
        else None
    )
    if eff is not None:
        lines += [
            "Effective lengths (longest evaluated length whose accuracy and every shorter one's stay above the "
            "line; 0 = the shortest fails; [95 % interval] from the retrieval bootstrap):",
            "",
            effective_length.markdown(eff),
            "",
        ]
    f3 = tracked_f3(run_dirs)
    if f3:
        lines += ["F3 over training steps (pair updates tracked during the extension phase, seed 0):", "", *f3, ""]
    return lines or ["(no position-loss, effective-length or tracked pair-update results)"]
