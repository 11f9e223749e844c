"""Grid writes, layer 4 of the store: groups written cell by cell over grid dims such as (checkpoint, spec).

New checkpoints, new specs, or a new spec for an old checkpoint all go into one group; each cell is written
once (``cell_written`` flags, set after its data, say which), cells never written read as NaN, and a spec
name keeps one definition (``spec_hash``). :func:`check_grid` refuses a planned write before any expensive
work. With ``chunk_dims`` finer than the grid, each cell is one shard file whose inner chunks are the
(checkpoint, spec, layer) chunks readers and dask see. A grid write into an existing group is a transaction
(:mod:`workbench.store.transactions`): killed half way, it leaves its cells unwritten and a rerun completes them.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from workbench.store.schema import SCHEMA, WRITTEN, StoreError, has_group, objectify
from workbench.store.transactions import (
    MARKER,
    Hook,
    clean_tmp,
    ensure_root,
    lock,
    new_marker,
    open_raw,
    open_repaired,
    repair,
)
from workbench.store.zarr_bytes import WritableGroup, create_group, encoded_like, grow, write_vars


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


def _flag_chunks(grid_sizes: list[int]) -> tuple[int, ...]:
    """Chunks of ``cell_written``: about 64k cells each, so one commit rewrites one small file."""
    side = max(1, int(round(65536 ** (1 / max(len(grid_sizes), 1)))))
    return tuple(max(side, 1) for _ in grid_sizes)


def _cells(ds: xr.Dataset, grid: tuple[str, ...]) -> list[tuple]:
    return list(itertools.product(*[list(ds[d].values) for d in grid]))


def _check_specs(old: xr.Dataset, new: xr.Dataset, where: str) -> None:
    """Spec de-duplication: a name keeps one definition, and one definition keeps one name."""
    if "spec" not in old.dims or "spec_hash" not in old.coords or "spec_hash" not in new.coords:
        return
    old_hash = dict(zip(map(str, old["spec"].values), map(str, old["spec_hash"].values)))
    by_hash = {h: n for n, h in old_hash.items()}
    for name, h in zip(map(str, new["spec"].values), map(str, new["spec_hash"].values)):
        if name in old_hash and old_hash[name] != h:
            raise StoreError(
                f"{where}: spec {name!r} is already stored with a different definition; "
                "give the new perturbation another name"
            )
        if name not in old_hash and h in by_hash:
            raise StoreError(
                f"{where}: spec {name!r} is the same perturbation as stored spec {by_hash[h]!r}; "
                "refusing to write it twice"
            )


def write_grid(
    store: str | Path,
    group: str,
    ds: xr.Dataset,
    *,
    grid: tuple[str, ...] = ("checkpoint", "spec"),
    chunk_dims: Iterable[str] | None = None,
    compress: bool = True,
) -> Path:
    """Write ``ds`` into ``group`` cell by cell over the ``grid`` dims (new checkpoints, new specs, or a new
    spec for an old checkpoint all work); cells never written read as NaN.

    Refuses (StoreError, nothing written) a store of another schema, a cell (checkpoint, spec) already
    written, a spec name stored with another definition or a definition stored under another name
    (``spec_hash`` coordinate), other variables, or other non-grid dims/coordinates.

    A cell counts as written once its ``cell_written`` flag is set, after its data; a write killed half way
    leaves its cells unwritten (and hidden by :func:`open_group` where no cell of an entry is written), and
    rerunning the same write completes them. The group attrs stay as first written. With ``chunk_dims``
    finer than the grid, each cell is one shard file holding its chunks.
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
    ensure_root(store)
    flags = xr.Dataset({WRITTEN: (grid, np.ones([ds.sizes[d] for d in grid], dtype=np.int8))})
    ds = objectify(xr.merge([ds, flags], compat="override", join="override", combine_attrs="override"))
    ds.attrs.setdefault("schema", SCHEMA)
    chunk_dims = tuple(chunk_dims if chunk_dims is not None else grid)
    hook = Hook()
    with lock(store):
        clean_tmp(store)
        if not (store / group / "zarr.json").is_file():
            encoding = chunk_encoding(ds, chunk_dims, compress=compress)
            if set(chunk_dims) - set(grid):  # chunks finer than a cell: one shard file per cell holds them
                for name, enc in encoding.items():
                    cell = tuple(1 if d in grid else max(int(n), 1) for d, n in ds[name].sizes.items())
                    if set(grid) <= set(ds[name].dims) and cell != tuple(enc["chunks"]):
                        enc["shards"] = cell
            encoding[WRITTEN] = {"chunks": _flag_chunks([ds.sizes[d] for d in grid])}
            create_group(store, group, ds, encoding, hook)
            return store
        repair(store, group)
        old = open_raw(store, group)  # lazy, no dask: only coordinates and flags are read
        _check_grid_write(old, ds, grid, where)
        g = WritableGroup(store, group, hook)
        stored = {d: {str(v): i for i, v in enumerate(old[d].values)} for d in grid}
        new_values = {d: [v for v in ds[d].values if str(v) not in stored[d]] for d in grid}
        grown = {d: old.sizes[d] for d in grid if new_values[d]}
        index = {d: [stored[d].get(str(v), -1) for v in ds[d].values] for d in grid}
        for d in grid:  # the stored index of every new entry, after the ones already there
            n = old.sizes[d]
            for pos in range(ds.sizes[d]):
                if index[d][pos] < 0:
                    index[d][pos] = n
                    n += 1
        g.put_attrs({**g.attrs, MARKER: new_marker(grown=grown, cells={d: sorted(index[d]) for d in grid})})
        for d, n_old in grown.items():  # grow the grid; the new entries' coordinates
            n_new = n_old + len(new_values[d])
            grow(g, d, n_new)
            per_entry = [
                n
                for n in ds.variables
                if n in g.meta
                and d in ds[n].dims
                and n != WRITTEN
                and not (set(ds[n].dims) - {d}) & set(grid)
                and n not in ds.data_vars
            ]
            new = ds.drop_vars(list(ds.data_vars)).sel({d: new_values[d]})  # coordinates only: no data copy
            write_vars(
                g,
                new,
                per_entry,
                {
                    n: tuple(
                        slice(n_old, n_new) if dd == d else slice(0, g.meta[n].shape[i])
                        for i, dd in enumerate(g.dims(n))
                    )
                    for n in per_entry
                },
                "grow",
            )
        body = [n for n in ds.data_vars if n != WRITTEN and set(ds[n].dims) & set(grid)]
        _write_cells(g, ds, body, grid, index)
        # commit: the flags of every cell of this write, after all its data (one chunk file: atomic)
        fdims = g.dims(WRITTEN)
        g.update(WRITTEN, tuple(index[d] for d in fdims), np.int8(1))
        hook.tick("commit")
        attrs = dict(g.attrs)
        attrs.pop(MARKER, None)
        g.put_attrs(attrs)
    return store


