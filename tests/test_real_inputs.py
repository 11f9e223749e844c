"""Real inputs for real models (issue 12 items 3, 5, 6): the model's own tokenizer and text, plain HF directories,
one-line errors. A tiny random Llama with a BPE tokenizer trained here on Debian's license texts (offline)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import xarray as xr
from tiny import tiny_student

from workbench import checkpoint_io, cli, inputs, models
from workbench.config import ModelConfig
from workbench.runs import RunDir

torch.set_num_threads(1)
LICENSES = sorted(Path("/usr/share/common-licenses").glob("*"))
SPEC = Path(__file__).parents[1] / "data" / "specs" / "q-shift-low-freq.yaml"


def _paragraphs() -> list[str]:
    paras = [
        p.strip()
        for f in LICENSES
        if f.is_file()
        for p in f.read_text(errors="ignore").split("\n\n")
        if len(p.strip()) > 80
    ]
    if len(paras) < 20:  # no license texts on this machine: generated text instead
        rng = np.random.default_rng(0)
        words = ["the", "license", "software", "copy", "free", "work", "source", "code", "terms", "you", "may"]
        paras = [" ".join(rng.choice(words, 60)) + "." for _ in range(200)]
    return paras[:300]


def _bpe(root: Path, vocab: int, texts: list[str], byte_level: bool = True) -> Path:
    from tokenizers import Tokenizer, decoders, pre_tokenizers, trainers
    from tokenizers import models as tm
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(tm.BPE(unk_token="<unk>"))
    backend.pre_tokenizer = (
        pre_tokenizers.ByteLevel(add_prefix_space=False) if byte_level else pre_tokenizers.Whitespace()
    )
    if byte_level:
        backend.decoder = decoders.ByteLevel()
    backend.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=vocab, special_tokens=["<unk>", "<eos>"]))
    tok = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>", eos_token="<eos>")
    tok.save_pretrained(root)
    return root


def _model(vocab: int, seed: int = 0):
    cfg = ModelConfig(
        vocab_size=vocab,
        hidden_size=32,
        num_layers=2,
        num_heads=4,
        num_kv_heads=2,
        head_dim=8,
        intermediate_size=64,
        max_position_embeddings=1024,
        rope_theta=500.0,
    )
    return models.build_model(cfg, seed=seed)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """BPE tokenizer (1000), jsonl/txt corpora, a workbench checkpoint without tokenizer, plain HF dirs with one."""
    root = tmp_path_factory.mktemp("real")
    paras = _paragraphs()
    tok = _bpe(root / "tok", 1000, paras)
    (root / "corpus.jsonl").write_text("\n".join(json.dumps({"text": p}) for p in paras))
    (root / "corpus.txt").write_text("\n\n".join(paras))
    bare = checkpoint_io.save_checkpoint(_model(1000), root / "run" / "ckpt-000001", {"phase": "p", "step": 1})
    plain_a, plain_b = root / "hf" / "a", root / "hf" / "b"
    _model(1000, 0).save_pretrained(plain_a)
    _model(1000, 1).save_pretrained(plain_b)
    for d in (plain_a, plain_b):
        for f in tok.iterdir():
            shutil.copy(f, d / f.name)
    small = root / "hf" / "small"  # vocabulary < 128, no tokenizer
    _model(100).save_pretrained(small)
    return dict(
        root=root,
        tok=tok,
        bare=bare,
        a=plain_a,
        b=plain_b,
        small=small,
        jsonl=root / "corpus.jsonl",
        txt=root / "corpus.txt",
    )


def _one_line_error(capsys, *names: str) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    errors = [line for line in err.replace("\r", "\n").splitlines() if "error:" in line]  # (progress bars aside)
    assert len(errors) == 1 and errors[0].startswith("workbench "), err
    err = errors[0]
    for n in names:
        assert n in err, err
    return err


# ------------------------------------------------------------------ the failures of the issue, reproduced


def test_eval_on_a_checkpoint_without_tokenizer_is_one_error_naming_tokenizer(world, tmp_path, capsys):
    """Was: silent fall-back to the synthetic language and IndexError in data/tokenizer.py."""
    argv = [
        "eval",
        str(world["bare"]),
        "--tasks",
        "passkey",
        "--lengths",
        "256",
        "--depths",
        "1",
        "--samples",
        "1",
        "--out",
        str(tmp_path / "r.zarr"),
    ]
    assert cli.main(argv) == 2
    _one_line_error(capsys, "--tokenizer", str(world["bare"]), "1000")
    assert cli.main([*argv, "--tokenizer", str(world["tok"])]) == 0
    ds = xr.open_zarr(tmp_path / "r.zarr", group="retrieval", consolidated=False)
    assert ds.sizes["checkpoint"] == 1


@pytest.mark.parametrize("command", ["updates", "probe"])
def test_updates_and_probe_read_a_bpe_model_with_its_own_tokenizer(world, tmp_path, command, capsys):
    """Was: refused without --allow-plain-hf, and with it fed synthetic-language ids to the BPE model."""
    out = tmp_path / "s.zarr"
    if command == "updates":
        argv = ["updates", str(world["a"]), str(world["b"]), "--seq-len", "64", "--windows", "1"]
        group = "updates_states"
    else:
        argv = ["probe", str(world["a"]), "--seq-len", "64", "--windows", "4", "--score-seq-len", "64"]
        group = "probes"
    assert cli.main([*argv, "--out", str(out)]) == 0  # plain HF directories, no flag
    attrs = xr.open_zarr(out, group=group, consolidated=False).attrs
    assert "needle-in-a-haystack" in attrs["inputs"] and str(world["a"]) in attrs["inputs"]
    # the default inputs are the tokenizer's own text, never synthetic ids
    batch, _ = inputs.for_models([world["a"]], _Args(), seq_len=64, batch=2)
    from transformers import AutoTokenizer

    text = AutoTokenizer.from_pretrained(str(world["tok"])).decode(batch["input_ids"][0])
    assert "special magic number" in text or "grass is green" in text


@pytest.mark.parametrize("command", ["updates", "probe", "trace"])
def test_no_tokenizer_and_a_foreign_vocabulary_is_one_error_naming_tokenizer(world, tmp_path, command, capsys):
    """Was: IndexError: index out of range in self (vocab < 128) in the state view."""
    small = str(world["small"])
    argv = {
        "updates": ["updates", small, str(world["a"]), "--seq-len", "32"],
        "probe": ["probe", small, "--seq-len", "32", "--windows", "4"],
        "trace": ["trace", small, "--spec", str(SPEC), "--length", "32"],
    }[command]
    assert cli.main([*argv, "--out", str(tmp_path / "s.zarr")]) == 2
    _one_line_error(capsys, "--tokenizer", small)
    # a tokenizer larger than the embedding is not the model's: one error too
    assert cli.main([*argv, "--out", str(tmp_path / "s.zarr"), "--tokenizer", str(world["tok"])]) == 2
    _one_line_error(capsys, "--tokenizer", "1000 tokens", "100 embedding rows")


def test_a_small_vocabulary_with_its_own_tokenizer_runs_the_state_view(tmp_path):
    letters = "abcdefghij"
    rng = np.random.default_rng(1)
    texts = [" ".join("".join(rng.choice(list(letters), rng.integers(2, 6))) for _ in range(50)) for _ in range(100)]
    tok = _bpe(tmp_path / "tok", 60, texts, byte_level=False)
    a, b = tmp_path / "a", tmp_path / "b"
    for seed, d in ((0, a), (1, b)):
        _model(64, seed).save_pretrained(d)
    from workbench import measurements

    args = _Args(tokenizer=str(tok))
    batch, _ = inputs.for_models([a, b], args, seq_len=48, batch=1)
    assert int(batch["input_ids"].max()) < 64
    ds = measurements.state_updates([a, b], seq_len=48, n_windows=1, inputs=batch)
    assert np.isfinite(ds["q_norm"].values).all()


# ------------------------------------------------------------------------------------ the input option


class _Args:
    def __init__(self, inputs=None, tokenizer="auto"):
        self.inputs, self.tokenizer = inputs, tokenizer


def test_text_and_jsonl_inputs_become_windows_of_the_models_tokens(world):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(world["tok"]))
    txt, _ = inputs.for_models([world["a"]], _Args(str(world["txt"])), seq_len=50, batch=3, start=7)
    expected = tok(world["txt"].read_text(), add_special_tokens=False)["input_ids"][:150]
    assert txt["input_ids"].flatten().tolist() == expected
    assert txt["position_ids"][0].tolist() == list(range(7, 57))
    js, what = inputs.for_models([world["a"]], _Args(str(world["jsonl"])), seq_len=64, batch=2)
    first = json.loads(world["jsonl"].read_text().splitlines()[0])["text"]
    n = len(tok(first, add_special_tokens=False)["input_ids"])
    assert js["input_ids"][0, n].item() == tok.eos_token_id  # documents packed, each closed by eos
    assert js["doc_ids"][0, 0] == 0 and js["doc_ids"][0, n + 1] == 1 and "corpus.jsonl" in what
    # continue positions across the documents of a window; document ids count from 0 in every window
    assert js["position_ids"].tolist() == [list(range(64))] * 2
    assert js["doc_ids"][1, 0] == 0 and (js["doc_ids"].diff(dim=1) >= 0).all()
    with pytest.raises(inputs.InputError, match="tokens with tokenizer .* need 64000"):
        inputs.for_models([world["a"]], _Args(str(world["jsonl"])), seq_len=64000, batch=1)


def test_id_files_are_checked_against_the_vocabulary(world, tmp_path):
    good, bad = tmp_path / "good.pt", tmp_path / "bad.npz"
    torch.save(torch.randint(0, 1000, (2, 16)), good)
    np.savez(bad, input_ids=np.full((1, 16), 1500))
    batch, _ = inputs.for_models([world["a"]], _Args(str(good)), seq_len=16, batch=2)
    assert batch["input_ids"].shape == (2, 16)
    with pytest.raises(inputs.InputError, match="span 1500..1500 but the model has 1000 embedding rows"):
        inputs.for_models([world["a"]], _Args(str(bad)), seq_len=16, batch=1)
    with pytest.raises(inputs.InputError, match="expected token ids"):
        inputs.for_models([world["a"]], _Args(str(world["tok"] / "tokenizer.json")), seq_len=16, batch=1)


def test_synthetic_models_keep_the_synthetic_language(tmp_path):
    from workbench.data.tokenizer import VOCAB

    d = tmp_path / "syn"
    _model(128).save_pretrained(d)
    batch, what = inputs.for_models([d], _Args(), seq_len=32, batch=2)
    assert set(batch["input_ids"].flatten().tolist()) <= set(VOCAB.filler) and "synthetic" in what


def test_checkpoints_of_different_vocabularies_are_refused_together(world, tmp_path):
    other = tmp_path / "other"
    shutil.copytree(world["a"], other)
    for f in ("tokenizer.json", "tokenizer_config.json"):
        (other / f).unlink(missing_ok=True)
    _bpe(tmp_path / "tok2", 500, _paragraphs()[:50]).rename(tmp_path / "tok2-done")
    for f in (tmp_path / "tok2-done").iterdir():
        shutil.copy(f, other / f.name)
    with pytest.raises(inputs.InputError, match="differs from .* separate calls"):
        inputs.resolve([world["a"], other])


def test_trace_reads_a_jsonl_corpus_with_the_models_tokenizer(world, tmp_path):
    out = tmp_path / "t.zarr"
    assert (
        cli.main(
            [
                "trace",
                str(world["a"]),
                "--spec",
                str(SPEC),
                "--inputs",
                str(world["jsonl"]),
                "--length",
                "48",
                "--samples",
                "1",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    ds = xr.open_zarr(out, group="traces", consolidated=False)
    assert np.isfinite(ds["final_kl"].values).all()


# ------------------------------------------------------------------------------- plain HF directories


def test_plain_hf_integrity_from_safetensors_headers(world, tmp_path, capsys):
    trunc = tmp_path / "run" / "trunc"
    shutil.copytree(world["a"], trunc)
    w = trunc / "model.safetensors"
    w.write_bytes(w.read_bytes()[:-100])
    with pytest.raises(checkpoint_io.CheckpointError, match="truncated or still being written"):
        checkpoint_io.load(trunc)
    assert cli.main(["probe", str(trunc), "--out", str(tmp_path / "p.zarr"), "--seq-len", "32", "--windows", "4"]) == 2
    _one_line_error(capsys, str(w))
    half = tmp_path / "run" / "ckpt-000002"  # a workbench save that lost its manifest
    shutil.copytree(world["bare"], half)
    (half / "manifest.json").unlink()
    (half / "trainer").mkdir()
    with pytest.raises(checkpoint_io.CheckpointError, match="did not finish"):
        checkpoint_io.load(half)
    sharded = tmp_path / "sharded"
    _model(1000).save_pretrained(sharded, max_shard_size="20KB")
    assert (sharded / "model.safetensors.index.json").is_file()
    checkpoint_io.load(sharded)
    shard = sorted(sharded.glob("*.safetensors"))[-1]
    shard.unlink()
    with pytest.raises(checkpoint_io.CheckpointError, match=f"shard {shard.name} named in"):
        checkpoint_io.load(sharded)


def test_allow_plain_hf_flag_is_removed(world, tmp_path, capsys):
    """``--allow-plain-hf`` was a deprecated no-op (plain HF directories are always taken); now unknown."""
    argv = ["updates", str(world["a"]), str(world["b"]), "--no-states", "--out", str(tmp_path / "u.zarr")]
    with pytest.raises(SystemExit) as exc:
        cli.main([*argv, "--allow-plain-hf"])
    assert exc.value.code == 2 and "--allow-plain-hf" in capsys.readouterr().err
    assert cli.main(argv) == 0


# ------------------------------------------------------------------------------------ vocabulary padding


def test_kd_over_the_real_vocabulary_when_embeddings_are_padded_differently():
    """Teacher 40 rows, student 48, tokenizer 32: KD over the first 32 logits of both, CE over the student's own."""
    import torch.nn.functional as F

    from workbench.train.losses import LossSpec, OnlineTeacher, chunked_loss, dense_loss

    g = torch.Generator().manual_seed(0)
    n, hs, ht, v = 24, 8, 12, 32
    h = torch.randn(n, hs, generator=g).requires_grad_()
    w = torch.randn(48, hs, generator=g).requires_grad_()
    th, tw = torch.randn(n, ht, generator=g), torch.randn(40, ht, generator=g)
    labels = torch.randint(0, v, (n,), generator=g)
    labels[3] = -100
    spec = LossSpec(ce_weight=0.5, kd_weight=1.0, temperature=2.0, chunk_size=5, kd_vocab_size=v)
    r = chunked_loss(h, w, labels, spec, teacher=OnlineTeacher(th, tw))
    gh, gw = torch.autograd.grad(r.loss, [h, w])
    # dense reference written out here: padded logits excluded from both sides before the softmax
    h2, w2 = h.detach().clone().requires_grad_(), w.detach().clone().requires_grad_()
    s = h2 @ w2.t()
    t_logp = F.log_softmax((th @ tw.t())[:, :v] / 2.0, -1)
    s_logp = F.log_softmax(s[:, :v] / 2.0, -1)
    valid = labels != -100
    kd = (t_logp.exp() * (t_logp - s_logp)).sum(-1)[valid].sum() * 4.0
    ce = F.cross_entropy(s, labels, ignore_index=-100, reduction="sum")
    ref = (0.5 * ce + kd) / valid.sum()
    rh, rw = torch.autograd.grad(ref, [h2, w2])
    assert (
        torch.allclose(r.loss, ref, atol=1e-5)
        and torch.allclose(gh, rh, atol=1e-5)
        and torch.allclose(gw, rw, atol=1e-5)
    )
    assert gw[40:].abs().sum() > 0  # student padded rows still learn from CE (the softmax over its own rows)
    dense = dense_loss(h.detach(), w.detach(), labels, spec, teacher_hidden=th, teacher_weight=tw)
    assert torch.allclose(dense, ref.detach(), atol=1e-5)
    with pytest.raises(ValueError, match="teacher vocab 40 != student vocab 48"):
        chunked_loss(h, w, labels, LossSpec(kd_weight=1.0), teacher=OnlineTeacher(th, tw))
    with pytest.raises(ValueError, match="kd_vocab_size 44 is beyond"):
        chunked_loss(h, w, labels, LossSpec(kd_weight=1.0, kd_vocab_size=44), teacher=OnlineTeacher(th, tw))


