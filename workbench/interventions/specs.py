"""Declarative RoPE perturbation specs: small dataclasses that serialise to YAML/JSON and compose.

A :class:`Spec` is a named list of :class:`Op` applied in order to the *post-RoPE* queries and/or keys of
an attention layer (hook ``blocks.{i}.attn.hook_rot_q`` / ``hook_rot_k`` in TransformerLens, the output of
``apply_rotary_pos_emb`` in nnsight). Every RoPE edit is expressible there because RoPE is a rotation:

- ``shift``  position offset: pair j rotated by ``offset * omega_j`` (= RoPE at position p + offset);
- ``theta``  theta swap: pair j rotated by ``p * (omega'_j - omega_j)`` (= RoPE with base ``theta``);
- ``rotate`` a fixed ``angle`` (radians) on the selected pairs;
- ``zero`` / ``scale`` the selected pairs (both of their dims);
- ``noise``  add seeded Gaussian noise (``sigma``) to the selected pairs.

Each op selects pairs (:class:`PairSet`: indices, a wavelength range, or a band relative to context
lengths from :func:`workbench.rope.assign_bands`) and a scope (:class:`Scope`: layers, query heads,
key/value heads, absolute positions). Pair j means dims (j, j + d/2) (Hugging Face half-split layout).

YAML form (a file holds one spec, or ``specs: [...]``)::

    name: q-shift-64-low-freq
    ops:
      - kind: shift
        target: q
        offset: 64
        pairs: {wavelength: [512, .inf]}
        scope: {layers: [1], heads: [0, 2]}
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import yaml

from workbench import config as _config
from workbench import models, rope

OpKind = Literal["shift", "theta", "rotate", "zero", "scale", "noise"]
Target = Literal["q", "k", "both"]


@dataclass
class PairSet:
    """Which RoPE pairs an op touches. All fields None: every pair. Fields combine by intersection."""

    indices: list[int] | None = None  # pair indices j
    wavelength: list[float] | None = None  # [min, max] in tokens, inclusive, at the model's theta
    band: int | None = None  # band index from rope.assign_bands(theta, d, context_lengths)
    context_lengths: list[int] | None = None  # needed with band

    def __post_init__(self) -> None:  # canonical numbers, so equal sets hash equal
        if self.wavelength is not None:
            self.wavelength = [float(w) for w in self.wavelength]

    def mask(self, geom: Geometry, where: str = "pairs") -> np.ndarray:
        """Boolean mask over the model's pairs; raises ValueError naming ``where`` on bad input."""
        half = geom.head_dim // 2
        keep = np.ones(half, dtype=bool)
        if self.indices is not None:
            bad = [j for j in self.indices if not 0 <= j < half]
            if bad:
                raise ValueError(
                    f"{where}.indices: pair {bad[0]} out of range (head_dim {geom.head_dim} has pairs 0..{half - 1})"
                )
            sel = np.zeros(half, dtype=bool)
            sel[list(self.indices)] = True
            keep &= sel
        if self.wavelength is not None:
            if len(self.wavelength) != 2 or not self.wavelength[0] <= self.wavelength[1]:
                raise ValueError(f"{where}.wavelength: expected [min, max] with min <= max, got {self.wavelength}")
            keep &= rope.wavelength_mask(geom.inv_freq, *self.wavelength)  # the model's own frequencies
        if self.band is not None or self.context_lengths is not None:
            if self.band is None or not self.context_lengths:
                raise ValueError(f"{where}: band and context_lengths go together")
            n_bands = len(self.context_lengths) + 1
            if not 0 <= self.band < n_bands:
                raise ValueError(
                    f"{where}.band: {self.band} out of range ({n_bands} bands: "
                    f"{', '.join(rope.band_edges_label(self.context_lengths))})"
                )
            keep &= rope.assign_bands(geom.theta, geom.head_dim, self.context_lengths, geom.scaling) == self.band
        if not keep.any():
            raise ValueError(
                f"{where}: selects no pair of this model (wavelengths "
                f"{geom.wavelengths[0]:.3g}..{geom.wavelengths[-1]:.3g} tokens)"
            )
        return keep


@dataclass
class Scope:
    """Where an op applies. None: everywhere."""

    layers: list[int] | None = None
    heads: list[int] | None = None  # query heads (ops on q; on k: the kv heads serving them, unless kv_heads)
    kv_heads: list[int] | None = None  # key/value heads (ops on k; GQA keeps fewer)
    positions: list[int] | None = None  # [start, stop): absolute position ids the op applies at


