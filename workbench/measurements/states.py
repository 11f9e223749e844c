"""State view: pre-RoPE query/key states per RoPE pair on probe inputs (long windows of packed short
documents), and post-RoPE phase statistics, for each checkpoint and compared between checkpoints.

Per checkpoint, layer, head and pair: the mean pair norm of the pre-RoPE state (q_proj/k_proj outputs),
the phase coherence of the pre-RoPE angle (does the pair point one fixed way whatever the content?) and of
the post-RoPE angle (after transformers' own rotation: how much of the circle positions sweep).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import xarray as xr

from workbench import checkpoints as ck
from workbench import store
from workbench.config import DataConfig, to_dict
from workbench.measurements.capture import capture, describe_qk, pair_norm, per_checkpoint, phase_coherence, probe_batch
from workbench.measurements.weights import comparison_coords, comparison_pairs, resolve_reference

STATS = ("norm", "content_coherence", "phase_coherence")


def checkpoint_state_stats(model, batch) -> dict[str, np.ndarray]:
    """Per-pair statistics of one model on one batch: {q_norm: [L, H, P], k_norm: [L, Hkv, P], ...}."""
    cap = capture(model, batch, qk=True)
    out: dict[str, list] = {f"{p}_{s}": [] for p in ("q", "k") for s in STATS}
    for layer in range(len(cap.q)):
        q_rot, k_rot = cap.rotated(layer)
        for p, pre, post in (("q", cap.q[layer], q_rot), ("k", cap.k[layer], k_rot)):
            out[f"{p}_norm"].append(pair_norm(pre.to(torch.float64)).mean(dim=(0, 2)).numpy())  # [H, P]
            out[f"{p}_content_coherence"].append(phase_coherence(pre, (0, 2)))
            out[f"{p}_phase_coherence"].append(phase_coherence(post, (0, 2)))
    return {k: np.stack(v) for k, v in out.items()}


def state_updates(
    paths: Sequence[str | Path],
    *,
    reference: str | Path | int | None = None,
    seq_len: int = 1024,
    n_windows: int = 2,
    seed: int = 0,
    data: DataConfig | None = None,
    device: str = "cpu",
    progress: bool = False,
    inputs=None,
) -> xr.Dataset:
    """State statistics per comparison "A -> B": dims (comparison, end, layer, head|kv_head, pair) with
    ``end`` = before/after, plus ``q_norm_change`` / ``k_norm_change`` = (after - before) / before."""
    paths, ref_index = resolve_reference(paths, reference)
    infos = ck.inspect_all(paths, minimum=2)
    pairs = comparison_pairs(len(infos), ref_index)
    batch = probe_batch(seq_len, n_windows, seed, data) if inputs is None else inputs  # inputs: workbench.inputs
    needed = sorted({i for pr in pairs for i in pr})
    results = per_checkpoint(
        [infos[i] for i in needed],
        lambda m: checkpoint_state_stats(m, batch),
        progress=progress,
        desc="state statistics",
        device=device,
    )
    stats = dict(zip(needed, results))
    first = infos[0]
    data_vars = {}
    for p in ("q", "k"):
        hd = "head" if p == "q" else "kv_head"
        for s in STATS:
            arr = np.stack([np.stack([stats[a][f"{p}_{s}"], stats[b][f"{p}_{s}"]]) for a, b in pairs])
            data_vars[f"{p}_{s}"] = (("comparison", "end", "layer", hd, "pair"), arr)
        before, after = data_vars[f"{p}_norm"][1][:, 0], data_vars[f"{p}_norm"][1][:, 1]
        data_vars[f"{p}_norm_change"] = (("comparison", "layer", hd, "pair"), (after - before) / before)
    coords = {
        **comparison_coords(infos, pairs),
        "end": np.array(["before", "after"], dtype=object),
        "layer": np.arange(first.num_layers),
        "head": np.arange(first.num_heads),
        "kv_head": np.arange(first.num_kv_heads),
        **store.pair_coords(infos[-1].wavelengths()),
    }
    ds = xr.Dataset(data_vars, coords=coords)
    desc = {
        "norm": "mean over tokens of the pre-RoPE pair norm sqrt(x_j^2 + x_{j+d/2}^2)",
        "content_coherence": "|mean exp(i*angle)| of the pre-RoPE pair angle over tokens (1 = fixed direction)",
        "phase_coherence": "|mean exp(i*angle)| of the post-RoPE pair angle over tokens "
        "(0 = positions sweep the circle)",
        "norm_change": "(norm after - norm before) / norm before",
    }
    describe_qk(ds, desc, {"q": "query states", "k": "key states"})
    ds.attrs.update(
        store.provenance(
            analysis="state_updates",
            inputs="workbench.data.make_stream packed windows (continue positions, causal)",
            data=to_dict(data or DataConfig()),
            device=str(device),
            seq_len=seq_len,
            n_windows=n_windows,
            seed=seed,
            head_dim=first.head_dim,
            wavelength_theta=infos[-1].rope_theta,
        )
    )
    return ds
