"""Effective length (workbench.evals.effective_length): RULER's threshold and NoLiMa's fraction of the model's own
short-length score, with intervals from the hierarchical bootstrap; `workbench compare` writes them."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr
import yaml

from workbench import arms, cli, stats, store
from workbench.evals import effective_length as el

LENGTHS = [256, 512, 1024, 2048]


def test_definitions_on_known_curves():
    acc = np.array(
        [
            [1.0, 0.9, 0.4, 0.8],  # dips at 1024: "stays" means every shorter length passes too
            [0.4, 0.38, 0.2, 0.1],  # never reaches 0.5; holds 85 % of its own 0.4 up to 512
            [0.0, 0.0, 0.0, 0.0],  # no score at the shortest length: no effective length
            [0.9, 0.9, 0.9, 0.9],
        ]
    )
    out = el.effective_lengths(acc, LENGTHS, threshold=0.5, fraction=0.85)
    assert out["threshold"].tolist() == [512, 0, 0, 2048]
    assert out["relative"].tolist() == [512, 512, 0, 2048]
    with pytest.raises(ValueError, match="threshold and fraction"):
        el.check(0.0, 0.85)


def test_resampled_means_is_the_bootstrap_of_the_intervals():
    x = np.random.default_rng(0).random((3, 16))
    iv = stats.hierarchical_bootstrap(x, n_boot=500, seed=4)
    means = stats.resampled_means(x, n_boot=500, seed=4)
    assert iv.lo == pytest.approx(np.quantile(means, 0.025)) and iv.hi == pytest.approx(np.quantile(means, 0.975))


def _arm_retrieval(tmp_path):
    """Two seeds of arm kd-x (passkey holds to 1024) and a reference that fails beyond 256."""
    paths, curves = {}, {}
    for name, seed, curve in (("kd-x-s0", 0, [1.0, 1.0, 0.9, 0.1]), ("kd-x-s1", 1, [1.0, 0.95, 0.85, 0.0])):
        run = tmp_path / name
        (run / "ckpt-000010").mkdir(parents=True)
        (run / "run.yaml").write_text(yaml.safe_dump({"name": name, "seed": seed, "phases": [{"lr": 1e-3}]}))
        paths[f"{name}/ckpt-000010"], curves[f"{name}/ckpt-000010"] = str(run / "ckpt-000010"), curve
    paths["teacher/t"], curves["teacher/t"] = str(tmp_path / "t"), [0.9, 0.2, 0.1, 0.0]
    rng = np.random.default_rng(0)
    correct = np.stack([np.stack([rng.random((2, 32)) < p for p in c], axis=0)[None] for c in curves.values()])
    return xr.Dataset(
        {"correct": (("checkpoint", "task", "length", "depth", "sample"), correct)},
        coords={
            "checkpoint": np.array(list(paths), dtype=object),
            "task": ["passkey"],
            "length": LENGTHS,
            "depth": [0.0, 100.0],
            "sample": np.arange(32),
            "checkpoint_path": ("checkpoint", np.array(list(paths.values()), dtype=object)),
            "step": ("checkpoint", np.full(len(paths), 10)),
        },
    )


def test_arm_effective_lengths_with_intervals(tmp_path):
    ds = _arm_retrieval(tmp_path)
    out = arms.effective_length_summary(ds, n_boot=300)
    kd, ref = out.sel(arm="kd-x", task="passkey"), out.sel(arm="teacher/t", task="passkey")
    assert kd["effective_length"].sel(criterion="threshold") == 1024
    assert ref["effective_length"].sel(criterion="threshold") == 256 and bool(ref["is_reference"])
    for cell in (kd, ref):
        assert np.all(cell["effective_length_lo"] <= cell["effective_length"])
        assert np.all(cell["effective_length"] <= cell["effective_length_hi"])
    assert "| kd-x | passkey | 1024 [" in el.markdown(out)
    bounds = np.r_[out["effective_length_lo"].values.ravel(), out["effective_length_hi"].values.ravel()]
    assert set(bounds) <= {0, *LENGTHS}  # interval ends are evaluated lengths, never interpolated


def test_compare_writes_effective_lengths(tmp_path, capsys):
    path = tmp_path / "s.zarr"
    store.save(path, store.RETRIEVAL, _arm_retrieval(tmp_path))
    assert cli.main(["compare", str(path), "--boot", "200", "--fraction", "0.9"]) == 0
    back = xr.open_zarr(path, group=store.ARM_EFFECTIVE_LENGTH, consolidated=False)
    assert back.attrs["fraction"] == 0.9 and set(back["criterion"].values) == {"threshold", "relative"}
    assert "effective length" in capsys.readouterr().out
    assert cli.main(["compare", str(path), "--threshold", "2"]) == 2


def test_retrieval_view_draws_the_stored_effective_lengths(tmp_path):
    from app.paths import root_of
    from app.views import retrieval

    ds = _arm_retrieval(tmp_path)
    path = tmp_path / "s.zarr"
    store.save(path, store.RETRIEVAL, ds)
    store.save(path, store.ARM_RETRIEVAL, arms.retrieval_summary(ds, n_boot=200))
    root = root_of(tmp_path)
    assert retrieval.effective_figure(root, "s.zarr", "passkey", ["kd-x"]) is None  # compare not run yet
    eff = arms.effective_length_summary(ds, n_boot=200)
    store.save(path, store.ARM_EFFECTIVE_LENGTH, eff)
    fig = retrieval.effective_figure(root, "s.zarr", "passkey", ["kd-x", "teacher/t"])
    assert [t.name.split(" ")[0] for t in fig.data] == ["accuracy", ">="]
    assert list(fig.data[0].y) == eff["effective_length"].sel(task="passkey", criterion="threshold").values.tolist()
