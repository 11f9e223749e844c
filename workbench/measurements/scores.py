"""Attention-score decomposition by RoPE pair and relative distance, stored compactly.

The pre-softmax score of query t and key s in one head is scale * q_t . k_s (post-RoPE), which splits
exactly into one term per pair j: scale * (q_t[j] k_s[j] + q_t[j+d/2] k_s[j+d/2]). For each layer, head
and pair we keep the mean term (and mean |term|) over all causal (t, s) in a log2 distance bucket
(0, 1, 2-3, 4-7, ...); the O(n^2) pattern itself is never stored. Means are linear, so the per-pair means
sum to the mean score of the bucket.

Two ways to get there (``method``):

- ``fast`` (default; needs contiguous position ids in every row, which packed windows with continue
  positions have): the mean term is *exact* and linear in length: the keys of one query in one bucket
  are a contiguous range, so sum_s q_t . k_s = q_t . (K[t - lo + 1] - K[max(t - hi, 0)]) with K the
  prefix sums of k. The mean |term| is not linear in q, k: it comes from a seeded uniform sample of
  ``abs_sample["pairs"]`` causal (query, key) positions per distance bucket (every pair of a bucket that
  has no more; with the default 65536 that is exact up to about 360 tokens), the same positions in every
  row. Time and memory O(T * buckets).
- ``exact``: every causal (t, s) pair in query blocks (memory linear, time quadratic): the reference.

Shapes in comments: B windows, H query heads (H_kv key heads), T tokens, d head_dim, P = d/2 pairs.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import xarray as xr

from workbench import checkpoints as ck
from workbench import rope, store
from workbench.config import DataConfig
from workbench.measurements.capture import capture, per_checkpoint, probe_batch


def distance_buckets(seq_len: int) -> tuple[np.ndarray, np.ndarray]:
    """Lower and upper (inclusive) edges of the log2 distance buckets covering 0..seq_len-1."""
    n = int(np.floor(np.log2(max(seq_len - 1, 1)))) + 2
    lo = np.array([0] + [2 ** (i - 1) for i in range(1, n)], dtype=np.int64)
    hi = np.array([0] + [2**i - 1 for i in range(1, n)], dtype=np.int64)
    hi[-1] = min(hi[-1], seq_len - 1)
    return lo, hi


def bucket_of(distance: torch.Tensor) -> torch.Tensor:
    """Bucket index of non-negative distances: 0 -> 0, r >= 1 -> floor(log2 r) + 1."""
    r = distance.clamp(min=1).to(torch.float64)  # same shape as distance
    return torch.where(distance <= 0, torch.zeros_like(distance), torch.floor(torch.log2(r)).to(distance.dtype) + 1)


def bucketed_contributions(
    q: torch.Tensor, k: torch.Tensor, positions: torch.Tensor, scaling: float, n_buckets: int, block: int = 32
) -> dict[str, np.ndarray]:
    """Sums over causal (t, s <= t) of the per-pair terms by distance bucket, chunked over queries.

    The distance is the position_ids difference (what RoPE sees); causal pairs with a negative difference
    (reset positions across documents) are left out.

    q [B, H, T, d] and k [B, H, T, d] post-RoPE (k already repeated to the query heads); ``positions`` [B, T].
    Returns sums ``contribution`` [H, P, n_buckets], ``abs_contribution`` [H, P, n_buckets] and ``count``
    [n_buckets] (number of (b, t, s) triples per bucket).
    """
    b, h, t, d = q.shape
    p = d // 2
    qv, kv = rope.pair_view(q.to(torch.float64)), rope.pair_view(k.to(torch.float64))  # [B, H, T, 2, P] each
    total = torch.zeros(n_buckets + 1, h, p, dtype=torch.float64)  # [n_buckets + 1, H, P]; the last: left out
    total_abs = torch.zeros_like(total)  # [n_buckets + 1, H, P]
    count = torch.zeros(n_buckets + 1, dtype=torch.float64)  # [n_buckets + 1]
    idx_t = torch.arange(t)  # [T]
    for start in range(0, t, block):
        stop = min(start + block, t)
        c = scaling * torch.einsum("bhtxp,bhsxp->btshp", qv[:, :, start:stop], kv)  # [B, tb, T, H, P]
        dist = positions[:, start:stop, None] - positions[:, None, :]  # [B, tb, T]
        causal = idx_t[None, start:stop, None] >= idx_t[None, None, :]  # [1, tb, T]
        bucket = torch.where(causal & (dist >= 0), bucket_of(dist), torch.full_like(dist, n_buckets))  # [B, tb, T]
        bucket = bucket.clamp(max=n_buckets).reshape(-1)  # [B * tb * T]
        flat = c.reshape(-1, h, p)  # [B * tb * T, H, P]
        total.index_add_(0, bucket, flat)
        total_abs.index_add_(0, bucket, flat.abs())
        count.index_add_(0, bucket, torch.ones_like(bucket, dtype=torch.float64))
    return {
        "contribution": total[:n_buckets].permute(1, 2, 0).numpy(),  # [H, P, n_buckets]
        "abs_contribution": total_abs[:n_buckets].permute(1, 2, 0).numpy(),  # [H, P, n_buckets]
        "count": count[:n_buckets].numpy(),  # [n_buckets]
    }


ABS_SAMPLE = {"pairs": 65536}
METHODS = ("fast", "exact")


def contiguous(positions: torch.Tensor) -> bool:
    """Whether every row's position ids run start, start + 1, ... (distance = index difference)."""
    return bool((positions[:, 1:] - positions[:, :-1] == 1).all()) if positions.shape[1] > 1 else True


