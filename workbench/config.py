"""Typed configs loaded from YAML and validated on load.

Every config is a dataclass. ``load_config(path)`` reads a YAML file, converts it into the dataclass
tree, checks types, rejects unknown keys and checks cross-field rules; any problem raises one
``ConfigError`` naming the file and the dotted key (``tiny-kd.yaml: phases[1].seq_len: ...``).

A YAML file is either a model preset (top-level ``model:`` only, plus optional ``description``) or a run
config (``model`` + ``phases`` + the sections below). ``model`` may also be a path to a preset file,
relative to the config file.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union

import yaml

from workbench import rope
from workbench import validate as ranges  # range and finiteness of every numeric key, plain names
from workbench.validate import ConfigError  # noqa: F401 - defined with the range checks; used here and by callers

# --------------------------------------------------------------------------------------------- schema


@dataclass
class ModelConfig:
    """Shape of a Llama-style model (maps 1:1 onto transformers' LlamaConfig)."""

    vocab_size: int
    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    intermediate_size: int
    max_position_embeddings: int
    rope_theta: float = 10000.0
    rope_scaling: dict[str, Any] | None = None
    head_dim: int | None = None  # default hidden_size // num_heads
    rms_norm_eps: float = 1e-5
    tie_word_embeddings: bool = False
    initializer_range: float = 0.02
    stated_params: float | None = None  # the size the preset claims (e.g. 1.1e9); checked within 3 %
    # transformers model_type of the student (workbench.architectures: llama, mistral, qwen2, qwen3, gemma2, phi3)
    architecture: str = "llama"

    @property
    def resolved_head_dim(self) -> int:
        return self.head_dim or self.hidden_size // self.num_heads


@dataclass
class PackingConfig:
    """How documents are packed into a window: two independent switches (see ``workbench.data.packing``)."""

    positions: Literal["continue", "reset"] = "continue"
    attention: Literal["causal", "document"] = "causal"


@dataclass
class DataConfig:
    """Where documents come from. ``kind`` selects a generator in ``workbench.data``."""

    kind: str = "synthetic-short"  # synthetic-short | synthetic-long | repeated | text | jsonl | parquet
    paths: list[str] = field(default_factory=list)  # for text/jsonl/parquet
    tokenizer: str | None = None  # local HF tokenizer dir for real text; None = synthetic tokenizer
    doc_len_min: int = 64
    doc_len_max: int = 256
    num_pairs_min: int = 1
    num_pairs_max: int = 4
    packing: PackingConfig = field(default_factory=PackingConfig)
    options: dict[str, Any] = field(default_factory=dict)  # generator-specific extras


@dataclass
class LossConfig:
    """Objective weights and KD settings (see ``workbench.train.losses``)."""

    kd_kind: Literal["forward_kl", "reverse_kl", "jsd"] = "forward_kl"
    jsd_beta: float = 0.5
    temperature: float = 1.0
    scale_by_t2: bool = True
    ce_weight: float = 0.5  # the CE term's weight in objective ce+kd (objective ce always uses 1, kd uses 0)
    kd_weight: float = 1.0  # the KD term's weight in objectives kd and ce+kd
    chunk_size: int = 1024
    ignore_index: int = -100


@dataclass
class PhaseConfig:
    """One training phase: its length, its RoPE, its schedule and objective."""

    name: str
    steps: int
    seq_len: int
    rope_theta: float
    rope_scaling: dict[str, Any] | None = None
    lr: float = 1e-3
    warmup_steps: int = 0
    min_lr_ratio: float = 0.1
    objective: Literal["ce", "kd", "ce+kd"] = "ce"
    data: DataConfig | None = None  # None: the run-level data section
    # [min, max] wavelength in tokens (at this phase's theta): the W_q/W_k rows of those RoPE pairs are
    # frozen during this phase (an ablation: does extension need these frequencies to adapt?)
    freeze_wavelengths: list[float] | None = None


@dataclass
class OptimConfig:
    micro_batch_size: int = 8
    grad_accum_steps: int = 1
    weight_decay: float = 0.0
    betas: list[float] = field(default_factory=lambda: [0.9, 0.95])
    grad_clip: float | None = 1.0  # null: no clipping (0, negative or NaN are refused)
    activation_checkpointing: bool = False
    eps: float = 1e-8  # AdamW epsilon
    # bf16: autocast (CPU too) with fp32 master weights, FSDP2 bf16 params + fp32 gradient reduction;
    # auto: bf16 on CUDA, fp32 on CPU
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    # torch.compile the student's and the teacher's blocks (per block under FSDP2); auto: on CUDA only (measured
    # 1.31-1.49x on an H200, nothing on CPU: workbench.train.compiling)
    compile: bool | Literal["auto"] = "auto"


@dataclass
class CheckpointConfig:
    every: int = 0  # 0: only at the end of each phase
    keep_last: int = 3


@dataclass
class TeacherConfig:
    path: str  # a workbench checkpoint or any local HF Llama directory
    rope_theta: float | None = None  # None: the theta in the teacher's config.json
    cache: str | None = None  # a `workbench teacher-cache` directory: KD reads top-k log-probs, no teacher forward
    # "same": the teacher sees the student's positions and mask; "reset": every packed document alone from
    # position 0 (document-masked), so its targets carry no long-range positional signal (an ablation)
    positions: Literal["same", "reset"] = "same"


@dataclass
class WandbConfig:
    project: str
    mode: Literal["offline", "online"] = "offline"  # offline: files under <run>/wandb, synced later by the user


@dataclass
class LoggingConfig:
    """Experiment tracking beside ``metrics.jsonl`` (``workbench.train.tracking``)."""

    tensorboard: bool = True  # event files in <run>/tensorboard
    wandb: WandbConfig | None = None  # Weights & Biases when configured; never required


@dataclass
class RunConfig:
    """A training run: model, optional teacher, data, phases."""

    name: str
    model: ModelConfig
    phases: list[PhaseConfig]
    data: DataConfig = field(default_factory=DataConfig)
    teacher: TeacherConfig | None = None
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    seed: int = 0
    out_dir: str | None = None  # default runs/<name>
    init_from: str | None = None  # start the student from this checkpoint
    device: str = "auto"  # auto | cpu | cuda
    metrics_every: int = 1
    eval_every: int = 0  # optimiser steps between quick retrieval evals (0: none)
    eval_lengths: list[int] = field(default_factory=lambda: [256, 512])
    eval_samples: int = 16
    eval_tasks: list[str] = field(default_factory=lambda: ["passkey"])  # held-out retrieval tasks during training
    track_every: int = 0  # optimiser steps between per-pair W_q/W_k update records (pair_updates.jsonl; 0: none)
    description: str = ""
    logging: LoggingConfig = field(default_factory=LoggingConfig)


@dataclass
class PresetFile:
    """A model preset file: just a model shape."""

    model: ModelConfig
    description: str = ""


# ---------------------------------------------------------------------------------------- conversion


def _type_name(tp: Any) -> str:
    """A type as a config's reader would write it: ``true/false or 'auto'``, ``int``, ``list[int]``."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (Union, types.UnionType):
        return " or ".join(_type_name(a) for a in args if a is not type(None))
    if origin is Literal:
        return " or ".join(map(repr, args))
    if tp is bool:
        return "true/false"
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _convert(value: Any, tp: Any, where: str) -> Any:
    """Convert a YAML value into ``tp`` or raise ConfigError naming ``where``."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return _convert(value, arg, where)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(errors[0] if len(errors) == 1 else f"{where}: {value!r} matches none of {_type_name(tp)}")
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{where}: {value!r} is not one of {', '.join(map(repr, args))}")
        return value
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where}: expected a mapping for {tp.__name__}, got {type(value).__name__}")
        return _build(tp, value, where)
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{where}: expected a list, got {type(value).__name__}")
        return [_convert(v, args[0], f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where}: expected a mapping, got {type(value).__name__}")
        return {str(k): _convert(v, args[1], f"{where}.{k}") for k, v in value.items()}
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true/false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                return int(value)
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, str):  # YAML reads 1e4 (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return value
    raise ConfigError(f"{where}: unsupported type {_type_name(tp)}")


