"""Range and finiteness of every numeric key of a run config, and the names that become paths.

``workbench.config.validate`` calls :func:`check_run` after its cross-field rules, so every loader
(``load_config``, ``from_dict``) refuses ``rope_theta: .inf``, a negative ``warmup_steps``, ``grad_clip: .nan``,
a one-element ``betas``, a zero ``metrics_every`` or a run ``name`` of ``../x`` with one ``ConfigError`` naming
the key (the loader prefixes the file). YAML reads ``.inf`` / ``.nan`` as floats, and ``nan > 0`` is False
but ``nan <= 0`` is False too, so every check here is written as "must be finite and in range".
"""

from __future__ import annotations

import math
from typing import Any


class ConfigError(ValueError):
    """A bad config value: the message names the file and the key (``workbench.config.ConfigError``)."""


def _finite(where: str, value: Any) -> float:
    if value is None or not math.isfinite(float(value)):
        raise ConfigError(f"{where}: must be a finite number, got {value}")
    return float(value)


def positive(where: str, value: Any) -> None:
    if not _finite(where, value) > 0:
        raise ConfigError(f"{where}: must be > 0, got {value}")


def non_negative(where: str, value: Any) -> None:
    if not _finite(where, value) >= 0:
        raise ConfigError(f"{where}: must be >= 0, got {value}")


def at_least(where: str, value: Any, low: int) -> None:
    if not _finite(where, value) >= low:
        raise ConfigError(f"{where}: must be >= {low}, got {value}")


def in_range(where: str, value: Any, low: float, high: float, *, high_open: bool = False) -> None:
    v = _finite(where, value)
    if not (low <= v < high if high_open else low <= v <= high):
        raise ConfigError(f"{where}: must be in [{low}, {high}{')' if high_open else ']'}, got {value}")


def name(where: str, value: str) -> None:
    """A name that becomes one path component (run and phase names): no separator, no ``.``/``..``."""
    if not value or "/" in value or "\\" in value or value in (".", "..") or "\0" in value:
        raise ConfigError(
            f"{where}: {value!r} must be a plain name (no path separators, not '.' or '..'); "
            "it names a directory under runs/"
        )


def rope_scaling(where: str, scaling: dict | None) -> None:
    for key in ("factor", "low_freq_factor", "high_freq_factor", "beta_fast", "beta_slow"):
        if scaling is not None and key in scaling and isinstance(scaling[key], (int, float)):
            positive(f"{where}.{key}", scaling[key])


def check_model(m, where: str = "model") -> None:
    """Finiteness of the model's float keys (the integer ones are checked > 0 by ``validate_model``)."""
    pre = f"{where}." if where else ""
    positive(f"{pre}rope_theta", m.rope_theta)
    positive(f"{pre}rms_norm_eps", m.rms_norm_eps)
    positive(f"{pre}initializer_range", m.initializer_range)
    rope_scaling(f"{pre}rope_scaling", m.rope_scaling)
    if m.stated_params is not None:  # NaN would switch the 3 % size check off
        positive(f"{pre}stated_params", m.stated_params)


def check_run(cfg) -> None:
    """Every numeric key of a RunConfig finite and in range; names plain. Raises ConfigError naming the key."""
    name("name", cfg.name)
    check_model(cfg.model)
    for i, ph in enumerate(cfg.phases):
        key = f"phases[{i}]"
        name(f"{key}.name", ph.name)
        positive(f"{key}.rope_theta", ph.rope_theta)
        rope_scaling(f"{key}.rope_scaling", ph.rope_scaling)
        positive(f"{key}.lr", ph.lr)
        at_least(f"{key}.warmup_steps", ph.warmup_steps, 0)
        in_range(f"{key}.min_lr_ratio", ph.min_lr_ratio, 0.0, 1.0)
        if ph.freeze_wavelengths is not None:
            for j, w in enumerate(ph.freeze_wavelengths):  # .inf is a valid upper end ("every longer pair")
                if math.isnan(w) or w < 0:
                    raise ConfigError(f"{key}.freeze_wavelengths[{j}]: must be >= 0 (or .inf), got {w}")
    o = cfg.optim
    if len(o.betas) != 2:
        raise ConfigError(f"optim.betas: expected two numbers [beta1, beta2] (AdamW), got {o.betas}")
    for j, b in enumerate(o.betas):
        in_range(f"optim.betas[{j}]", b, 0.0, 1.0, high_open=True)
    positive("optim.eps", o.eps)
    non_negative("optim.weight_decay", o.weight_decay)
    if o.grad_clip is not None:  # null = no clipping, said explicitly; NaN or <= 0 never switches it off
        positive("optim.grad_clip", o.grad_clip)
    loss = cfg.loss
    positive("loss.temperature", loss.temperature)
    non_negative("loss.ce_weight", loss.ce_weight)
    non_negative("loss.kd_weight", loss.kd_weight)
    in_range("loss.jsd_beta", loss.jsd_beta, 0.0, 1.0)
    at_least("metrics_every", cfg.metrics_every, 1)
    at_least("eval_every", cfg.eval_every, 0)
    at_least("checkpoint.every", cfg.checkpoint.every, 0)
    at_least("checkpoint.keep_last", cfg.checkpoint.keep_last, 0)
    if cfg.teacher is not None and cfg.teacher.rope_theta is not None:
        positive("teacher.rope_theta", cfg.teacher.rope_theta)
    for d_key, d in [("data", cfg.data)] + [(f"phases[{i}].data", ph.data) for i, ph in enumerate(cfg.phases)]:
        if d is None:
            continue
        for k in ("doc_len_min", "doc_len_max"):
            at_least(f"{d_key}.{k}", getattr(d, k), 1)
        for k in ("num_pairs_min", "num_pairs_max"):
            at_least(f"{d_key}.{k}", getattr(d, k), 0)
    if cfg.eval_every:
        limit = cfg.model.max_position_embeddings
        for j, n in enumerate(cfg.eval_lengths):
            if n > limit:  # as `workbench eval` refuses prompts beyond the window without --extrapolate
                raise ConfigError(
                    f"eval_lengths[{j}]: {n} is beyond the model's max_position_embeddings {limit}; "
                    "the training eval does not extrapolate (evaluate longer prompts with "
                    "`workbench eval --extrapolate` on the checkpoints)"
                )
