"""Optional capture of raw activations (post-RoPE q/k, attention output, residual) under a name filter.

Only captures whose names match the filter are kept in memory (``blocks.1.attn.hook_rot_q``,
``blocks.*.hook_resid_post`` ...), so memory stays bounded. Variables (layers the filter did not match are
NaN and, being unwritten chunks, take no disk):

- ``rot_q`` (checkpoint, spec, sample, layer, head, position, pair, half)
- ``rot_k`` (checkpoint, spec, sample, layer, kv_head, position, pair, half)
- ``attn_out`` / ``resid_post`` (checkpoint, spec, sample, layer, position, hidden)

``half`` is 0 for dim j and 1 for dim j + d/2 of pair j; ``pair`` carries ``wavelength`` and ``dims``.
Written uncompressed with chunks of one (checkpoint, spec, layer), whole along heads, positions and pairs
(DESIGN: chunks by (checkpoint, layer) with the whole pair axis).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import numpy as np
import xarray as xr

from workbench import rope
from workbench import store as wstore  # the module; `store` is a store path
from workbench.interventions.backends import Backend, load_backend, name_filter
from workbench.interventions.hooks import act_name
from workbench.interventions.specs import Spec, identity, validate_all
from workbench.interventions.traces import _as_inputs, finish

KINDS = ("rot_q", "rot_k", "attn_out", "resid_post")  # variables, named as their capture kinds (hooks.act_name)
DEFAULT_NAMES = (act_name("rot_q", "*"),)  # post-RoPE queries of every layer


def captured_layers(names: Iterable[str] | Callable[[str], bool], num_layers: int) -> dict[str, list[int]]:
    """{variable: the layers whose capture name matches ``names``}, the variables with none left out; a filter
    matching nothing is a ValueError (checked before any forward pass)."""
    want = name_filter(names)
    matched = {var: [i for i in range(num_layers) if want(act_name(var, i))] for var in KINDS}
    matched = {k: v for k, v in matched.items() if v}
    if not matched:
        raise ValueError(f"activation filter {names!r} matches no capture name (e.g. {act_name('rot_q', 0)})")
    return matched


def capture_activations(
    ckpt_path: str | Path,
    specs: Sequence[Spec] = (),
    inputs=None,
    *,
    names: Iterable[str] | Callable[[str], bool] = DEFAULT_NAMES,
    backend: str | Backend = "nnsight",
) -> xr.Dataset:
    """Raw activations matching ``names`` for clean + each spec -> Dataset (see module docstring)."""
    be = backend if isinstance(backend, Backend) else load_backend(ckpt_path, backend)
    runs = [identity("clean"), *[s for s in specs if not s.is_identity]]
    validate_all(runs, be.geometry)
    want = name_filter(names)
    g = be.geometry
    matched = captured_layers(names, g.num_layers)
    ids, pos = _as_inputs(inputs, be)
    out = be.run(ids, pos, runs, capture=want)
    b, t = ids.shape
    pairs = g.head_dim // 2
    data_vars = {}
    for var, layers in matched.items():
        sample = out[0][act_name(var, layers[0])]
        if var in ("rot_q", "rot_k"):
            heads = sample.shape[1]
            arr = np.full((len(runs), b, g.num_layers, heads, t, pairs, 2), np.nan, dtype=np.float32)
            for s, got in enumerate(out):
                for i in layers:
                    x = got[act_name(var, i)].float().cpu().numpy()  # [B, H, T, d]
                    arr[s, :, i] = np.moveaxis(rope.pair_view(x), -2, -1)  # [B, H, T, pair, half]
            hdim = "head" if var == "rot_q" else "kv_head"
            data_vars[var] = (("spec", "sample", "layer", hdim, "position", "pair", "half"), arr)
        else:
            arr = np.full((len(runs), b, g.num_layers, t, sample.shape[-1]), np.nan, dtype=np.float32)
            for s, got in enumerate(out):
                for i in layers:
                    arr[s, :, i] = got[act_name(var, i)].float().cpu().numpy()
            data_vars[var] = (("spec", "sample", "layer", "position", "hidden"), arr)
    coords = {
        "spec": np.array([r.name for r in runs], dtype=object),
        "sample": np.arange(b),
        "layer": np.arange(g.num_layers),
        "half": np.array(["j", "j+d/2"], dtype=object),
        "spec_json": ("spec", np.array([r.to_json() for r in runs], dtype=object)),
        "spec_hash": ("spec", np.array([r.ops_hash for r in runs], dtype=object)),
        "position_id": (("sample", "position"), pos.numpy()),
    }
    coords.update(wstore.pair_coords(2 * np.pi / g.inv_freq_for(g.theta)))
    ds = xr.Dataset(data_vars, coords=coords)
    return finish(
        ds,
        be,
        ckpt_path,
        kind=wstore.ACTIVATIONS,
        extra={"names": names if not callable(names) else "callable", "captured": sorted(matched)},
    )


def write_activations(store: str | Path, ds: xr.Dataset) -> Path:
    """Write (append) an activations Dataset to group ``activations``, chunked by (checkpoint, spec, layer)."""
    return wstore.save(store, wstore.ACTIVATIONS, ds)
