"""Preparing a run directory (``workbench.runs.RunDir``) for one writer: the lock, the leftovers of dead writers,
the resumable checkpoint, a write probe and the memory check, all before any model is built
(``trainer.preflight`` / ``trainer.train``).

- :func:`claim` holds ``run.lock`` (``workbench.runlock``) for the whole run on rank 0: a second ``workbench
  train`` on the same directory fails at once naming the holder; a dead holder's lock is taken over.
- :func:`clean_leftovers` removes the ``.tmp-*`` / ``.old-*`` directories and ``*.tmp`` files a killed save
  left (only while holding the lock, so never a live writer's), with one note on stderr.
- :func:`check_resumable`: the newest ``ckpt-*`` must be a complete checkpoint; a corrupt one stops
  ``--resume`` naming it (it is never skipped and then overwritten by the resumed run).
- :func:`probe_writable`: create and remove a file in the run directory, so a read-only, full or foreign
  location is one line naming the path before any compute.
- :func:`check_memory`: a training step's estimated memory (``memory.step_memory``, with the teacher in KD
  phases; plus the O(T^2) document mask) against the device budget (``workbench.budget.memory_budget``),
  refused with the estimate.
"""

from __future__ import annotations

import re
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from workbench import attention, checkpoint_io, models, writable
from workbench.budget import budget_source, memory_budget
from workbench.config import ConfigError, RunConfig
from workbench.runlock import LOCK, RunLock
from workbench.runs import CHECKPOINT_PREFIX, METRICS, RUN_YAML, RunDir
from workbench.train import pair_tracking, tracking

# what the trainer writes before its first metrics record or checkpoint (a start killed while it tokenised the
# corpus or ran its first step leaves these): a run directory still, not a foreign one
STARTED = (RUN_YAML, LOCK, tracking.TENSORBOARD, tracking.WANDB, pair_tracking.RECORDS, pair_tracking.START)
# only what the trainer itself writes (a store's ``.tmp-<store>-*`` beside it belongs to another writer)
LEFTOVER = re.compile(
    rf"^\.(tmp|old)-({CHECKPOINT_PREFIX}|probe-).*|^\.{re.escape(RUN_YAML)}\.tmp$"
    rf"|^({'|'.join(map(re.escape, (METRICS, pair_tracking.RECORDS, pair_tracking.START)))})\.tmp$"
)


RunDirError = writable.NotWritable  # the run directory cannot be written: one line naming the path
probe_writable = writable.probe
FS_ERRORS, describe = writable.FS_ERRORS, writable.describe


def check_own(run_dir: Path) -> None:
    """Refuse an existing directory that is not a run's (FileExistsError): a new or empty one, one with a run
    (checkpoints or metrics; ``preflight`` then wants --resume), or only what a failed start left."""
    if run_dir.is_symlink() or (run_dir.exists() and not run_dir.is_dir()):
        raise FileExistsError(
            f"{run_dir}: is {'a symlink' if run_dir.is_symlink() else 'a file'}, not a run "
            "directory; give --out a new or empty directory (nothing is overwritten)"
        )
    lock = RunDir(run_dir).lock_path
    if lock.is_symlink() or (lock.exists() and not lock.is_file()):  # the trainer writes a plain file only
        raise FileExistsError(
            f"{lock}: is not a plain file (a symlink or special file); the trainer would write "
            "through it: remove it first"
        )
    if not run_dir.is_dir() or RunDir(run_dir).has_progress():
        return
    foreign = [p.name for p in run_dir.iterdir() if p.name not in STARTED and not LEFTOVER.match(p.name)]
    if foreign:
        raise FileExistsError(
            f"{run_dir}: exists and is not a run directory (it holds {', '.join(sorted(foreign)[:3])}"
            f"{' ...' if len(foreign) > 3 else ''}); give --out a new or empty directory "
            "(nothing is overwritten)"
        )


def claim(run_dir: Path) -> RunLock:
    """Hold the run's lock (raises ``runlock.RunLocked`` naming the live holder)."""
    return RunLock(run_dir).acquire()


def clean_leftovers(run_dir: Path) -> list[Path]:
    """Remove what dead writers left in ``run_dir`` (call only while holding its lock); returns the paths."""
    gone = []
    if not run_dir.is_dir():
        return gone
    for p in sorted(run_dir.iterdir()):
        if not LEFTOVER.match(p.name):
            continue
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)
        gone.append(p)
    if gone:
        print(
            f"workbench train: removed {len(gone)} leftover(s) of an interrupted writer in {run_dir}: "
            f"{', '.join(p.name for p in gone)}",
            file=sys.stderr,
        )
    return gone


