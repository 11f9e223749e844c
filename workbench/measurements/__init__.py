"""Measurements: read a checkpoint without editing it (compare :mod:`workbench.interventions`, which edits
one and follows the effect).

Two ways in, the cheapest that answers the question: the raw safetensors weights (``weights``; the per-pair rows
and update in :mod:`workbench.pair_updates`), or one plain forward pass with PyTorch forward hooks (``capture``:
pre-RoPE q/k, the model's own rotation, the residual stream), which keeps memory linear in length. On top of
them: per-RoPE-pair weight
and state updates, frequency bands, the attention-score decomposition by pair and distance, position
probes, and the cross-document KD signal (two plain forwards, causal and document-masked). Each returns
an xarray Dataset with named dims, written into the results store by :func:`workbench.store.save`.

    ds = weight_updates(["runs/r/ckpt-000100", "runs/r/ckpt-000200"])      # comparison x layer x head x pair
    bands = band_summary(ds, [256, 1024])
    store.save("runs/r/results.zarr", store.UPDATES_WEIGHTS, ds)
"""

from workbench.measurements.bands import band_summary, parse_lengths
from workbench.measurements.cross_document import cross_document_kl, cross_document_kl_checkpoints, write_kd_signal
from workbench.measurements.probes import position_probes
from workbench.measurements.scores import score_decomposition
from workbench.measurements.states import state_updates
from workbench.measurements.weights import comparison_label, weight_updates
from workbench.pair_updates import pair_rows, pair_update_stats, split_pairs

__all__ = [
    "band_summary",
    "comparison_label",
    "cross_document_kl",
    "cross_document_kl_checkpoints",
    "pair_rows",
    "pair_update_stats",
    "parse_lengths",
    "position_probes",
    "score_decomposition",
    "split_pairs",
    "state_updates",
    "weight_updates",
    "write_kd_signal",
]
