"""Data: the synthetic tokenizer and language, corpora, packing into windows.

Batch contract (what every consumer of ``workbench.data`` receives): a dict of int64 tensors of shape
[batch, seq_len]: ``input_ids``, ``labels`` (-100 where no loss), ``position_ids`` (continue or reset
across packed documents) and ``doc_ids`` (document index within the window; attention masks are built
from these, never from ``position_ids == 0``).
"""