def _write_cells(
    g: WritableGroup, ds: xr.Dataset, names: list[str], grid: tuple[str, ...], index: Mapping[str, list[int]]
) -> None:
    """Write the cells of ``ds`` (positions along the grid dims) at their stored indices ``index``."""
    fast, slow = [], []
    for name in names:
        dims = g.dims(name)
        gdims = [d for d in dims if d in grid]
        var = ds[name].variable.transpose(*dims)
        values = encoded_like(g, name, var)
        for pos in itertools.product(*[range(ds.sizes[d]) for d in gdims]):
            at = dict(zip(gdims, pos))
            region = tuple(
                slice(index[d][at[d]], index[d][at[d]] + 1) if d in at else slice(0, g.meta[name].shape[i])
                for i, d in enumerate(dims)
            )
            if values is None:
                slow.append((name, ds[[name]].isel({d: [p] for d, p in at.items()}), {name: region}))
            else:
                fast.append(
                    (name, values[tuple(slice(at[d], at[d] + 1) if d in at else slice(None) for d in dims)], region)
                )
    g.write(fast, "data")
    for name, part, regions in slow:
        write_vars(g, part, [name], regions, "data")


def _check_grid_write(old: xr.Dataset, ds: xr.Dataset, grid: tuple[str, ...], where: str) -> None:
    if set(old.data_vars) != set(ds.data_vars):
        raise StoreError(
            f"{where}: variables differ: store has {sorted(old.data_vars)}, new data has {sorted(ds.data_vars)}"
        )
    for dim, size in ds.sizes.items():
        if dim in grid:
            continue
        if old.sizes.get(dim) != size:
            raise StoreError(f"{where}: dim {dim!r} has size {size}, the store has {old.sizes.get(dim)}")
    for name, coord in ds.coords.items():
        if (
            name in old.coords
            and not set(coord.dims) & set(grid)
            and not np.array_equal(np.asarray(coord.values), np.asarray(old[name].values))
        ):
            raise StoreError(f"{where}: coordinate {name!r} differs from the stored one")
    unknown = sorted(n for n in ds.coords if n not in old.variables and set(ds[n].dims) & set(grid))
    if unknown:
        raise StoreError(f"{where}: coordinates {unknown} are not in the stored group; write to another store")
    _check_specs(old, ds, where)
    _refuse_written(old, ds, grid, where)


