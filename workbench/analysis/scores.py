"""Attention-score decomposition by RoPE pair and relative distance, stored compactly.

The pre-softmax score of query t and key s in one head is scale * q_t . k_s (post-RoPE), which splits
exactly into one term per pair j: scale * (q_t[j] k_s[j] + q_t[j+d/2] k_s[j+d/2]). For each layer, head
and pair we keep the mean term (and mean |term|) over all causal (t, s) in a log2 distance bucket
(0, 1, 2-3, 4-7, ...); the O(n^2) pattern itself is never stored. Means are linear, so the per-pair means
sum to the mean score of the bucket.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import xarray as xr

from workbench import store
from workbench.analysis import checkpoints as ck
from workbench.analysis.capture import capture, pair_view, per_checkpoint, probe_batch
from workbench.config import DataConfig


def distance_buckets(seq_len: int) -> tuple[np.ndarray, np.ndarray]:
    """Lower and upper (inclusive) edges of the log2 distance buckets covering 0..seq_len-1."""
    n = int(np.floor(np.log2(max(seq_len - 1, 1)))) + 2
    lo = np.array([0] + [2 ** (i - 1) for i in range(1, n)], dtype=np.int64)
    hi = np.array([0] + [2 ** i - 1 for i in range(1, n)], dtype=np.int64)
    hi[-1] = min(hi[-1], seq_len - 1)
    return lo, hi


def bucket_of(distance: torch.Tensor) -> torch.Tensor:
    """Bucket index of non-negative distances: 0 -> 0, r >= 1 -> floor(log2 r) + 1."""
    r = distance.clamp(min=1).to(torch.float64)
    return torch.where(distance <= 0, torch.zeros_like(distance), torch.floor(torch.log2(r)).to(distance.dtype) + 1)


def pair_contributions(q: torch.Tensor, k: torch.Tensor, scaling: float) -> torch.Tensor:
    """Full per-pair score terms for small inputs: q [B, H, Tq, d], k [B, H, Tk, d] -> [B, H, Tq, Tk, d/2]."""
    return scaling * torch.einsum("bhtxp,bhsxp->bhtsp", pair_view(q), pair_view(k))


def bucketed_contributions(q: torch.Tensor, k: torch.Tensor, positions: torch.Tensor, scaling: float,
                           n_buckets: int, block: int = 32) -> dict[str, np.ndarray]:
    """Sums over causal (t, s <= t) of the per-pair terms by distance bucket, chunked over queries.

    The distance is the position_ids difference (what RoPE sees); causal pairs with a negative difference
    (reset positions across documents) are left out.

    q [B, H, T, d] and k [B, H, T, d] post-RoPE (k already repeated to the query heads); ``positions`` [B, T].
    Returns sums ``contribution`` [H, P, n_buckets], ``abs_contribution`` [H, P, n_buckets] and ``count``
    [n_buckets] (number of (b, t, s) triples per bucket).
    """
    b, h, t, d = q.shape
    p = d // 2
    qv, kv = pair_view(q.to(torch.float64)), pair_view(k.to(torch.float64))
    total = torch.zeros(n_buckets + 1, h, p, dtype=torch.float64)
    total_abs = torch.zeros_like(total)
    count = torch.zeros(n_buckets + 1, dtype=torch.float64)
    idx_t = torch.arange(t)
    for start in range(0, t, block):
        stop = min(start + block, t)
        c = scaling * torch.einsum("bhtxp,bhsxp->btshp", qv[:, :, start:stop], kv)  # [B, tb, T, H, P]
        dist = positions[:, start:stop, None] - positions[:, None, :]  # [B, tb, T]
        causal = idx_t[None, start:stop, None] >= idx_t[None, None, :]
        bucket = torch.where(causal & (dist >= 0), bucket_of(dist), torch.full_like(dist, n_buckets))
        bucket = bucket.clamp(max=n_buckets).reshape(-1)
        flat = c.reshape(-1, h, p)
        total.index_add_(0, bucket, flat)
        total_abs.index_add_(0, bucket, flat.abs())
        count.index_add_(0, bucket, torch.ones_like(bucket, dtype=torch.float64))
    return {"contribution": total[:n_buckets].permute(1, 2, 0).numpy(),
            "abs_contribution": total_abs[:n_buckets].permute(1, 2, 0).numpy(),
            "count": count[:n_buckets].numpy()}


def model_decomposition(model, batch, n_buckets: int) -> dict[str, np.ndarray]:
    """Per layer: mean per-pair term, mean |term| and mean score per distance bucket for one model."""
    from transformers.models.llama.modeling_llama import repeat_kv

    cap = capture(model, batch, qk=True)
    n_rep = cap.q[0].shape[1] // cap.k[0].shape[1]
    contrib, abs_c = [], []
    count = None
    for layer in range(len(cap.q)):
        q_rot, k_rot = cap.rotated(layer)
        sums = bucketed_contributions(q_rot, repeat_kv(k_rot, n_rep), batch["position_ids"], cap.scaling, n_buckets)
        count = sums["count"]
        with np.errstate(invalid="ignore", divide="ignore"):
            contrib.append(sums["contribution"] / count)
            abs_c.append(sums["abs_contribution"] / count)
    return {"contribution": np.stack(contrib), "abs_contribution": np.stack(abs_c), "count": count}


def score_decomposition(
    paths: Sequence[str | Path],
    *,
    seq_len: int = 512,
    batch_size: int = 1,
    seed: int = 0,
    data: DataConfig | None = None,
    allow_plain_hf: bool = False,
    device: str = "cpu",
    progress: bool = False,
) -> xr.Dataset:
    """Per checkpoint: dims (checkpoint, layer, head, pair, distance). ``contribution`` = mean per-pair
    score term in each distance bucket, ``abs_contribution`` = mean |term|, ``score`` = mean pre-softmax
    score (= contribution summed over pairs), ``n_scored`` = (b, t, s) triples per bucket."""
    infos = ck.inspect_all(paths, allow_plain_hf=allow_plain_hf, minimum=1)
    batch = probe_batch(seq_len, batch_size, seed, data)
    lo, hi = distance_buckets(seq_len)
    per = per_checkpoint(infos, lambda m: model_decomposition(m, batch, len(lo)), progress=progress,
                         desc="score decomposition", allow_plain_hf=allow_plain_hf, device=device)
    first = infos[0]
    contrib = np.stack([r["contribution"] for r in per])
    ds = xr.Dataset(
        {
            "contribution": (("checkpoint", "layer", "head", "pair", "distance"), contrib),
            "abs_contribution": (("checkpoint", "layer", "head", "pair", "distance"),
                                 np.stack([r["abs_contribution"] for r in per])),
            "score": (("checkpoint", "layer", "head", "distance"), contrib.sum(axis=3)),
            "n_scored": (("checkpoint", "distance"), np.stack([r["count"] for r in per])),
        },
        coords={
            **checkpoint_coords(infos),
            "layer": np.arange(first.num_layers), "head": np.arange(first.num_heads),
            **store.pair_coords(infos[-1].rope_theta, first.head_dim, infos[-1].rope_scaling),
            "distance": lo, "distance_hi": ("distance", hi),
            "wavelength_ckpt": (("checkpoint", "pair"),
                                np.stack([store.pair_coords(i.rope_theta, first.head_dim, i.rope_scaling)["wavelength"][1]
                                          for i in infos])),
        },
    )
    ds["contribution"].attrs["description"] = ("mean over causal (t,s) in the bucket of "
                                               "scale*(q_t[j]k_s[j] + q_t[j+d/2]k_s[j+d/2])")
    ds["score"].attrs["description"] = "mean pre-softmax score scale*q_t.k_s in the bucket (sum of contribution over pairs)"
    ds.attrs.update(store.provenance(
        analysis="score_decomposition", seq_len=seq_len, batch_size=batch_size, seed=seed,
        head_dim=first.head_dim, wavelength_theta=infos[-1].rope_theta,
        buckets="log2 distance buckets: [0], [1], [2,3], [4,7], ... (position_ids differences, causal pairs)",
    ))
    return ds


def checkpoint_coords(infos: Sequence[ck.CheckpointInfo]) -> dict:
    """Coordinates along ``checkpoint``: label plus step, phase, objective, theta and content hash."""
    def col(values, dtype=object):
        return ("checkpoint", np.array(values, dtype=dtype))

    return {
        "checkpoint": np.array([i.label for i in infos], dtype=object),
        "step": col([i.step for i in infos], np.int64),
        "phase": col([i.phase for i in infos]),
        "objective": col([i.objective for i in infos]),
        "theta": col([i.rope_theta for i in infos], np.float64),
        "checkpoint_hash": col([i.content_hash() for i in infos]),
    }
