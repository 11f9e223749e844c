"""The main job end to end, the paper's two stages at toy scale:
teacher + stage-1 students (shipped) -> stage-2 arms -> retrieval -> arms with intervals -> cross-document KD
signal -> interpretability -> per-pair updates (stage 1 -> end of extension) -> store -> figures -> report.

Each step reuses what an earlier run of the demo already produced (complete checkpoints, store cells), so an
interrupted demo continues where it stopped. Everything goes into ``<out>/results.zarr``; figures into
``<out>/figures``; the report into ``<out>/REPORT.md``.
"""

from __future__ import annotations

import dataclasses
import json
import multiprocessing
import time
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch
import xarray as xr
from transformers.utils import logging as hf_logging

from workbench import arms as A
from workbench import checkpoint_io, config, interventions, measurements
from workbench import checkpoints as ck
from workbench import store as wstore  # the module; `store` is a store path
from workbench.config import DataConfig
from workbench.data import make_stream
from workbench.demo import ablations, report
from workbench.demo.students import (
    SHIPPED_TEACHER,
    STAGE1_CONFIGS,
    TEACHER_CONFIG,
    Arm,
    arm_config,
    arms,
    stage1_student,
)
from workbench.evals import grid, position_loss, training_eval
from workbench.figures import jobs
from workbench.interventions.specs import PairSet
from workbench.measurements import cross_document
from workbench.measurements.weights import comparison_label
from workbench.runs import RunDir
from workbench.train import train


