"""What a run writes besides checkpoints: ``run.yaml``, ``metrics.jsonl`` (one JSON record a line) and
the progress bar (the paths are ``workbench.runs.RunDir``'s; reading the records back is ``RunDir.metrics``).

Records: ``kind: train`` every ``metrics_every`` steps and at each phase end (loss, ce, kd as means over the
step's valid tokens of all ranks, lr, grad norm, tokens, throughput, peak memory, loss by position bucket),
``kind: eval`` (the evaluation callback's rows), ``kind: error`` (a diverged step). On resume the records of
steps after the checkpoint are dropped, atomically, since they are recomputed. Only rank 0 writes.
"""

from __future__ import annotations

import json
import math
import os
import resource
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import yaml
from tqdm.auto import tqdm

from workbench import config as wconfig
from workbench.config import PhaseConfig, RunConfig
from workbench.runs import RunDir, parse_record
from workbench.train import distributed
from workbench.train.tracking import Tracker


@dataclass
class StepStats:
    """One optimiser step. While it runs: sums over its micro-batches on this rank (``add``); once done,
    ``loss``/``ce``/``kd`` are the means over the step's valid tokens of all ranks. ``buckets`` stay per-rank
    sums (summed over ranks only when logged: a collective)."""

    loss: float = 0.0
    ce: float = 0.0
    kd: float = 0.0
    buckets: dict[str, torch.Tensor] = field(default_factory=dict)  # [sum, count] on the device
    lr: float = 0.0
    grad_norm: float = 0.0
    tokens: int = 0  # over all ranks
    seconds: float = 0.0

    def add(
        self, per_token: torch.Tensor, ce_sum: torch.Tensor, kd_sum: torch.Tensor, buckets: dict[str, torch.Tensor]
    ) -> None:
        self.loss += float(per_token.sum())
        self.ce += float(ce_sum)
        self.kd += float(kd_sum)
        for key, acc in buckets.items():
            self.buckets[key] = acc if key not in self.buckets else self.buckets[key] + acc

    @property
    def finite(self) -> bool:
        return math.isfinite(self.loss) and math.isfinite(self.grad_norm)


class MetricsLog:
    """``metrics.jsonl`` and the progress bar of a run (rank 0 writes; ``log_step`` is called on every rank)."""

    def __init__(
        self,
        cfg: RunConfig,
        run_dir: Path,
        step: int,
        total: int,
        dd: distributed.Dist,
        device: torch.device,
        progress: bool = True,
    ):
        self.path, self.every, self.dd, self.device = RunDir(run_dir).metrics_path, cfg.metrics_every, dd, device
        if dd.is_main:
            Path(run_dir).mkdir(parents=True, exist_ok=True)
            write_run_yaml(cfg, Path(run_dir))
            truncate(self.path, step)
        self.tracker = Tracker(cfg, Path(run_dir)) if dd.is_main else None  # TensorBoard / W&B beside the jsonl
        self.bar = tqdm(
            total=total,
            initial=step,
            disable=not (progress and dd.is_main),
            desc="train",
            unit="step",
            dynamic_ncols=True,
        )

    def append(self, record: dict) -> None:
        if self.dd.is_main:
            with open(self.path, "a") as f:
                f.write(json.dumps(record) + "\n")
            if self.tracker is not None:
                self.tracker.log(record)

    def log_step(self, step: int, ph: PhaseConfig, stats: StepStats, tokens: int, phase_end: bool) -> None:
        if step % self.every == 0 or phase_end:
            buckets = reduce_buckets(stats.buckets, self.dd)  # a collective: every rank
            self.append(
                {
                    "kind": "train",
                    "step": step,
                    "phase": ph.name,
                    "rope_theta": ph.rope_theta,
                    "loss": stats.loss,
                    "ce": stats.ce,
                    "kd": stats.kd,
                    "lr": stats.lr,
                    "grad_norm": stats.grad_norm,
                    "tokens": tokens,
                    "tokens_per_s": stats.tokens / stats.seconds,
                    "peak_mem_mb": peak_mem_mb(self.device),
                    "loss_by_bucket": buckets,
                    "time": time.time(),
                }
            )
        self.bar.update(1)
        self.bar.set_postfix(phase=ph.name, loss=f"{stats.loss:.4f}", theta=f"{ph.rope_theta:g}")

    def log_eval(self, step: int, ph: PhaseConfig, rows: list[dict]) -> None:
        for r in rows:
            self.append({"kind": "eval", "step": step, "phase": ph.name, "rope_theta": ph.rope_theta, **r})

    def track(self, step: int, values: dict[str, float]) -> None:
        """Scalars that live in their own file (e.g. ``pair_updates.jsonl``) sent to the tracker only."""
        if self.tracker is not None:
            self.tracker.log_values(values, step)

    def log_error(self, step: int, ph: PhaseConfig, stats: StepStats) -> None:
        self.append(
            {
                "kind": "error",
                "step": step,
                "phase": ph.name,
                "loss": stats.loss,
                "grad_norm": stats.grad_norm,
                "time": time.time(),
            }
        )

    def close(self) -> None:
        self.bar.close()
        if self.tracker is not None:
            self.tracker.close()


def reduce_buckets(buckets: dict[str, torch.Tensor], dd: distributed.Dist) -> dict[str, float]:
    """Mean loss per bucket over ranks (a collective, on the tensors' device: NCCL reduces no CPU tensors)."""
    keys = list(buckets)
    if not keys:
        return {}
    t = distributed.all_reduce_sum(torch.stack([buckets[k] for k in keys]), dd)
    return {k: (s / c if c else None) for k, (s, c) in zip(keys, t.tolist())}


def peak_mem_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def truncate(path: Path, step: int) -> None:
    """On resume, drop records of steps after the checkpoint (they are recomputed), atomically; a line that is
    no record (one cut short by a kill) goes with them."""
    if not path.exists():
        return
    lines = path.read_bytes().splitlines()
    keep = [ln for ln in lines if (rec := parse_record(ln)) is not None and rec.get("step", 0) <= step]
    if len(keep) != len(lines):
        tmp = path.with_suffix(".jsonl.tmp")
        tmp.write_bytes(b"".join(ln + b"\n" for ln in keep))
        os.replace(tmp, path)


def write_run_yaml(cfg: RunConfig, run_dir: Path) -> None:
    """The run's resolved config, atomically; rewritten only when it changed (a fresh start, or a --resume that
    changed what the hash leaves out: description, logging, evaluation, checkpointing)."""
    target = RunDir(run_dir).config_path
    text = yaml.safe_dump(wconfig.to_dict(cfg), sort_keys=False)
    if target.is_file() and target.read_text() == text:
        return
    tmp = run_dir / f".{target.name}.tmp"
    tmp.write_text(text)
    os.replace(tmp, target)
