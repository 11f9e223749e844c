"""Experiment tracking beside ``metrics.jsonl``: TensorBoard event files by default, Weights & Biases when asked.

``Tracker.log(record)`` receives every record the trainer appends to ``metrics.jsonl`` (``MetricsLog.append``)
and writes its numeric scalars, so the dashboard's Training tab (which reads ``metrics.jsonl``) and TensorBoard /
W&B show the same numbers. Tags: ``train/<key>`` for the step records (loss, ce, kd, lr, grad_norm, rope_theta,
tokens_per_s, peak_mem_mb, tokens, and ``train/loss_by_bucket/<bucket>``); ``eval/<task>/<length>/<metric>`` for
the held-out retrieval rows; ``error/<key>`` for a diverged step. Only rank 0 writes (the caller checks).

- TensorBoard: ``torch.utils.tensorboard.SummaryWriter`` into ``<run>/tensorboard`` (``logging.tensorboard``,
  on by default); a resumed run appends a new event file and TensorBoard merges them by step.
- W&B: ``logging.wandb: {project, mode: offline|online}`` (offline by default: files under ``<run>/wandb``);
  ``wandb`` is imported only then, and a missing package is one clear error at the start of the run.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

TENSORBOARD = "tensorboard"  # <run>/tensorboard: the event files
WANDB = "wandb"  # <run>/wandb: W&B's files (wandb.init(dir=<run>))
# record fields that label a record rather than measure it
_LABELS = ("kind", "step", "phase", "time", "task", "length")


def scalars(record: dict) -> dict[str, float]:
    """The numeric scalars of one ``metrics.jsonl`` record, keyed by their tracking tag."""
    kind = record.get("kind", "train")
    if kind == "eval":
        prefix = "/".join(["eval"] + [str(record[k]) for k in ("task", "length") if k in record])
    else:
        prefix = kind
    out: dict[str, float] = {}
    for key, value in record.items():
        if key in _LABELS:
            continue
        if isinstance(value, dict):
            for sub, v in value.items():
                if _number(v):
                    out[f"{prefix}/{key}/{sub}"] = float(v)
        elif _number(value):
            out[f"{prefix}/{key}"] = float(value)
    return out


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(float(v))


class Tracker:
    """TensorBoard and/or W&B sinks for a run's records (build it on rank 0 only)."""

    def __init__(self, cfg, run_dir: Path):
        self.writers: list[Any] = []
        self.wandb_run = None
        logging_cfg = getattr(cfg, "logging", None)
        if logging_cfg is None:
            return
        if logging_cfg.tensorboard:
            from torch.utils.tensorboard import SummaryWriter  # lazy: imports tensorboard

            self.writers.append(SummaryWriter(log_dir=str(Path(run_dir) / TENSORBOARD)))
        if logging_cfg.wandb is not None:
            try:
                import wandb  # lazy: never required unless configured
            except ImportError as e:
                raise RuntimeError(
                    "logging.wandb is set but the wandb package is not installed "
                    "(pip install wandb, or remove logging.wandb)"
                ) from e
            from workbench import config as wconfig

            self.wandb_run = wandb.init(
                project=logging_cfg.wandb.project,
                mode=logging_cfg.wandb.mode,
                name=cfg.name,
                dir=str(run_dir),
                config=wconfig.to_dict(cfg),
                resume="allow",
            )

    def log(self, record: dict) -> None:
        self.log_values(scalars(record), int(record.get("step", 0)), record.get("time"))

    def log_values(self, values: dict[str, float], step: int, walltime: float | None = None) -> None:
        for w in self.writers:
            for tag, v in values.items():
                w.add_scalar(tag, v, global_step=step, walltime=walltime)
        if self.wandb_run is not None and values:
            self.wandb_run.log(values, step=step)

    def flush(self) -> None:
        for w in self.writers:
            w.flush()

    def close(self) -> None:
        for w in self.writers:
            w.close()
        self.writers = []
        if self.wandb_run is not None:
            self.wandb_run.finish()
            self.wandb_run = None
