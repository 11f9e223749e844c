"""Training-time ablations: position-invariant teacher targets and frozen RoPE-pair rows.

- :func:`document_positions`: positions restarting at 0 in every packed document (from ``doc_ids``), so a
  teacher run on them, document-masked, gives targets with no long-range positional signal;
- :class:`FrozenPairs`: keeps the W_q/W_k rows of chosen RoPE pairs (rows j and j + d/2 of every head) at
  their phase-start values. Restoring after each optimiser step is exact, unlike zeroing gradients, which
  AdamW's momentum would ignore.
"""

from __future__ import annotations

import numpy as np
import torch

from workbench import architectures, rope


def document_positions(doc_ids: torch.Tensor) -> torch.Tensor:
    """[batch, seq] positions that restart at 0 wherever the document id changes."""
    idx = torch.arange(doc_ids.shape[1], device=doc_ids.device).expand_as(doc_ids)
    start = torch.ones_like(doc_ids, dtype=torch.bool)
    start[:, 1:] = doc_ids[:, 1:] != doc_ids[:, :-1]
    first = torch.cummax(torch.where(start, idx, torch.zeros_like(idx)), dim=1).values
    return idx - first


def pairs_in_wavelengths(theta: float, head_dim: int, bounds) -> np.ndarray:
    """Indices of the pairs whose wavelength at ``theta`` lies in [min, max]."""
    lam = rope.wavelengths(theta, head_dim)
    return np.flatnonzero((lam >= bounds[0]) & (lam <= bounds[1]))


class FrozenPairs:
    """Holds the q/k weight and bias rows of ``pairs`` of every head and layer fixed (call :meth:`restore` after
    every optimiser step)."""

    def __init__(self, model, pairs: np.ndarray):
        cfg = model.config
        d = architectures.head_dim(cfg)
        half = d // 2
        self.pairs = np.asarray(pairs, dtype=np.int64)
        self.saved: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []
        for layer in model.model.layers:
            # q/k weight (and bias) rows per architecture: views into a fused qkv_proj (Phi-3) write through
            proj = architectures.projections(layer.self_attn, cfg)
            for which, n_heads in (("q", cfg.num_attention_heads), ("k", architectures.num_kv_heads(cfg))):
                for tensor in (proj[which]["weight"], proj[which]["bias"]):
                    if tensor is None:
                        continue
                    rows = torch.as_tensor(np.concatenate([h * d + np.r_[self.pairs, self.pairs + half]
                                                           for h in range(n_heads)]), device=tensor.device)
                    self.saved.append((tensor, rows, tensor.detach()[rows].clone()))

    @classmethod
    def for_phase(cls, model, phase) -> "FrozenPairs | None":
        if phase.freeze_wavelengths is None:
            return None
        pairs = pairs_in_wavelengths(phase.rope_theta, architectures.head_dim(model.config), phase.freeze_wavelengths)
        return cls(model, pairs) if len(pairs) else None

    @torch.no_grad()
    def restore(self) -> None:
        for weight, rows, values in self.saved:
            weight[rows] = values
