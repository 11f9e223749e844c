"""The results store: xarray Datasets in a Zarr v3 directory, one group per kind of result.

A store opens with plain xarray and no project code::

    xr.open_zarr("runs/demo/results.zarr", group="retrieval", consolidated=False)

Layout: the root group carries ``attrs["schema"] == SCHEMA``; each result kind lives in its own group
(``retrieval``, ``traces``, ``repeated_tokens``, ``updates_weights``, ``updates_states``, ``bands``,
``score_decomposition``, ``probes``, ``activations`` ...). Groups use named dims (``checkpoint``,
``condition``, ``spec``, ``layer``, ``head``, ``kv_head``, ``pair``, ``position``, ``length``, ``depth``,
``sample``, ``task`` ...). The ``pair`` dim always carries the coordinates ``wavelength`` (tokens, at the
theta of record) and ``dims`` ("j,j+d/2"). Every group has provenance attrs (see :func:`provenance`).

Writes are incremental: the first write creates a group, later writes append along one dim (new
checkpoints, specs, conditions). Writing a coordinate value that is already there is refused, and nothing
already written is overwritten. String coordinates are stored as object dtype so appends work.
"""

from __future__ import annotations

import datetime as _dt
import json
from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np
import xarray as xr
import zarr

from workbench import rope

SCHEMA = "workbench-store/1"


class StoreError(ValueError):
    """A store of another schema, a duplicate write or an unknown group."""


