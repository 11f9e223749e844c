"""What the workbench knows about each Hugging Face RoPE decoder it supports, in one place.

Everything that depends on a model's architecture asks this module: how to build a config and a model
(``model.architecture``), where the query/key/value rows of each layer live (separate ``q_proj``/``k_proj``/
``v_proj`` or one fused ``qkv_proj``, split by head counts into *views* so edits write through), whether q/k
carry biases, which module gives the pre-RoPE q/k (Qwen3 normalises them with ``q_norm``/``k_norm`` *before*
RoPE), the head dim, the attention scaling and the final-logit soft-capping (Gemma 2), and which attention
implementation transformers allows.

Supported (transformers 5): ``llama``, ``mistral``, ``qwen2`` (q/k/v biases), ``qwen3`` (q_norm/k_norm),
``gemma2`` (own head_dim, ``query_pre_attn_scalar``, attention and final-logit soft-capping, eager attention
only), ``phi3`` (fused ``qkv_proj``; full rotary only). All use HF's half-split RoPE layout: pair j is dims
(j, j + d/2) of every head.

Nothing here imports the rest of the workbench, so any module may import it.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch


class ArchitectureError(ValueError):
    """A model of an architecture the workbench does not support, or a configuration of it that it cannot run."""


@dataclass(frozen=True)
class Architecture:
    """One supported ``model_type`` and its layout facts."""

    name: str  # transformers' model_type
    prefix: str  # class name prefix in transformers: f"{prefix}Config", f"{prefix}ForCausalLM"
    fused_qkv: bool = False  # q, k, v rows stacked in one ``self_attn.qkv_proj`` (Phi-3)
    qk_bias: bool = False  # q/k projections carry biases by design (Qwen2)
    qk_norm: bool = False  # q_norm/k_norm on each head's q/k before RoPE (Qwen3)
    sdpa: bool = True  # transformers allows attn_implementation="sdpa" (Gemma 2: eager only, soft-capping)
    notes: str = ""
    # config kwargs a student built from a ModelConfig gets (beyond the shape every architecture shares)
    student_kwargs: Callable[[Any], dict[str, Any]] = field(default=lambda cfg: {}, compare=False, repr=False)

    def config_class(self):
        import transformers  # lazy: transformers costs seconds to import; a config check needs not

        return getattr(transformers, f"{self.prefix}Config")

    def model_class(self):
        import transformers  # lazy: transformers costs seconds to import; a config check needs not

        return getattr(transformers, f"{self.prefix}ForCausalLM")

    def attn_implementation(self, requested: str) -> str:
        """The attention implementation to load with: ``requested`` unless transformers refuses it here."""
        if requested == "sdpa" and not self.sdpa:
            return "eager"
        return requested


def _gemma2_kwargs(cfg) -> dict[str, Any]:
    # queries scaled by query_pre_attn_scalar**-0.5: the student uses its own head dim (Gemma 2 9B does too);
    # soft-capping stays at Gemma 2's defaults (attention 50, final logits 30)
    return {"query_pre_attn_scalar": cfg.resolved_head_dim}


ARCHITECTURES: dict[str, Architecture] = {
    a.name: a
    for a in (
        Architecture("llama", "Llama", notes="reference layout"),
        Architecture(
            "mistral",
            "Mistral",
            notes="Llama layout; sliding window off for students",
            student_kwargs=lambda cfg: {"sliding_window": None},
        ),
        Architecture("qwen2", "Qwen2", qk_bias=True, notes="Llama layout with q/k/v biases"),
        Architecture("qwen3", "Qwen3", qk_norm=True, notes="q_norm/k_norm (RMSNorm over each head) before RoPE"),
        Architecture(
            "gemma2",
            "Gemma2",
            sdpa=False,
            student_kwargs=_gemma2_kwargs,
            notes="own head_dim, query_pre_attn_scalar, attention + final-logit soft-capping, eager attention",
        ),
        Architecture("phi3", "Phi3", fused_qkv=True, notes="fused qkv_proj split by head counts; full rotary only"),
    )
}
NAMES = tuple(ARCHITECTURES)
DEFAULT = "llama"


def get(name: str) -> Architecture:
    """The Architecture called ``name`` (a model_type); ArchitectureError naming the supported ones if none."""
    try:
        return ARCHITECTURES[name]
    except KeyError:
        raise ArchitectureError(
            f"architecture {name!r} is not supported; the workbench supports {', '.join(NAMES)}"
        ) from None


def of(obj: Any) -> Architecture:
    """The Architecture of a model, an HF config, a ``config.json`` dict or a model_type string; checks that
    this configuration of it is one the workbench can run (ArchitectureError otherwise)."""
    if isinstance(obj, str):
        return get(obj)
    config = obj.get("config", obj) if isinstance(obj, Mapping) else getattr(obj, "config", obj)
    model_type = config.get("model_type") if isinstance(config, Mapping) else getattr(config, "model_type", None)
    arch = get(model_type)
    check(config, arch)
    return arch


def _cfg_get(config: Any, key: str, default: Any = None) -> Any:
    if isinstance(config, Mapping):
        return config.get(key, default)
    return getattr(config, key, default)


def rope_parameters(config: Any) -> dict[str, Any]:
    """``rope_parameters`` of an HF config or config.json (transformers 5; older files: rope_theta/rope_scaling)."""
    params = _cfg_get(config, "rope_parameters")
    if params:
        return dict(params)
    params = dict(_cfg_get(config, "rope_scaling") or {"rope_type": "default"})
    params.setdefault("rope_type", params.pop("type", "default"))
    params["rope_theta"] = float(_cfg_get(config, "rope_theta", 10000.0))
    return params


# rope_parameters entries that describe the architecture, not the theta/scaling: kept when theta changes
INTRINSIC_ROPE_KEYS = ("partial_rotary_factor",)


def intrinsic_rope_parameters(config: Any) -> dict[str, Any]:
    """The entries of ``rope_parameters`` a theta change must keep (Phi-3's ``partial_rotary_factor``)."""
    return {k: v for k, v in rope_parameters(config).items() if k in INTRINSIC_ROPE_KEYS}


def check(config: Any, arch: Architecture | None = None) -> None:
    """Refuse configurations of a supported architecture that the workbench's RoPE analyses would get wrong."""
    arch = arch or get(_cfg_get(config, "model_type"))
    params = rope_parameters(config)
    partial = float(params.get("partial_rotary_factor", _cfg_get(config, "partial_rotary_factor", 1.0)) or 1.0)
    if partial != 1.0:
        raise ArchitectureError(
            f"{arch.name}: partial_rotary_factor {partial} (RoPE on part of each head) is not "
            "supported; the workbench's pair analyses assume every dim of a head is rotated"
        )


# ------------------------------------------------------------------------------------------- configs


def hf_config(cfg, attn_implementation: str = "sdpa"):
    """transformers' config of ``cfg.architecture`` for a workbench ModelConfig (theta in ``rope_parameters``)."""
    arch = get(getattr(cfg, "architecture", DEFAULT) or DEFAULT)
    rope_params: dict[str, Any] = {"rope_type": "default", "rope_theta": float(cfg.rope_theta)}
    if cfg.rope_scaling:
        rope_params = {**rope_params, **dict(cfg.rope_scaling), "rope_theta": float(cfg.rope_theta)}
    kwargs = dict(
        vocab_size=cfg.vocab_size,
        hidden_size=cfg.hidden_size,
        intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads,
        num_key_value_heads=cfg.num_kv_heads,
        head_dim=cfg.resolved_head_dim,
        max_position_embeddings=cfg.max_position_embeddings,
        rms_norm_eps=cfg.rms_norm_eps,
        tie_word_embeddings=cfg.tie_word_embeddings,
        initializer_range=cfg.initializer_range,
        rope_parameters=rope_params,
        bos_token_id=None,
        eos_token_id=None,
        pad_token_id=None,
    )
    kwargs.update(arch.student_kwargs(cfg))
    config = arch.config_class()(**kwargs)
    config._attn_implementation = arch.attn_implementation(attn_implementation)
    return config


def head_dim(config: Any) -> int:
    hd = _cfg_get(config, "head_dim")
    return int(hd or _cfg_get(config, "hidden_size") // _cfg_get(config, "num_attention_heads"))


def num_kv_heads(config: Any) -> int:
    return int(_cfg_get(config, "num_key_value_heads") or _cfg_get(config, "num_attention_heads"))


def final_softcap(config: Any) -> float | None:
    """The final-logit soft-cap c (logits -> c * tanh(logits / c)), or None: Gemma 2 only."""
    cap = _cfg_get(config, "final_logit_softcapping")
    return float(cap) if cap else None


def softcap_logits(logits: torch.Tensor, cap: float | None) -> torch.Tensor:
    """``cap * tanh(logits / cap)`` (what Gemma 2's lm_head output goes through), or ``logits`` when no cap."""
    if not cap:
        return logits
    return torch.tanh(logits / cap) * cap


def final_logits(config: Any, logits: torch.Tensor) -> torch.Tensor:
    """The model's output logits from its ``lm_head`` output (soft-capped where the architecture does)."""
    return softcap_logits(logits, final_softcap(config))


def lens(model, resid: torch.Tensor) -> torch.Tensor:
    """Logit lens through a transformers model: its final norm, its lm_head and its final soft-cap, calling
    the modules' own ``forward`` (past any hooks, so it is safe inside an nnsight trace)."""
    norm, head = model.model.norm, model.lm_head
    return final_logits(model.config, type(head).forward(head, type(norm).forward(norm, resid)))


# ------------------------------------------------------------------------------------ q/k/v rows


def _layout(config: Any) -> tuple[int, int, int]:
    d = head_dim(config)
    return int(_cfg_get(config, "num_attention_heads")) * d, num_kv_heads(config) * d, d


def fused_slices(config: Any) -> dict[str, slice]:
    """Row ranges of q, k and v inside a fused qkv projection ([q heads | k heads | v heads], Phi-3's order)."""
    nq, nk, _ = _layout(config)
    return {"q": slice(0, nq), "k": slice(nq, nq + nk), "v": slice(nq + nk, nq + 2 * nk)}


def projections(attn, config: Any) -> dict[str, dict[str, torch.Tensor | None]]:
    """Weights (and biases) of q, k, v of one attention module: ``{"q": {"weight": W, "bias": b|None}, ...}``.

    W is [heads*d, hidden] in the half-split layout. For a fused ``qkv_proj`` these are *views* of its rows
    (writes go through to the parameter). Use them under ``torch.no_grad()`` for in-place edits."""
    arch = of(config)
    if arch.fused_qkv:
        proj = attn.qkv_proj
        out = {}
        for which, rows in fused_slices(config).items():
            out[which] = {"weight": proj.weight[rows], "bias": None if proj.bias is None else proj.bias[rows]}
        return out
    return {
        which: {"weight": getattr(attn, f"{which}_proj").weight, "bias": getattr(attn, f"{which}_proj").bias}
        for which in ("q", "k", "v")
    }


def tensor_sources(config: Any, layer: int) -> dict[str, tuple[str, slice | None]]:
    """Where q/k weights and biases of a layer live in a checkpoint's state dict: ``{"q_proj.weight":
    (tensor name, row slice or None), ...}`` (a fused ``qkv_proj`` is split by head counts). Biases are listed
    whether or not the checkpoint has them; callers skip missing ones."""
    arch = of(config)
    base = f"model.layers.{layer}.self_attn"
    out: dict[str, tuple[str, slice | None]] = {}
    for which in ("q", "k"):
        for kind in ("weight", "bias"):
            if arch.fused_qkv:
                out[f"{which}_proj.{kind}"] = (f"{base}.qkv_proj.{kind}", fused_slices(config)[which])
            else:
                out[f"{which}_proj.{kind}"] = (f"{base}.{which}_proj.{kind}", None)
    return out


def pre_rope_hooks(attn, config: Any, fn: Callable[[str, torch.Tensor], torch.Tensor | None]) -> list:
    """Register forward hooks that hand ``fn(which, x)`` the pre-RoPE q and k of one attention module as
    [B, T, heads*d] (after Qwen3's q_norm/k_norm; split out of a fused qkv_proj). ``fn`` returns None to only
    look (measurements) or a tensor of the same shape that the module then outputs instead (the eval-time band
    intervention). Returns the handles."""
    arch = of(config)
    if arch.qk_norm:

        def normed(which: str):
            def hook(_m, _i, out):
                new = fn(which, out.flatten(-2))
                return None if new is None else new.reshape(out.shape)

            return hook

        return [m.register_forward_hook(normed(w)) for w, m in (("q", attn.q_norm), ("k", attn.k_norm))]
    if arch.fused_qkv:
        rows = fused_slices(config)

        def hook(_m, _i, out):
            new = {w: fn(w, out[..., rows[w]]) for w in ("q", "k")}
            if all(v is None for v in new.values()):
                return None
            out = out.clone()
            for w, v in new.items():
                if v is not None:
                    out[..., rows[w]] = v
            return out

        return [attn.qkv_proj.register_forward_hook(hook)]
    return [getattr(attn, f"{w}_proj").register_forward_hook(lambda _m, _i, out, w=w: fn(w, out)) for w in ("q", "k")]


# --------------------------------------------------------------------------------------- backends

# what TransformerLens' TransformerBridge (4.3) runs for each architecture with working post-RoPE hooks
# (hook_rot_q / hook_rot_k); checked by tests/test_architectures.py against plain transformers
TL_UNSUPPORTED: dict[str, str] = {
    # the Phi-3 bridge lists blocks.{i}.attn.hook_rot_q/hook_rot_k but its fused-qkv attention never calls them,
    # so a post-RoPE edit would be silently dropped (tests/test_architectures.py shows they do not fire)
    "phi3": "TransformerLens 4.3's Phi-3 bridge never runs its hook_rot_q/hook_rot_k (fused qkv_proj), so "
    "post-RoPE edits cannot be applied"
}


def check_tl(config: Any) -> None:
    """One clear error when the TransformerLens backend cannot run this architecture."""
    arch = of(config)
    if arch.name in TL_UNSUPPORTED:
        raise ArchitectureError(
            f"backend tl: {TL_UNSUPPORTED[arch.name]}; use --backend nnsight for {arch.name} models"
        )


def unsupported_backends(path, backends) -> dict[str, str]:
    """{backend: why} for the backends of ``backends`` that cannot run the model in directory ``path``."""
    try:
        config = json.loads((Path(path) / "config.json").read_text())
        name = of(config).name
    except (OSError, ValueError):
        return {}  # the backend's own load gives the clear error
    return {b: TL_UNSUPPORTED[name] for b in backends if b == "tl" and name in TL_UNSUPPORTED}


def table() -> list[dict[str, Any]]:
    """One row per architecture: its layout facts (for the README table and ``workbench`` help)."""
    return [
        {
            "architecture": a.name,
            "fused_qkv": a.fused_qkv,
            "qk_bias": a.qk_bias,
            "qk_norm": a.qk_norm,
            "sdpa": a.sdpa,
            "tl": a.name not in TL_UNSUPPORTED,
            "notes": a.notes,
        }
        for a in ARCHITECTURES.values()
    ]


# a tiny shape every architecture accepts (4 heads, 2 KV heads, head_dim 16), plus what each one needs to matter
TINY_SHAPE: dict[str, Any] = dict(
    vocab_size=64,
    hidden_size=64,
    intermediate_size=96,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=16,
    bos_token_id=None,
    eos_token_id=None,
    pad_token_id=None,
    rope_parameters={"rope_type": "default", "rope_theta": 500.0},
)
TINY_EXTRA: dict[str, dict[str, Any]] = {
    "gemma2": dict(query_pre_attn_scalar=20, final_logit_softcapping=2.0, attn_logit_softcapping=3.0),
    "mistral": dict(sliding_window=None),
}


def tiny(name: str, *, seed: int = 0, max_positions: int = 1024):
    """A tiny random ``name`` model from transformers' own config class, every parameter perturbed so biases and
    norms matter (tests and the device check compare attention paths on it)."""
    import torch

    arch = get(name)
    cfg = arch.config_class()(**TINY_SHAPE, max_position_embeddings=max_positions, **TINY_EXTRA.get(name, {}))
    cfg._attn_implementation = arch.attn_implementation("sdpa")
    torch.manual_seed(seed)
    model = arch.model_class()(cfg)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model
