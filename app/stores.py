"""Data access for result stores under RUNS_DIR: find them, list their groups, open one group.

Discovery walks RUNS_DIR (as deep as runs are found, plus one level: a store inside a run) without following
symlinks and without descending into stores, checkpoints or hidden directories, and keeps only
workbench stores (root attr ``schema``) that resolve inside RUNS_DIR. Opened groups are cached per
(path, modification time of the group's metadata), so repeated callbacks do not re-open Zarr metadata
but a writer appending new checkpoints is picked up.
"""

from __future__ import annotations

import logging
import os
import stat
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Any

import xarray as xr

from app.paths import NotRegular, OutsideRunsDir, confined_tree, inside, is_inside
from app.runs import MAX_DEPTH as MAX_RUN_DEPTH
from workbench import store as wstore
from workbench.runs import is_checkpoint_name

MAX_DEPTH = MAX_RUN_DEPTH + 1  # stores are found up to RUNS_DIR/a/b/<run>/<store>
_cache: dict[tuple[Path, str], tuple[float, xr.Dataset]] = {}
_lock = threading.Lock()
log = logging.getLogger("workbench.app")


def check_metadata(root: Path, path: Path) -> None:
    """Refuse a store before zarr reads it: it (or a group directory in it) resolving outside RUNS_DIR, or a
    ``zarr.json`` that is not a regular file (a FIFO would block the reading thread for good). Hidden
    children (``.tmp-*``) are checked too: zarr reads every child's ``zarr.json`` when it lists groups."""
    if not is_inside(root, path):
        raise OutsideRunsDir(f"store {path.name}: resolves outside RUNS_DIR (symlink); skipped")
    for here in [path, *path.iterdir()]:
        if not is_inside(root, here):
            raise OutsideRunsDir(f"store {path.name}: {here.name} resolves outside RUNS_DIR (symlink); skipped")
        if not here.is_dir():
            continue
        meta = here / "zarr.json"
        try:
            mode = os.stat(meta).st_mode
        except FileNotFoundError:
            continue
        if not is_inside(root, meta):
            raise OutsideRunsDir(f"store {path.name}: {meta.relative_to(path)} resolves outside RUNS_DIR; skipped")
        if not stat.S_ISREG(mode):
            raise NotRegular(f"store {path.name}: {meta.relative_to(path)} is not a regular file; skipped")


def find_stores(root: Path, skipped: list[str] | None = None) -> list[str]:
    """Workbench stores under RUNS_DIR as paths relative to it, sorted; why each other ``*.zarr`` is not
    one (leaves RUNS_DIR, a special file, another schema) is appended to ``skipped`` when given."""
    found: list[str] = []
    for dirpath, dirnames, _ in os.walk(root, followlinks=False):
        here = Path(dirpath)
        depth = len(here.relative_to(root).parts)
        keep = []
        for d in sorted(dirnames):
            if d.startswith("."):  # temp dirs, and .git / .venv (RUNS_DIR at a repository's root: seconds a walk)
                continue
            if d.endswith(".zarr"):
                candidate = here / d
                try:
                    check_metadata(root, candidate)
                    wstore.groups(candidate)
                except (OutsideRunsDir, NotRegular, wstore.StoreError) as exc:
                    log.info("%s", exc)
                    if skipped is not None:  # a StoreError names the absolute path: say the relative one
                        skipped.append(str(exc).replace(str(candidate), f"store {candidate.relative_to(root)}", 1))
                    continue
                except OSError:
                    continue
                found.append(candidate.relative_to(root).as_posix())
            elif not (here / d).is_symlink() and not is_checkpoint_name(d) and depth + 1 < MAX_DEPTH:
                keep.append(d)
        dirnames[:] = keep
    return sorted(found)


def stores_with_group(root: Path, *groups: str, skipped: list[str] | None = None) -> list[str]:
    """The stores (relative paths) that hold any of ``groups`` (``skipped``: see :func:`find_stores`)."""
    out = []
    for rel in find_stores(root, skipped):
        try:
            if set(groups) & set(groups_of(root, rel)):
                out.append(rel)
        except (wstore.StoreError, OSError):
            continue
    return out


def _stamp(path: Path, group: str) -> float:
    """Latest change of the group: its metadata and its arrays' directories (a chunk file replaced, or
    swapped for a symlink, after the group was opened changes its directory, so the next open checks the
    tree again before zarr reads it)."""
    try:
        stamps = [(path / group / "zarr.json").stat().st_mtime]
        for meta in (path / group).glob("*/zarr.json"):
            stamps += [meta.stat().st_mtime, meta.parent.stat().st_mtime]
        return max(stamps)
    except OSError:
        return 0.0


