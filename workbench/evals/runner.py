"""Batched evaluation of retrieval samples with a KV cache: one prefill per batch, then a lean greedy loop.

Per batch (all prompts the same length, so no padding and no attention mask are needed):

1. prefill ``prompt + gold[:-1]`` once with ``use_cache=True`` and logits kept only for the answer
   positions: these give the teacher-forced log-probability of the gold answer *and* the first greedy token;
2. crop the cache back to the prompt and decode greedily one token per step (explicit ``position_ids``).

So greedy decoding and the teacher-forced score share one prefill. The output of the loop is identical to
``model.generate(do_sample=False)`` (tested).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from workbench.config import ConfigError
from workbench.evals import scoring
from workbench.evals.render import Rendering, SyntheticRendering
from workbench.evals.tasks import TASKS, Sample, make_sample, make_samples, parse_tasks

# prompt tokens per batch when no batch size is given. On CPU attention memory traffic dominates beyond a
# few thousand tokens per batch (measured with analyses/benchmarks/bench_eval.py: batches of 8 x 512 tokens
# beat both 1 and 32); GPUs want large batches.
DEFAULT_BATCH_TOKENS = {"cpu": 4096, "cuda": 131072}


@dataclass
class Result:
    """The scores of one sample."""

    sample: Sample
    generated: np.ndarray
    prediction: str
    correct: bool
    match_all: float
    match_part: float
    answer_logprob: float


def model_device(model) -> torch.device:
    return next(model.parameters()).device


@torch.no_grad()
def greedy_batch(
    model, prompts: torch.Tensor, gold: torch.Tensor, gold_mask: torch.Tensor, max_new_tokens: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Greedy continuation and teacher-forced gold log-prob for equal-length prompts.

    prompts [B, L] ids; gold [B, A] ids right-padded (any id) with ``gold_mask`` [B, A] marking real tokens.
    Returns (generated [B, max_new_tokens] ids, answer_logprob [B] float32).
    """
    batch, length = prompts.shape
    answer = gold.shape[1]
    if answer < 1 or max_new_tokens < 1:
        raise ValueError("need at least one answer token and one new token")
    device = prompts.device
    ids = torch.cat([prompts, gold[:, :-1]], dim=1)
    pos = torch.arange(ids.shape[1], device=device).unsqueeze(0).expand(batch, -1)
    out = model(input_ids=ids, position_ids=pos, use_cache=True, logits_to_keep=answer)
    logits = out.logits  # [B, A, V]: position L-1+t predicts gold[:, t]
    logprob = scoring.answer_logprob(logits, gold, gold_mask.to(logits.dtype))
    cache = out.cache
    cache.crop(-(answer - 1))  # back to the prompt only (transformers 5: negative = tokens to remove)
    token = logits[:, 0].argmax(-1)
    generated = [token]
    for step in range(1, max_new_tokens):
        step_pos = torch.full((batch, 1), length + step - 1, device=device, dtype=torch.long)
        out = model(input_ids=token[:, None], position_ids=step_pos, cache=cache, use_cache=True)
        cache = out.cache
        token = out.logits[:, -1].argmax(-1)
        generated.append(token)
    return torch.stack(generated, dim=1), logprob


