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
position_bucket), ready for ``workbench.interventions.write_traces``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import torch
import xarray as xr
from tqdm.auto import tqdm

from workbench import checkpoint_io, checkpoints, store
from workbench.data.tokenizer import VOCAB
from workbench.divergence import js_probs, lens_kl
from workbench.interventions.backends import Backend, load_backend
from workbench.interventions.hooks import act_name, parse_act_name
from workbench.interventions.specs import Spec, identity, validate_all

LAYER_VARS = ("resid_rel_l2", "resid_cos", "attn_out_rel_l2", "q_rel_l2", "k_rel_l2", "lens_kl", "pattern_js")
FINAL_VARS = ("final_kl", "final_js", "top1_flip")


# ------------------------------------------------------------------------------------- pure math


def cosine(new: torch.Tensor, old: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.cosine_similarity(new.double(), old.double(), dim=-1)


def trace_bucket_edges(positions: torch.Tensor, buckets: int | Sequence[int]) -> np.ndarray:
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


# ------------------------------------------------------------------------------------------ trace


def default_inputs(
    vocab_size: int, *, batch: int = 2, length: int = 512, seed: int = 0, start: int = 0
) -> dict[str, torch.Tensor]:
    """Seeded random inputs from the synthetic language (filler words), positions start..start+length-1."""
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


class TraceStats:
    """Streaming trace statistics: ``reduce(name, x)`` is handed each capture [n_runs, B, T, ...] during the
    forward (``Backend.stream``) and adds its per-token metrics straight into per-bucket sums, so no
    activation outlives its layer and no second pass runs. Per-token metrics run in float32 on the model's
    device (the logit-lens KL in a cancellation-free form), the final-logit divergences in float64; only the
    per-bucket sums [var, run, layer, bucket] come back to the host, once, in ``dataset``."""

    def __init__(self, backend: Backend, runs: Sequence[Spec], edges: np.ndarray):
        self.backend, self.runs, self.edges = backend, list(runs), np.asarray(edges)
        self.n, self.n_layers, self.nb = len(runs), backend.geometry.num_layers, len(edges) - 1
        dev = backend.device
        self.layer_sums = torch.zeros(len(LAYER_VARS), self.n, self.n_layers, self.nb, dtype=torch.float64, device=dev)
        self.final_sums = torch.zeros(len(FINAL_VARS), self.n, self.nb, dtype=torch.float64, device=dev)
        self.counts = torch.zeros(self.nb, dtype=torch.float64, device=dev)
        # what the backend measures (pattern_js needs eager attention: TransformerLens only)
        self.measured = [name != "pattern_js" or backend.supports_pattern for name in LAYER_VARS]
        # the logit lens of the last block's residual *is* the model's output there (final norm + unembedding,
        # nothing after it): its KL is the final KL, taken from the logits instead of a second unembedding
        self.last_lens_is_output = bool(getattr(backend, "lens_is_output", False))
        self.weights: torch.Tensor | None = None

    def begin(self, position_ids: torch.Tensor) -> None:
        """Start a chunk: the [B*T, n_buckets] membership matrix of its tokens."""
        pos = position_ids.reshape(-1).to(self.backend.device)
        edges = torch.as_tensor(self.edges, device=pos.device)
        idx = torch.bucketize(pos, edges, right=True) - 1  # bucket i holds edges[i] <= p < edges[i+1]
        inside = (idx >= 0) & (idx < self.nb)
        w = torch.zeros(pos.numel(), self.nb, dtype=torch.float64, device=pos.device)
        w[inside.nonzero().squeeze(1), idx[inside]] = 1.0
        self.weights = w
        self.counts += w.sum(0)

    def _add(self, target: torch.Tensor, values: torch.Tensor) -> None:
        """values [n_runs - 1, B, T] (perturbed runs) -> bucket sums added to target[1:]."""
        target[1:] += values.reshape(values.shape[0], -1).double() @ self.weights

    def __call__(self, name: str, x: torch.Tensor) -> None:
        if self.n < 2:
            return
        if name == "logits":
            # float64 [B, T, V] buffers one perturbed run at a time: the peak does not grow with the spec count
            lp = torch.log_softmax(x[0].double(), -1)  # clean [B, T, V]
            p = lp.exp()
            p_lp = torch.einsum("btv,btv->bt", p, lp)  # -H(p)
            top = x[0].argmax(-1, keepdim=True)  # top-1 of clean; a flip: another token beats it
            kls, jss, flips = [], [], []
            for s in range(1, self.n):
                lq = torch.log_softmax(x[s].double(), -1)
                q = lq.exp()
                kls.append((p_lp - torch.einsum("btv,btv->bt", p, lq)).clamp_min(0))
                # JS = H(m) - (H(p) + H(q)) / 2 with m = (p + q) / 2
                m = (0.5 * (p + q)).clamp_min(1e-300)
                jss.append(
                    (
                        0.5 * p_lp + 0.5 * torch.einsum("btv,btv->bt", q, lq) - torch.einsum("btv,btv->bt", m, m.log())
                    ).clamp_min(0)
                )
                del lq, q, m
                flips.append((x[s].gather(-1, top) < x[s].amax(-1, keepdim=True)).squeeze(-1).double())
            final_kl = torch.stack(kls)  # [n - 1, B, T]
            self._add(self.final_sums[0], final_kl)
            if self.last_lens_is_output:
                self._add(self.layer_sums[5, :, self.n_layers - 1], final_kl)
            self._add(self.final_sums[1], torch.stack(jss))
            self._add(self.final_sums[2], torch.stack(flips))
            return
        kind, layer = parse_act_name(name)
        sums = self.layer_sums
        if kind == "resid_post":
            xf = x.float()
            norms = torch.linalg.vector_norm(xf, dim=-1)  # [n, B, T]
            diff = torch.linalg.vector_norm(xf[1:] - xf[:1], dim=-1)
            self._add(sums[0, :, layer], diff / norms[0].clamp_min(1e-30))
            # cos from the three norms: 2 a.b = |a|^2 + |b|^2 - |a - b|^2 (no extra pass over the states)
            cos = (norms[1:] ** 2 + norms[:1] ** 2 - diff**2) / (2 * norms[1:] * norms[:1]).clamp_min(1e-30)
            self._add(sums[1, :, layer], cos.clamp(-1, 1))
            if not (self.last_lens_is_output and layer == self.n_layers - 1):
                self._add(sums[5, :, layer], lens_kl(self.backend.lens(x)))
        elif kind == "attn_out":
            self._add(sums[2, :, layer], _rel_l2_tokens(x))
        elif kind in ("rot_q", "rot_k"):
            v = 3 if kind == "rot_q" else 4
            self._add(sums[v, :, layer], _rel_l2_tokens(x))
        elif kind == "pattern":  # [n, B, T, H, T_k]
            self._add(sums[6, :, layer], js_probs(x[:1], x[1:]).mean(-1))

    def dataset(self) -> xr.Dataset:
        counts = self.counts.cpu().numpy()
        with np.errstate(invalid="ignore", divide="ignore"):
            layer = self.layer_sums.cpu().numpy() / counts
            final = self.final_sums.cpu().numpy() / counts
        empty = counts == 0
        layer[..., empty], final[..., empty] = np.nan, np.nan
        for v, name in enumerate(LAYER_VARS):  # clean against itself is exact: no change, cosine 1
            if self.measured[v]:
                layer[v, 0][:, ~empty] = 1.0 if name == "resid_cos" else 0.0
            else:
                layer[v] = np.nan
        final[:, 0][:, ~empty] = 0.0
        names = np.array([r.name for r in self.runs], dtype=object)
        return xr.Dataset(
            {
                **{k: (("spec", "layer", "position_bucket"), layer[v]) for v, k in enumerate(LAYER_VARS)},
                **{k: (("spec", "position_bucket"), final[v]) for v, k in enumerate(FINAL_VARS)},
            },
            coords={
                "spec": names,
                "layer": np.arange(self.n_layers),
                "position_bucket": np.arange(self.nb),
                "spec_json": ("spec", np.array([r.to_json() for r in self.runs], dtype=object)),
                "spec_hash": ("spec", np.array([r.ops_hash for r in self.runs], dtype=object)),
                "bucket_start": ("position_bucket", self.edges[:-1]),
                "bucket_stop": ("position_bucket", self.edges[1:]),
            },
        )


def _rel_l2_tokens(x: torch.Tensor) -> torch.Tensor:
    """x [n, B, T, ...] -> ||x[s] - x[0]|| / ||x[0]|| per token over all dims after T: [n - 1, B, T] (float32)."""
    xf = x.float()
    dims = tuple(range(3, xf.ndim))
    num = torch.linalg.vector_norm(xf[1:] - xf[:1], dim=dims)
    return num / torch.linalg.vector_norm(xf[0], dim=tuple(d - 1 for d in dims)).clamp_min(1e-30)


def _stream_chunk(be: Backend, runs: Sequence[Spec], stats: TraceStats, ids: torch.Tensor, pos: torch.Tensor) -> None:
    kinds = ["resid_post", "attn_out", "rot_q", "rot_k"] + (["pattern"] if be.supports_pattern else [])
    want = [act_name("logits"), *(act_name(kind, "*") for kind in kinds)]
    stats.begin(pos)
    be.stream(ids, pos, runs, stats, want=want)


def run_trace(
    ckpt_path: str | Path,
    specs: Sequence[Spec],
    inputs=None,
    *,
    backend: str | Backend = "nnsight",
    buckets: int | Sequence[int] = 8,
    batch_size: int | None = None,
    progress: bool = False,
) -> xr.Dataset:
    """Trace ``specs`` on a checkpoint -> Dataset with dims (checkpoint, spec, layer, position_bucket).

    ``inputs``: a batch dict (``input_ids``, optional ``position_ids``), an ids tensor, or None (seeded
    filler text, 2 x 512). ``batch_size`` splits the batch into chunks (statistics are summed over all
    chunks per bucket, then divided by the bucket's token count). The ``clean`` (identity) run comes first;
    specs are validated against the model, and the TransformerLens backend's memory limit checked, before
    anything runs. Statistics are computed during the forward (``TraceStats``): memory does not grow with
    the number of layers, and no activation is copied to the host.
    """
    be = backend if isinstance(backend, Backend) else load_backend(ckpt_path, backend)
    runs = [identity("clean"), *[s for s in specs if not s.is_identity]]
    validate_all(runs, be.geometry)
    ids, pos = _as_inputs(inputs, be)
    step = batch_size or ids.shape[0]
    if hasattr(be, "check_length"):
        be.check_length(len(runs) * min(step, ids.shape[0]), ids.shape[1])
    chunks = list(range(0, ids.shape[0], step))
    stats = TraceStats(be, runs, trace_bucket_edges(pos, buckets))
    iterator: Iterable[int] = chunks
    if progress:
        iterator = tqdm(chunks, desc=f"trace {len(specs)} spec(s) [{be.name}]", unit="batch")
    for start in iterator:
        _stream_chunk(be, runs, stats, ids[start : start + step], pos[start : start + step])
    return finish(stats.dataset(), be, ckpt_path, kind=store.TRACES, extra={"inputs_shape": list(ids.shape)})


def finish(ds: xr.Dataset, be: Backend, ckpt_path: str | Path, *, kind: str, extra: dict | None = None) -> xr.Dataset:
    """Add the checkpoint dim (label, hash, theta coordinates) and provenance attrs."""
    label = checkpoints.label(ckpt_path)
    ds = ds.expand_dims(checkpoint=np.array([label], dtype=object))
    ds = ds.assign_coords(
        checkpoint_hash=("checkpoint", np.array([checkpoint_io.checkpoint_hash(ckpt_path)], dtype=object)),
        rope_theta=("checkpoint", np.array([be.geometry.theta])),
    )
    ds.attrs.update(
        store.provenance(
            kind=kind,
            backend=be.name,
            dtype=str(be.dtype).replace("torch.", ""),
            device=str(be.device),
            head_dim=be.geometry.head_dim,
            num_layers=be.geometry.num_layers,
            **(extra or {}),
        )
    )
    return ds
