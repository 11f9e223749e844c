"""Crash-safe writes, layer 3 of the store: one writer at a time, a marker while a write is under way, repair of
what a killed writer left, and the readers' view that hides what is not finished.

- Writers of one store are serialised by an advisory ``flock`` on the root ``zarr.json`` (:func:`lock`).
- A first write builds the group in a temp directory and renames it into place (:mod:`workbench.store.zarr_bytes`).
- An append (:func:`write`) or a grid write into an existing group (:mod:`workbench.store.grid`) is a small
  transaction: the group attr ``write_in_progress`` (:data:`MARKER`) is set first, then the arrays are resized
  and the new data written (each chunk file replaced atomically), then the grid's ``cell_written`` flags, and
  the marker is removed last.
- :func:`open_group` hides what a live or killed writer has not finished; the next write (or an open with no
  writer about) repairs what a killed one left (:func:`repair`), so rerunning the command completes the
  interrupted cells.
- A derived group is replaced as a whole: built under a temp name, renamed over the old one (:func:`replace_group`).
- ``WORKBENCH_STORE_KILL_AFTER=<phase>:<n>`` (:data:`KILL_ENV`) makes a writer kill itself, for tests.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import itertools
import json
import os
import shutil
import signal
import socket
import time
import uuid
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from workbench.store.schema import SCHEMA, TMP_PREFIX, WRITTEN, StoreError, check_schema, groups, objectify
from workbench.store.zarr_bytes import (
    WritableGroup,
    chunk_slices,
    create_group,
    file_shape,
    group_attrs,
    group_doc,
    grow,
    write_vars,
)

MARKER = "write_in_progress"  # group attr (JSON) while a write is under way; removed last
LOCK_TIMEOUT_S = 600.0  # how long a writer waits for another writer of the same store
KILL_ENV = "WORKBENCH_STORE_KILL_AFTER"  # test hook "<phase>:<n>": SIGKILL self after n events of a phase


@contextlib.contextmanager
def lock(store: Path, *, wait: bool = True) -> Iterator[bool]:
    """Exclusive advisory lock on the store (``flock`` of the root ``zarr.json``; released by the kernel when
    the holder dies). Yields False when ``wait`` is False and another process holds it."""
    try:
        import fcntl  # lazy: POSIX only; the ImportError is handled below
    except ImportError:  # no flock on this platform: writers are not serialised
        yield True
        return
    fd = os.open(store / "zarr.json", os.O_RDONLY)
    try:
        deadline = time.monotonic() + LOCK_TIMEOUT_S
        got = False
        while not got:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                got = True
            except BlockingIOError:
                if not wait:
                    break
                if time.monotonic() > deadline:
                    raise StoreError(
                        f"{store}: another process has been writing this store for {LOCK_TIMEOUT_S:.0f} s; giving up"
                    ) from None
                time.sleep(0.05)
        yield got
    finally:
        os.close(fd)


class Hook:
    """Deterministic crash injection for tests: ``WORKBENCH_STORE_KILL_AFTER=data:3`` makes the writer
    SIGKILL itself right after its third data chunk (phases: create, grow, data, commit)."""

    def __init__(self) -> None:
        phase, _, count = os.environ.get(KILL_ENV, "").partition(":")
        self.phase, self.left = phase, int(count) if count.strip().isdigit() else 0

    def tick(self, phase: str) -> None:
        if self.left and phase == self.phase:
            self.left -= 1
            if not self.left:
                os.kill(os.getpid(), signal.SIGKILL)


def ensure_root(store: Path) -> None:
    """Create the store (its root group with the schema attr) if it does not exist; refuse one of another schema."""
    if not store.exists():
        store.mkdir(parents=True, exist_ok=True)
        tmp = store / f"zarr.json.{uuid.uuid4().hex[:12]}.partial"
        tmp.write_bytes(group_doc({"schema": SCHEMA}))
        try:  # atomic, and never replaces a root another writer made meanwhile (its file carries the lock)
            os.link(tmp, store / "zarr.json")
        except FileExistsError:
            pass
        finally:
            tmp.unlink()
    check_schema(store)


def read_marker(attrs: Mapping[str, Any]) -> dict[str, Any] | None:
    value = attrs.get(MARKER)
    if value is None:
        return None
    try:
        return json.loads(value) if isinstance(value, str) else dict(value)
    except (TypeError, ValueError):
        return {}


def new_marker(**fields: Any) -> str:
    return json.dumps(
        {"pid": os.getpid(), "host": socket.gethostname(), "started": _dt.datetime.now(_dt.UTC).isoformat(), **fields}
    )


def clean_tmp(store: Path) -> None:
    """Temp groups of killed first writes (only called with the store's lock held). One whose builder still
    holds it (its ``flock``: a live writer of another store whose name starts with this one's) is left."""
    for tmp in store.absolute().parent.glob(f"{TMP_PREFIX}{store.name}-*"):
        try:
            import fcntl  # lazy: POSIX only

            fd = os.open(tmp, os.O_RDONLY)
        except (ImportError, OSError):
            shutil.rmtree(tmp, ignore_errors=True)
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            continue  # being built
        finally:
            os.close(fd)
        shutil.rmtree(tmp, ignore_errors=True)
    for old in store.glob(".old-*"):  # a replace_group killed between its two renames (they run under the lock)
        group = old.name[len(".old-") :].rpartition("-")[0]
        if group and not (store / group).exists():
            os.replace(old, store / group)  # the previous summary comes back
        else:
            shutil.rmtree(old, ignore_errors=True)


def repair(store: Path, group: str) -> bool:
    """Undo what a killed writer of ``group`` left half done (call with the store's lock held): shrink dims
    it grew back over entries that got no data, clear cells it did not commit, drop the marker."""
    doc = store / group / "zarr.json"
    if not doc.is_file() or read_marker(json.loads(doc.read_text()).get("attributes", {})) is None:
        return False
    g = WritableGroup(store, group, Hook())
    mark = read_marker(g.attrs) or {}
    for path in g.path.glob("*/*.partial"):  # temp files of chunk writes that never got renamed
        path.unlink(missing_ok=True)
    grown = {d: int(old) for d, old in (mark.get("grown") or {}).items()}
    if WRITTEN in g.meta and mark.get("cells") is not None:  # a grid write: the flags are the truth
        grid = g.dims(WRITTEN)
        flags = g.read(WRITTEN).astype(bool)
        cells = {d: [int(i) for i in mark["cells"].get(d, [])] for d in grid}
        undone = [
            cell
            for cell in itertools.product(*[cells[d] for d in grid])
            if all(i < n for i, n in zip(cell, flags.shape)) and not flags[cell]
        ]
        for name in g.meta:  # chunks of cells the writer did not commit read as fill again
            meta, dims = g.meta[name], g.dims(name)
            if name == WRITTEN or not set(grid) & set(dims):
                continue
            axes = {d: dims.index(d) for d in grid if d in dims}
            if any(file_shape(meta)[a] != 1 for a in axes.values()):
                continue  # chunks shared between cells: leave them (their flags say unwritten)
            done = {
                tuple(c[grid.index(d)] for d in axes)
                for c in itertools.product(*[range(n) for n in flags.shape])
                if flags[c]
            }
            for cell in {tuple(c[grid.index(d)] for d in axes) for c in undone} - done:
                region = tuple(
                    slice(cell[list(axes).index(d)], cell[list(axes).index(d)] + 1) if d in axes else slice(0, n)
                    for d, n in zip(dims, meta.shape)
                )
                for coords, _ in chunk_slices(meta.shape, file_shape(meta), region):
                    g.files.delete(f"{name}/{meta.encode_chunk_key(coords)}")
        for d, old in grown.items():  # entries the killed write added and left without any written cell
            axis = grid.index(d)
            written = np.nonzero(flags.any(axis=tuple(i for i in range(flags.ndim) if i != axis)))[0]
            keep = max(old, int(written[-1]) + 1 if written.size else 0)
            for name in list(g.meta):
                if d in g.dims(name):
                    g.resize(name, d, keep)
    else:  # an append: nothing of it is committed
        for d, old in grown.items():
            for name in list(g.meta):
                if d in g.dims(name):
                    g.resize(name, d, old)
    attrs = dict(g.attrs)
    attrs.pop(MARKER, None)
    if "attrs_before" in mark:
        attrs = dict(mark["attrs_before"])
    g.put_attrs(attrs)
    return True


def _try_repair(store: Path, group: str) -> bool:
    """Repair a group whose marker was left by a writer that is gone (the lock is free); False when a live
    writer holds the lock or the store is read-only."""
    try:
        with lock(store, wait=False) as got:
            if not got:
                return False
            repair(store, group)
            return True
    except Exception:  # a reader never fails on a repair it could not make; it still gets the view
        return False


def open_raw(store: Path, group: str, chunks: Any = None) -> xr.Dataset:
    return xr.open_zarr(str(store), group=group, consolidated=False, chunks=chunks)


def _view(ds: xr.Dataset) -> xr.Dataset:
    """What readers see: entries a write has not finished are left out (an append's new entries while its
    marker is there; grid entries with no written cell), the unwritten cells of the kept grid entries read
    NaN (also those a killed writer left half written), and the marker is not shown."""
    mark = read_marker(ds.attrs)
    if mark is not None:
        ds = ds.copy()
        ds.attrs.pop(MARKER, None)
        if mark.get("cells") is None:
            for d, old in (mark.get("grown") or {}).items():
                if d in ds.dims:
                    ds = ds.isel({d: slice(0, int(old))})
    if WRITTEN in ds.variables:
        flags = np.asarray(ds[WRITTEN].values).astype(bool)
        grid = ds[WRITTEN].dims
        keep = {}
        for axis, d in enumerate(grid):
            used = flags.any(axis=tuple(i for i in range(flags.ndim) if i != axis)) if flags.size else flags
            if not used.all():
                keep[d] = np.nonzero(used)[0]
        if keep:
            ds = ds.isel(keep)
        written = ds[WRITTEN].astype(bool)
        if not bool(written.all()):  # cells of kept entries not (or only half) written read NaN
            for name in list(ds.data_vars):
                if name != WRITTEN and set(grid) <= set(ds[name].dims) and ds[name].dtype.kind in "fc":
                    ds[name] = ds[name].where(written)
    return ds


def write(
    store: str | Path,
    group: str,
    ds: xr.Dataset,
    *,
    append_dim: str | None = None,
    encoding: Mapping[str, Any] | None = None,
) -> Path:
    """Write ``ds`` as ``group`` of ``store``: create the group, or append along ``append_dim``.

    Refuses (StoreError, nothing written) a store of another schema, a group that exists when no
    ``append_dim`` is given, an append whose ``append_dim`` values are already in the group, or an append
    whose other dims/variables do not match. An append writes the variables that have ``append_dim`` (the
    others must already be stored) and replaces the group attrs with ``ds.attrs``; a killed append is
    invisible through :func:`open_group` and undone by the next write.
    """
    store = Path(store)
    ensure_root(store)
    ds = objectify(ds.copy())
    ds.attrs.setdefault("schema", SCHEMA)
    hook = Hook()
    with lock(store):
        clean_tmp(store)
        exists = (store / group / "zarr.json").is_file()
        if exists:
            repair(store, group)
        if not exists:
            create_group(store, group, ds, encoding, hook)
            return store
        if append_dim is None:
            raise StoreError(f"{store}/{group}: group already exists; pass append_dim to add to it")
        old = open_raw(store, group)
        if append_dim not in old.dims:
            raise StoreError(f"{store}/{group}: has no dim {append_dim!r} to append along (dims: {dict(old.sizes)})")
        if append_dim in ds.coords and append_dim in old.coords:
            clash = sorted(set(map(str, old[append_dim].values)) & set(map(str, ds[append_dim].values)))
            if clash:
                raise StoreError(f"{store}/{group}: {append_dim} {clash} already written; refusing to write it twice")
        if set(old.data_vars) != set(ds.data_vars):
            raise StoreError(
                f"{store}/{group}: variables differ: store has {sorted(old.data_vars)}, "
                f"new data has {sorted(ds.data_vars)}"
            )
        for dim, size in ds.sizes.items():
            if dim != append_dim and old.sizes.get(dim) != size:
                raise StoreError(f"{store}/{group}: dim {dim!r} has size {size}, the store has {old.sizes.get(dim)}")
        names = [n for n in ds.variables if append_dim in ds[n].dims]
        unknown = sorted(n for n in names if n not in old.variables)
        if unknown:
            raise StoreError(
                f"{store}/{group}: variables {unknown} are not in the store; refusing to add them on an append"
            )
        g = WritableGroup(store, group, hook)
        n_old, n_new = old.sizes[append_dim], old.sizes[append_dim] + ds.sizes[append_dim]
        attrs_before = dict(g.attrs)
        g.put_attrs({**attrs_before, MARKER: new_marker(grown={append_dim: n_old}, attrs_before=attrs_before)})
        grow(g, append_dim, n_new)
        regions = {
            n: tuple(
                slice(n_old, n_new) if d == append_dim else slice(0, g.meta[n].shape[i])
                for i, d in enumerate(g.dims(n))
            )
            for n in names
        }
        write_vars(g, ds, names, regions, "data")
        hook.tick("commit")
        g.put_attrs(group_attrs(ds))  # the marker goes last: this is the commit
    return store


def open_group(store: str | Path, group: str, *, chunks: Any = None) -> xr.Dataset:
    """Open one group lazily (dask chunks by default when ``chunks='auto'`` or {}).

    What a write has not finished is left out: an append's new entries while it runs (or after it was
    killed), and grid entries (checkpoints, specs) without any written cell. A group a killed writer left
    half resized is repaired first when no writer holds the store."""
    return _view(open_repaired(Path(store), group, chunks))


def open_repaired(store: Path, group: str, chunks: Any = None) -> xr.Dataset:
    """The group as stored, marker and unfinished entries included, after repairing what a killed writer
    left when no writer holds the store."""
    if group not in groups(store):
        raise StoreError(f"{store}: no group {group!r} (has: {', '.join(groups(store)) or 'none'})")
    try:
        ds = open_raw(store, group, chunks)
    except ValueError as exc:  # sizes that disagree: a resize under way, or killed half way
        if read_marker(WritableGroup(store, group, Hook()).attrs) is None or not _try_repair(store, group):
            raise StoreError(
                f"{store}/{group}: being written or left half-written ({exc}); retry, or rerun the write to repair it"
            ) from None
        ds = open_raw(store, group, chunks)
    if MARKER in ds.attrs and _try_repair(store, group):
        ds = open_raw(store, group, chunks)
    return ds


def replace_group(store: Path, group: str, ds: xr.Dataset) -> Path:
    """A derived group, replaced as a whole: written as ``.tmp-<group>-<pid>`` (hidden from :func:`groups`),
    then renamed over the old one under the store's lock."""
    tmp = f"{TMP_PREFIX}{group}-{os.getpid()}"
    shutil.rmtree(store / tmp, ignore_errors=True)  # a killed earlier replace of this process id
    write(store, tmp, ds)
    with lock(store):
        target, old = store / group, store / f".old-{group}-{os.getpid()}"
        if target.exists():
            os.replace(target, old)
        os.replace(store / tmp, target)
        shutil.rmtree(old, ignore_errors=True)
    return store
