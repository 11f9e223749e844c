"""Renderings: how the abstract content of a retrieval task (needles, query, answer) becomes token ids.

Two renderings share one interface, so every task exists in both:

- :class:`SyntheticRendering` speaks THE LANGUAGE of :mod:`workbench.data.tokenizer` exactly (the CPU
  models are evaluated on what their training corpora teach): haystack of random ``w*`` filler; passkey
  ``PASS d d d d d`` / ``ASK PASS``; key-value ``SET k v`` / ``ASK k``; lists ``a SEP b ...``; variable
  tracking ``VAR k = d d d d d``, ``VAR k_b = k_a``, query ``ASK d d d d d``. Multi-query (not spelled out
  in the language) asks ``ASK k_a SEP k_b ...`` and is answered ``v_a SEP v_b ...`` in the order asked.
- :class:`TextRendering` uses any local Hugging Face tokenizer and the RULER / LongLoRA passkey text
  templates (repeated "The grass is green. The sky is blue. ..." filler, "The pass key is 71432. Remember
  it.", "One of the special magic numbers for {key} is: {value}.", "VAR ABCDE = 12345").

Each piece is tokenised on its own and the pieces are concatenated as ids, so the length in tokens and
the needle position are exact whatever the tokenizer does at piece boundaries.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import cached_property
from typing import Any

import numpy as np

from workbench import tokenizers
from workbench.data import tokenizer as syn

# Abstract needle items (built in workbench.evals.tasks): ("passkey", digits), ("kv", key, value),
# ("var", name, digits), ("alias", dst, src). Keys, values and names are integer indices into the
# rendering's pools; digits are strings of decimal digits.
Item = tuple[Any, ...]


class Rendering:
    """Interface of a rendering (see the module docstring). Subclasses fill in the surface forms."""

    name: str = "abstract"
    n_keys: int
    n_values: int
    n_names: int
    word_boundary: bool  # score RULER substring matches on whole words (synthetic tokens) or raw text
    filler_period: int | None = None  # length of the repeating filler stream (text renderings)
    sentence_starts: tuple[int, ...] | None = None  # where sentences start in one period of that stream

    def prefix(self, task: str) -> list[int]:
        """Instruction ids before the haystack (and the BOS token where the tokenizer uses one)."""
        raise NotImplementedError

    def filler(self, rng: np.random.Generator, n: int, offset: int) -> list[int]:
        """Exactly ``n`` haystack ids; ``offset`` = filler ids already emitted in this sample."""
        raise NotImplementedError

    def needle(self, item: Item) -> list[int]:
        raise NotImplementedError

    def query(self, task: str, item: Item) -> list[int]:
        """Query ids ending right where the answer starts. ``item`` = ("passkey",), ("kv", keys) or
        ("vt", digits, n_names)."""
        raise NotImplementedError

    def refs(self, gold: Sequence[Item]) -> list[str]:
        """Surface strings of the gold answer parts (RULER's references: each must appear in the output)."""
        return [self.surface(g) for g in gold]

    def surface(self, g: Item) -> str:
        raise NotImplementedError

    def answer(self, refs: Sequence[str]) -> list[int]:
        """Ids of the gold answer (the parts as one list) that greedy decoding must reproduce."""
        raise NotImplementedError

    def decode(self, ids: Sequence[int]) -> str:
        raise NotImplementedError


class SyntheticRendering(Rendering):
    """THE LANGUAGE of the synthetic 128-token vocabulary (see :mod:`workbench.data.tokenizer`)."""

    name = "synthetic"
    n_keys = len(syn.KEYS)
    n_values = len(syn.VALUES)
    n_names = len(syn.KEYS)
    word_boundary = True

    def prefix(self, task: str) -> list[int]:
        return []

    def filler(self, rng: np.random.Generator, n: int, offset: int) -> list[int]:
        return [int(i) for i in rng.choice(np.array(syn.VOCAB.filler), size=n)]

    def _digits(self, digits: str) -> str:
        return " ".join(digits)

    def needle(self, item: Item) -> list[int]:
        kind = item[0]
        if kind == "passkey":
            return syn.encode(f"PASS {self._digits(item[1])}")
        if kind == "kv":
            return syn.encode(f"SET {syn.KEYS[item[1]]} {syn.VALUES[item[2]]}")
        if kind == "var":
            return syn.encode(f"VAR {syn.KEYS[item[1]]} = {self._digits(item[2])}")
        if kind == "alias":
            return syn.encode(f"VAR {syn.KEYS[item[1]]} = {syn.KEYS[item[2]]}")
        raise ValueError(f"unknown needle kind {kind!r}")

    def query(self, task: str, item: Item) -> list[int]:
        if item[0] == "passkey":
            return syn.encode("ASK PASS")
        if item[0] == "kv":
            return syn.encode("ASK " + " SEP ".join(syn.KEYS[k] for k in item[1]))
        if item[0] == "vt":
            return syn.encode(f"ASK {self._digits(item[1])}")
        raise ValueError(f"unknown query kind {item[0]!r}")

    def surface(self, g: Item) -> str:
        if g[0] == "digits":
            return self._digits(g[1])
        if g[0] == "value":
            return syn.VALUES[g[1]]
        if g[0] == "name":
            return syn.KEYS[g[1]]
        raise ValueError(f"unknown answer part {g[0]!r}")

    def answer(self, refs: Sequence[str]) -> list[int]:
        return syn.encode(" SEP ".join(refs))

    def decode(self, ids: Sequence[int]) -> str:
        return syn.decode(ids)


# RULER / LongLoRA-style text. Keys are "adjective-noun" words (RULER draws them from wonderwords),
# values 7-digit numbers, variable names 5 upper-case letters, passkeys 5-digit numbers.
_ADJECTIVES = (
    "amber",
    "brave",
    "calm",
    "dusty",
    "eager",
    "faint",
    "gentle",
    "hollow",
    "icy",
    "jolly",
    "keen",
    "lively",
    "mellow",
    "noisy",
    "odd",
    "proud",
    "quiet",
    "rapid",
    "shy",
    "tidy",
    "upbeat",
    "vivid",
    "wary",
    "young",
    "zany",
    "bold",
    "crisp",
    "dark",
    "early",
    "fancy",
    "grand",
    "humble",
)
_NOUNS = (
    "anchor",
    "badger",
    "candle",
    "desert",
    "engine",
    "falcon",
    "garden",
    "harbor",
    "island",
    "jacket",
    "kettle",
    "lantern",
    "meadow",
    "needle",
    "orchard",
    "pepper",
    "quartz",
    "river",
    "saddle",
    "tunnel",
    "umbrella",
    "valley",
    "window",
    "yarn",
    "zephyr",
    "basket",
    "castle",
    "dragon",
    "feather",
    "glacier",
    "hammer",
    "violin",
)
PASSKEY_TEXT = {
    "prefix": "There is an important info hidden inside a lot of irrelevant text. Find it and memorize it. "
    "I will quiz you about the important information there.",
    "filler": " The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again.",
    "needle": " The pass key is {key}. Remember it. {key} is the pass key.",
    "query": " What is the pass key? The pass key is",
}
NIAH_TEXT = {
    "prefix": "Some special magic numbers are hidden within the following text. Make sure to memorize it. "
    "I will quiz you about the numbers afterwards.",
    "needle": " One of the special magic numbers for {key} is: {value}.",
    "query_one": " What is the special magic number for {key} mentioned in the provided text? "
    "The special magic number for {key} mentioned in the provided text is",
    "query_all": " What are all the special magic numbers for {key} mentioned in the provided text? "
    "The special magic numbers for {key} mentioned in the provided text are",
}
VT_TEXT = {
    "prefix": "Memorize and track the chain(s) of variable assignment hidden in the following text.",
    "var": " VAR {name} = {value}.",
    "alias": " VAR {dst} = VAR {src}.",
    "query": " Question: Find all variables that are assigned the value {value} in the text above. Answer: "
    "According to the chain(s) of variable assignment in the text above, {n} variables are assigned "
    "the value {value}, they are:",
}


class TextRendering(Rendering):
    """RULER / passkey text templates for a real (local) Hugging Face tokenizer."""

    n_keys = len(_ADJECTIVES) * len(_NOUNS)
    n_values = 9_000_000
    n_names = 26**5
    word_boundary = False

    def __init__(self, tokenizer, *, add_bos: bool | None = None, name: str | None = None) -> None:
        self.tok = tokenizer
        if add_bos is None:  # does the tokenizer put a BOS in front when encoding by default?
            probe = tokenizer("a").input_ids
            add_bos = tokenizer.bos_token_id is not None and bool(probe) and probe[0] == tokenizer.bos_token_id
        self.add_bos = bool(add_bos)
        self.name = name or f"text:{getattr(tokenizer, 'name_or_path', '') or type(tokenizer).__name__}"

    def _ids(self, text: str) -> list[int]:
        return list(self.tok(text, add_special_tokens=False).input_ids)

    @cached_property
    def _filler(self) -> tuple[list[int], tuple[int, ...]]:
        """The filler paragraph tokenised sentence by sentence: (ids, index where each sentence starts)."""
        ids: list[int] = []
        starts = []
        for sentence in PASSKEY_TEXT["filler"].split(".")[:-1]:
            starts.append(len(ids))
            ids += self._ids(sentence + ".")
        if not ids:
            raise ValueError(f"{self.name}: the filler text encodes to no tokens")
        return ids, tuple(starts)

    @property
    def filler_period(self) -> int:  # type: ignore[override]
        return len(self._filler[0])

    @property
    def sentence_starts(self) -> tuple[int, ...]:  # type: ignore[override]
        return self._filler[1]

    def prefix(self, task: str) -> list[int]:
        text = {"passkey": PASSKEY_TEXT, "vt": VT_TEXT}.get(task, NIAH_TEXT)["prefix"]
        return ([self.tok.bos_token_id] if self.add_bos else []) + self._ids(text)

    def filler(self, rng: np.random.Generator, n: int, offset: int) -> list[int]:
        # one continuous stream of the repeated filler paragraph across the whole haystack
        f = self._filler[0]
        return [f[(offset + i) % len(f)] for i in range(n)]

    def key(self, k: int) -> str:
        return f"{_ADJECTIVES[k // len(_NOUNS)]}-{_NOUNS[k % len(_NOUNS)]}"

    def value(self, v: int) -> str:
        return str(1_000_000 + v)

    def var_name(self, i: int) -> str:
        letters = []
        for _ in range(5):
            i, r = divmod(i, 26)
            letters.append(chr(ord("A") + r))
        return "".join(letters)

    def needle(self, item: Item) -> list[int]:
        kind = item[0]
        if kind == "passkey":
            return self._ids(PASSKEY_TEXT["needle"].format(key=item[1]))
        if kind == "kv":
            return self._ids(NIAH_TEXT["needle"].format(key=self.key(item[1]), value=self.value(item[2])))
        if kind == "var":
            return self._ids(VT_TEXT["var"].format(name=self.var_name(item[1]), value=item[2]))
        if kind == "alias":
            return self._ids(VT_TEXT["alias"].format(dst=self.var_name(item[1]), src=self.var_name(item[2])))
        raise ValueError(f"unknown needle kind {kind!r}")

    def query(self, task: str, item: Item) -> list[int]:
        if item[0] == "passkey":
            return self._ids(PASSKEY_TEXT["query"])
        if item[0] == "kv":
            keys = [self.key(k) for k in item[1]]
            joined = keys[0] if len(keys) == 1 else ", ".join(keys[:-1]) + " and " + keys[-1]
            template = NIAH_TEXT["query_one"] if task in ("niah", "multikey") else NIAH_TEXT["query_all"]
            return self._ids(template.format(key=joined))
        if item[0] == "vt":
            return self._ids(VT_TEXT["query"].format(value=item[1], n=item[2]))
        raise ValueError(f"unknown query kind {item[0]!r}")

    def surface(self, g: Item) -> str:
        if g[0] == "digits":
            return g[1]
        if g[0] == "value":
            return self.value(g[1])
        if g[0] == "name":
            return self.var_name(g[1])
        raise ValueError(f"unknown answer part {g[0]!r}")

    def answer(self, refs: Sequence[str]) -> list[int]:
        return self._ids(" " + ", ".join(refs))

    def decode(self, ids: Sequence[int]) -> str:
        return self.tok.decode(list(ids), skip_special_tokens=True)


def rendering_for(tokenizer=None) -> Rendering:
    """The rendering for a tokenizer: synthetic for None or the synthetic vocabulary, text otherwise."""
    if tokenizer is None or tokenizers.is_synthetic(tokenizer):
        return SyntheticRendering()
    return TextRendering(tokenizer)