def pair_coords(theta: float, head_dim: int, scaling: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Coordinates for the ``pair`` dim: index j, its wavelength at ``theta``, and its two dims."""
    half = head_dim // 2
    return {
        "pair": np.arange(half),
        "wavelength": ("pair", rope.wavelengths(theta, head_dim, scaling)),
        "dims": ("pair", np.array([f"{j},{j + half}" for j in range(half)], dtype=object)),
    }


def provenance(**extra: Any) -> dict[str, Any]:
    """Attrs every group carries: schema, time, library versions, plus what the writer adds
    (checkpoint hashes, theta, dtype, spec JSON ...). Non-scalar values are stored as JSON strings."""
    import torch
    import transformers

    import workbench

    attrs: dict[str, Any] = {
        "schema": SCHEMA,
        "written": _dt.datetime.now(_dt.timezone.utc).isoformat(),
        "versions": json.dumps({"workbench": workbench.__version__, "torch": torch.__version__,
                                "transformers": transformers.__version__, "xarray": xr.__version__,
                                "zarr": zarr.__version__}),
    }
    for key, value in extra.items():
        attrs[key] = value if isinstance(value, (str, int, float, bool)) else json.dumps(value, default=str)
    return attrs


def _objectify(ds: xr.Dataset) -> xr.Dataset:
    """Fixed-width unicode coords/vars break Zarr appends; store strings as object dtype."""
    for name in list(ds.variables):
        if ds[name].dtype.kind == "U":
            ds[name] = ds[name].astype(object)
    return ds


def _check_root(store: Path, create: bool) -> None:
    if not store.exists():
        if not create:
            raise StoreError(f"{store}: store not found")
        root = zarr.open_group(str(store), mode="w-", zarr_format=3)
        root.attrs["schema"] = SCHEMA
        return
    try:
        root = zarr.open_group(str(store), mode="r")
    except Exception as exc:  # zarr raises several types for a non-store path
        raise StoreError(f"{store}: not a Zarr store ({exc})") from None
    schema = root.attrs.get("schema")
    if schema != SCHEMA:
        raise StoreError(f"{store}: store schema is {schema!r}, expected {SCHEMA!r}; refusing to touch it")


def groups(store: str | Path) -> list[str]:
    """Names of the result groups in a store."""
    store = Path(store)
    _check_root(store, create=False)
    root = zarr.open_group(str(store), mode="r")
    return sorted(name for name, _ in root.groups())


def has_group(store: str | Path, group: str) -> bool:
    store = Path(store)
    return store.exists() and group in groups(store)


def write(store: str | Path, group: str, ds: xr.Dataset, *, append_dim: str | None = None,
          encoding: Mapping[str, Any] | None = None) -> Path:
    """Write ``ds`` as ``group`` of ``store``: create the group, or append along ``append_dim``.

    Refuses (StoreError, nothing written) a store of another schema, a group that exists when no
    ``append_dim`` is given, an append whose ``append_dim`` values are already in the group, or an append
    whose other dims/variables do not match.
    """
    store = Path(store)
    _check_root(store, create=True)
    ds = _objectify(ds.copy())
    ds.attrs.setdefault("schema", SCHEMA)
    exists = group in groups(store)
    if not exists:
        ds.to_zarr(str(store), group=group, mode="w-", zarr_format=3, consolidated=False,
                   encoding=dict(encoding or {}))
        return store
    if append_dim is None:
        raise StoreError(f"{store}/{group}: group already exists; pass append_dim to add to it")
    old = open_group(store, group)
    if append_dim not in old.dims:
        raise StoreError(f"{store}/{group}: has no dim {append_dim!r} to append along (dims: {dict(old.sizes)})")
    if append_dim in ds.coords and append_dim in old.coords:
        clash = sorted(set(map(str, old[append_dim].values)) & set(map(str, ds[append_dim].values)))
        if clash:
            raise StoreError(f"{store}/{group}: {append_dim} {clash} already written; refusing to write it twice")
    if set(old.data_vars) != set(ds.data_vars):
        raise StoreError(f"{store}/{group}: variables differ: store has {sorted(old.data_vars)}, "
                         f"new data has {sorted(ds.data_vars)}")
    for dim, size in ds.sizes.items():
        if dim != append_dim and old.sizes.get(dim) != size:
            raise StoreError(f"{store}/{group}: dim {dim!r} has size {size}, the store has {old.sizes.get(dim)}")
    ds.to_zarr(str(store), group=group, mode="a", append_dim=append_dim, zarr_format=3, consolidated=False)
    return store


def open_group(store: str | Path, group: str, *, chunks: Any = None) -> xr.Dataset:
    """Open one group lazily (dask chunks by default when ``chunks='auto'`` or {})."""
    store = Path(store)
    _check_root(store, create=False)
    if group not in groups(store):
        raise StoreError(f"{store}: no group {group!r} (has: {', '.join(groups(store)) or 'none'})")
    return xr.open_zarr(str(store), group=group, consolidated=False, chunks=chunks)


def find_stores(root: str | Path) -> list[Path]:
    """Workbench stores (``*.zarr`` with our schema) under a directory, sorted."""
    found = []
    for path in sorted(Path(root).rglob("*.zarr")):
        try:
            _check_root(path, create=False)
        except StoreError:
            continue
        found.append(path)
    return found


def decode_attr(value: Any) -> Any:
    """Inverse of the JSON encoding :func:`provenance` applies to non-scalar attrs."""
    if isinstance(value, str) and value[:1] in "[{":
        try:
            return json.loads(value)
        except json.JSONDecodeError:
            return value
    return value


def stack_checkpoints(datasets: Iterable[xr.Dataset], names: Iterable[str]) -> xr.Dataset:
    """Concatenate per-checkpoint Datasets along a new ``checkpoint`` dim with object-dtype names."""
    return xr.concat(list(datasets), dim=xr.DataArray(np.array(list(names), dtype=object), dims="checkpoint"))


# ------------------------------------------------------------------------ grids: (checkpoint, spec) cells

WRITTEN = "cell_written"  # int8 over the grid dims: 1 where that cell has been written


def chunk_encoding(ds: xr.Dataset, chunk_dims: Iterable[str], *, compress: bool = True) -> dict[str, dict[str, Any]]:
    """Zarr encoding: chunk size 1 along ``chunk_dims`` (e.g. checkpoint, spec, layer, head), whole
    elsewhere (the pair axis stays in one chunk), so reading one (layer, head) slice reads only its chunks.
    ``compress=False`` stores raw bytes (raw activations barely compress; zstd halves write throughput)."""
    dims = set(chunk_dims)
    enc: dict[str, dict[str, Any]] = {}
    for name, var in ds.data_vars.items():
        enc[name] = {"chunks": tuple(1 if d in dims else max(int(n), 1) for d, n in var.sizes.items())}
        if not compress:
            enc[name]["compressors"] = None
    return enc


def _cells(ds: xr.Dataset, grid: tuple[str, ...]) -> list[tuple]:
    import itertools

    return list(itertools.product(*[list(ds[d].values) for d in grid]))


def _check_specs(old: xr.Dataset, new: xr.Dataset, where: str) -> None:
    """Spec de-duplication: a name keeps one definition, and one definition keeps one name."""
    if "spec" not in old.dims or "spec_hash" not in old.coords or "spec_hash" not in new.coords:
        return
    old_hash = dict(zip(map(str, old["spec"].values), map(str, old["spec_hash"].values)))
    by_hash = {h: n for n, h in old_hash.items()}
    for name, h in zip(map(str, new["spec"].values), map(str, new["spec_hash"].values)):
        if name in old_hash and old_hash[name] != h:
            raise StoreError(f"{where}: spec {name!r} is already stored with a different definition; "
                             "give the new perturbation another name")
        if name not in old_hash and h in by_hash:
            raise StoreError(f"{where}: spec {name!r} is the same perturbation as stored spec {by_hash[h]!r}; "
                             "refusing to write it twice")


def _nan_block(old: xr.Dataset, new: xr.Dataset, dim: str, values: list, grid: tuple[str, ...]) -> xr.Dataset:
    """An unwritten block to grow the group along ``dim`` by ``values`` (other grid dims as stored)."""
    src = new.sel({dim: values})
    data_vars = {}
    for name, var in old.data_vars.items():
        if dim not in var.dims:
            continue
        shape = tuple(len(values) if d == dim else old.sizes[d] for d in var.dims)
        fill = 0 if name == WRITTEN else np.nan
        data_vars[name] = (var.dims, np.full(shape, fill, dtype=var.dtype))
    coords: dict[str, Any] = {dim: np.array(values, dtype=old[dim].dtype)}
    for name, coord in src.coords.items():
        if name != dim and coord.dims == (dim,):
            coords[name] = (dim, np.asarray(coord.values, dtype=old[name].dtype if name in old.coords else None))
    for d in old.dims:
        if d != dim:
            coords[d] = old[d].values
    block = xr.Dataset(data_vars, coords=coords)
    return _objectify(block.drop_vars([v for v in block.variables if dim not in block[v].dims]))


def write_grid(store: str | Path, group: str, ds: xr.Dataset, *, grid: tuple[str, ...] = ("checkpoint", "spec"),
               chunk_dims: Iterable[str] | None = None, compress: bool = True) -> Path:
    """Write ``ds`` into ``group`` cell by cell over the ``grid`` dims (new checkpoints, new specs, or a new
    spec for an old checkpoint all work); cells never written read as NaN.

    Refuses (StoreError, nothing written) a store of another schema, a cell (checkpoint, spec) already
    written, a spec name stored with another definition or a definition stored under another name
    (``spec_hash`` coordinate), other variables, or other non-grid dims/coordinates.
    """
    store = Path(store)
    where = f"{store}/{group}"
    missing = [d for d in grid if d not in ds.dims]
    if missing:
        raise StoreError(f"{where}: data has no dim {missing[0]!r} (dims: {dict(ds.sizes)})")
    for d in grid:
        values = list(map(str, ds[d].values))
        if len(set(values)) != len(values):
            raise StoreError(f"{where}: {d} values repeat in the data: {values}")
    _check_root(store, create=True)
    ds = _objectify(ds.copy())
    ds[WRITTEN] = xr.DataArray(np.ones([ds.sizes[d] for d in grid], dtype=np.int8), dims=grid)
    ds.attrs.setdefault("schema", SCHEMA)
    chunk_dims = tuple(chunk_dims if chunk_dims is not None else grid)
    if group not in groups(store):
        ds.to_zarr(str(store), group=group, mode="w-", zarr_format=3, consolidated=False,
                   encoding=chunk_encoding(ds, chunk_dims, compress=compress))
        return store
    old = open_group(store, group, chunks={})
    if set(old.data_vars) != set(ds.data_vars):
        raise StoreError(f"{where}: variables differ: store has {sorted(old.data_vars)}, "
                         f"new data has {sorted(ds.data_vars)}")
    for dim, size in ds.sizes.items():
        if dim in grid:
            continue
        if old.sizes.get(dim) != size:
            raise StoreError(f"{where}: dim {dim!r} has size {size}, the store has {old.sizes.get(dim)}")
    for name, coord in ds.coords.items():
        if name in old.coords and not set(coord.dims) & set(grid) and \
                not np.array_equal(np.asarray(coord.values), np.asarray(old[name].values)):
            raise StoreError(f"{where}: coordinate {name!r} differs from the stored one")
    _check_specs(old, ds, where)
    stored = {d: {str(v): i for i, v in enumerate(old[d].values)} for d in grid}
    _refuse_written(old, ds, grid, where)
    for d in grid:  # grow the grid with unwritten blocks for new values
        new_values = [v for v in ds[d].values if str(v) not in stored[d]]
        if new_values:
            block = _nan_block(old, ds, d, new_values, grid)
            block.to_zarr(str(store), group=group, mode="a", append_dim=d, zarr_format=3, consolidated=False)
            old = open_group(store, group, chunks={})
            stored = {g: {str(v): i for i, v in enumerate(old[g].values)} for g in grid}
    body = ds.drop_vars([v for v in ds.variables if not set(ds[v].dims) & set(grid)])
    body = body.drop_vars([c for c in body.coords if c not in grid])  # grid coords already stored
    for cell in _cells(ds, grid):
        sel = {d: [v] for d, v in zip(grid, cell)}
        region = {d: slice(stored[d][str(v)], stored[d][str(v)] + 1) for d, v in zip(grid, cell)}
        part = body.sel(sel)
        part = xr.Dataset({n: part[n].transpose(*old[n].dims) for n in part.data_vars})
        part = part.drop_vars([d for d in grid if d in part.coords])
        part.to_zarr(str(store), group=group, mode="r+", region=region, zarr_format=3, consolidated=False)
    return store


def _refuse_written(old: xr.Dataset, ds: xr.Dataset, grid: tuple[str, ...], where: str) -> None:
    stored = {d: {str(v): i for i, v in enumerate(old[d].values)} for d in grid}
    done = []
    for cell in _cells(ds, grid):
        if all(str(v) in stored[d] for d, v in zip(grid, cell)):
            idx = {d: stored[d][str(v)] for d, v in zip(grid, cell)}
            if int(old[WRITTEN].isel(idx).values):
                done.append(dict(zip(grid, map(str, cell))))
    if done:
        raise StoreError(f"{where}: already written for {done}; refusing to write it twice")


def written_cells(store: str | Path, group: str, grid: tuple[str, ...] = ("checkpoint", "spec")) -> set[tuple]:
    """The grid cells of a group already written (empty when the store or the group does not exist)."""
    if not has_group(store, group):
        return set()
    old = open_group(store, group)
    mask = old[WRITTEN].transpose(*grid).values.astype(bool)
    coords = [list(map(str, old[d].values)) for d in grid]
    return {tuple(c[i] for c, i in zip(coords, idx)) for idx in zip(*np.nonzero(mask))}


def check_grid(store: str | Path, group: str, coords: Mapping[str, Iterable[Any]],
               spec_hash: Iterable[str] | None = None) -> None:
    """Refuse, before any expensive work, a planned write of the cells ``coords`` (grid dim -> values)
    that :func:`write_grid` would refuse (already written, or a spec name/definition clash)."""
    store = Path(store)
    if not has_group(store, group):
        return
    grid = tuple(coords)
    skeleton = xr.Dataset(coords={d: np.array(list(v), dtype=object) for d, v in coords.items()})
    if spec_hash is not None:
        skeleton = skeleton.assign_coords(spec_hash=("spec", np.array(list(spec_hash), dtype=object)))
    old = open_group(store, group, chunks={})
    where = f"{store}/{group}"
    _check_specs(old, skeleton, where)
    _refuse_written(old, skeleton, grid, where)


def read_written(store: str | Path, group: str, *, chunks: Any = None) -> xr.Dataset:
    """Open a grid group; unwritten cells are NaN (see ``cell_written``)."""
    return open_group(store, group, chunks=chunks)
