"""Stores of schema workbench-store/1 (tests/data/store-v1, written by the v1 code: tests/data/make_store_v1.py)
open in the app and the analysis readers under the current names, refuse writes with the command that
converts them, and `workbench upgrade-store` converts them in place (docs/glossary.md)."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

from app.paths import root_of
from workbench import cli, measurements, store
from workbench import figures as F

V1 = Path(__file__).parent / "data" / "store-v1"
V2 = Path(__file__).parent / "data" / "store-v2"  # tests/data/make_store_v2.py: the groups renamed in 2 -> 3


@pytest.fixture
def runs(tmp_path) -> Path:
    """A RUNS_DIR holding a copy of the v1 store as toy/results.zarr."""
    shutil.copytree(V1, tmp_path / "toy" / "results.zarr")
    return tmp_path


def raw(path, group):
    return xr.open_zarr(path, group=group, consolidated=False)


def test_the_fixture_is_a_v1_store_with_the_old_names():
    assert raw(V1, "probes").attrs["schema"] == "workbench-store/1"
    assert "theta" in raw(V1, "probes").coords and list(raw(V1, "probes")["layer"].values) == [0, 1, 2]
    assert "theta_after" in raw(V1, "updates_weights").coords


def test_a_v1_store_opens_under_the_current_names(runs):
    path = runs / "toy" / "results.zarr"
    assert store.schema_of(path) == "workbench-store/1"
    probes = store.open_group(path, store.PROBES)
    assert list(probes["layer"].values) == [-1, 0, 1]  # blocks, as every group; -1 = the embeddings
    assert list(probes["site"].sel(layer=-1).values.ravel()) == ["embed"]
    np.testing.assert_array_equal(probes["r2"].values, raw(path, "probes")["r2"].values)
    assert probes["rope_theta"].values.tolist() == [500.0, 20000.0] and "theta" not in probes.coords
    assert "rope_theta" in store.open_group(path, store.SCORE_DECOMPOSITION).coords
    for group in (store.UPDATES_WEIGHTS, store.UPDATES_STATES, store.BANDS):
        ds = store.open_group(path, group)
        assert ds["rope_theta_after"].values.tolist() == [20000.0] and "theta_after" not in ds.coords
        assert ds["rope_theta_before"].values.tolist() == [500.0]
    traces = store.open_group(path, store.TRACES)
    assert list(traces["layer"].values) == [0, 1] and "rope_theta" in traces.coords  # unchanged names
    assert store.open_group(path, store.RETRIEVAL).sizes["checkpoint"] == 2


def test_a_v1_store_feeds_the_analysis_readers_and_figures(runs):
    path = runs / "toy" / "results.zarr"
    weights = store.open_group(path, store.UPDATES_WEIGHTS).load()
    comp = str(weights["comparison"].values[0])
    bands = measurements.band_summary(weights, [64, 256])  # reads rope_theta_after
    assert bands.sizes["comparison"] == 1
    assert F.updates.layer_pair_heatmap(weights, comparison=comp).data
    assert F.updates.band_bars(store.open_group(path, store.BANDS), comparison=comp).data
    curves = F.updates.probe_curves(store.open_group(path, store.PROBES), metric="r2")
    assert list(curves.data[0].x) == ["embed", "block 0", "block 1"]


def test_a_v1_store_opens_in_the_app(runs):
    from app.views import traces, updates

    root = root_of(runs)
    assert updates.stores(root) == ["toy/results.zarr"]
    comps = updates.comparisons(root, "toy/results.zarr", "W_q")
    assert len(comps) == 1
    assert updates.heatmap(root, "toy/results.zarr", "W_q", comps[0]).data
    assert updates.bands(root, "toy/results.zarr", "W_q", comps[0]) is not None
    c = traces.choices(root, "toy/results.zarr")
    assert c["specs"] == ["q-shift"]
    assert traces.trace_figures(root, "toy/results.zarr", c["checkpoints"][0], "lens_kl", "q-shift", traces.MEAN)


def test_writing_into_a_v1_store_is_refused_with_the_convert_command(runs):
    path = runs / "toy" / "results.zarr"
    probes = store.open_group(path, store.PROBES).load()
    with pytest.raises(store.StoreError, match="workbench upgrade-store"):
        store.refuse(path, store.PROBES, probes)
    with pytest.raises(store.StoreError, match="workbench upgrade-store"):
        store.save(path, store.PROBES, probes.assign_coords(checkpoint=["toy/x", "toy/y"]))
    assert store.schema_of(path) == "workbench-store/1"  # untouched


def upgrade(path: Path, capsys) -> tuple[dict[str, xr.Dataset], str]:
    """Run ``workbench upgrade-store path``: -> (every group as read before, what the command printed)."""
    before = {g: store.open_group(path, g).load() for g in store.groups(path)}
    assert cli.main(["upgrade-store", str(path)]) == 0
    return before, capsys.readouterr().out


def assert_upgraded_unchanged(path: Path, before: dict[str, xr.Dataset]) -> None:
    """Every group reads back after the upgrade as it read before it (under the current names), attrs included."""
    for g, ds in before.items():
        after = store.open_group(path, g).load()
        xr.testing.assert_identical(after.drop_attrs(), ds.drop_attrs())
        assert after.attrs == {**ds.attrs, "schema": store.SCHEMA}


def test_upgrade_store_converts_in_place_then_appends_work(runs, capsys):
    path = runs / "toy" / "results.zarr"
    before, out = upgrade(path, capsys)
    assert "probes: theta -> rope_theta" in out and "updates_weights: theta_after -> rope_theta_after" in out
    assert "updates_states: attr batch_size -> n_windows" in out  # the 2 -> 3 step too
    assert store.schema_of(path) == store.SCHEMA == "workbench-store/3"
    assert raw(path, "updates_states").attrs["n_windows"] == 1 and "batch_size" not in raw(path, "updates_states").attrs
    p = raw(path, "probes")  # plain xarray sees the new names now
    assert list(p["layer"].values) == [-1, 0, 1] and "rope_theta" in p.coords and p.attrs["schema"] == store.SCHEMA
    assert_upgraded_unchanged(path, before)
    assert cli.main(["upgrade-store", str(path)]) == 0 and "already workbench-store/3" in capsys.readouterr().out
    store.save(path, store.PROBES, before["probes"].assign_coords(checkpoint=["toy/x", "toy/y"]))
    assert store.open_group(path, store.PROBES).sizes["checkpoint"] == 4


@pytest.fixture
def runs_v2(tmp_path) -> Path:
    shutil.copytree(V2, tmp_path / "toy" / "results.zarr")
    return tmp_path


def test_the_v2_fixture_has_the_old_names():
    assert raw(V2, "repeated_tokens").attrs["schema"] == "workbench-store/2"
    assert "kd_signal" in raw(V2, "repeated_tokens") and raw(V2, "updates_states").attrs["batch_size"] == 2
    assert raw(V2, "score_decomposition").attrs["batch_size"] == 1


def test_a_v2_store_opens_under_the_current_names_and_feeds_the_readers(runs_v2):
    from app.views import traces

    path = runs_v2 / "toy" / "results.zarr"
    rep = store.open_group(path, store.REPEATED_TOKENS)
    assert "kl_to_mean" in rep and "kd_signal" not in rep
    np.testing.assert_array_equal(rep["kl_to_mean"].values, raw(path, "repeated_tokens")["kd_signal"].values)
    states = store.open_group(path, store.UPDATES_STATES)
    assert states.attrs["n_windows"] == 2 and "batch_size" not in states.attrs
    assert store.open_group(path, store.SCORE_DECOMPOSITION).attrs["n_windows"] == 1
    assert F.traces.repeated_kl_vs_offset(rep).data  # the default variable, kl_to_mean
    root = root_of(runs_v2)
    assert traces.repeated_figure(root, "toy/results.zarr", "kl_to_mean").data  # the app's default variable


def test_upgrade_store_converts_a_v2_store(runs_v2, capsys):
    path = runs_v2 / "toy" / "results.zarr"
    before, out = upgrade(path, capsys)
    assert (
        "repeated_tokens: kd_signal -> kl_to_mean" in out and "score_decomposition: attr batch_size -> n_windows" in out
    )
    assert store.schema_of(path) == "workbench-store/3"
    assert "kl_to_mean" in raw(path, "repeated_tokens") and raw(path, "updates_states").attrs["n_windows"] == 2
    assert_upgraded_unchanged(path, before)
