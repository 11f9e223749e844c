"""The training loop: phases with their own window, theta and objective; KD from a frozen teacher.

Read top to bottom, as in torchtitan: ``preflight`` (every input error before any compute), ``build`` (student,
teacher, optimiser, FSDP2 when launched by torchrun, the resumed state, and the components: checkpointing
``state.Checkpointer``, metrics ``metrics.MetricsLog``, evaluation ``evaluation.Evaluator``), ``phases`` (yields
each phase still to run with its theta set, data stream and loss spec), ``train_step`` (one optimiser step,
returning its stats), ``manifest`` / ``trainer_state`` (what a checkpoint records), and ``train``, whose loop is
only these calls. The run directory's layout is ``workbench.runs.RunDir``.

One optimiser step = ``grad_accum_steps`` micro-batches of ``micro_batch_size`` windows per rank. The
loss of every micro-batch is divided by the number of valid target tokens of the whole step, summed over
micro-batches and ranks, so the gradient is that of one big batch whatever the accumulation or world size.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from dataclasses import replace as dc_replace
from pathlib import Path
from typing import Any

import torch
from transformers.utils import logging as hf_logging

from workbench import attention, checkpoint_io, data, models, tokenizers
from workbench import config as wconfig
from workbench.config import ConfigError, PhaseConfig, RunConfig
from workbench.runs import RunDir
from workbench.train import distributed, pair_tracking, rundir, state
from workbench.train.ablations import FrozenPairs
from workbench.train.compiling import CompileReport, compile_blocks, resolve_compile
from workbench.train.distill import DistillModule, autocast_for, load_teacher, resolve_precision
from workbench.train.evaluation import EvalFn, Evaluator
from workbench.train.losses import LossSpec, doubling_edges, loss_by_bucket
from workbench.train.metrics import MetricsLog, StepStats
from workbench.train.pair_tracking import PairTracker
from workbench.train.phases import check_inputs, needs_teacher, phase_data, phase_ends, phase_seed
from workbench.train.schedule import lr_at
from workbench.train.teacher_cache import TeacherCache
from workbench.train.teacher_cache import check as check_cache
from workbench.train.vocab import kd_vocab_size


class TrainingDiverged(RuntimeError):
    """The loss or the gradient norm became NaN/inf; training stopped before the optimiser step."""


# -------------------------------------------------------------------------------------- preflight


def run_dir_of(cfg: RunConfig, out: str | None = None) -> Path:
    """Where a run is written: ``--out``, else the config's ``out_dir``, else ``runs/<name>``."""
    return Path(out or cfg.out_dir or Path("runs") / cfg.name)


def preflight(cfg: RunConfig, run_dir: Path, *, resume: bool, world_size: int = 1) -> None:
    """Every input error as one clear exception, before any model is built or any data generated; on
    ``--resume``, the config is checked against the run's ``config_hash`` (of this hash version only)."""
    has_run = RunDir(run_dir).has_progress()
    first_rank = os.environ.get("RANK", "0") == "0"  # other ranks may start after rank 0 created the run
    if has_run and not resume and first_rank:
        raise FileExistsError(
            f"{run_dir}: already holds a run; pass --resume to continue it, or --out for a new "
            "run directory (nothing is overwritten)"
        )
    if resume and has_run:
        rundir.check_resumable(run_dir)  # a corrupt latest checkpoint stops here, naming it
        ckpt = RunDir(run_dir).latest_checkpoint(resumable=True)
        if ckpt is not None:
            manifest = checkpoint_io.read_manifest(ckpt)
            version = int(manifest.get("config_hash_version", 1))
            wconfig.check_hash_version(version)
            old, new = manifest.get("config_hash"), wconfig.config_hash(cfg, version)
            if old != new:
                raise ConfigError(
                    f"{run_dir}: --resume with a config that differs from the one the run was started "
                    f"with (config_hash {old} vs {new}{_differing(RunDir(run_dir), cfg)}); see "
                    f"{RunDir(run_dir).config_path}"
                )
            if first_rank and (
                changed := _differing(RunDir(run_dir), cfg)
            ):  # only what the hash leaves out can differ here
                print(
                    f"workbench train: resuming with a changed{changed.removeprefix('; differs at')} (not part "
                    "of what is trained: run.yaml is updated)",
                    file=sys.stderr,
                )
    check_inputs(cfg, world_size)
    if cfg.teacher is not None and cfg.teacher.cache and needs_teacher(cfg):
        check_cache(Path(cfg.teacher.cache), cfg, world_size)
    rundir.check_memory(cfg, world_size, models.pick_device(cfg.device).type)
    if first_rank:
        rundir.probe_writable(run_dir)


