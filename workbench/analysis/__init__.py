"""Per-RoPE-pair analysis of checkpoints: weight and state updates, frequency bands, attention-score
decomposition by pair and distance, and position probes; each returns an xarray Dataset with named dims
and is written into the results store by :func:`workbench.store.save`.

    ds = weight_updates(["runs/r/ckpt-000100", "runs/r/ckpt-000200"])      # comparison x layer x head x pair
    bands = band_summary(ds, [256, 1024])
    store.save("runs/r/results.zarr", store.UPDATES_WEIGHTS, ds)
"""

from workbench.analysis.bands import band_summary, parse_lengths
from workbench.analysis.pairs import pair_rows, pair_update_stats, split_pairs
from workbench.analysis.probes import position_probes
from workbench.analysis.scores import score_decomposition
from workbench.analysis.states import state_updates
from workbench.analysis.weights import comparison_label, weight_updates

__all__ = [
    "band_summary", "comparison_label",
    "pair_rows", "pair_update_stats", "parse_lengths", "position_probes",
    "score_decomposition", "split_pairs", "state_updates", "weight_updates",
]
