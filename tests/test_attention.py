"""Document masks (workbench.attention): the FlexAttention BlockMask equals the dense mask, per architecture.

Every flex test uses one window (256 tokens, batch 2) and one head shape, so torch compiles flex_attention once
per architecture's score_mod, not once per test. FlexAttention has no backward on CPU (torch 2.11-2.13), so the
gradient comparison runs where CUDA is (and in analyses/benchmarks/bench_gpu_trainer.py's device check)."""

from __future__ import annotations

import pytest
import torch

from workbench import architectures as A
from workbench import attention
from workbench.data.packing import attention_mask as dense_mask

T, B = 256, 2
DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")


def tiny(arch: str):
    return A.tiny(arch).to(DEVICE)


def packed_doc_ids() -> torch.Tensor:
    """[2, 256]: row 0 many short documents (block edges inside and on documents), row 1 one long + short ones."""
    lens = [[10, 118, 128, 0], [200, 40, 16, 0]]
    return torch.stack(
        [torch.repeat_interleave(torch.arange(4), torch.tensor(r[:3] + [T - sum(r[:3])])) for r in lens]
    ).to(DEVICE)


@pytest.fixture(scope="module")
def batch() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {"input_ids": torch.randint(0, 64, (B, T), generator=g).to(DEVICE), "doc_ids": packed_doc_ids()}


def test_block_tables_skip_other_documents_and_keep_full_blocks():
    """Block level: blocks of one document below the diagonal are full, blocks sharing no document are skipped."""
    doc = torch.repeat_interleave(torch.arange(3), torch.tensor([256, 128, 128]))[None]  # blocks: d0 d0 d1 d2
    bm = attention.block_mask(doc)
    assert bm.kv_num_blocks[0, 0].tolist() == [1, 1, 1, 1]  # each diagonal block is partial (causal)
    assert bm.full_kv_num_blocks[0, 0].tolist() == [0, 1, 0, 0]  # block 1 sees block 0 whole; d1, d2 see nothing
    assert bm.shape[-2:] == (512, 512)


def test_dense_fallback_rules_and_the_refusal():
    cpu = torch.device("cpu")
    assert attention.resolve_backend("auto", cpu, grad=True, seq=8192) == "dense"  # no flex backward on CPU
    assert attention.resolve_backend("auto", cpu, grad=False, seq=512) == "dense"  # compile would dominate
    assert attention.resolve_backend("auto", cpu, grad=False, seq=8192) == "flex"
    with pytest.raises(RuntimeError, match="no backward on CPU"):
        attention.resolve_backend("flex", cpu, grad=True)
    with pytest.raises(attention.MaskTooLarge) as e:
        attention.check_dense_fits(1, 2**20, torch.float32, cpu)  # 4 TiB
    assert "1,048,576-token window" in str(e.value) and "\n" not in str(e.value)
    causal = attention.attention_mask(packed_doc_ids().cpu(), "causal")
    assert causal.shape == (B, T) and bool((causal == 1).all())  # causal stays the 2D all-ones mask (plain SDPA)


def test_attention_for_switches_to_flex_for_the_pass_only(batch):
    model = tiny("llama")
    bm = attention.block_mask(batch["doc_ids"])
    with attention.attention_for(model, bm):
        assert model.config._attn_implementation == "flex_attention"
    assert model.config._attn_implementation == "sdpa"
    with attention.attention_for(model, dense_mask(batch["doc_ids"], "document")):
        assert model.config._attn_implementation == "sdpa"


@pytest.mark.slow  # one flex_attention compile per architecture (about 10-30 s each on 2 busy cores)
@pytest.mark.parametrize("arch", A.NAMES)
def test_flex_block_mask_equals_the_dense_mask(arch, batch):
    """Logits (and, on CUDA, gradients) of each architecture under the BlockMask vs the dense 4D mask."""
    model = tiny(arch)
    ids, docs = batch["input_ids"], batch["doc_ids"]
    pos = torch.arange(T, device=DEVICE).expand(B, T)
    grad = DEVICE.type == "cuda"
    r = attention.compare_with_dense(model, ids, docs, grad=grad)
    gdiff = r.get("grad_rel_diff", float("nan"))
    print(
        f"{arch}: max |logit diff| {r['logit_diff']:.2e} (logits up to {r['logit_max']:.2f}); "
        f"relative max |grad diff| {gdiff:.2e}{'' if grad else ' (no flex backward on CPU)'}"
    )
    assert r["logit_diff"] < 1e-4
    if grad:
        assert gdiff < 1e-3
    dense = attention.document_mask(docs, backend="dense")
    with torch.no_grad():
        outs = [model(input_ids=ids, attention_mask=dense, position_ids=pos).logits.float()]
    # and the mask really masks: the same model with causal attention differs
    with torch.no_grad():
        causal = model(input_ids=ids, attention_mask=attention.attention_mask(docs, "causal"), position_ids=pos).logits
    assert (causal.float() - outs[0]).abs().max().item() > 1e-3


@pytest.mark.slow  # one flex compile at 2,048 tokens
def test_reset_teacher_on_the_training_path_uses_flex_and_matches_dense(monkeypatch):
    """DistillModule with ``teacher.positions: reset`` at 2,048 tokens on CPU: the teacher's view is a BlockMask
    (auto), the student stays causal SDPA with gradients, and loss and gradients equal the dense-mask run."""
    from workbench.train import distill
    from workbench.train.losses import LossSpec

    n = 2048
    student, teacher = A.tiny("llama", seed=1, max_positions=n), A.tiny("llama", seed=2, max_positions=n).eval()
    teacher.requires_grad_(False)
    g = torch.Generator().manual_seed(3)
    docs = torch.repeat_interleave(torch.arange(n), torch.randint(64, 257, (n,), generator=g))[:n][None]
    ids = torch.randint(0, 64, (1, n), generator=g)
    batch = {"input_ids": ids, "labels": ids, "doc_ids": docs, "position_ids": torch.arange(n)[None]}
    module = distill.DistillModule(student, teacher, "reset")
    assert attention.is_block_mask(distill.reset_view(docs)["attention_mask"])
    results = []
    for min_tokens in (attention.CPU_FLEX_MIN_TOKENS, 10**9):  # flex, then dense
        monkeypatch.setattr(attention, "CPU_FLEX_MIN_TOKENS", min_tokens)
        student.zero_grad(set_to_none=True)
        mask = attention.attention_mask(docs, "causal", grad=True)
        loss = module(batch, mask, LossSpec(kd_weight=1.0, chunk_size=512), float(n - 1))[0]
        loss.backward()
        results.append((loss.item(), student.model.layers[0].self_attn.q_proj.weight.grad.clone()))
    assert not attention.is_block_mask(distill.reset_view(docs)["attention_mask"])
    (l_flex, g_flex), (l_dense, g_dense) = results
    print(
        f"reset teacher at {n} tokens: loss flex {l_flex:.6f} dense {l_dense:.6f}, "
        f"max |grad diff| {(g_flex - g_dense).abs().max().item():.1e}"
    )
    assert l_flex == pytest.approx(l_dense, abs=1e-5)
    assert torch.allclose(g_flex, g_dense, atol=1e-5)
