"""The Zarr store: schema guard, incremental grid writes, spec de-duplication, chunked lazy reads."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr
import zarr
import zarr.storage as zs

from workbench import store


def _cell(checkpoints, specs, value, hashes=None):
    ds = xr.Dataset(
        {"final_kl": (("checkpoint", "spec", "layer"), np.full((len(checkpoints), len(specs), 3), value, float))},
        coords={"checkpoint": np.array(checkpoints, dtype=object), "spec": np.array(specs, dtype=object),
                "layer": np.arange(3),
                "spec_hash": ("spec", np.array(hashes or [f"h-{s}" for s in specs], dtype=object)),
                "rope_theta": ("checkpoint", np.full(len(checkpoints), 500.0))})
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


@pytest.mark.parametrize("bad, message", [
    (_cell(["a"], ["s2"], 9.0), "already written"),
    (_cell(["c"], ["s1"], 9.0, hashes=["other"]), "different definition"),
    (_cell(["c"], ["renamed"], 9.0, hashes=["h-s1"]), "same perturbation as stored spec 's1'"),
])
def test_refused_writes_overwrite_nothing(tmp_path, bad, message):
    path = tmp_path / "s.zarr"
    store.write_grid(path, "traces", _cell(["a"], ["s1", "s2"], 1.0))
    before = _read(path)
    with pytest.raises(store.StoreError, match=message):
        store.check_grid(path, "traces", {"checkpoint": list(bad.checkpoint.values), "spec": list(bad.spec.values)},
                         list(bad.spec_hash.values))
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


def test_plain_write_append_still_works(tmp_path):
    path = tmp_path / "s.zarr"
    store.write(path, "retrieval", _cell(["a"], ["s1"], 1.0).drop_vars("spec_hash"), append_dim=None)
    store.write(path, "retrieval", _cell(["b"], ["s1"], 2.0).drop_vars("spec_hash"), append_dim="checkpoint")
    with pytest.raises(store.StoreError, match="already written"):
        store.write(path, "retrieval", _cell(["b"], ["s1"], 2.0).drop_vars("spec_hash"), append_dim="checkpoint")
    assert store.open_group(path, "retrieval").sizes["checkpoint"] == 2


class _CountingStore(zs.WrapperStore):
    """Records every key read, to show which chunks a read touched."""

    def __init__(self, inner):
        super().__init__(inner)
        self.keys: list[str] = []

    async def get(self, key, prototype, byte_range=None):
        self.keys.append(key)
        return await self._store.get(key, prototype, byte_range)


def test_activations_are_chunked_by_checkpoint_and_layer_and_read_lazily(tmp_path):
    path = tmp_path / "a.zarr"
    rng = np.random.default_rng(0)
    pairs = store.pair_coords(500.0, 16)
    for ck in ("a", "b"):
        data = rng.standard_normal((1, 2, 2, 3, 4, 32, 8, 2)).astype(np.float32)
        ds = xr.Dataset({"rot_q": (("checkpoint", "spec", "sample", "layer", "head", "position", "pair", "half"), data)},
                        coords={"checkpoint": np.array([ck], dtype=object),
                                "spec": np.array(["clean", "x"], dtype=object), **pairs})
        store.write_grid(path, "activations", ds, chunk_dims=("checkpoint", "spec", "layer"), compress=False)
    counting = _CountingStore(zs.LocalStore(str(path), read_only=True))
    ds = xr.open_zarr(counting, group="activations", consolidated=False, chunks={})
    counting.keys.clear()
    piece = ds.rot_q.sel(checkpoint="b", layer=2, head=1).values
    chunk_reads = [k for k in counting.keys if "/rot_q/c/" in k]
    assert len(chunk_reads) == 2  # one (layer) chunk per spec, heads and the whole pair axis inside it
    assert piece.shape == (2, 2, 32, 8, 2) and np.isfinite(piece).all()
    counting.keys.clear()
    ds.rot_q.values
    assert len([k for k in counting.keys if "/rot_q/c/" in k]) == 2 * 2 * 3
    assert ds.wavelength.dims == ("pair",) and float(ds.wavelength[0]) == pytest.approx(2 * np.pi)
