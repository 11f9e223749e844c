"""Tokenizers that travel with checkpoints: which one a training run uses, whether its teacher shares it.

A run's tokenizer is its data's (``data.tokenizer``, the same in every phase), else its teacher's (the teacher
directory ships one), else the synthetic vocabulary's. The trainer saves it into every checkpoint, so
``AutoTokenizer.from_pretrained(ckpt)`` works and every later command reads text the way the model was
trained. KD needs one vocabulary: a teacher's own tokenizer must equal the data's (same tokens, same ids),
checked before any training; a teacher directory without a tokenizer is taken to share the data's when its
vocabulary size matches, with one warning.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

from workbench.config import ConfigError
from workbench.data import tokenizer as syn
from workbench.data.corpus import data_tokenizer
from workbench.data.text import load_tokenizer

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model")


class TokenizerMismatch(ValueError):
    """Teacher and data tokenizers differ (raised before training)."""


def has_tokenizer(path: str | Path) -> bool:
    path = Path(path)
    return any((path / f).is_file() for f in TOKENIZER_FILES)


def load(path: str | Path, what: str = "tokenizer"):
    """A local HF tokenizer directory, offline; ValueError naming ``what`` if it does not load."""
    return load_tokenizer(path, what)


def synthetic():
    return syn.synthetic_tokenizer()


def is_synthetic(tokenizer) -> bool:
    """True when a HF tokenizer is the workbench's synthetic vocabulary (same tokens, same ids)."""
    try:
        vocab = tokenizer.get_vocab()
    except Exception:  # tokenizers without get_vocab are not ours
        return False
    return len(vocab) == syn.VOCAB_SIZE and all(vocab.get(t) == i for i, t in enumerate(syn.TOKENS))


def same_vocabulary(a, b) -> bool:
    """Same tokens with the same ids (special tokens included)."""
    return a.get_vocab() == b.get_vocab()


def _data_tokenizer_path(cfg) -> str | None:
    """The one ``data.tokenizer`` of a run (phases may override ``data`` but must agree on the tokenizer)."""
    paths = {data_tokenizer(cfg.data)}
    for ph in cfg.phases:
        data = getattr(ph, "data", None)
        if data is not None:
            paths.add(data_tokenizer(data))
    if len(paths) > 1:
        raise ValueError(
            f"data.tokenizer: phases use different tokenizers {sorted(map(str, paths))}; "
            "a run (and its checkpoints) has one vocabulary"
        )
    return paths.pop()


def for_run(cfg, *, warn: bool = True) -> tuple[Any, str]:
    """(tokenizer, where it comes from) for a run config; raises TokenizerMismatch / ValueError before training."""
    data_path = _data_tokenizer_path(cfg)
    data_tok = load(data_path, "data.tokenizer") if data_path else None
    teacher_path = cfg.teacher.path if getattr(cfg, "teacher", None) is not None and cfg.teacher.path else None
    teacher_tok = None
    if teacher_path and not getattr(cfg.teacher, "cache", None) and Path(teacher_path).is_dir():
        if has_tokenizer(teacher_path):
            teacher_tok = load(teacher_path, "teacher.path")
            reference, name = (
                (data_tok, f"data.tokenizer {data_path}")
                if data_tok is not None
                else (synthetic(), "the synthetic vocabulary of the run's data")
            )
            if not same_vocabulary(teacher_tok, reference):
                raise TokenizerMismatch(
                    f"teacher.path: the teacher's tokenizer ({teacher_path}, {len(teacher_tok)} tokens) differs from "
                    f"{name} ({len(reference)} tokens); KD compares distributions token by token, so set "
                    f"data.tokenizer to the teacher's tokenizer directory (or use a teacher trained on this vocabulary)"
                )
        else:  # no tokenizer to compare: its embedding must have exactly the run tokenizer's rows
            size = len(data_tok) if data_tok is not None else len(synthetic())
            rows = _embedding_rows(Path(teacher_path))
            if rows is not None and rows != size:
                raise TokenizerMismatch(
                    f"teacher.path: {teacher_path} has no tokenizer and {rows} embedding rows, but the run's "
                    f"tokenizer has {size} tokens; without a tokenizer to compare, the teacher's vocab_size must "
                    "equal the run tokenizer's size (padded vocabularies need tokenizers on both sides that agree)"
                )
            if warn:
                warnings.warn(
                    f"teacher.path: {teacher_path} has no tokenizer; assuming it uses the run's "
                    f"({size} tokens, as many as its {rows} embedding rows)",
                    stacklevel=2,
                )
    student = getattr(cfg, "init_from", None)
    if data_tok is not None and student and Path(student).is_dir() and has_tokenizer(student):
        if not same_vocabulary(load(student, "init_from"), data_tok):
            raise TokenizerMismatch(
                f"init_from: the student's tokenizer ({student}) differs from data.tokenizer "
                f"{data_path}; the student would read other tokens than it was trained on"
            )
    if data_tok is not None:
        return data_tok, f"data.tokenizer {data_path}"
    if teacher_tok is not None:
        return teacher_tok, f"teacher {teacher_path}"
    return synthetic(), "synthetic"


def _embedding_rows(model_dir: Path) -> int | None:
    """``vocab_size`` of a model directory's config.json (None when absent; ConfigError naming a broken file)."""
    import json

    path = model_dir / "config.json"
    if not path.is_file():
        return None
    try:
        rows = json.loads(path.read_text()).get("vocab_size")
    except (ValueError, AttributeError) as exc:
        raise ConfigError(f"{path}: not a valid config.json ({exc})") from None
    return int(rows) if isinstance(rows, int) else None


def check_run(cfg) -> None:
    """Preflight: the run's tokenizer resolves and fits the student's vocabulary (ConfigError otherwise)."""
    try:
        tok, source = for_run(cfg)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    if len(tok) > cfg.model.vocab_size:
        raise ConfigError(
            f"model.vocab_size: {cfg.model.vocab_size} is smaller than the run's tokenizer "
            f"({source}, {len(tok)} tokens)"
        )


def save(tokenizer, directory: str | Path) -> None:
    """Write ``tokenizer`` into a checkpoint directory (AutoTokenizer.from_pretrained(directory) works)."""
    tokenizer.save_pretrained(str(directory))
