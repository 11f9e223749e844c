"""The Zarr store: schema guard, incremental grid writes, spec de-duplication, chunked lazy reads, files
identical to xarray's own writer, and writes killed half way (subprocess + SIGKILL at a chosen chunk)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import xarray as xr
import zarr
import zarr.storage as zs

from workbench import rope, store
from workbench.store import schema, transactions


def _cell(checkpoints, specs, value, hashes=None):
    ds = xr.Dataset(
        {"final_kl": (("checkpoint", "spec", "layer"), np.full((len(checkpoints), len(specs), 3), value, float))},
        coords={
            "checkpoint": np.array(checkpoints, dtype=object),
            "spec": np.array(specs, dtype=object),
            "layer": np.arange(3),
            "spec_hash": ("spec", np.array(hashes or [f"h-{s}" for s in specs], dtype=object)),
            "rope_theta": ("checkpoint", np.full(len(checkpoints), 500.0)),
        },
    )
    ds.attrs.update(store.provenance(kind="test"))
    return ds


def _read(path):
    return xr.open_zarr(path, group="traces", consolidated=False).load()


def test_grid_appends_checkpoints_and_specs_without_rewriting(tmp_path):
    path = tmp_path / "s.zarr"
    store.write_grid(path, "traces", _cell(["a"], ["s1", "s2"], 1.0))
    store.write_grid(path, "traces", _cell(["b"], ["s1"], 2.0))  # a new checkpoint, a subset of the specs
    store.write_grid(path, "traces", _cell(["a"], ["s3"], 3.0))  # a new spec for an old checkpoint
    store.write_grid(path, "traces", _cell(["b"], ["s2"], 4.0))  # fills a cell left unwritten
    ds = _read(path)
    assert list(ds.checkpoint.values) == ["a", "b"] and list(ds.spec.values) == ["s1", "s2", "s3"]
    np.testing.assert_array_equal(ds.final_kl.isel(layer=0).values, [[1, 1, 3], [2, 4, np.nan]])
    np.testing.assert_array_equal(ds.cell_written.values, [[1, 1, 1], [1, 1, 0]])
    assert list(ds.spec_hash.values) == ["h-s1", "h-s2", "h-s3"]
    assert store.written_cells(path, "traces") == {("a", "s1"), ("a", "s2"), ("a", "s3"), ("b", "s1"), ("b", "s2")}


@pytest.mark.parametrize(
    "bad, message",
    [
        (_cell(["a"], ["s2"], 9.0), "already written"),
        (_cell(["c"], ["s1"], 9.0, hashes=["other"]), "different definition"),
        (_cell(["c"], ["renamed"], 9.0, hashes=["h-s1"]), "same perturbation as stored spec 's1'"),
    ],
)
def test_refused_writes_overwrite_nothing(tmp_path, bad, message):
    path = tmp_path / "s.zarr"
    store.write_grid(path, "traces", _cell(["a"], ["s1", "s2"], 1.0))
    before = _read(path)
    with pytest.raises(store.StoreError, match=message):
        store.check_grid(
            path,
            "traces",
            {"checkpoint": list(bad.checkpoint.values), "spec": list(bad.spec.values)},
            list(bad.spec_hash.values),
        )
    with pytest.raises(store.StoreError, match=message):
        store.write_grid(path, "traces", bad)
    xr.testing.assert_identical(_read(path), before)


def test_store_of_another_schema_is_refused(tmp_path):
    path = tmp_path / "foreign.zarr"
    root = zarr.open_group(str(path), mode="w-", zarr_format=3)
    root.attrs["schema"] = "someone-else/2"
    with pytest.raises(store.StoreError, match="someone-else/2"):
        store.write_grid(path, "traces", _cell(["a"], ["s1"], 1.0))
    assert list(zarr.open_group(str(path), mode="r").groups()) == []  # nothing was written into it


def test_a_store_of_an_old_schema_gets_one_line_saying_to_rerun(tmp_path):
    from app import stores
    from app.paths import root_of
    from app.views import common

    path = tmp_path / "toy" / "results.zarr"
    store.save(path, store.TRACES, _cell(["a"], ["s1"], 1.0))
    root = zarr.open_group(str(path), mode="r+")
    root.attrs["schema"] = "workbench-store/1"
    line = f"{path}: store schema is 'workbench-store/1'; this version of the workbench reads and writes only "
    for attempt in (
        lambda: store.open_group(path, store.TRACES),
        lambda: store.groups(path),
        lambda: store.refuse(path, store.TRACES, _cell(["b"], ["s1"], 2.0)),
        lambda: store.save(path, store.TRACES, _cell(["b"], ["s1"], 2.0)),
    ):
        with pytest.raises(store.StoreError) as refused:
            attempt()
        message = str(refused.value)
        assert message.startswith(line) and "'workbench-store/3'" in message and "rerun the command" in message
        assert "\n" not in message
    with pytest.raises(store.StoreError, match="workbench-store/1"):  # the app: a message, not a traceback
        stores.open_group(root_of(tmp_path), "toy/results.zarr", store.TRACES)
    shown = common.guarded(lambda: stores.groups_of(root_of(tmp_path), "toy/results.zarr"), lambda m: m)()
    assert isinstance(shown, str) and "store schema is 'workbench-store/1'; this version" in shown and "\n" not in shown
    assert root.attrs["schema"] == "workbench-store/1" and list(root.group_keys()) == ["traces"]  # untouched


def test_plain_write_append_still_works(tmp_path):
    path = tmp_path / "s.zarr"
    store.write(path, "retrieval", _cell(["a"], ["s1"], 1.0).drop_vars("spec_hash"), append_dim=None)
    store.write(path, "retrieval", _cell(["b"], ["s1"], 2.0).drop_vars("spec_hash"), append_dim="checkpoint")
    with pytest.raises(store.StoreError, match="already written"):
        store.write(path, "retrieval", _cell(["b"], ["s1"], 2.0).drop_vars("spec_hash"), append_dim="checkpoint")
    assert store.open_group(path, "retrieval").sizes["checkpoint"] == 2


class _CountingStore(zs.WrapperStore):
    """Records every key read and the bytes it returned, to show which chunks a read touched."""

    def __init__(self, inner):
        super().__init__(inner)
        self.keys: list[str] = []
        self.nbytes: list[int] = []

    async def get(self, key, prototype, byte_range=None):
        got = await self._store.get(key, prototype, byte_range)
        self.keys.append(key)
        self.nbytes.append(len(got) if got is not None else 0)
        return got

    def read(self, array: str) -> tuple[set[str], int]:
        hits = [(k, n) for k, n in zip(self.keys, self.nbytes) if f"/{array}/c" in k]
        return {k for k, _ in hits}, sum(n for _, n in hits)


def test_activations_are_chunked_by_checkpoint_and_layer_and_read_lazily(tmp_path):
    path = tmp_path / "a.zarr"
    rng = np.random.default_rng(0)
    pairs = store.pair_coords(rope.wavelengths(500.0, 16))
    for ck in ("a", "b"):
        data = rng.standard_normal((1, 2, 2, 3, 4, 32, 8, 2)).astype(np.float32)
        ds = xr.Dataset(
            {"rot_q": (("checkpoint", "spec", "sample", "layer", "head", "position", "pair", "half"), data)},
            coords={
                "checkpoint": np.array([ck], dtype=object),
                "spec": np.array(["clean", "x"], dtype=object),
                **pairs,
            },
        )
        store.write_grid(path, "activations", ds, chunk_dims=("checkpoint", "spec", "layer"), compress=False)
    chunk = 2 * 4 * 32 * 8 * 2 * 4  # bytes of one (checkpoint, spec, layer) chunk: heads and the pair axis whole
    assert len(list((path / "activations" / "rot_q").glob("c*"))) == 2 * 2  # one shard file per (checkpoint, spec)
    counting = _CountingStore(zs.LocalStore(str(path), read_only=True))
    ds = xr.open_zarr(counting, group="activations", consolidated=False, chunks={})
    assert ds.rot_q.encoding["preferred_chunks"]["layer"] == 1 and ds.rot_q.encoding["shards"][3] == 3
    counting.keys.clear(), counting.nbytes.clear()
    piece = ds.rot_q.sel(checkpoint="b", layer=2, head=1).values
    files, nbytes = counting.read("rot_q")
    assert files == {f"activations/rot_q/c.1.{s}.0.0.0.0.0.0" for s in (0, 1)}  # the two cells of checkpoint b
    assert 2 * chunk <= nbytes <= 2 * (chunk + 3 * 16 + 4)  # one layer chunk (and the shard index) per spec
    assert piece.shape == (2, 2, 32, 8, 2) and np.isfinite(piece).all()
    counting.keys.clear(), counting.nbytes.clear()
    _ = ds.rot_q.values
    assert counting.read("rot_q")[1] >= 2 * 2 * 3 * chunk
    assert ds.wavelength.dims == ("pair",) and float(ds.wavelength[0]) == pytest.approx(2 * np.pi)


# ------------------------------------------------------------------ the lean writer writes what xarray writes


def _files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _mixed():
    rng = np.random.default_rng(0)
    ds = xr.Dataset(
        {
            "final_kl": (("checkpoint", "spec", "layer"), rng.standard_normal((2, 3, 5))),
            "count": (("checkpoint", "spec"), np.arange(6).reshape(2, 3).astype(np.int32)),
            "flag": (("checkpoint", "spec"), np.ones((2, 3), bool)),
            "text": (("checkpoint",), np.array(["hello", "wörld"], dtype=object)),
            "scalar": ((), 3.5),
        },
        coords={
            "checkpoint": np.array(["a", "b"], dtype=object),
            "spec": np.array(["s1", "s2", "s3"], dtype=object),
            "layer": np.arange(5),
            "spec_hash": ("spec", np.array(["h1", "h2", "h3"], dtype=object)),
            "when": ("checkpoint", pd.date_range("2026-01-01", periods=2)),
            **store.pair_coords(rope.wavelengths(500.0, 8)),
        },
    )
    ds.attrs.update({"kind": "test", "extra": "[1, 2]", "schema": store.SCHEMA})
    return ds


def _activations(ck="a", layers=3, seed=0, positions=16):
    data = np.random.default_rng(seed).standard_normal((1, 2, 1, layers, 2, positions, 4, 2)).astype(np.float32)
    data[0, 1, 0, 1] = np.nan  # a layer the capture filter did not match: an empty chunk
    return xr.Dataset(
        {"rot_q": (("checkpoint", "spec", "sample", "layer", "head", "position", "pair", "half"), data)},
        coords={
            "checkpoint": np.array([ck], dtype=object),
            "spec": np.array(["clean", "x"], dtype=object),
            "spec_hash": ("spec", np.array(["h-clean", "h-x"], dtype=object)),
            **store.pair_coords(rope.wavelengths(500.0, 8)),
        },
    )


@pytest.mark.parametrize("case", ["mixed", "chunked", "raw", "sharded", "lz4", "large"])
def test_new_groups_are_byte_identical_to_xarray_to_zarr(tmp_path, case):
    from zarr.codecs import BloscCodec

    # "large": over 8 MiB of raw chunks, written by the store's second thread while the rest is encoded
    ds = _mixed() if case in ("mixed", "chunked") else _activations(positions=24000 if case == "large" else 16)
    enc = {"mixed": None, "chunked": store.chunk_encoding(ds, ("checkpoint", "layer"))}.get(case)
    if case in ("raw", "sharded", "lz4", "large"):
        enc = store.chunk_encoding(ds, ("checkpoint", "spec", "layer"), compress=case == "lz4")
        if case in ("sharded", "large"):
            enc["rot_q"]["shards"] = (1, 1, 1, 3, 2, ds.sizes["position"], 4, 2)
        if case == "lz4":
            enc["rot_q"]["compressors"] = [BloscCodec(cname="lz4", clevel=1, shuffle="shuffle")]
        assert (ds.rot_q.nbytes >= 8 << 20) == (case == "large")
    store.write(tmp_path / "s.zarr", "g", ds, encoding=enc)
    dot = {n: {"chunk_key_encoding": {"name": "default", "separator": "."}} for n in ds.variables}
    for n, e in (enc or {}).items():
        dot[n].update(e)
    ref = schema.objectify(ds.copy())
    ref.attrs.setdefault("schema", store.SCHEMA)
    ref.to_zarr(tmp_path / "ref", mode="w-", zarr_format=3, consolidated=False, encoding=dot)
    assert _files(tmp_path / "s.zarr" / "g") == _files(tmp_path / "ref")
    xr.testing.assert_identical(
        xr.open_zarr(tmp_path / "s.zarr", group="g", consolidated=False).load(),
        xr.open_zarr(tmp_path / "ref", consolidated=False).load(),
    )


def _retrieval(names, value):
    rng = np.random.default_rng(len(names))
    ds = xr.Dataset(
        {
            "correct": (("checkpoint", "task", "length"), rng.random((len(names), 2, 3)) > 0.5),
            "answer_logprob": (("checkpoint", "task", "length"), np.full((len(names), 2, 3), value, np.float32)),
            "prediction": (("checkpoint", "task"), np.array([[f"{c}-{t}" for t in "pq"] for c in names], dtype=object)),
        },
        coords={
            "checkpoint": np.array(names, dtype=object),
            "task": np.array(["passkey", "niah"], dtype=object),
            "length": np.array([256, 512, 1024]),
            "rope_theta": ("checkpoint", np.full(len(names), 1e4)),
            "evaluated": ("checkpoint", pd.date_range("2026-01-01", periods=len(names))),
        },
    )
    ds.attrs = {"kind": "retrieval", "value": float(value)}
    return ds


def _same(a: xr.Dataset, b: xr.Dataset) -> None:
    assert set(a.variables) == set(b.variables) and dict(a.sizes) == dict(b.sizes)
    for name in a.variables:
        x, y = a[name].values, b[name].values
        if x.dtype.kind == "M":
            np.testing.assert_array_equal(x.astype("M8[ns]"), y.astype("M8[ns]"))
        elif x.dtype.kind in "fc":
            np.testing.assert_array_equal(x, y)
        else:
            assert list(map(str, x.ravel())) == list(map(str, y.ravel())), name


def test_appends_equal_the_concatenation_and_take_the_latest_attrs(tmp_path):
    path = tmp_path / "s.zarr"
    parts = [_retrieval(["a", "b"], 1.0), _retrieval(["c"], 2.0), _retrieval(["d", "e", "f"], 3.0)]
    store.write(path, "retrieval", parts[0])
    for part in parts[1:]:
        store.write(path, "retrieval", part, append_dim="checkpoint")
    got = xr.open_zarr(path, group="retrieval", consolidated=False).load()
    _same(got, xr.concat(parts, "checkpoint", data_vars="minimal", coords="minimal"))
    assert got.attrs == {"kind": "retrieval", "value": 3.0, "schema": store.SCHEMA}


def test_grid_growth_keeps_the_group_attrs_and_unwritten_cells_read_nan(tmp_path):
    path = tmp_path / "s.zarr"
    store.write_grid(path, "traces", _cell(["a"], ["s1", "s2"], 1.0))
    first = _read(path).attrs
    store.write_grid(path, "traces", _cell(["b"], ["s1"], 2.0))
    assert _read(path).attrs == first
    masked = store.open_group(path, "traces").load()
    assert np.isnan(masked.final_kl.sel(checkpoint="b", spec="s2")).all()
    assert (masked.final_kl.sel(checkpoint="b", spec="s1") == 2.0).all()


def test_a_cell_left_half_written_reads_nan_beside_its_written_neighbours(tmp_path):
    """What a writer killed between a cell's data and its flag leaves: data on disk, flag 0. Readers
    (open_group: the app, figures, analyses) see NaN there, never the half-written numbers."""
    path = tmp_path / "s.zarr"
    store.write_grid(path, "traces", _cell(["a", "b"], ["s1", "s2"], 1.0))
    raw = zarr.open_group(str(path), mode="r+")["traces"]
    raw["final_kl"][1, 1, :] = 99.0  # b/s2: the killed writer's partial data
    raw[store.WRITTEN][1, 1] = 0
    ds = store.open_group(path, "traces").load()
    assert np.isnan(ds.final_kl.sel(checkpoint="b", spec="s2")).all()
    assert (ds.final_kl.sel(checkpoint="b", spec="s1") == 1.0).all() and (ds.final_kl.sel(checkpoint="a") == 1.0).all()
    assert _read(path).final_kl.sel(checkpoint="b", spec="s2").values.tolist() == [99.0] * 3  # on disk, unmasked


# ------------------------------------------------------------------------------------ writes killed half way

WRITER = r"""
import sys
import numpy as np, pandas as pd, xarray as xr
from workbench import rope, store
path, kind, name = sys.argv[1:4]
if kind == "grid":
    seed = {"a": 0, "b": 1, "c": 2}[name]
    data = np.random.default_rng(seed).standard_normal((1, 2, 1, 3, 2, 16, 4, 2)).astype(np.float32)
    dims = ("checkpoint", "spec", "sample", "layer", "head", "position", "pair", "half")
    ds = xr.Dataset({"rot_q": (dims, data)},
                    coords={"checkpoint": np.array([name], dtype=object),
                            "spec": np.array(["clean", "x"], dtype=object),
                            "spec_hash": ("spec", np.array(["h-clean", "h-x"], dtype=object)),
                            "rope_theta": ("checkpoint", np.full(1, 500.0 + seed)),
                            **store.pair_coords(rope.wavelengths(500.0, 8))})
    ds.attrs = {"kind": "activations"}
    store.write_grid(path, "activations", ds, chunk_dims=("checkpoint", "spec", "layer"), compress=False)
