"""REPORT.md for the demo's results: settings, every arm with intervals, each finding's verdict with its
numbers and the figure it rests on (the figures come from :mod:`workbench.figures.jobs`)."""

from __future__ import annotations

import datetime as _dt
from pathlib import Path
from typing import Any

from workbench import arms
from workbench import store as wstore  # the module; `store` is a store path
from workbench.demo import findings
from workbench.evals.tasks import TASKS


def _group(store: Path, name: str):
    return wstore.open_group(store, name).load() if wstore.has_group(store, name) else None


# ------------------------------------------------------------------------------------------- report

BEYOND = "beyond the 256-token documents"


def _interval(mean: float, lo: float, hi: float, f: str = "+.2f") -> str:
    return f"{mean:{f}} [{lo:{f}}, {hi:{f}}]"


def _over_seeds(iv, n_seeds: int, f: str = "+.2f") -> str:
    """A mean over seeds with its interval over seeds (the mean alone for one seed: no [mean, mean])."""
    return _interval(iv.mean, iv.lo, iv.hi, f=f) if n_seeds > 1 else f"{iv.mean:{f}}"


def _seed_verdict(ivs: list, n_seeds: int) -> str:
    """:func:`_verdict` of intervals over seeds; one seed has no interval over seeds, so no verdict."""
    if n_seeds < 2:
        return "**not tested** (one seed: no interval over seeds)"
    return _verdict([(iv.mean, iv.lo, iv.hi) for iv in ivs])


def _difference_at(cell: Any, length: int) -> str:
    """The paired difference and its interval at one length."""
    return _interval(*(float(cell[v].sel(length=length)) for v in ("difference", "difference_lo", "difference_hi")))


def _verdict(diffs: list[tuple[float, float, float]]) -> str:
    """supported: every interval above 0; contradicted: one below 0; else mixed / inconclusive."""
    if not diffs:
        return "not measured"
    if all(lo > 0 for _, lo, _ in diffs):
        return "**supported**"
    if any(hi < 0 for _, _, hi in diffs):
        return "**contradicted**" if not any(lo > 0 for _, lo, _ in diffs) else "**mixed**"
    return "**mixed**" if any(lo > 0 for _, lo, _ in diffs) else "**inconclusive** (intervals include 0)"


def _diff_cells(comp, name: str, task: str, lengths) -> list[tuple[float, float, float]]:
    if comp is None or name not in set(map(str, comp["comparison"].values)):
        return []
    cell = comp.sel(comparison=name, task=task)
    return [
        tuple(float(cell[v].sel(length=n)) for v in ("difference", "difference_lo", "difference_hi")) for n in lengths
    ]


def _fig(figures: dict[str, Path], out: Path, name: str, caption: str) -> list[str]:
    path = figures.get(name)
    return [f"![{caption}]({path.relative_to(out).as_posix()})", ""] if path is not None else []


