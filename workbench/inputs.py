"""What the model-running commands (``trace``, ``updates``, ``probe``) feed a model: one option, one rule.

Every such command takes ``--inputs FILE`` and ``--tokenizer auto|synthetic|DIR`` (:func:`add_arguments`) and
builds its batch with :func:`build`:

- the **vocabulary** of a model directory is its own tokenizer (the trainer saves one into every checkpoint),
  else ``--tokenizer DIR``; the synthetic 128-token language only where the directory's tokenizer *is* the
  synthetic vocabulary, or it has none and exactly 128 embedding rows (the workbench's own CPU models), or
  ``--tokenizer synthetic`` says so. A model with no tokenizer and another vocabulary gets one error naming
  ``--tokenizer``; a tokenizer with more tokens than the model has embedding rows gets one error too. Several
  checkpoints analysed together must share one vocabulary.
- the **inputs** are ``--inputs`` (``.pt``/``.npz`` token ids ``input_ids`` [batch, seq] with optional
  ``position_ids``/``doc_ids``; ``.txt`` text cut into consecutive windows; ``.jsonl`` documents (field
  ``text``) packed into windows with continue positions and document ids), else a generated haystack:
  synthetic models get the command's synthetic default (packed synthetic documents / seeded filler), every
  other model RULER needle-in-a-haystack prompts rendered through its own tokenizer
  (:class:`workbench.evals.render.TextRendering`, one needle per row at spread depths).

Ids from a file are checked against every model's embedding rows before any model runs, so no command ever
indexes past a vocabulary (the ``IndexError`` of a mismatched tokenizer) or silently reads another language.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from workbench import checkpoints
from workbench.budget import budget_source, memory_budget
from workbench.checkpoints import SYNTHETIC, InputError
from workbench.data import corpus
from workbench.data.text import iter_texts
from workbench.evals import tasks
from workbench.evals.render import TextRendering
from workbench.interventions.traces import default_inputs

TEXT_SUFFIXES = (".txt", ".text", ".md")
JSONL_SUFFIXES = (".jsonl",)
ID_SUFFIXES = (".pt", ".npz")

INPUTS_HELP = (
    "token ids (.pt/.npz with input_ids [batch, seq], optional position_ids, doc_ids) or text "
    "(.txt: cut into consecutive windows; .jsonl: documents in field 'text' packed into windows, "
    "continue positions) read with the model's tokenizer, or a token corpus directory (workbench "
    "tokenize); default: a generated needle-in-a-haystack text rendered through the model's own "
    "tokenizer (the synthetic language for synthetic-vocabulary models)"
)
TOKENIZER_HELP = (
    "'auto' (the model directory's own tokenizer; the synthetic language only for a 128-row model "
    "without one), 'synthetic', or a local tokenizer directory (for a model saved without one)"
)


def add_arguments(p, *, inputs_default: str | None = None) -> None:
    """``--inputs`` and ``--tokenizer`` for a command parser (the same in trace, updates and probe)."""
    p.add_argument("--inputs", default=inputs_default, metavar="FILE", help=INPUTS_HELP)
    p.add_argument("--tokenizer", default="auto", metavar="auto|synthetic|DIR", help=TOKENIZER_HELP)


# ------------------------------------------------------------------------------------------- vocabulary


@dataclass
class Vocabulary:
    """The tokenizer a set of model directories is read with."""

    tokenizer: Any  # a HF tokenizer (the synthetic one included)
    synthetic: bool
    source: str  # "synthetic" or the tokenizer directory
    vocab_size: int  # the smallest embedding-row count of the models (ids must stay below it)


def resolve(paths: Sequence[str | Path], choice: str = "auto") -> Vocabulary:
    """The one vocabulary of several model directories (InputError when they differ or one has none)."""
    if not paths:
        raise InputError("no model directories given")
    first_tok, first_src, first = None, None, None
    sizes = []
    for path in paths:
        tok, src = checkpoints.tokenizer(path, choice)
        sizes.append(checkpoints.vocab_size(path))
        if first_tok is None:
            first_tok, first_src, first = tok, src, path
        elif src != first_src and tok.get_vocab() != first_tok.get_vocab():
            raise InputError(
                f"{path}: its tokenizer ({src}, {len(tok)} tokens) differs from {first}'s ({first_src}, "
                f"{len(first_tok)} tokens); analyse checkpoints of different vocabularies in separate "
                "calls (or pass --tokenizer DIR if one was saved without its own)"
            )
    return Vocabulary(first_tok, first_src == SYNTHETIC, first_src, min(sizes))


# ---------------------------------------------------------------------------------------------- inputs


def haystack(tokenizer, *, seq_len: int, batch: int, seed: int = 0, start: int = 0) -> dict[str, torch.Tensor]:
    """``batch`` needle-in-a-haystack prompts of exactly ``seq_len`` tokens rendered through ``tokenizer``
    (RULER text, one needle per row at evenly spread depths); windows too short for a needle are plain
    instruction + filler text. Positions ``start .. start + seq_len - 1``."""
    rendering = TextRendering(tokenizer)
    rows = []
    for i in range(batch):
        depth = 100.0 * (i + 0.5) / batch
        try:
            ids = list(tasks.make_sample("niah", seq_len, depth, rendering, seed=seed, index=i).input_ids)
        except (ValueError, AssertionError):
            prefix = rendering.prefix("niah")[: max(0, seq_len // 2)]
            ids = prefix + rendering.filler(np.random.default_rng(seed), seq_len - len(prefix), i)
        rows.append(ids[:seq_len])
    ids = torch.tensor(rows, dtype=torch.long)
    return {"input_ids": ids, "position_ids": torch.arange(start, start + seq_len).expand(batch, -1).contiguous()}


def _read_ids(path: Path) -> dict[str, torch.Tensor]:
    if path.suffix == ".npz":
        try:
            data = dict(np.load(path))
        except Exception as exc:  # numpy raises several types for a damaged file
            raise InputError(f"--inputs {path}: not a readable .npz file ({type(exc).__name__}: {exc})") from None
    else:
        try:
            data = torch.load(path, weights_only=True)
        except Exception as exc:
            raise InputError(f"--inputs {path}: not a readable .pt tensor file ({type(exc).__name__}: {exc})") from None
        data = {"input_ids": data} if isinstance(data, torch.Tensor) else dict(data)
    if "input_ids" not in data:
        raise InputError(f"--inputs {path}: no 'input_ids' in it (has {sorted(data)})")
    out = {
        k: torch.as_tensor(np.asarray(v)).long()
        for k, v in data.items()
        if k in ("input_ids", "position_ids", "doc_ids")
    }
    if out["input_ids"].ndim == 1:
        out = {k: v[None] for k, v in out.items()}
    return out


def _documents(path: Path) -> list[str]:
    kind = "jsonl" if path.suffix in JSONL_SUFFIXES else "text"
    try:
        docs = [t for t in iter_texts(kind, [path], {"field": "text"}) if t.strip()]
    except ValueError as exc:
        raise InputError(f"--inputs {exc}") from None
    except UnicodeDecodeError:
        raise InputError(f"--inputs {path}: not UTF-8 text") from None
    if not docs:
        raise InputError(f"--inputs {path}: no text in it")
    return docs


def _windows(path: Path, tokenizer, source: str, *, seq_len: int, batch: int, start: int) -> dict[str, torch.Tensor]:
    """Text -> ``batch`` consecutive windows of ``seq_len`` tokens (documents packed, continue positions)."""
    ids: list[int] = []
    doc: list[int] = []
    for i, text in enumerate(_documents(path)):
        toks = list(tokenizer(text, add_special_tokens=False)["input_ids"])
        if path.suffix in JSONL_SUFFIXES and tokenizer.eos_token_id is not None and source != SYNTHETIC:
            toks.append(tokenizer.eos_token_id)
        ids += toks
        doc += [i] * len(toks)
    need = seq_len * batch
    if len(ids) < need:
        raise InputError(
            f"--inputs {path}: {len(ids)} tokens with tokenizer {source}, but {batch} window(s) of "
            f"{seq_len} tokens need {need}; give a longer text or a smaller length / batch"
        )
    x = torch.tensor(ids[:need], dtype=torch.long).view(batch, seq_len)
    d = torch.tensor(doc[:need], dtype=torch.long).view(batch, seq_len)
    d = d - d[:, :1]  # document ids per window from 0
    return {
        "input_ids": x,
        "position_ids": torch.arange(start, start + seq_len).expand(batch, -1).contiguous(),
        "doc_ids": d,
    }


def _corpus_windows(
    path: Path, vocabulary: Vocabulary, *, seq_len: int, batch: int, seed: int, start: int
) -> dict[str, torch.Tensor]:
    """A token corpus (``workbench tokenize``) -> ``batch`` windows from its memory-map (continue positions, document
    ids); refused when the corpus was tokenised with another vocabulary than the model's tokenizer."""
    try:
        source = corpus.open_corpus(path, "--inputs")
        if vocabulary.tokenizer is not None:
            corpus.check_tokenizer(
                source.manifest,
                vocabulary.tokenizer,
                f"the model's tokenizer ({vocabulary.source})",
                f"--inputs {path}",
            )
    except ValueError as exc:
        raise InputError(str(exc)) from None
    windows = corpus.Windows(source, seq_len, seed, 0, "continue")
    if windows.per_epoch < batch:
        raise InputError(
            f"--inputs {path}: {source.n_tokens} tokens hold {windows.per_epoch} window(s) of {seq_len}, "
            f"{batch} asked; give a larger corpus or a smaller length / batch"
        )
    rows = [windows(k) for k in range(batch)]
    out = {k: torch.as_tensor(np.stack([r[k] for r in rows])) for k in ("input_ids", "doc_ids")}
    out["position_ids"] = torch.arange(start, start + seq_len).expand(batch, -1).contiguous()
    return out


