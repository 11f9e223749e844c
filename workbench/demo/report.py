"""Figures and REPORT.md for a results store.

``FIGURE_JOBS`` maps a figure family (one per finding) to a function store -> {name: figure}; the batch
scripts in ``analyses/`` each run one job, the demo runs them all. Every figure is built by
``workbench.figures``; this module only picks the data.
"""

from __future__ import annotations

import datetime as _dt
from collections.abc import Callable
from pathlib import Path
from typing import Any

import plotly.graph_objects as go

from workbench import arms
from workbench import store as wstore  # the module; `store` is a store path
from workbench.demo import findings
from workbench.evals.tasks import TASKS
from workbench.figures import findings as ffig
from workbench.figures import kd_signal as fkd
from workbench.figures import retrieval as fret
from workbench.figures import save_figures
from workbench.figures import traces as ftr
from workbench.figures import updates as fupd


def _group(store: Path, name: str):
    return wstore.open_group(store, name).load() if wstore.has_group(store, name) else None


def _students(labels, predicate=lambda arm, seed: seed == 0) -> list[str]:
    return [str(x) for x in labels if (p := arms.parse_arm(x)).is_protocol_arm and predicate(p.arm, p.seed)]


def _teachers(labels) -> list[str]:
    return [str(x) for x in labels if not arms.parse_arm(x).is_protocol_arm]


def f1_retrieval(store: Path) -> dict[str, go.Figure]:
    """F1: accuracy vs length per arm with hierarchical bootstrap intervals, the paired differences, the
    teacher's depth x length grid."""
    figs = {}
    summary = _group(store, wstore.ARM_RETRIEVAL)
    comp = _group(store, wstore.ARM_COMPARISONS)
    ds = _group(store, wstore.RETRIEVAL)
    window = int(ds["max_positions"].max()) if ds is not None and "max_positions" in ds.coords else None
    for task in map(str, summary["task"].values) if summary is not None else []:
        figs[f"f1_{task}_accuracy_by_arm"] = ffig.arm_accuracy_intervals(summary, task, doc_length=256, window=window)
        if comp is not None:
            figs[f"f1_{task}_paired_differences"] = ffig.comparison_intervals(comp, task)
    if ds is not None:
        for teacher in _teachers(ds["checkpoint"].values):
            if teacher.startswith("teacher/"):
                figs[f"f1_teacher_grid_{teacher.replace('/', '_')}"] = fret.heatmap(
                    ds, teacher, task=str(ds["task"].values[0])
                )
    return figs


def kd_signal(store: Path) -> dict[str, go.Figure]:
    """F2 where it matters: the cross-document part of the KD targets, by distance and token kind."""
    ds = _group(store, wstore.KD_SIGNAL)
    if ds is None:
        return {}
    return {
        "f2_cross_document_kl_by_distance": fkd.kl_by_distance(ds),
        "f2_cross_document_kl_by_kind": fkd.kl_by_kind(ds),
    }


def f2_propagation(store: Path) -> dict[str, go.Figure]:
    """F2: perturbation propagation by layer (teacher and students) and repeated-token positional KL."""
    figs = {}
    traces = _group(store, wstore.TRACES)
    if traces is not None:
        names = list(map(str, traces["checkpoint"].values))
        for name in _teachers(names) + _students(names, lambda arm, seed: seed == 0 and arm.endswith("phasewise")):
            key = name.replace("/", "_")
            figs[f"f2_lens_kl_by_layer_{key}"] = ftr.divergence_by_layer(traces, "lens_kl", checkpoint=name)
        figs["f2_final_kl_by_spec"] = ftr.final_kl_bars(traces)
    rep = _group(store, wstore.REPEATED_TOKENS)
    if rep is not None:
        figs["f2_repeated_tokens_kd_signal"] = ftr.repeated_kl_vs_offset(rep, "kl_to_mean")
    return figs


def f3_pair_updates(store: Path) -> dict[str, go.Figure]:
    """F3: layer x pair update heatmaps (stage 1 -> end of extension, mean over seeds) and band bars with
    intervals over seeds, per arm."""
    figs = {}
    upd = _group(store, wstore.ARM_UPDATES)
    bands = _group(store, wstore.BANDS)
    if upd is not None:
        lengths = [int(x) for x in bands["phase_length"].values] if bands is not None else None
        upd = upd.rename(arm="comparison")
        for arm in map(str, upd["comparison"].values):
            figs[f"f3_heatmap_q_{arm}"] = fupd.layer_pair_heatmap(
                upd, comparison=arm, var="q_rel_update", phase_lengths=lengths
            )
    table = _group(store, wstore.ARM_BANDS)
    if table is not None:
        figs["f3_band_updates_by_arm"] = ffig.band_update_intervals(table)
    return figs