@dataclass
class Op:
    """One edit of post-RoPE q/k. Parameters unused by ``kind`` keep their defaults."""

    kind: OpKind
    target: Target = "both"
    offset: float = 0.0  # shift: positions
    theta: float | None = None  # theta: the new base
    angle: float = 0.0  # rotate: radians
    factor: float = 1.0  # scale
    sigma: float = 0.0  # noise: standard deviation
    seed: int = 0  # noise
    pairs: PairSet = field(default_factory=PairSet)
    scope: Scope = field(default_factory=Scope)

    def __post_init__(self) -> None:  # canonical numbers, so equal ops hash equal
        for key in ("offset", "angle", "factor", "sigma"):
            setattr(self, key, float(getattr(self, key)))
        if self.theta is not None:
            self.theta = float(self.theta)


@dataclass
class Spec:
    """A named perturbation: ops applied in order. ``Spec("clean")`` (no ops) is the identity."""

    name: str
    ops: list[Op] = field(default_factory=list)
    description: str = ""

    def __add__(self, other: Spec) -> Spec:
        """Compose: this spec's ops, then the other's."""
        return Spec(
            f"{self.name}+{other.name}",
            [*self.ops, *other.ops],
            "; ".join(d for d in (self.description, other.description) if d),
        )

    @property
    def is_identity(self) -> bool:
        return not self.ops

    def to_dict(self) -> dict[str, Any]:
        return _config.to_dict(self)

    def ops_json(self) -> str:
        """Canonical JSON of the ops only: two specs with equal ops_json are the same perturbation."""
        return json.dumps(self.to_dict()["ops"], sort_keys=True, default=_json_default)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True, default=_json_default)

    @property
    def ops_hash(self) -> str:
        return hashlib.sha256(self.ops_json().encode()).hexdigest()[:16]

    def validate(self, geom: Geometry) -> None:
        validate(self, geom)


def _json_default(value: Any) -> Any:
    if isinstance(value, float) and math.isinf(value):
        return "inf" if value > 0 else "-inf"
    return str(value)


# ------------------------------------------------------------------------------------ constructors


def _op(kind: str, target: str, pairs: PairSet | None, layers, heads, kv_heads, positions, **params) -> Op:
    return Op(
        kind=kind,
        target=target,
        pairs=pairs or PairSet(),  # type: ignore[arg-type]
        scope=Scope(_list(layers), _list(heads), _list(kv_heads), _list(positions)),
        **params,
    )


def _list(x: Iterable[int] | int | None) -> list[int] | None:
    if x is None:
        return None
    return [int(x)] if isinstance(x, (int, np.integer)) else [int(v) for v in x]


def shift(
    offset: float,
    target: Target = "q",
    *,
    pairs: PairSet | None = None,
    layers=None,
    heads=None,
    kv_heads=None,
    positions=None,
) -> Op:
    """Rotate as if at position p + offset (only q or only k: a relative-distance change)."""
    return _op("shift", target, pairs, layers, heads, kv_heads, positions, offset=float(offset))


def theta_swap(
    theta: float,
    target: Target = "both",
    *,
    pairs: PairSet | None = None,
    layers=None,
    heads=None,
    kv_heads=None,
    positions=None,
) -> Op:
    """Apply RoPE with base ``theta`` instead of the model's."""
    return _op("theta", target, pairs, layers, heads, kv_heads, positions, theta=float(theta))


def rotate(
    angle: float,
    target: Target = "both",
    *,
    pairs: PairSet | None = None,
    layers=None,
    heads=None,
    kv_heads=None,
    positions=None,
) -> Op:
    return _op("rotate", target, pairs, layers, heads, kv_heads, positions, angle=float(angle))


def zero(
    target: Target = "both", *, pairs: PairSet | None = None, layers=None, heads=None, kv_heads=None, positions=None
) -> Op:
    return _op("zero", target, pairs, layers, heads, kv_heads, positions)


def scale(
    factor: float,
    target: Target = "both",
    *,
    pairs: PairSet | None = None,
    layers=None,
    heads=None,
    kv_heads=None,
    positions=None,
) -> Op:
    return _op("scale", target, pairs, layers, heads, kv_heads, positions, factor=float(factor))


def noise(
    sigma: float,
    seed: int = 0,
    target: Target = "both",
    *,
    pairs: PairSet | None = None,
    layers=None,
    heads=None,
    kv_heads=None,
    positions=None,
) -> Op:
    return _op("noise", target, pairs, layers, heads, kv_heads, positions, sigma=float(sigma), seed=int(seed))


def identity(name: str = "clean") -> Spec:
    return Spec(name)


# -------------------------------------------------------------------------------------- geometry


@dataclass(frozen=True)
class Geometry:
    """What a spec is validated and resolved against: a model's attention shape and RoPE."""

    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    theta: float
    scaling: Mapping[str, Any] | None
    max_position_embeddings: int
    inv_freq: np.ndarray  # float64 [d/2], what the model's rotary module runs with

    @property
    def wavelengths(self) -> np.ndarray:
        return 2 * math.pi / self.inv_freq

    @classmethod
    def of(cls, hf_model) -> Geometry:
        """Geometry of a transformers Llama model (frequencies read from its rotary buffers)."""
        cfg = models.model_config_of(hf_model)
        return cls(
            cfg.num_layers,
            cfg.num_heads,
            cfg.num_kv_heads,
            cfg.resolved_head_dim,
            cfg.rope_theta,
            cfg.rope_scaling,
            cfg.max_position_embeddings,
            models.model_inv_freq(hf_model).double().cpu().numpy(),
        )

    def inv_freq_for(self, theta: float) -> np.ndarray:
        """Frequencies the model would run with at base ``theta`` (same scaling type)."""
        return rope.inv_freq(theta, self.head_dim, self.scaling, max_position_embeddings=self.max_position_embeddings)


