"""Padded vocabularies: a teacher and a student that share one tokenizer but pad their embedding matrices to
different row counts (32000 vs 32064, 151936 vs 152064) distil over the tokenizer's real vocabulary.

The rows beyond the tokenizer are never a target and never an input, so their logits are dropped from both
sides before the softmax (``LossSpec.kd_vocab_size``). Any other row mismatch (another tokenizer, a tokenizer
larger than either embedding) stays one ConfigError before training.
"""

from __future__ import annotations

from workbench import tokenizers
from workbench.config import ConfigError


def kd_vocab_size(cfg, teacher_rows: int | None, where: str = "teacher.path") -> int | None:
    """None when teacher and student have the same rows; the tokenizer's size when both pad it; else ConfigError."""
    student_rows = int(cfg.model.vocab_size)
    if teacher_rows is None or int(teacher_rows) == student_rows:
        return None
    try:
        tok, source = tokenizers.for_run(cfg, warn=False)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    n = len(tok)
    if n <= min(student_rows, int(teacher_rows)):
        return n
    raise ConfigError(
        f"{where}: teacher vocab_size {teacher_rows} differs from the student's model.vocab_size "
        f"{student_rows} and the run's tokenizer ({source}, {n} tokens) is larger than one of them, so "
        "they are not one vocabulary padded differently; KD needs one vocabulary (use a teacher trained "
        "with the run's tokenizer, or set model.vocab_size to cover it)"
    )