def _build(cls: type, data: Mapping[str, Any], where: str) -> Any:
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(f"{where}: unknown key {unknown[0]!r} (known: {', '.join(fields)})")
    kwargs = {}
    for name, f in fields.items():
        key = f"{where}.{name}" if where else name
        if name in data:
            kwargs[name] = _convert(data[name], hints[name], key)
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ConfigError(f"{key}: missing required key")
    return cls(**kwargs)


def from_dict(cls: type, data: Mapping[str, Any], source: str = "<dict>") -> Any:
    """Build and validate ``cls`` from a plain mapping; errors are prefixed with ``source``."""
    try:
        obj = _build(cls, data, "")
        validate(obj)
    except ConfigError as exc:
        raise ConfigError(f"{source}: {exc}") from None
    return obj


def to_dict(obj: Any) -> dict[str, Any]:
    """Plain-dict form of a config (for YAML/JSON and manifests)."""
    return dataclasses.asdict(obj)


# ------------------------------------------------------------------------------------- config hash
#
# A run's checkpoints record ``config_hash`` and ``config_hash_version``; ``--resume`` recomputes the hash of the
# config it is given (under the checkpoint's version) and refuses a different one. The hash covers only the
# entries that differ from the defaults, so a new key at its default changes no hash. Version 3 leaves out the
# entries that do not change what is trained (how the run is described, logged, evaluated, checkpointed and
# compiled), so they may change on --resume; version 2 hashed them too, against its own defaults. Version 1
# (manifests without config_hash_version) is one error: retrain, or resume from a checkpoint of a current version.