def probes(store: Path) -> dict[str, go.Figure]:
    ds = _group(store, wstore.PROBES)
    if ds is None:
        return {}
    return {
        "probes_r2": fupd.probe_curves(ds, metric="r2"),
        "probes_accuracy": fupd.probe_curves(ds, metric="accuracy"),
    }


def ablations(store: Path) -> dict[str, go.Figure]:
    ds = _group(store, wstore.ABLATION_EFFECTS)
    if ds is None:
        return {}
    return {
        f"ablation_{task}_{int(n)}": ffig.ablation_effects(ds, task, int(n))
        for task in map(str, ds["task"].values)
        for n in ds["length"].values
    }


def scorecard(store: Path) -> dict[str, go.Figure]:
    """Loss and KL to the teacher by position (references and seed-0 students), effective lengths per task."""
    from workbench.figures import effective_length as feff
    from workbench.figures import position_loss as fpos

    figs = {}
    ds = _group(store, wstore.POSITION_LOSS)
    if ds is not None:
        names = list(map(str, ds["checkpoint"].values))
        figs["scorecard_loss_kl_by_position"] = fpos.by_position(ds, checkpoints=_teachers(names) + _students(names))
    eff = _group(store, wstore.ARM_EFFECTIVE_LENGTH)
    if eff is not None:
        for task in map(str, eff["task"].values):
            figs[f"scorecard_effective_length_{task}"] = feff.effective_lengths(eff, task)
    return figs


FIGURE_JOBS: dict[str, Callable[[Path], dict[str, go.Figure]]] = {
    "f1_retrieval": f1_retrieval,
    "kd_signal": kd_signal,
    "f2_propagation": f2_propagation,
    "f3_pair_updates": f3_pair_updates,
    "probes": probes,
    "ablations": ablations,
    "scorecard": scorecard,
}


def build(job: str, store: str | Path) -> dict[str, go.Figure]:
    """One figure job's figures from a store (a clear error for a missing or foreign store)."""
    if job not in FIGURE_JOBS:
        raise ValueError(f"unknown figure job {job!r}; known: {', '.join(FIGURE_JOBS)}")
    wstore.groups(store)
    return FIGURE_JOBS[job](Path(store))


def render(job: str, store: str | Path, out_dir: str | Path, *, png: bool = True) -> list[Path]:
    """Run one figure job: build its figures from the store, write PNG + HTML; returns the files."""
    return save_figures(build(job, store), out_dir, png=png)


def render_figures(stores, out_dir: str | Path, *, png: bool = True) -> list[Path]:
    """Every figure job on every store (one sub-folder per store when there are several), PNGs in one batch."""
    paths = [Path(p) for p in ([stores] if isinstance(stores, (str, Path)) else stores)]
    paths = [p for p in paths if p.exists()]
    figs = {}
    for p in paths:
        prefix = f"{p.stem}/" if len(paths) > 1 else ""
        figs.update({prefix + name: fig for job in FIGURE_JOBS for name, fig in build(job, p).items()})
    for sub in {n.rpartition("/")[0] for n in figs}:
        (Path(out_dir) / sub).mkdir(parents=True, exist_ok=True)
    return save_figures(figs, out_dir, png=png)


# ------------------------------------------------------------------------------------------- report

BEYOND = "beyond the 256-token documents"


def _interval(mean: float, lo: float, hi: float, signed: bool = True) -> str:
    f = "+.2f" if signed else ".2f"
    return f"{mean:{f}} [{lo:{f}}, {hi:{f}}]"


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
                lines.append(
                    f"- **KD vs CE** ({task}, {sched}) KD - CE: {_verdict(d[1:] if len(d) > 1 else d)} "
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
            rows.append(f"`{arm}` {_interval(iv.mean, iv.lo, iv.hi, signed=False)}")
        if rows:
            lines.append(
                "- Students' own cross-document dependence (mean KL, interval over seeds): "
                + "; ".join(rows)
                + ". If KD transfers cross-document information, KD arms sit above their CE twins."
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
            f"- `{arm}`: Spearman(pair index, update) {_interval(r.mean, r.lo, r.hi)}; longest-band minus "
            f"shortest-band update {_interval(d.mean, d.lo, d.hi)} ({len(members)} seeds)"
            + (
                " (higher-index pairs adapt more)"
                if d.lo > 0
                else " (no clear band ordering)"
                if d.hi >= 0
                else " (lower-index pairs adapt more)"
            )
            + "."
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
    from workbench.demo.arms import SCHEDULES

    pairs = [(f"kd-{s}", f"ce-{s}") for s in SCHEDULES] + [
        ("kd-phasewise", f"kd-{f}") for f in ("fixed-small", "fixed-large")
    ]
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
