"""Checkpoints x tasks x lengths x depths x samples -> one xarray Dataset in the store's ``retrieval`` group.

Everything that can be wrong with a request (unknown task, bad length or depth, a checkpoint that is not
there or is incomplete, a length beyond the positions a checkpoint was trained with, a store that already
holds a checkpoint or was written with another grid) is found by :func:`plan` before any weights load.

Position limit of a checkpoint: the ``seq_len`` its manifest records (the trainer's phase length), else
``max_position_embeddings`` of its ``config.json``. Longer prompts are refused unless ``extrapolate`` is
set; the flag is stored per checkpoint (coordinate ``extrapolate``) and in the attrs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import xarray as xr
from tqdm.auto import tqdm

from workbench import checkpoint_io, models, tokenizers
from workbench import checkpoints as ck
from workbench import store as wstore  # the module; `store` is a store path
from workbench.evals import tasks as T
from workbench.evals.render import Rendering, SyntheticRendering, rendering_for
from workbench.evals.runner import score_samples


@dataclass
class Plan:
    """A validated evaluation request."""

    checkpoints: list[ck.Info]
    tasks: list[str]
    lengths: list[int]
    depths: list[float]
    samples: int
    seed: int
    extrapolate: bool
    tokenizers: dict[str, str] = field(default_factory=dict)  # label -> "synthetic" or a tokenizer directory
    max_positions: dict[str, tuple[int, str]] = field(default_factory=dict)  # label -> (limit, its source)
    extrapolating: dict[str, bool] = field(default_factory=dict)  # label -> some length beyond the limit
    renderings: dict[str, Rendering] = field(default_factory=dict)  # tokenizer source -> rendering (loaded once)
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def total(self) -> int:
        return len(self.checkpoints) * len(self.tasks) * len(self.lengths) * len(self.depths) * self.samples


def load_rendering(tokenizer: str) -> Rendering:
    """The rendering for ``"synthetic"`` or a local tokenizer directory (offline)."""
    if tokenizer == ck.SYNTHETIC:
        return SyntheticRendering()
    return rendering_for(tokenizers.load(tokenizer))


MAX_PROMPTS = 1_000_000  # one eval request at most (hours on a GPU at 128k tokens; a typo like --depths 100000)


def plan(
    checkpoints: Sequence[str | Path],
    *,
    tasks: str | Sequence[str],
    lengths: Sequence[int],
    depths: int | Sequence[float],
    samples: int,
    seed: int = 0,
    extrapolate: bool = False,
    tokenizer: str | None = None,
    store: str | Path | None = None,
) -> Plan:
    """Validate a request (cheap: no weights are loaded). Raises ValueError / CheckpointError / StoreError."""
    if not checkpoints:
        raise ValueError("no checkpoints given")
    task_names = T.parse_tasks(tasks)
    lengths = [int(x) for x in lengths]
    if not lengths or any(x < 1 for x in lengths) or len(set(lengths)) != len(lengths):
        raise ValueError(f"lengths must be distinct positive integers, got {lengths}")
    depth_list = T.depth_grid(depths) if isinstance(depths, (int, np.integer)) else [float(d) for d in depths]
    if not depth_list or any(not 0 <= d <= 100 for d in depth_list) or len(set(depth_list)) != len(depth_list):
        raise ValueError(f"depths must be distinct percentages in [0, 100], got {depth_list}")
    if samples < 1:
        raise ValueError(f"samples must be >= 1, got {samples}")
    if len(depth_list) > min(lengths):  # more depths than positions: the same prompts again and again
        raise ValueError(
            f"depths: {len(depth_list)} depths but the shortest length has only {min(lengths)} "
            f"positions to put the needle at; ask for at most {min(lengths)} (e.g. --depths 11)"
        )
    prompts = len(checkpoints) * len(task_names) * len(lengths) * len(depth_list) * int(samples)
    if prompts > MAX_PROMPTS:
        raise ValueError(
            f"{len(checkpoints)} checkpoints x {len(task_names)} tasks x {len(lengths)} lengths x "
            f"{len(depth_list)} depths x {samples} samples = {prompts:,} prompts "
            f"({prompts // len(lengths) * sum(lengths):,} tokens to score), over the limit of "
            f"{MAX_PROMPTS:,}; ask for fewer depths, samples or lengths"
        )
    ckpts, limits, toks, renderings = [], {}, {}, {}
    for path in checkpoints:
        c = ck.inspect(path)
        ckpts.append(c)
        limits[c.label] = c.position_limit()
        # its own tokenizer, else --tokenizer; synthetic only for the 128-row synthetic vocabulary
        tok, toks[c.label] = ck.tokenizer(c.path, tokenizer or "auto")  # one clear error naming --tokenizer otherwise
        if toks[c.label] not in renderings:  # the tokenizer just loaded, not loaded again per use
            renderings[toks[c.label]] = rendering_for(tok)
    names = [c.label for c in ckpts]
    if len(set(names)) != len(names):
        raise ValueError(f"checkpoint names are not unique: {names}")
    extrapolating = {}
    for c in ckpts:
        limit, source = limits[c.label]
        too_long = [x for x in lengths if x > limit]
        if too_long and not extrapolate:
            raise ValueError(
                f"{c.label}: lengths {too_long} exceed the {limit} positions it was trained "
                f"or configured for ({source}); pass --extrapolate (extrapolate=True) to "
                "evaluate beyond them (it is recorded in the results)"
            )
        extrapolating[c.label] = bool(too_long)
    for rendering in renderings.values():  # every sample must fit in the shortest length with every rendering (cheap)
        for task in task_names:
            T.make_samples(task, min(lengths), depth_list, int(samples), rendering, seed=seed)
    p = Plan(
        ckpts,
        task_names,
        sorted(lengths),
        depth_list,
        int(samples),
        int(seed),
        bool(extrapolate),
        tokenizers=toks,
        max_positions=limits,
        extrapolating=extrapolating,
        renderings=renderings,
    )
    if store is not None:
        check_store(store, p)
    return p


def check_store(store: str | Path, p: Plan) -> None:
    """Refuse, before any work, a store that already has these checkpoints or another grid."""
    skeleton = xr.Dataset(
        coords={
            "checkpoint": np.array([c.label for c in p.checkpoints], dtype=object),
            "task": np.array(p.tasks, dtype=object),
            "length": np.array(p.lengths),
            "depth": np.array(p.depths, dtype=np.float64),
            "sample": np.arange(p.samples),
        }
    )
    wstore.refuse(store, wstore.RETRIEVAL, skeleton)


def evaluate_model(
    model,
    rendering: Rendering,
    *,
    tasks: Sequence[str],
    lengths: Sequence[int],
    depths: Sequence[float],
    samples: int,
    seed: int = 0,
    batch_size: int | None = None,
    extra_tokens: int | None = None,
    progress=None,
) -> xr.Dataset:
    """Score one model on the grid -> Dataset with dims (task, length, depth, sample)."""
    shape = (len(tasks), len(lengths), len(depths), samples)
    arrays = {
        "correct": np.zeros(shape, dtype=bool),
        "match_all": np.zeros(shape, dtype=np.float32),
        "match_part": np.zeros(shape, dtype=np.float32),
        "answer_logprob": np.zeros(shape, dtype=np.float32),
        "answer_tokens": np.zeros(shape, dtype=np.int32),
        "needle_position": np.zeros(shape, dtype=np.int32),
        "prediction": np.empty(shape, dtype=object),
        "gold": np.empty(shape, dtype=object),
    }
    if extra_tokens is None:
        extra_tokens = 0 if rendering.word_boundary else 8
    for ti, task in enumerate(tasks):
        for li, length in enumerate(lengths):
            batch = T.make_samples(task, int(length), depths, samples, rendering, seed=seed)
            for k, r in enumerate(
                score_samples(
                    model, batch, rendering, batch_size=batch_size, extra_tokens=extra_tokens, progress=progress
                )
            ):
                idx = (ti, li, k // samples, k % samples)
                arrays["correct"][idx] = r.correct
                arrays["match_all"][idx] = r.match_all
                arrays["match_part"][idx] = r.match_part
                arrays["answer_logprob"][idx] = r.answer_logprob
                arrays["answer_tokens"][idx] = len(r.sample.answer_ids)
                arrays["needle_position"][idx] = r.sample.needle_position
                arrays["prediction"][idx] = r.prediction
                arrays["gold"][idx] = rendering.decode(r.sample.answer_ids)
    dims = ("task", "length", "depth", "sample")
    ds = xr.Dataset(
        {name: (dims, arr) for name, arr in arrays.items()},
        coords={
            "task": np.array(list(tasks), dtype=object),
            "length": np.array(lengths, dtype=np.int64),
            "depth": np.array(depths, dtype=np.float64),
            "sample": np.arange(samples),
        },
    )
    for name, text in VARIABLE_DOCS.items():
        ds[name].attrs["description"] = text
    ds["depth"].attrs["units"] = "percent"
    ds["length"].attrs["units"] = "tokens (prompt, without the answer)"
    return ds


VARIABLE_DOCS = {
    "correct": "greedy exact match: the first answer_tokens generated ids equal the gold answer ids",
    "match_all": "RULER string_match_all of this sample (fraction 0-1 of references found in the output)",
    "match_part": "RULER string_match_part of this sample (1 if any reference is found)",
    "answer_logprob": "teacher-forced log p(gold answer | prompt), natural log, summed over answer tokens",
    "answer_tokens": "number of gold answer tokens",
    "needle_position": "token index of the first token of the target needle",
    "prediction": "decoded greedy output",
    "gold": "decoded gold answer",
}


def _dtype(dtype: str, device: torch.device) -> torch.dtype:
    if dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    table = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
    if dtype not in table:
        raise ValueError(f"unknown dtype {dtype!r}; use one of auto, {', '.join(table)}")
    return table[dtype]


def evaluate_plan(
    p: Plan,
    *,
    device: str = "auto",
    dtype: str = "auto",
    batch_size: int | None = None,
    extra_tokens: int | None = None,
    progress: bool = True,
) -> xr.Dataset:
    """Load each checkpoint and score it -> Dataset with dims (checkpoint, task, length, depth, sample)."""
    dev = models.pick_device(device)
    torch_dtype = _dtype(dtype, dev)
    per_ckpt = []
    bar = tqdm(total=p.total, desc="eval", unit="sample", disable=not progress)
    try:
        for c in p.checkpoints:
            bar.set_postfix_str(c.label)
            model, _ = checkpoint_io.load(c.path, device=dev, dtype=torch_dtype)
            rendering = p.renderings[p.tokenizers[c.label]]
            ds = evaluate_model(
                model,
                rendering,
                tasks=p.tasks,
                lengths=p.lengths,
                depths=p.depths,
                samples=p.samples,
                seed=p.seed,
                batch_size=batch_size,
                extra_tokens=extra_tokens,
                progress=bar,
            )
            per_ckpt.append((ds, c, models.rope_theta(model), rendering.name))
            del model
    finally:
        bar.close()
    ds = wstore.stack_checkpoints([d for d, *_ in per_ckpt], [c.label for _, c, *_ in per_ckpt])
    info = [(c, theta, rname) for _, c, theta, rname in per_ckpt]
    ds = ds.assign_coords(
        checkpoint_path=("checkpoint", np.array([str(c.path.resolve()) for c, *_ in info], dtype=object)),
        checkpoint_hash=("checkpoint", np.array([c.content_hash() for c, *_ in info], dtype=object)),
        rope_theta=("checkpoint", np.array([theta for _, theta, _ in info], dtype=np.float64)),
        max_positions=("checkpoint", np.array([p.max_positions[c.label][0] for c, *_ in info], dtype=np.int64)),
        extrapolate=("checkpoint", np.array([p.extrapolating[c.label] for c, *_ in info], dtype=bool)),
        rendering=("checkpoint", np.array([r for *_, r in info], dtype=object)),
        step=("checkpoint", np.array([c.step for c, *_ in info], dtype=np.int64)),  # as probes / scores record it
        phase=("checkpoint", np.array([c.phase for c, *_ in info], dtype=object)),
        objective=("checkpoint", np.array([c.objective for c, *_ in info], dtype=object)),
    )
    ds.attrs = wstore.provenance(
        kind=wstore.RETRIEVAL,
        seed=p.seed,
        dtype=str(torch_dtype).replace("torch.", ""),
        device=dev.type,
        extrapolate=p.extrapolate,
        samples=p.samples,
        checkpoint_hashes={c.label: h for (c, *_), h in zip(info, ds["checkpoint_hash"].values)},
        rope_theta={c.label: theta for c, theta, _ in info},
        tasks={t: T.TASKS[t].description for t in p.tasks},
        depth_definition=T.DEPTH_DEFINITION,
    )
    return ds


def accuracy(ds: xr.Dataset, metric: str = "correct", over: Sequence[str] = ("sample",)) -> xr.DataArray:
    """Mean of a per-sample variable over ``over`` dims (e.g. accuracy per checkpoint x task x length x depth)."""
    if metric not in ds:
        raise ValueError(f"no variable {metric!r} in the retrieval data (has {', '.join(ds.data_vars)})")
    return ds[metric].astype(np.float64).mean([d for d in over if d in ds[metric].dims])
