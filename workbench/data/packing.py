"""Packing documents into windows, with two independent switches:

- positions: ``continue`` (0..seq_len-1 across the whole window) or ``reset`` (0 at each document start);
- attention: ``causal`` across documents or ``document``-masked (a token sees only its own document).

Masks come from ``doc_ids``, never from ``position_ids == 0``. Pitfall (transformers 5.24,
``masking_utils.find_packed_sequence_indices``): with ``attention_mask=None`` and position ids that restart,
transformers silently switches to per-document attention. So ``attention_mask(..., "causal")`` returns an
explicit all-ones 2D mask (which transformers then drops in favour of plain ``is_causal`` SDPA): causal
really is causal whatever the positions are.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np
import torch

from workbench.data.synthetic import Doc

PositionMode = Literal["continue", "reset"]
AttentionMode = Literal["causal", "document"]
IGNORE = -100


def pack(docs: Sequence[Doc], positions: PositionMode = "continue") -> dict[str, np.ndarray]:
    """Concatenate documents into one window: input_ids, labels (-100 = no loss), position_ids, doc_ids.

    Labels follow the Hugging Face convention (unshifted: ``labels[t]`` is the target predicted from the
    tokens before t; the loss shifts). A document's first token never has a target, so no loss crosses a
    document boundary.
    """
    ids = np.concatenate([d.ids for d in docs]).astype(np.int64)
    target = np.concatenate([d.target for d in docs]).astype(bool)
    doc_ids = np.concatenate([np.full(len(d), i, dtype=np.int64) for i, d in enumerate(docs)])
    starts = np.cumsum([0] + [len(d) for d in docs[:-1]])
    target[starts] = False
    return {
        "input_ids": ids,
        "labels": np.where(target, ids, IGNORE),
        "doc_ids": doc_ids,
        "position_ids": position_ids(doc_ids, positions),
    }


def position_ids(doc_ids: np.ndarray, mode: PositionMode) -> np.ndarray:
    """Position ids for a window [seq] (numpy) from its document ids: ``continue`` or ``reset``."""
    if mode == "continue":
        return np.arange(len(doc_ids), dtype=np.int64)
    if mode != "reset":
        raise ValueError(f"packing positions must be 'continue' or 'reset', got {mode!r}")
    return reset_positions(torch.as_tensor(np.asarray(doc_ids, dtype=np.int64))[None])[0].numpy()


def document_starts(doc_ids: torch.Tensor) -> torch.Tensor:
    """[batch, seq] index of each token's document start within its window (a new document wherever the id
    changes)."""
    idx = torch.arange(doc_ids.shape[1], device=doc_ids.device).expand_as(doc_ids)
    start = torch.ones_like(doc_ids, dtype=torch.bool)
    start[:, 1:] = doc_ids[:, 1:] != doc_ids[:, :-1]
    return torch.cummax(torch.where(start, idx, torch.zeros_like(idx)), dim=1).values


def reset_positions(doc_ids: torch.Tensor) -> torch.Tensor:
    """[batch, seq] positions that restart at 0 in every packed document (``reset`` packing; the position-
    invariant teacher of the ablations)."""
    return torch.arange(doc_ids.shape[1], device=doc_ids.device).expand_as(doc_ids) - document_starts(doc_ids)


def attention_mask(doc_ids: torch.Tensor, mode: AttentionMode, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The ``attention_mask`` to hand transformers' LlamaForCausalLM for a packed batch.

    ``causal``: an all-ones [batch, seq] mask (see the module note on why not None). ``document``: a 4D
    [batch, 1, seq, seq] mask, causal within each document, that transformers uses as-is; additive
    (0 / finfo.min) for float dtypes, which both eager and SDPA attention accept; boolean (True = attend)
    for ``dtype=torch.bool`` (SDPA only). Memory is O(seq^2) per row: fine for CPU windows, not for 128k.
    """
    if doc_ids.ndim != 2:
        raise ValueError(f"doc_ids must be [batch, seq], got shape {tuple(doc_ids.shape)}")
    if mode == "causal":
        return torch.ones_like(doc_ids, dtype=torch.long)
    if mode != "document":
        raise ValueError(f"packing attention must be 'causal' or 'document', got {mode!r}")
    n = doc_ids.shape[1]
    causal = torch.ones(n, n, dtype=torch.bool, device=doc_ids.device).tril()
    allowed = (doc_ids[:, :, None] == doc_ids[:, None, :]) & causal
    allowed = allowed[:, None]
    if dtype == torch.bool:
        return allowed
    zero = torch.zeros((), dtype=dtype, device=doc_ids.device)
    return torch.where(allowed, zero, torch.finfo(dtype).min)
