"""Chunked KD/CE loss against a dense reference written with torch.nn.functional (value and gradient)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from workbench.train.losses import CachedTeacher, LossSpec, OnlineTeacher, chunked_loss, doubling_edges, loss_by_bucket

N, H, HT, V = 37, 16, 24, 50  # 37 tokens with chunk 8: an uneven last chunk


def _inputs(seed=0):
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(N, H, generator=g, dtype=torch.float64).float().requires_grad_()
    w = (torch.randn(V, H, generator=g) * 0.5).requires_grad_()
    th = torch.randn(N, HT, generator=g)
    tw = torch.randn(V, HT, generator=g) * 0.5
    labels = torch.randint(0, V, (N,), generator=g)
    labels[[0, 5, 6, 20, 36]] = -100
    return h, w, th, tw, labels


def _reference(h, w, th, tw, labels, spec, normalizer):
    """Dense reference from F.kl_div / F.cross_entropy, independent of the implementation."""
    valid = labels != -100
    s = h @ w.t()
    t = th @ tw.t()
    T = spec.temperature
    s_lp, t_lp = F.log_softmax(s / T, -1), F.log_softmax(t / T, -1)
    if spec.kd_kind == "forward_kl":
        kd = F.kl_div(s_lp, t_lp, log_target=True, reduction="none").sum(-1)
    elif spec.kd_kind == "reverse_kl":
        kd = F.kl_div(t_lp, s_lp, log_target=True, reduction="none").sum(-1)
    else:
        b = spec.jsd_beta
        m = (b * t_lp.exp() + (1 - b) * s_lp.exp()).log()
        kd = b * F.kl_div(m, t_lp, log_target=True, reduction="none").sum(-1) + (1 - b) * F.kl_div(
            m, s_lp, log_target=True, reduction="none"
        ).sum(-1)
    ce = F.cross_entropy(s, labels, ignore_index=-100, reduction="none")
    t2 = T * T if spec.scale_by_t2 else 1.0
    return (spec.ce_weight * ce.sum() + spec.kd_weight * t2 * kd[valid].sum()) / normalizer


@pytest.mark.parametrize(
    "kind,beta,T,t2,ce_w,kd_w",
    [
        ("forward_kl", 0.5, 1.0, True, 0.0, 1.0),
        ("forward_kl", 0.5, 2.0, True, 0.3, 0.7),
        ("forward_kl", 0.5, 2.0, False, 0.0, 1.0),
        ("reverse_kl", 0.5, 1.5, True, 0.0, 1.0),
        ("jsd", 0.5, 1.0, True, 0.0, 1.0),
        ("jsd", 0.2, 3.0, True, 0.5, 1.0),
    ],
)
def test_chunked_matches_dense_value_and_gradient(kind, beta, T, t2, ce_w, kd_w):
    h, w, th, tw, labels = _inputs()
    spec = LossSpec(
        ce_weight=ce_w, kd_weight=kd_w, kd_kind=kind, jsd_beta=beta, temperature=T, scale_by_t2=t2, chunk_size=8
    )
    normalizer = 100.0  # e.g. the valid count of a whole optimiser step
    out = chunked_loss(h, w, labels, spec, teacher=OnlineTeacher(th, tw), normalizer=normalizer)
    gh, gw = torch.autograd.grad(out.loss, (h, w))
    h2, w2 = h.detach().requires_grad_(), w.detach().requires_grad_()
    ref = _reference(h2, w2, th, tw, labels, spec, normalizer)
    rh, rw = torch.autograd.grad(ref, (h2, w2))
    assert out.loss.item() == pytest.approx(ref.item(), abs=1e-5, rel=1e-5)
    assert torch.allclose(gh, rh, atol=1e-5) and torch.allclose(gw, rw, atol=1e-5)
    assert torch.all(gh[labels == -100] == 0), "ignored tokens must get no gradient"
    assert torch.all(out.per_token[labels == -100] == 0)
    assert out.per_token.sum().item() / normalizer == pytest.approx(out.loss.item(), rel=1e-5)


def test_ce_only_equals_cross_entropy_and_needs_no_teacher():
    h, w, _, _, labels = _inputs(1)
    out = chunked_loss(h, w, labels, LossSpec(ce_weight=1.0, kd_weight=0.0, chunk_size=5))
    ref = F.cross_entropy(h @ w.t(), labels, ignore_index=-100)
    assert out.loss.item() == pytest.approx(ref.item(), abs=1e-6)
    with torch.no_grad():
        assert not chunked_loss(h, w, labels, LossSpec(ce_weight=1.0, kd_weight=0.0)).loss.requires_grad
    assert torch.allclose(torch.autograd.grad(out.loss, h)[0], torch.autograd.grad(ref, h)[0], atol=1e-6)


def test_kd_without_teacher_is_an_error():
    h, w, _, _, labels = _inputs()
    with pytest.raises(ValueError, match="needs a teacher"):
        chunked_loss(h, w, labels, LossSpec(kd_weight=1.0))


def test_normalisation_over_micro_batches_equals_one_big_batch():
    """Two halves each normalised by the total count sum to the full batch's mean loss and gradient."""
    h, w, th, tw, labels = _inputs(2)
    spec = LossSpec(ce_weight=0.5, kd_weight=1.0, chunk_size=4)
    full = chunked_loss(h, w, labels, spec, teacher=OnlineTeacher(th, tw))
    g_full = torch.autograd.grad(full.loss, w)[0]
    n = int((labels != -100).sum())
    parts = [
        chunked_loss(h[s], w, labels[s], spec, teacher=OnlineTeacher(th[s], tw), normalizer=n)
        for s in (slice(0, 20), slice(20, N))
    ]
    total = parts[0].loss + parts[1].loss
    assert total.item() == pytest.approx(full.loss.item(), abs=1e-6)
    assert torch.allclose(torch.autograd.grad(total, w)[0], g_full, atol=1e-6)


