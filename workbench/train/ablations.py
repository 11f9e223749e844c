"""Training-time ablations: frozen RoPE-pair rows (the position-invariant teacher runs on
:func:`workbench.data.packing.reset_positions`, document-masked, in :mod:`workbench.train.distill`).

- :class:`FrozenPairs`: keeps the W_q/W_k rows of chosen RoPE pairs (rows j and j + d/2 of every head) at
  their phase-start values. Restoring after each optimiser step is exact, unlike zeroing gradients, which
  AdamW's momentum would ignore.
"""

from __future__ import annotations

import numpy as np
import torch

from workbench import architectures, models, rope


class FrozenPairs:
    """Holds the q/k weight and bias rows of ``pairs`` of every head and layer fixed (call :meth:`restore` after
    every optimiser step)."""

    def __init__(self, model, pairs: np.ndarray):
        cfg = model.config
        d = architectures.head_dim(cfg)
        self.pairs = np.asarray(pairs, dtype=np.int64)
        dims = rope.pair_dims(self.pairs, d)
        self.saved: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []
        for layer in model.model.layers:
            # q/k weight (and bias) rows per architecture: views into a fused qkv_proj (Phi-3) write through
            proj = architectures.projections(layer.self_attn, cfg)
            for which, n_heads in (("q", cfg.num_attention_heads), ("k", architectures.num_kv_heads(cfg))):
                for tensor in (proj[which]["weight"], proj[which]["bias"]):
                    if tensor is None:
                        continue
                    rows = torch.as_tensor(np.concatenate([h * d + dims for h in range(n_heads)]), device=tensor.device)
                    self.saved.append((tensor, rows, tensor.detach()[rows].clone()))

    @classmethod
    def for_phase(cls, model, phase) -> FrozenPairs | None:
        if phase.freeze_wavelengths is None:
            return None
        pairs = models.pairs_in_wavelengths(model, *phase.freeze_wavelengths)  # at the phase's theta and scaling
        return cls(model, pairs) if len(pairs) else None

    @torch.no_grad()
    def restore(self) -> None:
        for weight, rows, values in self.saved:
            weight[rows] = values