def f1_section(store: Path, figures: dict[str, Path], out: Path) -> list[str]:
    summary, comp = _group(store, wstore.ARM_RETRIEVAL), _group(store, wstore.ARM_COMPARISONS)
    if summary is None:
        return ["(no retrieval results)"]
    lengths = [int(n) for n in summary["length"].values]
    beyond = [n for n in lengths if n > 256]
    lines = ["### Stage 1 and the teacher (reference models, one checkpoint each)", ""]
    refs = [str(a) for a, r in zip(summary["arm"].values, summary["is_reference"].values) if r]
    lines += [arms.summary_markdown(summary.sel(arm=refs)), ""] if refs else []
    lines += [
        "### Stage 2: every arm at every length (mean [95 % interval], seeds pooled)",
        "",
        arms.summary_markdown(summary.sel(arm=[a for a in map(str, summary["arm"].values) if a not in refs])),
        "",
    ]
    for task in map(str, summary["task"].values):
        lines += _fig(figures, out, f"results/f1_{task}_accuracy_by_arm", f"{task} accuracy by arm")
    if comp is not None:
        lines += [
            "### Paired differences (same prompts, same seed index; * = interval excludes 0)",
            "",
            arms.comparisons_markdown(comp),
            "",
        ]
        for task in map(str, summary["task"].values):
            lines += _fig(figures, out, f"results/f1_{task}_paired_differences", f"{task} paired differences")
    lines += ["### Findings", ""]
    for task in map(str, summary["task"].values):
        lines += teacher_at_chance(summary, refs, task)
        f1 = [_diff_cells(comp, f"kd-phasewise - kd-{fixed}", task, beyond) for fixed in ("fixed-small", "fixed-large")]
        lines.append(
            f"- **F1** ({task}, {BEYOND}: {beyond}) phase-wise theta beats both fixed schedules under KD: "
            f"{_verdict(f1[0] + f1[1])}. phase-wise - fixed-small "
            + ", ".join(f"@{n} {_interval(*d)}" for n, d in zip(beyond, f1[0]))
            + "; phase-wise - fixed-large "
            + ", ".join(f"@{n} {_interval(*d)}" for n, d in zip(beyond, f1[1]))
            + "."
        )
        for sched in ("fixed-small", "fixed-large", "phasewise"):
            d = _diff_cells(comp, f"kd-{sched} - ce-{sched}", task, lengths)
            if d:
                far = [x for n, x in zip(lengths, d) if n in beyond]
                lines.append(
                    f"- **KD vs CE** ({task}, {sched}) KD - CE: {_verdict(far)} "
                    f"{BEYOND}; " + ", ".join(f"@{n} {_interval(*x)}" for n, x in zip(lengths, d)) + "."
                )
    return lines + [""]


def teacher_at_chance(summary, refs: list[str], task: str) -> list[str]:
    """A warning line when every teacher's interval contains the task's guessing rate (one of the ``keys``
    needle values) at every length: then KD has no retrieval skill to transfer on this task, and its
    differences are noise (or side effects of the objective), not evidence for or against the paper."""
    spec = TASKS.get(task)
    teachers = [r for r in refs if r.startswith("teacher")]
    if spec is None or spec.keys < 2 or not teachers:
        return []
    chance = 1.0 / spec.keys
    cells = summary.sel(arm=teachers, task=task)
    if not bool(((cells["correct_lo"] <= chance) & (cells["correct_hi"] >= chance)).all()):
        return []
    means = cells["correct"].values.ravel()
    return [
        f"- *Note on {task}*: the teacher itself sits at the guessing rate (1/{spec.keys} = {chance:.2f}; teacher "
        f"{means.min():.2f}-{means.max():.2f} over lengths): it does not bind keys, so KD has nothing to transfer "
        f"on {task}; read its differences below as noise or side effects, not as evidence either way."
    ]


def f2_section(store: Path, teacher_store: Path, figures: dict[str, Path], out: Path) -> list[str]:
    lines = []
    sig = _group(store, wstore.KD_SIGNAL)
    if sig is not None:
        names = [str(c) for c in sig["checkpoint"].values]
        teacher = [n for n in names if n.startswith("teacher/")]
        for t in teacher:
            cell = sig.sel(checkpoint=t)
            lines.append(
                f"- **Cross-document KD signal** of `{t}` on the students' packed short documents: per token "
                f"KL(causal window || document-masked) mean {float(cell['mean']):.3f} nats, median "
                f"{float(cell['median']):.2g}, p95 {float(cell['p95']):.2f}, the top 5 % of tokens carry "
                f"{float(cell['top5_share']):.0%} of it: the part of the KD target "
                "that CE on short documents cannot see."
            )
        groups = arms.members_by_label([n for n in names if not n.startswith(("teacher/", "students/"))])
        rows = []
        for arm, members in groups.items():
            iv = arms.seed_interval(sig["mean"].sel(checkpoint=members).values)
            rows.append(f"`{arm}` {_over_seeds(iv, len(members), '.2f')}")
        if rows:
            lines.append(
                "- Students' own cross-document dependence (mean KL, interval over seeds): "
                + "; ".join(rows)
                + ". If KD transfers cross-document information, KD arms sit above their CE twins."
            )
        for sched in ("fixed-small", "fixed-large", "phasewise"):
            kd, ce = (
                sorted(groups.get(f"{o}-{sched}", []), key=lambda c: arms.parse_arm(c).seed) for o in ("kd", "ce")
            )
            if kd and len(kd) == len(ce):
                iv = arms.seed_interval(sig["mean"].sel(checkpoint=kd).values - sig["mean"].sel(checkpoint=ce).values)
                lines.append(
                    f"- **KD vs CE, cross-document dependence** ({sched}) KD - CE "
                    f"{_over_seeds(iv, len(kd), '+.3f')} nats (same seed index): KD above CE "
                    f"{_seed_verdict([iv], len(kd))}."
                )
        lines += [""] + _fig(figures, out, "results/f2_cross_document_kl_by_distance", "cross-document KL by distance")
        lines += _fig(figures, out, "results/f2_cross_document_kl_by_kind", "cross-document KL by token kind")
    rep = _group(store, wstore.REPEATED_TOKENS)
    if rep is not None:
        kd = findings.repeated_summary(rep)
        lines.append(
            "- **Repeated tokens**: KD signal between identical copies at different absolute positions: "
            + ", ".join(f"`{c}` {float(v):.4f}" for c, v in zip(kd["checkpoint"].values, kd.values))
            + " nats."
        )
    tr = _group(teacher_store, wstore.TRACES) if Path(teacher_store).exists() else None
    if tr is not None:
        summary = findings.trace_summary(tr)
        for c in map(str, summary["checkpoint"].values):
            lines.append(
                f"- **Perturbations reach the teacher's output**: final-logit KL(clean || perturbed) of `{c}`: "
                + ", ".join(f"{s} {float(summary.sel(checkpoint=c, spec=s)):.2g}" for s in summary["spec"].values)
                + " nats."
            )
    lines += _fig(figures, out, "teacher/f2_lens_kl_by_layer_teacher_tiny-teacher", "teacher logit-lens KL by layer")
    return lines + [""]