def test_cached_teacher_with_all_mass_in_topk_equals_online_teacher():
    """With k = vocab the cached (k+1 bucket) KL is the full KL."""
    h, w, th, tw, labels = _inputs(3)
    spec = LossSpec(kd_weight=1.0, temperature=2.0, chunk_size=8)
    t_lp = F.log_softmax((th @ tw.t()) / 2.0, -1)
    vals, ids = t_lp.topk(V, -1)
    cached = chunked_loss(h, w, labels, spec, teacher=CachedTeacher(ids, vals))
    online = chunked_loss(h, w, labels, spec, teacher=OnlineTeacher(th, tw))
    assert cached.loss.item() == pytest.approx(online.loss.item(), abs=1e-4)


def test_cached_teacher_topk_matches_bucketed_reference():
    h, w, th, tw, labels = _inputs(4)
    spec = LossSpec(kd_weight=1.0, chunk_size=8)
    t_lp = F.log_softmax(th @ tw.t(), -1)
    vals, ids = t_lp.topk(5, -1)
    out = chunked_loss(h, w, labels, spec, teacher=CachedTeacher(ids, vals))
    h2 = h.detach().requires_grad_()
    s_lp = F.log_softmax(h2 @ w.t(), -1)
    s_k = s_lp.gather(-1, ids)
    p_k = vals.exp()
    p_rest, q_rest = 1 - p_k.sum(-1), 1 - s_k.exp().sum(-1)
    kl = (p_k * (vals - s_k)).sum(-1) + p_rest * (p_rest.log() - q_rest.log())
    valid = labels != -100
    ref = kl[valid].sum() / valid.sum()
    assert out.loss.item() == pytest.approx(ref.item(), abs=1e-5)
    assert torch.allclose(torch.autograd.grad(out.loss, h)[0], torch.autograd.grad(ref, h2)[0], atol=1e-5)


def test_buckets_cover_positions_and_sum_to_total():
    edges = doubling_edges(300)
    assert edges == [0, 64, 128, 256, 300]
    per_tok = torch.arange(300, dtype=torch.float32)
    valid = torch.ones(300, dtype=torch.bool)
    valid[10] = False
    b = loss_by_bucket(per_tok, valid, torch.arange(300), edges)
    assert sum(c for _, c in b.values()) == 299
    assert math.isclose(sum(s for s, _ in b.values()), float(per_tok.sum() - 10))


def test_buckets_stay_on_the_loss_device_without_a_host_sync():
    """Per micro-batch the buckets are tensors on the loss's device (the meta device has no values to read: any
    float()/int() or boolean indexing here, a host sync per bucket on CUDA, would raise); read once when logged."""
    edges = doubling_edges(300)
    b = loss_by_bucket(
        torch.zeros(2, 300, device="meta"),
        torch.ones(2, 300, dtype=torch.bool, device="meta"),
        torch.arange(300, device="meta").repeat(2, 1),
        edges,
    )
    assert list(b) == ["0-64", "64-128", "128-256", "256-300"]
    assert all(t.device.type == "meta" and t.shape == (2,) and t.dtype == torch.float64 for t in b.values())