HASH_VERSION = 3
RESUMABLE_VERSIONS = (2, 3)
UNTRAINED_KEYS = (
    "description",
    "logging",
    "metrics_every",
    "track_every",
    "eval_every",
    "eval_lengths",
    "eval_samples",
    "eval_tasks",
    "checkpoint",
    "out_dir",
    "optim.compile",  # float reassociation only (tests/test_compile.py)
)
V2_DEFAULTS = {"optim.compile": False}  # defaults that changed after version 2 (its hashes compare against these)


def _without(diff: dict[str, Any], dotted: str, unless_not: Any = dataclasses.MISSING) -> dict[str, Any]:
    """``diff`` without the entry at ``dotted`` (``a.b``); with ``unless_not``, only where it equals that value."""
    head, _, rest = dotted.partition(".")
    if head not in diff:
        return diff
    if rest:
        if not isinstance(diff[head], dict) or not diff[head]:
            return diff
        sub = _without(diff[head], rest, unless_not)
        return {**diff, head: sub} if sub else {k: v for k, v in diff.items() if k != head}  # as _diff omits it
    if unless_not is not dataclasses.MISSING and diff[head] != unless_not:
        return diff
    return {k: v for k, v in diff.items() if k != head}


def _field_default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return dataclasses.MISSING


def check_hash_version(version: int) -> None:
    """Refuse a run recorded under another config-hash version, in one line."""
    if version > HASH_VERSION:
        raise ConfigError(
            f"config_hash_version {version} is newer than this workbench knows "
            f"({HASH_VERSION}); update the workbench to resume this run"
        )
    if version not in RESUMABLE_VERSIONS:
        raise ConfigError(
            f"the checkpoint was written with config_hash_version {version} (this workbench: {HASH_VERSION}); "
            "it cannot be resumed: retrain, or resume from a checkpoint of the current version"
        )