def check_ids(batch: Mapping[str, torch.Tensor], vocab_size: int, where: str) -> None:
    """Shapes and id ranges of a batch (InputError naming ``where``)."""
    ids = batch["input_ids"]
    if ids.ndim != 2 or ids.shape[1] < 2 or ids.shape[0] < 1:
        raise InputError(f"{where}: input_ids must be [batch, seq] with seq >= 2, got shape {tuple(ids.shape)}")
    for key in ("position_ids", "doc_ids"):
        if key in batch and tuple(batch[key].shape) != tuple(ids.shape):
            raise InputError(
                f"{where}: {key} shape {tuple(batch[key].shape)} differs from input_ids {tuple(ids.shape)}"
            )
    if "position_ids" in batch and int(batch["position_ids"].min()) < 0:
        raise InputError(f"{where}: negative position_ids")
    lo, hi = int(ids.min()), int(ids.max())
    if lo < 0 or hi >= vocab_size:
        raise InputError(
            f"{where}: token ids span {lo}..{hi} but the model has {vocab_size} embedding rows; these "
            "ids come from another tokenizer (give ids of the model's own tokenizer, or text)"
        )


def build(
    spec: str | None,
    vocabulary: Vocabulary,
    *,
    seq_len: int,
    batch: int,
    seed: int = 0,
    start: int = 0,
    synthetic_default: Callable[[], Mapping[str, torch.Tensor]] | None = None,
) -> tuple[dict[str, torch.Tensor], str]:
    """(batch of input_ids / position_ids [/ doc_ids], one-line description for the store's attrs)."""
    if seq_len < 2 or batch < 1:
        raise InputError(
            f"inputs: length {seq_len} and batch {batch}: the inputs need a length >= 2 and a batch >= 1 "
            "(--length / --seq-len, --samples / --windows)"
        )
    if spec is None:
        if vocabulary.synthetic and synthetic_default is not None:
            out, what = dict(synthetic_default()), "synthetic language (the model's vocabulary)"
        elif vocabulary.synthetic:
            out, what = (
                default_inputs(vocabulary.vocab_size, batch=batch, length=seq_len, seed=seed, start=start),
                "synthetic language filler",
            )
        else:
            out = haystack(vocabulary.tokenizer, seq_len=seq_len, batch=batch, seed=seed, start=start)
            what = f"generated RULER needle-in-a-haystack text, tokenizer {vocabulary.source}"
    else:
        path = Path(spec)
        if path.is_dir() and (path / corpus.MANIFEST).is_file():
            out = _corpus_windows(path, vocabulary, seq_len=seq_len, batch=batch, seed=seed, start=start)
            what = f"token corpus {path}, {batch} window(s) in seeded order (seed {seed})"
        elif not path.is_file():
            raise InputError(f"--inputs {path}: file not found")
        elif path.suffix in ID_SUFFIXES:
            out, what = _read_ids(path), f"token ids from {path}"
        elif path.suffix in TEXT_SUFFIXES + JSONL_SUFFIXES:
            out = _windows(path, vocabulary.tokenizer, vocabulary.source, seq_len=seq_len, batch=batch, start=start)
            what = f"text from {path}, tokenizer {vocabulary.source}"
        else:
            raise InputError(
                f"--inputs {path}: expected token ids (.pt, .npz) or text ({', '.join(TEXT_SUFFIXES + JSONL_SUFFIXES)})"
            )
    check_ids(out, vocabulary.vocab_size, f"--inputs {spec}" if spec else "default inputs")
    return out, what


