"""From store groups to the numbers the report states for F2 and F3: pure aggregations (no figures, no I/O)."""

from __future__ import annotations

import xarray as xr

from workbench import stats


def pair_trend(updates: xr.Dataset, var: str = "q_rel_update") -> xr.DataArray:
    """Spearman rank correlation between pair index and the per-pair update (mean over layers and heads),
    per comparison: > 0 means higher-index (longer-wavelength) pairs moved more (F3)."""
    head = "head" if var.startswith("q") else "kv_head"
    per_pair = updates[var].mean(["layer", head]).transpose("comparison", "pair")
    return xr.DataArray(
        stats.index_spearman(per_pair.values), dims="comparison", coords={"comparison": per_pair["comparison"].values}
    )


def repeated_summary(rep: xr.Dataset, spec: str = "clean") -> xr.DataArray:
    """F2 data: per checkpoint, the mean KD signal (KL of each copy's distribution to the copy-average)
    over the copies of the repeated sequence: > 0 means the logits carry absolute-position information."""
    return rep["kl_to_mean"].sel(spec=spec).mean("copy")


def trace_summary(traces: xr.Dataset) -> xr.DataArray:
    """F2 data: final-logit KL(clean || perturbed) per checkpoint and spec (mean over position buckets)."""
    return traces["final_kl"].mean("position_bucket").drop_sel(spec="clean", errors="ignore")
