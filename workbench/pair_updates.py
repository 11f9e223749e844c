"""Per-RoPE-pair bookkeeping of W_q / W_k and the per-pair update: the one definition that training's pair
tracking (``track_every``, :mod:`workbench.train.pair_tracking`) and ``workbench updates``
(:mod:`workbench.measurements.weights`) both apply, so a phase-end record equals the command on the phase's two
checkpoints. Below both in the data flow: raw tensors in, float64 statistics out.

Hugging Face's Llama reshapes ``q_proj(x)`` to [..., heads, head_dim] and rotates dims (j, j + d/2)
together (``rotate_half``), so pair j of head h is rows ``h*d + j`` and ``h*d + j + d/2`` of ``W_q``
(``W_k`` on the KV heads for GQA). The tests check this mapping against transformers itself.
"""

from __future__ import annotations

import torch

from workbench import architectures, rope


def pair_rows(head: int, pair: int, head_dim: int) -> tuple[int, int]:
    """The two projection rows that form RoPE pair ``pair`` of head ``head`` (half-split layout)."""
    half = head_dim // 2
    if not 0 <= pair < half:
        raise ValueError(f"pair {pair} out of range for head_dim {head_dim} (0..{half - 1})")
    if head < 0:
        raise ValueError(f"head must be >= 0, got {head}")
    a, b = head * head_dim + rope.pair_dims([pair], head_dim)
    return int(a), int(b)


def split_pairs(weight: torch.Tensor, num_heads: int, head_dim: int) -> torch.Tensor:
    """[num_heads*head_dim, in] (or a bias [num_heads*head_dim]) -> [num_heads, pairs, 2, in]: the two rows of
    each pair."""
    if weight.shape[0] != num_heads * head_dim:
        raise ValueError(f"projection has {weight.shape[0]} rows, expected heads*head_dim = {num_heads * head_dim}")
    w = rope.pair_view(weight.reshape(num_heads, head_dim, *weight.shape[1:]), dim=1)  # [h, half-index, j, ...]
    w = w.transpose(1, 2)  # [h, j, 2, ...]
    return w.reshape(num_heads, head_dim // 2, 2, -1)


def pair_update_stats(
    before: torch.Tensor, after: torch.Tensor, num_heads: int, head_dim: int
) -> dict[str, torch.Tensor]:
    """Per (head, pair): norm before/after, norm of the update relative to the norm before, and the cosine.

    Norms are Frobenius norms of the 2 x in block of each pair (float64). The cosine is computed from the
    squared norms, ``(|a|^2 + |b|^2 - |b-a|^2) / (2 sqrt(|a|^2 |b|^2))``, so identical weights give exactly
    rel_update 0 and cosine 1. A pair whose weights are zero before gets rel_update inf (nan if unchanged).
    """
    if before.shape != after.shape:
        raise ValueError(f"weight shapes differ: {tuple(before.shape)} vs {tuple(after.shape)}")
    a = split_pairs(before.to(torch.float64), num_heads, head_dim)
    b = split_pairs(after.to(torch.float64), num_heads, head_dim)
    sa = (a * a).sum(dim=(-2, -1))
    sb = (b * b).sum(dim=(-2, -1))
    delta = b - a
    sd = (delta * delta).sum(dim=(-2, -1))
    with torch.no_grad():
        rel = torch.sqrt(sd) / torch.sqrt(sa)
        cos = (sa + sb - sd) / (2 * torch.sqrt(sa * sb))
    return {
        "norm_before": torch.sqrt(sa),
        "norm_after": torch.sqrt(sb),
        "rel_update": rel,
        "cosine": cos.clamp(-1.0, 1.0),
    }


def qk_rows(tensors: dict[str, torch.Tensor], proj: str) -> torch.Tensor:
    """The rows of projection ``proj`` (``q_proj`` / ``k_proj``) with its bias, when there is one, as a last
    column: [rows, in (+1)]."""
    w = tensors[f"{proj}.weight"]
    bias = tensors.get(f"{proj}.bias")
    return w if bias is None else torch.cat([w, bias[:, None]], dim=1)


def layer_pair_stats(
    before: dict[str, torch.Tensor], after: dict[str, torch.Tensor], n_heads: int, n_kv: int, head_dim: int
) -> dict[str, dict[str, torch.Tensor]]:
    """{"q": stats [heads, pair], "k": stats [kv_heads, pair]} of one layer's q/k tensors before and after (keyed
    as :func:`live_qk_weights` and ``measurements.weights.read_qk_weights`` return them): the one definition of
    the per-pair update (checkpoints and training alike)."""
    return {
        p: pair_update_stats(qk_rows(before, proj), qk_rows(after, proj), heads, head_dim)
        for p, proj, heads in (("q", "q_proj", n_heads), ("k", "k_proj", n_kv))
    }


def live_qk_weights(model, layer: int) -> dict[str, torch.Tensor]:
    """The q/k weights (and biases) of one layer of a loaded model, keyed as
    :func:`workbench.measurements.weights.read_qk_weights` reads them from safetensors (same tensor sources,
    float64 CPU copies; FSDP2 shards are gathered)."""
    params = dict(model.named_parameters())
    out: dict[str, torch.Tensor] = {}
    for name, (key, rows) in architectures.tensor_sources(model.config.to_dict(), layer).items():
        if key not in params:
            if name.endswith("weight"):
                raise KeyError(f"model has no parameter {key}")
            continue
        t = params[key].detach()
        t = t.full_tensor() if hasattr(t, "full_tensor") else t
        out[name] = (t[rows] if rows is not None else t).to("cpu", torch.float64, copy=True)
    return out