def _differing(run: RunDir, cfg: RunConfig) -> str:
    """``; differs at KEY, ...``: the keys where ``cfg`` differs from the run's ``run.yaml`` ("" if unreadable)."""
    try:
        written = run.config()
    except (OSError, ValueError):
        return ""

    def flat(d: Any, prefix: str = "") -> dict[str, Any]:
        if isinstance(d, dict):
            return {k: v for key, sub in d.items() for k, v in flat(sub, f"{prefix}{key}.").items()}
        if isinstance(d, list) and d and all(isinstance(x, dict) for x in d):
            return {k: v for i, sub in enumerate(d) for k, v in flat(sub, f"{prefix[:-1]}[{i}].").items()}
        return {prefix[:-1]: d}

    a, b = flat(written), flat(wconfig.to_dict(cfg))
    keys = sorted(k for k in a.keys() | b.keys() if a.get(k) != b.get(k))
    return f"; differs at {', '.join(keys[:5])}{' ...' if len(keys) > 5 else ''}" if keys else ""


# ------------------------------------------------------------------------------------------ build


@dataclass
class Run:
    """Everything the loop needs, made once by ``build``; ``step``, ``tokens`` and ``parent`` advance."""

    cfg: RunConfig
    run_dir: Path
    device: torch.device
    dd: distributed.Dist
    precision: str
    compiled: bool  # optim.compile resolved for the device
    student: Any
    teacher: Any
    cache: TeacherCache | None
    module: DistillModule
    shadow: Any  # a plain CPU copy of the student on rank 0 for saving/evaluating when FSDP2 shards it
    opt: torch.optim.Optimizer
    checkpointer: state.Checkpointer
    metrics: MetricsLog
    evaluator: Evaluator
    config_hash: str
    step: int = 0
    tokens: int = 0
    data_state: dict | None = None  # the resumed data cursor, for the phase the run resumes in
    parent: str | None = None  # the previous checkpoint (or init_from), for the next manifest


