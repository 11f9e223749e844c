"""The repeated-token experiment: identical content at different absolute positions.

One random short sequence (``period`` filler tokens) is repeated through a long window, copies ``gap``
tokens apart (``workbench.data.repeated_sequences``), so copies differ only in where they sit. Two
attention settings:

- ``packed`` (the paper's: continue positions, causal across copies): copy c sees every earlier copy, so
  its distribution depends on its offset through the distances RoPE encodes;
- ``isolated``: each copy is its own sequence with position ids ``offset + 0..period-1`` (the same as
  document masking with continued positions); RoPE being relative, copies differ only numerically, which
  makes it the control.

Per (spec, copy) it records, averaged over the copy's tokens (its first token excluded: nothing in the
copy predicts it) and over samples:

- ``kl_to_first``: KL(p_copy || p_first copy): how the output distribution drifts with the offset;
- ``kl_to_mean``: KL(p_copy || p_mean), p_mean the copy-averaged distribution: the part of a KD loss a student
  that cannot see position can never remove (the mean is the best position-blind forward-KL fit), i.e. the
  positional signal logit KD carries at this offset;
- ``kl_vs_clean``: KL(p_clean || p_spec) at the same copy: what a perturbation does to the teacher's targets;
- ``top1_agree_first``: fraction of tokens whose argmax equals the first copy's; ``entropy`` of p_copy.

Dims (checkpoint, spec, copy) with coordinate ``offset`` (absolute start position of the copy).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import xarray as xr
from tqdm.auto import tqdm

from workbench import store
from workbench.data import repeated_sequences
from workbench.divergence import kl, kl_logits
from workbench.interventions.backends import Backend, load_backend
from workbench.interventions.specs import Spec, identity, validate_all
from workbench.interventions.traces import finish

VARS = ("kl_to_first", "kl_to_mean", "kl_vs_clean", "top1_agree_first", "entropy")


def repeated_inputs(
    window: int,
    period: int,
    gap: int,
    *,
    samples: int = 2,
    seed: int = 0,
    attention: Literal["packed", "isolated"] = "packed",
) -> tuple[torch.Tensor, torch.Tensor, np.ndarray]:
    """(input_ids, position_ids, offsets) for the experiment, from ``workbench.data.repeated_sequences``.

    packed: [samples, window]; isolated: [samples * copies, period], row s * copies + c is copy c of sample s.
    """
    rows, poss, offsets = [], [], None
    for s in range(samples):
        ids, pos, off = repeated_sequences(window, period, seed=seed + s, gap=gap, positions="continue")
        if offsets is not None and not np.array_equal(off.numpy(), offsets):
            raise ValueError("repeated_sequences gave different offsets for different seeds")
        offsets = off.numpy()
        if attention == "packed":
            rows.append(ids[0])
            poss.append(pos[0])
        else:
            for o in offsets:
                rows.append(ids[0, o : o + period])
                poss.append(torch.arange(o, o + period))
    if offsets is None or len(offsets) < 2:
        raise ValueError(f"window {window} holds fewer than two copies of period {period} with gap {gap}")
    return torch.stack(rows).long(), torch.stack(poss).long(), offsets


def _copy_logits(logits: torch.Tensor, offsets: np.ndarray, period: int, samples: int, attention: str) -> torch.Tensor:
    """-> [samples, copies, period - 1, V], each copy's logits for its tokens 1..period-1 (predicting 2..)."""
    if attention == "packed":
        return torch.stack([logits[:, o + 1 : o + period] for o in offsets], 1)
    return logits.reshape(samples, len(offsets), period, -1)[:, :, 1:]


def repeated_tokens(
    ckpt_path: str | Path,
    specs: Sequence[Spec] = (),
    *,
    backend: str | Backend = "nnsight",
    window: int | None = None,
    period: int = 32,
    gap: int | None = None,
    copies: int = 8,
    samples: int = 2,
    seed: int = 0,
    attention: Literal["packed", "isolated"] = "packed",
    progress: bool = False,
) -> xr.Dataset:
    """Run the repeated-token experiment -> Dataset (checkpoint, spec, copy); ``clean`` is always the first spec.

    ``window`` defaults to the model's max_position_embeddings; ``gap`` defaults to spreading ``copies``
    copies evenly over the window.
    """
    if attention not in ("packed", "isolated"):
        raise ValueError(f"attention must be 'packed' or 'isolated', got {attention!r}")
    be = backend if isinstance(backend, Backend) else load_backend(ckpt_path, backend)
    runs = [identity("clean"), *[s for s in specs if not s.is_identity]]
    validate_all(runs, be.geometry)
    window = window or be.geometry.max_position_embeddings
    if window > be.geometry.max_position_embeddings:
        raise ValueError(
            f"window {window} exceeds the model's max_position_embeddings {be.geometry.max_position_embeddings}"
        )
    if copies < 2:
        raise ValueError(f"copies must be >= 2, got {copies}")
    if gap is None:
        gap = max(0, (window - copies * period) // max(copies - 1, 1))
    ids, pos, offsets = repeated_inputs(window, period, gap, samples=samples, seed=seed, attention=attention)
    iterator = range(len(runs))
    if progress:
        iterator = tqdm(iterator, desc=f"repeated tokens [{be.name}, {attention}]", unit="spec")
    per_spec = []
    for s in iterator:
        logits = be.run(ids, pos, [runs[s]])[0]["logits"]
        per_spec.append(_copy_logits(logits, offsets, period, samples, attention))
    n_copies = len(offsets)
    vals = {v: np.full((len(runs), n_copies), np.nan) for v in VARS}
    clean = per_spec[0]
    for s, lg in enumerate(per_spec):
        logp = torch.log_softmax(lg.double(), -1)
        mean_logp = torch.logsumexp(logp, 1, keepdim=True) - np.log(n_copies)
        first = lg[:, :1]
        vals["kl_to_first"][s] = kl_logits(first.expand_as(lg), lg).mean((0, 2)).cpu().numpy()
        vals["kl_to_mean"][s] = kl(logp, mean_logp).clamp_min(0).mean((0, 2)).cpu().numpy()
        vals["kl_vs_clean"][s] = kl_logits(clean, lg).mean((0, 2)).cpu().numpy()
        vals["top1_agree_first"][s] = (lg.argmax(-1) == first.argmax(-1)).double().mean((0, 2)).cpu().numpy()
        vals["entropy"][s] = (-(logp.exp() * logp).sum(-1)).mean((0, 2)).cpu().numpy()
    ds = xr.Dataset(
        {k: (("spec", "copy"), v) for k, v in vals.items()},
        coords={
            "spec": np.array([r.name for r in runs], dtype=object),
            "copy": np.arange(n_copies),
            "offset": ("copy", offsets.astype(np.int64)),
            "spec_json": ("spec", np.array([r.to_json() for r in runs], dtype=object)),
            "spec_hash": ("spec", np.array([r.ops_hash for r in runs], dtype=object)),
        },
    )
    return finish(
        ds,
        be,
        ckpt_path,
        kind=store.REPEATED_TOKENS,
        extra={
            "window": window,
            "period": period,
            "gap": gap,
            "samples": samples,
            "seed": seed,
            "attention": attention,
        },
    )
