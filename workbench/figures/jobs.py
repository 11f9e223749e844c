"""Figure jobs: each maps a results store to one figure family {name: figure} (one per finding).

The batch scripts in ``analyses/`` each run one job, the demo runs them all (:func:`render_figures`). Every
figure is built by the other ``workbench.figures`` modules; this module only picks the data.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import plotly.graph_objects as go

from workbench import store as wstore  # the module; `store` is a store path
from workbench.arms import parse_arm
from workbench.figures import findings as ffig
from workbench.figures import kd_signal as fkd
from workbench.figures import retrieval as fret
from workbench.figures import save_figures
from workbench.figures import traces as ftr
from workbench.figures import updates as fupd


def _group(store: Path, name: str):
    return wstore.open_group(store, name).load() if wstore.has_group(store, name) else None


def _students(labels, predicate=lambda arm, seed: seed == 0) -> list[str]:
    return [str(x) for x in labels if (p := parse_arm(x)).is_protocol_arm and predicate(p.arm, p.seed)]


def _teachers(labels) -> list[str]:
    return [str(x) for x in labels if not parse_arm(x).is_protocol_arm]


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