def open_group(root: Path, relative: str, group: str) -> xr.Dataset:
    """Group ``group`` of the store at ``relative`` (confined to RUNS_DIR), lazily opened and cached.

    Raises :class:`app.paths.OutsideRunsDir`, or :class:`workbench.store.StoreError` (a ValueError) for a
    missing store or group, with a message fit for the page.
    """
    path = inside(root, relative)
    if not path.is_dir():
        raise wstore.StoreError(f"store {relative!r} not found in RUNS_DIR")
    check_metadata(root, path)
    stamp = _stamp(path, group)
    with _lock:
        hit = _cache.get((path, group))
        if hit is not None and hit[0] == stamp:
            return hit[1]
    if (path / group).is_dir():
        confined_tree(root, path / group)  # every array and chunk file, before zarr opens one
    try:
        ds = wstore.open_group(path, group)
    except wstore.StoreError:
        raise
    except Exception as exc:  # zarr/xarray raise many types for a store a writer left half-written
        raise wstore.StoreError(
            f"store {relative!r}: group {group!r} cannot be read (half-written or damaged: {type(exc).__name__}: {exc})"
        ) from None
    with _lock:
        _cache[(path, group)] = (stamp, ds)
    return ds


_groups: dict[Path, tuple[tuple[int, int], list[str]]] = {}


def groups_of(root: Path, relative: str) -> list[str]:
    """Group names of the store at ``relative`` (confined to RUNS_DIR), cached per modification time of
    the store directory (a group appears, or is replaced, by a rename into it) and of its root metadata."""
    path = inside(root, relative)
    if not path.is_dir():
        raise wstore.StoreError(f"store {relative!r} not found in RUNS_DIR")
    check_metadata(root, path)
    try:
        stamp = (path.stat().st_mtime_ns, (path / "zarr.json").stat().st_mtime_ns)
    except OSError:
        stamp = (0, 0)
    with _lock:
        hit = _groups.get(path)
    if hit is not None and hit[0] == stamp and stamp != (0, 0):
        return list(hit[1])
    try:
        names = wstore.groups(path)
    except wstore.StoreError:
        raise
    except Exception as exc:  # a store whose metadata a writer left half-written
        raise wstore.StoreError(
            f"store {relative!r} cannot be read (half-written or damaged: {type(exc).__name__}: {exc})"
        ) from None
    with _lock:
        _groups[path] = (stamp, names)
    return list(names)


_loaded: OrderedDict[tuple, tuple[float, xr.Dataset]] = OrderedDict()
MAX_LOADED = 64  # slices kept in memory (a 32 x 32 x 64 float64 slice is 0.5 MB)


def loaded(root: Path, relative: str, group: str, var: str, **select: Any) -> xr.Dataset:
    """The group with only ``var`` (plus every coordinate), optionally narrowed to ``select`` (e.g.
    ``comparison=[name]``), read into memory once per store version and kept in a small LRU cache.

    Interactive views re-draw the same slice on every control change; holding it in memory keeps a
    callback at a few milliseconds instead of re-reading Zarr chunks, and narrowing first means a cold
    call reads only the chunks it shows (one comparison = one chunk per layer).
    """
    ds = open_group(root, relative, group)
    if var not in ds.data_vars:
        raise ValueError(
            f"store {relative!r} group {group!r} has no variable {var!r} (has {', '.join(map(str, ds.data_vars))})"
        )
    for dim, values in select.items():
        known = set(map(str, ds[dim].values)) if dim in ds.coords else set()
        missing = [v for v in values if str(v) not in known]
        if missing:
            raise ValueError(f"no {dim} {missing[0]!r} in {relative}/{group} (has: {', '.join(sorted(known))})")
    path = inside(root, relative)
    key = (path, group, var, tuple(sorted((d, tuple(map(str, v))) for d, v in select.items())))
    stamp = _stamp(path, group)
    with _lock:
        hit = _loaded.get(key)
        if hit is not None and hit[0] == stamp:
            _loaded.move_to_end(key)
            return hit[1]
    sub = ds[[var]]
    if select:
        sub = sub.sel({d: list(v) for d, v in select.items()})
    try:
        sub = sub.load()
    except Exception as exc:  # a chunk missing or truncated: the writer did not finish
        raise wstore.StoreError(
            f"store {relative!r}: {group}/{var} cannot be read (half-written or damaged: {type(exc).__name__}: {exc})"
        ) from None
    with _lock:
        _loaded[key] = (stamp, sub)
        while len(_loaded) > MAX_LOADED:
            _loaded.popitem(last=False)
    return sub
