"""Loss and KL-to-teacher by position (workbench.evals.position_loss, `workbench position-loss`): tiny random
Llamas on short synthetic documents, a few seconds in all."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from workbench import cli, divergence, store
from workbench.config import load_model_config
from workbench.evals import position_loss as pl

ROOT = Path(__file__).resolve().parents[1]
PRESET = ROOT / "data/configs/presets/tiny-student.yaml"


@pytest.fixture(autouse=True)
def _one_thread():
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    """A tiny student checkpoint trained for 64 positions and a tiny teacher (random weights)."""
    from workbench.checkpoint_io import save_checkpoint
    from workbench.models import build_model

    base = tmp_path_factory.mktemp("pl")
    out = []
    for i, name in ((1, "student/ckpt-000001"), (2, "teacher/ckpt-000002")):
        save_checkpoint(
            build_model(load_model_config(PRESET), seed=i), base / name, {"phase": "p", "step": i, "seq_len": 64}
        )
        out.append(base / name)
    return out


def test_document_losses_match_dense_logits(ckpts):
    """Chunked CE and KL(teacher || student) equal the full-logit computation, whatever the chunk size."""
    from workbench.checkpoint_io import load

    student, teacher = (load(p)[0].eval() for p in ckpts)
    ids = pl.synthetic_documents(1, 80, seed=3).ids[0]
    ce, kl = pl.document_losses(student, ids, teacher=teacher, chunk_size=7)
    with torch.no_grad():
        x = torch.as_tensor(ids)[None]
        s_logits, t_logits = student(x).logits[0, :-1], teacher(x).logits[0, :-1]
    ref_ce = F.cross_entropy(s_logits, x[0, 1:], reduction="none").numpy()
    ref_kl = divergence.kl_logits(t_logits, s_logits).numpy()
    assert ce.shape == kl.shape == (79,)
    np.testing.assert_allclose(ce, ref_ce, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(kl, ref_kl, rtol=1e-3, atol=1e-5)
    cached = pl._hidden(teacher, torch.as_tensor(ids)).float()  # the teacher's states, computed once per document
    np.testing.assert_allclose(
        pl.document_losses(student, ids, teacher=teacher, teacher_hidden=cached)[1], kl, rtol=1e-5, atol=1e-7
    )
    _, self_kl = pl.document_losses(teacher, ids, teacher=teacher)
    assert np.abs(self_kl).max() < 1e-5


def test_buckets_regroup_and_extrapolation(ckpts):
    docs = pl.synthetic_documents(4, 128, seed=1)
    assert all(len(x) == 128 for x in docs.ids) and sum(t.sum() for t in docs.target) > 50
    ds = pl.position_loss(
        [ckpts[0]], docs, teacher=ckpts[1], first_bucket=16, extrapolate=True, n_boot=200, progress=False
    )
    assert list(ds["position_bucket"].values) == ["0-16", "16-32", "32-64", "64-128"]
    assert ds["extrapolation"].sel(checkpoint=ds["checkpoint"].values[0]).values.tolist() == [False, False, False, True]
    n = ds["count"].sel(tokens="all").sum(["position_bucket"]).values
    assert (n == 127).all()  # every predicted token once
    lo, mean, hi = (ds[v].sel(tokens="all").values for v in ("kl_lo", "kl", "kl_hi"))
    assert np.all(lo <= mean + 1e-12) and np.all(mean <= hi + 1e-12) and np.all(mean > 0)
    coarse = pl.regroup(ds, [32])
    assert list(coarse["position_bucket"].values) == ["0-32", "32-128"]
    np.testing.assert_allclose(coarse["count"].sum("position_bucket").values, ds["count"].sum("position_bucket").values)
    np.testing.assert_allclose(
        coarse["loss_sum"].sel(position_bucket="0-32").values,
        ds["loss_sum"].sel(position_bucket=["0-16", "16-32"]).sum("position_bucket").values,
    )
    same = list(ds["checkpoint"].values)  # documents without answer tokens in a bucket are left out, not NaN
    ivs = pl.paired_difference(ds, same, same, tokens="answers", n_boot=100)
    assert sum(iv.mean == 0 for iv in ivs) >= 2 and all(iv.mean == 0 or np.isnan(iv.mean) for iv in ivs)
    from workbench.figures import position_loss as fig

    drawn = fig.by_position(ds, tokens="all")
    assert len(drawn.data) == 2 * 3 and drawn.data[1].y is not None  # band, inside, beyond x (loss, KL)
    with pytest.raises(ValueError, match="not bucket edges"):
        pl.regroup(ds, [48])
    seeded = pl.summarise(ds, n_boot=200, seed=5).assign_attrs(bootstrap_seed=5)  # a store written with --seed 5
    again = pl.regroup(seeded, [16, 32, 64])  # the same buckets: the stored intervals, not seed 0's
    np.testing.assert_allclose(again["kl_lo"].values, seeded["kl_lo"].values)
    with pytest.raises(ValueError, match="--extrapolate"):
        pl.position_loss([ckpts[0]], docs, progress=False)


def test_command_writes_store_and_refuses_twice(ckpts, tmp_path, capsys):
    out = tmp_path / "s.zarr"
    args = [
        "position-loss",
        str(ckpts[0]),
        "--teacher",
        str(ckpts[1]),
        "--length",
        "64",
        "--n-documents",
        "3",
        "--edges",
        "16,32",
        "--boot",
        "100",
        "--threads",
        "1",
        "--out",
        str(out),
    ]
    assert cli.main(args) == 0
    ds = store.open_group(out, store.POSITION_LOSS)
    assert set(ds.dims) == {"checkpoint", "tokens", "position_bucket", "document"}
    assert list(ds["position_bucket"].values) == ["0-16", "16-32", "32-64"]
    assert ds.attrs["teacher_hash"] and ds.attrs["documents"] == "synthetic"
    assert cli.main(args) == 2  # the checkpoint is already there
    assert "already" in capsys.readouterr().err
    other = [
        "position-loss",
        str(ckpts[1]),
        "--length",
        "64",
        "--n-documents",
        "3",
        "--seed",
        "5",
        "--edges",
        "16,32",
        "--out",
        str(out),
    ]
    assert cli.main(other) == 2  # other documents in the same group: refused before any model runs
    assert "data_hash" in capsys.readouterr().err
    assert (
        cli.main(
            [
                "position-loss",
                str(ckpts[0]),
                "--documents",
                "nope.txt",
                "--length",
                "64",
                "--out",
                str(tmp_path / "t.zarr"),
            ]
        )
        == 2
    )


def test_documents_from_a_token_corpus_are_its_held_out_documents(tmp_path):
    """A token corpus (`workbench tokenize`) is a document source: its val split, each document cut to --length,
    read from the memory-map; a checkpoint tokenizer other than the corpus's is refused."""
    from corpus_fixtures import bpe_tokenizer, documents, write_jsonl
    from transformers import AutoTokenizer

    from workbench.cli import main as cli_main
    from workbench.data import corpus as wcorpus

    bpe = bpe_tokenizer(tmp_path / "bpe")
    src = write_jsonl(tmp_path / "docs.jsonl", documents(40, seed=1))
    out = tmp_path / "corpus"
    assert (
        cli_main(
            [
                "tokenize",
                str(src),
                "--tokenizer",
                str(bpe),
                "--out",
                str(out),
                "--val-fraction",
                "0.25",
                "--no-progress",
            ]
        )
        == 0
    )
    tok = AutoTokenizer.from_pretrained(str(bpe))
    docs = pl.load_documents([str(out)], n=3, length=64, tokenizer=tok)
    val = wcorpus.open_corpus(out / "val")
    want = [np.asarray(val.tokens(int(a), int(b)))[:64] for a, b in zip(val.offsets[:-1], val.offsets[1:])][:3]
    assert len(docs.ids) == 3 and docs.source["corpus"] == str(out / "val")
    for got, ref, target in zip(docs.ids, want, docs.target):
        np.testing.assert_array_equal(got, ref)
        assert len(got) <= 64 and not target[0] and target[1:].all()
    other = bpe_tokenizer(tmp_path / "other", vocab_size=300)
    with pytest.raises(ValueError, match="another vocabulary"):
        pl.load_documents([str(out)], n=3, length=64, tokenizer=AutoTokenizer.from_pretrained(str(other)))