def check_resumable(run_dir: Path) -> None:
    """The newest ``ckpt-<step>`` must verify (manifest, listed files and sizes); else CheckpointError naming it."""
    ckpts = RunDir(run_dir).checkpoint_dirs()
    if not ckpts:
        return
    newest = ckpts[-1]
    try:
        checkpoint_io.verify_checkpoint(newest, full_hash=False)
    except checkpoint_io.CheckpointError as exc:
        raise checkpoint_io.CheckpointError(
            f"{exc}; it is the run's latest checkpoint, so --resume stops here (move it "
            f"away to resume from the one before, nothing was overwritten)"
        ) from None


# A training step's estimate is fitted to measured peaks (-1.4 % to +9.1 %, docs/gpu.md), so on CUDA the step may
# use more of the device than the cruder estimates elsewhere; the rest is the allocator's and CUDA's own.
TRAIN_CUDA_FRACTION = 0.85


@dataclass(frozen=True)
class PhaseMemory:
    """One phase's estimated training step: the model's step (``memory.StepMemory``) and a dense document mask
    where FlexAttention cannot run."""

    index: int
    name: str
    seq_len: int
    step: Any  # workbench.train.memory.StepMemory
    mask: float
    with_teacher: bool

    @property
    def total(self) -> float:
        return self.step.total + self.mask


def phase_memory(cfg: RunConfig, world_size: int, device: str) -> list[PhaseMemory]:
    """The estimated step of every phase on ``device`` over ``world_size`` ranks (the teacher's shape read from
    its config.json; nothing is built)."""
    import torch

    from workbench.train.distill import resolve_precision
    from workbench.train.memory import step_memory
    from workbench.train.phases import phase_data

    precision = resolve_precision(cfg.optim.precision, torch.device(device))
    teacher = None  # the frozen teacher the KD phases hold beside the student (from its config.json)
    if cfg.teacher is not None and not cfg.teacher.cache and any(ph.objective != "ce" for ph in cfg.phases):
        from transformers import AutoConfig  # lazy: only a run with a teacher reads its config

        if not Path(cfg.teacher.path).is_dir():  # as phases.hf_config says it (transformers: "Repo id must be ...")
            raise ConfigError(f"teacher.path: directory {cfg.teacher.path} not found")
        try:
            teacher = models.model_config_of(AutoConfig.from_pretrained(cfg.teacher.path, local_files_only=True))
        except OSError as exc:
            raise ConfigError(f"teacher.path: {cfg.teacher.path}: no readable config.json ({exc})") from None
    out = []
    for i, ph in enumerate(cfg.phases):
        step = step_memory(
            cfg.model,
            ph.seq_len,
            micro_batch=cfg.optim.micro_batch_size,
            world_size=world_size,
            teacher=teacher,  # loaded for the whole run: a CE phase holds it too
            teacher_runs=ph.objective != "ce",
            chunk=cfg.loss.chunk_size,
            checkpointing=cfg.optim.activation_checkpointing,
            precision=precision,
            grad_accum=cfg.optim.grad_accum_steps,
        )
        dense = (
            phase_data(cfg, i).packing.attention == "document"
            and attention.resolve_backend("auto", device, grad=True, seq=ph.seq_len) == "dense"
        )  # flex: O((T/128)^2) only
        mask_dtype = torch.bfloat16 if precision == "bf16" else torch.float32  # as the trainer builds it
        mask = attention.dense_mask_bytes(cfg.optim.micro_batch_size, ph.seq_len, mask_dtype) if dense else 0.0
        reset_teacher = teacher is not None and ph.objective != "ce" and cfg.teacher.positions == "reset"
        if reset_teacher and attention.resolve_backend("auto", device, seq=ph.seq_len) == "dense":
            # the teacher's own document mask (distill.reset_view), in the hidden states' dtype: fp32 unless
            # FSDP2 runs the stream in bf16
            mask += attention.dense_mask_bytes(cfg.optim.micro_batch_size, ph.seq_len, torch.float32)
        out.append(PhaseMemory(i, ph.name, ph.seq_len, step, mask, teacher is not None))
    return out


def check_memory(cfg: RunConfig, world_size: int, device: str) -> None:
    """Refuse a phase whose training step cannot fit the memory budget (estimate, before anything is built)."""
    budget = memory_budget("cuda" if device == "cuda" else "cpu", cuda_fraction=TRAIN_CUDA_FRACTION)
    for pm in phase_memory(cfg, world_size, device):
        if pm.total > budget:
            raise ConfigError(
                f"phases[{pm.index}] ({pm.name}): one step of {cfg.optim.micro_batch_size} x {pm.seq_len:,} "
                f"tokens needs about {pm.total / 2**30:,.1f} GiB (weights, optimiser, activations, logits, teacher; "
                f"workbench.train.memory) but the budget is {budget / 2**30:,.1f} GiB "
                f"({budget_source(device if device == 'cuda' else 'cpu', TRAIN_CUDA_FRACTION)}); lower seq_len or "
                "optim.micro_batch_size (raise grad_accum_steps), or shrink the model"
                + (" (or the teacher: a teacher.cache keeps it out of training)" if pm.with_teacher else "")
            )
