"""Held-out evaluation during training, through a callback the caller passes (the trainer knows no task).

``evaluate(model, cfg) -> list[dict]`` runs on rank 0 every ``cfg.eval_every`` steps and at each phase end,
on the student in eval mode under ``torch.no_grad()``; each dict becomes one ``kind: eval`` record of
``metrics.jsonl``. ``workbench.evals.training_eval`` is the retrieval check the ``workbench train`` command
passes; ``train(cfg)`` without one skips the evals (with one warning when ``eval_every`` is set).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import torch
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

from workbench.config import RunConfig
from workbench.train import distributed

EvalFn = Callable[[torch.nn.Module, RunConfig], list[dict]]


class Evaluator:
    def __init__(self, cfg: RunConfig, evaluate: EvalFn | None, dd: distributed.Dist):
        self.cfg, self.fn, self.dd = cfg, evaluate, dd
        if cfg.eval_every and evaluate is None and dd.is_main:
            warnings.warn(
                "eval_every is set but no evaluate callback was passed to train(); skipping evals "
                "(pass evaluate=workbench.evals.training_eval)",
                stacklevel=3,
            )

    def due(self, step: int, phase_end: bool) -> bool:
        return self.fn is not None and bool(self.cfg.eval_every) and (step % self.cfg.eval_every == 0 or phase_end)

    def run(self, student, shadow=None) -> list[dict]:
        """The callback's rows on rank 0 (``[]`` elsewhere); a collective when FSDP2 shards the student."""
        if self.dd.enabled:
            msd = get_model_state_dict(student, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
            if self.dd.is_main:
                shadow.load_state_dict(msd)
        rows: list[dict] = []
        if self.dd.is_main:
            model = shadow if shadow is not None else student
            was_training = model.training
            model.eval()
            # compiled blocks (optim.compile) run eagerly here: generation with a KV cache changes shapes and
            # strides every step, which would recompile the training graphs up to dynamo's limit
            with torch.no_grad(), torch.compiler.set_stance("force_eager"):
                rows = list(self.fn(model, self.cfg))
            model.train(was_training)
        distributed.barrier(self.dd)
        return rows
