"""Checkpoints as inputs: what every command needs to know about a model directory before it loads one.

One place for each of these (every package uses them):

- :func:`label` -- the store's checkpoint coordinate ``"<run>/<ckpt-dir>"`` (the parent directory is the run);
- :func:`inspect` -- a cheap, load-free check of a workbench checkpoint or a plain HF directory (manifest,
  file sizes and hashes, or the safetensors headers of a plain directory; ``config.json``; a supported
  architecture; readable safetensors) -> one :class:`Info` (shape, theta, position limit, manifest fields);
  :func:`inspect_all` for several that must go together;
- :func:`tokenizer` -- the tokenizer a checkpoint is read with under ``--tokenizer auto|synthetic|DIR``
  (its own, else the synthetic language for a 128-row model, else one error naming ``--tokenizer``);
  :func:`own_tokenizer` where a tokenizer is only a stand-in (the interpretability backends' wrappers);
- :func:`expand` -- checkpoints named on the command line (a run directory stands for its complete
  checkpoints, ``workbench.runs.RunDir``), and :func:`phase_lengths` of the run they belong to;
- the device: :func:`workbench.models.pick_device` (``auto``, ``cpu``, ``cuda``, ``cuda:N``; one error).

Loading the weights is :func:`workbench.checkpoint_io.load`, which runs the same checks.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from workbench import architectures, checkpoint_io, rope, tokenizers
from workbench.checkpoint_io import CheckpointError
from workbench.runs import RunDir

SYNTHETIC = "synthetic"
SEQ_LEN_KEYS = ("seq_len", "train_seq_len", "phase_seq_len")  # manifest keys that state the trained length

__all__ = [
    "CheckpointError",
    "Info",
    "SYNTHETIC",
    "InputError",
    "inspect",
    "inspect_all",
    "label",
    "own_tokenizer",
    "position_limit",
    "tokenizer",
    "vocab_size",
]


class InputError(ValueError):
    """Bad model/tokenizer/inputs combination (one line naming the input and what to do)."""


def label(path: str | Path) -> str:
    """Readable, stable checkpoint label ``<run>/<ckpt-dir>``: the store's ``checkpoint`` coordinate."""
    path = Path(path).resolve()
    return f"{path.parent.name}/{path.name}"


def position_limit(manifest: dict[str, Any], config: dict[str, Any]) -> tuple[int, str]:
    """(positions a checkpoint is known to handle, where that number comes from): the manifest's ``seq_len``
    (the trainer's phase length), else ``max_position_embeddings`` of ``config.json``."""
    for key in SEQ_LEN_KEYS:
        if manifest.get(key):
            return int(manifest[key]), f"manifest {key}"
    if config.get("max_position_embeddings"):
        return int(config["max_position_embeddings"]), "config max_position_embeddings"
    raise CheckpointError("config.json has no max_position_embeddings and the manifest no seq_len")


@dataclass(frozen=True)
class Info:
    """What is known about one checkpoint directory without loading the model."""

    path: Path
    label: str  # "<run>/<ckpt-dir>"
    manifest: dict[str, Any] = field(repr=False)  # {} for a plain HF directory
    config: dict[str, Any] = field(repr=False, compare=False)  # config.json
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    hidden_size: int
    vocab_size: int
    rope_theta: float
    rope_scaling: dict[str, Any] | None

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

    @property
    def max_position_embeddings(self) -> int | None:
        value = self.config.get("max_position_embeddings")
        return int(value) if value else None

    def wavelengths(self) -> np.ndarray:
        """Wavelength of each RoPE pair in tokens as this checkpoint runs (its theta and RoPE scaling, up to
        its max_position_embeddings: dynamic NTK and LongRoPE switch beyond it)."""
        return rope.wavelengths(
            self.rope_theta, self.head_dim, self.rope_scaling, max_position_embeddings=self.max_position_embeddings
        )

    def position_limit(self) -> tuple[int, str]:
        """(positions it was trained or configured for, their source); CheckpointError when neither says."""
        return position_limit(self.manifest, self.config)

    def content_hash(self) -> str:
        return checkpoint_io.checkpoint_hash(self.path)


