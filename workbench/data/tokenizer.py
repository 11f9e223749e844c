"""The synthetic tokenizer: a fixed 128-token word-level vocabulary shared by the CPU models' training
data, the retrieval tasks and the interpretability inputs.

It is a real Hugging Face tokenizer (``PreTrainedTokenizerFast`` over a ``tokenizers`` WordLevel model),
so it saves into checkpoint directories and works with TransformerLens and nnsight like any other.
Text is space-separated tokens, e.g. ``"w3 w17 PASS 4 0 9 1 7 w5 ... ASK PASS"``.

Token groups (ids are fixed; code should use the named groups, not numbers):

- specials: ``<pad>`` ``<unk>`` ``<bos>`` ``<eos>``
- markers: ``PASS`` (passkey follows), ``SET`` (key-value needle: ``SET k v``), ``ASK`` (query),
  ``ANS`` (answer follows), ``VAR`` (variable assignment: ``VAR x = y``), ``=``, ``SEP`` (list separator),
  ``DOC`` (document start), spare markers ``M0``..``M5``
- digits ``0``..``9`` (passkeys, numeric values)
- filler words ``w0``..``w35`` (haystack text)
- keys ``k0``..``k31`` (needle keys, variable names)
- values ``v0``..``v31`` (needle values)

The language (shared by training corpora and retrieval tasks; keep them in step):

- haystack: filler words ``w*`` drawn at random;
- passkey needle ``PASS d d d d d`` (5 digits); its query ``ASK PASS``; the answer is the 5 digits;
- key-value needle ``SET k v``; its query ``ASK k``; the answer is ``v``. Several needles with distinct
  keys are distractors (multi-key); several needles with the same key give a multi-value answer
  ``v_a SEP v_b ...`` in order of appearance;
- variable assignment ``VAR k = d d d d d`` or ``VAR k_b = k_a`` (a chain); the query
  ``ASK d d d d d`` is answered by every name bound to that value, ``k_a SEP k_b ...``, in order;
- documents may start with ``DOC``; a window of packed documents never needs ``<bos>``.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

SPECIALS = ["<pad>", "<unk>", "<bos>", "<eos>"]
MARKERS = ["PASS", "SET", "ASK", "ANS", "VAR", "=", "SEP", "DOC", "M0", "M1", "M2", "M3", "M4", "M5"]
DIGITS = [str(i) for i in range(10)]
FILLER = [f"w{i}" for i in range(36)]
KEYS = [f"k{i}" for i in range(32)]
VALUES = [f"v{i}" for i in range(32)]
TOKENS = SPECIALS + MARKERS + DIGITS + FILLER + KEYS + VALUES
VOCAB_SIZE = len(TOKENS)
assert VOCAB_SIZE == 128


@dataclass(frozen=True)
class Vocab:
    """Named ids of the synthetic vocabulary."""

    pad: int
    unk: int
    bos: int
    eos: int
    marker: dict[str, int]
    digits: tuple[int, ...]
    filler: tuple[int, ...]
    keys: tuple[int, ...]
    values: tuple[int, ...]

    @property
    def size(self) -> int:
        return VOCAB_SIZE

    def id(self, token: str) -> int:
        return TOKEN_TO_ID[token]

    def token(self, idx: int) -> str:
        return TOKENS[idx]


TOKEN_TO_ID = {t: i for i, t in enumerate(TOKENS)}

VOCAB = Vocab(
    pad=TOKEN_TO_ID["<pad>"],
    unk=TOKEN_TO_ID["<unk>"],
    bos=TOKEN_TO_ID["<bos>"],
    eos=TOKEN_TO_ID["<eos>"],
    marker={m: TOKEN_TO_ID[m] for m in MARKERS},
    digits=tuple(TOKEN_TO_ID[t] for t in DIGITS),
    filler=tuple(TOKEN_TO_ID[t] for t in FILLER),
    keys=tuple(TOKEN_TO_ID[t] for t in KEYS),
    values=tuple(TOKEN_TO_ID[t] for t in VALUES),
)


@lru_cache(maxsize=1)
def synthetic_tokenizer():
    """The synthetic vocabulary as a Hugging Face fast tokenizer (no special tokens added on encode)."""
    from tokenizers import Tokenizer, models, pre_tokenizers  # lazy: HF tokenizer libraries, seconds to import
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.WordLevel(dict(TOKEN_TO_ID), unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, pad_token="<pad>", unk_token="<unk>", bos_token="<bos>", eos_token="<eos>"
    )


def encode(text: str) -> list[int]:
    """Space-separated synthetic tokens -> ids (unknown words raise, they never silently map to <unk>)."""
    try:
        return [TOKEN_TO_ID[t] for t in text.split()]
    except KeyError as exc:
        raise ValueError(f"{exc.args[0]!r} is not a token of the synthetic vocabulary") from None


def decode(ids) -> str:
    return " ".join(TOKENS[int(i)] for i in ids)
