"""Traces: run clean and perturbed together and follow the perturbation layer by layer into the logits.

For each spec (the first run is always the identity, named ``clean``) and each layer, per position bucket
(means over samples and the positions in the bucket):

- ``resid_rel_l2``, ``resid_cos``: residual stream after the block, ||x' - x|| / ||x|| and cos(x', x);
- ``attn_out_rel_l2``: attention output of the block;
- ``q_rel_l2``, ``k_rel_l2``: post-RoPE queries / keys (all heads of the token);
- ``lens_kl``: KL(clean || perturbed) of the logit lens (final norm + unembedding of the residual);
- ``pattern_js``: Jensen-Shannon divergence of attention rows (TransformerLens backend only, eager
  attention; NaN on nnsight);

and at the output: ``final_kl`` (KL(clean || perturbed)), ``final_js`` and ``top1_flip`` (fraction of
tokens whose argmax changed). The result is an ``xr.Dataset`` with dims (checkpoint, spec, layer,
position_bucket), ready for ``workbench.interp.store_io.write_traces``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import torch
import xarray as xr

from workbench.interp.backends import Backend, load_backend
from workbench.interp.specs import Spec, identity

LAYER_VARS = ("resid_rel_l2", "resid_cos", "attn_out_rel_l2", "q_rel_l2", "k_rel_l2", "lens_kl", "pattern_js")
FINAL_VARS = ("final_kl", "final_js", "top1_flip")


# ------------------------------------------------------------------------------------- pure math

def kl_div(p_logits: torch.Tensor, q_logits: torch.Tensor) -> torch.Tensor:
    """KL(p || q) in nats per token from logits [..., V] (float64 internally)."""
    lp = torch.log_softmax(p_logits.double(), -1)
    lq = torch.log_softmax(q_logits.double(), -1)
    return (lp.exp() * (lp - lq)).sum(-1).clamp_min(0)


def js_div(p_logits: torch.Tensor, q_logits: torch.Tensor) -> torch.Tensor:
    """Jensen-Shannon divergence in nats per token from logits [..., V]."""
    lp = torch.log_softmax(p_logits.double(), -1)
    lq = torch.log_softmax(q_logits.double(), -1)
    lm = torch.logsumexp(torch.stack([lp, lq]), 0) - np.log(2.0)
    return (0.5 * (lp.exp() * (lp - lm)).sum(-1) + 0.5 * (lq.exp() * (lq - lm)).sum(-1)).clamp_min(0)


def rel_l2(new: torch.Tensor, old: torch.Tensor, token_dims: int = 1) -> torch.Tensor:
    """||new - old|| / ||old|| per token: [B, T, D] -> [B, T]; for [B, H, T, d] (token_dims=2) norms over heads and d."""
    if token_dims == 2:
        new, old = new.transpose(1, 2).flatten(2), old.transpose(1, 2).flatten(2)
    diff = (new.double() - old.double()).norm(dim=-1)
    return diff / old.double().norm(dim=-1).clamp_min(1e-30)


def cosine(new: torch.Tensor, old: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.cosine_similarity(new.double(), old.double(), dim=-1)


def bucket_edges(positions: torch.Tensor, buckets: int | Sequence[int]) -> np.ndarray:
    """Bucket edges over position ids: ``buckets`` equal-width buckets spanning them, or explicit edges."""
    if isinstance(buckets, int):
        if buckets < 1:
            raise ValueError(f"position buckets must be >= 1, got {buckets}")
        lo, hi = int(positions.min()), int(positions.max()) + 1
        return np.unique(np.linspace(lo, hi, buckets + 1).round().astype(np.int64))
    edges = np.asarray(sorted(int(e) for e in buckets), dtype=np.int64)
    if edges.size < 2:
        raise ValueError("explicit position bucket edges need at least two values")
    return edges


def bucket_mean(values: torch.Tensor, positions: torch.Tensor, edges: np.ndarray) -> np.ndarray:
    """Mean of per-token ``values`` [B, T] within each position bucket [start, stop) -> [n_buckets] (NaN if empty)."""
    v = values.double().cpu().numpy()
    p = positions.cpu().numpy()
    out = np.full(len(edges) - 1, np.nan)
    for i, (a, b) in enumerate(zip(edges[:-1], edges[1:])):
        sel = (p >= a) & (p < b)
        if sel.any():
            out[i] = v[sel].mean()
    return out


# ------------------------------------------------------------------------------------------ trace

def default_inputs(vocab_size: int, *, batch: int = 2, length: int = 512, seed: int = 0,
                   start: int = 0) -> dict[str, torch.Tensor]:
    """Seeded random inputs from the synthetic language (filler words), positions start..start+length-1."""
    from workbench.data.tokenizer import VOCAB

    pool = torch.tensor([t for t in VOCAB.filler if t < vocab_size] or list(range(vocab_size)))
    g = torch.Generator().manual_seed(seed)
    ids = pool[torch.randint(0, len(pool), (batch, length), generator=g)]
    pos = torch.arange(start, start + length).expand(batch, -1).contiguous()
    return {"input_ids": ids, "position_ids": pos}


def _as_inputs(inputs, backend: Backend) -> tuple[torch.Tensor, torch.Tensor]:
    if inputs is None:
        inputs = default_inputs(backend.vocab_size)
    if isinstance(inputs, torch.Tensor):
        ids = inputs if inputs.ndim == 2 else inputs[None]
        return ids.long(), torch.arange(ids.shape[1]).expand_as(ids).contiguous()
    ids = torch.as_tensor(inputs["input_ids"]).long()
    pos = inputs.get("position_ids")
    pos = torch.arange(ids.shape[1]).expand_as(ids).contiguous() if pos is None else torch.as_tensor(pos).long()
    return ids, pos


def checkpoint_label(path: str | Path) -> str:
    """The store's checkpoint coordinate: '<run>/<ckpt dir>'."""
    path = Path(path).resolve()
    return f"{path.parent.name}/{path.name}"