def f3_section(store: Path, figures: dict[str, Path], out: Path) -> list[str]:
    bands = _group(store, wstore.BANDS)
    upd = _group(store, wstore.UPDATES_WEIGHTS)
    if bands is None or upd is None:
        return ["(no per-pair updates)"]
    rho = findings.pair_trend(upd)
    labels = [str(b) for b in bands["band"].values]
    long_minus_short = (bands["q_rel_update"].sel(band=labels[-1]) - bands["q_rel_update"].sel(band=labels[0])).mean(
        "layer"
    )
    lines = [f"Per-pair relative W_q update, stage-1 student -> end of extension; bands {labels}.", ""]
    for arm, members in arms.members_by_label(rho["comparison"].values).items():
        r = arms.seed_interval(rho.sel(comparison=members).values)
        d = arms.seed_interval(long_minus_short.sel(comparison=members).values)
        lines.append(
            f"- **F3** `{arm}` (higher-index pairs adapt more): {_seed_verdict([r, d], len(members))}. "
            f"Spearman(pair index, update) {_over_seeds(r, len(members))}; longest-band minus shortest-band "
            f"update {_over_seeds(d, len(members), '+.2g')} ({len(members)} seeds)."
        )
    lines += [""] + _fig(figures, out, "results/f3_band_updates_by_arm", "band updates by arm")
    lines += _fig(figures, out, "results/f3_heatmap_q_kd-phasewise", "kd-phasewise layer x pair update")
    return lines + [""]


def ablation_section(store: Path, figures: dict[str, Path], out: Path) -> list[str]:
    comp, eff = _group(store, wstore.ARM_COMPARISONS), _group(store, wstore.ABLATION_EFFECTS)
    lines = []
    if comp is not None:
        for name in (c for c in map(str, comp["comparison"].values) if "+" in c):
            for task in map(str, comp["task"].values):
                cell = comp.sel(comparison=name, task=task)
                lines.append(
                    f"- **{name}** ({task}): "
                    + ", ".join(f"@{int(n)} {_difference_at(cell, n)}" for n in comp["length"].values)
                )
    if eff is not None:
        for arm in map(str, eff["arm"].values):
            for task in map(str, eff["task"].values):
                parts = []
                for cond in map(str, eff["condition"].values):
                    cell = eff.sel(arm=arm, task=task, condition=cond)
                    parts.append(
                        f"{cond}: " + ", ".join(f"@{int(n)} {_difference_at(cell, n)}" for n in eff["length"].values)
                    )
                lines.append(f"- **Band interventions** `{arm}` ({task}, change against clean): " + "; ".join(parts))
        for task in map(str, eff["task"].values):
            for n in eff["length"].values:
                lines += _fig(figures, out, f"results/ablation_{task}_{int(n)}", f"band interventions {task} {int(n)}")
    return lines or ["(run `workbench demo --full` for the ablations)"]