else:
    names = name.split(",")
    rng = np.random.default_rng(len(names))
    grid = ("checkpoint", "task", "length")
    predictions = np.array([[f"{c}-{t}" for t in "pq"] for c in names], dtype=object)
    ds = xr.Dataset({"correct": (grid, rng.random((len(names), 2, 3)) > 0.5),
                     "answer_logprob": (grid, np.full((len(names), 2, 3), len(names), np.float32)),
                     "prediction": (("checkpoint", "task"), predictions)},
                    coords={"checkpoint": np.array(names, dtype=object),
                            "task": np.array(["passkey", "niah"], dtype=object),
                            "length": np.array([256, 512, 1024]),
                            "rope_theta": ("checkpoint", np.full(len(names), 1e4)),
                            "evaluated": ("checkpoint", pd.date_range("2026-01-01", periods=len(names)))})
    ds.attrs = {"kind": "retrieval", "n": len(names)}
    store.write(path, "retrieval", ds, append_dim="checkpoint")
"""


def _run(path: Path, kind: str, name: str, kill: str | None = None) -> int:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    env.pop(store.KILL_ENV, None)
    if kill:
        env[store.KILL_ENV] = kill
    done = subprocess.run(
        [sys.executable, "-c", WRITER, str(path), kind, name],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        cwd=Path(__file__).resolve().parents[1],
    )
    assert done.returncode in (0, -signal.SIGKILL), done.stderr
    return done.returncode


def _plain(path: Path, group: str) -> xr.Dataset:
    return xr.open_zarr(path, group=group, consolidated=False).load()


def _no_leftovers(path: Path) -> None:
    assert not list(path.parent.glob(f".tmp-{path.name}-*")) and not list(path.rglob("*.partial"))
    assert (
        store.MARKER
        not in zarr.open_group(str(path), mode="r")[
            "activations" if (path / "activations").exists() else "retrieval"
        ].attrs
    )


@pytest.mark.parametrize("kill", ["data:1", "grow:1", "grow:3", "commit:1"])
def test_grid_write_killed_half_way_is_readable_marked_unwritten_and_completed_by_a_rerun(tmp_path, kill):
    path = tmp_path / "s.zarr"
    assert _run(path, "grid", "a") == 0
    assert _run(path, "grid", "b", kill) == -signal.SIGKILL
    if kill.startswith("grow"):  # killed while resizing: the next store call repairs it
        assert "b" not in store.open_group(path, "activations").checkpoint.values
    plain = _plain(path, "activations")  # plain xarray, no project code
    committed = kill == "commit:1"
    assert store.written_cells(path, "activations", ("checkpoint", "spec")) == {("a", "clean"), ("a", "x")} | (
        {("b", "clean"), ("b", "x")} if committed else set()
    )
    if "b" in plain.checkpoint.values:
        assert plain.cell_written.sel(checkpoint="b").values.tolist() == ([1, 1] if committed else [0, 0])
    view = store.open_group(path, "activations")
    assert ("b" in view.checkpoint.values) == committed  # what demo/pipeline._new_checkpoints sees
    if not committed:
        store.check_grid(path, "activations", {"checkpoint": ["b"], "spec": ["clean", "x"]}, ["h-clean", "h-x"])
        assert _run(path, "grid", "b") == 0  # the rerun completes the interrupted cells
    reference = tmp_path / "ref.zarr"
    _run(reference, "grid", "a"), _run(reference, "grid", "b")
    _same(_plain(path, "activations"), _plain(reference, "activations"))
    assert store.written_cells(path, "activations") == {(c, s) for c in "ab" for s in ("clean", "x")}
    _no_leftovers(path)


def test_killed_first_write_leaves_no_group_and_a_rerun_writes_it(tmp_path):
    path = tmp_path / "s.zarr"
    assert _run(path, "grid", "a", "create:1") == -signal.SIGKILL
    assert list(tmp_path.glob(".tmp-s.zarr-activations-*"))  # the half-built group never entered the store
    assert not store.has_group(path, "activations") and store.written_cells(path, "activations") == set()
    assert _run(path, "grid", "a") == 0
    assert store.written_cells(path, "activations") == {("a", "clean"), ("a", "x")}
    _no_leftovers(path)


def test_a_killed_grid_entry_is_dropped_when_another_one_is_written(tmp_path):
    path = tmp_path / "s.zarr"
    _run(path, "grid", "a")
    assert _run(path, "grid", "b", "data:1") == -signal.SIGKILL
    assert _run(path, "grid", "c") == 0  # b is given up; c takes its place, with clean flags
    plain = _plain(path, "activations")
    assert plain.checkpoint.values.tolist() == ["a", "c"] and plain.cell_written.values.all()
    reference = tmp_path / "ref.zarr"
    _run(reference, "grid", "a"), _run(reference, "grid", "c")
    _same(plain, _plain(reference, "activations"))


@pytest.mark.parametrize("kill", ["data:1", "data:3", "grow:2", "commit:1"])
def test_append_killed_half_way_is_hidden_and_completed_by_a_rerun(tmp_path, kill):
    path = tmp_path / "s.zarr"
    assert _run(path, "append", "a,b") == 0
    assert _run(path, "append", "c,d", kill) == -signal.SIGKILL
    view = store.open_group(path, "retrieval")  # repairs: the killed append is gone
    assert view.checkpoint.values.tolist() == ["a", "b"] and store.MARKER not in view.attrs
    assert _plain(path, "retrieval").checkpoint.values.tolist() == ["a", "b"]
    assert _run(path, "append", "c,d") == 0
    reference = tmp_path / "ref.zarr"
    _run(reference, "append", "a,b"), _run(reference, "append", "c,d")
    _same(_plain(path, "retrieval"), _plain(reference, "retrieval"))
    assert _plain(path, "retrieval").attrs == _plain(reference, "retrieval").attrs
    _no_leftovers(path)


def test_readers_skip_what_a_live_writer_has_not_finished(tmp_path):
    path = tmp_path / "s.zarr"
    _run(path, "append", "a,b")
    _run(path, "append", "c", "data:2")
    with transactions.lock(path):  # as if the writer were still running: readers must not repair, only skip
        assert store.open_group(path, "retrieval").checkpoint.values.tolist() == ["a", "b"]
        assert store.MARKER in zarr.open_group(str(path), mode="r")["retrieval"].attrs
        assert _plain(path, "retrieval").sizes["checkpoint"] == 3  # plain xarray sees the entry, and the marker
    assert store.open_group(path, "retrieval").checkpoint.values.tolist() == ["a", "b"]
    assert store.MARKER not in zarr.open_group(str(path), mode="r")["retrieval"].attrs


def test_a_writer_cleans_only_temp_groups_no_live_writer_holds(tmp_path):
    """clean_tmp removes what killed first writes left next to the store, but not the temp group a live
    writer of another store is building (``a.zarr-b``'s temp names start with ``.tmp-a.zarr-`` too)."""
    import fcntl
    import os

    live = tmp_path / ".tmp-a.zarr-b-g-12345678"
    dead = tmp_path / ".tmp-a.zarr-g-87654321"
    live.mkdir()
    dead.mkdir()
    fd = os.open(live, os.O_RDONLY)
    fcntl.flock(fd, fcntl.LOCK_EX)  # as create_group holds it while it builds
    try:
        ds = xr.Dataset({"x": (("pair",), np.arange(4.0))}, coords={"pair": np.arange(4)})
        store.write(tmp_path / "a.zarr", "g", ds)
        assert live.is_dir() and not dead.exists()
    finally:
        os.close(fd)


def test_a_replace_killed_between_its_renames_gets_the_old_summary_back(tmp_path):
    """replace_group moves the old derived group aside, then renames the new one in (under the lock); a
    writer killed between the two leaves the group missing: the next write puts the old one back (and
    removes a moved-aside one that was already replaced)."""
    path = tmp_path / "s.zarr"
    ds = xr.Dataset({"x": (("pair",), np.arange(4.0))}, coords={"pair": np.arange(4)})
    store.save(path, store.ARM_BANDS, ds)
    store.save(path, store.ARM_UPDATES, ds)
    (path / store.ARM_BANDS).rename(path / f".old-{store.ARM_BANDS}-999")  # killed after the first rename
    shutil.copytree(path / store.ARM_UPDATES, path / f".old-{store.ARM_UPDATES}-998")  # after the second
    store.write(path, "other", ds)
    assert store.groups(path) == sorted([store.ARM_BANDS, store.ARM_UPDATES, "other"])
    assert list(store.open_group(path, store.ARM_BANDS)["x"].values) == [0.0, 1.0, 2.0, 3.0]
    assert not list(path.glob(".old-*"))
