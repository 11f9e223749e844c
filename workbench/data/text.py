"""Real data: local text / jsonl / parquet files -> tokenised documents, with a local HF tokenizer.

No network: the tokenizer is a local directory loaded with ``local_files_only=True`` (or, with no
tokenizer, the synthetic one, for text already written in the synthetic language).

- ``text``: each file is one document, or one per non-empty line with ``options.split: lines``;
- ``jsonl``: one JSON object per line, the document is its ``options.field`` (default ``text``);
- ``parquet``: one row per document, column ``options.field`` (read with pandas + pyarrow).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from workbench.data.tokenizer import synthetic_tokenizer

SUFFIXES = {"text": (".txt", ".text", ".md"), "jsonl": (".jsonl", ".json"), "parquet": (".parquet",)}


def check_paths(kind: str, paths: list[str], where: str = "data.paths") -> list[Path]:
    """Existing files of the right kind, or one ValueError naming the bad path."""
    if not paths:
        raise ValueError(f"{where}: data kind {kind!r} needs at least one file")
    out = []
    for i, p in enumerate(paths):
        path = Path(p)
        if not path.is_file():
            raise ValueError(f"{where}[{i}]: file not found: {p}")
        if not path.name.endswith(SUFFIXES[kind]):
            raise ValueError(f"{where}[{i}]: {p} does not look like {kind} (expected {', '.join(SUFFIXES[kind])})")
        out.append(path)
    return out


def load_tokenizer(path: str | Path | None, what: str = "data.tokenizer"):
    """A local HF tokenizer directory (offline), or the synthetic tokenizer when ``path`` is None; errors name
    ``what`` (the key or flag the path came from)."""
    if path is None:
        return synthetic_tokenizer()
    if not Path(path).is_dir():
        raise ValueError(f"{what}: tokenizer directory not found: {path}")
    from transformers import AutoTokenizer  # lazy: transformers costs seconds to import

    try:
        return AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    except Exception as exc:  # transformers raises OSError/ValueError/... for a bad directory
        why = " ".join(f"{type(exc).__name__}: {exc}".split())  # transformers' messages span lines
        raise ValueError(f"{what}: {path} is not a loadable tokenizer directory ({why})") from None


def iter_texts(kind: str, paths: list[Path], options: dict[str, Any]) -> Iterator[str]:
    """The raw documents of the files, in file order."""
    field = options.get("field", "text")
    for path in paths:
        if kind == "text":
            body = _read_utf8(path)
            if options.get("split", "file") == "lines":
                yield from (line for line in body.splitlines() if line.strip())
            else:
                yield body
        elif kind == "jsonl":
            for n, line in enumerate(_read_utf8(path).splitlines(), 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise ValueError(f"{path}:{n}: not valid JSON ({exc})") from None
                if not isinstance(row, dict) or not isinstance(row.get(field), str):
                    raise ValueError(f"{path}:{n}: no string field {field!r}")
                yield row[field]
        else:
            import pandas as pd  # lazy: parquet only

            try:
                frame = pd.read_parquet(path, columns=None)
            except Exception as exc:  # pyarrow raises its own ArrowInvalid for a file that is not parquet
                raise ValueError(f"{path}: not a readable parquet file ({type(exc).__name__}: {exc})") from None
            if field not in frame.columns:
                raise ValueError(f"{path}: no column {field!r} (columns: {', '.join(map(str, frame.columns))})")
            yield from (str(t) for t in frame[field] if isinstance(t, str) and t)


def _read_utf8(path: Path) -> str:
    """A text file's content; ValueError naming the file when it is not UTF-8 text (binary garbage)."""
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ValueError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None


def tokenise_corpus(
    kind: str, paths: list[str], tokenizer_path: str | None, options: dict[str, Any]
) -> tuple[np.ndarray, np.ndarray]:
    """All documents tokenised and concatenated: (ids [N] uint32, offsets [n_docs + 1] int64) in file order.

    With ``options.add_eos`` (default true when the tokenizer has an eos token) each document ends in eos.
    Tokenised once per process for the same files (by path, size and mtime), tokenizer and options: a run's
    phases, its data checks and its consumers share one result (``workbench tokenize`` makes it once for good).
    """
    files = check_paths(kind, paths)
    stamp = tuple((str(f.resolve()), f.stat().st_size, f.stat().st_mtime_ns) for f in files)
    return _tokenise_cached(kind, stamp, tokenizer_path, json.dumps(options, sort_keys=True, default=str))


@lru_cache(maxsize=2)
def _tokenise_cached(
    kind: str, stamp: tuple, tokenizer_path: str | None, options_json: str
) -> tuple[np.ndarray, np.ndarray]:
    files, options = [Path(s[0]) for s in stamp], json.loads(options_json)
    tok = load_tokenizer(tokenizer_path)
    add_eos = options.get("add_eos", tok.eos_token_id is not None and tokenizer_path is not None)
    ids, lens = [], [0]
    for text in tqdm(iter_texts(kind, files, options), desc=f"tokenising {kind}", unit="doc"):
        toks = tok(text, add_special_tokens=False)["input_ids"]
        if add_eos:
            toks = list(toks) + [tok.eos_token_id]
        ids.append(np.asarray(toks, dtype=np.uint32))
        lens.append(len(toks))
    if not ids or sum(lens) == 0:
        raise ValueError(f"data.paths: no tokens in {', '.join(map(str, files))}")
    out, offsets = np.concatenate(ids), np.cumsum(lens, dtype=np.int64)
    out.flags.writeable = offsets.flags.writeable = False  # shared by every caller
    return out, offsets