@dataclass
class DemoOptions:
    out: Path = Path("runs/demo")
    seeds: int = 3
    quick: bool = False
    full: bool = False
    teacher: Path | None = None  # default: the shipped tiny teacher
    progress: bool = True
    jobs: int = 2  # arms trained in parallel worker processes (1 thread each)

    @property
    def step_scale(self) -> float:
        return 0.15 if self.quick else 1.0

    prompts: int = 32  # retrieval prompts per (checkpoint, task, length) cell: depths x samples

    @property
    def eval_lengths(self) -> list[int]:
        """Inside the documents, beyond them inside the window, beyond the window."""
        return [256, 1024] if self.quick else [256, 512, 1024, 2048]

    @property
    def eval_tasks(self) -> list[str]:
        return ["passkey", "niah"] if self.quick else ["passkey", "niah", "multikey"]

    @property
    def eval_depths(self) -> int:
        return 2 if self.quick else 4

    @property
    def eval_samples(self) -> int:
        return 2 if self.quick else max(1, -(-self.prompts // self.eval_depths))

    @property
    def store(self) -> Path:
        """Students' results, and every result without a layer dim (retrieval, repeated tokens)."""
        return self.out / "results.zarr"

    @property
    def teacher_store(self) -> Path:
        """The teacher's per-layer results (its layer count differs from the students')."""
        return self.out / "teacher.zarr"


@dataclass
class DemoState:
    """What the steps produced, passed from one step to the next."""

    teacher: Path
    stage1: dict[float, Path] = field(default_factory=dict)  # theta -> stage-1 student
    runs: dict[Arm, Path] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    findings: dict[str, object] = field(default_factory=dict)

    def final(self, arm: Arm) -> Path:
        return RunDir(self.runs[arm]).phase_ends()[-1]

    def start(self, arm: Arm) -> Path:
        """The stage-1 student an arm was extended from (its run's ``init_from``)."""
        return Path(RunDir(self.runs[arm]).config()["init_from"])


def log(msg: str) -> None:
    print(f"[demo] {msg}", flush=True)


@contextmanager
def timed(state: DemoState, step: str) -> Iterator[None]:
    start = time.perf_counter()
    log(f"{step} ...")
    yield
    state.timings[step] = time.perf_counter() - start
    log(f"{step} done in {state.timings[step]:.1f} s")


def run_is_complete(run_dir: Path, n_phases: int) -> bool:
    return run_dir.is_dir() and len(RunDir(run_dir).phase_ends()) >= n_phases


# ----------------------------------------------------------------------------------------------- steps


def ensure_teacher(opts: DemoOptions) -> Path:
    """The teacher checkpoint: the given one, the shipped one, or one trained now with our trainer."""
    if opts.teacher is not None:
        checkpoint_io.verify_checkpoint(opts.teacher)
        return Path(opts.teacher)
    if (SHIPPED_TEACHER / checkpoint_io.MANIFEST).is_file():
        return SHIPPED_TEACHER
    log(f"no shipped teacher at {SHIPPED_TEACHER}; training one with {TEACHER_CONFIG} (slow on CPU)")
    run_dir = train(
        config.load_run_config(TEACHER_CONFIG),
        out=str(opts.out / "teacher"),
        progress=opts.progress,
        evaluate=training_eval,
    )
    return RunDir(run_dir).phase_ends()[-1]


def ensure_stage1(opts: DemoOptions) -> dict[float, Path]:
    """The stage-1 (short-context) students, one per theta the arms start from: shipped, else trained now
    from their recipes (``data/configs/stage1/``, slow on CPU)."""
    found = {}
    for recipe in sorted(STAGE1_CONFIGS.glob("*.yaml")):
        cfg = config.load_run_config(recipe)
        theta = float(cfg.phases[-1].rope_theta)
        shipped = stage1_student(theta)
        if (shipped / checkpoint_io.MANIFEST).is_file():
            found[theta] = shipped
            continue
        log(f"no shipped stage-1 student at {shipped}; training it with {recipe} (slow on CPU)")
        run_dir = opts.out / "stage1" / cfg.name
        found[theta] = RunDir(_train_one(cfg, str(run_dir), run_dir.exists(), opts.progress, None)).phase_ends()[-1]
    return found


def _train_one(cfg, run_dir: str, resume: bool, progress: bool, threads: int | None) -> str:
    """Train one arm (a top-level function so worker processes can run it)."""
    if threads:
        torch.set_num_threads(threads)
    return str(train(cfg, out=run_dir, resume=resume, progress=progress, evaluate=training_eval))


def _quiet_transformers() -> None:
    """In a worker: no transformers "Loading weights" bars or info logs (the demo prints one line per step)."""
    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()


def in_workers(fn, calls: list[tuple], jobs: int, done=None) -> list:
    """``fn(*args)`` for every ``args`` of ``calls`` in ``jobs`` spawned worker processes; results in order
    (a worker's error re-raises here); ``done(i)`` after each result."""
    with ProcessPoolExecutor(
        max_workers=min(jobs, len(calls)),
        mp_context=multiprocessing.get_context("spawn"),
        initializer=_quiet_transformers,
    ) as pool:
        futures = [pool.submit(fn, *args) for args in calls]
        results = []
        for i, future in enumerate(futures):
            results.append(future.result())
            if done is not None:
                done(i)
        return results


def train_students(opts: DemoOptions, state: DemoState, todo: list[Arm]) -> None:
    """Train every arm (same token budget), reusing complete runs. With ``opts.jobs`` > 1 the arms train in
    that many worker processes, one thread each (tiny models use two cores better as two processes)."""
    pending = []
    for arm in todo:
        cfg = arm_config(arm, teacher=state.teacher, step_scale=opts.step_scale)
        if not (Path(cfg.init_from) / checkpoint_io.MANIFEST).is_file():  # not shipped: the one trained just now
            cfg = dataclasses.replace(cfg, init_from=str(_stage1_for(state, Path(cfg.init_from))))
        run_dir = opts.out / "students" / arm.name
        state.runs[arm] = run_dir
        if run_is_complete(run_dir, len(cfg.phases)):
            log(f"{arm.name}: reusing {run_dir}")
        else:
            pending.append((arm, cfg, run_dir))
    if opts.jobs <= 1 or len(pending) <= 1:
        for i, (arm, cfg, run_dir) in enumerate(pending, 1):
            log(f"[{i}/{len(pending)}] training {arm.name} ({sum(p.steps for p in cfg.phases)} steps)")
            _train_one(cfg, str(run_dir), run_dir.exists(), opts.progress, None)
        return
    log(f"training {len(pending)} arms in {opts.jobs} worker processes")
    in_workers(
        _train_one,
        [(cfg, str(run_dir), run_dir.exists(), False, 1) for _, cfg, run_dir in pending],
        opts.jobs,
        done=lambda i: log(f"[{i + 1}/{len(pending)}] trained {pending[i][0].name}"),
    )


def _stage1_for(state: DemoState, shipped: Path) -> Path:
    for theta, path in state.stage1.items():
        if stage1_student(theta) == shipped:
            return path
    raise FileNotFoundError(f"{shipped}: no stage-1 student (shipped or trained) for this arm")


def _new_checkpoints(store: Path, group: str, dim: str, names: dict[str, Path]) -> dict[str, Path]:
    if not wstore.has_group(store, group):
        return names
    done = set(map(str, wstore.open_group(store, group)[dim].values))
    return {n: p for n, p in names.items() if n not in done}


def _evaluate_part(paths: list[str], grid_args: dict, threads: int | None) -> xr.Dataset:
    """Evaluate some checkpoints (a top-level function so worker processes can run it)."""
    if threads:
        torch.set_num_threads(threads)
    return grid.evaluate_plan(grid.plan(paths, **grid_args), progress=threads is None).load()


def evaluate_retrieval(opts: DemoOptions, state: DemoState, checkpoints: list[Path]) -> None:
    """Passkey / NIAH at lengths from the document length to twice the window (extrapolation recorded);
    with ``opts.jobs`` > 1 the checkpoints are split over worker processes."""
    todo = _new_checkpoints(opts.store, wstore.RETRIEVAL, "checkpoint", {ck.label(p): p for p in checkpoints})
    if not todo:
        log("retrieval: every checkpoint already evaluated")
        return
    grid_args = dict(
        tasks=opts.eval_tasks,
        lengths=opts.eval_lengths,
        depths=opts.eval_depths,
        samples=opts.eval_samples,
        seed=1234,
        extrapolate=True,
    )
    grid.plan(list(todo.values()), store=opts.store, **grid_args)  # every check before any work
    paths = [str(p) for p in todo.values()]
    if opts.jobs <= 1 or len(paths) <= 1:
        parts = [_evaluate_part(paths, grid_args, None)]
    else:
        split = [paths[i :: opts.jobs] for i in range(opts.jobs) if paths[i :: opts.jobs]]
        parts = in_workers(_evaluate_part, [(part, grid_args, 1) for part in split], opts.jobs)
    for ds in parts:
        wstore.save(opts.store, wstore.RETRIEVAL, ds)


def interp_specs(head_dim_lengths: list[int]):
    """The perturbation sweep: non-uniform positional edits (a uniform shift would be a no-op)."""
    short, long = head_dim_lengths
    return [
        interventions.Spec("q-shift-64", [interventions.shift(64, "q")]),
        interventions.Spec("k-shift-64", [interventions.shift(64, "k")]),
        interventions.Spec(
            "theta-to-1e5", [interventions.theta_swap(100000.0, "both")]
        ),  # x10 for theta 1e4, x200 for 500
        interventions.Spec(
            f"zero-band-le-{short}", [interventions.zero("both", pairs=PairSet(band=0, context_lengths=[short, long]))]
        ),
        interventions.Spec(
            f"zero-band-gt-{short}",
            [interventions.zero("both", pairs=PairSet(wavelength=[float(short), float("inf")]))],
        ),
    ]


def packed_short_documents(seq_len: int, batch: int, seed: int) -> dict:
    """The students' training distribution: short documents packed with continuing positions."""
    return make_stream(DataConfig(kind="synthetic-short"), seq_len, batch, seed).next()


def run_interp(opts: DemoOptions, state: DemoState, checkpoints: list[Path], window: int) -> None:
    """Repeated-token experiment and the perturbation sweep on teacher and students (nnsight backend)."""
    specs = interp_specs([256, window])
    inputs = packed_short_documents(window, 1 if opts.quick else 2, seed=7)
    for path in checkpoints:
        name = ck.label(path)
        layered = opts.teacher_store if Path(path) == Path(state.teacher) else opts.store
        be = None
        if name in _new_checkpoints(opts.store, wstore.REPEATED_TOKENS, "checkpoint", {name: path}):
            be = interventions.load_backend(path, "nnsight")
            interventions.write_repeated(
                opts.store,
                interventions.repeated_tokens(
                    path,
                    specs[-2:],
                    backend=be,
                    window=window,
                    period=32,
                    copies=4 if opts.quick else 8,
                    samples=1 if opts.quick else 2,
                ),
            )
        if name in _new_checkpoints(layered, wstore.TRACES, "checkpoint", {name: path}):
            be = be or interventions.load_backend(path, "nnsight")
            interventions.write_traces(
                layered, interventions.run_trace(path, specs, inputs, backend=be, buckets=4 if opts.quick else 8)
            )
        log(f"repeated tokens + traces: {name}")


def run_pair_analysis(opts: DemoOptions, state: DemoState, phase_lengths: list[int]) -> None:
    """Stage-1 student -> end of extension, for every run: per-pair W_q/W_k updates, q/k state updates on
    packed short documents in the window, and band summaries (F3)."""
    done = wstore.written_labels(opts.store, wstore.UPDATES_WEIGHTS)
    by_start: dict[Path, list[Path]] = {}
    for arm in state.runs:
        start, final = state.start(arm), state.final(arm)
        if comparison_label(ck.label(start), ck.label(final)) not in done:
            by_start.setdefault(start, []).append(final)
    for start, finals in by_start.items():
        upd = measurements.weight_updates(finals, reference=start)
        wstore.save(opts.store, wstore.UPDATES_WEIGHTS, upd)
        wstore.save(opts.store, wstore.BANDS, measurements.band_summary(upd, phase_lengths))
        wstore.save(
            opts.store,
            wstore.UPDATES_STATES,
            measurements.state_updates(
                finals,
                reference=start,
                seq_len=phase_lengths[-1],
                n_windows=1 if opts.quick else 2,
                data=DataConfig(kind="synthetic-short"),
            ),
        )
    summarise_updates(opts.store)


def summarise_updates(store: Path) -> None:
    """Per arm (seeds pooled): mean layer x head x pair updates (``arm_updates``, for the dashboard) and band
    means with intervals over seeds (``arm_bands``, for F3)."""
    if not wstore.has_group(store, wstore.UPDATES_WEIGHTS):
        return
    wstore.save(
        store, wstore.ARM_UPDATES, A.arm_means(wstore.open_group(store, wstore.UPDATES_WEIGHTS).load(), "comparison")
    )
    bands = wstore.open_group(store, wstore.BANDS).load()
    wstore.save(
        store,
        wstore.ARM_BANDS,
        xr.merge([A.band_table(bands, "q_rel_update"), A.band_table(bands, "k_rel_update")], compat="no_conflicts"),
    )


def compare_arms(opts: DemoOptions, state: DemoState) -> None:
    """Arms (seeds pooled) with hierarchical bootstrap intervals, and the paired differences that answer the
    paper's questions: KD - CE per theta schedule; phase-wise - each fixed schedule under KD (and CE);
    each ablation - its base arm. Written to the store's ``arm_retrieval`` / ``arm_comparisons`` groups."""
    ds = wstore.open_group(opts.store, wstore.RETRIEVAL).load()
    groups, _ = A.retrieval_arms(ds)
    keep = A.paper_comparisons(groups)
    wstore.save(opts.store, wstore.ARM_RETRIEVAL, A.retrieval_summary(ds))
    wstore.save(opts.store, wstore.ARM_EFFECTIVE_LENGTH, A.effective_length_summary(ds))
    if keep:
        wstore.save(
            opts.store,
            wstore.ARM_COMPARISONS,
            A.retrieval_comparisons(ds, [(a, b) for a, b, _ in keep], questions=[q for _, _, q in keep]),
        )


def run_kd_signal(opts: DemoOptions, state: DemoState, checkpoints: list[Path], window: int) -> None:
    """Cross-document KD signal: per token, KL(model on the causal window || model with document-masked
    attention) over the students' packed short documents, for the teacher, the stage-1 students and every
    final student (KD students should depend on other documents more than CE students, if KD transfers it)."""
    todo = _new_checkpoints(opts.store, wstore.KD_SIGNAL, "checkpoint", {ck.label(p): p for p in checkpoints})
    if not todo:
        return
    data = config_data(state)
    ds = cross_document.cross_document_kl_checkpoints(
        list(todo.values()),
        data,
        seq_len=window,
        n_windows=2 if opts.quick else 8,
        batch_size=2,
        seed=11,
        labels=list(todo),
        progress=opts.progress,
    )
    cross_document.write_kd_signal(opts.store, ds)


def _position_loss_part(paths: list[str], docs, teacher: str, threads: int | None) -> xr.Dataset:
    """Loss and KL by position of some checkpoints (a top-level function so worker processes can run it)."""
    if threads:
        torch.set_num_threads(threads)
    return position_loss.position_loss(paths, docs, teacher=teacher, extrapolate=True, progress=threads is None).load()


def run_position_loss(opts: DemoOptions, state: DemoState, checkpoints: list[Path], window: int) -> None:
    """Loss and KL(teacher || model) by position on held-out long documents of twice the window (inside the
    documents, beyond them inside the window, beyond the window), split over worker processes."""
    todo = _new_checkpoints(opts.store, wstore.POSITION_LOSS, "checkpoint", {ck.label(p): p for p in checkpoints})
    if not todo:
        return
    docs = position_loss.synthetic_documents(2 if opts.quick else 6, 2 * window, seed=7)
    paths = [str(p) for p in todo.values()]
    jobs = 1 if opts.quick else min(opts.jobs, len(paths))  # --quick: 2 documents, cheaper than spawning workers
    calls = [([p for p in paths[i::jobs]], docs, str(state.teacher), 1 if jobs > 1 else None) for i in range(jobs)]
    parts = in_workers(_position_loss_part, calls, jobs) if jobs > 1 else [_position_loss_part(*calls[0])]
    for ds in parts:
        wstore.save(opts.store, wstore.POSITION_LOSS, ds)


def config_data(state: DemoState) -> DataConfig:
    """The data config the arms were extended on (from one run's resolved config)."""
    return RunDir(next(iter(state.runs.values()))).run_config().data


def run_probes(opts: DemoOptions, state: DemoState, checkpoints: list[Path], window: int) -> None:
    teacher = [p for p in checkpoints if Path(p) == Path(state.teacher)]
    students = [p for p in checkpoints if Path(p) != Path(state.teacher)]
    for store, paths in ((opts.teacher_store, teacher), (opts.store, students)):
        todo = _new_checkpoints(store, wstore.PROBES, "checkpoint", {ck.label(p): p for p in paths})
        if todo:
            ds = measurements.position_probes(list(todo.values()), seq_len=window, n_windows=4 if opts.quick else 8)
            wstore.save(store, wstore.PROBES, ds)


def run_ablations(opts: DemoOptions, state: DemoState) -> None:
    """--full: train the ablation arms (KD, phase-wise theta; their configs in data/configs/ablations/) and
    evaluate them like the main arms (compared with their base arm by the demo's arm comparisons), then the
    band interventions at evaluation time on the teacher and every seed of the phase-wise students: the raw
    results go into the store's ``ablations`` group, condition - clean with intervals into ``ablation_effects``."""
    for variant in ablations.VARIANTS:
        todo = [Arm("kd", "phasewise", s, variant) for s in range(opts.seeds)]
        train_students(opts, state, todo)
        evaluate_retrieval(opts, state, [state.final(a) for a in todo])
    if not wstore.has_group(opts.store, wstore.ABLATIONS):
        chosen = {ck.label(state.teacher): str(state.teacher)}
        for arm in state.runs:
            if arm.schedule == "phasewise" and not arm.variant:
                chosen[ck.label(state.final(arm))] = str(state.final(arm))
        ds = ablations.band_ablation(
            chosen,
            tasks=["passkey", "niah"],
            lengths=[256, 1024],  # documents, window
            depths=[0.0, 50.0, 100.0],
            samples=max(2, opts.eval_samples // 2),
            seed=99,
        )
        wstore.save(opts.store, wstore.ABLATIONS, ds)
    wstore.save(
        opts.store,
        wstore.ABLATION_EFFECTS,
        ablations.band_effects(wstore.open_group(opts.store, wstore.ABLATIONS).load()),
    )


# ----------------------------------------------------------------------------------------------- main


def run(opts: DemoOptions) -> tuple[Path, DemoState]:
    """Run the demo; returns (report path, state)."""
    _quiet_transformers()  # one progress bar per step: ours (workers do the same)
    opts.out = Path(opts.out)
    opts.out.mkdir(parents=True, exist_ok=True)
    state = DemoState(teacher=Path("."))
    with timed(state, "teacher and stage-1 students"):
        state.teacher = ensure_teacher(opts)
        state.stage1 = ensure_stage1(opts)
    todo = arms(opts.seeds)
    with timed(state, "stage 2: train the arms"):
        train_students(opts, state, todo)
    window = max(ph.seq_len for ph in arm_config(todo[0], teacher=state.teacher).phases)
    phase_lengths = [256, window]  # the stage-1 window (the documents' length) and the extension window
    finals = [state.final(a) for a in todo]
    seed0 = [state.final(a) for a in todo if a.seed == 0]
    stage1 = list(state.stage1.values())
    with timed(state, "retrieval eval"):
        evaluate_retrieval(opts, state, [state.teacher, *stage1, *finals])
    if opts.full:
        with timed(state, "ablations"):
            run_ablations(opts, state)
    with timed(state, "arms: intervals and paired differences"):
        compare_arms(opts, state)
    with timed(state, "cross-document KD signal"):
        run_kd_signal(opts, state, [state.teacher, *stage1, *finals], window)
    with timed(state, "loss and KL to the teacher by position"):
        run_position_loss(opts, state, [state.teacher, *stage1, *finals], window)
    with timed(state, "interventions (repeated tokens, perturbation sweep)"):
        run_interp(opts, state, [state.teacher, *seed0], window)
    with timed(state, "pair updates stage 1 -> extension"):
        run_pair_analysis(opts, state, phase_lengths)
    with timed(state, "position probes"):
        run_probes(opts, state, [state.teacher, *seed0], window)
    with timed(state, "figures"):
        figures = jobs.render_figures([opts.store, opts.teacher_store], opts.out / "figures")
    path = report.write_report(opts, state, figures)
    (opts.out / "timings.json").write_text(json.dumps(state.timings, indent=2))
    return path, state
