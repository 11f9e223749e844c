"""Token corpora: documents tokenised once into memory-mapped shards, read by every rank without copying.

A *token corpus* is a directory:

- ``tokens-NNNNN.bin``: the token ids of all documents, concatenated, raw little-endian ``uint16`` (vocabulary
  <= 65,536) or ``uint32``; read with ``np.memmap`` (nanoGPT's ``.bin`` files, Megatron's indexed datasets);
- ``offsets.npy``: int64 [n_docs + 1], the global start of every document and the total token count last;
- ``tokenizer/``: the tokenizer the ids come from (``save_pretrained``), so the corpus is self-contained;
- ``manifest.json``: tokenizer (name, vocabulary size, sha256 of its files and of its vocabulary), sources (path,
  size, sha256), token and document counts, the largest id, a document-length histogram, the eos policy,
  ``max_doc_tokens`` / ``min_doc_tokens``, and a fingerprint of all inputs (a rerun with the same fingerprint reuses
  the corpus);
- ``val/``: with ``--val-fraction``, the held-out documents as a corpus of their own.

Writes are atomic: everything goes to ``.NAME.tmp-PID`` beside the target (the Hugging Face ``datasets`` cache
included) and is renamed into place at the end, so a killed run leaves nothing that looks like a corpus.

*Short documents* (``max_doc_tokens``): every document is cut into consecutive segments of at most that many
tokens, each its own document; ``min_doc_tokens`` drops shorter fragments. At tokenise time the offsets are
written cut; as a data option of a run they are applied on the fly to a corpus's offsets (``Windows``).
"""

from __future__ import annotations

import hashlib
import json
import mmap
import os
import shutil
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from workbench.data.packing import IGNORE, position_ids
from workbench.data.text import load_tokenizer
from workbench.runlock import pid_alive

FORMAT = "workbench-token-corpus/1"
MANIFEST = "manifest.json"
OFFSETS = "offsets.npy"
TOKENIZER_DIR = "tokenizer"
SHARD = "tokens-{:05d}.bin"
SHARD_TOKENS = 1 << 30  # tokens per shard (2 GiB of uint16)
FOLIO = 1 << 21  # the largest page-cache folio a map may fault in (bytes); see _release
READERS = {".txt": "text", ".text": "text", ".md": "text", ".jsonl": "json", ".json": "json", ".parquet": "parquet"}


# ------------------------------------------------------------------------------------------- hashing


