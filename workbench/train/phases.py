"""A run's phases as the trainer and the teacher cache both read them, and the checks of its inputs.

Each phase draws its own windows (its data config, its seed); one optimiser step takes
``windows_per_step`` windows. ``check_inputs`` raises every error of the phases, data, ``init_from`` and
teacher directory as one ConfigError before any compute (a teacher *cache* is checked by
``workbench.train.teacher_cache.check``, which builds on this module).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from workbench import architectures, checkpoint_io, tokenizers
from workbench import config as wconfig
from workbench.config import ConfigError, RunConfig
from workbench.data import stream as data_stream
from workbench.train.vocab import kd_vocab_size


def needs_teacher(cfg: RunConfig) -> bool:
    return any(ph.objective in ("kd", "ce+kd") for ph in cfg.phases)


def kd_phases(cfg: RunConfig) -> list[int]:
    return [i for i, ph in enumerate(cfg.phases) if ph.objective != "ce"]


def phase_data(cfg: RunConfig, i: int) -> wconfig.DataConfig:
    return cfg.phases[i].data or cfg.data


def phase_seed(cfg: RunConfig, i: int) -> int:
    """Each phase draws its own windows (seed, phase index)."""
    return cfg.seed * 1000 + i


def phase_ends(cfg: RunConfig) -> list[int]:
    """The global step at which each phase ends."""
    return [sum(ph.steps for ph in cfg.phases[: i + 1]) for i in range(len(cfg.phases))]


def windows_per_step(cfg: RunConfig, world_size: int) -> int:
    return cfg.optim.micro_batch_size * cfg.optim.grad_accum_steps * world_size


def hf_config(path: Path, what: str) -> dict[str, Any]:
    """``config.json`` of a model directory (``checkpoint_io.read_config``, no weights or architecture checked);
    CheckpointError prefixed with ``what`` (the config key)."""
    if not path.is_dir():
        raise checkpoint_io.CheckpointError(f"{what}: directory {path} not found")
    try:
        return checkpoint_io.read_config(path, weights=False, architecture=False)
    except checkpoint_io.CheckpointError as exc:
        raise checkpoint_io.CheckpointError(f"{what}: {exc}") from None


def check_init_from(cfg: RunConfig, found: dict[str, Any]) -> None:
    """The ``init_from`` checkpoint must be the model the ``model`` section describes (theta aside: the phases set
    it): the trainer trains the checkpoint but sizes the memory check, the vocabulary and the windows, and
    records the run, by the section."""
    try:
        arch = architectures.of(found).name
    except architectures.ArchitectureError as exc:
        raise checkpoint_io.CheckpointError(f"init_from: {cfg.init_from}: {exc}") from None
    m = cfg.model
    pairs = {
        "architecture": (arch, m.architecture),
        "vocab_size": (found.get("vocab_size"), m.vocab_size),
        "hidden_size": (found.get("hidden_size"), m.hidden_size),
        "num_layers": (found.get("num_hidden_layers"), m.num_layers),
        "num_heads": (found.get("num_attention_heads"), m.num_heads),
        "num_kv_heads": (architectures.num_kv_heads(found), m.num_kv_heads),
        "head_dim": (architectures.head_dim(found), m.resolved_head_dim),
        "intermediate_size": (found.get("intermediate_size"), m.intermediate_size),
    }
    differ = [f"{k} {have} vs {want}" for k, (have, want) in pairs.items() if have != want]
    if differ:
        raise ConfigError(
            f"init_from: {cfg.init_from} is not the model the config's model section describes "
            f"({', '.join(differ)}: checkpoint vs config); make model: match it (its config.json)"
        )


def check_inputs(cfg: RunConfig, world_size: int = 1) -> None:
    """Phases vs model windows, data configs, init_from, teacher directory / vocabulary / window, tokenizer."""
    longest = max(ph.seq_len for ph in cfg.phases)
    for i, ph in enumerate(cfg.phases):
        if ph.seq_len > cfg.model.max_position_embeddings:
            raise ConfigError(
                f"phases[{i}].seq_len: {ph.seq_len} is beyond the student's max_position_embeddings "
                f"{cfg.model.max_position_embeddings}"
            )
        if ph.seq_len < 2:
            raise ConfigError(f"phases[{i}].seq_len: needs at least 2 tokens (one input, one target)")
        if ph.freeze_wavelengths is not None and world_size > 1:
            raise ConfigError(f"phases[{i}].freeze_wavelengths: the frozen-pairs ablation runs single-process only")
        try:
            data_stream.check(phase_data(cfg, i), ph.seq_len, cfg.optim.micro_batch_size, 0, world_size)
        except ValueError as exc:
            raise ConfigError(f"phases[{i}] ({ph.name}): {exc}") from None
        if ph.objective != "ce" and cfg.teacher is None:
            raise ConfigError(
                f"phases[{i}].objective: {ph.objective!r} needs a teacher, but the config has no 'teacher' section"
            )
    if cfg.init_from:
        check_init_from(cfg, hf_config(Path(cfg.init_from), "init_from"))
    if cfg.teacher is not None and needs_teacher(cfg) and not cfg.teacher.cache:
        tcfg = hf_config(Path(cfg.teacher.path), "teacher.path")
        kd_vocab_size(cfg, tcfg.get("vocab_size"))  # same rows, or one tokenizer padded differently
        t_max = tcfg.get("max_position_embeddings", 0)
        if longest > t_max:
            raise ConfigError(
                f"phases: the longest phase ({longest} tokens) is beyond the teacher's "
                f"max_position_embeddings {t_max} ({cfg.teacher.path})"
            )
    tokenizers.check_run(cfg)  # one vocabulary: the teacher's tokenizer equals the data's (before any training)