def build(
    cfg: RunConfig,
    run_dir: Path,
    *,
    resume: bool,
    device: torch.device,
    dd: distributed.Dist,
    progress: bool = True,
    evaluate: EvalFn | None = None,
) -> Run:
    """Student (from the checkpoint we resume, from init_from, or fresh and seeded), teacher or teacher cache,
    FSDP2, optimiser, the resumed trainer state and the run's components."""
    ckpt = RunDir(run_dir).latest_checkpoint(resumable=True) if resume else None
    if resume and ckpt is None and dd.is_main:
        print(f"workbench train: no complete checkpoint in {run_dir}; starting from scratch", file=sys.stderr)
    torch.manual_seed(cfg.seed)
    run_tokenizer, _ = tokenizers.for_run(cfg, warn=False)  # preflight checked it (and warned once)
    precision = resolve_precision(cfg.optim.precision, device)
    if ckpt is not None:
        student, _ = checkpoint_io.load(ckpt, device=device)
    elif cfg.init_from:
        student, _ = checkpoint_io.load(cfg.init_from, device=device)
    else:
        student = models.build_model(cfg.model, seed=cfg.seed, device=device)
    cached = needs_teacher(cfg) and bool(cfg.teacher.cache)
    teacher = load_teacher(cfg, device, precision) if needs_teacher(cfg) and not cached else None
    cache = TeacherCache(Path(cfg.teacher.cache)) if cached else None
    student.train()
    if cfg.optim.activation_checkpointing:
        student.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    compiled = resolve_compile(cfg.optim.compile, device)
    if compiled:  # after activation checkpointing, before FSDP2 (torchtitan's order)
        compile_blocks(student)
        if teacher is not None:
            compile_blocks(teacher)
    module = DistillModule(student, teacher, cfg.teacher.positions if cfg.teacher else "same")
    shadow = None
    if dd.enabled:
        blocks = list(student.model.layers) + (list(teacher.model.layers) if teacher is not None else [])
        distributed.shard(module, blocks, precision=precision)
        if dd.is_main:
            shadow = models.build_model(models.model_config_of(student), seed=None)
    opt = torch.optim.AdamW(
        student.parameters(),
        lr=cfg.phases[0].lr,
        betas=tuple(cfg.optim.betas),
        eps=cfg.optim.eps,
        weight_decay=cfg.optim.weight_decay,
    )
    checkpointer = state.Checkpointer(
        run_dir, cfg.checkpoint.every, cfg.checkpoint.keep_last, dd, tokenizer=run_tokenizer, shadow=shadow
    )
    st = checkpointer.load(ckpt, student, opt) if ckpt is not None else {"step": 0, "tokens": 0, "data": None}
    metrics = MetricsLog(cfg, run_dir, st["step"], phase_ends(cfg)[-1], dd, device, progress)
    return Run(
        cfg,
        run_dir,
        device,
        dd,
        precision,
        compiled,
        student,
        teacher,
        cache,
        module,
        shadow,
        opt,
        checkpointer,
        metrics,
        Evaluator(cfg, evaluate, dd),
        wconfig.config_hash(cfg),
        step=st["step"],
        tokens=st["tokens"],
        data_state=st["data"],
        parent=ckpt.name if ckpt is not None else cfg.init_from,
    )


@dataclass
class Phase:
    """A phase as the loop runs it: its steps [start, end), data stream, loss spec and frozen pairs."""

    index: int
    cfg: PhaseConfig
    start: int
    end: int
    data: wconfig.DataConfig
    stream: data.Stream
    spec: LossSpec
    frozen: FrozenPairs | None
    edges: list[int]


def phases(run: Run) -> Iterator[Phase]:
    """The phases still to run. At each switch the student's rotary frequencies are rebuilt for the phase's
    theta, and its stream starts (at the resumed cursor in the phase the run resumes in)."""
    cfg = run.cfg
    # padded vocabularies (workbench.train.vocab); once per run: it loads the run's tokenizers
    kd_vocab = kd_vocab_size(cfg, run.teacher.config.vocab_size if run.teacher is not None else None)
    for i, (ph, end) in enumerate(zip(cfg.phases, phase_ends(cfg))):
        if run.step >= end:
            continue
        models.set_rope_theta(run.student, ph.rope_theta, ph.rope_scaling)
        if run.shadow is not None:
            models.set_rope_theta(run.shadow, ph.rope_theta, ph.rope_scaling)
        dcfg = phase_data(cfg, i)
        stream = data.make_stream(
            dcfg,
            ph.seq_len,
            cfg.optim.micro_batch_size,
            phase_seed(cfg, i),
            rank=run.dd.rank,
            world_size=run.dd.world_size,
        )
        if run.data_state is not None and run.step > end - ph.steps:
            stream.load_state_dict(run.data_state)
        run.data_state = None
        spec = dc_replace(LossSpec.for_objective(cfg.loss, ph.objective), kd_vocab_size=kd_vocab)
        yield Phase(
            i,
            ph,
            end - ph.steps,
            end,
            dcfg,
            stream,
            spec,
            FrozenPairs.for_phase(run.student, ph),
            doubling_edges(ph.seq_len),
        )


# ------------------------------------------------------------------------------------------- step


