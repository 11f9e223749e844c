"""Attention masks by document: one builder for every pass that masks attention by document.

Every place that keeps a token inside its own packed document (the ``document`` packing mode, the teacher's
``reset`` view, the teacher cache of a reset run, ``kd-signal``'s document pass, the posfree ablation) asks
:func:`document_mask` for its mask and runs the model inside :func:`attention_for`.

- **flex** (default wherever torch has FlexAttention: CUDA, and CPU through inductor): a FlexAttention
  ``BlockMask`` built directly from the document ids, block by block (128 x 128 tokens): memory
  O(batch x (T/128)^2) integers instead of O(batch x T^2), and the kernel skips the blocks no token of which
  may attend (torchtitan and torchtune mask documents the same way). The model runs that pass under
  transformers' ``flex_attention`` implementation (which takes a ``BlockMask`` as the 4D ``attention_mask`` as
  is, and applies Gemma 2's attention soft-capping as a ``score_mod``); :func:`attention_for` switches the
  loaded model's implementation for the pass and back.
- **dense** (the fallback where flex cannot run: a pass that backpropagates through attention on CPU (the
  student's ``document`` mode: torch 2.11-2.13 raise "FlexAttention does not support backward on CPU"), torch
  without ``torch.nn.attention.flex_attention``, a device other than CUDA or CPU (MPS), CPU without a C++
  compiler for inductor, or ``backend="dense"`` asked for; ``auto`` on CPU also keeps windows under
  ``CPU_FLEX_MIN_TOKENS`` dense, where flex's per-shape compile costs more than the small mask): the additive
  ``[batch, 1, T, T]`` mask of :func:`workbench.data.packing.attention_mask`,
  refused with one line naming the window and the memory when it would not fit in half the free memory.

Causal attention across documents is not built here: it stays the all-ones 2D mask (plain causal SDPA, flash
kernels on GPU). Exactness against the dense mask (logits and gradients, every architecture) is tested in
``tests/test_attention.py``. Documents are where the id changes (ids non-decreasing along the window, as the
packers write them); ids that repeat out of order fall back to torch's ``create_block_mask``.
"""

from __future__ import annotations

import contextlib
import functools
import os
import shutil
from collections.abc import Iterator
from typing import Any, Literal

import torch

from workbench.budget import available_bytes
from workbench.data.packing import attention_mask as dense_attention_mask

Backend = Literal["auto", "flex", "dense"]
BLOCK = 128  # FlexAttention's default block size (tokens per query/key block)
# ``auto`` on CPU: below this window the dense mask is small (16 MB per row at 2,048 tokens in fp32) and flex's
# inductor compile (10-40 s per new shape on CPU, measured here) would dominate; tests and tiny runs stay dense
CPU_FLEX_MIN_TOKENS = 2048
FLEX = "flex_attention"


class MaskTooLarge(MemoryError):
    """A dense document mask that would not fit in memory (one line: window, batch, bytes, free)."""


@functools.cache
def _has_flex() -> bool:
    try:
        from torch.nn.attention.flex_attention import BlockMask, flex_attention  # noqa: F401
    except ImportError:
        return False
    return True


def flex_available(device: torch.device | str, grad: bool = False) -> tuple[bool, str]:
    """Whether FlexAttention can run on ``device`` here (``grad``: with a backward pass), and if not, why."""
    dev = torch.device(device)
    if not _has_flex():
        return False, f"torch {torch.__version__} has no torch.nn.attention.flex_attention"
    if dev.type == "cuda":
        return True, ""
    if dev.type == "cpu":
        if not any(shutil.which(c) for c in (os.environ.get("CXX", "g++"), "g++", "c++", "clang++")):
            return False, "FlexAttention on CPU compiles through inductor and no C++ compiler is on PATH"
        if grad:  # torch raises "FlexAttention does not support backward on CPU" (2.11 to 2.13 at least)
            return False, f"FlexAttention has no backward on CPU (torch {torch.__version__})"
        return True, ""
    return False, f"FlexAttention does not run on {dev.type}"