def check_fits(
    paths: Sequence[str | Path], vocabulary: Vocabulary, *, seq_len: int, batch: int, device: str = "cpu"
) -> None:
    """Refuse, before any input is built or model loaded, a batch whose forward cannot fit: a lower bound of
    its memory is the fp32 logits plus two residual streams, ``batch x seq_len x (vocab + 2 x hidden) x 4``
    bytes, against the same budget as the TransformerLens length check (``memory_budget``)."""
    hidden = max(int(checkpoints.inspect(p, verify=False).config.get("hidden_size", 0) or 0) for p in paths)
    need = batch * seq_len * (vocabulary.vocab_size + 2 * hidden) * 4
    budget = memory_budget(device)
    if need > budget:
        fits = budget // (batch * (vocabulary.vocab_size + 2 * hidden) * 4)
        raise InputError(
            f"inputs: {batch} x {seq_len:,} tokens need at least {need / 2**30:.1f} GiB (logits and "
            f"residual streams) but the budget is {budget / 2**30:.1f} GiB ({budget_source(device)}); "
            f"at most about {fits:,} tokens per row fit: lower --length / --seq-len or the batch"
        )


def for_models(
    paths: Sequence[str | Path],
    args,
    *,
    seq_len: int,
    batch: int,
    seed: int = 0,
    start: int = 0,
    synthetic_default: Callable[[], Mapping[str, torch.Tensor]] | None = None,
) -> tuple[dict[str, torch.Tensor], str]:
    """:func:`resolve` + :func:`build` from a command's ``--inputs`` / ``--tokenizer`` arguments."""
    vocabulary = resolve(paths, getattr(args, "tokenizer", "auto") or "auto")
    check_fits(paths, vocabulary, seq_len=seq_len, batch=batch, device=getattr(args, "device", "cpu") or "cpu")
    return build(
        getattr(args, "inputs", None),
        vocabulary,
        seq_len=seq_len,
        batch=batch,
        seed=seed,
        start=start,
        synthetic_default=synthetic_default,
    )
