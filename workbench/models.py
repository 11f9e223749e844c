"""Models: build one from a ModelConfig on a device (or describe a loaded one as one), change the theta it
really runs with, and convert between RoPE layouts. Saving, verifying and loading checkpoints is
:mod:`workbench.checkpoint_io`.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from workbench import architectures, rope
from workbench.config import ModelConfig

# ------------------------------------------------------------------------------------------- build


def hf_config(cfg: ModelConfig, attn_implementation: str = "sdpa"):
    """transformers' config of ``cfg.architecture`` (LlamaConfig by default; theta lives in ``rope_parameters``)."""
    return architectures.hf_config(cfg, attn_implementation)


def pick_device(name: str) -> torch.device:
    """``auto`` (this rank's CUDA device when there is one, else CPU), ``cpu``, ``cuda`` (this rank's),
    ``cuda:N`` -> a torch.device; anything else, or CUDA on a machine without it, is one clear error."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        raise ValueError(f"device {name!r} is not a device: use cpu, cuda, cuda:N or auto") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device: {name!r} requested but no CUDA device is available")
    if device.type == "cuda" and device.index is None:  # bare "cuda": this rank's device (set_device needs an index)
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return device


def build_model(
    cfg: ModelConfig,
    *,
    seed: int | None = 0,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    attn_implementation: str = "sdpa",
):
    """A freshly initialised model of ``cfg.architecture`` (``LlamaForCausalLM`` by default; seeded)."""
    config = hf_config(cfg, attn_implementation)
    if seed is not None:
        torch.manual_seed(seed)
    with torch.device(device):
        model = architectures.get(cfg.architecture).model_class()(config)
    return model.to(dtype=dtype).eval()


def count_parameters(cfg: ModelConfig) -> int:
    """Parameter count of a ModelConfig, computed on the meta device (no memory)."""
    model = build_model(cfg, seed=None, device="meta")
    return sum(p.numel() for p in model.parameters())


def model_config_of(model) -> ModelConfig:
    """The ModelConfig that describes a loaded HF model (or its HF config) of a supported architecture."""
    c = getattr(model, "config", model)
    arch = architectures.of(c)
    params = dict(c.rope_parameters or {})
    params.pop("partial_rotary_factor", None)  # Phi-3 states 1.0 (architectures.check refuses anything else)
    theta = float(params.pop("rope_theta", 10000.0))
    scaling = params if params.get("rope_type", "default") != "default" else None
    return ModelConfig(
        vocab_size=c.vocab_size,
        hidden_size=c.hidden_size,
        num_layers=c.num_hidden_layers,
        num_heads=c.num_attention_heads,
        num_kv_heads=c.num_key_value_heads,
        intermediate_size=c.intermediate_size,
        max_position_embeddings=c.max_position_embeddings,
        rope_theta=theta,
        rope_scaling=scaling,
        head_dim=getattr(c, "head_dim", None),
        rms_norm_eps=c.rms_norm_eps,
        tie_word_embeddings=bool(c.tie_word_embeddings),
        architecture=arch.name,
    )


# -------------------------------------------------------------------------------------------- RoPE


def rotary_modules(model) -> list[torch.nn.Module]:
    """Every rotary-embedding module of a model (Llama has one shared ``model.model.rotary_emb``)."""
    return [m for m in model.modules() if hasattr(m, "inv_freq") and hasattr(m, "attention_scaling")]


def rope_theta(model) -> float:
    """The theta a model's config says it runs with."""
    return float(model.config.rope_parameters["rope_theta"])


def set_rope_theta(model, theta: float, scaling: Mapping[str, Any] | None = None) -> None:
    """Change the RoPE base (and scaling) a model really runs with, in place.

    transformers computes ``inv_freq`` once at init into non-persistent buffers, so editing the config is
    not enough: this updates ``config.rope_parameters`` and copies freshly computed frequencies into the
    existing rotary buffers (keeping any hooks attached to the module).
    """
    if not theta > 0:
        raise ValueError(f"rope theta must be > 0, got {theta}")
    params: dict[str, Any] = {"rope_type": "default"}
    if scaling:
        params.update(dict(scaling))
    params["rope_theta"] = float(theta)
    params.update(architectures.intrinsic_rope_parameters(model.config))  # e.g. Phi-3's partial_rotary_factor
    model.config.rope_parameters = params
    modules = rotary_modules(model)
    if not modules:
        raise ValueError("model has no rotary embedding module to update")
    for module in modules:
        fresh = type(module)(config=model.config)  # transformers' own frequency init (this architecture's class)
        with torch.no_grad():
            module.inv_freq.copy_(fresh.inv_freq.to(module.inv_freq.device))
            module.original_inv_freq.copy_(fresh.original_inv_freq.to(module.original_inv_freq.device))
        module.attention_scaling = fresh.attention_scaling
        module.rope_type = fresh.rope_type
        module.config = model.config
        module.max_seq_len_cached = fresh.max_seq_len_cached
        module.original_max_seq_len = fresh.original_max_seq_len


def model_inv_freq(model) -> torch.Tensor:
    """The frequencies the model's rotary module actually uses (not what the config claims)."""
    return rotary_modules(model)[0].inv_freq.detach().clone()


def pairs_in_wavelengths(model, min_wavelength: float = 0.0, max_wavelength: float = math.inf) -> np.ndarray:
    """Indices j of the pairs whose wavelength, at the frequencies the model runs with (its theta and any RoPE
    scaling, read from the rotary buffer), lies in [min_wavelength, max_wavelength] (inclusive)."""
    frequencies = model_inv_freq(model).double().cpu().numpy()  # [d/2]
    return np.flatnonzero(rope.wavelength_mask(frequencies, min_wavelength, max_wavelength))


def interleaved_to_half_split(weight: torch.Tensor, num_heads: int, head_dim: int) -> torch.Tensor:
    """Permute q/k projection rows from the interleaved RoPE layout (pair j = dims 2j, 2j+1; Meta/GPT-J
    style) to HF's half-split layout (pair j = dims j, j + d/2). ``weight`` is [num_heads*head_dim, in]."""
    if weight.shape[0] != num_heads * head_dim:
        raise ValueError(f"weight has {weight.shape[0]} rows, expected num_heads*head_dim = {num_heads * head_dim}")
    w = weight.reshape(num_heads, head_dim // 2, 2, *weight.shape[1:])
    return w.transpose(1, 2).reshape(weight.shape)


def half_split_to_interleaved(weight: torch.Tensor, num_heads: int, head_dim: int) -> torch.Tensor:
    """Inverse of :func:`interleaved_to_half_split`."""
    w = weight.reshape(num_heads, 2, head_dim // 2, *weight.shape[1:])
    return w.transpose(1, 2).reshape(weight.shape)


def import_interleaved_state_dict(state: Mapping[str, torch.Tensor], cfg: ModelConfig) -> dict[str, torch.Tensor]:
    """An HF-named Llama state dict whose q/k rows are interleaved -> the half-split layout HF expects."""
    out = dict(state)
    d = cfg.resolved_head_dim
    for name, tensor in state.items():
        if name.endswith("self_attn.q_proj.weight"):
            out[name] = interleaved_to_half_split(tensor, cfg.num_heads, d)
        elif name.endswith("self_attn.k_proj.weight"):
            out[name] = interleaved_to_half_split(tensor, cfg.num_kv_heads, d)
    return out
