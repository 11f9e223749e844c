"""Checkpoints as the analysis sees them: readable labels, cheap shape checks, raw attention weights.

Everything here reads ``config.json``, ``manifest.json`` and the safetensors files directly, without
building a model, so bad input is refused before any expensive work, and the weight view sees the raw
HF weights (never TransformerLens-processed ones, which fold norms into W_Q/W_K).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch
from safetensors import safe_open

from workbench import architectures, hfdir, models
from workbench.models import CheckpointError


@dataclass(frozen=True)
class CheckpointInfo:
    """What the analysis needs to know about one checkpoint directory, read without loading the model."""

    path: Path
    label: str  # "<run>/<ckpt-dir>"
    manifest: dict[str, Any] = field(repr=False)
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    hidden_size: int
    rope_theta: float
    rope_scaling: dict[str, Any] | None
    config: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)  # config.json

    @property
    def architecture(self) -> str:
        return str(self.config.get("model_type", "llama"))

    @property
    def step(self) -> int:
        return int(self.manifest.get("step", -1))

    @property
    def phase(self) -> str:
        return str(self.manifest.get("phase", ""))

    @property
    def objective(self) -> str:
        return str(self.manifest.get("objective") or "")

    @property
    def shape(self) -> tuple[int, int, int, int, int]:
        return (self.num_layers, self.num_heads, self.num_kv_heads, self.head_dim, self.hidden_size)

    def content_hash(self) -> str:
        return models.checkpoint_hash(self.path)


def label_of(path: str | Path) -> str:
    """Readable checkpoint label ``<run>/<ckpt-dir>`` (the parent directory is the run)."""
    path = Path(path).resolve()
    return f"{path.parent.name}/{path.name}"


def inspect(path: str | Path, *, allow_plain_hf: bool = False) -> CheckpointInfo:
    """Validate a checkpoint directory cheaply (manifest, file sizes, config) -> CheckpointInfo.

    Raises CheckpointError naming the path for a missing, incomplete or non-Llama directory.
    """
    path = Path(path)
    if not path.is_dir():
        raise CheckpointError(f"{path}: checkpoint directory not found")
    if (path / models.MANIFEST).exists() or not allow_plain_hf:
        manifest = models.verify_checkpoint(path)
    else:
        manifest = {}
        hfdir.check_plain(path)  # plain HF directory: integrity from its safetensors headers / index
    cfg = models._check_hf_dir(path)  # config.json present, a Llama, safetensors readable
    params = dict(cfg.get("rope_parameters") or {})
    theta = float(params.pop("rope_theta", cfg.get("rope_theta", 10000.0)))
    scaling = params if params.get("rope_type", "default") != "default" else None
    heads = int(cfg["num_attention_heads"])
    return CheckpointInfo(
        path=path, label=label_of(path), manifest=manifest, num_layers=int(cfg["num_hidden_layers"]),
        num_heads=heads, num_kv_heads=int(cfg.get("num_key_value_heads") or heads),
        head_dim=int(cfg.get("head_dim") or cfg["hidden_size"] // heads), hidden_size=int(cfg["hidden_size"]),
        rope_theta=theta, rope_scaling=scaling, config=cfg,
    )


def inspect_all(paths: Sequence[str | Path], *, allow_plain_hf: bool = False, minimum: int = 1) -> list[CheckpointInfo]:
    """Inspect several checkpoints and check they have the same attention shape and distinct labels."""
    if len(paths) < minimum:
        raise ValueError(f"need at least {minimum} checkpoint(s), got {len(paths)}")
    infos = [inspect(p, allow_plain_hf=allow_plain_hf) for p in paths]
    first = infos[0]
    for info in infos[1:]:
        if info.architecture != first.architecture:
            raise ValueError(f"{info.path}: architecture {info.architecture} differs from {first.path} "
                             f"{first.architecture}; analyse each architecture in its own call and store")
        if info.shape != first.shape:
            names = "(layers, heads, kv_heads, head_dim, hidden)"
            raise ValueError(f"{info.path}: attention shape {info.shape} differs from {first.path} {first.shape} "
                             f"{names}; only checkpoints of one architecture go together (analyse each "
                             "architecture in its own call and store)")
    labels = [i.label for i in infos]
    dupes = sorted({lab for lab in labels if labels.count(lab) > 1})
    if dupes:
        raise ValueError(f"checkpoint label(s) {dupes} given more than once")
    return infos


def weight_files(path: Path) -> dict[str, Path]:
    """Tensor name -> safetensors file holding it (single file, index.json or any shards)."""
    index = path / "model.safetensors.index.json"
    if index.is_file():
        return {k: path / v for k, v in json.loads(index.read_text())["weight_map"].items()}
    found: dict[str, Path] = {}
    for shard in sorted(path.glob("*.safetensors")):
        with safe_open(str(shard), framework="pt") as f:
            for key in f.keys():
                found[key] = shard
    return found


def read_qk_weights(info: CheckpointInfo, layer: int, files: dict[str, Path] | None = None) -> dict[str, torch.Tensor]:
    """Raw q/k weights (and biases, when present) of one layer, in float64, from safetensors, keyed
    ``q_proj.weight`` ... whatever the architecture (a fused ``qkv_proj`` is split by head counts)."""
    files = files if files is not None else weight_files(info.path)
    out: dict[str, torch.Tensor] = {}
    for name, (key, rows) in architectures.tensor_sources(info.config or {"model_type": "llama"}, layer).items():
        if key not in files:
            if name.endswith("weight"):
                raise CheckpointError(f"{info.path}: tensor {key} not found in the safetensors files")
            continue
        with safe_open(str(files[key]), framework="pt") as f:
            tensor = f.get_slice(key)[rows] if rows is not None else f.get_tensor(key)
            out[name] = tensor.to(torch.float64)
    return out