def trace_batch(backend: Backend, specs: Sequence[Spec], input_ids: torch.Tensor, position_ids: torch.Tensor,
                *, buckets: int | Sequence[int] = 8) -> xr.Dataset:
    """Clean + every spec in one batched run -> Dataset (spec, layer, position_bucket) without checkpoint dim."""
    specs = [s for s in specs if not s.is_identity]
    runs = [identity("clean"), *specs]
    n_layers = backend.geometry.num_layers
    want = ["logits", "blocks.*.hook_resid_post", "blocks.*.hook_attn_out", "blocks.*.attn.hook_rot_*"]
    if backend.supports_pattern:
        want.append("blocks.*.attn.pattern_js")
    out = backend.run(input_ids, position_ids, runs, capture=want)
    edges = bucket_edges(position_ids, buckets)
    nb = len(edges) - 1
    layer_vals = {v: np.full((len(runs), n_layers, nb), np.nan) for v in LAYER_VARS}
    final_vals = {v: np.full((len(runs), nb), np.nan) for v in FINAL_VARS}
    clean = out[0]
    with torch.no_grad():
        lens_clean = [backend.lens(clean[f"blocks.{i}.hook_resid_post"]) for i in range(n_layers)]
        for s, got in enumerate(out):
            for i in range(n_layers):
                r, rc = got[f"blocks.{i}.hook_resid_post"], clean[f"blocks.{i}.hook_resid_post"]
                per_token = {
                    "resid_rel_l2": rel_l2(r, rc), "resid_cos": cosine(r, rc),
                    "attn_out_rel_l2": rel_l2(got[f"blocks.{i}.hook_attn_out"], clean[f"blocks.{i}.hook_attn_out"]),
                    "q_rel_l2": rel_l2(got[f"blocks.{i}.attn.hook_rot_q"], clean[f"blocks.{i}.attn.hook_rot_q"], 2),
                    "k_rel_l2": rel_l2(got[f"blocks.{i}.attn.hook_rot_k"], clean[f"blocks.{i}.attn.hook_rot_k"], 2),
                    "lens_kl": kl_div(lens_clean[i], backend.lens(r)),
                }
                if f"blocks.{i}.attn.pattern_js" in got:
                    per_token["pattern_js"] = got[f"blocks.{i}.attn.pattern_js"]
                for name, values in per_token.items():
                    layer_vals[name][s, i] = bucket_mean(values, position_ids, edges)
            lg, lc = got["logits"], clean["logits"]
            final_vals["final_kl"][s] = bucket_mean(kl_div(lc, lg), position_ids, edges)
            final_vals["final_js"][s] = bucket_mean(js_div(lc, lg), position_ids, edges)
            final_vals["top1_flip"][s] = bucket_mean((lc.argmax(-1) != lg.argmax(-1)).double(), position_ids, edges)
    names = np.array([r.name for r in runs], dtype=object)
    ds = xr.Dataset(
        {**{k: (("spec", "layer", "position_bucket"), v) for k, v in layer_vals.items()},
         **{k: (("spec", "position_bucket"), v) for k, v in final_vals.items()}},
        coords={
            "spec": names, "layer": np.arange(n_layers), "position_bucket": np.arange(nb),
            "spec_json": ("spec", np.array([r.to_json() for r in runs], dtype=object)),
            "spec_hash": ("spec", np.array([r.ops_hash for r in runs], dtype=object)),
            "bucket_start": ("position_bucket", edges[:-1]), "bucket_stop": ("position_bucket", edges[1:]),
        },
    )
    return ds


