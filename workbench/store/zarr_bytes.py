"""The results store: xarray Datasets in a Zarr v3 directory, one group per kind of result.

A store opens with plain xarray and no project code::

    xr.open_zarr("runs/demo/results.zarr", group="retrieval", consolidated=False)

Layout: the root group carries ``attrs["schema"] == SCHEMA``; each result kind lives in its own group
(``retrieval``, ``traces``, ``repeated_tokens``, ``updates_weights``, ``updates_states``, ``bands``,
``score_decomposition``, ``probes``, ``activations`` ...). Groups use named dims (``checkpoint``,
``condition``, ``spec``, ``layer``, ``head``, ``kv_head``, ``pair``, ``position``, ``length``, ``depth``,
``sample``, ``task`` ...). The ``pair`` dim always carries the coordinates ``wavelength`` (tokens, at the
theta of record) and ``dims`` ("j,j+d/2"). Every group has provenance attrs (see :func:`provenance`).

Every group is registered (:data:`GROUPS`, constants such as :data:`TRACES`, :data:`RETRIEVAL`): its name,
how it grows (an append dim, grid dims, a derived summary replaced as a whole, or written once), its chunks
and its section in docs/store-schema.md. Packages write with :func:`save` and refuse before any work with
:func:`refuse`, both driven by the registry; :func:`write` and :func:`write_grid` are the primitives under them.

Writes are incremental: the first write creates a group, later writes append along one dim (new
checkpoints, specs, conditions). Writing a coordinate value that is already there is refused, and nothing
already written is overwritten. String coordinates are stored as object dtype so appends work.

How writes are made (the format is plain Zarr v3; see docs/store-schema.md):

- Metadata and chunks are byte for byte what ``xarray.Dataset.to_zarr`` writes (xarray's own encoders, zarr's
  own metadata classes and codecs), but without its per-array store round trips: a new group is built in a
  sibling temp directory (``.tmp-<store>-<group>-*``) and renamed into the store, so a killed first write
  leaves no group at all. Chunk keys use the ``.`` separator (``c.0.1.0.3``: one directory per array, not one
  per dimension). Uncompressed numeric chunks (and shards of them) are written as raw, preallocated bytes, by
  a second thread while the small arrays are encoded; everything else goes through zarr's codecs.
- ``write_grid`` with ``chunk_dims`` finer than the grid stores one shard per cell (its inner chunks are the
  (checkpoint, spec, layer) chunks readers and dask see).
- An append or a grid write into an existing group is a small transaction: the group attr
  ``write_in_progress`` (the marker) is set first, then the arrays are resized and the new data written
  (each chunk file replaced atomically), then the grid's ``cell_written`` flags, and the marker is removed
  last. The store API hides what a live or killed writer has not finished (:func:`open_group`), and the next
  write (or an open with no writer about) repairs what a killed one left, so rerunning the command completes
  the interrupted cells. ``WORKBENCH_STORE_KILL_AFTER=<phase>:<n>`` makes a writer kill itself, for tests.
- Writers of one store are serialised by an advisory ``flock`` on the root ``zarr.json``.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as _dt
import itertools
import json
import os
import shutil
import signal
import socket
import sys
import threading
import time
import uuid
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr
import zarr

# zarr/xarray internals: the store writes its own shards and encodings (pinned versions, see pyproject.toml)
from xarray import conventions
from xarray.backends.zarr import (
    FillValueCoder,
    encode_zarr_attr_value,
    encode_zarr_variable,
    extract_zarr_variable_encoding,
)
from xarray.coding.strings import check_vlen_dtype
from zarr.abc.codec import ArrayArrayCodec, ArrayBytesCodec, BytesBytesCodec
from zarr.api.asynchronous import create_array
from zarr.codecs import BytesCodec, Crc32cCodec
from zarr.codecs.sharding import ShardingCodec, ShardingCodecIndexLocation
from zarr.core.array import AsyncArray, _parse_chunk_encoding_v3, _parse_chunk_key_encoding
from zarr.core.array_spec import ArrayConfig
from zarr.core.buffer import default_buffer_prototype
from zarr.core.chunk_grids import RegularChunkGrid, _auto_partition
from zarr.core.common import parse_shapelike
from zarr.core.dtype import parse_dtype
from zarr.core.dtype.common import HasItemSize
from zarr.core.group import GroupMetadata
from zarr.core.metadata.v3 import ArrayV3Metadata
from zarr.core.sync import sync
from zarr.storage import LocalStore, MemoryStore, StorePath

import workbench

SCHEMA = "workbench-store/3"
# Older schemas: open_group reads them under the current names (renamed on open), writes refuse them until
# `workbench upgrade-store STORE` converts them in place (:func:`upgrade`). docs/glossary.md lists the names.
# What each step changed (old schema -> the next):
# 1 -> 2: the checkpoint theta is `rope_theta` everywhere (was `theta` in probes and score_decomposition,
#   `theta_before`/`theta_after` on comparisons); `layer` is the block index in every group (probes numbered
#   0 = embeddings, l = block l-1; now -1 = embeddings, l = block l).
# 2 -> 3: repeated_tokens' `kd_signal` is `kl_to_mean` (KL to the copies' mean, as `kl_to_first`; `kd_signal` is
#   the name of a group); the window count of updates_states, score_decomposition (was `batch_size`, which
#   elsewhere means rows per forward pass) and kd_signal (was `windows`) is the attr `n_windows`, as in probes.
_STEPS: dict[str, dict[str, Any]] = {
    "workbench-store/1": {
        "renamed": {"theta": "rope_theta", "theta_before": "rope_theta_before", "theta_after": "rope_theta_after"},
        "layer_shift": {"probes": -1},
    },
    "workbench-store/2": {
        "renamed": {"kd_signal": "kl_to_mean"},
        "attrs_renamed": {
            "updates_states": {"batch_size": "n_windows"},
            "score_decomposition": {"batch_size": "n_windows"},
            "kd_signal": {"windows": "n_windows"},
        },
    },
}
OLD_SCHEMAS = tuple(_STEPS)


def _since(schema: str, key: str) -> dict[str, Any]:
    """The changes of every step from ``schema`` to SCHEMA under ``key``, merged (names never change twice)."""
    merged: dict[str, Any] = {}
    for step in OLD_SCHEMAS[OLD_SCHEMAS.index(schema) :] if schema in OLD_SCHEMAS else ():
        for name, change in _STEPS[step].get(key, {}).items():
            merged[name] = {**merged.get(name, {}), **change} if isinstance(change, dict) else change
    return merged


RENAMED = {schema: _since(schema, "renamed") for schema in OLD_SCHEMAS}  # variable / coordinate renames
ATTRS_RENAMED = {schema: _since(schema, "attrs_renamed") for schema in OLD_SCHEMAS}  # group -> {old: new}
LAYER_SHIFT = {schema: _since(schema, "layer_shift") for schema in OLD_SCHEMAS}  # group -> added to its layer
MARKER = "write_in_progress"  # group attr (JSON) while a write is under way; removed last
LOCK_TIMEOUT_S = 600.0  # how long a writer waits for another writer of the same store
KILL_ENV = "WORKBENCH_STORE_KILL_AFTER"  # test hook "<phase>:<n>": SIGKILL self after n events of a phase
_DOT_KEYS = {"name": "default", "separator": "."}
_TMP = ".tmp-"


class StoreError(ValueError):
    """A store of another schema, a duplicate write or an unknown group."""


def pair_coords(wavelengths: Sequence[float]) -> dict[str, Any]:
    """Coordinates for the ``pair`` dim from each pair's wavelength as the model runs (its theta and RoPE
    scaling: ``checkpoints.Info.wavelengths``): index j, the wavelength, and the pair's two dims."""
    half = len(wavelengths)
    return {
        "pair": np.arange(half),
        "wavelength": ("pair", np.asarray(wavelengths, dtype=np.float64)),
        "dims": ("pair", np.array([f"{j},{j + half}" for j in range(half)], dtype=object)),
    }


