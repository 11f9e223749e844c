"""From store groups to the paper's findings: pure aggregations by training arm (no figures, no I/O).

Checkpoints of the demo's students are named ``<objective>-<schedule>[+variant]-s<seed>/<ckpt-dir>``
(the run directory name, see :mod:`workbench.demo.arms`; read by ``workbench.arms.parse_arm``); anything
else (the teacher) is not an arm.
"""

from __future__ import annotations

import numpy as np
import xarray as xr

from workbench import stats
from workbench.arms import parse_arm


def by_arm(da: xr.DataArray, dim: str) -> xr.DataArray:
    """Re-index ``dim`` (checkpoint or comparison labels) into (arm, seed); non-arm entries dropped."""
    labels = [str(x) for x in da[dim].values]
    parsed = {lab: parse_arm(lab) for lab in labels}
    keep = [lab for lab in labels if parsed[lab].is_protocol_arm]
    if not keep:
        raise ValueError(f"no student runs among {dim} values {labels}")
    arm_names = sorted({parsed[lab].arm for lab in keep}, key=_arm_order)
    seeds = sorted({parsed[lab].seed for lab in keep})
    rest = [d for d in da.dims if d != dim]
    out = xr.DataArray(
        np.full((len(arm_names), len(seeds), *[da.sizes[d] for d in rest]), np.nan),
        dims=("arm", "seed", *rest),
        coords={
            "arm": np.array(arm_names, dtype=object),
            "seed": seeds,
            **{d: da[d].values for d in rest if d in da.coords},
        },
    )
    for lab in keep:
        out.loc[{"arm": parsed[lab].arm, "seed": parsed[lab].seed}] = da.sel({dim: lab}).transpose(*rest).values
    return out


def _arm_order(arm: str) -> tuple:
    name = parse_arm(arm)
    order = {"phasewise": 0, "fixed-small": 1, "fixed-large": 2}
    return (name.objective != "kd", order.get(name.schedule, 9), arm)


def retrieval_accuracy(ds: xr.Dataset, task: str, metric: str = "correct") -> xr.DataArray:
    """Mean over depths and samples -> (checkpoint, length)."""
    return ds[metric].sel(task=task).astype(float).mean(["depth", "sample"])


def arm_accuracy(ds: xr.Dataset, task: str, metric: str = "correct") -> xr.DataArray:
    """F1 data: accuracy (arm, seed, length)."""
    return by_arm(retrieval_accuracy(ds, task, metric), "checkpoint")


def arm_band_updates(bands: xr.Dataset, var: str = "q_rel_update") -> xr.DataArray:
    """F3 data: mean update per band over layers, (arm, seed, band)."""
    return by_arm(bands[var].mean("layer"), "comparison")


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


def fmt_mean_std(values: np.ndarray) -> str:
    values = np.asarray(values, dtype=float)
    values = values[~np.isnan(values)]
    if values.size == 0:
        return "n/a"
    if values.size == 1:
        return f"{values[0]:.2f}"
    return f"{values.mean():.2f} ± {values.std(ddof=1):.2f}"


def results_table(retrieval: xr.Dataset, task: str = "passkey") -> tuple[list[str], list[dict]]:
    """Rows: the teacher(s) then every arm; columns: accuracy per length (mean ± std over seeds, n seeds)
    and the gold-answer log-prob at the longest length."""
    acc = retrieval_accuracy(retrieval, task)
    logp = retrieval_accuracy(retrieval, task, "answer_logprob")
    lengths = [int(x) for x in acc["length"].values]
    columns = ["model", "seeds", *[f"acc@{n}" for n in lengths], f"logp@{lengths[-1]}"]
    rows = []
    for name in map(str, acc["checkpoint"].values):
        if not parse_arm(name).is_protocol_arm:
            rows.append(
                {
                    "model": name,
                    "seeds": "1",
                    **{f"acc@{n}": f"{float(acc.sel(checkpoint=name, length=n)):.2f}" for n in lengths},
                    f"logp@{lengths[-1]}": f"{float(logp.sel(checkpoint=name, length=lengths[-1])):.2f}",
                }
            )
    arm_acc, arm_logp = by_arm(acc, "checkpoint"), by_arm(logp, "checkpoint")
    for arm in map(str, arm_acc["arm"].values):
        a = arm_acc.sel(arm=arm)
        rows.append(
            {
                "model": arm,
                "seeds": str(int(a.notnull().any("length").sum())),
                **{f"acc@{n}": fmt_mean_std(a.sel(length=n).values) for n in lengths},
                f"logp@{lengths[-1]}": fmt_mean_std(arm_logp.sel(arm=arm, length=lengths[-1]).values),
            }
        )
    return columns, rows


def markdown_table(columns: list[str], rows: list[dict]) -> str:
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(str(r.get(c, "")) for c in columns) + " |" for r in rows]
    return "\n".join(lines)
