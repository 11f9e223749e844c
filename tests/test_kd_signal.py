"""The cross-document KD signal (workbench.measurements.cross_document, `workbench kd-signal`): tiny random
Llamas on short packed windows, a few seconds in all."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import xarray as xr
import yaml

from workbench import cli
from workbench.config import DataConfig, PackingConfig, load_model_config
from workbench.data import make_stream
from workbench.measurements import cross_document as cd

ROOT = Path(__file__).resolve().parents[1]
PRESET = ROOT / "data/configs/presets/tiny-student.yaml"
SHORT = DataConfig(kind="synthetic-short", doc_len_min=8, doc_len_max=24)
SEQ = 64


@pytest.fixture(autouse=True)
def _one_thread():
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture(scope="module")
def tiny():
    from workbench.models import build_model

    return build_model(load_model_config(PRESET), seed=0)


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    """Two saved tiny-student checkpoints (random weights) of one run."""
    from workbench.checkpoint_io import save_checkpoint
    from workbench.models import build_model

    run = tmp_path_factory.mktemp("kd") / "toy"
    out = []
    for i in (1, 2):
        path = run / f"ckpt-00000{i}"
        save_checkpoint(build_model(load_model_config(PRESET), seed=i), path, {"phase": "p", "step": i})
        out.append(path)
    return out


@pytest.fixture
def data_yaml(tmp_path):
    path = tmp_path / "data.yaml"
    path.write_text(yaml.safe_dump({"data": {"kind": "synthetic-short", "doc_len_min": 8, "doc_len_max": 24}}))
    return path


def test_first_document_is_exactly_zero_later_documents_are_not(tiny):
    ds = cd.cross_document_kl(tiny, SHORT, seq_len=SEQ, n_windows=3, batch_size=2, label="tiny")
    kl, doc = ds.kl.sel(checkpoint="tiny").values, ds.token_doc.values
    assert ds.sizes["token"] == 3 * (SEQ - 1) and (doc == 0).any() and (doc > 0).any()
    assert np.abs(kl[doc == 0]).max() < 1e-6
    assert (kl[doc > 0] > 0).all() and kl[doc > 0].mean() > 1e-4
    # document starts are included and marked as distance 0 (the masked pass sees only the token itself)
    starts = ds.token_distance.values == 0
    assert starts.sum() > 3 and (kl[starts & (doc > 0)] > 0).all()
    assert str(ds.distance_bucket.values[0]) == "0" and str(ds.distance_bucket.values[1]) == "1"
    assert int(ds.n_by_distance.sel(distance_bucket="0")) == int((starts & ds.kd_target.values).sum())
    # summaries are consistent with the per-token values
    use = ds.kd_target.values
    assert float(ds["mean"].sel(checkpoint="tiny")) == pytest.approx(float(kl[use].mean()), rel=1e-5)
    assert float(ds.share_by_kind.sum()) == pytest.approx(1.0)
    assert float(ds.share_by_distance.sum()) == pytest.approx(1.0)
    assert 0.05 <= float(ds.top5_share.sel(checkpoint="tiny")) <= 1
    assert set(ds.kind.values) == set(cd.SYNTHETIC_KINDS)
    assert int(ds.n_by_kind.sum()) == int(use.sum())


def test_reset_positions_still_attend_across_documents(tiny):
    """The full pass is causal across documents even where positions restart (transformers' packed-sequence
    detection must not turn it into document masking)."""
    reset = DataConfig(kind="synthetic-short", doc_len_min=8, doc_len_max=24, packing=PackingConfig(positions="reset"))
    ds = cd.cross_document_kl(tiny, reset, seq_len=SEQ, n_windows=2, label="tiny")
    kl, doc = ds.kl.values[0], ds.token_doc.values
    assert (ds.token_position_id.values[ds.token_distance.values == 0] == 0).all()
    assert np.abs(kl[doc == 0]).max() < 1e-6 and (kl[doc > 0] > 0).all()


def test_a_window_of_one_document_gives_zeros(tiny):
    one = DataConfig(kind="synthetic-short", doc_len_min=SEQ, doc_len_max=SEQ)
    ds = cd.cross_document_kl(tiny, one, seq_len=SEQ, n_windows=2, label="tiny")
    assert (ds.token_doc.values == 0).all()
    assert np.abs(ds.kl.values).max() < 1e-6 and float(ds["mean"].max()) < 1e-6
    assert np.isnan(float(ds.mean_after_first_doc[0]))


def test_matches_a_dense_reference_with_two_plain_forwards(tiny):
    batch = make_stream(SHORT, SEQ, 2, 3).next()
    ds = cd.cross_document_kl(tiny, [batch], label="tiny", chunk_size=17)  # chunks that do not divide the tokens
    ids, pos, docs = batch["input_ids"], batch["position_ids"], batch["doc_ids"]
    allowed = (docs[:, :, None] == docs[:, None, :]) & torch.ones(SEQ, SEQ, dtype=torch.bool).tril()
    mask4d = torch.zeros(allowed.shape, dtype=torch.float32).masked_fill(~allowed, torch.finfo(torch.float32).min)
    with torch.no_grad():
        full = tiny(input_ids=ids, position_ids=pos).logits  # continue positions: plain causal attention
        doc = tiny(input_ids=ids, position_ids=pos, attention_mask=mask4d[:, None]).logits
    lp, lq = full.double().log_softmax(-1), doc.double().log_softmax(-1)
    ref = (lp.exp() * (lp - lq)).sum(-1)[:, :-1].reshape(-1).numpy()
    np.testing.assert_allclose(ds.kl.values[0], ref, atol=2e-5, rtol=1e-4)
    assert ds.attrs["data"] == "batches" and ds.attrs["seq_len"] == SEQ and ds.attrs["n_windows"] == 2
    # windows do not depend on the batch size
    again = cd.cross_document_kl(tiny, SHORT, seq_len=SEQ, n_windows=2, batch_size=1, seed=3, label="tiny")
    np.testing.assert_allclose(again.kl.values, ds.kl.values, atol=1e-6)


def test_command_writes_appends_and_refuses_a_rerun(ckpts, data_yaml, tmp_path, capsys):
    out = tmp_path / "res.zarr"
    base = ["kd-signal", "--data", str(data_yaml), "--seq-len", str(SEQ), "--windows", "3", "--out", str(out)]
    assert cli.main([base[0], str(ckpts[0]), *base[1:]]) == 0
    printed = capsys.readouterr()
    assert "toy/ckpt-000001" in printed.out and "wrote group kd_signal" in printed.out
    ds = xr.open_zarr(str(out), group="kd_signal", consolidated=False)
    assert list(ds.checkpoint.values) == ["toy/ckpt-000001"]
    assert {"checkpoint", "token", "distance_bucket", "kind"} <= set(ds.dims)
    assert ds.attrs["seq_len"] == SEQ and ds.attrs["n_windows"] == 3 and "checkpoint_hashes" in ds.attrs

    assert cli.main([base[0], str(ckpts[0]), *base[1:]]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "already written" in err[0] and "toy/ckpt-000001" in err[0]

    assert cli.main([base[0], str(ckpts[1]), *base[1:]]) == 0  # a second checkpoint appends
    capsys.readouterr()
    ds = xr.open_zarr(str(out), group="kd_signal", consolidated=False)
    assert list(ds.checkpoint.values) == ["toy/ckpt-000001", "toy/ckpt-000002"]
    assert ds.kl.shape == (2, 3 * (SEQ - 1))
    assert set(json.loads(ds.attrs["checkpoint_hashes"])) == {"toy/ckpt-000001", "toy/ckpt-000002"}
    assert ds.checkpoint_hash.values[0] != ds.checkpoint_hash.values[1]

    # a store group written with another data setting is refused before any model runs
    fresh = tmp_path / "other.zarr"
    assert (
        cli.main(
            [
                "kd-signal",
                str(ckpts[0]),
                "--data",
                str(data_yaml),
                "--seq-len",
                str(SEQ),
                "--windows",
                "3",
                "--out",
                str(fresh),
            ]
        )
        == 0
    )
    capsys.readouterr()
    assert (
        cli.main(
            [
                "kd-signal",
                str(ckpts[1]),
                "--data",
                str(data_yaml),
                "--seq-len",
                str(SEQ),
                "--windows",
                "2",
                "--out",
                str(fresh),
            ]
        )
        == 2
    )
    err = capsys.readouterr().err
    assert "windows" in err and "another --out store" in err


@pytest.mark.parametrize(
    "case, message",
    [
        ("missing", "checkpoint directory not found"),
        ("no-data", "no top-level 'data' section"),
        ("preset", "data: missing"),
        ("phase", "is not a phase"),
        ("vocab", "vocab_size 96"),
        ("window", "max_position_embeddings"),
    ],
)
def test_bad_inputs_give_one_error_before_any_model_runs(
    case, message, ckpts, saved_checkpoint, data_yaml, tmp_path, capsys, monkeypatch
):
    def no_model(*a, **k):
        raise AssertionError("a model ran")

    monkeypatch.setattr(cd, "batch_kl", no_model)
    ckpt, data, extra = str(ckpts[0]), str(data_yaml), []
    if case == "missing":
        ckpt = str(tmp_path / "nope")
    elif case == "no-data":
        run = yaml.safe_load((ROOT / "data/configs/tiny-kd-phasewise.yaml").read_text())
        run.pop("data")
        run.pop("init_from", None)
        run.pop("teacher", None)
        for ph in run["phases"]:
            ph["objective"] = "ce"
        run["model"] = str(PRESET)
        data = str(tmp_path / "run.yaml")
        Path(data).write_text(yaml.safe_dump(run))
    elif case == "preset":
        data = str(PRESET)
    elif case == "phase":
        data, extra = str(ROOT / "data/configs/tiny-kd-phasewise.yaml"), ["--phase", "nosuch"]
    elif case == "vocab":
        ckpt = str(saved_checkpoint)
    elif case == "window":
        extra = ["--seq-len", "5000"]
    out = tmp_path / "res.zarr"
    assert cli.main(["kd-signal", ckpt, "--data", data, "--out", str(out), "--seq-len", str(SEQ), *extra]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err
    assert not out.exists()


def test_load_data_config_reads_every_form(tmp_path):
    run = ROOT / "data/configs/tiny-kd-phasewise.yaml"
    assert cd.load_data_config(run).kind == "synthetic-short"
    phase = yaml.safe_load(run.read_text())["phases"][0]["name"]
    assert cd.load_data_config(run, phase) == cd.load_data_config(run)  # a phase without data: the run's
    bare = tmp_path / "bare.yaml"
    bare.write_text(yaml.safe_dump({"kind": "synthetic-short", "doc_len_min": 8, "doc_len_max": 24}))
    assert cd.load_data_config(bare).doc_len_max == 24
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"data": {"kind": "synthetic-short", "doc_len_min": "x"}}))
    with pytest.raises(ValueError, match="doc_len_min"):
        cd.load_data_config(bad)


def test_figures_one_line_and_one_bar_group_per_checkpoint(tiny):
    from workbench.figures import kd_signal as fig

    a = cd.cross_document_kl(tiny, SHORT, seq_len=SEQ, n_windows=2, label="a", keep_tokens=False)
    assert "token" not in a.dims
    b = a.assign_coords(checkpoint=np.array(["b"], dtype=object))
    both = xr.concat([a, b], "checkpoint")
    lines = fig.kl_by_distance(both)
    assert [t.name for t in lines.data] == ["a", "b"] and len(lines.data[0].x) == both.sizes["distance_bucket"]
    bars = fig.kl_by_kind(both)
    assert bars.layout.barmode == "group" and [t.name for t in bars.data] == ["a", "b"]
    assert "special" not in bars.data[0].x  # kinds without tokens are left out
    with pytest.raises(ValueError, match="not in the data"):
        fig.kl_by_kind(both, checkpoints=["zz"])
