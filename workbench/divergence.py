"""Divergences between distributions over the last axis: pure tensor math, one definition each.

Inputs are log-probabilities (``kl``, ``js``), logits (``kl_logits``, ``lens_kl``) or probabilities with exact
zeros (``js_probs``, attention rows). Results are in nats, one value per row ``[..., V] -> [...]``. Used by
the KD loss (:mod:`workbench.train.losses`, where they carry the gradient), the traces, the repeated-token
and the cross-document experiments.
"""

from __future__ import annotations

import math

import torch


def kl(lp: torch.Tensor, lq: torch.Tensor) -> torch.Tensor:
    """KL(p || q) from log-probabilities [..., V] (broadcast) -> [...]."""
    return (lp.exp() * (lp - lq)).sum(-1)


def js(lp: torch.Tensor, lq: torch.Tensor, beta: float = 0.5) -> torch.Tensor:
    """Generalised Jensen-Shannon divergence from log-probabilities: beta KL(p || m) + (1 - beta) KL(q || m)
    with m = beta p + (1 - beta) q; beta = 0.5 is the plain JS divergence."""
    if not 0.0 < beta < 1.0:
        raise ValueError(f"jsd_beta must be in (0, 1), got {beta}")
    m = torch.logsumexp(torch.stack([lp + math.log(beta), lq + math.log1p(-beta)]), dim=0)
    return beta * kl(lp, m) + (1.0 - beta) * kl(lq, m)


def kl_logits(p_logits: torch.Tensor, q_logits: torch.Tensor) -> torch.Tensor:
    """KL(softmax p || softmax q) in nats per row from logits [..., V], in float64, clamped at 0."""
    return kl(torch.log_softmax(p_logits.double(), -1), torch.log_softmax(q_logits.double(), -1)).clamp_min(0)


def lens_kl(z: torch.Tensor) -> torch.Tensor:
    """KL(softmax z[0] || softmax z[s]) per token for logits z [n, ..., V] -> [n - 1, ...], in float32 without
    cancellation: with delta = z[s] - z[0] and x = delta - E_p[delta], KL = log E_p[exp x]
    = log1p(E_p[expm1 x]) (exactly 0 where the logits agree); rows with large x use the shifted form."""
    z = z.float()
    lp0 = torch.log_softmax(z[0], -1)
    p0 = lp0.exp()
    delta = z[1:] - z[:1]
    x = delta - torch.einsum("...v,s...v->s...", p0, delta)[..., None]
    top = x.amax(-1)
    out = torch.log1p(torch.einsum("...v,s...v->s...", p0, torch.expm1(x)))
    big = top > 30
    if bool(big.any()):
        shifted = top + torch.log((p0 * torch.exp(x - top[..., None])).sum(-1))
        out = torch.where(big, shifted, out)
    return out.clamp_min(0)


def js_probs(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """Jensen-Shannon divergence (nats) between probability rows [..., V] that may hold exact zeros (attention
    rows under a causal mask): 0 log 0 = 0."""
    m = 0.5 * (p + q)
    kl_m = lambda a: torch.special.xlogy(a, a).sum(-1) - torch.special.xlogy(a, m).sum(-1)  # noqa: E731
    return 0.5 * (kl_m(p) + kl_m(q))
