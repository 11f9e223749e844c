"""Deterministic, seeded, resumable batch streams: ``make_stream(data_cfg, seq_len, batch_size, seed)``.

Every source can build window number ``k`` on its own (synthetic windows from ``rng([seed, k])``, real
corpora as shuffled slices of the tokenised concatenation), so the whole order is a pure function of the
seed and the cursor is one integer: the next global window. A global batch is ``batch_size * world_size``
consecutive windows and rank r takes its ``r``-th slice, so the union over ranks of one global batch is
exactly the single-process batch of ``batch_size * world_size``, and ranks never share a window.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from workbench.config import DataConfig
from workbench.data import corpus, text
from workbench.data import synthetic as syn
from workbench.data.packing import IGNORE, pack, position_ids

KINDS = ("synthetic-long", "synthetic-short", "repeated", "text", "jsonl", "parquet", "tokens")
DOC_OPTIONS = {"max_doc_tokens", "min_doc_tokens"}  # short documents from real text (workbench.data.corpus)
# generator extras accepted in DataConfig.options, per kind (anything else is a config error)
OPTIONS = {
    "synthetic-long": {"passkey_prob", "queries_per_fact", "supervise", "fill_window", "echo_rate"},
    "synthetic-short": {"passkey_prob", "queries_per_fact", "supervise", "echo_rate"},
    "repeated": {"period", "gap"},
    "text": {"split", "add_eos"} | DOC_OPTIONS,
    "jsonl": {"field", "add_eos"} | DOC_OPTIONS,
    "parquet": {"field", "add_eos"} | DOC_OPTIONS,
    "tokens": DOC_OPTIONS,
}
_SALT = {kind: i for i, kind in enumerate(KINDS)}  # different kinds never share random streams
Window = dict[str, np.ndarray]


class Stream:
    """Batches of the batch contract, in a fixed seeded order, with an exact cursor."""

    def __init__(
        self,
        window: Callable[[int], Window],
        *,
        kind: str,
        seq_len: int,
        batch_size: int,
        seed: int,
        rank: int = 0,
        world_size: int = 1,
        source: str | None = None,
    ):
        self._window = window
        self.source = source  # a token corpus's fingerprint: the cursor only resumes on the same corpus
        self.kind, self.seq_len, self.batch_size, self.seed = kind, seq_len, batch_size, seed
        self.rank, self.world_size = rank, world_size
        self.next_window = 0  # first window of the next global batch

    def next(self) -> dict[str, torch.Tensor]:
        """This rank's slice of the next global batch: int64 tensors [batch_size, seq_len]."""
        first = self.next_window + self.rank * self.batch_size
        rows = [self._window(first + b) for b in range(self.batch_size)]
        self.next_window += self.batch_size * self.world_size
        return {
            key: torch.as_tensor(np.stack([r[key] for r in rows]))
            for key in ("input_ids", "labels", "position_ids", "doc_ids")
        }

    __next__ = next

    def __iter__(self):
        return self

    def state_dict(self) -> dict[str, Any]:
        state = {"kind": self.kind, "seed": self.seed, "seq_len": self.seq_len, "next_window": self.next_window}
        if self.source is not None:
            state["source"] = self.source
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Resume from ``state_dict()``; refuses a cursor of another kind, seed or window length."""
        for key in ("kind", "seed", "seq_len"):
            if state.get(key) != getattr(self, key):
                raise ValueError(
                    f"data cursor: saved {key}={state.get(key)!r} does not match this stream's "
                    f"{key}={getattr(self, key)!r}"
                )
        if state.get("source") is not None and self.source is not None and state["source"] != self.source:
            raise ValueError(
                f"data cursor: saved on corpus {state['source'][:12]}, this stream reads corpus "
                f"{self.source[:12]} (the token corpus changed since the checkpoint)"
            )
        self.next_window = int(state["next_window"])


def make_stream(
    data_cfg: DataConfig, seq_len: int, batch_size: int, seed: int, rank: int = 0, world_size: int = 1
) -> Stream:
    """The stream ``data_cfg.kind`` describes, packed into windows of ``seq_len`` (checks inputs first)."""
    check(data_cfg, seq_len, batch_size, rank, world_size)
    kind, opts = data_cfg.kind, data_cfg.options
    positions, salt = data_cfg.packing.positions, _SALT[kind]

    def rng(k: int) -> np.random.Generator:
        return np.random.default_rng([seed, salt, k])

    if kind in ("synthetic-long", "synthetic-short"):
        long = kind == "synthetic-long"
        fill = long and opts.get("fill_window", True)
        doc_kw = dict(
            queries_per_fact=int(opts.get("queries_per_fact", 3 if long else 2)), supervise=opts.get("supervise", "all")
        )
        p_passkey = float(opts.get("passkey_prob", 1.0 if long else 0.5))
        echo_rate = float(opts.get("echo_rate", 0.0))  # echo spans per 128 tokens of document

        def window(k: int) -> Window:
            r, docs, left = rng(k), [], seq_len
            while left:
                n = left if fill else min(left, int(r.integers(data_cfg.doc_len_min, data_cfg.doc_len_max + 1)))
                pairs = int(r.integers(data_cfg.num_pairs_min, data_cfg.num_pairs_max + 1))
                docs.append(
                    syn.document(
                        r,
                        n,
                        num_pairs=pairs,
                        passkey=bool(r.random() < p_passkey),
                        echoes=round(echo_rate * n / 128),
                        **doc_kw,
                    )
                )
                left -= n
            return pack(docs, positions)

    elif kind == "repeated":
        period, gap = int(opts.get("period", 64)), int(opts.get("gap", 0))

        def window(k: int) -> Window:
            return repeated_batch_row(rng(k), seq_len, period, gap, positions)

    else:
        if kind == "tokens":
            source = corpus.open_corpus(data_cfg.paths[0])
        else:
            ids, offsets = text.tokenise_corpus(
                kind, data_cfg.paths, data_cfg.tokenizer, {k: v for k, v in opts.items() if k not in DOC_OPTIONS}
            )
            source = corpus.in_memory(ids, offsets)
        max_doc, min_doc = corpus.check_doc_options(opts)
        window = corpus.Windows(source, seq_len, seed, salt, positions, max_doc, min_doc)
        if window.per_epoch == 0:
            raise ValueError(f"data.paths: only {source.n_tokens} tokens, fewer than one window of {seq_len}")

    source = window.corpus.manifest.get("fingerprint") if kind == "tokens" else None
    return Stream(
        window,
        kind=kind,
        seq_len=seq_len,
        batch_size=batch_size,
        seed=seed,
        rank=rank,
        world_size=world_size,
        source=source,
    )


def repeated_batch_row(
    rng: np.random.Generator, seq_len: int, period: int, gap: int = 0, positions: str = "continue"
) -> Window:
    """One window of a repeated sequence, each copy its own packed document (tail filler: one more)."""
    ids, offsets = syn.repeated_window(rng, seq_len, period, gap)
    start = np.zeros(seq_len, dtype=bool)
    start[0] = True
    start[offsets] = True
    ends = offsets + period
    start[ends[ends < seq_len]] = True  # gap filler and the tail are documents of their own
    doc_ids = np.cumsum(start, dtype=np.int64) - 1
    return {
        "input_ids": ids,
        "labels": np.where(start, IGNORE, ids),
        "doc_ids": doc_ids,
        "position_ids": position_ids(doc_ids, positions),
        "offsets": offsets,
    }


def repeated_sequences(
    seq_len: int, period: int, *, seed: int = 0, gap: int = 0, positions: str = "continue"
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The repeated-token input: (input_ids [1, seq_len], position_ids [1, seq_len], offsets [copies]).

    One random ``period``-token sequence repeated through one window (copy c starts at ``offsets[c]``),
    each copy a packed document; positions continue (the paper's setting) or reset per copy.
    """
    row = repeated_batch_row(np.random.default_rng([seed, _SALT["repeated"]]), seq_len, period, gap, positions)
    return (
        torch.as_tensor(row["input_ids"])[None],
        torch.as_tensor(row["position_ids"])[None],
        torch.as_tensor(row["offsets"]),
    )


