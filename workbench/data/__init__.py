"""Data: the synthetic tokenizer and language, corpora, packing into windows.

Batch contract (what every consumer of ``workbench.data`` receives): a dict of int64 tensors of shape
[batch, seq_len]: ``input_ids``, ``labels`` (-100 where no loss), ``position_ids`` (continue or reset
across packed documents) and ``doc_ids`` (document index within the window; attention masks are built
from these, never from ``position_ids == 0``).

Labels follow the Hugging Face convention: unshifted, ``labels[t]`` is the target predicted from tokens
``< t`` (the loss shifts by one, as ``LlamaForCausalLM(labels=...)`` does); the first token of every packed
document is -100, so no target crosses a document boundary.

Entry points: ``make_stream(data_cfg, seq_len, batch_size, seed, rank=0, world_size=1) -> Stream``
(``next()``, ``state_dict()``, ``load_state_dict()``); ``packing.attention_mask(doc_ids, mode, dtype)``;
``repeated_sequences(seq_len, period)`` for the repeated-token experiment.
"""

from workbench.data.packing import attention_mask, document_starts, pack, position_ids, reset_positions
from workbench.data.stream import KINDS, Stream, make_stream, repeated_sequences

__all__ = [
    "KINDS",
    "Stream",
    "attention_mask",
    "document_starts",
    "make_stream",
    "pack",
    "position_ids",
    "repeated_sequences",
    "reset_positions",
]