def sha256_file(path: str | Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def tokenizer_files_hash(directory: str | Path) -> str:
    """sha256 over the tokenizer's files (names and bytes; model weights and configs excluded)."""
    h = hashlib.sha256()
    for p in sorted(Path(directory).iterdir()):
        if p.is_file() and ("token" in p.name or p.name in ("vocab.json", "merges.txt", "vocab.txt")):
            h.update(p.name.encode())
            h.update(sha256_file(p).encode())
    return h.hexdigest()


def vocabulary_hash(tokenizer) -> str:
    """sha256 of a tokenizer's vocabulary (tokens and ids, specials included): equal iff the ids mean the same."""
    vocab = sorted(tokenizer.get_vocab().items(), key=lambda kv: kv[1])
    return hashlib.sha256(json.dumps(vocab, ensure_ascii=False).encode()).hexdigest()


# -------------------------------------------------------------------------------------- short documents


def segments(
    offsets: np.ndarray, max_doc_tokens: int | None = None, min_doc_tokens: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """(starts, lengths) of the documents of ``offsets`` [n_docs + 1] cut into consecutive segments of at most
    ``max_doc_tokens`` (None: uncut), segments shorter than ``min_doc_tokens`` dropped. int64 [n_segments] each."""
    offsets = np.asarray(offsets, dtype=np.int64)
    starts, lens = offsets[:-1], np.diff(offsets)
    if max_doc_tokens:
        n = -(-lens // max_doc_tokens)  # segments per document
        first = np.repeat(np.cumsum(n) - n, n)
        within = np.arange(int(n.sum()), dtype=np.int64) - first  # segment index inside its document
        doc_start, doc_len = np.repeat(starts, n), np.repeat(lens, n)
        starts = doc_start + within * max_doc_tokens
        lens = np.minimum(max_doc_tokens, doc_len - within * max_doc_tokens)
    keep = lens >= max(min_doc_tokens, 1)
    return starts[keep], lens[keep]


def check_doc_options(options: dict[str, Any], where: str = "data.options") -> tuple[int | None, int]:
    """(max_doc_tokens or None, min_doc_tokens) from a data config's options; ValueError naming a bad value."""
    mx, mn = options.get("max_doc_tokens"), options.get("min_doc_tokens", 0)
    if mx is not None and (isinstance(mx, bool) or not isinstance(mx, int) or mx < 1):
        raise ValueError(f"{where}.max_doc_tokens: need an integer >= 1 (or null), got {mx!r}")
    if isinstance(mn, bool) or not isinstance(mn, int) or mn < 0:
        raise ValueError(f"{where}.min_doc_tokens: need an integer >= 0, got {mn!r}")
    if mx is not None and mn > mx:
        raise ValueError(f"{where}.min_doc_tokens: {mn} is larger than max_doc_tokens {mx}: every document dropped")
    return mx, mn


# ------------------------------------------------------------------------------------------- writing


class CorpusWriter:
    """Appends documents to token shards in ``directory`` and writes ``offsets.npy`` at ``close()``.

    ``add(docs)`` takes a batch of token id sequences; each is cut into ``max_doc_tokens`` segments and fragments
    shorter than ``min_doc_tokens`` are dropped before they are written. Only the offsets live in memory.
    """

    def __init__(
        self,
        directory: str | Path,
        vocab_size: int,
        *,
        max_doc_tokens: int | None = None,
        min_doc_tokens: int = 0,
        shard_tokens: int = SHARD_TOKENS,
    ):
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.dtype = np.dtype(np.uint16 if vocab_size <= 1 << 16 else np.uint32)
        self.max_doc_tokens, self.min_doc_tokens, self.shard_tokens = max_doc_tokens, min_doc_tokens, shard_tokens
        self.offsets: list[np.ndarray] = [np.zeros(1, dtype=np.int64)]
        self.n_tokens, self.dropped_tokens, self.shards = 0, 0, []
        self.max_id = -1  # the largest id written (the readers' bound: a larger one is a damaged shard)
        self._file, self._in_shard = None, 0

    def _write(self, ids: np.ndarray) -> None:
        while len(ids):
            if self._file is None or self._in_shard == self.shard_tokens:
                if self._file is not None:
                    self._file.close()
                self.shards.append(SHARD.format(len(self.shards)))
                self._file, self._in_shard = open(self.dir / self.shards[-1], "wb"), 0
            take = min(len(ids), self.shard_tokens - self._in_shard)
            self._file.write(ids[:take].astype(self.dtype.newbyteorder("<"), copy=False).tobytes())
            self._in_shard += take
            ids = ids[take:]

    def add(self, docs: Iterable[Sequence[int] | np.ndarray]) -> None:
        arrays = [np.asarray(d, dtype=np.int64) for d in docs]
        if not arrays:
            return
        lens = np.array([len(a) for a in arrays], dtype=np.int64)
        flat = np.concatenate(arrays) if len(arrays) > 1 else arrays[0]
        if flat.size and (flat.min() < 0 or flat.max() > np.iinfo(self.dtype).max):
            raise ValueError(f"token ids outside [0, {np.iinfo(self.dtype).max}] for a {self.dtype} corpus")
        self.max_id = max(self.max_id, int(flat.max())) if flat.size else self.max_id
        starts, seg_lens = segments(np.r_[0, np.cumsum(lens)], self.max_doc_tokens, self.min_doc_tokens)
        kept = int(seg_lens.sum())
        self.dropped_tokens += int(lens.sum()) - kept
        if kept == len(flat):
            self._write(flat)
        else:
            self._write(np.concatenate([flat[s : s + n] for s, n in zip(starts, seg_lens)]))
        self.offsets.append(self.n_tokens + np.cumsum(seg_lens))
        self.n_tokens += kept

    def close(self) -> np.ndarray:
        """Flush the last shard and write ``offsets.npy``; returns the offsets."""
        if self._file is not None:
            self._file.close()
        if not self.shards:  # an empty corpus still has one (empty) shard
            self.shards.append(SHARD.format(0))
            (self.dir / self.shards[0]).touch()
        offsets = np.concatenate(self.offsets)
        np.save(self.dir / OFFSETS, offsets)
        return offsets


def histogram(offsets: np.ndarray) -> dict[str, int]:
    """Document lengths in power-of-two bins, ``"lo-hi"`` (tokens, hi exclusive) -> count."""
    lens = np.diff(np.asarray(offsets, dtype=np.int64))
    if not len(lens):
        return {}
    bins = np.floor(np.log2(np.maximum(lens, 1))).astype(np.int64)
    return {f"{1 << int(b)}-{1 << (int(b) + 1)}": int(c) for b, c in zip(*np.unique(bins, return_counts=True))}


def write_manifest(directory: str | Path, offsets: np.ndarray, writer: CorpusWriter, extra: dict[str, Any]) -> dict:
    lens = np.diff(offsets)
    manifest = {
        "format": FORMAT,
        "dtype": writer.dtype.name,
        "shards": writer.shards,
        "n_tokens": int(writer.n_tokens),
        "n_docs": int(len(lens)),
        "dropped_tokens": writer.dropped_tokens,
        "max_id": writer.max_id,
        "doc_tokens": {
            "min": int(lens.min()) if len(lens) else 0,
            "max": int(lens.max()) if len(lens) else 0,
            "mean": float(lens.mean()) if len(lens) else 0.0,
        },
        "doc_length_histogram": histogram(offsets),
        "max_doc_tokens": writer.max_doc_tokens,
        "min_doc_tokens": writer.min_doc_tokens,
        **extra,
    }
    (Path(directory) / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


# ------------------------------------------------------------------------------------------- reading


@dataclass
class Corpus:
    """Token ids (one array per shard: memmaps for a corpus directory) and global document offsets."""

    shards: list[np.ndarray]
    offsets: np.ndarray  # int64 [n_docs + 1]
    manifest: dict[str, Any]
    path: Path | None = None

    def __post_init__(self):
        self.bounds = np.r_[0, np.cumsum([len(s) for s in self.shards])].astype(np.int64)

    @property
    def n_tokens(self) -> int:
        return int(self.bounds[-1])

    def tokens(self, start: int, end: int) -> np.ndarray:
        """int64 copy of the global token range [start, end) (may span shards); only those pages are read."""
        out, i = [], int(np.searchsorted(self.bounds, start, side="right")) - 1
        while start < end:
            stop = min(end, int(self.bounds[i + 1]))
            lo, hi = start - int(self.bounds[i]), stop - int(self.bounds[i])
            out.append(self.shards[i][lo:hi].astype(np.int64))
            _release(self.shards[i], lo, hi)
            start, i = stop, i + 1
        return np.concatenate(out) if out else np.zeros(0, dtype=np.int64)

    def release(self) -> None:
        """Unmap the offsets pages binary searches touched (they stay in the page cache, not in this process)."""
        _release(self.offsets, 0, len(self.offsets))


def read_manifest(path: str | Path, where: str = "data.paths[0]") -> dict[str, Any]:
    """A complete corpus's manifest, or ValueError naming what is missing."""
    path = Path(path)
    if not path.is_dir():
        raise ValueError(f"{where}: token corpus directory not found: {path} (make one with `workbench tokenize`)")
    mfile = path / MANIFEST
    if not mfile.is_file():
        raise ValueError(
            f"{where}: {path} has no {MANIFEST}: not a token corpus, or an incomplete one "
            "(make one with `workbench tokenize`)"
        )
    try:
        manifest = json.loads(mfile.read_text())
    except (ValueError, UnicodeDecodeError) as exc:
        raise ValueError(f"{where}: {mfile}: not a JSON manifest ({exc}); a damaged corpus") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        got = manifest.get("format") if isinstance(manifest, dict) else type(manifest).__name__
        raise ValueError(f"{where}: {path}: format {got!r}, expected {FORMAT!r}")
    shards = manifest.get("shards")
    # the shard names the writer gives, nothing else: a manifest never points a reader outside its directory
    if not isinstance(shards, list) or not shards or shards != [SHARD.format(i) for i in range(len(shards))]:
        raise ValueError(f"{where}: {mfile}: shards {shards!r} are not {SHARD.format(0)}, ... (a damaged corpus)")
    if manifest.get("dtype") not in ("uint16", "uint32"):
        raise ValueError(f"{where}: {mfile}: dtype {manifest.get('dtype')!r}, expected uint16 or uint32")
    tok = manifest.get("tokenizer")
    if not (isinstance(tok, dict) and {"name", "vocab_size", "vocab_sha256"} <= tok.keys()):
        raise ValueError(f"{where}: {mfile}: no tokenizer name, vocab_size and vocab_sha256 (a damaged corpus)")
    for name in shards + [OFFSETS]:
        if not (path / name).is_file():
            raise ValueError(f"{where}: {path} lacks {name} (an incomplete corpus)")
    return manifest


def open_corpus(path: str | Path, where: str = "data.paths[0]") -> Corpus:
    """Memory-map a corpus directory: nothing is read until a window asks for its tokens."""
    path = Path(path)
    manifest = read_manifest(path, where)
    dtype = np.dtype(manifest["dtype"]).newbyteorder("<")
    for name in manifest["shards"]:
        if (path / name).stat().st_size % dtype.itemsize:
            raise ValueError(f"{where}: {path / name}: not a whole number of {dtype.name} tokens (a damaged corpus)")
    shards = [
        np.memmap(path / name, dtype=dtype, mode="r") if (path / name).stat().st_size else np.zeros(0, dtype=dtype)
        for name in manifest["shards"]
    ]
    try:
        offsets = np.load(path / OFFSETS, mmap_mode="r")
    except (ValueError, OSError, EOFError) as exc:
        raise ValueError(f"{where}: {path / OFFSETS}: not a readable offsets array ({exc}); a damaged corpus") from None
    for array in shards + [offsets]:
        _random_access(array)
    n_tokens = sum(len(s) for s in shards)
    if offsets.dtype != np.int64 or offsets.ndim != 1 or len(offsets) == 0 or int(offsets[0]) != 0:
        raise ValueError(
            f"{where}: {path / OFFSETS}: need int64 [n_docs + 1] starting at 0, got {offsets.dtype} "
            f"{tuple(offsets.shape)} (a damaged corpus)"
        )
    if int(offsets[-1]) != n_tokens:
        raise ValueError(
            f"{where}: {path}: offsets end at {int(offsets[-1])} but the shards hold {n_tokens} tokens "
            "(a damaged corpus)"
        )
    for lo in range(0, len(offsets) - 1, 1 << 20):  # in chunks: memory stays flat in the number of documents
        chunk = np.asarray(offsets[lo : lo + (1 << 20) + 1])
        if (chunk[1:] < chunk[:-1]).any():
            raise ValueError(f"{where}: {path / OFFSETS}: document offsets decrease (a damaged corpus)")
    _release(offsets, 0, len(offsets))
    return Corpus(shards, offsets, manifest, path)


def _random_access(array: np.ndarray) -> None:
    """Tell the kernel a map is read at random (no readahead): a window's read faults in its own pages, not the
    megabytes around them, so resident memory grows with the windows read, not with the corpus."""
    raw = getattr(array, "_mmap", None)
    if raw is not None and hasattr(mmap, "MADV_RANDOM"):
        raw.madvise(mmap.MADV_RANDOM)


def _release(array: np.ndarray, lo: int, hi: int) -> None:
    """Drop the pages of elements [lo, hi) of a read-only memory map from this process's resident set (MADV_DONTNEED;
    the kernel's page cache keeps them): resident memory stays that of the windows in flight, whatever the corpus
    size and however many windows a run reads. A no-op for arrays in RAM."""
    raw = getattr(array, "_mmap", None)
    if raw is None or not hasattr(mmap, "MADV_DONTNEED") or hi <= lo:
        return
    skip = array.offset if isinstance(array, np.memmap) else 0  # the .npy header before the data
    a = skip + lo * array.itemsize
    b = skip + hi * array.itemsize
    a -= a % FOLIO  # whole (large) folios: a partial range can leave a 2 MiB folio mapped
    b = min(len(raw), b + (-b) % FOLIO)
    raw.madvise(mmap.MADV_DONTNEED, a, b - a)


def in_memory(ids: np.ndarray, offsets: np.ndarray) -> Corpus:
    """A corpus held in RAM (the text kinds, tokenised at the start of a run)."""
    return Corpus([ids], np.asarray(offsets, dtype=np.int64), {})


def tokenizer_dir(corpus_path: str | Path) -> Path:
    return Path(corpus_path) / TOKENIZER_DIR


# ------------------------------------------------------------------------------------------- windows


class Windows:
    """Window ``k`` of a corpus for a stream: shuffled per epoch (seeded), documents cut on the fly.

    Windows are consecutive ``seq_len`` slices of the corpus's token stream, visited in a fresh seeded order each
    epoch. Without ``min_doc_tokens`` the stream is the corpus itself and a window's document boundaries come from
    a binary search of the (memory-mapped) offsets plus the ``max_doc_tokens`` cuts: memory stays independent of
    the corpus size. With ``min_doc_tokens`` the dropped fragments leave the stream, which needs the table of kept
    segments (16 bytes a segment; cut at tokenise time to avoid it).
    """

    def __init__(
        self,
        corpus: Corpus,
        seq_len: int,
        seed: int,
        salt: int,
        positions: str,
        max_doc_tokens: int | None = None,
        min_doc_tokens: int = 0,
    ):
        self.corpus, self.seq_len, self.seed, self.salt, self.positions = corpus, seq_len, seed, salt, positions
        self.max_doc_tokens = max_doc_tokens
        self.max_id = corpus.manifest.get("max_id")  # corpora written before it was recorded: not checked
        self.kept = None
        n = corpus.n_tokens
        if min_doc_tokens > 1:
            starts, lens = segments(corpus.offsets, max_doc_tokens, min_doc_tokens)
            self.kept = (starts, np.r_[0, np.cumsum(lens)])
            n = int(self.kept[1][-1])
        self.per_epoch = n // seq_len
        self._order: tuple[int, np.ndarray] | None = None

    def order(self, epoch: int) -> np.ndarray:
        if self._order is None or self._order[0] != epoch:
            self._order = (epoch, np.random.default_rng([self.seed, self.salt, epoch]).permutation(self.per_epoch))
        return self._order[1]

    def _plain(self, a: int) -> tuple[np.ndarray, np.ndarray]:
        """Tokens and document-start flags of stream range [a, a + seq_len) of the uncut-by-min stream."""
        b = a + self.seq_len
        offsets = self.corpus.offsets
        lo = int(np.searchsorted(offsets, a, side="right")) - 1
        hi = int(np.searchsorted(offsets, b, side="left"))
        doc_starts = np.asarray(offsets[lo : max(hi, lo + 1)], dtype=np.int64)  # the starts <= each token
        t = np.arange(a, b, dtype=np.int64)
        rel = t - doc_starts[np.searchsorted(doc_starts, t, side="right") - 1]
        start = rel == 0
        if self.max_doc_tokens:
            start |= rel % self.max_doc_tokens == 0
        return self.corpus.tokens(a, b), start

    def _kept(self, a: int) -> tuple[np.ndarray, np.ndarray]:
        seg_starts, cum = self.kept
        b, pieces, start = a + self.seq_len, [], np.zeros(self.seq_len, dtype=bool)
        i = int(np.searchsorted(cum, a, side="right")) - 1
        pos = a
        while pos < b:
            lo, hi = pos - cum[i], min(b, cum[i + 1]) - cum[i]
            if lo == 0:
                start[pos - a] = True
            pieces.append(self.corpus.tokens(int(seg_starts[i] + lo), int(seg_starts[i] + hi)))
            pos, i = int(cum[i] + hi), i + 1
        return np.concatenate(pieces), start

    def __call__(self, k: int) -> dict[str, np.ndarray]:
        epoch, i = divmod(k, self.per_epoch)
        a = int(self.order(epoch)[i]) * self.seq_len
        ids, start = self._kept(a) if self.kept is not None else self._plain(a)
        if self.max_id is not None and len(ids) and int(ids.max()) > self.max_id:
            raise ValueError(
                f"{self.corpus.path}: window {k} holds token id {int(ids.max())}, beyond the largest id "
                f"{self.max_id} the corpus was written with (a damaged shard); re-tokenise it"
            )
        self.corpus.release()
        start[0] = True
        doc_ids = np.cumsum(start, dtype=np.int64) - 1
        return {
            "input_ids": ids,
            "labels": np.where(start, IGNORE, ids),
            "doc_ids": doc_ids,
            "position_ids": position_ids(doc_ids, self.positions),
        }


# ------------------------------------------------------------------------------------------- tokenising


def source_kind(path: Path, kind: str | None = None) -> str:
    """The ``datasets`` builder for a source file (text / json / parquet), or ``disk`` for a saved dataset."""
    if path.is_dir():
        if (
            (path / "dataset_info.json").is_file()
            or (path / "dataset_dict.json").is_file()
            or (path / "state.json").is_file()
        ):
            return "disk"
        raise ValueError(f"{path}: a directory but not a Hugging Face dataset saved with save_to_disk")
    if kind:
        return {"jsonl": "json"}.get(kind, kind)
    suffix = path.suffix.lower()
    if suffix not in READERS:
        raise ValueError(f"{path}: unknown file type {suffix!r} (expected {', '.join(sorted(READERS))}, or --kind)")
    return READERS[suffix]


def describe_sources(paths: Sequence[str | Path]) -> list[dict[str, Any]]:
    """Path, size and sha256 of every source file (every file of a saved dataset directory; a link found there
    that leads outside the directory is not read: save_to_disk writes none, and nothing outside what the user named
    is read or hashed)."""
    out = []
    for p in map(Path, paths):
        inside = p.resolve()
        files = (
            sorted(f for f in p.rglob("*") if f.is_file() and f.resolve().is_relative_to(inside)) if p.is_dir() else [p]
        )
        for f in files:
            out.append({"path": str(f), "bytes": f.stat().st_size, "sha256": sha256_file(f)})
    return out


def _load_dataset(path: Path, builder: str, field: str, split_lines: bool, cache_dir: Path):
    """One source as a ``datasets.Dataset`` with a string column ``field`` (offline; cache under ``cache_dir``)."""
    import datasets  # lazy: datasets imports pyarrow and pandas, seconds

    datasets.config.HF_DATASETS_OFFLINE = datasets.config.HF_HUB_OFFLINE = True  # local files only, never the Hub
    datasets.disable_progress_bars()
    if builder == "disk":
        ds = datasets.load_from_disk(str(path))
        if isinstance(ds, datasets.DatasetDict):
            if "train" not in ds:
                raise ValueError(f"{path}: a DatasetDict without a 'train' split (splits: {', '.join(ds)})")
            ds = ds["train"]
    elif builder == "text":
        ds = datasets.load_dataset(
            "text",
            data_files=[str(path)],
            split="train",
            cache_dir=str(cache_dir),
            sample_by="line" if split_lines else "document",
        )
        field = "text"
    else:
        ds = datasets.load_dataset(builder, data_files=[str(path)], split="train", cache_dir=str(cache_dir))
    if field not in ds.column_names:
        raise ValueError(f"{path}: no column {field!r} (columns: {', '.join(ds.column_names)}); set --field")
    return ds.select_columns([field]).rename_column(field, "text") if field != "text" else ds.select_columns(["text"])


def _read_source(path: Path, builder: str, field: str, split_lines: bool, cache_dir: Path):
    """:func:`_load_dataset`, its failures one ValueError naming the file and the root cause (datasets wraps a
    non-UTF-8 text file, a file of another type or an empty one in its own errors, none naming the file)."""
    import datasets

    datasets.logging.set_verbosity(datasets.logging.CRITICAL)  # its "Failed to read ..." lines repeat the error below
    try:
        return _load_dataset(path, builder, field, split_lines, cache_dir)
    except Exception as exc:
        if isinstance(exc, ValueError) and str(exc).startswith(f"{path}:"):
            raise  # ours, already naming the file
        root = exc
        while root.__cause__ is not None or root.__context__ is not None:
            root = root.__cause__ or root.__context__
        why = " ".join(f"{type(root).__name__}: {root}".split())
        raise ValueError(f"{path}: not readable as {builder} ({why})") from None


def tokenize_function(tokenizer, add_eos: bool) -> Callable[[dict[str, list]], dict[str, list]]:
    """The batched ``datasets.map`` function: texts -> token ids (+ eos), empty texts -> no tokens."""
    eos = tokenizer.eos_token_id

    def fn(batch: dict[str, list]) -> dict[str, list]:
        texts = [t if isinstance(t, str) else "" for t in batch["text"]]
        ids = tokenizer(texts, add_special_tokens=False)["input_ids"]
        return {
            "input_ids": [x + [eos] if add_eos and t.strip() else (x if t.strip() else []) for x, t in zip(ids, texts)]
        }

    return fn


def fingerprint(sources: list[dict], tok_hash: str, options: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps([sources, tok_hash, options], sort_keys=True).encode()).hexdigest()


def tokenize(
    paths: Sequence[str | Path],
    out: str | Path,
    tokenizer_path: str | Path,
    *,
    kind: str | None = None,
    field: str = "text",
    split_lines: bool = False,
    add_eos: bool | None = None,
    max_doc_tokens: int | None = None,
    min_doc_tokens: int = 0,
    val_fraction: float = 0.0,
    seed: int = 0,
    num_proc: int = 1,
    batch_size: int = 1000,
    shard_tokens: int = SHARD_TOKENS,
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> tuple[Path, bool]:
    """Tokenise text/jsonl/parquet files or saved HF datasets into a token corpus at ``out``.

    Returns (out, reused): a corpus already at ``out`` with the same fingerprint (sources, tokenizer, options) is
    reused; one with another fingerprint is an error (nothing is overwritten). Atomic: see the module note.
    """
    out = Path(out)
    if not paths:
        raise ValueError("tokenize: no source files given")
    files = [Path(p) for p in paths]
    for i, p in enumerate(files):
        if not p.exists():
            raise ValueError(f"source {i}: not found: {p}")
    builders = [source_kind(p, kind) for p in files]
    check_doc_options({"max_doc_tokens": max_doc_tokens, "min_doc_tokens": min_doc_tokens}, "tokenize")
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"--val-fraction: need a number in [0, 1), got {val_fraction}")
    if num_proc < 1 or batch_size < 1:
        raise ValueError(f"--num-proc and --batch-size must be >= 1, got {num_proc} and {batch_size}")
    tok = load_tokenizer(tokenizer_path, "--tokenizer")
    add_eos = tok.eos_token_id is not None if add_eos is None else add_eos
    if add_eos and tok.eos_token_id is None:
        raise ValueError(f"--eos: the tokenizer {tokenizer_path} has no eos token")
    tok_hash = tokenizer_files_hash(tokenizer_path)
    options = {
        "kind": kind,
        "field": field,
        "split_lines": split_lines,
        "add_eos": add_eos,
        "max_doc_tokens": max_doc_tokens,
        "min_doc_tokens": min_doc_tokens,
        "val_fraction": val_fraction,
        "seed": seed,
    }
    sources = describe_sources(files)
    fp = fingerprint([{k: s[k] for k in ("bytes", "sha256")} for s in sources], tok_hash, options)
    if out.exists():
        return _reuse(out, fp, log), True
    out.parent.mkdir(parents=True, exist_ok=True)
    for stale in out.parent.glob(f".{out.name}.tmp-*"):  # left by a killed run
        pid = stale.name.rsplit("-", 1)[-1]
        if not (pid.isdigit() and pid_alive(int(pid))):
            shutil.rmtree(stale, ignore_errors=True)
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        vocab = len(tok)
        common = dict(max_doc_tokens=max_doc_tokens, min_doc_tokens=min_doc_tokens, shard_tokens=shard_tokens)
        writers = {"train": CorpusWriter(tmp, vocab, **common)}
        if val_fraction > 0:
            writers["val"] = CorpusWriter(tmp / "val", vocab, **common)
        fn = tokenize_function(tok, add_eos)
        rng = np.random.default_rng([seed, 22])
        n_source_docs = 0
        bar = tqdm(total=None, desc="tokenize", unit="tok", unit_scale=True, disable=not progress)
        for path, builder in zip(files, builders):
            ds = _read_source(path, builder, field, split_lines, tmp / "hf-cache")
            ds = ds.map(
                fn,
                batched=True,
                batch_size=batch_size,
                num_proc=num_proc if num_proc > 1 else None,
                remove_columns=["text"],
                cache_file_name=str(tmp / "hf-cache" / f"tok-{path.name}.arrow"),
                desc=None,
            )
            held = rng.random(len(ds)) < val_fraction  # by source document, seeded: one draw per document
            for lo in range(0, len(ds), batch_size):
                docs = ds[lo : lo + batch_size]["input_ids"]
                for split, w in writers.items():
                    mask = held[lo : lo + len(docs)] if split == "val" else ~held[lo : lo + len(docs)]
                    w.add([d for d, m in zip(docs, mask) if m and len(d)])
                bar.update(sum(map(len, docs)))
                n_source_docs += len(docs)
            del ds
        bar.close()
        shutil.rmtree(tmp / "hf-cache", ignore_errors=True)
        tok.save_pretrained(str(tmp / TOKENIZER_DIR))
        extra = {
            "tokenizer": {
                "name": str(tokenizer_path),
                "vocab_size": vocab,
                "files_sha256": tok_hash,
                "vocab_sha256": vocabulary_hash(tok),
            },
            "sources": sources,
            "source_docs": n_source_docs,
            "eos": {"appended": add_eos, "id": tok.eos_token_id if add_eos else None},
            "options": options,
            "fingerprint": fp,
        }
        manifests = {}
        for split, w in writers.items():
            d = tmp if split == "train" else tmp / "val"
            if split == "val":
                tok.save_pretrained(str(d / TOKENIZER_DIR))
            manifests[split] = write_manifest(d, w.close(), w, {**extra, "split": split})
        if manifests["train"]["n_tokens"] == 0:
            raise ValueError(f"tokenize: no tokens in {', '.join(map(str, files))}")
        try:
            os.rename(tmp, out)
        except OSError:  # another tokenize of the same --out finished first (or --out appeared meanwhile)
            if not out.exists():
                raise
            return _reuse(out, fp, log), True
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # still there only when the rename did not happen (error, lost race)
    for split, m in manifests.items():
        log(f"tokenize: {split}: {m['n_tokens']:,} tokens in {m['n_docs']:,} documents ({m['dtype']})")
    return out, False


def _reuse(out: Path, fp: str, log: Callable[[str], None]) -> Path:
    """``out`` when it already holds the corpus of fingerprint ``fp``; FileExistsError otherwise (never replaced)."""
    try:
        old = read_manifest(out, "--out").get("fingerprint")
    except ValueError:
        old = None
    if old != fp:
        raise FileExistsError(
            f"--out: {out} exists and is not this corpus (other sources, tokenizer or options); "
            "choose another --out or remove it (nothing is overwritten)"
        )
    log(f"tokenize: {out} already holds this corpus (same sources, tokenizer and options); reusing it")
    return out


# ------------------------------------------------------------------------------------------- configs


def data_tokenizer(data_cfg) -> str | None:
    """The tokenizer directory of a data config: ``data.tokenizer``, else a token corpus's own ``tokenizer/``."""
    if data_cfg.tokenizer is None and data_cfg.kind == "tokens" and data_cfg.paths:
        path = tokenizer_dir(data_cfg.paths[0])
        return str(path) if path.is_dir() else None
    return data_cfg.tokenizer


def check_tokenizer(manifest: dict[str, Any], tokenizer, what: str, where: str) -> None:
    """ValueError when ``tokenizer``'s vocabulary is not the one the corpus was tokenised with (hash compare)."""
    want, got = manifest["tokenizer"]["vocab_sha256"], vocabulary_hash(tokenizer)
    if want != got:
        raise ValueError(
            f"{where}: the corpus was tokenised with {manifest['tokenizer']['name']} (vocabulary sha256 "
            f"{want[:12]}, {manifest['tokenizer']['vocab_size']} tokens) but {what} has another "
            f"vocabulary (sha256 {got[:12]}, {len(tokenizer)} tokens); re-tokenise the corpus with "
            "`workbench tokenize --tokenizer` of the model you train"
        )


def check_config(data_cfg) -> dict[str, Any]:
    """A ``kind: tokens`` data config: one complete corpus directory, and ``data.tokenizer`` (when set) with the
    corpus's vocabulary. Returns the corpus manifest."""
    if len(data_cfg.paths) != 1:
        raise ValueError(f"data.paths: kind 'tokens' takes one token corpus directory, got {len(data_cfg.paths)}")
    manifest = read_manifest(data_cfg.paths[0])
    if data_cfg.tokenizer is not None:
        check_tokenizer(
            manifest, load_tokenizer(data_cfg.tokenizer), f"data.tokenizer {data_cfg.tokenizer}", "data.tokenizer"
        )
    elif not tokenizer_dir(data_cfg.paths[0]).is_dir():
        raise ValueError(f"data.paths[0]: {data_cfg.paths[0]} has no tokenizer/ directory; set data.tokenizer")
    return manifest