def resolve_backend(backend: Backend, device: torch.device | str, grad: bool = False, seq: int | None = None) -> str:
    """``auto`` -> ``flex`` where it runs (``grad``: the pass needs gradients through attention; on CPU only from
    ``CPU_FLEX_MIN_TOKENS`` tokens), else ``dense``; ``flex`` where it cannot run is one clear error."""
    if backend not in ("auto", "flex", "dense"):
        raise ValueError(f"document mask backend must be 'auto', 'flex' or 'dense', got {backend!r}")
    if backend == "dense":
        return "dense"
    ok, why = flex_available(device, grad)
    if backend == "flex" and not ok:
        raise RuntimeError(f"document mask backend 'flex': {why}")
    if backend == "auto" and torch.device(device).type == "cpu" and seq is not None and seq < CPU_FLEX_MIN_TOKENS:
        return "dense"
    return "flex" if ok else "dense"


def dense_mask_bytes(batch: int, seq: int, dtype: torch.dtype = torch.float32) -> int:
    """Bytes of a dense ``[batch, 1, seq, seq]`` mask in ``dtype``."""
    return batch * seq * seq * torch.empty((), dtype=dtype).element_size()


def check_dense_fits(batch: int, seq: int, dtype: torch.dtype, device: torch.device | str) -> None:
    """Refuse a dense mask larger than half the free memory, before building it (one line)."""
    need, free = dense_mask_bytes(batch, seq, dtype), available_bytes(device)
    if need > free // 2:
        raise MaskTooLarge(
            f"dense document mask for a {seq:,}-token window x batch {batch} needs {need / 2**30:.1f} "
            f"GiB ({dtype}) but {torch.device(device)} has {free / 2**30:.1f} GiB free; use the flex "
            "backend (FlexAttention) or a shorter window"
        )


def _same_doc_causal(doc_ids: torch.Tensor):
    """mask_mod: query q may attend key kv iff kv <= q and both are in the same document."""

    def mask_mod(b, h, q, kv):
        return (q >= kv) & (doc_ids[b, q] == doc_ids[b, kv])

    return mask_mod


