"""A real byte-level BPE tokenizer trained offline on synthetic English-like text, and documents in that text."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

WORDS = (
    "the of and to in is was for on that with as by at from his her it an were are which this be or had not "
    "but have their they one all new more when who also been has would there time first after can other some "
    "into its years only over such city may most between up out world during two state three about license "
    "software copyright permission notice holder shall warranty granted provided distribute modify free "
    "conditions following source binary code without express implied damages liability contract any person "
    "obtaining copy documentation files deal use merge publish sublicense sell"
).split()


def documents(n: int, seed: int = 0, words: tuple[int, int] = (20, 400)) -> list[str]:
    """``n`` documents of ``words`` words (uniform), sentences of 5-15 words."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        k, sent, parts = int(rng.integers(*words)), [], []
        for i, w in enumerate(rng.choice(WORDS, size=k)):
            sent.append(str(w))
            if len(sent) >= int(rng.integers(5, 16)) or i == k - 1:
                parts.append(" ".join(sent).capitalize() + ".")
                sent = []
        out.append(" ".join(parts))
    return out


def write_jsonl(path: Path, docs: list[str]) -> Path:
    path.write_text("".join(json.dumps({"text": d, "id": i}) + "\n" for i, d in enumerate(docs)))
    return path


def bpe_tokenizer(directory: Path, vocab_size: int = 512) -> Path:
    """Train a byte-level BPE (GPT-2 style, eos ``<|endoftext|>``) on the synthetic text and save it (HF format)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(documents(300, seed=99), trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token="<|endoftext|>", bos_token="<|endoftext|>", pad_token="<|endoftext|>"
    )
    fast.save_pretrained(str(directory))
    return directory