def train_step(run: Run, ph: Phase) -> StepStats:
    """One optimiser step at ``run.step``: draw the micro-batches, forward/backward each (the loss normalised
    by the step's valid tokens over micro-batches and ranks), clip, step. Raises TrainingDiverged, before
    the optimiser step, when the loss or the gradient norm is not finite."""
    t0 = time.perf_counter()
    cfg, dd, device, spec = run.cfg, run.dd, run.device, ph.spec
    stats = StepStats(lr=lr_at(run.step - ph.start, ph.cfg.steps, ph.cfg.lr, ph.cfg.warmup_steps, ph.cfg.min_lr_ratio))
    for g in run.opt.param_groups:
        g["lr"] = stats.lr
    micro = []
    for _ in range(cfg.optim.grad_accum_steps):
        first = ph.stream.state_dict().get("next_window", 0) + dd.rank * cfg.optim.micro_batch_size
        micro.append((first, {k: v.to(device) for k, v in ph.stream.next().items()}))
    n_valid = max(
        distributed.all_reduce_sum(
            torch.tensor(
                [float((b["labels"][:, 1:] != spec.ignore_index).sum()) for _, b in micro], device=device
            ).sum(),
            dd,
        ).item(),
        1.0,
    )
    mask_dtype = torch.bfloat16 if run.precision == "bf16" else torch.float32
    for first, b in micro:
        mask = attention.attention_mask(b["doc_ids"], ph.data.packing.attention, mask_dtype, grad=True)
        cached = run.cache.lookup(ph.index, first, b["input_ids"], spec) if run.cache and spec.kd_weight else None
        # flex_attention through backward too: activation checkpointing recomputes the student's blocks there
        with attention.attention_for(run.student, mask):
            with autocast_for(run.precision, device):
                loss, per_tok, ce_sum, kd_sum, valid = run.module(b, mask, spec, n_valid, cached)
            loss.backward()
        stats.add(per_tok, ce_sum, kd_sum, loss_by_bucket(per_tok, valid, b["position_ids"][:, 1:], ph.edges))
    stats.grad_norm = _clip(run.student, cfg.optim.grad_clip)
    stats.loss, stats.ce, stats.kd = (
        float(x) / n_valid
        for x in distributed.all_reduce_sum(
            torch.tensor([stats.loss, stats.ce, stats.kd], dtype=torch.float64, device=device), dd
        )
    )
    if not stats.finite:
        run.metrics.log_error(run.step + 1, ph.cfg, stats)
        raise TrainingDiverged(
            f"step {run.step + 1} (phase {ph.cfg.name}): loss {stats.loss}, grad norm "
            f"{stats.grad_norm}; stopped before the optimiser step. Last good checkpoint: "
            f"{RunDir(run.run_dir).latest_checkpoint(resumable=True)}"
        )
    run.opt.step()
    if ph.frozen is not None:
        ph.frozen.restore()
    run.opt.zero_grad(set_to_none=True)
    stats.tokens = sum(int(b["input_ids"].numel()) for _, b in micro) * dd.world_size
    stats.seconds = time.perf_counter() - t0
    return stats


def _clip(model, max_norm: float) -> float:
    """Global gradient norm (over ranks, as torchtitan does for DTensor grads) and clipping."""
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    norm = torch.nn.utils.get_total_norm(grads, 2.0)
    if hasattr(norm, "full_tensor"):
        norm = norm.full_tensor()
    if max_norm and max_norm > 0:
        torch.nn.utils.clip_grads_with_norm_(model.parameters(), max_norm, norm)
    return float(norm)