def block_mask(doc_ids: torch.Tensor, block: int = BLOCK):
    """FlexAttention ``BlockMask`` [batch, 1, T, T], causal within each document, from ``doc_ids`` [batch, T].

    Block-level tables from each block's first and last document id (ids non-decreasing): a key block is
    skipped when it shares no document with the query block, *full* (no mask_mod call) when both blocks lie in
    one document and the key block is strictly earlier, partial otherwise. O(batch x (T/block)^2) memory."""
    from torch.nn.attention.flex_attention import BlockMask, create_block_mask

    if doc_ids.ndim != 2:
        raise ValueError(f"doc_ids must be [batch, seq], got shape {tuple(doc_ids.shape)}")
    B, T = doc_ids.shape
    doc_ids = doc_ids.long()
    if T > 1 and bool((doc_ids[:, 1:] < doc_ids[:, :-1]).any()):  # out-of-order ids: torch's generic builder
        return create_block_mask(_same_doc_causal(doc_ids), B, None, T, T, device=doc_ids.device, BLOCK_SIZE=block)
    nb = -(-T // block)
    pad = nb * block - T
    # padded tokens get a document of their own, so a block holding them is never "full"
    padded = torch.cat([doc_ids, (doc_ids[:, -1:] + 1).expand(B, pad)], 1) if pad else doc_ids  # [B, nb*block]
    blocks = padded.view(B, nb, block)
    lo, hi = blocks[..., 0], blocks[..., -1]  # [B, nb] first / last document id of each block
    q_lo, q_hi = lo[:, :, None], hi[:, :, None]  # [B, nq, 1]
    k_lo, k_hi = lo[:, None, :], hi[:, None, :]  # [B, 1, nk]
    idx = torch.arange(nb, device=doc_ids.device)
    below = idx[None, :, None] > idx[None, None, :]  # [1, nq, nk] key block strictly before the query block
    diag = idx[None, :, None] == idx[None, None, :]
    shares = (k_hi >= q_lo) & (k_lo <= q_hi)  # [B, nq, nk] some document in both blocks
    full = below & (q_lo == q_hi) & (k_lo == k_hi) & (k_lo == q_lo)
    partial = ((below & shares) | diag) & ~full

    def table(m: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        num = m.sum(-1, dtype=torch.int32)[:, None]  # [B, 1, nq]
        order = torch.argsort(m.to(torch.int32), dim=-1, descending=True, stable=True).to(torch.int32)[:, None]
        # [B, 1, nq, nk]: the kept blocks first, in order
        return num.contiguous(), order.contiguous()

    kv_num, kv_idx = table(partial)
    full_num, full_idx = table(full)
    return BlockMask.from_kv_blocks(
        kv_num, kv_idx, full_num, full_idx, BLOCK_SIZE=block, mask_mod=_same_doc_causal(padded), seq_lengths=(T, T)
    )


def document_mask(
    doc_ids: torch.Tensor, *, backend: Backend = "auto", dtype: torch.dtype = torch.float32, grad: bool = False
):
    """The document mask of a packed batch ``doc_ids`` [batch, T]: a ``BlockMask`` (flex) or the dense additive
    ``[batch, 1, T, T]`` mask (checked to fit first). ``grad``: the pass backpropagates through attention (the
    student), which flex cannot do on CPU. Run the model with it inside :func:`attention_for`."""
    if resolve_backend(backend, doc_ids.device, grad, doc_ids.shape[-1]) == "flex":
        return block_mask(doc_ids)
    check_dense_fits(doc_ids.shape[0], doc_ids.shape[1], dtype, doc_ids.device)
    return dense_attention_mask(doc_ids, "document", dtype)


def attention_mask(
    doc_ids: torch.Tensor,
    mode: str,
    dtype: torch.dtype = torch.float32,
    *,
    backend: Backend = "auto",
    grad: bool = False,
):
    """The ``attention_mask`` of a packed batch for packing attention ``mode``: ``causal`` -> the all-ones 2D
    mask (plain causal SDPA; see ``workbench.data.packing``), ``document`` -> :func:`document_mask`."""
    if mode == "document":
        return document_mask(doc_ids, backend=backend, dtype=dtype, grad=grad)
    return dense_attention_mask(doc_ids, mode, dtype)


def is_block_mask(mask: Any) -> bool:
    if not _has_flex():
        return False
    from torch.nn.attention.flex_attention import BlockMask

    return isinstance(mask, BlockMask)


def _configs(model) -> list:
    """The distinct configs of ``model`` and its sub-models (a ForCausalLM and its decoder share one)."""
    seen: dict[int, Any] = {}
    for m in model.modules():
        cfg = getattr(m, "config", None)
        if cfg is not None and hasattr(cfg, "_attn_implementation_internal"):
            seen.setdefault(id(cfg), cfg)
    return list(seen.values())


@contextlib.contextmanager
def attention_for(model, mask) -> Iterator[None]:
    """Run ``model`` (an HF model, its decoder, or a module holding them) under ``flex_attention`` while
    ``mask`` is a ``BlockMask``; otherwise leave its implementation alone. transformers reads the implementation
    from the config at every forward, so the switch is per pass and costs nothing. A pass that backpropagates
    keeps the context through ``backward()``: activation checkpointing recomputes the blocks there. Nested
    contexts restore what the outer one set."""
    if not is_block_mask(mask):
        yield
        return
    configs = _configs(model)
    saved = [c._attn_implementation_internal for c in configs]
    try:
        for c in configs:
            c._attn_implementation_internal = FLEX
        yield
    finally:
        for c, s in zip(configs, saved):
            c._attn_implementation_internal = s


def compare_with_dense(model, input_ids: torch.Tensor, doc_ids: torch.Tensor, *, grad: bool) -> dict[str, float]:
    """Max |logit difference| of ``model`` (an HF causal LM) under the BlockMask vs the dense document mask, and
    with ``grad`` the max |gradient difference| of the mean squared logits, relative to the largest gradient.
    (Flex has no backward on CPU: ``grad`` needs CUDA.) For the tests and the device check."""
    pos = torch.arange(input_ids.shape[1], device=input_ids.device).expand_as(input_ids)
    outs, grads = [], []
    for backend in ("dense", "flex"):
        mask = document_mask(doc_ids, backend=backend, grad=grad)
        model.zero_grad(set_to_none=True)
        with torch.set_grad_enabled(grad), attention_for(model, mask):
            logits = model(input_ids=input_ids, attention_mask=mask, position_ids=pos, use_cache=False).logits.float()
        if grad:
            logits.square().mean().backward()
            grads.append(torch.cat([p.grad.flatten().float() for p in model.parameters() if p.grad is not None]))
        outs.append(logits.detach())
    model.zero_grad(set_to_none=True)
    out = {"logit_diff": (outs[0] - outs[1]).abs().max().item(), "logit_max": outs[0].abs().max().item()}
    if grad:
        out["grad_rel_diff"] = ((grads[0] - grads[1]).abs().max() / grads[0].abs().max()).item()
    return out
