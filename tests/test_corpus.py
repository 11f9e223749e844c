"""Token corpora: ``workbench tokenize`` (datasets, atomic, reused), short documents, memory-mapped reading by the
trainer and the consumers, kill -9 safety of tokenize and of a token-corpus run's resume."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from corpus_fixtures import bpe_tokenizer, documents, write_jsonl
from tiny import tiny_student

from workbench import checkpoint_io, config, models
from workbench.cli import main as cli_main
from workbench.data import corpus, make_stream, text

ROOT = Path(__file__).resolve().parents[1]
# the tiny student (and teacher) on the 512-token BPE
TINY = tiny_student(vocab_size=512, max_position_embeddings=256, rope_theta=10000.0)  # the ModelConfig default


@pytest.fixture(scope="module")
def bpe(tmp_path_factory) -> Path:
    return bpe_tokenizer(tmp_path_factory.mktemp("bpe") / "bpe")


@pytest.fixture(scope="module")
def jsonl(tmp_path_factory) -> Path:
    return write_jsonl(tmp_path_factory.mktemp("src") / "docs.jsonl", documents(120, seed=1, words=(150, 700)))


def _tokens(path: Path) -> np.ndarray:
    c = corpus.open_corpus(path)
    return c.tokens(0, c.n_tokens)


def _cli_tokenize(sources, bpe: Path, out: Path, *extra: str) -> int:
    """``workbench tokenize SOURCES --tokenizer BPE --out OUT --no-progress EXTRA...``: its exit status."""
    return cli_main(
        ["tokenize", *map(str, sources), "--tokenizer", str(bpe), "--out", str(out), "--no-progress", *extra]
    )


def _shard_hash(path: Path) -> str:
    h = hashlib.sha256()
    for name in sorted(p.name for p in path.glob("tokens-*.bin")) + [corpus.OFFSETS]:
        h.update((path / name).read_bytes())
    return h.hexdigest()


def test_tokenize_sources_manifest_split_and_reuse(tmp_path, bpe, jsonl, capsys):
    import datasets
    from transformers import AutoTokenizer

    docs = [json.loads(x)["text"] for x in jsonl.read_text().splitlines()]
    out = tmp_path / "corpus"
    assert _cli_tokenize([jsonl], bpe, out, "--val-fraction", "0.25") == 0
    m = json.loads((out / "manifest.json").read_text())
    tok = AutoTokenizer.from_pretrained(str(bpe))
    assert m["dtype"] == "uint16" and m["tokenizer"]["vocab_size"] == len(tok) == 512
    assert m["tokenizer"]["files_sha256"] == corpus.tokenizer_files_hash(bpe)
    assert m["sources"][0]["sha256"] == hashlib.sha256(jsonl.read_bytes()).hexdigest()
    assert m["eos"] == {"appended": True, "id": tok.eos_token_id}
    val = json.loads((out / "val" / "manifest.json").read_text())
    assert m["n_docs"] + val["n_docs"] == len(docs) and 0 < val["n_docs"] < len(docs) / 2
    assert sum(m["doc_length_histogram"].values()) == m["n_docs"]
    # the ids are the tokenizer's, document by document, eos after each; train and val partition the documents
    want = [tok(d, add_special_tokens=False)["input_ids"] + [tok.eos_token_id] for d in docs]
    offsets = np.load(out / "offsets.npy")
    got = [list(x) for x in np.split(_tokens(out), offsets[1:-1])]
    val_offsets = np.load(out / "val" / "offsets.npy")
    got_val = [list(x) for x in np.split(_tokens(out / "val"), val_offsets[1:-1])]
    assert sorted(map(tuple, got + got_val)) == sorted(map(tuple, want))
    assert [w for w in want if w in got] == got  # file order kept
    assert not list(tmp_path.glob(".corpus.tmp-*"))
    # rerun: reused (said so); other options into the same --out: refused, nothing overwritten
    assert _cli_tokenize([jsonl], bpe, out, "--val-fraction", "0.25") == 0
    assert "reusing it" in capsys.readouterr().out
    assert _cli_tokenize([jsonl], bpe, out) == 2
    assert "exists and is not this corpus" in capsys.readouterr().err
    # text, parquet and a dataset saved to disk give the same ids as the jsonl
    (tmp_path / "t").mkdir()
    for i, d in enumerate(docs[:5]):
        (tmp_path / "t" / f"{i}.txt").write_text(d)
    ds = datasets.Dataset.from_dict({"body": docs[:5]})
    ds.to_parquet(str(tmp_path / "d.parquet"))
    ds.save_to_disk(str(tmp_path / "saved"))
    for name, srcs, extra in (
        ("txt", [str(tmp_path / "t" / f"{i}.txt") for i in range(5)], []),
        ("pq", [str(tmp_path / "d.parquet")], ["--field", "body"]),
        ("disk", [str(tmp_path / "saved")], ["--field", "body"]),
    ):
        assert _cli_tokenize(srcs, bpe, tmp_path / name, *extra) == 0, name
        assert list(_tokens(tmp_path / name)) == sum(want[:5], []), name
    # a text-kind run config's data section converts as it is (same ids the run would have tokenised)
    (tmp_path / "run.yaml").write_text(
        yaml.safe_dump({"data": {"kind": "jsonl", "paths": [str(jsonl)], "tokenizer": str(bpe)}})
    )
    assert (
        cli_main(["tokenize", "--config", str(tmp_path / "run.yaml"), "--out", str(tmp_path / "conv"), "--no-progress"])
        == 0
    )
    text._tokenise_cached.cache_clear()
    ids, offsets = text.tokenise_corpus("jsonl", [str(jsonl)], str(bpe), {})
    assert np.array_equal(_tokens(tmp_path / "conv"), ids)
    assert np.array_equal(np.load(tmp_path / "conv" / "offsets.npy"), offsets)
    assert _cli_tokenize([jsonl], bpe, tmp_path / "x", "--field", "nope") == 2
    assert "no column 'nope'" in capsys.readouterr().err and not (tmp_path / "x").exists()


def test_short_documents_at_tokenize_time_equal_on_the_fly(tmp_path, bpe, jsonl):
    corpus.tokenize([jsonl], tmp_path / "whole", bpe, progress=False, log=lambda s: None)
    corpus.tokenize(
        [jsonl], tmp_path / "cut", bpe, max_doc_tokens=100, min_doc_tokens=10, progress=False, log=lambda s: None
    )
    m = json.loads((tmp_path / "cut" / "manifest.json").read_text())
    lens = np.diff(np.load(tmp_path / "cut" / "offsets.npy"))
    assert lens.max() <= 100 and lens.min() >= 10 and m["max_doc_tokens"] == 100 and m["dropped_tokens"] > 0
    seq = 256
    for pos in ("continue", "reset"):
        base = {"kind": "tokens", "packing": {"positions": pos}}
        fly = config.from_dict(
            config.DataConfig,
            {**base, "paths": [str(tmp_path / "whole")], "options": {"max_doc_tokens": 100, "min_doc_tokens": 10}},
        )
        pre = config.from_dict(config.DataConfig, {**base, "paths": [str(tmp_path / "cut")]})
        a, b = make_stream(fly, seq, 4, seed=5).next(), make_stream(pre, seq, 4, seed=5).next()
        assert all(torch.equal(a[k], b[k]) for k in a), pos
    # documents, labels and positions follow the cuts: a new document every <= 100 tokens, no target at its start
    whole = config.from_dict(
        config.DataConfig,
        {
            "kind": "tokens",
            "paths": [str(tmp_path / "whole")],
            "packing": {"positions": "reset"},
            "options": {"max_doc_tokens": 64},
        },
    )
    b = make_stream(whole, seq, 8, seed=1).next()
    starts = torch.ones_like(b["doc_ids"], dtype=torch.bool)
    starts[:, 1:] = b["doc_ids"][:, 1:] != b["doc_ids"][:, :-1]
    assert bool((b["labels"][starts] == -100).all()) and bool((b["labels"][~starts] == b["input_ids"][~starts]).all())
    assert bool((b["position_ids"][starts] == 0).all()) and int(b["position_ids"].max()) < 64
    assert int(b["doc_ids"][:, -1].min()) >= seq // 64 - 1


def test_trainer_stream_reads_a_memmap_and_refuses_another_tokenizer(tmp_path, bpe, jsonl):
    from workbench.train import phases

    out, _ = corpus.tokenize([jsonl], tmp_path / "c", bpe, progress=False, log=lambda s: None)
    dcfg = config.from_dict(config.DataConfig, {"kind": "tokens", "paths": [str(out)]})
    stream = make_stream(dcfg, 128, 2, seed=0)
    source = stream._window.corpus
    import mmap

    assert all(
        isinstance(s, np.memmap)
        and isinstance(s.base, mmap.mmap)
        and not s.flags.writeable
        and Path(s.filename).parent == out.resolve()
        for s in source.shards
    )  # mapped, not copied
    assert isinstance(source.offsets, np.memmap)
    b = stream.next()
    assert b["input_ids"].dtype == torch.int64 and tuple(b["input_ids"].shape) == (2, 128)
    # the run's tokenizer is the corpus's own copy; a teacher on another vocabulary is refused before training
    teacher = tmp_path / "teacher"
    checkpoint_io.save_checkpoint(models.build_model(config.ModelConfig(**TINY), seed=0), teacher, {"step": 0})
    checkpoint_io.save_checkpoint(models.build_model(config.ModelConfig(**TINY), seed=0), tmp_path / "syn", {"step": 0})
    from workbench.data.tokenizer import synthetic_tokenizer

    synthetic_tokenizer().save_pretrained(str(teacher))
    cfg = config.from_dict(
        config.RunConfig,
        {
            "name": "t",
            "model": TINY,
            "teacher": {"path": str(teacher)},
            "data": {"kind": "tokens", "paths": [str(out)]},
            "phases": [{"name": "a", "steps": 1, "seq_len": 128, "rope_theta": 100, "objective": "kd"}],
        },
    )
    with pytest.raises(config.ConfigError, match="teacher's tokenizer"):
        phases.check_inputs(cfg)
    bad = config.from_dict(config.DataConfig, {"kind": "tokens", "paths": [str(out)], "tokenizer": str(teacher)})
    with pytest.raises(ValueError, match="corpus was tokenised with"):
        make_stream(bad, 128, 2, seed=0)


def test_ranks_read_their_own_windows_and_the_cursor_is_tied_to_the_corpus(tmp_path, bpe, jsonl):
    out, _ = corpus.tokenize([jsonl], tmp_path / "c", bpe, progress=False, log=lambda s: None)
    dcfg = config.from_dict(
        config.DataConfig, {"kind": "tokens", "paths": [str(out)], "options": {"max_doc_tokens": 40}}
    )
    single = make_stream(dcfg, 64, 4, seed=2)
    ranks = [make_stream(dcfg, 64, 2, seed=2, rank=r, world_size=2) for r in range(2)]
    for _ in range(3):
        whole, parts = single.next(), [s.next() for s in ranks]
        assert all(torch.equal(whole[k], torch.cat([p[k] for p in parts])) for k in whole)
    state = ranks[0].state_dict()
    assert state["source"] == json.loads((out / "manifest.json").read_text())["fingerprint"]
    again = make_stream(dcfg, 64, 2, seed=2, rank=0, world_size=2)
    again.load_state_dict(state)
    assert torch.equal(again.next()["input_ids"], ranks[0].next()["input_ids"])
    with pytest.raises(ValueError, match="token corpus changed"):
        again.load_state_dict({**state, "source": "0" * 64})


def test_teacher_cache_reads_a_token_corpus(tmp_path, bpe, jsonl):
    out, _ = corpus.tokenize([jsonl], tmp_path / "c", bpe, progress=False, log=lambda s: None)
    teacher = tmp_path / "teacher"
    checkpoint_io.save_checkpoint(models.build_model(config.ModelConfig(**TINY), seed=0), teacher, {"step": 0})
    shutil.copytree(out / "tokenizer", teacher, dirs_exist_ok=True)
    cfg = {
        "name": "t",
        "model": TINY,
        "teacher": {"path": str(teacher)},
        "data": {"kind": "tokens", "paths": [str(out)], "options": {"max_doc_tokens": 32}},
        "optim": {"micro_batch_size": 2, "grad_accum_steps": 1},
        "phases": [{"name": "a", "steps": 2, "seq_len": 64, "rope_theta": 100, "objective": "kd"}],
    }
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    assert (
        cli_main(
            [
                "teacher-cache",
                str(path),
                "--out",
                str(tmp_path / "cache"),
                "--top-k",
                "4",
                "--threads",
                "1",
                "--device",
                "cpu",
                "--no-progress",
            ]
        )
        == 0
    )
    cached = np.load(tmp_path / "cache" / "phase-0.input_ids.npy")
    from workbench.train.phases import phase_seed

    seed = phase_seed(config.from_dict(config.RunConfig, cfg), 0)
    want = make_stream(config.from_dict(config.DataConfig, cfg["data"]), 64, 4, seed=seed).next()["input_ids"]
    assert np.array_equal(cached, want.numpy())  # the windows the run will read, from the memory-map


def test_text_kinds_tokenise_once_per_process(tmp_path, bpe, jsonl):
    text._tokenise_cached.cache_clear()
    dcfg = config.from_dict(
        config.DataConfig,
        {"kind": "jsonl", "paths": [str(jsonl)], "tokenizer": str(bpe), "options": {"max_doc_tokens": 64}},
    )
    a = make_stream(dcfg, 128, 2, seed=0).next()
    b = make_stream(dcfg, 256, 2, seed=1).next()  # a second phase of the same run
    assert text._tokenise_cached.cache_info().misses == 1 and text._tokenise_cached.cache_info().hits == 1
    assert int(a["doc_ids"].max()) >= 1 and int(b["position_ids"].max()) == 255


def test_kd_signal_needs_short_documents_on_real_text(tmp_path, bpe, capsys):
    """A random teacher on the real BPE vocabulary over 1,024-token windows: documents of ~1,500+ tokens give no
    boundary (plain message), the same corpus cut to <= 256-token documents gives a non-zero signal."""
    src = write_jsonl(tmp_path / "long.jsonl", documents(4, seed=3, words=(5000, 5200)))
    out, _ = corpus.tokenize([src], tmp_path / "c", bpe, progress=False, log=lambda s: None)
    assert np.diff(np.load(out / "offsets.npy")).min() > 1024
    teacher = tmp_path / "teacher"
    mcfg = config.ModelConfig(
        vocab_size=512,
        hidden_size=32,
        num_layers=2,
        num_heads=2,
        num_kv_heads=1,
        head_dim=16,
        intermediate_size=64,
        max_position_embeddings=1024,
        rope_theta=10000.0,
    )
    model = models.build_model(mcfg, seed=0)
    with torch.no_grad():  # sharper attention than the 0.02-std init, as a trained teacher has
        for layer in model.model.layers:
            layer.self_attn.q_proj.weight.mul_(8)
            layer.self_attn.k_proj.weight.mul_(8)
    checkpoint_io.save_checkpoint(model, teacher, {"step": 0})
    shutil.copytree(out / "tokenizer", teacher, dirs_exist_ok=True)
    for name, opts in (("plain", {}), ("short", {"max_doc_tokens": 256})):
        (tmp_path / f"{name}.yaml").write_text(yaml.safe_dump({"kind": "tokens", "paths": [str(out)], "options": opts}))
    args = ["--seq-len", "1024", "--windows", "2", "--batch-size", "1", "--threads", "1", "--device", "cpu"]
    assert (
        cli_main(
            [
                "kd-signal",
                str(teacher),
                "--data",
                str(tmp_path / "plain.yaml"),
                "--out",
                str(tmp_path / "a.zarr"),
                *args,
            ]
        )
        == 2
    )
    assert "0 tokens after a document boundary" in capsys.readouterr().err and not (tmp_path / "a.zarr").exists()
    assert (
        cli_main(
            [
                "kd-signal",
                str(teacher),
                "--data",
                str(tmp_path / "short.yaml"),
                "--out",
                str(tmp_path / "b.zarr"),
                *args,
            ]
        )
        == 0
    )
    import xarray as xr

    ds = xr.open_zarr(tmp_path / "b.zarr", group="kd_signal", consolidated=False)
    assert float(ds["mean"].values.ravel()[0]) > 1e-5 and float(ds["mean_after_first_doc"].values.ravel()[0]) > 1e-5
    # a KD run on the same short documents in 1,024-token windows, the corpus's tokenizer in its checkpoints
    from workbench.train import train

    run = train(
        config.from_dict(
            config.RunConfig,
            {
                "name": "kd",
                "model": dict(config.to_dict(mcfg), num_layers=1),
                "teacher": {"path": str(teacher)},
                "data": {"kind": "tokens", "paths": [str(out)], "options": {"max_doc_tokens": 256}},
                "optim": {"micro_batch_size": 1, "grad_accum_steps": 1},
                "checkpoint": {"every": 0, "keep_last": 1},
                "phases": [{"name": "a", "steps": 2, "seq_len": 1024, "rope_theta": 10000.0, "objective": "kd"}],
            },
        ),
        out=str(tmp_path / "run"),
        progress=False,
    )
    recs = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in recs if r["kind"] == "train"] == [1, 2]
    assert all(np.isfinite(r["kd"]) and r["kd"] > 0 for r in recs if r["kind"] == "train")
    assert (run / "ckpt-000002" / "tokenizer.json").is_file()


def test_inputs_take_a_token_corpus(tmp_path, bpe, jsonl):
    from workbench import inputs

    out, _ = corpus.tokenize([jsonl], tmp_path / "c", bpe, progress=False, log=lambda s: None)
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(out / "tokenizer"))
    vocab = inputs.Vocabulary(tok, False, str(out / "tokenizer"), 512)
    batch, what = inputs.build(str(out), vocab, seq_len=64, batch=3, seed=2)
    assert tuple(batch["input_ids"].shape) == (3, 64) and "token corpus" in what
    from workbench.data.tokenizer import synthetic_tokenizer

    with pytest.raises(inputs.InputError, match="corpus was tokenised with"):
        inputs.build(str(out), inputs.Vocabulary(synthetic_tokenizer(), True, "synthetic", 512), seq_len=64, batch=1)


def _tokenize_proc(src: Path, bpe: Path, out: Path) -> subprocess.Popen:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "workbench",
            "tokenize",
            str(src),
            "--tokenizer",
            str(bpe),
            "--out",
            str(out),
            "--batch-size",
            "20",
            "--shard-tokens",
            "50000",
            "--max-doc-tokens",
            "256",
            "--no-progress",
        ],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )


@pytest.mark.slow
def test_kill9_during_tokenize_then_rerun_gives_the_identical_corpus(tmp_path, bpe):
    src = write_jsonl(tmp_path / "big.jsonl", documents(1200, seed=4, words=(100, 400)))
    out = tmp_path / "c"
    proc = _tokenize_proc(src, bpe, out)
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:  # kill once shards are being written
        tmp = list(tmp_path.glob(".c.tmp-*"))
        if tmp and (tmp[0] / "tokens-00001.bin").exists():
            break
        time.sleep(0.01)
    assert proc.poll() is None, "tokenize finished before it could be killed"
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL
    assert not out.exists() and list(tmp_path.glob(".c.tmp-*"))  # nothing that looks like a corpus
    with pytest.raises(ValueError, match="not found"):
        corpus.open_corpus(out)
    rerun = _tokenize_proc(src, bpe, out)
    assert rerun.wait(timeout=300) == 0, rerun.stdout.read().decode()
    assert not list(tmp_path.glob(".c.tmp-*"))  # the killed run's leftovers cleaned up
    ref, _ = corpus.tokenize(
        [src],
        tmp_path / "ref",
        bpe,
        max_doc_tokens=256,
        batch_size=7,
        shard_tokens=50000,
        progress=False,
        log=lambda s: None,
    )
    assert _shard_hash(out) == _shard_hash(ref)
    assert len(list(out.glob("tokens-*.bin"))) > 2


def _launch(cfg_path: Path, out: Path, *extra: str) -> subprocess.Popen:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    return subprocess.Popen(
        [sys.executable, "-m", "workbench.train", str(cfg_path), "--out", str(out), "--no-progress", *extra],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )


def _records(run: Path) -> list[dict]:
    out = []
    for line in (run / "metrics.jsonl").read_text().splitlines():
        try:
            r = json.loads(line)
        except json.JSONDecodeError:
            continue
        if r.get("kind") == "train":
            out.append(r)
    return out


@pytest.mark.slow
def test_sigkill_then_resume_on_a_token_corpus_gives_bit_identical_losses(tmp_path, bpe, jsonl):
    out, _ = corpus.tokenize([jsonl], tmp_path / "c", bpe, progress=False, log=lambda s: None)
    student = {**TINY, "rope_theta": 100.0}
    cfg = {
        "name": "t",
        "model": student,
        "seed": 3,
        "data": {"kind": "tokens", "paths": [str(out)], "options": {"max_doc_tokens": 48}},
        "optim": {"micro_batch_size": 2, "grad_accum_steps": 2},
        "checkpoint": {"every": 5, "keep_last": 2},
        "phases": [
            {"name": "short", "steps": 8, "seq_len": 64, "rope_theta": 100, "lr": 3e-3},
            {"name": "long", "steps": 40, "seq_len": 128, "rope_theta": 5000, "lr": 1e-3},
        ],
    }
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    full = _launch(path, tmp_path / "full")
    killed = _launch(path, tmp_path / "killed")
    deadline = time.time() + 240
    while time.time() < deadline and killed.poll() is None:  # between checkpoints 15 and 20 of phase 2
        if (tmp_path / "killed" / "metrics.jsonl").exists() and max(
            [r["step"] for r in _records(tmp_path / "killed")] or [0]
        ) >= 17:
            break
        time.sleep(0.002)
    killed.send_signal(signal.SIGKILL)
    assert killed.wait() == -signal.SIGKILL
    assert full.wait(timeout=300) == 0, full.stdout.read().decode()
    assert (tmp_path / "killed" / "ckpt-000015").is_dir()
    last = max(r["step"] for r in _records(tmp_path / "killed"))
    assert 17 <= last < 48
    resumed = _launch(path, tmp_path / "killed", "--resume")
    assert resumed.wait(timeout=300) == 0, resumed.stdout.read().decode()
    a, b = _records(tmp_path / "full"), _records(tmp_path / "killed")
    b = {r["step"]: r for r in b}  # the steps after the checkpoint ran twice; the resumed ones come last
    assert sorted(b) == list(range(1, 49))
    assert [(r["step"], r["loss"]) for r in a] == [(s, b[s]["loss"]) for s in range(1, 49)]
    assert checkpoint_io.read_manifest(tmp_path / "full" / "ckpt-000048")["data"]["options"] == {"max_doc_tokens": 48}


def test_a_damaged_or_hostile_corpus_is_one_clear_line(tmp_path, bpe, jsonl):
    good, _ = corpus.tokenize([jsonl], tmp_path / "good", bpe, progress=False, log=lambda s: None)
    outside = tmp_path / "outside.bin"
    outside.write_bytes(np.arange(1000, dtype="<u2").tobytes())
    offsets = np.load(good / corpus.OFFSETS)

    def manifest(**kw):
        def edit(d: Path) -> None:
            m = json.loads((d / corpus.MANIFEST).read_text())
            m.update(kw)
            (d / corpus.MANIFEST).write_text(json.dumps({k: v for k, v in m.items() if v is not None}))

        return edit

    cases = {
        "not json": (lambda d: (d / corpus.MANIFEST).write_text("{oops"), "not a JSON manifest"),
        "a list": (lambda d: (d / corpus.MANIFEST).write_text("[1]"), "format 'list'"),
        "no shards": (manifest(shards=None), "shards None"),
        "absolute shard": (manifest(shards=[str(outside)]), "shards"),
        "shard outside": (manifest(shards=["../outside.bin"]), "shards"),
        "dtype": (manifest(dtype="float32"), "dtype 'float32'"),
        "no tokenizer": (manifest(tokenizer=None), "no tokenizer name"),
        "odd shard": (lambda d: open(d / "tokens-00000.bin", "ab").write(b"x"), "not a whole number"),
        "offsets garbage": (lambda d: (d / corpus.OFFSETS).write_bytes(b"garbage"), "not a readable offsets"),
        "offsets float": (lambda d: np.save(d / corpus.OFFSETS, offsets.astype(float)), "need int64"),
        "offsets empty": (lambda d: np.save(d / corpus.OFFSETS, offsets[:0]), "need int64"),
        "offsets decrease": (
            lambda d: np.save(d / corpus.OFFSETS, np.r_[0, offsets[2], offsets[1], offsets[3:]]),
            "offsets decrease",
        ),
    }
    for name, (damage, match) in cases.items():
        d = tmp_path / name.replace(" ", "-")
        shutil.copytree(good, d)
        damage(d)
        with pytest.raises(ValueError, match=match):
            corpus.open_corpus(d)
        cfg = config.from_dict(config.DataConfig, {"kind": "tokens", "paths": [str(d)]})
        with pytest.raises(ValueError, match="damaged corpus|format|dtype|not a JSON"):
            make_stream(cfg, 64, 1, seed=0)
    # ids beyond those written (a shard overwritten in place): the window that reads one says so, not the embedding
    d = tmp_path / "ids"
    shutil.copytree(good, d)
    (d / "tokens-00000.bin").write_bytes(np.full(int(offsets[-1]), 60000, "<u2").tobytes())
    stream = make_stream(config.from_dict(config.DataConfig, {"kind": "tokens", "paths": [str(d)]}), 64, 1, seed=0)
    with pytest.raises(ValueError, match="token id 60000, beyond the largest id .* damaged shard"):
        stream.next()


def test_concurrent_tokenize_of_one_out_reuses_the_first_corpus_and_replaces_nothing(tmp_path, bpe, jsonl, monkeypatch):
    first, _ = corpus.tokenize([jsonl], tmp_path / "first", bpe, progress=False, log=lambda s: None)
    other, _ = corpus.tokenize([jsonl], tmp_path / "other", bpe, max_doc_tokens=64, progress=False, log=lambda s: None)
    rename = os.rename

    def finished_first(src, dst, winner):  # another tokenize of the same --out renames its corpus in just before
        if Path(dst) == tmp_path / "out" and not Path(dst).exists():
            shutil.copytree(winner, dst)
        return rename(src, dst)

    monkeypatch.setattr(corpus.os, "rename", lambda s, d: finished_first(s, d, first))
    out, reused = corpus.tokenize([jsonl], tmp_path / "out", bpe, progress=False, log=lambda s: None)
    assert reused and _shard_hash(out) == _shard_hash(first)
    shutil.rmtree(out)
    monkeypatch.setattr(corpus.os, "rename", lambda s, d: finished_first(s, d, other))
    with pytest.raises(FileExistsError, match="exists and is not this corpus"):
        corpus.tokenize([jsonl], tmp_path / "out", bpe, progress=False, log=lambda s: None)
    assert _shard_hash(tmp_path / "out") == _shard_hash(other)
    assert not list(tmp_path.glob(".out.tmp-*"))


def test_unreadable_sources_and_tokenizers_are_one_line_naming_the_file(tmp_path, bpe, jsonl, capsys):
    (tmp_path / "binary.txt").write_bytes(bytes(range(128, 256)) * 8)
    (tmp_path / "blank.jsonl").write_text("\n \n")
    (tmp_path / "broken.jsonl").write_text('{"text": "a b"\n')
    (tmp_path / "notok").mkdir()
    (tmp_path / "notok" / "config.json").write_text("{}")
    for srcs, tok, extra, match in (
        (["binary.txt"], bpe, (), "binary.txt: not readable as text .UnicodeDecodeError"),
        (["blank.jsonl"], bpe, (), "blank.jsonl: not readable as json"),
        (["broken.jsonl"], bpe, (), "broken.jsonl: not readable as json"),
        ([str(jsonl)], bpe, ("--kind", "parquet"), f"{jsonl}: not readable as parquet"),
        ([str(jsonl)], tmp_path / "notok", (), "--tokenizer: .* is not a loadable tokenizer directory"),
    ):
        assert _cli_tokenize([tmp_path / s for s in srcs], tok, tmp_path / "out", *extra) == 2, match
        captured = capsys.readouterr()
        assert len(captured.err.strip().splitlines()) == 1 and re.search(match, captured.err), captured.err
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out.tmp-*"))


def test_links_out_of_a_saved_dataset_directory_are_not_read(tmp_path, bpe):
    import datasets

    datasets.Dataset.from_dict({"text": documents(10, seed=4)}).save_to_disk(str(tmp_path / "saved"))
    (tmp_path / "outside.txt").write_text("not the user's to hash")
    (tmp_path / "saved" / "link.txt").symlink_to(tmp_path / "outside.txt")
    out, _ = corpus.tokenize([tmp_path / "saved"], tmp_path / "c", bpe, progress=False, log=lambda s: None)
    names = [Path(s["path"]).name for s in json.loads((out / corpus.MANIFEST).read_text())["sources"]]
    assert "link.txt" not in names and "state.json" in names


def test_tokenize_config_converts_a_phases_own_text_data(tmp_path, bpe, jsonl, capsys):
    """A run whose phase reads text of its own (the run's data is synthetic): --config names the phases to pick
    from, --phase NAME converts that phase's section with its options; a wrong name is one line, nothing written."""
    model = {"vocab_size": 512, "hidden_size": 32, "num_layers": 1, "num_heads": 2, "num_kv_heads": 2}
    text = {"kind": "jsonl", "paths": [str(jsonl)], "tokenizer": str(bpe), "options": {"max_doc_tokens": 64}}
    run = {
        "name": "r",
        "model": {**model, "intermediate_size": 64, "max_position_embeddings": 256, "rope_theta": 500},
        "phases": [
            {"name": "synthetic", "steps": 1, "seq_len": 128, "rope_theta": 500},
            {"name": "real", "steps": 1, "seq_len": 256, "rope_theta": 5000, "data": text},
        ],
    }
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(run))
    tokenize = ["tokenize", "--config", str(path), "--no-progress", "--out"]
    assert cli_main([*tokenize, str(tmp_path / "a")]) == 2
    assert "the phases real read text of their own: pick one with --phase NAME" in capsys.readouterr().err
    assert cli_main([*tokenize, str(tmp_path / "b"), "--phase", "nope"]) == 2
    assert "has the phases synthetic, real" in capsys.readouterr().err
    assert cli_main([*tokenize, str(tmp_path / "c"), "--phase", "synthetic"]) == 2
    assert "data.kind 'synthetic-short' is not text" in capsys.readouterr().err
    assert not [p for p in tmp_path.iterdir() if p.name in "abc"]
    assert cli_main([*tokenize, str(tmp_path / "real"), "--phase", "real"]) == 0
    assert "then use phases[1].data: {kind: tokens" in capsys.readouterr().out
    lengths = np.diff(np.load(tmp_path / "real" / "offsets.npy"))
    assert lengths.max() == 64  # the phase's max_doc_tokens applied (the documents are longer)