def score_samples(
    model,
    samples: Sequence[Sample],
    rendering: Rendering,
    *,
    batch_size: int | None = None,
    extra_tokens: int = 0,
    progress=None,
) -> list[Result]:
    """Score samples in batches of equal prompt length (consecutive samples of one length form a batch).

    Greedy decoding runs for the longest gold answer of the batch plus ``extra_tokens``; ``progress`` is an
    optional tqdm bar updated per sample.
    """
    device = model_device(model)
    results: list[Result] = []
    budget = DEFAULT_BATCH_TOKENS.get(device.type, DEFAULT_BATCH_TOKENS["cpu"])
    for chunk in _batches(samples, batch_size, budget):
        prompts = torch.as_tensor(np.stack([s.input_ids for s in chunk]), device=device)
        answer = max(len(s.answer_ids) for s in chunk)
        gold = torch.zeros((len(chunk), answer), dtype=torch.long, device=device)
        mask = torch.zeros((len(chunk), answer), dtype=torch.bool, device=device)
        for row, s in enumerate(chunk):
            gold[row, : len(s.answer_ids)] = torch.as_tensor(s.answer_ids, device=device)
            mask[row, : len(s.answer_ids)] = True
        generated, logprob = greedy_batch(model, prompts, gold, mask, answer + extra_tokens)
        generated = generated.cpu().numpy()
        logprob = logprob.cpu().numpy()
        for row, s in enumerate(chunk):
            gen = generated[row]
            pred = rendering.decode(gen)
            wb = rendering.word_boundary
            results.append(
                Result(
                    sample=s,
                    generated=gen,
                    prediction=pred,
                    correct=scoring.exact_match(gen, s.answer_ids),
                    match_all=scoring.match_all(pred, s.refs, word_boundary=wb),
                    match_part=scoring.match_part(pred, s.refs, word_boundary=wb),
                    answer_logprob=float(logprob[row]),
                )
            )
        if progress is not None:
            progress.update(len(chunk))
    return results


def _batches(samples: Sequence[Sample], batch_size: int | None, budget: int) -> Iterable[list[Sample]]:
    chunk: list[Sample] = []
    for s in samples:
        size = batch_size or max(1, budget // s.length)
        if chunk and (len(chunk) >= size or chunk[0].length != s.length):
            yield chunk
            chunk = []
        chunk.append(s)
    if chunk:
        yield chunk


def quick_eval(
    model,
    *,
    lengths: Sequence[int],
    samples: int = 16,
    seed: int = 0,
    tasks: Sequence[str] = ("passkey",),
    depths: Sequence[float] | None = None,
    batch_size: int | None = None,
) -> list[dict]:
    """A fast held-out retrieval check for a model on the synthetic vocabulary (used during training).

    One dict per (task, length) with keys ``task``, ``length``, ``accuracy`` (greedy exact match),
    ``answer_logprob`` (mean over samples of log p(gold answer), summed over its tokens). ``depths=None``
    spreads the ``samples`` evenly over 0-100 %; a list gives ``samples`` samples at each depth. No store,
    no progress bar; the model is left in the mode it was in.
    """
    tasks = parse_tasks(tasks)
    if samples < 1:
        raise ValueError(f"samples must be >= 1, got {samples}")
    rendering = SyntheticRendering()
    was_training = model.training
    model.eval()
    rows = []
    try:
        for task in tasks:
            for length in lengths:
                if depths is None:
                    grid = [float(d) for d in np.linspace(0.0, 100.0, samples)] if samples > 1 else [50.0]
                    batch = [
                        make_sample(task, int(length), d, rendering, seed=seed, index=i) for i, d in enumerate(grid)
                    ]
                else:
                    batch = make_samples(task, int(length), list(depths), samples, rendering, seed=seed)
                res = score_samples(model, batch, rendering, batch_size=batch_size)
                rows.append(
                    {
                        "task": task,
                        "length": int(length),
                        "accuracy": float(np.mean([r.correct for r in res])),
                        "answer_logprob": float(np.mean([r.answer_logprob for r in res])),
                    }
                )
    finally:
        model.train(was_training)
    return rows


def check_training_eval(cfg, where: str) -> None:
    """Refuse a run config whose ``eval_tasks`` this callback does not know, before training starts (the callback
    would otherwise fail at the first eval)."""
    for j, t in enumerate(cfg.eval_tasks):
        if t not in TASKS:
            raise ConfigError(f"{where}: eval_tasks[{j}]: unknown task {t!r}; known tasks: {', '.join(TASKS)}")


def training_eval(model, cfg) -> list[dict]:
    """The held-out retrieval check during training, as the trainer's evaluation callback
    (``workbench.train.train(cfg, evaluate=training_eval)``): :func:`quick_eval` at the run config's
    ``eval_lengths``, ``eval_samples``, ``eval_tasks`` and ``seed``; one row per (task, length)."""
    return quick_eval(
        model, lengths=list(cfg.eval_lengths), samples=cfg.eval_samples, seed=cfg.seed, tasks=list(cfg.eval_tasks)
    )
