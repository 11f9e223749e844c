"""One forward pass of an HF Llama with forward hooks: pre-RoPE q/k per layer, the rotary (cos, sin) the
model really used, and the residual stream after every block. Post-RoPE q/k come from transformers' own
``apply_rotary_pos_emb``, so the rotation is exactly the model's.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
import torch
from tqdm.auto import tqdm

from workbench import architectures, checkpoint_io, rope
from workbench.attention import attention_for, attention_mask
from workbench.config import DataConfig
from workbench.data import make_stream


@dataclass
class Captured:
    """Tensors of one batch. q: per layer [B, heads, T, d]; k: [B, kv_heads, T, d]; cos/sin: [B, T, d];
    resid: L+1 tensors [B, T, hidden] (embeddings, then the output of each block, before the final norm)."""

    q: list[torch.Tensor] = field(default_factory=list)
    k: list[torch.Tensor] = field(default_factory=list)
    cos: torch.Tensor | None = None
    sin: torch.Tensor | None = None
    resid: list[torch.Tensor] = field(default_factory=list)
    scaling: float = 1.0

    def rotated(self, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Post-RoPE (q, k) of a layer, rotated by transformers' apply_rotary_pos_emb."""
        from transformers.models.llama.modeling_llama import apply_rotary_pos_emb  # lazy: seconds to import

        return apply_rotary_pos_emb(self.q[layer], self.k[layer], self.cos, self.sin)


def probe_batch(seq_len: int, n_windows: int, seed: int = 0, data: DataConfig | None = None) -> dict[str, torch.Tensor]:
    """Probe inputs: short synthetic documents packed into long windows (continue positions), the paper's
    setting, from ``workbench.data.make_stream``."""
    if seq_len < 2:
        raise ValueError(f"probe sequence length must be >= 2, got {seq_len}")
    return make_stream(data or DataConfig(), seq_len, n_windows, seed).next()


@torch.no_grad()
def capture(
    model, batch: Mapping[str, torch.Tensor], *, qk: bool = True, resid: bool = False, attention: str = "causal"
) -> Captured:
    """Run ``model`` on a batch (input_ids, position_ids, doc_ids) and collect what the analyses need."""
    out = Captured()
    layers = model.model.layers
    attn0 = layers[0].self_attn
    out.scaling = float(attn0.scaling)
    d = attn0.head_dim
    handles = []
    q_raw: dict[int, torch.Tensor] = {}
    k_raw: dict[int, torch.Tensor] = {}
    res: dict[int, torch.Tensor] = {}

    def host(x: torch.Tensor) -> torch.Tensor:  # analyses run in float32 on CPU whatever the model runs in
        return x.detach().to("cpu", torch.float32)

    def keep(target: dict, i: int, is_tuple: bool = False):
        def hook(_mod, _inp, output):
            target[i] = host(output[0] if is_tuple and isinstance(output, tuple) else output)

        return hook

    def rotary_hook(_mod, _inp, output):
        out.cos, out.sin = host(output[0]), host(output[1])

    try:
        handles.append(model.model.rotary_emb.register_forward_hook(rotary_hook))
        for i, layer in enumerate(layers):
            if qk:  # pre-RoPE q/k per architecture (after Qwen3's q_norm/k_norm, split out of Phi-3's qkv_proj)
                handles += architectures.pre_rope_hooks(
                    layer.self_attn,
                    model.config,
                    lambda which, x, i=i: (q_raw if which == "q" else k_raw).__setitem__(i, host(x)),
                )
            if resid:
                handles.append(layer.register_forward_hook(keep(res, i + 1, is_tuple=True)))
        if resid:
            handles.append(model.model.embed_tokens.register_forward_hook(keep(res, 0)))
        device = next(model.parameters()).device
        ids = batch["input_ids"]
        mask = attention_mask(batch["doc_ids"], attention).to(device) if "doc_ids" in batch else None
        with attention_for(model, mask):
            model.model(input_ids=ids.to(device), position_ids=batch["position_ids"].to(device), attention_mask=mask)
    finally:
        for h in handles:
            h.remove()
    b, t = ids.shape
    for i in range(len(layers)):
        if qk:
            out.q.append(q_raw[i].view(b, t, -1, d).transpose(1, 2))
            out.k.append(k_raw[i].view(b, t, -1, d).transpose(1, 2))
    if resid:
        out.resid = [res[i] for i in range(len(layers) + 1)]
    return out


def load_for_analysis(
    path,
    *,
    attn_implementation: str = "sdpa",
    device: str = "cpu",
    dtype: torch.dtype = torch.float32,
):
    """Load a checkpoint for analysis (float32 on CPU by default; the model runs with its config.json theta)."""
    from transformers.utils import logging as hf_logging  # lazy: transformers costs seconds to import

    hf_logging.disable_progress_bar()  # no per-tensor "Loading weights" bars inside our own progress bar
    model, manifest = checkpoint_io.load(path, attn_implementation=attn_implementation, device=device, dtype=dtype)
    return model, manifest


def pair_norm(x: torch.Tensor) -> torch.Tensor:
    """Norm of each pair: [..., d] -> [..., d/2]."""
    return rope.pair_view(x).pow(2).sum(-2).sqrt()


def pair_phase(x: torch.Tensor) -> torch.Tensor:
    """Angle of each pair in its (j, j + d/2) plane: [..., d] -> [..., d/2]."""
    v = rope.pair_view(x)
    return torch.atan2(v[..., 1, :], v[..., 0, :])


def phase_coherence(x: torch.Tensor, dims: tuple[int, ...]) -> np.ndarray:
    """Mean resultant length |mean exp(i*phase)| of each pair's angle over ``dims`` (1: one fixed direction,
    0: spread uniformly round the circle)."""
    ph = pair_phase(x.to(torch.float64))
    return torch.sqrt(torch.cos(ph).mean(dims) ** 2 + torch.sin(ph).mean(dims) ** 2).numpy()


def per_checkpoint(infos, fn, *, progress: bool = False, desc: str = "checkpoints", device: str = "cpu") -> list:
    """Load each checkpoint in turn (one model in memory at a time) and return ``[fn(model) ...]``."""
    items = infos
    if progress:
        items = tqdm(infos, desc=desc, unit="ckpt")
    out = []
    for info in items:
        model, _ = load_for_analysis(info.path, device=device)
        out.append(fn(model))
        del model
    return out


def describe_qk(ds, descriptions: dict[str, str], subject: dict[str, str]) -> None:
    """Set ``description`` attrs of variables named ``q_<stat>`` / ``k_<stat>`` from one table."""
    for name in ds.data_vars:
        p, s = name.split("_", 1)
        ds[name].attrs["description"] = f"{subject[p]}: {descriptions[s]}"