def scorecard_section(opts, state, store: Path, figures: dict[str, Path], out: Path) -> list[str]:
    """What the continuous measures add to the retrieval verdicts (``workbench.demo.scorecard``)."""
    from workbench.demo import scorecard as sc

    groups = {arm.group for arm in state.runs}
    pairs = [(a, b) for a, b, _ in arms.paper_comparisons(groups) if a.startswith("kd-") and "+" not in a]
    runs = {
        arm.name: path
        for arm, path in state.runs.items()
        if arm.seed == 0 and arm.schedule == "phasewise" and not arm.variant
    }
    lines = sc.section(store, runs, pairs)
    lines += _fig(figures, out, "results/scorecard_loss_kl_by_position", "loss and KL to the teacher by position")
    return lines + [""]


def write_report(opts, state, figures: list[Path]) -> Path:
    """REPORT.md in the run directory: settings, the stage-1 students, every arm with intervals, the paired
    differences, each finding's verdict with its numbers and the figure it rests on, timings."""
    out = Path(opts.out)
    store = Path(opts.store)
    by_name = {p.relative_to(out / "figures").with_suffix("").as_posix(): p for p in figures if p.suffix == ".png"}
    if not any("/" in k for k in by_name):  # a single store: no sub-folders
        by_name = {f"results/{k}": v for k, v in by_name.items()}
    ret = _group(store, wstore.RETRIEVAL)
    prompts = int(ret.sizes["depth"] * ret.sizes["sample"]) if ret is not None else 0
    lines = [
        "# RoPE-KD workbench demo report",
        "",
        f"Generated {_dt.datetime.now(_dt.UTC).isoformat(timespec='seconds')} by `workbench demo`. "
        "Verdicts come from 95 % hierarchical bootstrap intervals (seeds, then prompts within each seed) of paired "
        "differences: *supported* when every interval lies above 0, *contradicted* when intervals lie below 0, "
        "otherwise mixed or inconclusive. Toy scale: tiny models on synthetic data, not the paper's 1.1B / 17B.",
        "",
        "## Settings",
        "",
        f"- teacher: `{state.teacher}`; stage-1 students: "
        + ", ".join(f"theta {t:g} `{p}`" for t, p in sorted(state.stage1.items())),
        f"- arms: {{kd, ce}} x {{fixed-small, fixed-large, phasewise}} x {opts.seeds} seeds (configs "
        f"`data/configs/tiny-*.yaml`, steps x {opts.step_scale:g}); ablations: {opts.full}",
        f"- retrieval: tasks {opts.eval_tasks}, lengths {opts.eval_lengths}, {prompts} prompts per cell "
        f"({opts.eval_depths} depths x {opts.eval_samples} samples), the same prompts for every model; "
        "beyond the 1024-token window recorded as extrapolation",
        f"- store: `{store}` (open with `xarray.open_zarr(path, group=..., consolidated=False)`)",
        "",
        "## F1 and KD vs CE: retrieval",
        "",
        *f1_section(store, by_name, out),
        "## F2: positional and cross-document information in the KD targets",
        "",
        *f2_section(store, Path(opts.teacher_store), by_name, out),
        "## F3: which RoPE pairs of W_q adapt during extension",
        "",
        *f3_section(store, by_name, out),
        "## The continuous scorecard: loss and KL to the teacher by position, effective length, F3 over steps",
        "",
        *scorecard_section(opts, state, store, by_name, out),
        "## Ablations",
        "",
        *ablation_section(store, by_name, out),
        "",
        "## Timings (s)",
        "",
        *[f"- {k}: {v:.1f}" for k, v in state.timings.items()],
        "",
    ]
    path = out / "REPORT.md"
    tmp = path.with_suffix(".md.tmp")
    tmp.write_text("\n".join(lines))
    tmp.replace(path)
    print("\n".join(lines[lines.index("## F1 and KD vs CE: retrieval") :]))
    return path
