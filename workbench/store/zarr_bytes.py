"""Zarr v3 bytes, written lean, layer 2 of the store: new groups, chunk files, in-place resizes and region
writes, with xarray's encoders and zarr's own metadata classes and codecs but without their per-array store
round trips.

This is the one module that uses zarr's and xarray's private APIs (``zarr.core.*``, codec ``_encode_sync``,
``xarray.backends.zarr`` encoders; pinned versions, see pyproject.toml): a zarr or xarray upgrade breaks here
and nowhere else. ``tests/test_store.py`` checks that what it writes is byte for byte what
``xarray.Dataset.to_zarr`` writes.

- A new group (:func:`create_group`) is built in a sibling temp directory (``.tmp-<store>-<group>-*``) and
  renamed into the store, so a killed first write leaves no group at all. Chunk keys use the ``.`` separator
  (``c.0.1.0.3``: one directory per array, not one per dimension). Uncompressed numeric chunks (and shards of
  them) are written as raw, preallocated bytes, by a second thread while the small arrays are encoded;
  everything else goes through zarr's codecs.
- An existing group (:class:`WritableGroup`) is read straight from its ``zarr.json`` files; resizes, region
  writes and attrs replace each file atomically (temp file + rename), so a killed writer never leaves a
  truncated chunk. What a killed writer leaves half done is the business of the layer above
  (:mod:`workbench.store.transactions`), which passes the kill hook in as a :class:`Ticker`.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import shutil
import sys
import threading
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

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

from workbench.store.schema import TMP_PREFIX, StoreError

_DOT_KEYS = {"name": "default", "separator": "."}


class Ticker(Protocol):
    """Told each time a file of a phase is written (the transactions' kill hook, for crash tests)."""

    def tick(self, phase: str) -> None: ...


def group_doc(attrs: Mapping[str, Any]) -> bytes:
    """The ``zarr.json`` of a group with these attrs, as zarr writes it."""
    meta = GroupMetadata(attributes=dict(attrs), zarr_format=3)
    return meta.to_buffer_dict(default_buffer_prototype())["zarr.json"].to_bytes()


class _Files:
    """Writes files under a directory: direct (inside a temp dir no reader sees) or atomic (temp file +
    rename, so a killed writer never leaves a truncated chunk)."""

    def __init__(self, root: Path, *, atomic: bool, hook: Ticker) -> None:
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


def group_attrs(ds: xr.Dataset) -> dict[str, Any]:
    """The group attrs ``to_zarr`` writes for ``ds`` (its attrs, plus a ``coordinates`` list for
    coordinates no data variable names)."""
    _, attrs = conventions.encode_dataset_coordinates(ds)
    return {k: encode_zarr_attr_value(v) for k, v in attrs.items()}


def file_shape(meta: Any) -> tuple[int, ...]:
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
    if any(s % c for s, c in zip(file_shape(meta), sc.chunk_shape)):
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
    return all(n % c == 0 for n, c in zip(meta.shape, file_shape(meta)))


def _is_fill(chunk: np.ndarray, fill: Any) -> bool:
    if chunk.size == 0:
        return True
    fill = np.asarray(fill)
    if chunk.dtype.kind in "fc" and np.isnan(fill):
        return bool(np.isnan(chunk.flat[0])) and bool(np.isnan(chunk).all())
    return bool(chunk.flat[0] == fill) and bool((chunk == fill).all())


def chunk_slices(shape: tuple[int, ...], chunks: tuple[int, ...], region: tuple[slice, ...]):
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
    for coords, sl in chunk_slices(meta.shape, file_shape(meta), region):
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
    if part.shape == file_shape(meta):
        return part
    chunk = _fill_chunk(meta)
    chunk[tuple(slice(0, n) for n in part.shape)] = part
    return chunk


def _fill_chunk(meta: Any) -> np.ndarray:
    """One whole chunk of the fill value."""
    native = meta.data_type.to_native_dtype()
    return np.full(file_shape(meta), meta.fill_value, dtype=object if native.kind in "OT" else native)


def _encode_sync(meta: Any, data: np.ndarray, write_empty: bool) -> list[tuple[str, bytes]]:
    """Every chunk of a (small) array encoded by its codecs' synchronous halves, in the order zarr's codec
    pipeline applies them; raises TypeError for codecs without one (sharding)."""
    out = []
    for coords, sl in chunk_slices(meta.shape, file_shape(meta), tuple(slice(0, n) for n in meta.shape)):
        encoded = _encode_chunk(meta, coords, _whole_chunk(meta, np.asarray(data[sl])), write_empty)
        if encoded is not None:
            out.append((meta.encode_chunk_key(coords), encoded))
    return out


def create_group(store: Path, group: str, ds: xr.Dataset, encoding: Mapping[str, Any] | None, hook: Ticker) -> None:
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
    tmp = store.absolute().parent / f"{TMP_PREFIX}{store.name}-{group}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    held = _hold(tmp)
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
        files.put("zarr.json", group_doc(gattrs))
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
        if held is not None:
            os.close(held)


def _hold(tmp: Path) -> int | None:
    """An exclusive ``flock`` on a temp directory while it is built (released when closed, or by the kernel
    when the writer dies): another store's writer cleaning up killed writes whose temp names match leaves
    it alone (:func:`workbench.store.transactions.clean_tmp`). None where there is no flock."""
    try:
        import fcntl  # lazy: POSIX only
    except ImportError:
        return None
    fd = os.open(tmp, os.O_RDONLY)
    fcntl.flock(fd, fcntl.LOCK_EX)
    return fd


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


class WritableGroup:
    """An existing group read straight from its ``zarr.json`` files (no zarr round trips), for in-place
    writes: resize, write regions, set attrs."""

    def __init__(self, store: Path, group: str, hook: Ticker) -> None:
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
        self.files.put("zarr.json", group_doc(attrs), phase)
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

    def read(self, name: str) -> np.ndarray:
        """The whole of a (small) array."""
        return np.asarray(sync(self.array(name).getitem(tuple(slice(None) for _ in self.dims(name)))))

    def update(self, name: str, index: tuple[Any, ...], value: Any, phase: str | None = None) -> None:
        """``array[index] = value`` (orthogonal index: slices or integer lists per axis) for a small
        array: each touched chunk read, changed and replaced atomically; through zarr for codecs without
        synchronous halves."""
        meta = self.meta[name]
        grid = file_shape(meta)
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
        """Write each (array, values as stored (:func:`encoded_like`), region): uncompressed numeric chunks as
        raw files, the rest through zarr (one array's regions in order, arrays concurrently); chunk files are
        replaced atomically."""
        slow: dict[str, list[tuple[np.ndarray, tuple[slice, ...]]]] = {}
        for name, data, region in writes:
            meta = self.meta[name]
            if _raw_ok(meta, data) and _aligned(region, file_shape(meta), meta.shape):
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


def encoded_like(g: WritableGroup, name: str, var: xr.Variable) -> np.ndarray | None:
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


def write_vars(
    g: WritableGroup, ds: xr.Dataset, names: Iterable[str], regions: Mapping[str, tuple[slice, ...]], phase: str
) -> None:
    """Write variables of ``ds`` into their regions of the group, encoded as stored."""
    writes, by_xarray = [], []
    for name in names:
        var = ds[name].variable.transpose(*g.dims(name))
        values = encoded_like(g, name, var)
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


def _fill_boundary(g: WritableGroup, name: str, dim: str, old: int, new: int) -> None:
    """Reset the part of the boundary chunk that a resize from ``old`` to ``new`` uncovers: a chunk
    partly beyond an earlier (shrunk) shape may still hold stale values there."""
    meta = g.meta[name]
    axis = g.dims(name).index(dim)
    c = file_shape(meta)[axis]
    stop = min(new, -(-old // c) * c)
    if c == 1 or old % c == 0 or stop <= old:
        return
    index = tuple(slice(old, stop) if i == axis else slice(None) for i in range(len(meta.shape)))
    g.update(name, index, meta.fill_value)


def grow(g: WritableGroup, dim: str, size: int, hook_phase: str = "grow") -> int:
    """Resize every array along ``dim`` to ``size``; returns the old size."""
    old = g.size(dim) or 0
    for name in list(g.meta):
        if dim in g.dims(name):
            g.resize(name, dim, size, hook_phase)
            _fill_boundary(g, name, dim, old, size)
    return old