def _refuse_written(old: xr.Dataset, ds: xr.Dataset, grid: tuple[str, ...], where: str) -> None:
    stored = {d: {str(v): i for i, v in enumerate(old[d].values)} for d in grid}
    flags = np.asarray(old[WRITTEN].transpose(*grid).values)
    done = []
    for cell in _cells(ds, grid):
        if all(str(v) in stored[d] for d, v in zip(grid, cell)):
            if int(flags[tuple(stored[d][str(v)] for d, v in zip(grid, cell))]):
                done.append(dict(zip(grid, map(str, cell))))
    if done:
        raise StoreError(f"{where}: already written for {done}; refusing to write it twice")


def _raw_grid(store: Path, group: str) -> xr.Dataset:
    """The whole grid group, unwritten entries included (readers get :func:`open_group`'s view)."""
    ds = open_repaired(store, group)  # checks the store, repairs what a killed writer left
    ds.attrs.pop(MARKER, None)
    return ds


def written_cells(store: str | Path, group: str, grid: tuple[str, ...] = ("checkpoint", "spec")) -> set[tuple]:
    """The grid cells of a group already written (empty when the store or the group does not exist)."""
    if not has_group(store, group):
        return set()
    old = _raw_grid(Path(store), group)
    mask = old[WRITTEN].transpose(*grid).values.astype(bool)
    coords = [list(map(str, old[d].values)) for d in grid]
    return {tuple(c[i] for c, i in zip(coords, idx)) for idx in zip(*np.nonzero(mask))}


def check_grid(
    store: str | Path, group: str, coords: Mapping[str, Iterable[Any]], spec_hash: Iterable[str] | None = None
) -> None:
    """Refuse, before any expensive work, a planned write of the cells ``coords`` (grid dim -> values)
    that :func:`write_grid` would refuse (already written, or a spec name/definition clash)."""
    store = Path(store)
    if not has_group(store, group):
        return
    grid = tuple(coords)
    skeleton = xr.Dataset(coords={d: np.array(list(v), dtype=object) for d, v in coords.items()})
    if spec_hash is not None:
        skeleton = skeleton.assign_coords(spec_hash=("spec", np.array(list(spec_hash), dtype=object)))
    old = _raw_grid(store, group)
    where = f"{store}/{group}"
    _check_specs(old, skeleton, where)
    _refuse_written(old, skeleton, grid, where)