def provenance(**extra: Any) -> dict[str, Any]:
    """Attrs every group carries: schema, time, library versions, plus what the writer adds
    (checkpoint hashes, theta, dtype, spec JSON ...). Non-scalar values are stored as JSON strings."""
    import torch  # lazy: reading a store (the app, figures) needs neither torch nor transformers
    import transformers

    attrs: dict[str, Any] = {
        "schema": SCHEMA,
        "written": _dt.datetime.now(_dt.UTC).isoformat(),
        "versions": json.dumps(
            {
                "workbench": workbench.__version__,
                "torch": torch.__version__,
                "transformers": transformers.__version__,
                "xarray": xr.__version__,
                "zarr": zarr.__version__,
            }
        ),
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


def _root_doc(store: Path) -> dict[str, Any]:
    """The root ``zarr.json`` of a store (read directly: no zarr round trips on the write path)."""
    try:
        doc = json.loads((store / "zarr.json").read_text())
    except (OSError, ValueError) as exc:
        raise StoreError(f"{store}: not a Zarr store ({type(exc).__name__}: {exc})") from None
    if not isinstance(doc, dict) or doc.get("zarr_format") != 3 or doc.get("node_type") != "group":
        raise StoreError(f"{store}: not a Zarr v3 group")
    return doc


def _check_root(store: Path, create: bool, *, read: bool = False) -> str:
    """The store's schema; refuses another one (``read``: an old one in OLD_SCHEMAS is fine)."""
    if not store.exists():
        if not create:
            raise StoreError(f"{store}: store not found")
        store.mkdir(parents=True, exist_ok=True)
        doc = GroupMetadata(attributes={"schema": SCHEMA}, zarr_format=3).to_buffer_dict(default_buffer_prototype())
        tmp = store / f"zarr.json.{uuid.uuid4().hex[:12]}.partial"
        tmp.write_bytes(doc["zarr.json"].to_bytes())
        try:  # atomic, and never replaces a root another writer made meanwhile (its file carries the lock)
            os.link(tmp, store / "zarr.json")
        except FileExistsError:
            pass
        finally:
            tmp.unlink()
    schema = (_root_doc(store).get("attributes") or {}).get("schema")
    if schema in OLD_SCHEMAS:
        if read:
            return schema
        raise StoreError(
            f"{store}: store schema is {schema!r}, older than {SCHEMA!r}: it opens for reading; "
            f"to write into it, convert it once with `workbench upgrade-store {store}`"
        )
    if schema != SCHEMA:
        raise StoreError(f"{store}: store schema is {schema!r}, expected {SCHEMA!r}; refusing to touch it")
    return schema


def check_schema(store: str | Path) -> None:
    """Refuse, before any work, writing into a store that is not of this schema (an old one: say how to convert)."""
    _check_root(Path(store), create=False)


def schema_of(store: str | Path) -> str:
    return _check_root(Path(store), create=False, read=True)


def _as_current(ds: xr.Dataset, group: str, schema: str) -> xr.Dataset:
    """A group of an old-schema store under the current names and numbering."""
    if schema == SCHEMA:
        return ds
    renames = {old: new for old, new in RENAMED.get(schema, {}).items() if old in ds.variables}
    ds = ds.rename(renames) if renames else ds
    name = group.rsplit("/", 1)[-1]
    attrs = ATTRS_RENAMED.get(schema, {}).get(name, {})
    if any(old in ds.attrs for old in attrs):
        ds.attrs = {attrs.get(k, k): v for k, v in ds.attrs.items()}
    shift = LAYER_SHIFT.get(schema, {}).get(name)
    if shift and "layer" in ds.coords:
        ds = ds.assign_coords(layer=ds["layer"].values + shift)
    return ds


def groups(store: str | Path) -> list[str]:
    """Names of the result groups in a store."""
    store = Path(store)
    _check_root(store, create=False, read=True)
    root = zarr.open_group(str(store), mode="r")
    return sorted(name for name, _ in root.groups() if not name.startswith("."))


def has_group(store: str | Path, group: str) -> bool:
    store = Path(store)
    return store.exists() and group in groups(store)


# ------------------------------------------------------------------------------------ locking, kill hook


@contextlib.contextmanager
def _lock(store: Path, *, wait: bool = True) -> Iterator[bool]:
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


class _Hook:
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


# ---------------------------------------------------------------------------------- zarr v3, written lean


class _Files:
    """Writes files under a directory: direct (inside a temp dir no reader sees) or atomic (temp file +
    rename, so a killed writer never leaves a truncated chunk)."""

    def __init__(self, root: Path, *, atomic: bool, hook: _Hook) -> None:
        self.root, self.atomic, self.hook = root, atomic, hook
        self._dirs: set[Path] = set()

    def put(self, key: str, data: Any, phase: str | None = None) -> None:
        self.put_parts(key, [data], phase)

    def put_parts(self, key: str, parts: list[Any], phase: str | None = None) -> None:
        """One file made of ``parts`` written back to back (no concatenation copy)."""
        path = self.root / key
        if path.parent not in self._dirs:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._dirs.add(path.parent)
        views = []
        for data in parts:
            if isinstance(data, np.ndarray):
                data = np.ascontiguousarray(data).reshape(-1).view(np.uint8)
            views.append(memoryview(data).cast("B"))
        total = sum(len(v) for v in views)
        target = path.with_name(f"{path.name}.{uuid.uuid4().hex[:12]}.partial") if self.atomic else path
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            if total >= 1 << 20:  # preallocate large files, as numpy's tofile does (ext4: ~1.4x faster)
                with contextlib.suppress(OSError, AttributeError):
                    os.posix_fallocate(fd, 0, total)
            for view in views:
                done = 0
                while done < len(view):
                    done += os.write(fd, view[done:])
        finally:
            os.close(fd)
        if self.atomic:
            os.replace(target, path)
        if phase:
            self.hook.tick(phase)

    def delete(self, key: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            (self.root / key).unlink()


@dataclass
class _Var:
    name: str
    var: xr.Variable  # encoded as xarray would store it
    dtype: Any
    fill: Any
    attrs: dict[str, Any]
    encoding: dict[str, Any]
    write_empty: bool | None


def _encode(ds: xr.Dataset, encoding: Mapping[str, Any] | None) -> tuple[list[_Var], dict[str, Any]]:
    """The variables and group attrs exactly as ``Dataset.to_zarr(zarr_format=3)`` encodes them."""
    given = {name: dict(enc) for name, enc in (encoding or {}).items()}
    missing = sorted(set(given) - set(ds.variables))
    if missing:
        raise ValueError(f"encoding given for variables not in the dataset: {missing}")
    variables, attrs = conventions.encode_dataset_coordinates(ds)
    out = []
    for name, var in variables.items():
        var = var.copy(deep=False)
        if name in given:
            var.encoding = dict(given[name])
        var.encoding.setdefault("chunk_key_encoding", dict(_DOT_KEYS))
        var = encode_zarr_variable(var, name=name, zarr_format=3)
        vattrs = dict(var.attrs)
        fill = var.encoding.pop("fill_value", None)
        if fill is None and var.dtype.kind == "f":
            fill = np.nan  # xarray's default for floats (zarr's would be 0)
        if "_FillValue" in vattrs:
            value = vattrs.pop("_FillValue")
            if value is not None:
                vattrs["_FillValue"] = FillValueCoder.encode(value, var.dtype)
        if var.encoding.pop("_FillValue", None) is not None:
            raise ValueError("Zarr does not support _FillValue in encoding.")
        enc = extract_zarr_variable_encoding(var, raise_on_invalid=name in given, name=name, zarr_format=3)
        write_empty = enc.pop("write_empty_chunks", None)
        for key in ("order", "fill_value", "cache_metadata"):
            enc.pop(key, None)
        dtype = str if check_vlen_dtype(var.dtype) is str else var.dtype
        out.append(
            _Var(name, var, dtype, fill, {k: encode_zarr_attr_value(v) for k, v in vattrs.items()}, enc, write_empty)
        )
    return out, {k: encode_zarr_attr_value(v) for k, v in attrs.items()}


def _group_attrs(ds: xr.Dataset) -> dict[str, Any]:
    """The group attrs ``to_zarr`` writes for ``ds`` (its attrs, plus a ``coordinates`` list for
    coordinates no data variable names)."""
    _, attrs = conventions.encode_dataset_coordinates(ds)
    return {k: encode_zarr_attr_value(v) for k, v in attrs.items()}


def _grid(meta: Any) -> tuple[int, ...]:
    """Shape of the storage objects (chunk files) of an array: its chunks, or its shards when sharded
    (zarr's ``metadata.chunks`` names the inner chunks then)."""
    return tuple(meta.chunk_grid.chunk_shape)


def _plain_bytes(codecs: Any) -> bool:
    """The codec chain is only zarr's ``bytes`` codec, little-endian (chunks are the raw array bytes)."""
    codecs = list(codecs)
    if len(codecs) != 1 or not isinstance(codecs[0], BytesCodec):
        return False
    endian = codecs[0].endian
    return endian is None or getattr(endian, "value", endian) == "little"


def _shard_layout(meta: Any) -> tuple[tuple[int, ...], bool, bool] | None:
    """(inner chunk shape, index checksummed, index at the start) of an uncompressed sharded array whose
    shards can be assembled from raw bytes; None for any other codec chain."""
    codecs = list(meta.codecs)
    if len(codecs) != 1 or not isinstance(codecs[0], ShardingCodec):
        return None
    sc = codecs[0]
    index = list(sc.index_codecs)
    if not _plain_bytes(sc.codecs) or not index or not _plain_bytes(index[:1]):
        return None
    if len(index) == 2 and not isinstance(index[1], Crc32cCodec) or len(index) > 2:
        return None
    if any(s % c for s, c in zip(_grid(meta), sc.chunk_shape)):
        return None
    return tuple(sc.chunk_shape), len(index) == 2, getattr(sc.index_location, "value", sc.index_location) == "start"


def _raw_ok(meta: Any, data: np.ndarray) -> bool:
    """Chunks (or shards of uncompressed inner chunks) of this array are the raw little-endian bytes of the
    data (no compressor, no filter, every chunk complete), so they can be written without zarr's codecs."""
    if data.dtype.kind not in "biufc":
        return False
    if data.dtype != meta.data_type.to_native_dtype() or (data.dtype.itemsize > 1 and data.dtype.byteorder == ">"):
        return False
    if not _plain_bytes(meta.codecs) and _shard_layout(meta) is None:
        return False
    return all(n % c == 0 for n, c in zip(meta.shape, _grid(meta)))


def _is_fill(chunk: np.ndarray, fill: Any) -> bool:
    if chunk.size == 0:
        return True
    fill = np.asarray(fill)
    if chunk.dtype.kind in "fc" and np.isnan(fill):
        return bool(np.isnan(chunk.flat[0])) and bool(np.isnan(chunk).all())
    return bool(chunk.flat[0] == fill) and bool((chunk == fill).all())


def _chunk_slices(shape: tuple[int, ...], chunks: tuple[int, ...], region: tuple[slice, ...]):
    """(chunk coords, array slices) of the chunks inside ``region`` (aligned to chunk edges)."""
    ranges = [range(r.start // c, -(-r.stop // c)) for r, c in zip(region, chunks)]
    for coords in itertools.product(*ranges):
        yield coords, tuple(slice(i * c, min((i + 1) * c, n)) for i, c, n in zip(coords, chunks, shape))


def _aligned(region: tuple[slice, ...], chunks: tuple[int, ...], shape: tuple[int, ...]) -> bool:
    return all(r.start % c == 0 and (r.stop % c == 0 or r.stop == n) for r, c, n in zip(region, chunks, shape))


def _write_raw(
    files: _Files, prefix: str, meta: Any, data: np.ndarray, region: tuple[slice, ...], write_empty: bool, phase: str
) -> None:
    """Raw chunk (or shard) files of ``data`` (the values of ``region``); empty chunks are skipped (and an
    existing file deleted). A shard is its inner chunks back to back plus the (offset, length) index."""
    fill = meta.fill_value
    origin = tuple(r.start for r in region)
    shard = _shard_layout(meta)
    for coords, sl in _chunk_slices(meta.shape, _grid(meta), region):
        part = np.asarray(data[tuple(slice(s.start - o, s.stop - o) for s, o in zip(sl, origin))])
        key = f"{prefix}/{meta.encode_chunk_key(coords)}"
        if shard is None:
            if not write_empty and _is_fill(part, fill):
                files.delete(key)
                continue
            files.put(key, part.astype(part.dtype.newbyteorder("<"), copy=False), phase)
            continue
        inner, checksum, at_start = shard
        per = tuple(s // c for s, c in zip(part.shape, inner))
        index = np.full(per + (2,), np.iinfo(np.uint64).max, dtype="<u8")
        pieces, offset = [], 0
        for local in np.ndindex(*per):
            piece = part[tuple(slice(i * c, (i + 1) * c) for i, c in zip(local, inner))]
            if not write_empty and _is_fill(piece, fill):
                continue
            piece = np.ascontiguousarray(piece).astype(piece.dtype.newbyteorder("<"), copy=False)
            index[local] = (offset, piece.nbytes)
            pieces.append(piece)
            offset += piece.nbytes
        if not pieces:
            files.delete(key)
            continue
        if at_start:  # offsets count from the start of the file, past the index
            size = index.nbytes + (4 if checksum else 0)
            index[index[..., 0] != np.iinfo(np.uint64).max, 0] += size
        head = index.reshape(-1).view(np.uint8)
        if checksum:
            import google_crc32c  # what zarr's crc32c codec uses

            head = np.concatenate([head, np.array([google_crc32c.value(head.tobytes())], "<u4").view(np.uint8)])
        files.put_parts(key, [head, *pieces] if at_start else [*pieces, head], phase)


_ZDTYPES: dict[str, Any] = {}


def _metadata_v3(v: _Var) -> Any:
    """The array metadata ``zarr.create_array`` would make for ``v`` (zarr's own helpers, the v3 branch of
    ``zarr.core.array.init_array``), built without its store round trips."""
    enc = dict(v.encoding)
    unknown = set(enc) - {"chunks", "shards", "filters", "compressors", "serializer", "chunk_key_encoding"}
    if unknown:
        raise TypeError(f"encoding keys {sorted(unknown)}")
    key = "str" if v.dtype is str else np.dtype(v.dtype).str
    zdtype = _ZDTYPES.get(key)
    if zdtype is None:  # zarr's dtype registry lookup is slow; its dtype objects are immutable
        zdtype = _ZDTYPES[key] = parse_dtype(v.dtype, zarr_format=3)
    shape = parse_shapelike(v.var.shape)
    shards = enc.get("shards")
    chunks = enc.get("chunks")
    shard_shape, chunk_shape = _auto_partition(
        array_shape=shape,
        shard_shape=shards,
        chunk_shape="auto" if chunks is None else chunks,
        item_size=zdtype.item_size if isinstance(zdtype, HasItemSize) else 1,
    )
    aa, ab, bb = _parse_chunk_encoding_v3(
        compressors=enc.get("compressors", "auto"),
        filters=enc.get("filters", "auto"),
        serializer=enc.get("serializer", "auto"),
        dtype=zdtype,
    )
    codecs = (*aa, ab, *bb)
    grid = chunk_shape
    if shard_shape is not None:
        where = shards.get("index_location") if isinstance(shards, dict) else None
        sharding = ShardingCodec(
            chunk_shape=chunk_shape, codecs=codecs, index_location=ShardingCodecIndexLocation(where or "end")
        )
        sharding.validate(shape=chunk_shape, dtype=zdtype, chunk_grid=RegularChunkGrid(chunk_shape=shard_shape))
        codecs, grid = (sharding,), shard_shape
    return AsyncArray._create_metadata_v3(
        shape=shape,
        dtype=zdtype,
        fill_value=v.fill,
        chunk_shape=grid,
        chunk_key_encoding=_parse_chunk_key_encoding(enc.get("chunk_key_encoding"), zarr_format=3),
        codecs=codecs,
        dimension_names=v.var.dims,
        attributes=v.attrs,
    )


def _codec_specs(meta: Any, coords: tuple[int, ...], write_empty: bool) -> list[tuple[Any, Any]]:
    """(codec, the chunk spec it sees) in the order zarr's codec pipeline encodes; TypeError for codecs
    without synchronous halves (sharding)."""
    config = ArrayConfig(order="C", write_empty_chunks=write_empty)
    spec = meta.get_chunk_spec(coords, config, default_buffer_prototype())
    out = []
    for codec in meta.codecs:
        if (
            not isinstance(codec, (ArrayArrayCodec, ArrayBytesCodec, BytesBytesCodec))
            or not hasattr(codec, "_encode_sync")
            or not hasattr(codec, "_decode_sync")
        ):
            raise TypeError(f"no synchronous codec for {codec!r}")
        out.append((codec, spec))
        spec = codec.resolve_metadata(spec)
    return out


def _encode_chunk(meta: Any, coords: tuple[int, ...], chunk: np.ndarray, write_empty: bool) -> bytes | None:
    """One whole chunk through its codecs (None: empty, not stored)."""
    if not write_empty and _is_fill(chunk, meta.fill_value):
        return None
    value: Any = default_buffer_prototype().nd_buffer.from_numpy_array(np.ascontiguousarray(chunk))
    for codec, spec in _codec_specs(meta, coords, write_empty):
        value = codec._encode_sync(value, spec)
        if value is None:
            return None
    return value.to_bytes()


def _decode_chunk(meta: Any, coords: tuple[int, ...], raw: bytes) -> np.ndarray:
    value: Any = default_buffer_prototype().buffer.from_bytes(raw)
    for codec, spec in reversed(_codec_specs(meta, coords, False)):
        value = codec._decode_sync(value, spec)
    return np.array(value.as_numpy_array())


def _whole_chunk(meta: Any, part: np.ndarray) -> np.ndarray:
    """An edge chunk is stored whole, padded with the fill value."""
    if part.shape == _grid(meta):
        return part
    chunk = _fill_chunk(meta)
    chunk[tuple(slice(0, n) for n in part.shape)] = part
    return chunk


def _fill_chunk(meta: Any) -> np.ndarray:
    """One whole chunk of the fill value."""
    native = meta.data_type.to_native_dtype()
    return np.full(_grid(meta), meta.fill_value, dtype=object if native.kind in "OT" else native)


def _encode_sync(meta: Any, data: np.ndarray, write_empty: bool) -> list[tuple[str, bytes]]:
    """Every chunk of a (small) array encoded by its codecs' synchronous halves, in the order zarr's codec
    pipeline applies them; raises TypeError for codecs without one (sharding)."""
    out = []
    for coords, sl in _chunk_slices(meta.shape, _grid(meta), tuple(slice(0, n) for n in meta.shape)):
        encoded = _encode_chunk(meta, coords, _whole_chunk(meta, np.asarray(data[sl])), write_empty)
        if encoded is not None:
            out.append((meta.encode_chunk_key(coords), encoded))
    return out


def _create_group(store: Path, group: str, ds: xr.Dataset, encoding: Mapping[str, Any] | None, hook: _Hook) -> None:
    """Write a new group into a temp directory next to the store, then rename it into place: metadata and
    small arrays encoded in memory with zarr's own classes and codecs, big uncompressed arrays as raw chunk
    (or shard) files."""
    prepared, gattrs = _encode(ds, encoding)
    proto = default_buffer_prototype()
    arrays: list[tuple[_Var, Any, np.ndarray, bool]] = []

    def add(v: _Var) -> None:
        try:
            meta = _metadata_v3(v)
        except (ImportError, AttributeError, TypeError):  # another zarr: let it build the metadata
            meta = sync(_zarr_metadata(v))
        data = np.asarray(v.var.values)
        arrays.append((v, meta, data, _raw_ok(meta, data)))

    large = [v for v in prepared if v.var.nbytes >= 1 << 20]
    for v in large:  # the big arrays first: their raw chunks start while the rest is encoded
        add(v)
    tmp = store.absolute().parent / f"{_TMP}{store.name}-{group}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    files = _Files(tmp, atomic=False, hook=hook)
    failed: list[BaseException] = []
    raw_arrays = [a for a in arrays if a[3]]
    threaded = {id(a[0]) for a in raw_arrays}

    def write_raw() -> None:  # mostly in the kernel, so it overlaps the encoding of the rest
        try:
            for v, meta, data, _ in raw_arrays:
                _write_raw(
                    files, v.name, meta, data, tuple(slice(0, n) for n in data.shape), bool(v.write_empty), "create"
                )
        except BaseException as exc:  # re-raised by the caller's thread
            failed.append(exc)

    big = sum(a[2].nbytes for a in raw_arrays) >= 8 << 20
    worker = threading.Thread(target=write_raw, name="workbench-store-chunks") if big else None
    interval = sys.getswitchinterval()
    try:
        if worker is not None:
            sys.setswitchinterval(min(interval, 2e-4))  # hand the GIL back to the writer thread promptly
            worker.start()
        for v in prepared:
            if all(v is not b for b in large):
                add(v)
        files.put(
            "zarr.json", GroupMetadata(attributes=gattrs, zarr_format=3).to_buffer_dict(proto)["zarr.json"].to_bytes()
        )
        slow = []
        for v, meta, data, raw in arrays:
            files.put(f"{v.name}/zarr.json", meta.to_buffer_dict(proto)["zarr.json"].to_bytes())
            if raw:
                continue
            try:
                chunks = _encode_sync(meta, data, bool(v.write_empty))
            except (AttributeError, TypeError):
                slow.append((v, meta, data))
                continue
            for key, value in chunks:
                files.put(f"{v.name}/{key}", value)
        for key, value in sync(_zarr_chunks(slow)) if slow else []:
            files.put(key, value)
        if worker is None:
            write_raw()
        for v, meta, data, raw in arrays:  # raw arrays under 1 MiB (not given to the writer thread)
            if raw and id(v) not in threaded:
                _write_raw(
                    files, v.name, meta, data, tuple(slice(0, n) for n in data.shape), bool(v.write_empty), "create"
                )
    finally:
        if worker is not None:
            worker.join()
            sys.setswitchinterval(interval)
    try:
        if failed:
            raise failed[0]
        try:
            os.rename(tmp, store / group)
        except OSError:
            raise StoreError(
                f"{store}/{group}: the group appeared while it was being written; is another process writing it?"
            ) from None
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


async def _zarr_metadata(v: _Var) -> Any:
    arr = await create_array(
        MemoryStore(),
        name=v.name,
        shape=v.var.shape,
        dtype=v.dtype,
        fill_value=v.fill,
        attributes=v.attrs,
        dimension_names=v.var.dims,
        zarr_format=3,
        **v.encoding,
    )
    return arr.metadata


async def _zarr_chunks(arrays: list[tuple[_Var, Any, np.ndarray]]) -> list[tuple[str, bytes]]:
    """Chunks encoded by zarr's async codec pipeline (sharded arrays with compression ...), in memory."""
    mem, proto = MemoryStore(), default_buffer_prototype()
    await asyncio.gather(
        *(
            zarr.AsyncArray(
                metadata=meta, store_path=StorePath(mem, v.name), config={"write_empty_chunks": bool(v.write_empty)}
            ).setitem(tuple(slice(None) for _ in data.shape), data)
            for v, meta, data in arrays
        )
    )
    keys = [k async for k in mem.list_prefix("") if not k.endswith("zarr.json")]
    values = await asyncio.gather(*(mem.get(k, proto) for k in keys))
    return [(k, b.to_bytes()) for k, b in zip(keys, values)]


class _Group:
    """An existing group read straight from its ``zarr.json`` files (no zarr round trips), for in-place
    writes: resize, write regions, set attrs."""

    def __init__(self, store: Path, group: str, hook: _Hook) -> None:
        self.store, self.group, self.path = store, group, store / group
        self.files = _Files(self.path, atomic=True, hook=hook)
        self.attrs = json.loads((self.path / "zarr.json").read_text()).get("attributes", {})
        self.meta: dict[str, Any] = {}
        for child in sorted(self.path.iterdir()):
            doc = child / "zarr.json"
            if child.is_dir() and doc.is_file():
                node = json.loads(doc.read_text())
                if node.get("node_type") == "array":
                    self.meta[child.name] = ArrayV3Metadata.from_dict(node)

    def dims(self, name: str) -> tuple[str, ...]:
        return tuple(self.meta[name].dimension_names or ())

    def size(self, dim: str) -> int | None:
        for name, meta in self.meta.items():
            if dim in self.dims(name):
                return meta.shape[self.dims(name).index(dim)]
        return None

    def put_attrs(self, attrs: Mapping[str, Any], phase: str | None = None) -> None:
        meta = GroupMetadata(attributes=dict(attrs), zarr_format=3)
        doc = meta.to_buffer_dict(default_buffer_prototype())["zarr.json"]
        self.files.put("zarr.json", doc.to_bytes(), phase)
        self.attrs = dict(attrs)

    def resize(self, name: str, dim: str, size: int, phase: str | None = None) -> None:
        meta = self.meta[name]
        axis = self.dims(name).index(dim)
        shape = tuple(size if i == axis else n for i, n in enumerate(meta.shape))
        if shape == tuple(meta.shape):
            return
        new = meta.update_shape(shape)
        if size < meta.shape[axis]:  # chunks wholly outside the new shape go (zarr's resize does the same)
            keep = set(meta.chunk_grid.all_chunk_coords(shape))
            for coords in meta.chunk_grid.all_chunk_coords(meta.shape):
                if coords not in keep:
                    self.files.delete(f"{name}/{meta.encode_chunk_key(coords)}")
        doc = new.to_buffer_dict(default_buffer_prototype())["zarr.json"]
        self.files.put(f"{name}/zarr.json", doc.to_bytes(), phase)
        self.meta[name] = new

    def array(self, name: str, write_empty: bool = False):
        return zarr.AsyncArray(
            metadata=self.meta[name],
            config={"write_empty_chunks": write_empty},
            store_path=StorePath(LocalStore(str(self.store)), f"{self.group}/{name}"),
        )

    def update(self, name: str, index: tuple[Any, ...], value: Any, phase: str | None = None) -> None:
        """``array[index] = value`` (orthogonal index: slices or integer lists per axis) for a small
        array: each touched chunk read, changed and replaced atomically; through zarr for codecs without
        synchronous halves."""
        meta = self.meta[name]
        grid = _grid(meta)
        axes = [
            np.arange(meta.shape[a])[i] if isinstance(i, slice) else np.asarray(i, dtype=int).reshape(-1)
            for a, i in enumerate(index)
        ]
        value = np.broadcast_to(np.asarray(value), tuple(len(a) for a in axes))
        try:
            _codec_specs(meta, (0,) * len(grid), False)
        except TypeError:
            zarr.Array(self.array(name)).set_orthogonal_selection(tuple(axes), value)
            return
        per_chunk = [sorted(set(int(i) // c for i in a)) for a, c in zip(axes, grid)]
        for coords in itertools.product(*per_chunk):
            key = f"{name}/{meta.encode_chunk_key(coords)}"
            path = self.path / key
            start = tuple(c * g for c, g in zip(coords, grid))
            chunk = _decode_chunk(meta, coords, path.read_bytes()) if path.is_file() else _fill_chunk(meta)
            pick = [np.nonzero((a >= s0) & (a < s0 + g))[0] for a, s0, g in zip(axes, start, grid)]
            chunk[np.ix_(*[a[p] - s0 for a, p, s0 in zip(axes, pick, start)])] = value[np.ix_(*pick)]
            encoded = _encode_chunk(meta, coords, chunk, False)
            if encoded is None:
                self.files.delete(key)
            else:
                self.files.put(key, encoded, phase)

    def write(self, writes: list[tuple[str, np.ndarray, tuple[slice, ...]]], phase: str) -> None:
        """Write each (array, values as stored (:func:`_encoded_like`), region): uncompressed numeric chunks as
        raw files, the rest through zarr (one array's regions in order, arrays concurrently); chunk files are
        replaced atomically."""
        slow: dict[str, list[tuple[np.ndarray, tuple[slice, ...]]]] = {}
        for name, data, region in writes:
            meta = self.meta[name]
            if _raw_ok(meta, data) and _aligned(region, _grid(meta), meta.shape):
                _write_raw(self.files, name, meta, data, region, False, phase)
            else:
                slow.setdefault(name, []).append((data, region))
        if not slow:
            return

        async def one(name: str, items) -> None:
            arr = self.array(name)
            for data, region in items:
                await arr.setitem(region, data)
                self.hook_tick(phase)

        async def every() -> None:
            await asyncio.gather(*(one(n, items) for n, items in slow.items()))

        sync(every())

    def hook_tick(self, phase: str) -> None:
        self.files.hook.tick(phase)


def _encoded_like(g: _Group, name: str, var: xr.Variable) -> np.ndarray | None:
    """``var``'s values as they are stored in array ``name`` (None: needs xarray's encoder with the stored
    encoding, e.g. datetimes or scaled integers)."""
    meta = g.meta[name]
    attrs = meta.attributes or {}
    if {"units", "calendar", "scale_factor", "add_offset", "dtype"} & set(attrs):
        return None
    values = np.asarray(var.values)
    native = meta.data_type.to_native_dtype()
    if values.dtype.kind == "O" or native.kind in "OTU":
        return values if values.dtype.kind == "O" and native.kind in "OT" else None
    if values.dtype.kind not in "biufc" or native.kind not in "biufc":
        return None
    return values.astype(native, copy=False)


def _write_vars(
    g: _Group, ds: xr.Dataset, names: Iterable[str], regions: Mapping[str, tuple[slice, ...]], phase: str
) -> None:
    """Write variables of ``ds`` into their regions of the group, encoded as stored."""
    writes, by_xarray = [], []
    for name in names:
        var = ds[name].variable.transpose(*g.dims(name))
        values = _encoded_like(g, name, var)
        if values is None:
            by_xarray.append(name)
        else:
            writes.append((name, values, regions[name]))
    g.write(writes, phase)
    for name in by_xarray:  # xarray's region write reuses the stored encoding
        dims = g.dims(name)
        region = {d: regions[name][i] for i, d in enumerate(dims)}
        part = xr.Dataset({name: ds[name].variable.transpose(*dims)})
        part = part.drop_vars([c for c in part.coords if c != name])
        part.to_zarr(str(g.store), group=g.group, mode="r+", region=region, zarr_format=3, consolidated=False)
        g.hook_tick(phase)


def _fill_boundary(g: _Group, name: str, dim: str, old: int, new: int) -> None:
    """Reset the part of the boundary chunk that a resize from ``old`` to ``new`` uncovers: a chunk
    partly beyond an earlier (shrunk) shape may still hold stale values there."""
    meta = g.meta[name]
    axis = g.dims(name).index(dim)
    c = _grid(meta)[axis]
    stop = min(new, -(-old // c) * c)
    if c == 1 or old % c == 0 or stop <= old:
        return
    index = tuple(slice(old, stop) if i == axis else slice(None) for i in range(len(meta.shape)))
    g.update(name, index, meta.fill_value)


def _grow(g: _Group, dim: str, size: int, hook_phase: str = "grow") -> int:
    """Resize every array along ``dim`` to ``size``; returns the old size."""
    old = g.size(dim) or 0
    for name in list(g.meta):
        if dim in g.dims(name):
            g.resize(name, dim, size, hook_phase)
            _fill_boundary(g, name, dim, old, size)
    return old


# ----------------------------------------------------------------------------------------- repair, views


def _marker(attrs: Mapping[str, Any]) -> dict[str, Any] | None:
    value = attrs.get(MARKER)
    if value is None:
        return None
    try:
        return json.loads(value) if isinstance(value, str) else dict(value)
    except (TypeError, ValueError):
        return {}


def _new_marker(**fields: Any) -> str:
    return json.dumps(
        {"pid": os.getpid(), "host": socket.gethostname(), "started": _dt.datetime.now(_dt.UTC).isoformat(), **fields}
    )


def _clean_tmp(store: Path) -> None:
    """Temp groups of killed first writes (only called with the store's lock held)."""
    for tmp in store.absolute().parent.glob(f"{_TMP}{store.name}-*"):
        shutil.rmtree(tmp, ignore_errors=True)


def _repair(store: Path, group: str) -> bool:
    """Undo what a killed writer of ``group`` left half done (call with the store's lock held): shrink dims
    it grew back over entries that got no data, clear cells it did not commit, drop the marker."""
    doc = store / group / "zarr.json"
    if not doc.is_file() or _marker(json.loads(doc.read_text()).get("attributes", {})) is None:
        return False
    g = _Group(store, group, _Hook())
    mark = _marker(g.attrs) or {}
    for path in g.path.glob("*/*.partial"):  # temp files of chunk writes that never got renamed
        path.unlink(missing_ok=True)
    grown = {d: int(old) for d, old in (mark.get("grown") or {}).items()}
    if WRITTEN in g.meta and mark.get("cells") is not None:  # a grid write: the flags are the truth
        grid = g.dims(WRITTEN)
        flags = np.asarray(sync(g.array(WRITTEN).getitem(tuple(slice(None) for _ in grid)))).astype(bool)
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
            if any(_grid(meta)[a] != 1 for a in axes.values()):
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
                for coords, _ in _chunk_slices(meta.shape, _grid(meta), region):
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
        with _lock(store, wait=False) as got:
            if not got:
                return False
            _repair(store, group)
            return True
    except Exception:  # a reader never fails on a repair it could not make; it still gets the view
        return False


def _open_raw(store: Path, group: str, chunks: Any = None) -> xr.Dataset:
    return xr.open_zarr(str(store), group=group, consolidated=False, chunks=chunks)


def _view(ds: xr.Dataset) -> xr.Dataset:
    """What readers see: entries a write has not finished are left out (an append's new entries while its
    marker is there; grid entries with no written cell), the unwritten cells of the kept grid entries read
    NaN (also those a killed writer left half written), and the marker is not shown."""
    mark = _marker(ds.attrs)
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


# ---------------------------------------------------------------------------------------------- writes


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
    _check_root(store, create=True)
    ds = _objectify(ds.copy())
    ds.attrs.setdefault("schema", SCHEMA)
    hook = _Hook()
    with _lock(store):
        _clean_tmp(store)
        exists = (store / group / "zarr.json").is_file()
        if exists:
            _repair(store, group)
        if not exists:
            _create_group(store, group, ds, encoding, hook)
            return store
        if append_dim is None:
            raise StoreError(f"{store}/{group}: group already exists; pass append_dim to add to it")
        old = _open_raw(store, group)
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
        g = _Group(store, group, hook)
        n_old, n_new = old.sizes[append_dim], old.sizes[append_dim] + ds.sizes[append_dim]
        attrs_before = dict(g.attrs)
        g.put_attrs({**attrs_before, MARKER: _new_marker(grown={append_dim: n_old}, attrs_before=attrs_before)})
        _grow(g, append_dim, n_new)
        regions = {
            n: tuple(
                slice(n_old, n_new) if d == append_dim else slice(0, g.meta[n].shape[i])
                for i, d in enumerate(g.dims(n))
            )
            for n in names
        }
        _write_vars(g, ds, names, regions, "data")
        hook.tick("commit")
        g.put_attrs(_group_attrs(ds))  # the marker goes last: this is the commit
    return store


def open_group(store: str | Path, group: str, *, chunks: Any = None) -> xr.Dataset:
    """Open one group lazily (dask chunks by default when ``chunks='auto'`` or {}).

    What a write has not finished is left out: an append's new entries while it runs (or after it was
    killed), and grid entries (checkpoints, specs) without any written cell. A group a killed writer left
    half resized is repaired first when no writer holds the store."""
    ds, schema = _open_repaired(Path(store), group, chunks)
    return _as_current(_view(ds), group, schema)


def _open_repaired(store: Path, group: str, chunks: Any = None) -> tuple[xr.Dataset, str]:
    """(the group as stored, marker and unfinished entries included, after repairing what a killed writer
    left when no writer holds the store; the store's schema)."""
    schema = _check_root(store, create=False, read=True)
    if group not in groups(store):
        raise StoreError(f"{store}: no group {group!r} (has: {', '.join(groups(store)) or 'none'})")
    try:
        ds = _open_raw(store, group, chunks)
    except ValueError as exc:  # sizes that disagree: a resize under way, or killed half way
        if _marker(_Group(store, group, _Hook()).attrs) is None or not _try_repair(store, group):
            raise StoreError(
                f"{store}/{group}: being written or left half-written ({exc}); retry, or rerun the write to repair it"
            ) from None
        ds = _open_raw(store, group, chunks)
    if MARKER in ds.attrs and _try_repair(store, group):
        ds = _open_raw(store, group, chunks)
    return ds, schema


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
    _check_root(store, create=True)
    flags = xr.Dataset({WRITTEN: (grid, np.ones([ds.sizes[d] for d in grid], dtype=np.int8))})
    ds = _objectify(xr.merge([ds, flags], compat="override", join="override", combine_attrs="override"))
    ds.attrs.setdefault("schema", SCHEMA)
    chunk_dims = tuple(chunk_dims if chunk_dims is not None else grid)
    hook = _Hook()
    with _lock(store):
        _clean_tmp(store)
        if not (store / group / "zarr.json").is_file():
            encoding = chunk_encoding(ds, chunk_dims, compress=compress)
            if set(chunk_dims) - set(grid):  # chunks finer than a cell: one shard file per cell holds them
                for name, enc in encoding.items():
                    cell = tuple(1 if d in grid else max(int(n), 1) for d, n in ds[name].sizes.items())
                    if set(grid) <= set(ds[name].dims) and cell != tuple(enc["chunks"]):
                        enc["shards"] = cell
            encoding[WRITTEN] = {"chunks": _flag_chunks([ds.sizes[d] for d in grid])}
            _create_group(store, group, ds, encoding, hook)
            return store
        _repair(store, group)
        old = _open_raw(store, group)  # lazy, no dask: only coordinates and flags are read
        _check_grid_write(old, ds, grid, where)
        g = _Group(store, group, hook)
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
        g.put_attrs({**g.attrs, MARKER: _new_marker(grown=grown, cells={d: sorted(index[d]) for d in grid})})
        for d, n_old in grown.items():  # grow the grid; the new entries' coordinates
            n_new = n_old + len(new_values[d])
            _grow(g, d, n_new)
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
            _write_vars(
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
    g: _Group, ds: xr.Dataset, names: list[str], grid: tuple[str, ...], index: Mapping[str, list[int]]
) -> None:
    """Write the cells of ``ds`` (positions along the grid dims) at their stored indices ``index``."""
    fast, slow = [], []
    for name in names:
        dims = g.dims(name)
        gdims = [d for d in dims if d in grid]
        var = ds[name].variable.transpose(*dims)
        values = _encoded_like(g, name, var)
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
        _write_vars(g, part, [name], regions, "data")


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
    ds, _ = _open_repaired(store, group)  # checks the store, repairs what a killed writer left
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


# ------------------------------------------------------------------ registry: every group, one write, one refusal


@dataclass(frozen=True)
class Group:
    """One kind of result in a store: how it grows, and where ``docs/store-schema.md`` describes it.

    Exactly one of: ``append`` (grows along that dim; a label is written once), ``grid`` (written cell by
    cell over those dims, see :func:`write_grid`), ``derived`` (a summary recomputed from other groups and
    replaced on every write), or none of them (written once)."""

    name: str
    section: str  # heading of its section in docs/store-schema.md
    append: str | None = None
    grid: tuple[str, ...] = ()
    derived: bool = False
    chunk_dims: tuple[str, ...] | None = None  # one chunk per entry of these dims (default: zarr's)
    compress: bool = True
    keep_attrs: bool = False  # an append keeps the first write's group attrs (else they become the new data's)
    merge_attrs: tuple[str, ...] = ()  # JSON name -> value attrs merged over every append
    same_attrs: tuple[str, ...] = ()  # attrs an append must share with the group (one group, one setting)
    varying: tuple[str, ...] = ()  # entry-free coordinates that may differ between appends (kept as first)


GROUPS: dict[str, Group] = {}


def _register(group: Group) -> str:
    GROUPS[group.name] = group
    return group.name


_INTERP = "Traces, repeated tokens, activations"
_PAIRS = "Per-RoPE-pair analysis"
_DERIVED = "Derived summaries"
_PAIR_GROUP = dict(section=_PAIRS, keep_attrs=True, varying=("wavelength",))
TRACES = _register(Group("traces", _INTERP, grid=("checkpoint", "spec")))
REPEATED_TOKENS = _register(Group("repeated_tokens", _INTERP, grid=("checkpoint", "spec")))
ACTIVATIONS = _register(
    Group(
        "activations", _INTERP, grid=("checkpoint", "spec"), chunk_dims=("checkpoint", "spec", "layer"), compress=False
    )
)
UPDATES_WEIGHTS = _register(
    Group("updates_weights", append="comparison", chunk_dims=("comparison", "layer"), **_PAIR_GROUP)
)
UPDATES_STATES = _register(
    Group("updates_states", append="comparison", chunk_dims=("comparison", "layer"), **_PAIR_GROUP)
)
BANDS = _register(Group("bands", append="comparison", chunk_dims=("comparison", "layer"), **_PAIR_GROUP))
SCORE_DECOMPOSITION = _register(
    Group("score_decomposition", append="checkpoint", chunk_dims=("checkpoint", "layer"), **_PAIR_GROUP)
)
PROBES = _register(Group("probes", append="checkpoint", chunk_dims=("checkpoint", "layer"), **_PAIR_GROUP))
RETRIEVAL = _register(
    Group("retrieval", "Retrieval", append="checkpoint", merge_attrs=("checkpoint_hashes", "rope_theta"))
)
KD_SIGNAL = _register(
    Group(
        "kd_signal",
        "Cross-document KD signal",
        append="checkpoint",
        merge_attrs=("checkpoint_hashes",),
        same_attrs=("data_hash", "seq_len", "n_windows", "seed", "summary_tokens", "token_kinds", "kept_tokens"),
    )
)
POSITION_LOSS = _register(
    Group(
        "position_loss",
        "Loss and KL by position",
        append="checkpoint",
        merge_attrs=("checkpoint_hashes",),
        same_attrs=("data_hash", "teacher_hash", "edges"),
    )
)
ABLATIONS = _register(Group("ablations", _DERIVED))
ARM_RETRIEVAL = _register(Group("arm_retrieval", _DERIVED, derived=True))
ARM_COMPARISONS = _register(Group("arm_comparisons", _DERIVED, derived=True))
ARM_UPDATES = _register(Group("arm_updates", _DERIVED, derived=True))
ARM_BANDS = _register(Group("arm_bands", _DERIVED, derived=True))
ARM_EFFECTIVE_LENGTH = _register(Group("arm_effective_length", _DERIVED, derived=True))
ABLATION_EFFECTS = _register(Group("ablation_effects", _DERIVED, derived=True))


def group_spec(group: str) -> Group:
    """The registered :class:`Group` of a name (ValueError naming the known ones otherwise)."""
    try:
        return GROUPS[group]
    except KeyError:
        raise ValueError(f"unknown store group {group!r}; known: {', '.join(GROUPS)}") from None


def written_labels(store: str | Path, group: str) -> set[str]:
    """Labels already written along an append group's dim (empty when the store or the group does not exist)."""
    spec = group_spec(group)
    if not has_group(store, group):
        return set()
    return set(map(str, open_group(store, group)[spec.append].values))


def _same_values(a: Any, b: Any) -> bool:
    a, b = np.asarray(a), np.asarray(b)
    if a.shape != b.shape:
        return False
    if a.dtype.kind in "fc" and b.dtype.kind in "fc":
        return bool(np.allclose(a, b, equal_nan=True))
    if a.dtype.kind in "iuf" and b.dtype.kind in "iuf":
        return bool(np.array_equal(a, b))
    return list(map(str, a.ravel())) == list(map(str, b.ravel()))


def refuse(
    store: str | Path,
    group: str,
    ds: xr.Dataset | None = None,
    *,
    labels: Iterable[str] | None = None,
    cells: Mapping[str, Iterable[Any]] | None = None,
    spec_hash: Iterable[str] | None = None,
    attrs: Mapping[str, Any] | None = None,
) -> None:
    """Raise StoreError, before any work, for a write :func:`save` would refuse: a foreign store; for an
    append group, ``labels`` already written (with ``ds``: its labels), ``attrs`` that differ from the
    group's ``same_attrs``, and with ``ds`` also other labels along the other dims or other entry-free
    variables than stored; for a grid group, ``cells`` (grid dim -> values) already written or spec
    name/definition clashes (:func:`check_grid`); a write-once group that exists."""
    _refuse(store, group, ds, labels=labels, cells=cells, spec_hash=spec_hash, attrs=attrs)
    from workbench import writable  # (tiny module; here so every writer's preflight probes the location)

    writable.probe(store)  # a read-only / full / forbidden store location: one line now, not after the work


def _refuse(
    store: str | Path,
    group: str,
    ds: xr.Dataset | None = None,
    *,
    labels: Iterable[str] | None = None,
    cells: Mapping[str, Iterable[Any]] | None = None,
    spec_hash: Iterable[str] | None = None,
    attrs: Mapping[str, Any] | None = None,
) -> xr.Dataset | None:
    """:func:`refuse`; returns the stored group it checked against (an existing append group), else None."""
    spec = group_spec(group)
    store = Path(store)
    where = f"{store}/{group}"
    if store.exists():
        check_schema(store)  # a foreign store (another schema, not Zarr) is refused up front
    if not has_group(store, group):
        return None
    if spec.grid:
        if cells is None and ds is not None:
            cells = {d: list(ds[d].values) for d in spec.grid}
            spec_hash = list(ds["spec_hash"].values) if "spec_hash" in ds.coords else spec_hash
        if cells is not None:
            check_grid(store, group, cells, spec_hash)
        return None
    if spec.derived:
        return None
    if spec.append is None:
        raise StoreError(f"{where}: already written; refusing to write it twice (use another --out store)")
    old = open_group(store, group)
    dim = spec.append
    if labels is None and ds is not None:
        labels = map(str, ds[dim].values)
    clash = sorted(set(map(str, old[dim].values)) & set(map(str, labels or ())))
    if clash:
        raise StoreError(
            f"{where}: {dim} {clash} already written; refusing to write it twice (use another --out store)"
        )
    attrs = ds.attrs if attrs is None and ds is not None else attrs
    for key in spec.same_attrs:
        if attrs is not None and key in attrs and key in old.attrs and str(old.attrs[key]) != str(attrs[key]):
            raise StoreError(
                f"{where}: written with {key}={old.attrs[key]!r}, this run has {key}={attrs[key]!r}; "
                "one group holds one setting (use another --out store)"
            )
    if ds is None:
        return old
    for name in ds.dims:
        if name != dim and name in old.coords and name in ds.coords and not _same_values(old[name], ds[name]):
            raise StoreError(
                f"{where}: {name} labels {list(map(str, ds[name].values))} differ from the store's "
                f"{list(map(str, old[name].values))}; one group holds one setting (use another --out store)"
            )
    for name in ds.variables:
        if name in ds.dims or dim in ds[name].dims or name in spec.varying or name not in old.variables:
            continue
        if not _same_values(old[name].values, ds[name].values):
            raise StoreError(
                f"{where}: {name} differs from the store's (the group was written with another "
                "setting); one group holds one setting (use another --out store)"
            )
    return old


def save(store: str | Path, group: str, ds: xr.Dataset) -> Path:
    """Write ``ds`` as the registered ``group`` of ``store``, the way its :class:`Group` says: the first
    write creates it; an append group then grows along its dim (variables without that dim and, where the
    group keeps them, the attrs stay as first written; ``merge_attrs`` are merged); a grid group is written
    cell by cell (:func:`write_grid`); a derived summary replaces the earlier one (built under a temporary
    name, then swapped in by renames). Everything :func:`refuse` refuses is refused before anything is written."""
    spec = group_spec(group)
    store = Path(store)
    if spec.grid:
        return write_grid(store, group, ds, grid=spec.grid, chunk_dims=spec.chunk_dims, compress=spec.compress)
    if spec.derived:
        return _replace(store, group, ds)
    encoding = chunk_encoding(ds, spec.chunk_dims) if spec.chunk_dims else None
    old = _refuse(store, group, ds)
    if old is None:
        return write(store, group, ds, encoding=encoding)
    dim = spec.append
    fixed = [n for n in ds.coords if n not in ds.dims and dim not in ds[n].dims]
    new = ds.drop_vars(fixed + [n for n in ds.dims if n != dim and n in ds.coords])
    new.attrs = dict(old.attrs) if spec.keep_attrs else dict(ds.attrs)
    new.attrs.pop(MARKER, None)
    for key in spec.merge_attrs:
        new.attrs[key] = json.dumps(
            {**(decode_attr(old.attrs.get(key)) or {}), **(decode_attr(ds.attrs.get(key)) or {})}
        )
    return write(store, group, new, append_dim=dim)


def _replace(store: Path, group: str, ds: xr.Dataset) -> Path:
    """A derived group, replaced as a whole: written as ``.tmp-<group>-<pid>`` (hidden from :func:`groups`),
    then renamed over the old one under the store's lock."""
    tmp = f"{_TMP}{group}-{os.getpid()}"
    shutil.rmtree(store / tmp, ignore_errors=True)  # a killed earlier replace of this process id
    write(store, tmp, ds)
    with _lock(store):
        target, old = store / group, store / f".old-{group}-{os.getpid()}"
        if target.exists():
            os.replace(target, old)
        os.replace(store / tmp, target)
        shutil.rmtree(old, ignore_errors=True)
    return store


# ------------------------------------------------------------------------------- older schemas: convert


def _rewrite_json(path: Path, doc: Mapping[str, Any], *, in_place: bool = False) -> None:
    text = json.dumps(doc, indent=2)
    if in_place:  # the root zarr.json carries the writers' flock: keep its inode
        with open(path, "r+") as f:
            f.write(text)
            f.truncate()
        return
    tmp = path.with_name(f"zarr.json.{uuid.uuid4().hex[:12]}.partial")
    tmp.write_text(text)
    os.replace(tmp, path)


def upgrade(store: str | Path) -> list[str]:
    """Convert a store of an older schema (OLD_SCHEMAS) in place to SCHEMA (`workbench upgrade-store`): the
    renamed coordinates and variables get their new names (array directories and the variables' ``coordinates``
    attr), so do the renamed group attrs, the layer numbering of the groups that changed is rewritten, the
    group and root ``schema`` attrs are bumped
    (the root last: a convert killed half way reruns). Chunk data is not touched. Returns one line per change;
    a store of the current schema is left as it is (empty list)."""
    store = Path(store)
    schema = _check_root(store, create=False, read=True)
    if schema == SCHEMA:
        return []
    changes: list[str] = []
    renamed = RENAMED.get(schema, {})
    with _lock(store):
        _clean_tmp(store)
        for group in groups(store):
            gdir = store / group
            if _marker(json.loads((gdir / "zarr.json").read_text()).get("attributes") or {}) is not None:
                _repair(store, group)
            arrays = [p.parent for p in sorted(gdir.glob("*/zarr.json"))]
            present = {old: new for old, new in renamed.items() if (gdir / old / "zarr.json").is_file()}
            for adir in arrays:
                doc = json.loads((adir / "zarr.json").read_text())
                coords = (doc.get("attributes") or {}).get("coordinates")
                if coords:
                    new = " ".join(present.get(c, renamed.get(c, c)) for c in coords.split())
                    if new != coords:
                        doc["attributes"]["coordinates"] = new
                        _rewrite_json(adir / "zarr.json", doc)
            for old, new in present.items():
                if (gdir / new).exists():
                    raise StoreError(f"{store}/{group}: has both {old!r} and {new!r}; refusing to convert")
                os.replace(gdir / old, gdir / new)
                changes.append(f"{group}: {old} -> {new}")
            shift = LAYER_SHIFT.get(schema, {}).get(group)
            done_shift = (json.loads((gdir / "zarr.json").read_text()).get("attributes") or {}).get("schema") == SCHEMA
            if shift and not done_shift and (gdir / "layer" / "zarr.json").is_file():
                layer = zarr.open_array(str(gdir / "layer"), mode="r+")
                layer[:] = layer[:] + shift
                changes.append(f"{group}: layer numbered as blocks (embeddings = -1; was 0)")
            gdoc = json.loads((gdir / "zarr.json").read_text())
            attrs = dict(gdoc.get("attributes") or {})
            for old, new in ATTRS_RENAMED.get(schema, {}).get(group, {}).items():
                if old in attrs and new not in attrs:
                    attrs[new] = attrs.pop(old)
                    changes.append(f"{group}: attr {old} -> {new}")
            if attrs.get("schema") not in (None, SCHEMA) or attrs != (gdoc.get("attributes") or {}):
                attrs["schema"] = SCHEMA
                gdoc["attributes"] = attrs
                _rewrite_json(gdir / "zarr.json", gdoc)
        root = _root_doc(store)
        root.setdefault("attributes", {})["schema"] = SCHEMA
        _rewrite_json(store / "zarr.json", root, in_place=True)
    changes.append(f"schema {schema} -> {SCHEMA}")
    return changes