def expand(items: Sequence[str | Path], phase_ends: bool = False) -> list[Path]:
    """Checkpoint paths from the command line; a run directory (no manifest, ckpt-* inside) expands to
    its complete checkpoints, oldest first. ``phase_ends`` keeps only phase-end checkpoints."""
    out: list[Path] = []
    for item in items:
        path = Path(item)
        if path.is_dir() and not (path / checkpoint_io.MANIFEST).exists() and not (path / "config.json").exists():
            found = RunDir(path).checkpoints()
            if not found:
                raise FileNotFoundError(
                    f"{path}: neither a checkpoint nor a run directory with complete ckpt-* checkpoints"
                )
            out.extend(found)
        else:
            out.append(path)
    if phase_ends:
        out = [p for p in out if checkpoint_io.is_phase_end(p)]
        if not out:
            raise ValueError("--phase-ends: none of the given checkpoints is a phase end (manifest phase_end)")
    return out


def phase_lengths(paths: Sequence[str | Path]) -> list[int] | None:
    """The phases' seq_len from the run.yaml of the run the checkpoints belong to (None when there is none)."""
    for path in reversed(paths):
        run = RunDir.of_checkpoint(path)
        if run is not None:
            return sorted({ph.seq_len for ph in run.run_config().phases})
    return None


