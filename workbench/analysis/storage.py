"""Writing analysis Datasets into the results store (groups updates_weights, updates_states, bands,
score_decomposition, probes), incrementally and without overwriting anything.

``workbench.store.write`` appends along a dim; xarray rewrites variables that lack that dim (the pair
coordinates) and the group attrs on every append. Here appends keep what was written first: variables
without the append dim are checked against the store and dropped, and the first write's attrs are kept.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

import numpy as np
import xarray as xr

from workbench import store
from workbench.store import StoreError

GROUPS = {
    "updates_weights": "comparison",
    "updates_states": "comparison",
    "bands": "comparison",
    "score_decomposition": "checkpoint",
    "probes": "checkpoint",
}


# pair-only coordinates that legitimately differ between appends (the theta of record); the exact values
# live in the per-comparison / per-checkpoint coordinates (wavelength_after, wavelength_ckpt)
VARYING = {"wavelength"}


def existing_labels(path: str | Path, group: str) -> set[str]:
    """Labels already written along the group's append dim (empty if the store or group does not exist)."""
    path = Path(path)
    if not path.exists() or not store.has_group(path, group):
        return set()
    ds = store.open_group(path, group)
    return set(map(str, ds[GROUPS[group]].values))


def refuse_existing(path: str | Path, group: str, labels: Iterable[str]) -> None:
    """Raise StoreError (before any work) if any label is already in ``group`` of the store."""
    path = Path(path)
    if path.exists():
        store.groups(path)  # a foreign store (another schema, not Zarr) is refused up front
    clash = sorted(existing_labels(path, group) & set(labels))
    if clash:
        raise StoreError(f"{path}/{group}: {GROUPS[group]} {clash} already written; refusing to write it twice "
                         "(use another --out store)")


def write_group(path: str | Path, group: str, ds: xr.Dataset) -> Path:
    """Create ``group`` or append ``ds`` to it along its dim (comparison or checkpoint)."""
    if group not in GROUPS:
        raise ValueError(f"unknown analysis group {group!r}; known: {', '.join(GROUPS)}")
    dim = GROUPS[group]
    path = Path(path)
    encoding = store.chunk_encoding(ds, (dim, "layer"))  # one chunk per (comparison|checkpoint, layer)
    if not store.has_group(path, group):
        return store.write(path, group, ds, encoding=encoding)
    old = store.open_group(path, group)
    refuse_existing(path, group, map(str, ds[dim].values))
    fixed = [name for name in ds.variables if dim not in ds[name].dims and name not in ds.dims]
    for name in fixed:
        if name in VARYING or name not in old.variables:
            continue
        same = old[name].shape == ds[name].shape and (
            np.allclose(old[name].values, ds[name].values, equal_nan=True) if ds[name].dtype.kind == "f"
            else list(map(str, old[name].values.ravel())) == list(map(str, ds[name].values.ravel())))
        if not same:
            raise StoreError(f"{path}/{group}: {name} differs from the store's (the group was written with "
                             f"another setting); write to another store")
    for name in ds.dims:
        if name != dim and name in old.coords and name in ds.coords:
            if list(map(str, old[name].values)) != list(map(str, ds[name].values)):
                raise StoreError(f"{path}/{group}: {name} labels {list(map(str, ds[name].values))} differ from the "
                                 f"store's {list(map(str, old[name].values))}; write to another store")
    new = ds.drop_vars([n for n in fixed if n in ds.variables and n not in ds.dims])
    new = new.drop_vars([n for n in new.dims if n != dim and n in new.coords])
    new.attrs = dict(old.attrs)
    return store.write(path, group, new, append_dim=dim)