def check(data_cfg: DataConfig, seq_len: int, batch_size: int, rank: int = 0, world_size: int = 1) -> None:
    """Every input error, as one ValueError naming the key, before any data is generated or read."""
    kind = data_cfg.kind
    if kind not in KINDS:
        raise ValueError(f"data.kind: {kind!r} is not one of {', '.join(KINDS)}")
    unknown = sorted(set(data_cfg.options) - OPTIONS[kind])
    if unknown:
        raise ValueError(
            f"data.options.{unknown[0]}: not an option of kind {kind!r} (known: {', '.join(sorted(OPTIONS[kind]))})"
        )
    if seq_len <= 0 or batch_size <= 0:
        raise ValueError(f"seq_len and batch_size must be > 0, got {seq_len} and {batch_size}")
    if world_size <= 0 or not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is not in [0, world_size={world_size})")
    if data_cfg.packing.positions not in ("continue", "reset"):
        raise ValueError(f"data.packing.positions: {data_cfg.packing.positions!r} is not 'continue' or 'reset'")
    if data_cfg.packing.attention not in ("causal", "document"):
        raise ValueError(f"data.packing.attention: {data_cfg.packing.attention!r} is not 'causal' or 'document'")
    if kind.startswith("synthetic"):
        if not 1 <= data_cfg.doc_len_min <= data_cfg.doc_len_max:
            raise ValueError(
                f"data.doc_len_min/doc_len_max: need 1 <= min <= max, got "
                f"{data_cfg.doc_len_min}, {data_cfg.doc_len_max}"
            )
        if not 0 <= data_cfg.num_pairs_min <= data_cfg.num_pairs_max:
            raise ValueError(
                f"data.num_pairs_min/num_pairs_max: need 0 <= min <= max, got "
                f"{data_cfg.num_pairs_min}, {data_cfg.num_pairs_max}"
            )
        if data_cfg.options.get("supervise", "all") not in ("all", "answers"):
            raise ValueError(f"data.options.supervise: {data_cfg.options['supervise']!r} is not 'all' or 'answers'")
        for key in ("passkey_prob", "echo_rate", "queries_per_fact"):
            value = data_cfg.options.get(key, 0)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
                raise ValueError(f"data.options.{key}: need a number >= 0, got {value!r}")
    elif kind == "repeated":
        period, gap = data_cfg.options.get("period", 64), data_cfg.options.get("gap", 0)
        if not (isinstance(period, int) and 1 <= period <= seq_len):
            raise ValueError(f"data.options.period: need an integer in [1, seq_len={seq_len}], got {period!r}")
        if not (isinstance(gap, int) and gap >= 0):
            raise ValueError(f"data.options.gap: need an integer >= 0, got {gap!r}")
    elif kind == "tokens":
        corpus.check_doc_options(data_cfg.options)
        corpus.check_config(data_cfg)
    else:
        corpus.check_doc_options(data_cfg.options)
        text.check_paths(kind, data_cfg.paths)
        if data_cfg.tokenizer is not None:
            text.load_tokenizer(data_cfg.tokenizer)