def _padded_run(tmp_path, teacher_rows: int, student_rows: int, world) -> dict:
    teacher = tmp_path / f"teacher-{teacher_rows}"
    cfg = ModelConfig(**tiny_student(vocab_size=teacher_rows, max_position_embeddings=256))
    models.build_model(cfg, seed=5).save_pretrained(teacher)
    for f in world["tok"].iterdir():
        shutil.copy(f, teacher / f.name)
    return {
        "name": "pad",
        "seed": 1,
        "model": tiny_student(vocab_size=student_rows, max_position_embeddings=256),
        "data": {"kind": "jsonl", "paths": [str(world["jsonl"])], "tokenizer": str(world["tok"])},
        "optim": {"micro_batch_size": 2, "grad_accum_steps": 1},
        "checkpoint": {"every": 2, "keep_last": 1},
        "loss": {"chunk_size": 40},
        "teacher": {"path": str(teacher)},
        "phases": [{"name": "p", "steps": 2, "seq_len": 32, "rope_theta": 100, "lr": 3e-3, "objective": "kd"}],
    }


def test_training_distils_between_padded_vocabularies_and_refuses_other_mismatches(world, tmp_path, capsys):
    import yaml

    from workbench import config
    from workbench.train import train

    run = train(
        config.from_dict(config.RunConfig, _padded_run(tmp_path, 1024, 1088, world)),
        out=str(tmp_path / "r"),
        progress=False,
    )
    assert RunDir(run).checkpoints()
    bad = tmp_path / "bad.yaml"  # a teacher smaller than the tokenizer: not the same vocabulary padded
    bad.write_text(yaml.safe_dump(_padded_run(tmp_path, 900, 1024, world)))
    assert cli.main(["train", str(bad), "--out", str(tmp_path / "r2")]) == 2
    _one_line_error(capsys, "teacher.path", "900", "1000 tokens")


@pytest.mark.parametrize("command", ["updates", "probe", "trace"])
def test_a_length_that_cannot_fit_is_one_error_before_any_input_is_built(world, tmp_path, command, capsys):
    """Was: trace --length 10**7 / probe --seq-len 10**7 ran away (12 GB and rising) with no message."""
    a = str(world["a"])
    argv = {
        "updates": ["updates", a, str(world["b"]), "--seq-len", str(10**7)],
        "probe": ["probe", a, "--seq-len", str(10**7), "--windows", "4"],
        "trace": ["trace", a, "--spec", str(SPEC), "--length", str(10**7)],
    }[command]
    assert cli.main([*argv, "--out", str(tmp_path / "s.zarr")]) == 2
    _one_line_error(capsys, "need at least", "GiB", "--length / --seq-len")
    assert not (tmp_path / "s.zarr").exists()