def manifest(run: Run, ph: Phase, phase_end: bool) -> dict:
    """The checkpoint's ``manifest.json`` fields for the step just taken."""
    cfg, teacher, cache = run.cfg, run.teacher, run.cache
    return {
        "run": cfg.name,
        "phase": ph.cfg.name,
        "phase_index": ph.index,
        "step": run.step,
        "phase_step": run.step - ph.start,
        "phase_end": phase_end,
        "objective": ph.cfg.objective,
        "teacher": cfg.teacher.path if cfg.teacher and ph.cfg.objective != "ce" else None,
        "teacher_theta": models.rope_theta(teacher)
        if teacher is not None
        else (cache.meta["teacher_theta"] if cache is not None else None),
        "data": wconfig.to_dict(ph.data),
        "parent": run.parent,
        "config_hash": run.config_hash,
        "config_hash_version": wconfig.HASH_VERSION,
        "precision": run.precision,
        "compiled": run.compiled,
        "seq_len": ph.cfg.seq_len,
        "tokens": run.tokens,
        "world_size": run.dd.world_size,
    }


def trainer_state(run: Run, ph: Phase) -> dict:
    """What exact resume needs besides weights, optimiser and RNG (``trainer/state.pt``)."""
    return {
        "step": run.step,
        "tokens": run.tokens,
        "phase_index": ph.index,
        "data": ph.stream.state_dict(),
        "config_hash": run.config_hash,
    }


# ------------------------------------------------------------------------------------------- loop


def train(
    cfg: RunConfig,
    *,
    out: str | None = None,
    resume: bool = False,
    progress: bool = True,
    evaluate: EvalFn | None = None,
) -> Path:
    """Run (or resume) a training run; returns the run directory. ``evaluate(model, cfg) -> rows`` is the
    held-out check every ``eval_every`` steps (``workbench.evals.training_eval``; see ``train.evaluation``)."""
    hf_logging.disable_progress_bar()  # one progress bar: ours
    run_dir = run_dir_of(cfg, out)
    lock = None
    first_rank = os.environ.get("RANK", "0") == "0"
    if first_rank:  # one writer per run directory (workbench.runlock); a new one is claimed after preflight
        rundir.check_own(run_dir)
        if run_dir.is_dir():
            lock = rundir.claim(run_dir)
            rundir.clean_leftovers(run_dir)  # a dead writer's temp dirs: ours now that we hold the lock
    try:
        preflight(cfg, run_dir, resume=resume, world_size=int(os.environ.get("WORLD_SIZE", "1")))
        if first_rank and lock is None:
            lock = rundir.claim(run_dir)
    except BaseException:
        if lock is not None:
            lock.release()
        raise
    device = models.pick_device(cfg.device)
    dd = distributed.init(device)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    try:
        run = build(
            cfg,
            run_dir,
            resume=resume,
            device=device,
            dd=dd,
            progress=progress,
            evaluate=evaluate,
        )
        report = CompileReport(run.compiled, dd.is_main)
        for ph in phases(run):
            tracker = PairTracker.for_phase(run, ph)  # W_q/W_k pair updates since the phase start (track_every)
            while run.step < ph.end:
                stats = train_step(run, ph)
                report.after_step(stats.seconds)
                run.step, run.tokens = run.step + 1, run.tokens + stats.tokens
                if lock is not None:
                    lock.beat()  # the heartbeat another host checks (workbench.runlock)
                phase_end = run.step == ph.end
                run.metrics.log_step(run.step, ph.cfg, stats, run.tokens, phase_end)
                tracked = tracker.track(run.student, run.step, phase_end)
                if tracked is not None:
                    run.metrics.track(run.step, pair_tracking.scalars(tracked))
                # eval before the checkpoint: a kill between them loses no record (resume redoes both)
                if run.evaluator.due(run.step, phase_end):
                    run.metrics.log_eval(run.step, ph.cfg, run.evaluator.run(run.student, run.shadow))
                if run.checkpointer.due(run.step, phase_end):
                    saved = run.checkpointer.save(
                        run.step, run.student, run.opt, manifest(run, ph, phase_end), trainer_state(run, ph)
                    )
                    run.parent = saved.name
        run.metrics.close()
        distributed.barrier(dd)
        return run_dir
    finally:
        distributed.shutdown()
        if lock is not None:
            lock.release()
