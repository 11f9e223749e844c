"""Pair updates tracked during training: which RoPE pairs of W_q / W_k move while a phase trains.

Every ``track_every`` optimiser steps (config key; 0 = off) and at each phase end, per layer x head x RoPE pair,
the relative update of W_q and W_k since the start of the phase: raw weights, no forward pass, computed by
:func:`workbench.pair_updates.layer_pair_stats`, the same definition ``workbench updates`` applies to
two checkpoints (so the record at a phase end equals ``workbench updates PHASE_START_CKPT PHASE_END_CKPT``).

Written beside ``metrics.jsonl`` (rank 0):

- ``pair_updates.jsonl``: one record a track, ``{"kind": "pair_updates", "step", "phase", "phase_start",
  "rope_theta", "seq_len", "critical_pair", "head_dim", "q_rel_update": [layer][head][pair],
  "k_rel_update": [layer][kv_head][pair], "time"}``; records after a resumed checkpoint are dropped on resume;
- ``pair_updates.start.pt``: the phase-start q/k weights (so a run resumed mid-phase measures from the same start).

:func:`scalars` condenses a record to a few named scalars for a tracker (TensorBoard / W&B): the mean relative
update per pair over layers and heads, and the phase's critical pair's.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from workbench import models, rope
from workbench.pair_updates import layer_pair_stats, live_qk_weights
from workbench.train import metrics as wmetrics

RECORDS = "pair_updates.jsonl"
START = "pair_updates.start.pt"


def _shape(model) -> tuple[int, int, int, int]:
    c = model.config
    heads = int(c.num_attention_heads)
    d = int(getattr(c, "head_dim", None) or c.hidden_size // heads)
    return int(c.num_hidden_layers), heads, int(getattr(c, "num_key_value_heads", None) or heads), d


def snapshot(model) -> list[dict[str, torch.Tensor]]:
    """Per layer: the q/k weights (and biases) as float32 CPU copies: exact, since the trainer keeps fp32 master
    weights (``state.Checkpointer`` refuses others), and half the memory and ``pair_updates.start.pt`` of
    float64 (830 MB for the 1.1B student); the statistics are computed in float64 (``pair_update_stats``)."""
    return [
        {k: v.to(torch.float32) for k, v in live_qk_weights(model, layer).items()} for layer in range(_shape(model)[0])
    ]


def relative_updates(start: list[dict[str, torch.Tensor]], model) -> dict[str, np.ndarray]:
    """{"q_rel_update": [layer, head, pair], "k_rel_update": [layer, kv_head, pair]} of ``model`` against ``start``."""
    n_layers, heads, kv, d = _shape(model)
    per_layer = [layer_pair_stats(start[i], live_qk_weights(model, i), heads, kv, d) for i in range(n_layers)]
    return {f"{p}_rel_update": np.stack([s[p]["rel_update"].numpy() for s in per_layer]) for p in ("q", "k")}


class PairTracker:
    """The tracker of one phase (``for_phase``); ``track`` after every optimiser step (a no-op between tracks)."""

    def __init__(
        self,
        run_dir: Path,
        every: int,
        is_main: bool,
        model,
        *,
        phase: str,
        start_step: int,
        step: int,
        theta: float,
        seq_len: int,
    ):
        self.run_dir, self.every, self.is_main = Path(run_dir), int(every), is_main
        self.phase, self.start_step, self.theta, self.seq_len = phase, start_step, float(theta), int(seq_len)
        self.head_dim = _shape(model)[3]
        frequencies = models.model_inv_freq(model).double().cpu().numpy()  # [d/2] at the phase's theta and scaling
        self.critical = rope.first_pair_beyond(frequencies, self.seq_len)
        self.start: list[dict[str, torch.Tensor]] | None = None
        if not self.every:
            return
        path = self.run_dir / START
        if step > start_step and path.is_file():  # resumed mid-phase: the saved phase start
            saved = torch.load(path, weights_only=True)
            if saved.get("phase") == phase and int(saved.get("step", -1)) == start_step:
                self.start = saved["layers"]
        if self.start is None:
            if step > start_step:  # tracking switched on at a resume: no phase start to measure from
                if is_main:
                    print(
                        f"workbench train: warning: {path} holds no phase-start weights of phase {phase!r}; "
                        "pair updates are not tracked in this phase",
                        file=sys.stderr,
                    )
                self.every = 0
                return
            self.start = snapshot(model)
            if is_main:
                tmp = path.with_suffix(".pt.tmp")
                torch.save({"phase": phase, "step": start_step, "layers": self.start}, tmp)
                os.replace(tmp, path)
        if is_main:
            wmetrics.truncate(self.run_dir / RECORDS, step)

    @classmethod
    def for_phase(cls, run, ph) -> PairTracker:
        """The tracker of the trainer's phase ``ph`` (``trainer.Run``, ``trainer.Phase``)."""
        return cls(
            run.run_dir,
            run.cfg.track_every,
            run.dd.is_main,
            run.student,
            phase=ph.cfg.name,
            start_step=ph.start,
            step=run.step,
            theta=ph.cfg.rope_theta,
            seq_len=ph.cfg.seq_len,
        )

    def due(self, step: int, phase_end: bool) -> bool:
        return bool(self.every) and ((step - self.start_step) % self.every == 0 or phase_end)

    def track(self, model, step: int, phase_end: bool) -> dict[str, Any] | None:
        """Measure and append a record when due (every rank gathers FSDP2 shards; rank 0 writes)."""
        if not self.due(step, phase_end):
            return None
        rel = relative_updates(self.start, model)
        critical = self.critical
        record = {
            "kind": "pair_updates",
            "step": step,
            "phase": self.phase,
            "phase_start": self.start_step,
            "rope_theta": self.theta,
            "seq_len": self.seq_len,
            "head_dim": self.head_dim,
            "critical_pair": int(critical) if 0 <= critical < self.head_dim // 2 else None,
            **{k: v.tolist() for k, v in rel.items()},
            "time": time.time(),
        }
        if self.is_main:
            with open(self.run_dir / RECORDS, "a") as f:
                f.write(json.dumps(record) + "\n")
        return record


def read_records(run_dir: str | Path) -> list[dict[str, Any]]:
    """The records of a run's ``pair_updates.jsonl`` (a line cut short by a kill is skipped); [] when none."""
    path = Path(run_dir) / RECORDS
    if not path.is_file():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return out


def scalars(record: dict[str, Any]) -> dict[str, float]:
    """A few tracker scalars of a record: mean relative update per pair (over layers and heads) of W_q and W_k,
    and that of the phase's critical pair."""
    out: dict[str, float] = {}
    for p in ("q", "k"):
        by_pair = np.asarray(record[f"{p}_rel_update"], dtype=np.float64).mean(axis=(0, 1))
        out[f"pair_updates/{p}_mean"] = float(by_pair.mean())
        for j, v in enumerate(by_pair):
            out[f"pair_updates/{p}_pair{j:02d}"] = float(v)
        if record.get("critical_pair") is not None:
            out[f"pair_updates/{p}_critical"] = float(by_pair[record["critical_pair"]])
    return out