def inspect(path: str | Path, *, verify: bool = True, what: str | None = None) -> Info:
    """Check a checkpoint directory cheaply, without loading the model -> :class:`Info`.

    ``verify`` (the default) checks the manifest (file sizes, hashes once, cached) of a workbench checkpoint,
    or the safetensors headers / index of a plain HF directory (``checkpoint_io.verify``), and that the
    weights are readable; ``verify=False`` reads only ``config.json`` (a supported architecture). Raises
    CheckpointError naming the path (prefixed ``what: `` when given, e.g. ``teacher.path``)."""
    path = Path(path)
    try:
        if not path.is_dir():
            raise CheckpointError(f"{path}: checkpoint directory not found")
        manifest: dict[str, Any] = {}
        if verify:
            manifest = checkpoint_io.verify(path)  # {} for a plain HF directory (checked from its headers)
        elif (path / checkpoint_io.MANIFEST).exists():
            manifest = checkpoint_io.read_manifest(path)
        cfg = checkpoint_io.read_config(path, weights=verify)
    except CheckpointError as exc:
        if what:
            raise CheckpointError(f"{what}: {exc}") from None
        raise
    params = architectures.rope_parameters(cfg)  # transformers 5's rope_parameters, or an older file's keys
    theta = float(params.pop("rope_theta", 10000.0))
    params.pop("partial_rotary_factor", None)
    scaling = params if params.get("rope_type", "default") != "default" else None
    text = cfg.get("text_config") or {}
    heads = int(cfg.get("num_attention_heads") or text.get("num_attention_heads") or 1)
    hidden = int(cfg.get("hidden_size") or text.get("hidden_size") or 0)
    return Info(
        path=path,
        label=label(path),
        manifest=manifest,
        config=cfg,
        num_layers=int(cfg.get("num_hidden_layers") or text.get("num_hidden_layers") or 0),
        num_heads=heads,
        num_kv_heads=int(cfg.get("num_key_value_heads") or heads),
        head_dim=int(cfg.get("head_dim") or hidden // heads),
        hidden_size=hidden,
        vocab_size=int(cfg.get("vocab_size") or text.get("vocab_size") or 0),
        rope_theta=theta,
        rope_scaling=scaling,
    )


def inspect_all(paths: Sequence[str | Path], *, minimum: int = 1) -> list[Info]:
    """Inspect checkpoints analysed together: at least ``minimum``, one architecture and attention shape,
    distinct labels (ValueError otherwise)."""
    if len(paths) < minimum:
        raise ValueError(f"need at least {minimum} checkpoint(s), got {len(paths)}")
    infos = [inspect(p) for p in paths]
    first = infos[0]
    for info in infos[1:]:
        if info.architecture != first.architecture:
            raise ValueError(
                f"{info.path}: architecture {info.architecture} differs from {first.path} "
                f"{first.architecture}; analyse each architecture in its own call and store"
            )
        if info.shape != first.shape:
            names = "(layers, heads, kv_heads, head_dim, hidden)"
            raise ValueError(
                f"{info.path}: attention shape {info.shape} differs from {first.path} {first.shape} "
                f"{names}; only checkpoints of one architecture go together (analyse each "
                "architecture in its own call and store)"
            )
    labels = [i.label for i in infos]
    dupes = sorted({lab for lab in labels if labels.count(lab) > 1})
    if dupes:
        raise ValueError(f"checkpoint label(s) {dupes} given more than once")
    return infos


# ------------------------------------------------------------------------------------------- tokenizers


def vocab_size(path: str | Path) -> int:
    """``vocab_size`` (embedding rows) from a model directory's config.json (CheckpointError if unreadable)."""
    cfg = checkpoint_io.read_config(path, weights=False, architecture=False)
    size = cfg.get("vocab_size") or (cfg.get("text_config") or {}).get("vocab_size")
    if not isinstance(size, int) or size < 1:
        raise CheckpointError(f"{Path(path) / 'config.json'}: no vocab_size")
    return int(size)


def tokenizer(path: str | Path, choice: str | None = "auto") -> tuple[Any, str]:
    """(tokenizer, source) a model directory is read with under ``--tokenizer choice``.

    ``auto``: the directory's own tokenizer, else the synthetic language for a 128-row model; ``synthetic``;
    or a tokenizer directory. A model without a tokenizer and another vocabulary, or a tokenizer with more
    tokens than the model has rows, is one InputError naming ``--tokenizer``. ``source`` is
    ``"synthetic"`` for the synthetic vocabulary wherever it comes from, else the tokenizer directory."""
    path = Path(path)
    vocab = vocab_size(path)
    if choice == SYNTHETIC:
        tok, source = tokenizers.synthetic(), SYNTHETIC
    elif choice not in (None, "auto"):
        if not Path(choice).is_dir():
            raise InputError(
                f"--tokenizer {choice}: tokenizer directory not found (give a local directory with "
                "tokenizer.json / tokenizer_config.json, or 'auto' / 'synthetic')"
            )
        tok, source = tokenizers.load(choice, f"--tokenizer {choice}"), str(choice)
    elif tokenizers.has_tokenizer(path):
        tok, source = tokenizers.load(path, f"{path} (its tokenizer files)"), str(path)
    elif vocab == 128:
        tok, source = tokenizers.synthetic(), SYNTHETIC
    else:
        raise InputError(
            f"{path}: the directory has no tokenizer and its vocabulary ({vocab} embedding rows) is "
            "not the synthetic one (128); pass --tokenizer DIR with the tokenizer the model was "
            "trained with"
        )
    if tokenizers.is_synthetic(tok):
        source = SYNTHETIC
    if len(tok) > vocab:
        raise InputError(
            f"{path}: tokenizer {source} has {len(tok)} tokens but the model has only {vocab} "
            "embedding rows, so it is not this model's tokenizer; pass --tokenizer DIR with the one "
            "it was trained with"
        )
    return tok, source


def own_tokenizer(path: str | Path):
    """The directory's own tokenizer when it ships one, else the synthetic one (for wrappers that need *a*
    tokenizer; what a command feeds the model is decided by :func:`tokenizer`)."""
    if tokenizers.has_tokenizer(path):
        return tokenizers.load(path, f"{path} (its tokenizer files)")
    return tokenizers.synthetic()