def test_command_refuses_documents_outside_the_models_vocabulary(ckpts, tmp_path, capsys):
    """Synthetic documents on a model with its own BPE tokenizer, or a teacher of another vocabulary, are one
    clear error before any model runs (the documents' ids are shared by every model)."""
    from corpus_fixtures import bpe_tokenizer
    from transformers import AutoTokenizer, Qwen2Config, Qwen2ForCausalLM

    cfg = Qwen2Config(
        vocab_size=512,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=128,
    )
    qwen = tmp_path / "qwen"
    Qwen2ForCausalLM(cfg).save_pretrained(qwen)
    AutoTokenizer.from_pretrained(str(bpe_tokenizer(tmp_path / "bpe"))).save_pretrained(qwen)
    text = tmp_path / "doc.txt"
    text.write_text("the cat sat on the mat and the dog sat on the log " * 20)
    base = ["position-loss", "--length", "64", "--boot", "100", "--threads", "1"]
    assert cli.main(["position-loss", str(qwen), "--length", "64", "--out", str(tmp_path / "a.zarr")]) == 2
    assert "synthetic vocabulary" in capsys.readouterr().err
    assert (
        cli.main(
            [*base, str(qwen), "--teacher", str(ckpts[1]), "--documents", str(text), "--out", str(tmp_path / "b.zarr")]
        )
        == 2
    )
    assert "differs" in capsys.readouterr().err
    assert cli.main([*base, str(qwen), "--documents", str(text), "--out", str(tmp_path / "c.zarr")]) == 0
    files = store.open_group(tmp_path / "c.zarr", store.POSITION_LOSS).attrs["files"]  # JSON in the store attrs
    assert json.loads(files) == [str(text.resolve())]