def run_trace(ckpt_path: str | Path, specs: Sequence[Spec], inputs=None, *, backend: str | Backend = "nnsight",
              buckets: int | Sequence[int] = 8, batch_size: int | None = None, progress: bool = False) -> xr.Dataset:
    """Trace ``specs`` on a checkpoint -> Dataset with dims (checkpoint, spec, layer, position_bucket).

    ``inputs``: a batch dict (``input_ids``, optional ``position_ids``), an ids tensor, or None (seeded
    filler text, 2 x 512). ``batch_size`` splits the batch into chunks (means are weighted by chunk size).
    The ``clean`` (identity) run comes first; specs are validated against the model before anything runs.
    """
    be = backend if isinstance(backend, Backend) else load_backend(ckpt_path, backend)
    from workbench.interp.specs import validate_all

    validate_all([identity("clean"), *[s for s in specs if not s.is_identity]], be.geometry)
    ids, pos = _as_inputs(inputs, be)
    step = batch_size or ids.shape[0]
    chunks = list(range(0, ids.shape[0], step))
    edges = bucket_edges(pos, buckets)
    parts, weights = [], []
    iterator: Iterable[int] = chunks
    if progress:
        from tqdm import tqdm

        iterator = tqdm(chunks, desc=f"trace {len(specs)} spec(s) [{be.name}]", unit="batch")
    for start in iterator:
        parts.append(trace_batch(be, specs, ids[start:start + step], pos[start:start + step], buckets=edges))
        weights.append(min(step, ids.shape[0] - start))
    ds = parts[0] if len(parts) == 1 else _weighted_mean(parts, weights)
    return finish(ds, be, ckpt_path, kind="traces", extra={"inputs_shape": list(ids.shape)})


def _weighted_mean(parts: list[xr.Dataset], weights: list[int]) -> xr.Dataset:
    w = xr.DataArray(np.asarray(weights, dtype=float), dims="chunk")
    stacked = xr.concat(parts, dim="chunk", data_vars="all", coords="minimal", compat="override")
    return (stacked * w).sum("chunk", skipna=False) / w.sum()


def finish(ds: xr.Dataset, be: Backend, ckpt_path: str | Path, *, kind: str, extra: dict | None = None) -> xr.Dataset:
    """Add the checkpoint dim (label, hash, theta coordinates) and provenance attrs."""
    from workbench import models, store

    label = checkpoint_label(ckpt_path)
    ds = ds.expand_dims(checkpoint=np.array([label], dtype=object))
    ds = ds.assign_coords(
        checkpoint_hash=("checkpoint", np.array([models.checkpoint_hash(ckpt_path)], dtype=object)),
        rope_theta=("checkpoint", np.array([be.geometry.theta])),
    )
    ds.attrs.update(store.provenance(kind=kind, backend=be.name, dtype=str(be.dtype).replace("torch.", ""),
                                     device=str(be.device), head_dim=be.geometry.head_dim,
                                     num_layers=be.geometry.num_layers, **(extra or {})))
    return ds
