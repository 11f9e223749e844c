"""Data access for result stores under RUNS_DIR: find them, list their groups, open one group.

Discovery walks RUNS_DIR without following symlinks and without descending into stores, and keeps only
workbench stores (root attr ``schema``) that resolve inside RUNS_DIR. Opened groups are cached per
(path, modification time of the group's metadata), so repeated callbacks do not re-open Zarr metadata
but a writer appending new checkpoints is picked up.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

import xarray as xr

from app.paths import inside, is_inside
from workbench import store as wstore

_cache: dict[tuple[Path, str], tuple[float, xr.Dataset]] = {}
_lock = threading.Lock()


def find_stores(root: Path) -> list[str]:
    """Workbench stores under RUNS_DIR as paths relative to it, sorted."""
    found: list[str] = []
    for dirpath, dirnames, _ in os.walk(root, followlinks=False):
        here = Path(dirpath)
        keep = []
        for d in sorted(dirnames):
            if d.startswith(".tmp-"):
                continue
            if d.endswith(".zarr"):
                candidate = here / d
                if not is_inside(root, candidate):
                    continue
                try:
                    wstore.groups(candidate)
                except (wstore.StoreError, OSError):
                    continue
                found.append(candidate.relative_to(root).as_posix())
            elif not (here / d).is_symlink() and not (here / d).name.startswith("ckpt-"):
                keep.append(d)
        dirnames[:] = keep
    return sorted(found)


def stores_with_group(root: Path, group: str) -> list[str]:
    """The stores (relative paths) that hold ``group``."""
    out = []
    for rel in find_stores(root):
        try:
            if group in wstore.groups(root / rel):
                out.append(rel)
        except (wstore.StoreError, OSError):
            continue
    return out


def _stamp(path: Path, group: str) -> float:
    meta = path / group / "zarr.json"
    try:
        return max(meta.stat().st_mtime, max((p.stat().st_mtime for p in (path / group).glob("*/zarr.json")),
                                             default=0.0))
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
    stamp = _stamp(path, group)
    with _lock:
        hit = _cache.get((path, group))
        if hit is not None and hit[0] == stamp:
            return hit[1]
    ds = wstore.open_group(path, group)
    with _lock:
        _cache[(path, group)] = (stamp, ds)
    return ds


def groups_of(root: Path, relative: str) -> list[str]:
    """Group names of the store at ``relative`` (confined to RUNS_DIR)."""
    path = inside(root, relative)
    if not path.is_dir():
        raise wstore.StoreError(f"store {relative!r} not found in RUNS_DIR")
    return wstore.groups(path)


_loaded: dict[tuple[Path, str, str], tuple[float, xr.Dataset]] = {}


def loaded(root: Path, relative: str, group: str, var: str) -> xr.Dataset:
    """The group with only ``var`` (plus every coordinate), read into memory once per store version.

    Interactive views re-slice the same variable on every click; holding it in memory keeps a callback
    at a few milliseconds instead of re-reading Zarr chunks (a 32 x 32 x 64 x 20 float64 variable is 10 MB).
    """
    ds = open_group(root, relative, group)
    if var not in ds.data_vars:
        raise ValueError(f"store {relative!r} group {group!r} has no variable {var!r} "
                         f"(has {', '.join(map(str, ds.data_vars))})")
    key = (inside(root, relative), group, var)
    stamp = _stamp(key[0], group)
    with _lock:
        hit = _loaded.get(key)
        if hit is not None and hit[0] == stamp:
            return hit[1]
    sub = ds[[var]].load()
    with _lock:
        _loaded[key] = (stamp, sub)
    return sub
