"""Trainer state inside a checkpoint (``trainer/state.pt``), finding the checkpoint to resume, pruning.

The HF weights and ``manifest.json`` are written by ``workbench.models.save_checkpoint``; this module
adds what exact resume needs on top: optimiser state (full, keyed by parameter name, so it loads under
any world size), the step, the data cursor and every RNG (per rank).
"""

from __future__ import annotations

import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

from workbench import models

STATE_DIR = "trainer"
STATE_FILE = "state.pt"


def rng_state() -> dict[str, Any]:
    """torch / numpy / python RNG state of this process, in a form ``torch.load(weights_only=True)`` reads."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {"torch": torch.get_rng_state(), "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), pos,
                                                        has_gauss, cached],
             "python": random.getstate()}
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
        raise models.CheckpointError(f"{ckpt}: no {STATE_DIR}/{STATE_FILE}; this checkpoint cannot be resumed "
                                     "(saved without trainer state)")
    meta = models.read_manifest(ckpt).get("files", {}).get(f"{STATE_DIR}/{STATE_FILE}")
    if meta is not None:
        models.verify_file(path, meta["sha256"])
    return torch.load(path, map_location="cpu", weights_only=True)


def latest_checkpoint(run_dir: Path) -> Path | None:
    """The newest complete checkpoint (manifest present, every listed file there with its size) of a run, or
    None. Hashes are checked when it is loaded: a corrupt latest checkpoint is an error, never skipped."""
    for ckpt in reversed(models.list_checkpoints(run_dir)):
        try:
            models.verify_checkpoint(ckpt, full_hash=False)
        except models.CheckpointError:
            continue
        if (ckpt / STATE_DIR / STATE_FILE).is_file():
            return ckpt
    return None


def prune(run_dir: Path, keep_last: int) -> list[Path]:
    """Delete all but the newest ``keep_last`` checkpoints that are *not* phase ends (keep_last <= 0: keep all).
    Phase-end checkpoints are never deleted: the per-pair analyses compare every phase's final weights."""
    if keep_last <= 0:
        return []
    regular = [c for c in models.list_checkpoints(run_dir) if not models.read_manifest(c).get("phase_end")]
    doomed = regular[:-keep_last]
    for c in doomed:
        shutil.rmtree(c)
    return doomed
