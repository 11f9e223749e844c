"""Weight view: what moved in W_q / W_k between checkpoints, per layer x head x RoPE pair.

For each comparison "A -> B" and each pair j of each head (KV heads for W_k), the update restricted to the
pair's two rows (plus bias entries when the model has biases) is measured relative to its norm before,
together with the cosine between the before and after rows. Raw safetensors weights, float64.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import xarray as xr
from safetensors import safe_open
from tqdm.auto import tqdm

from workbench import architectures, store
from workbench import checkpoints as ck
from workbench.checkpoints import CheckpointError
from workbench.measurements.capture import describe_qk
from workbench.pair_updates import layer_pair_stats

STATS = ("rel_update", "cosine", "norm_before", "norm_after")


# ----------------------------------------------------------------------------- raw q/k weights (no model)


def weight_files(path: Path) -> dict[str, Path]:
    """Tensor name -> safetensors file holding it (single file, index.json or any shards)."""
    index = path / "model.safetensors.index.json"
    if index.is_file():
        return {k: path / v for k, v in json.loads(index.read_text())["weight_map"].items()}
    found: dict[str, Path] = {}
    for shard in sorted(path.glob("*.safetensors")):
        with safe_open(str(shard), framework="pt") as f:
            for key in f.keys():
                found[key] = shard
    return found


def read_qk_weights(info: ck.Info, layer: int, files: dict[str, Path] | None = None) -> dict[str, torch.Tensor]:
    """Raw q/k weights (and biases, when present) of one layer, in float64, from safetensors, keyed
    ``q_proj.weight`` ... whatever the architecture (a fused ``qkv_proj`` is split by head counts)."""
    files = files if files is not None else weight_files(info.path)
    out: dict[str, torch.Tensor] = {}
    for name, (key, rows) in architectures.tensor_sources(info.config or {"model_type": "llama"}, layer).items():
        if key not in files:
            if name.endswith("weight"):
                raise CheckpointError(f"{info.path}: tensor {key} not found in the safetensors files")
            continue
        with safe_open(str(files[key]), framework="pt") as f:
            tensor = f.get_slice(key)[rows] if rows is not None else f.get_tensor(key)
            out[name] = tensor.to(torch.float64)
    return out


# ------------------------------------------------------------------------------------ comparisons


def comparison_pairs(n: int, reference: int | None = None) -> list[tuple[int, int]]:
    """Index pairs to compare: consecutive (0->1, 1->2, ...) or each checkpoint against ``reference``."""
    if reference is None:
        return [(i, i + 1) for i in range(n - 1)]
    if not 0 <= reference < n:
        raise ValueError(f"reference index {reference} out of range for {n} checkpoints")
    return [(reference, i) for i in range(n) if i != reference]


def comparison_label(a: str, b: str) -> str:
    return f"{a} -> {b}"


def comparison_coords(infos: Sequence[ck.Info], pairs: Sequence[tuple[int, int]]) -> dict:
    """Coordinates along ``comparison``: label, before/after labels, steps, phases, thetas, hashes."""

    def col(values, dtype=object):
        return ("comparison", np.array(values, dtype=dtype))

    return {
        "comparison": np.array([comparison_label(infos[a].label, infos[b].label) for a, b in pairs], dtype=object),
        "before": col([infos[a].label for a, _ in pairs]),
        "after": col([infos[b].label for _, b in pairs]),
        "step_before": col([infos[a].step for a, _ in pairs], np.int64),
        "step_after": col([infos[b].step for _, b in pairs], np.int64),
        "phase_before": col([infos[a].phase for a, _ in pairs]),
        "phase_after": col([infos[b].phase for _, b in pairs]),
        "rope_theta_before": col([infos[a].rope_theta for a, _ in pairs], np.float64),
        "rope_theta_after": col([infos[b].rope_theta for _, b in pairs], np.float64),
        "hash_before": col([infos[a].content_hash() for a, _ in pairs]),
        "hash_after": col([infos[b].content_hash() for _, b in pairs]),
    }


def resolve_reference(paths: Sequence[str | Path], reference: str | Path | int | None) -> tuple[list, int | None]:
    """Put ``reference`` (an index, one of ``paths`` or another checkpoint path) into the list -> (paths, index)."""
    paths = list(paths)
    if reference is None:
        return paths, None
    if isinstance(reference, int):
        return paths, reference
    resolved = [Path(p).resolve() for p in paths]
    ref = Path(reference).resolve()
    if ref in resolved:
        return paths, resolved.index(ref)
    return [reference, *paths], 0


def weight_updates(
    paths: Sequence[str | Path],
    *,
    reference: str | Path | int | None = None,
    progress: bool = False,
) -> xr.Dataset:
    """Per-pair update statistics of W_q and W_k for consecutive checkpoints (or each vs ``reference``).

    Returns a Dataset with dims (comparison, layer, head|kv_head, pair): ``q_rel_update``, ``q_cosine``,
    ``q_norm_before``, ``q_norm_after`` and the ``k_`` equivalents; the ``pair`` dim carries ``wavelength``
    (at the theta of the last checkpoint) and ``dims``; ``wavelength_after`` (comparison, pair) gives the
    wavelengths at each comparison's after-theta.
    """
    paths, ref_index = resolve_reference(paths, reference)
    infos = ck.inspect_all(paths, minimum=2)
    pairs = comparison_pairs(len(infos), ref_index)
    first = infos[0]
    n_layers, n_heads, n_kv, d = first.num_layers, first.num_heads, first.num_kv_heads, first.head_dim
    half = d // 2
    out = {
        f"{p}_{s}": np.zeros((len(pairs), n_layers, n_heads if p == "q" else n_kv, half))
        for p in ("q", "k")
        for s in STATS
    }
    files = [weight_files(i.path) for i in infos]
    steps = range(n_layers)
    if progress:
        steps = tqdm(steps, desc="weight updates", unit="layer")
    for layer in steps:
        tensors = [read_qk_weights(info, layer, f) for info, f in zip(infos, files)]
        for c, (a, b) in enumerate(pairs):
            for p, stats in layer_pair_stats(tensors[a], tensors[b], n_heads, n_kv, d).items():
                for s in STATS:
                    out[f"{p}_{s}"][c, layer] = stats[s].numpy()
    coords = {
        **comparison_coords(infos, pairs),
        "layer": np.arange(n_layers),
        "head": np.arange(n_heads),
        "kv_head": np.arange(n_kv),
        **store.pair_coords(infos[-1].wavelengths()),
        "wavelength_after": (("comparison", "pair"), np.stack([infos[b].wavelengths() for _, b in pairs])),
        "kv_group": ("head", np.arange(n_heads) // (n_heads // n_kv)),
    }
    data_vars = {}
    for name, arr in out.items():
        dims = ("comparison", "layer", "head" if name.startswith("q") else "kv_head", "pair")
        data_vars[name] = (dims, arr)
    ds = xr.Dataset(data_vars, coords=coords)
    describe = {
        "rel_update": "|W_after - W_before| / |W_before| over the pair's two rows (Frobenius)",
        "cosine": "cosine between the pair's rows before and after (flattened)",
        "norm_before": "Frobenius norm of the pair's rows before",
        "norm_after": "Frobenius norm of the pair's rows after",
    }
    describe_qk(ds, describe, {"q": "W_q", "k": "W_k"})
    ds.attrs.update(
        store.provenance(
            analysis="weight_updates",
            source="raw safetensors weights (not TransformerLens-processed)",
            layout="half-split: pair j = rows h*d+j and h*d+j+d/2",
            head_dim=d,
            wavelength_theta=infos[-1].rope_theta,
            mode="consecutive" if ref_index is None else "reference",
        )
    )
    return ds
