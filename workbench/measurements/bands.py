"""Frequency bands: RoPE pairs grouped by wavelength relative to the phases' context lengths, with the
critical pair and spectrum utilisation of each phase's theta (``workbench.rope``), and per-layer band
summaries of the weight updates.

Band k of context lengths L1 < L2 < ... is ``workbench.rope.assign_bands``: 0 = rotates fully within the
short context (lambda <= L1), 1 = within the long context, ..., last = beyond every context.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import xarray as xr

from workbench import rope, stats, store


def parse_lengths(text: str | Sequence[int]) -> list[int]:
    """'256,1024' -> [256, 1024] (sorted, positive, distinct); ValueError naming the bad entry."""
    items = text.split(",") if isinstance(text, str) else list(text)
    out = []
    for item in items:
        try:
            value = int(str(item).strip())
        except ValueError:
            raise ValueError(f"phase length {item!r} is not an integer (expected e.g. 256,1024)") from None
        if value <= 0:
            raise ValueError(f"phase length must be > 0, got {value}")
        out.append(value)
    if not out:
        raise ValueError("no phase lengths given (expected e.g. 256,1024)")
    if len(set(out)) != len(out):
        raise ValueError(f"phase lengths must be distinct, got {out}")
    return sorted(out)


def index_trend(rel_update: xr.DataArray) -> np.ndarray:
    """Spearman correlation, per (comparison, layer), between pair index and the head-mean update [C, L]."""
    head = [d for d in ("head", "kv_head") if d in rel_update.dims]
    return stats.index_spearman(rel_update.mean(head).transpose("comparison", "layer", "pair").values)


def band_summary(updates: xr.Dataset, phase_lengths: Sequence[int]) -> xr.Dataset:
    """Per comparison: each pair's band at the after-theta (the theta the update was trained with), the
    mean relative update / cosine of W_q and W_k per (layer, band) over heads and the band's pairs, and the
    critical pair and utilisation of the before- and after-theta at every phase length."""
    lengths = parse_lengths(phase_lengths)
    labels = np.array(rope.band_edges_label(lengths), dtype=object)
    d = int(updates.attrs["head_dim"])
    comps = updates["comparison"].values
    n_bands = len(labels)
    if "wavelength_after" in updates.coords:  # the after-theta's wavelengths with the model's RoPE scaling
        band_of = rope.wavelength_bands(updates["wavelength_after"].transpose("comparison", "pair").values, lengths)
    else:
        band_of = np.stack([rope.assign_bands(float(t), d, lengths) for t in updates["rope_theta_after"].values])
    out = {
        f"{p}_{s}": np.full((len(comps), updates.sizes["layer"], n_bands), np.nan)
        for p in ("q", "k")
        for s in ("rel_update", "cosine")
    }
    for c in range(len(comps)):
        for b in range(n_bands):
            sel = band_of[c] == b
            if not sel.any():
                continue
            for key in out:
                da = updates[key].isel(comparison=c).isel(pair=np.flatnonzero(sel))
                out[key][c, :, b] = da.mean(dim=[dim for dim in da.dims if dim != "layer"]).values
    n_pairs = np.stack([[int((band_of[c] == b).sum()) for b in range(n_bands)] for c in range(len(comps))])
    trend = {p: index_trend(updates[f"{p}_rel_update"]) for p in ("q", "k")}
    ends = ("before", "after")
    crit = np.zeros((len(comps), 2, len(lengths)), dtype=np.int64)
    frac = np.zeros((len(comps), 2, len(lengths)))
    cover = np.zeros((len(comps), 2, len(lengths)))
    for c in range(len(comps)):
        for e, end in enumerate(ends):
            theta = float(updates[f"rope_theta_{end}"].values[c])
            for k, length in enumerate(lengths):
                crit[c, e, k] = rope.critical_pair(theta, d, length)
                u = rope.utilisation(theta, d, length)
                frac[c, e, k], cover[c, e, k] = u.full_rotation_fraction, u.mean_coverage
    keep = [n for n in updates.coords if updates[n].dims == ("comparison",)]
    coords = {n: updates[n] for n in keep}
    coords.update(
        {
            "band": labels,
            "phase_length": np.array(lengths, dtype=np.int64),
            "end": np.array(ends, dtype=object),
            "layer": updates["layer"].values,
            **store.pair_coords(
                updates["wavelength"].values
                if "wavelength" in updates.coords
                else rope.wavelengths(float(updates["rope_theta_after"].values[-1]), d)
            ),
        }
    )
    ds = xr.Dataset(
        {
            **{k: (("comparison", "layer", "band"), v) for k, v in out.items()},
            "n_pairs": (("comparison", "band"), n_pairs),
            "q_index_trend": (("comparison", "layer"), trend["q"]),
            "k_index_trend": (("comparison", "layer"), trend["k"]),
            "pair_band": (("comparison", "pair"), band_of),
            "critical_pair": (("comparison", "end", "phase_length"), crit),
            "full_rotation_fraction": (("comparison", "end", "phase_length"), frac),
            "mean_coverage": (("comparison", "end", "phase_length"), cover),
        },
        coords=coords,
    )
    for p in ("q", "k"):
        ds[f"{p}_index_trend"].attrs["description"] = (
            "Spearman rank correlation between pair index j and the head-mean relative update: > 0 when "
            "higher-index (longer-wavelength) pairs moved more (the paper's F3)"
        )
    ds["pair_band"].attrs["description"] = "band index of each pair at the comparison's after-theta"
    ds["critical_pair"].attrs["description"] = (
        "first pair not completing a rotation within phase_length (arXiv 2310.05209)"
    )
    ds.attrs.update(
        store.provenance(
            analysis="band_summary",
            phase_lengths=lengths,
            head_dim=d,
            band_rule="workbench.rope.assign_bands at rope_theta_after",
        )
    )
    return ds