def prefix_contributions(
    q: torch.Tensor, k: torch.Tensor, scaling: float, lo: np.ndarray, hi: np.ndarray
) -> dict[str, np.ndarray]:
    """Exact sums over causal (t, s) with t - s in each bucket [lo, hi] of the per-pair terms, in
    O(T * buckets) with prefix sums of k (contiguous positions: distance = index difference).

    q, k [B, H, T, d] post-RoPE (k repeated to the query heads). Returns ``contribution`` [H, P, n_buckets]
    and ``count`` [n_buckets] (number of (b, t, s) triples), as ``bucketed_contributions``."""
    b, h, t, d = q.shape
    qv = rope.pair_view(q.to(torch.float64))  # [B, H, T, 2, P]
    kv = rope.pair_view(k.to(torch.float64))  # [B, H, T, 2, P]
    cum = torch.zeros(b, h, t + 1, 2, d // 2, dtype=torch.float64, device=q.device)  # [B, H, T + 1, 2, P]
    cum[:, :, 1:] = kv.cumsum(2)  # cum[:, :, s] = sum of k over keys < s
    contribution = torch.zeros(h, d // 2, len(lo), dtype=torch.float64, device=q.device)  # [H, P, n_buckets]
    count = np.zeros(len(lo))  # [n_buckets]
    ts = torch.arange(t, device=q.device)  # [T]
    for i, (a, z) in enumerate(zip(lo.tolist(), hi.tolist())):
        if a >= t:
            continue
        tq = ts[a:]  # [Tq]: queries with at least one key at distance >= a
        upper = tq - a + 1  # [Tq]: keys s <= t - a (exclusive end in the prefix sums)
        lower = (tq - z).clamp_min(0)  # [Tq]: keys s >= t - z
        window = cum[:, :, upper] - cum[:, :, lower]  # [B, H, Tq, 2, P]: sum of k over the key range
        contribution[:, :, i] = scaling * torch.einsum("bhtxp,bhtxp->hp", qv[:, :, a:], window)  # [H, P]
        count[i] = b * float((upper - lower).sum())
    return {"contribution": contribution.cpu().numpy(), "count": count}


def bucket_pairs(t: int, a: int, z: int, *, n: int, seed: int, bucket: int) -> tuple[torch.Tensor, torch.Tensor, bool]:
    """Causal (query, distance) index pairs of the bucket [a, z] in a window of ``t`` tokens: all of them
    when there are at most ``n``, else ``n`` drawn uniformly (with replacement) over the bucket's pairs,
    seeded by (seed, bucket). Returns (query index, distance, exact)."""
    z = min(z, t - 1)
    r = torch.arange(a, z + 1)  # [R] distances of the bucket
    per_r = t - r  # [R]: queries that have a key at distance r
    total = int(per_r.sum())
    if total <= n:
        rr = torch.repeat_interleave(r, per_r)  # [total]
        start = torch.cumsum(per_r, 0) - per_r  # [R]
        tq = rr + (torch.arange(total) - torch.repeat_interleave(start, per_r))  # [total]
        return tq, rr, True
    g = torch.Generator().manual_seed(int(seed) * 1_000_003 + int(bucket))
    rr = r[torch.multinomial(per_r.to(torch.float64), n, replacement=True, generator=g)]  # [n]
    u = torch.rand(n, generator=g, dtype=torch.float64)  # [n]
    tq = rr + (u * (t - rr)).long().clamp_max(t - 1 - rr)  # [n]
    return tq, rr, False


def sampled_abs_contributions(
    q: torch.Tensor,
    k: torch.Tensor,
    scaling: float,
    lo: np.ndarray,
    hi: np.ndarray,
    *,
    seed: int = 0,
    pairs: int = ABS_SAMPLE["pairs"],
    chunk: int = 8192,
) -> dict[str, np.ndarray]:
    """Sums of |per-pair term| per distance bucket over a seeded uniform sample of ``pairs`` causal
    (query, key) positions of the bucket (every pair when the bucket has no more; contiguous positions),
    the same positions in every row. Returns ``abs_contribution`` [H, P, n_buckets] and ``n_sampled``
    [n_buckets] ((b, t, s) triples summed; the mean is the ratio). O(buckets * pairs) work whatever T."""
    b, h, t, d = q.shape
    qv = rope.pair_view(q.to(torch.float64))  # [B, H, T, 2, P]
    kv = rope.pair_view(k.to(torch.float64))  # [B, H, T, 2, P]
    total = torch.zeros(h, d // 2, len(lo), dtype=torch.float64, device=q.device)  # [H, P, n_buckets]
    n_sampled = np.zeros(len(lo))  # [n_buckets]
    exact = np.zeros(len(lo), dtype=bool)  # [n_buckets]
    for i, (a, z) in enumerate(zip(lo.tolist(), hi.tolist())):
        if a >= t:
            continue
        tq, rr, exact[i] = bucket_pairs(t, a, z, n=pairs, seed=seed, bucket=i)
        tq, sk = tq.to(q.device), (tq - rr).to(q.device)  # [n] query and key indices
        for c in range(0, len(tq), chunk):
            term = (qv[:, :, tq[c : c + chunk]] * kv[:, :, sk[c : c + chunk]]).sum(-2).abs_()  # [B, H, n, P]
            total[:, :, i] += scaling * term.sum((0, 2))  # [H, P]
        n_sampled[i] = b * len(tq)
    return {"abs_contribution": total.cpu().numpy(), "n_sampled": n_sampled, "exact": exact}


def decompose(
    q: torch.Tensor,
    k: torch.Tensor,
    positions: torch.Tensor,
    scaling: float,
    lo: np.ndarray,
    hi: np.ndarray,
    *,
    method: str = "fast",
    seed: int = 0,
    abs_sample: dict | None = None,
) -> dict[str, np.ndarray]:
    """Bucket means for one layer: ``contribution`` and ``abs_contribution`` [H, P, n_buckets], ``count``
    (triples behind the mean term) and ``n_abs`` (triples behind the mean |term|) [n_buckets]."""
    if method not in METHODS:
        raise ValueError(f"score decomposition method must be one of {', '.join(METHODS)}, got {method!r}")
    with np.errstate(invalid="ignore", divide="ignore"):
        if method == "exact":
            sums = bucketed_contributions(q, k, positions, scaling, len(lo))
            return {
                "contribution": sums["contribution"] / sums["count"],
                "abs_contribution": sums["abs_contribution"] / sums["count"],
                "count": sums["count"],
                "n_abs": sums["count"],
            }
        if not contiguous(positions):
            raise ValueError(
                "score decomposition method 'fast' needs contiguous position ids in every row "
                "(packed windows with continue positions); use method='exact' (time quadratic in length)"
            )
        sums = prefix_contributions(q, k, scaling, lo, hi)
        sampled = sampled_abs_contributions(q, k, scaling, lo, hi, seed=seed, **(abs_sample or ABS_SAMPLE))
        return {
            "contribution": sums["contribution"] / sums["count"],
            "abs_contribution": sampled["abs_contribution"] / sampled["n_sampled"],
            "count": sums["count"],
            "n_abs": sampled["n_sampled"],
        }


def model_decomposition(
    model, batch, n_buckets: int, *, method: str = "fast", seed: int = 0, abs_sample: dict | None = None
) -> dict[str, np.ndarray]:
    """Per layer: mean per-pair term, mean |term| and mean score per distance bucket for one model."""
    from transformers.models.llama.modeling_llama import repeat_kv  # lazy: transformers costs seconds to import

    cap = capture(model, batch, qk=True)  # pre-RoPE q [B, H, T, d] and k [B, H_kv, T, d] per layer
    n_rep = cap.q[0].shape[1] // cap.k[0].shape[1]  # H // H_kv
    lo, hi = distance_buckets(batch["input_ids"].shape[1])
    lo, hi = lo[:n_buckets], hi[:n_buckets]
    contrib, abs_c = [], []
    out = {}
    for layer in range(len(cap.q)):
        q_rot, k_rot = cap.rotated(layer)  # [B, H, T, d], [B, H_kv, T, d]
        out = decompose(
            q_rot,
            repeat_kv(k_rot, n_rep),  # [B, H, T, d]
            batch["position_ids"],
            cap.scaling,
            lo,
            hi,
            method=method,
            seed=seed,
            abs_sample=abs_sample,
        )
        contrib.append(out["contribution"])
        abs_c.append(out["abs_contribution"])
    return {
        "contribution": np.stack(contrib),  # [layer, H, P, n_buckets]
        "abs_contribution": np.stack(abs_c),  # [layer, H, P, n_buckets]
        "count": out["count"],  # [n_buckets]
        "n_abs": out["n_abs"],  # [n_buckets]
    }


def score_decomposition(
    paths: Sequence[str | Path],
    *,
    seq_len: int = 512,
    n_windows: int = 1,
    seed: int = 0,
    data: DataConfig | None = None,
    method: str = "fast",
    abs_sample: dict | None = None,
    device: str = "cpu",
    progress: bool = False,
    inputs=None,
) -> xr.Dataset:
    """Per checkpoint: dims (checkpoint, layer, head, pair, distance). ``contribution`` = mean per-pair
    score term in each distance bucket, ``abs_contribution`` = mean |term|, ``score`` = mean pre-softmax
    score (= contribution summed over pairs), ``n_scored`` = (b, t, s) triples per bucket, ``n_abs_sampled``
    = triples behind ``abs_contribution`` (equal to ``n_scored`` where it is exact). ``method``: see the
    module docstring (``fast``: linear in length; ``exact``: quadratic reference)."""
    if method not in METHODS:
        raise ValueError(f"score decomposition method must be one of {', '.join(METHODS)}, got {method!r}")
    abs_sample = {**ABS_SAMPLE, **(abs_sample or {})}
    infos = ck.inspect_all(paths, minimum=1)
    batch = probe_batch(seq_len, n_windows, seed, data) if inputs is None else inputs  # inputs: workbench.inputs
    if method == "fast" and not contiguous(batch["position_ids"]):
        raise ValueError(
            "score decomposition: the probe windows reset positions inside a window; method 'fast' "
            "needs continue positions (use method='exact', time quadratic in length)"
        )
    lo, hi = distance_buckets(int(batch["input_ids"].shape[1]))
    per = per_checkpoint(
        infos,
        lambda m: model_decomposition(m, batch, len(lo), method=method, seed=seed, abs_sample=abs_sample),
        progress=progress,
        desc="score decomposition",
        device=device,
    )
    first = infos[0]
    contrib = np.stack([r["contribution"] for r in per])  # [checkpoint, layer, H, P, distance]
    ds = xr.Dataset(
        {
            "contribution": (("checkpoint", "layer", "head", "pair", "distance"), contrib),
            "abs_contribution": (
                ("checkpoint", "layer", "head", "pair", "distance"),
                np.stack([r["abs_contribution"] for r in per]),
            ),
            "score": (("checkpoint", "layer", "head", "distance"), contrib.sum(axis=3)),
            "n_scored": (("checkpoint", "distance"), np.stack([r["count"] for r in per])),
            "n_abs_sampled": (("checkpoint", "distance"), np.stack([r["n_abs"] for r in per])),
        },
        coords={
            **checkpoint_coords(infos),
            "layer": np.arange(first.num_layers),
            "head": np.arange(first.num_heads),
            **store.pair_coords(infos[-1].wavelengths()),
            "distance": lo,
            "distance_hi": ("distance", hi),
            "wavelength_ckpt": (("checkpoint", "pair"), np.stack([i.wavelengths() for i in infos])),
        },
    )
    ds["contribution"].attrs["description"] = (
        "mean over causal (t,s) in the bucket of scale*(q_t[j]k_s[j] + q_t[j+d/2]k_s[j+d/2])"
    )
    ds["score"].attrs["description"] = (
        "mean pre-softmax score scale*q_t.k_s in the bucket (sum of contribution over pairs)"
    )
    ds.attrs.update(
        store.provenance(
            analysis=store.SCORE_DECOMPOSITION,
            seq_len=seq_len,
            n_windows=n_windows,
            seed=seed,
            head_dim=first.head_dim,
            wavelength_theta=infos[-1].rope_theta,
            buckets="log2 distance buckets: [0], [1], [2,3], [4,7], ... (position_ids differences, causal pairs)",
            score_method=method,
            score_method_description=(
                "contribution exact over all causal pairs (prefix sums of k over each query's key range); "
                "abs_contribution over a seeded uniform sample of abs_sample_pairs causal (query, key) positions "
                "per distance bucket (all pairs where the bucket has no more), see n_abs_sampled"
                if method == "fast"
                else "contribution and abs_contribution exact over all causal pairs (query blocks)"
            ),
            abs_sample_pairs=int(abs_sample["pairs"]) if method == "fast" else 0,
            abs_sample_seed=int(seed),
        )
    )
    ds["n_abs_sampled"].attrs["description"] = "(b, t, s) triples behind abs_contribution (== n_scored where exact)"
    return ds


def checkpoint_coords(infos: Sequence[ck.Info]) -> dict:
    """Coordinates along ``checkpoint``: label plus step, phase, objective, theta and content hash."""

    def col(values, dtype=object):
        return ("checkpoint", np.array(values, dtype=dtype))

    return {
        "checkpoint": np.array([i.label for i in infos], dtype=object),
        "step": col([i.step for i in infos], np.int64),
        "phase": col([i.phase for i in infos]),
        "objective": col([i.objective for i in infos]),
        "rope_theta": col([i.rope_theta for i in infos], np.float64),
        "checkpoint_hash": col([i.content_hash() for i in infos]),
    }
