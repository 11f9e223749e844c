"""Chunked logit-KD and CE losses that never hold both models' ``[tokens x vocab]`` logits.

The loss takes *hidden states* (the input of each model's ``lm_head``), not logits. Tokens are processed in
chunks of ``chunk_size``: for each chunk the student's and the teacher's ``lm_head`` are applied, the
per-token divergence is computed, and its gradient with respect to the chunk's hidden states and the
student's ``lm_head`` weight is taken right there (fused forward + backward, as in Liger-Kernel). Only the
hidden-state gradient ``[tokens x hidden]`` and the head-weight gradient are kept, so peak memory is one
chunk's logits, never ``tokens x vocab``. ``ChunkedLoss.backward`` just scales the stored gradients.
(Recomputing each chunk in backward would bound memory the same way at the cost of a second lm_head pass.)

Objective per valid token i (labels[i] != ignore_index):

    l_i = ce_weight * CE(z_s) + kd_weight * c_T * D(p_t^T, p_s^T)

with ``p^T = softmax(z / T)``, ``c_T = T**2`` if ``scale_by_t2`` else 1, and D one of

- ``forward_kl``: KL(p_t || p_s) (the default; mass-covering);
- ``reverse_kl``: KL(p_s || p_t) (mode-seeking);
- ``jsd``: beta * KL(p_t || m) + (1 - beta) * KL(p_s || m), m = beta * p_t + (1 - beta) * p_s.

The returned loss is ``sum_i l_i / normalizer``. The trainer passes the number of valid tokens of the
*whole optimiser step* (all micro-batches, all ranks) so gradient accumulation and data parallelism give
the same gradient as one big batch.

Shapes in comments: N tokens (flattened batch), C the tokens of one chunk, H hidden size, V vocabulary, k the
cached teacher's top-k.

The teacher is either online (its hidden states + its ``lm_head`` weight) or offline: top-k log-probs
plus the leftover mass from ``workbench teacher-cache``; then both distributions are compared on the k+1
buckets (the k teacher tokens and "everything else").
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F

from workbench import divergence as D
from workbench.architectures import softcap_logits

KDKind = Literal["forward_kl", "reverse_kl", "jsd"]


@dataclass(frozen=True)
class LossSpec:
    """What to compute. ``ce_weight``/``kd_weight`` are the final weights (objective already applied)."""

    ce_weight: float = 0.0
    kd_weight: float = 1.0
    kd_kind: KDKind = "forward_kl"
    jsd_beta: float = 0.5
    temperature: float = 1.0
    scale_by_t2: bool = True
    chunk_size: int = 1024
    ignore_index: int = -100
    student_softcap: float | None = None  # final-logit soft-cap of the student (Gemma 2), applied before CE/KD
    # teacher and student share a tokenizer of this many tokens but pad their embeddings differently (e.g. 32000
    # vs 32064 rows): KD compares the distributions over these first ids only (padded logits out of both sides)
    kd_vocab_size: int | None = None

    @classmethod
    def for_objective(cls, loss_cfg, objective: str) -> LossSpec:
        """The spec for a phase objective: ``ce`` (CE only), ``kd`` (KD only), ``ce+kd`` (both weights)."""
        ce_w = {"ce": 1.0, "kd": 0.0, "ce+kd": loss_cfg.ce_weight}[objective]
        kd_w = {"ce": 0.0, "kd": loss_cfg.kd_weight, "ce+kd": loss_cfg.kd_weight}[objective]
        return cls(
            ce_weight=ce_w,
            kd_weight=kd_w,
            kd_kind=loss_cfg.kd_kind,
            jsd_beta=loss_cfg.jsd_beta,
            temperature=loss_cfg.temperature,
            scale_by_t2=loss_cfg.scale_by_t2,
            chunk_size=loss_cfg.chunk_size,
            ignore_index=loss_cfg.ignore_index,
        )

    @property
    def kd_scale(self) -> float:
        return self.kd_weight * (self.temperature**2 if self.scale_by_t2 else 1.0)


@dataclass
class OnlineTeacher:
    """Teacher hidden states [N, H_t] (aligned with the student's tokens) and its lm_head weight [V, H_t]."""

    hidden: torch.Tensor
    weight: torch.Tensor
    softcap: float | None = None  # the teacher's final-logit soft-cap (Gemma 2: logits -> c * tanh(logits / c))


@dataclass
class CachedTeacher:
    """Offline teacher: top-k token ids [N, k] and their log-probs at the loss temperature [N, k]."""

    topk_ids: torch.Tensor
    topk_logp: torch.Tensor


@dataclass
class LossResult:
    """``loss`` carries the gradient; the rest is detached, for reporting."""

    loss: torch.Tensor  # scalar: sum of per-token losses / normalizer
    per_token: torch.Tensor  # [N] total loss per token (0 where ignored)
    ce_sum: torch.Tensor  # scalar: sum of unweighted CE over valid tokens
    kd_sum: torch.Tensor  # scalar: sum of unweighted divergence over valid tokens (no T^2)
    valid: torch.Tensor  # [N] bool


# ------------------------------------------------------------------------------------- divergences


def divergence(t_logp: torch.Tensor, s_logp: torch.Tensor, kind: KDKind, beta: float = 0.5) -> torch.Tensor:
    """Per-row divergence between teacher and student log-distributions [..., K] -> [...] (the formulas of
    :mod:`workbench.divergence`, differentiated through by the chunked loss)."""
    if kind == "forward_kl":
        return D.kl(t_logp, s_logp)
    if kind == "reverse_kl":
        return D.kl(s_logp, t_logp)
    if kind == "jsd":
        return D.js(t_logp, s_logp, beta)
    raise ValueError(f"unknown KD kind {kind!r} (forward_kl | reverse_kl | jsd)")


def _rest_logp(topk_logp: torch.Tensor) -> torch.Tensor:
    """log of the mass outside the top-k buckets, log(1 - sum exp(topk)), kept finite."""
    inside = torch.logsumexp(topk_logp, dim=-1).clamp(max=-1e-6)  # [N]
    return torch.log(-torch.expm1(inside)).clamp(min=-80.0)  # [N]


def bucketed(logp_topk: torch.Tensor) -> torch.Tensor:
    """[N, k] top-k log-probs -> [N, k+1] log-probs of (the k tokens, everything else)."""
    return torch.cat([logp_topk, _rest_logp(logp_topk).unsqueeze(-1)], dim=-1)  # [N, k+1]


def _chunk_losses(h: torch.Tensor, w: torch.Tensor, labels: torch.Tensor, teacher_chunk, spec: LossSpec):
    """Per-token (ce, kd) for one chunk, differentiable w.r.t. ``h`` and ``w``."""
    logits = softcap_logits((h @ w.t()).float(), spec.student_softcap)  # [C, V] from h [C, H], w [V, H]
    ce = F.cross_entropy(logits, labels, reduction="none") if spec.ce_weight else logits.new_zeros(len(h))  # [C]
    if not spec.kd_weight or teacher_chunk is None:
        return ce, logits.new_zeros(len(h))
    v = spec.kd_vocab_size
    s_logp = F.log_softmax((logits if v is None else logits[:, :v]) / spec.temperature, dim=-1)  # [C, V or v]
    if isinstance(teacher_chunk, tuple):  # online: (hidden, weight)
        t_hidden, t_weight, t_cap = teacher_chunk
        t_weight = t_weight if v is None else t_weight[:v]  # [V or v, H_t]
        t_logp = F.log_softmax(softcap_logits((t_hidden @ t_weight.t()).float(), t_cap) / spec.temperature, dim=-1)
        # t_logp [C, V or v], as s_logp
    else:  # cached: (ids, logp)
        ids, t_topk = teacher_chunk.topk_ids, teacher_chunk.topk_logp.float()  # [C, k], [C, k]
        s_logp = bucketed(s_logp.gather(-1, ids.long()))  # [C, k+1]
        t_logp = bucketed(t_topk)  # [C, k+1]
    return ce, divergence(t_logp, s_logp, spec.kd_kind, spec.jsd_beta)  # [C], [C]


class ChunkedLoss(torch.autograd.Function):
    """Fused chunked loss: gradients are taken per chunk in forward; backward only rescales them."""

    @staticmethod
    def forward(ctx, h, w, labels, valid_idx, teacher, spec: LossSpec, normalizer: float):  # type: ignore[override]
        need_grad = ctx.needs_input_grad[0] or ctx.needs_input_grad[1]
        n_valid = len(valid_idx)
        ce_tok = h.new_zeros(n_valid, dtype=torch.float32)  # [N_valid]
        kd_tok = h.new_zeros(n_valid, dtype=torch.float32)  # [N_valid]
        grad_h = torch.zeros_like(h) if ctx.needs_input_grad[0] else None  # [N, H]
        grad_w = torch.zeros_like(w, dtype=torch.float32) if ctx.needs_input_grad[1] else None  # [V, H]
        scale = 1.0 / normalizer
        w_d = w.detach().requires_grad_(ctx.needs_input_grad[1])
        for start in range(0, n_valid, spec.chunk_size):
            idx = valid_idx[start : start + spec.chunk_size]  # [C]
            h_c = h.detach().index_select(0, idx).requires_grad_(ctx.needs_input_grad[0])  # [C, H]
            t_c = None
            if isinstance(teacher, OnlineTeacher):
                t_c = (teacher.hidden.detach().index_select(0, idx), teacher.weight.detach(), teacher.softcap)
            elif isinstance(teacher, CachedTeacher):
                t_c = CachedTeacher(teacher.topk_ids.index_select(0, idx), teacher.topk_logp.index_select(0, idx))
            with torch.enable_grad() if need_grad else torch.no_grad():
                ce, kd = _chunk_losses(h_c, w_d, labels.index_select(0, idx), t_c, spec)  # [C], [C]
                total = (spec.ce_weight * ce + spec.kd_scale * kd).sum() * scale
                if need_grad:
                    inputs = [t for t, n in ((h_c, ctx.needs_input_grad[0]), (w_d, ctx.needs_input_grad[1])) if n]
                    grads = list(torch.autograd.grad(total, inputs))
                    if ctx.needs_input_grad[0]:
                        grad_h.index_add_(0, idx, grads.pop(0))
                    if ctx.needs_input_grad[1]:
                        grad_w += grads.pop(0)
            ce_tok[start : start + len(idx)] = ce.detach()
            kd_tok[start : start + len(idx)] = kd.detach()
        ctx.save_for_backward(grad_h, None if grad_w is None else grad_w.to(w.dtype))
        loss = (spec.ce_weight * ce_tok.sum() + spec.kd_scale * kd_tok.sum()) * scale
        ctx.mark_non_differentiable(ce_tok, kd_tok)
        return loss, ce_tok, kd_tok

    @staticmethod
    def backward(ctx, grad_loss, _g_ce, _g_kd):  # type: ignore[override]
        grad_h, grad_w = ctx.saved_tensors
        gh = grad_h * grad_loss.to(grad_h.dtype) if grad_h is not None else None
        gw = grad_w * grad_loss.to(grad_w.dtype) if grad_w is not None else None
        return gh, gw, None, None, None, None, None


def chunked_loss(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    labels: torch.Tensor,
    spec: LossSpec,
    *,
    teacher: OnlineTeacher | CachedTeacher | None = None,
    normalizer: float | None = None,
) -> LossResult:
    """CE and/or KD loss from the student's hidden states [..., H] and lm_head weight [V, H].

    ``labels`` [...] are the next-token targets already aligned with ``hidden`` (ignore_index = no loss);
    ``teacher`` rows are aligned with ``hidden`` rows. ``normalizer`` defaults to this call's valid count.
    """
    h = hidden.reshape(-1, hidden.shape[-1])  # [N, H]
    lab = labels.reshape(-1)  # [N]
    if len(h) != len(lab):
        raise ValueError(f"hidden has {len(h)} tokens but labels has {len(lab)}")
    if spec.kd_weight and teacher is None:
        raise ValueError("kd_weight > 0 needs a teacher (online hidden states or a teacher cache)")
    if isinstance(teacher, OnlineTeacher):
        teacher = OnlineTeacher(teacher.hidden.reshape(-1, teacher.hidden.shape[-1]), teacher.weight, teacher.softcap)
        rows, v = (teacher.weight.shape[0], weight.shape[0]), spec.kd_vocab_size
        if (rows[0] != rows[1] and v is None) or (v is not None and v > min(rows)):
            raise ValueError(
                f"teacher vocab {rows[0]} != student vocab {rows[1]}"
                + ("" if v is None else f" and kd_vocab_size {v} is beyond one of them")
            )
    elif isinstance(teacher, CachedTeacher):
        k = teacher.topk_ids.shape[-1]
        teacher = CachedTeacher(teacher.topk_ids.reshape(-1, k), teacher.topk_logp.reshape(-1, k))
    if not torch.is_grad_enabled():  # e.g. evaluation: skip the fused gradient work
        h, weight = h.detach(), weight.detach()
    valid = lab != spec.ignore_index  # [N]
    valid_idx = valid.nonzero().squeeze(-1)  # [N_valid]
    if normalizer is None:
        normalizer = max(int(valid_idx.numel()), 1)
    safe_labels = torch.where(valid, lab, torch.zeros_like(lab))  # [N]
    loss, ce_tok, kd_tok = ChunkedLoss.apply(h, weight, safe_labels, valid_idx, teacher, spec, float(normalizer))
    per_tok = torch.zeros(len(lab), dtype=torch.float32, device=h.device)  # [N]
    per_tok[valid_idx] = spec.ce_weight * ce_tok + spec.kd_scale * kd_tok
    return LossResult(
        loss=loss,
        per_token=per_tok.view(labels.shape),
        ce_sum=ce_tok.sum(),
        kd_sum=kd_tok.sum(),
        valid=valid.view(labels.shape),
    )


def dense_loss(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    labels: torch.Tensor,
    spec: LossSpec,
    *,
    teacher_hidden: torch.Tensor | None = None,
    teacher_weight: torch.Tensor | None = None,
    normalizer: float | None = None,
    teacher_softcap: float | None = None,
) -> torch.Tensor:
    """The same objective with full ``[tokens x vocab]`` logits and plain autograd (benchmark baseline)."""
    logits = softcap_logits((hidden.reshape(-1, hidden.shape[-1]) @ weight.t()).float(), spec.student_softcap)  # [N, V]
    lab = labels.reshape(-1)  # [N]
    valid = lab != spec.ignore_index  # [N]
    n = normalizer or max(int(valid.sum()), 1)
    total = logits.new_zeros(())
    if spec.ce_weight:
        total = total + spec.ce_weight * F.cross_entropy(logits, lab, ignore_index=spec.ignore_index, reduction="sum")
    if spec.kd_weight:
        t_logits = softcap_logits(
            (teacher_hidden.reshape(-1, teacher_hidden.shape[-1]) @ teacher_weight.t()).float(), teacher_softcap
        )  # [N, V_t]
        v = spec.kd_vocab_size or min(t_logits.shape[-1], logits.shape[-1])
        kd = divergence(
            F.log_softmax(t_logits[:, :v] / spec.temperature, -1),
            F.log_softmax(logits[:, :v] / spec.temperature, -1),
            spec.kd_kind,
            spec.jsd_beta,
        )  # [N]
        total = total + spec.kd_scale * (kd * valid).sum()
    return total / n


# ------------------------------------------------------------------------------------------ buckets


def doubling_edges(seq_len: int, first: int = 64) -> list[int]:
    """Power-of-two position bucket edges [0, first, 2*first, ...] covering ``seq_len``."""
    edges = [0]
    e = first
    while e < seq_len:
        edges.append(e)
        e *= 2
    return edges + [seq_len]


def loss_by_bucket(
    per_token: torch.Tensor, valid: torch.Tensor, position_ids: torch.Tensor, edges: list[int]
) -> dict[str, torch.Tensor]:
    """Sum of per-token loss and valid count per position bucket ``"lo-hi"`` (hi exclusive), each a float64
    tensor [sum, count] on the loss's device: no host sync here (the trainer adds them up over a step's
    micro-batches and reads them once, when the step is logged)."""
    pos = position_ids.reshape(-1)  # [N]
    pt = per_token.reshape(-1).detach()  # [N]
    v = valid.reshape(-1) & (pos >= edges[0]) & (pos < edges[-1])  # [N]
    bucket = torch.bucketize(pos, torch.tensor(edges[1:-1], device=pos.device), right=True)  # [N] in [0, B)
    out = torch.zeros(len(edges) - 1, 2, dtype=torch.float64, device=pt.device)  # [B, (sum, count)]
    out[:, 0].index_add_(0, bucket, torch.where(v, pt, 0).double())
    out[:, 1].index_add_(0, bucket, v.double())
    return {f"{lo}-{hi}": row for lo, hi, row in zip(edges[:-1], edges[1:], out)}
