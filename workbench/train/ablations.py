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

from workbench import rope


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
    """Holds the q_proj/k_proj rows of ``pairs`` of every head and layer fixed (call :meth:`restore` after
    every optimiser step)."""

    def __init__(self, model, pairs: np.ndarray):
        cfg = model.config
        d, half = cfg.head_dim, cfg.head_dim // 2
        self.pairs = np.asarray(pairs, dtype=np.int64)
        self.saved: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []
        for layer in model.model.layers:
            for proj, n_heads in ((layer.self_attn.q_proj, cfg.num_attention_heads),
                                  (layer.self_attn.k_proj, cfg.num_key_value_heads)):
                rows = torch.as_tensor(np.concatenate([h * d + np.r_[self.pairs, self.pairs + half]
                                                       for h in range(n_heads)]), device=proj.weight.device)
                self.saved.append((proj.weight, rows, proj.weight.detach()[rows].clone()))

    @classmethod
    def for_phase(cls, model, phase) -> "FrozenPairs | None":
        if phase.freeze_wavelengths is None:
            return None
        pairs = pairs_in_wavelengths(phase.rope_theta, model.config.head_dim, phase.freeze_wavelengths)
        return cls(model, pairs) if len(pairs) else None

    @torch.no_grad()
    def restore(self) -> None:
        for weight, rows, values in self.saved:
            weight[rows] = values
