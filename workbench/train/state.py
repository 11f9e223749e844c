"""Checkpointing for the trainer: trainer state inside a checkpoint (``trainer/state.pt``), finding the
checkpoint to resume, pruning, and the ``Checkpointer`` component the training loop calls.

The HF weights and ``manifest.json`` are written by ``workbench.checkpoint_io.save_checkpoint``; this module
adds what exact resume needs on top: optimiser state (full, keyed by parameter name, so it loads under
any world size), the step, the data cursor and every RNG (per rank).
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict, set_optimizer_state_dict

from workbench import checkpoint_io, tokenizers
from workbench.checkpoint_io import STATE_DIR, STATE_FILE
from workbench.runs import RunDir
from workbench.train import distributed


def rng_state() -> dict[str, Any]:
    """torch / numpy / python RNG state of this process, in a form ``torch.load(weights_only=True)`` reads."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached],
        "python": random.getstate(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def write_state(ckpt_tmp: Path, state: dict[str, Any]) -> None:
    """Write trainer state into a checkpoint's temp dir (used as ``save_checkpoint(extra=...)``)."""
    (ckpt_tmp / STATE_DIR).mkdir()
    torch.save(state, ckpt_tmp / STATE_DIR / STATE_FILE)


def read_state(ckpt: Path) -> dict[str, Any]:
    """The trainer state of a checkpoint, after checking its sha256 against the manifest (cached verdict)."""
    path = Path(ckpt) / STATE_DIR / STATE_FILE
    if not path.is_file():
        raise checkpoint_io.CheckpointError(
            f"{ckpt}: no {STATE_DIR}/{STATE_FILE}; this checkpoint cannot be resumed (saved without trainer state)"
        )
    meta = checkpoint_io.read_manifest(ckpt).get("files", {}).get(f"{STATE_DIR}/{STATE_FILE}")
    if meta is not None:
        checkpoint_io.verify_file(path, meta["sha256"])
    return torch.load(path, map_location="cpu", weights_only=True)


def prune(run_dir: Path, keep_last: int) -> list[Path]:
    """Delete all but the newest ``keep_last`` checkpoints that are *not* phase ends (keep_last <= 0: keep all).
    Phase-end checkpoints are never deleted: the per-pair analyses compare every phase's final weights; nor is
    a ``ckpt-*`` symlink (the trainer writes none: not ours, and its target lies elsewhere)."""
    if keep_last <= 0:
        return []
    run = RunDir(run_dir)
    ends = set(run.phase_ends())
    regular = [c for c in run.checkpoints() if c not in ends and not c.is_symlink()]
    doomed = regular[:-keep_last]
    for c in doomed:
        checkpoint_io.discard_directory(c)  # a kill mid-delete leaves a .old-* leftover, not a half ckpt-*
    return doomed


class Checkpointer:
    """Saves the run (HF weights + manifest + trainer state, every ``every`` steps and at each phase end) and
    restores it for ``--resume``. Under FSDP2 the full state is gathered to rank 0, which writes it through
    ``shadow`` (a plain CPU copy of the student); every rank's RNG state is saved."""

    def __init__(self, run_dir: Path, every: int, keep_last: int, dd: distributed.Dist, tokenizer=None, shadow=None):
        self.run_dir, self.every, self.keep_last, self.dd = Path(run_dir), every, keep_last, dd
        self.tokenizer, self.shadow = tokenizer, shadow

    def due(self, step: int, phase_end: bool) -> bool:
        return phase_end or bool(self.every and step % self.every == 0)

    def load(self, ckpt: Path, student, opt) -> dict[str, Any]:
        """Optimiser state and this rank's RNG state from ``ckpt`` (the weights were loaded with the student);
        returns the trainer state (step, tokens, data cursor)."""
        st = read_state(ckpt)
        set_optimizer_state_dict(student, opt, st["optimizer"], options=StateDictOptions(full_state_dict=True))
        set_rng_state(st["rng"][self.dd.rank if self.dd.rank < len(st["rng"]) else 0])
        return st

    def save(self, step: int, student, opt, manifest: dict, trainer_state: dict) -> Path:
        """Write ``ckpt-<step>`` atomically (rank 0), then prune old regular checkpoints; a collective."""
        path = RunDir(self.run_dir).checkpoint_path(step)
        msd, osd = get_state_dict(student, opt, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        low = sorted({str(v.dtype) for v in msd.values() if v.is_floating_point() and v.dtype != torch.float32})
        if low:  # bf16 runs compute in bf16 but keep (and save) fp32 master weights
            raise RuntimeError(f"{path}: refusing to save non-fp32 master weights ({', '.join(low)})")
        rngs = distributed.all_gather_objects(rng_state(), self.dd)
        if self.dd.is_main:
            model, weights = student, msd  # msd: the weights already on the CPU (no second copy)
            if self.shadow is not None:
                self.shadow.load_state_dict(msd)
                model, weights = self.shadow, None
            full = {**trainer_state, "optimizer": osd, "rng": rngs}

            def extra(tmp: Path) -> None:
                write_state(tmp, full)
                if self.tokenizer is not None:  # the run's tokenizer travels with every checkpoint
                    tokenizers.save(self.tokenizer, tmp)

            checkpoint_io.save_checkpoint(model, path, manifest, extra=extra, state_dict=weights)
        distributed.barrier(self.dd)
        if self.dd.is_main:
            prune(self.run_dir, self.keep_last)
        return path