def _diff(obj: Any) -> dict[str, Any]:
    """The entries of a dataclass that differ from its defaults (nested sections recursively)."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(obj):
        value, default = getattr(obj, f.name), _field_default(f)
        if dataclasses.is_dataclass(value):
            sub = _diff(value)
            if sub or not dataclasses.is_dataclass(default):  # a section present where the default is None
                out[f.name] = sub
        elif isinstance(value, list) and value and dataclasses.is_dataclass(value[0]):
            out[f.name] = [_diff(v) for v in value]
        elif default is dataclasses.MISSING or _plain(value) != _plain(default):
            out[f.name] = _plain(value)
    return out


def _plain(value: Any) -> Any:
    return json.loads(json.dumps(value, sort_keys=True, default=str))


def config_hash(obj: Any, version: int = HASH_VERSION) -> str:
    """Short stable hash of a config, recorded in manifests.

    Run configs: their entries that differ from the defaults, without ``UNTRAINED_KEYS`` from ``version`` 3 on
    (``version``: the one a checkpoint recorded, to compare with it; version 2 against ``V2_DEFAULTS``). Any
    other config (data, model) hashes its whole resolved form.
    """
    if isinstance(obj, RunConfig):
        diff = _diff(obj)
        for dotted, old_default in V2_DEFAULTS.items() if version == 2 else ():
            diff = _without(diff, dotted, unless_not=old_default)
        for dotted in UNTRAINED_KEYS if version >= 3 else ():
            diff = _without(diff, dotted)
        body: Any = {"config_hash_version": version, **diff}
    else:
        body = to_dict(obj)
    blob = json.dumps(body, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


# ---------------------------------------------------------------------------------------- validation


def validate_model(m: ModelConfig, where: str = "model") -> None:
    def bad(key: str, msg: str) -> ConfigError:
        return ConfigError(f"{where}.{key}: {msg}")

    for key in (
        "vocab_size",
        "hidden_size",
        "num_layers",
        "num_heads",
        "num_kv_heads",
        "intermediate_size",
        "max_position_embeddings",
    ):
        if getattr(m, key) <= 0:
            raise bad(key, f"must be > 0, got {getattr(m, key)}")
    if not m.rope_theta > 0:
        raise bad("rope_theta", f"must be > 0, got {m.rope_theta}")
    if m.head_dim is None and m.hidden_size % m.num_heads:
        raise bad("num_heads", f"hidden_size {m.hidden_size} is not divisible by num_heads {m.num_heads}")
    if m.resolved_head_dim % 2:
        raise bad("head_dim", f"RoPE needs an even head dim, got {m.resolved_head_dim}")
    from workbench import architectures  # lazy: it imports torch, which reading a config needs not

    if m.architecture not in architectures.NAMES:
        raise bad("architecture", f"{m.architecture!r} is not one of {', '.join(architectures.NAMES)}")
    if m.num_heads % m.num_kv_heads:
        raise bad("num_kv_heads", f"num_heads {m.num_heads} is not divisible by num_kv_heads {m.num_kv_heads}")
    if m.rope_scaling is not None:
        validate_rope_scaling(m.rope_scaling, f"{where}.rope_scaling")


def validate_rope_scaling(scaling: Mapping[str, Any], where: str) -> None:
    kind = scaling.get("rope_type", scaling.get("type"))
    if kind not in rope.SCALING_TYPES:
        raise ConfigError(f"{where}.rope_type: {kind!r} is not one of {', '.join(rope.SCALING_TYPES)}")
    if kind in ("linear", "dynamic", "llama3") and "factor" not in scaling:
        raise ConfigError(f"{where}.factor: required for rope_type {kind!r}")
    if "factor" in scaling and not float(scaling["factor"]) > 0:
        raise ConfigError(f"{where}.factor: must be > 0, got {scaling['factor']}")


def validate(obj: Any) -> None:
    """Cross-field rules. Raises ConfigError naming the key."""
    if isinstance(obj, PresetFile):
        validate_model(obj.model)
        ranges.check_model(obj.model)
        return
    if isinstance(obj, ModelConfig):
        validate_model(obj, "")
        ranges.check_model(obj, "")
        return
    if not isinstance(obj, RunConfig):
        return
    validate_model(obj.model)
    if not obj.phases:
        raise ConfigError("phases: at least one phase is required")
    for i, ph in enumerate(obj.phases):
        key = f"phases[{i}]"
        if ph.steps <= 0:
            raise ConfigError(f"{key}.steps: must be > 0, got {ph.steps}")
        if ph.seq_len <= 0:
            raise ConfigError(f"{key}.seq_len: must be > 0, got {ph.seq_len}")
        if ph.seq_len > obj.model.max_position_embeddings:
            raise ConfigError(
                f"{key}.seq_len: {ph.seq_len} is beyond the model's max_position_embeddings "
                f"{obj.model.max_position_embeddings}"
            )
        if not ph.rope_theta > 0:
            raise ConfigError(f"{key}.rope_theta: must be > 0, got {ph.rope_theta}")
        if ph.rope_scaling is not None:
            validate_rope_scaling(ph.rope_scaling, f"{key}.rope_scaling")
        if ph.freeze_wavelengths is not None and (
            len(ph.freeze_wavelengths) != 2 or ph.freeze_wavelengths[0] > ph.freeze_wavelengths[1]
        ):
            raise ConfigError(f"{key}.freeze_wavelengths: expected [min, max] tokens, got {ph.freeze_wavelengths}")
        if not ph.lr > 0:
            raise ConfigError(f"{key}.lr: must be > 0, got {ph.lr}")
        if ph.objective in ("kd", "ce+kd") and obj.teacher is None:
            raise ConfigError(
                f"{key}.objective: {ph.objective!r} needs a teacher, but the config has no 'teacher' section"
            )
        for dkey, d in ((f"{key}.data", ph.data), ("data", obj.data)):
            if d is not None and d.doc_len_min > d.doc_len_max:
                raise ConfigError(f"{dkey}.doc_len_min: {d.doc_len_min} > doc_len_max {d.doc_len_max}")
    names = [ph.name for ph in obj.phases]
    if len(set(names)) != len(names):
        raise ConfigError(f"phases: phase names must be unique, got {names}")
    if obj.optim.micro_batch_size <= 0 or obj.optim.grad_accum_steps <= 0:
        raise ConfigError("optim: micro_batch_size and grad_accum_steps must be > 0")
    if obj.loss.temperature <= 0:
        raise ConfigError(f"loss.temperature: must be > 0, got {obj.loss.temperature}")
    if obj.track_every < 0:
        raise ConfigError(f"track_every: must be >= 0 (0: no pair-update tracking), got {obj.track_every}")
    if obj.eval_every < 0 or obj.eval_samples <= 0 or any(n <= 0 for n in obj.eval_lengths):
        raise ConfigError("eval_every/eval_samples/eval_lengths: must be >= 0 / > 0 / > 0")
    if not obj.eval_tasks:
        raise ConfigError("eval_tasks: name at least one retrieval task (e.g. [passkey, niah])")
    if any(ph.objective == "ce+kd" for ph in obj.phases) and obj.loss.ce_weight <= 0:
        raise ConfigError("loss.ce_weight: objective 'ce+kd' needs ce_weight > 0 (it is the CE term's weight)")
    if obj.loss.kd_kind == "jsd" and not 0 < obj.loss.jsd_beta < 1:
        raise ConfigError(f"loss.jsd_beta: must be in (0, 1), got {obj.loss.jsd_beta}")
    if obj.loss.chunk_size <= 0:
        raise ConfigError(f"loss.chunk_size: must be > 0, got {obj.loss.chunk_size}")
    ranges.check_run(obj)


# ------------------------------------------------------------------------------------------- loading


def read_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level, got {type(data).__name__}")
    return data


def _resolve_model(data: dict[str, Any], path: Path) -> dict[str, Any]:
    """Allow ``model: presets/tiny-student.yaml`` (relative to the config file) in run configs."""
    model = data.get("model")
    if isinstance(model, str):
        preset_path = (path.parent / model).resolve()
        if not preset_path.is_file():
            raise ConfigError(f"{path}: model: preset file {model!r} not found (looked at {preset_path})")
        preset = read_yaml(preset_path)
        if "model" not in preset:
            raise ConfigError(f"{preset_path}: model: missing required key")
        data = {**data, "model": preset["model"]}
    return data


def load_config(path: str | Path) -> RunConfig | PresetFile:
    """Load a run config or a model preset from YAML, validated. Raises ConfigError."""
    path = Path(path)
    data = _resolve_model(read_yaml(path), path)
    cls = RunConfig if "phases" in data or "name" in data else PresetFile
    return from_dict(cls, data, str(path))


def load_run_config(path: str | Path) -> RunConfig:
    cfg = load_config(path)
    if not isinstance(cfg, RunConfig):
        raise ConfigError(f"{path}: phases: missing required key (this looks like a model preset, not a run config)")
    return cfg


def load_model_config(path: str | Path) -> ModelConfig:
    """The model section of a preset or a run config."""
    return load_config(path).model