# ------------------------------------------------------------------------------------ validation


def validate(spec: Spec, geom: Geometry) -> None:
    """Refuse (ValueError naming spec, op and key) anything out of range for this model, before any run."""
    if not isinstance(spec, Spec):
        raise ValueError(f"expected a Spec, got {type(spec).__name__}")
    if not spec.name or any(c in spec.name for c in "/\n"):
        raise ValueError(f"spec name {spec.name!r}: must be non-empty without '/' or newlines")
    for i, op in enumerate(spec.ops):
        where = f"spec {spec.name!r}: ops[{i}]"
        for key, values, n, what in (
            ("layers", op.scope.layers, geom.num_layers, "layers"),
            ("heads", op.scope.heads, geom.num_heads, "query heads"),
            ("kv_heads", op.scope.kv_heads, geom.num_kv_heads, "key/value heads"),
        ):
            bad = [v for v in values or [] if not 0 <= v < n]
            if bad:
                raise ValueError(f"{where}.scope.{key}: {bad[0]} out of range (model has {n} {what}: 0..{n - 1})")
        if op.scope.kv_heads is not None and op.target == "q":
            raise ValueError(f"{where}.scope.kv_heads: names key heads but target is 'q'; use heads")
        if op.scope.positions is not None:
            p = op.scope.positions
            if len(p) != 2 or not 0 <= p[0] < p[1]:
                raise ValueError(f"{where}.scope.positions: expected [start, stop) with 0 <= start < stop, got {p}")
        op.pairs.mask(geom, f"{where}.pairs")
        if op.kind == "theta" and not (op.theta is not None and op.theta > 0):
            raise ValueError(f"{where}.theta: a theta swap needs theta > 0, got {op.theta}")
        if op.kind == "noise" and not op.sigma >= 0:
            raise ValueError(f"{where}.sigma: must be >= 0, got {op.sigma}")
        for key in ("offset", "angle", "factor", "sigma"):
            if not math.isfinite(getattr(op, key)):
                raise ValueError(f"{where}.{key}: must be finite, got {getattr(op, key)}")


def validate_all(specs: Sequence[Spec], geom: Geometry) -> None:
    """Validate each spec and refuse two specs with one name or the same ops under two names."""
    seen_names: dict[str, str] = {}
    seen_ops: dict[str, str] = {}
    for spec in specs:
        validate(spec, geom)
        if spec.name in seen_names:
            raise ValueError(f"spec name {spec.name!r} given twice")
        seen_names[spec.name] = spec.ops_hash
        if spec.ops_hash in seen_ops:
            raise ValueError(f"spec {spec.name!r} is the same perturbation as spec {seen_ops[spec.ops_hash]!r}")
        seen_ops[spec.ops_hash] = spec.name


# ------------------------------------------------------------------------------------------ I/O


def from_dict(data: Mapping[str, Any], source: str = "<dict>") -> Spec:
    """A Spec from its dict form; ConfigError names the source and the key."""
    data = _inf(dict(data))
    return _config.from_dict(Spec, data, source)


def _inf(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _inf(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_inf(v) for v in value]
    if isinstance(value, str) and value.lower() in ("inf", "+inf", ".inf", "infinity"):
        return math.inf
    if isinstance(value, str) and value.lower() in ("-inf", "-.inf", "-infinity"):
        return -math.inf
    return value


def load_specs(path: str | Path) -> list[Spec]:
    """Specs from a YAML or JSON file holding one spec or ``specs: [...]``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: spec file not found")
    data = _config.read_yaml(path)  # JSON is YAML
    items = data["specs"] if isinstance(data, Mapping) and "specs" in data else [data]
    if not isinstance(items, list) or not items:
        raise _config.ConfigError(f"{path}: specs: expected a non-empty list")
    out = []
    for i, item in enumerate(items):
        if not isinstance(item, Mapping):
            raise _config.ConfigError(f"{path}: specs[{i}]: expected a mapping")
        out.append(from_dict(item, f"{path}: specs[{i}]" if len(items) > 1 or "specs" in data else str(path)))
    return out


def dump_specs(specs: Sequence[Spec], path: str | Path) -> Path:
    """Write specs as YAML (``specs: [...]``)."""
    path = Path(path)
    path.write_text(yaml.safe_dump({"specs": [json.loads(s.to_json()) for s in specs]}, sort_keys=False))
    return path
