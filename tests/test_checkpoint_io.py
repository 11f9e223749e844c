"""Checkpoint I/O (workbench.checkpoint_io) against plain transformers: format, atomic saves, clear errors
for damaged or foreign directories, integrity verdicts cached outside the checkpoint, plain HF directories."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from workbench import checkpoint_io, models
from workbench.runs import RunDir


@torch.no_grad()
def test_checkpoint_loads_in_plain_transformers_with_equal_logits(gqa_model, tmp_path):
    ids = torch.randint(0, gqa_model.config.vocab_size, (1, 4096), generator=torch.Generator().manual_seed(0))
    ours = gqa_model(ids).logits
    path = checkpoint_io.save_checkpoint(gqa_model, tmp_path / "ckpt", {"step": 1})
    plain = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, local_files_only=True).eval()
    assert type(plain).__name__ == "LlamaForCausalLM"
    assert (plain(ids).logits - ours).abs().max().item() <= 1e-5


def test_save_killed_half_way_leaves_nothing_loadable(tmp_path):
    """A child process is killed (os._exit) in the middle of writing the weights."""
    script = f"""
import os, sys
sys.path.insert(0, {os.getcwd()!r})
import safetensors.torch as st
from workbench.config import ModelConfig
from workbench import checkpoint_io, models
from workbench.runs import RunDir
from workbench.runs import RunDir
m = models.build_model(ModelConfig(vocab_size=64, hidden_size=32, num_layers=1, num_heads=2, num_kv_heads=1,
                                   intermediate_size=64, max_position_embeddings=128))
real = st.save_file
def dying(tensors, filename, *a, **k):
    real(tensors, filename, *a, **k)
    with open(filename, 'r+b') as f:
        f.truncate(os.path.getsize(filename) // 2)
    os._exit(9)
st.save_file = dying
import transformers.modeling_utils as mu
if hasattr(mu, 'safe_save_file'):
    mu.safe_save_file = dying
checkpoint_io.save_checkpoint(m, {str(tmp_path / "ckpt")!r}, {{'step': 1}})
"""
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert proc.returncode == 9, proc.stderr
    assert not (tmp_path / "ckpt").exists()
    leftovers = list(tmp_path.iterdir())
    assert leftovers and all(p.name.startswith(".tmp-") for p in leftovers)
    for p in leftovers + [tmp_path / "ckpt"]:
        with pytest.raises(checkpoint_io.CheckpointError):
            checkpoint_io.load(p)
    assert RunDir(tmp_path).checkpoints() == []


def test_overwriting_a_checkpoint_is_atomic(gqa_model, tmp_path, monkeypatch):
    path = checkpoint_io.save_checkpoint(gqa_model, tmp_path / "ckpt", {"step": 1})

    def boom(*a, **k):
        raise RuntimeError("disk full")

    monkeypatch.setattr(type(gqa_model), "save_pretrained", boom)
    with pytest.raises(RuntimeError, match="disk full"):
        checkpoint_io.save_checkpoint(gqa_model, path, {"step": 2})
    assert checkpoint_io.read_manifest(path)["step"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt"]


def test_corrupt_and_truncated_weights_get_clear_errors(saved_checkpoint, tmp_path):
    truncated = tmp_path / "truncated"
    shutil.copytree(saved_checkpoint, truncated)
    weights = truncated / checkpoint_io.WEIGHTS
    with open(weights, "r+b") as f:
        f.truncate(weights.stat().st_size - 100)
    with pytest.raises(checkpoint_io.CheckpointError, match="truncated"):
        checkpoint_io.load(truncated)

    corrupt = tmp_path / "corrupt"
    shutil.copytree(saved_checkpoint, corrupt)
    weights = corrupt / checkpoint_io.WEIGHTS
    size = weights.stat().st_size
    weights.write_bytes(b"\xff" * size)  # same size, garbage header
    with pytest.raises(checkpoint_io.CheckpointError, match="corrupt or truncated safetensors"):
        checkpoint_io.load(corrupt, full_hash=False)
    with pytest.raises(checkpoint_io.CheckpointError, match="sha256"):
        checkpoint_io.load(corrupt)


def test_missing_and_foreign_directories(saved_checkpoint, tmp_path):
    with pytest.raises(checkpoint_io.CheckpointError, match="not found"):
        checkpoint_io.load(tmp_path / "nowhere")
    plain = tmp_path / "plain"
    shutil.copytree(saved_checkpoint, plain)
    (plain / checkpoint_io.MANIFEST).unlink()
    with pytest.raises(checkpoint_io.CheckpointError, match="no manifest.json"):
        checkpoint_io.verify_checkpoint(plain)  # a workbench checkpoint needs its manifest
    model, manifest = checkpoint_io.load(plain)  # a plain HF directory loads (checked from its headers)
    assert manifest == {} and models.rope_theta(model) == 500.0
    foreign = tmp_path / "gpt2"
    shutil.copytree(plain, foreign)
    cfg = json.loads((foreign / "config.json").read_text())
    (foreign / "config.json").write_text(json.dumps({**cfg, "model_type": "gpt2"}))
    with pytest.raises(checkpoint_io.CheckpointError, match="architecture .gpt2. is not supported"):
        checkpoint_io.load(foreign)


def _corrupt_tensor_bytes(weights, n: int = 64) -> None:
    """Overwrite ``n`` bytes in the middle of the tensor data (after the safetensors header), same size."""
    with open(weights, "r+b") as f:
        header = int.from_bytes(f.read(8), "little")
        data_start = 8 + header
        f.seek(data_start + (weights.stat().st_size - data_start) // 2)
        f.write(bytes(range(n)))


def test_corrupt_tensor_data_refused_by_workbench_eval(tmp_path, capsys):
    """64 bytes overwritten inside the tensor data of a copied shipped checkpoint: eval refuses, naming the file."""
    from workbench import cli

    copy = tmp_path / "tiny-teacher"
    shutil.copytree("data/teacher/tiny-teacher", copy)
    checkpoint_io.verify_checkpoint(copy)  # intact copy passes
    _corrupt_tensor_bytes(copy / checkpoint_io.WEIGHTS)
    checkpoint_io.read_config(copy)  # the header still parses: only the hash can tell
    args = [
        "eval",
        str(copy),
        "--tasks",
        "passkey",
        "--lengths",
        "64",
        "--depths",
        "1",
        "--samples",
        "1",
        "--out",
        str(tmp_path / "r.zarr"),
    ]
    assert cli.main(args) == 2
    err = capsys.readouterr().err
    assert f"{copy / checkpoint_io.WEIGHTS}: sha256" in err and "does not match the manifest" in err
    assert err.count("error:") == 1 and not (tmp_path / "r.zarr").exists()
    with pytest.raises(checkpoint_io.CheckpointError, match="model.safetensors: sha256"):
        checkpoint_io.load(copy)


def test_integrity_verdict_cached_outside_the_checkpoint(saved_checkpoint, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    monkeypatch.setenv(checkpoint_io.CACHE_ENV, str(cache))
    ckpt = tmp_path / "ckpt"
    shutil.copytree(saved_checkpoint, ckpt)
    before = sorted(p.name for p in ckpt.rglob("*"))
    calls = []
    real = checkpoint_io._sha256
    monkeypatch.setattr(checkpoint_io, "_sha256", lambda p: calls.append(p.name) or real(p))
    checkpoint_io.verify_checkpoint(ckpt)
    hashed = len(calls)
    assert hashed >= 2 and "model.safetensors" in calls  # weights + config files
    checkpoint_io.verify_checkpoint(ckpt)
    checkpoint_io.load(ckpt)
    assert len(calls) == hashed  # remembered: no second hash
    assert sorted(p.name for p in ckpt.rglob("*")) == before and any(cache.rglob("*.json"))
    # corrupted in place with its mtime restored: the ctime/inode in the key still forces a re-hash
    weights = ckpt / checkpoint_io.WEIGHTS
    st = weights.stat()
    _corrupt_tensor_bytes(weights)
    os.utime(weights, ns=(st.st_atime_ns, st.st_mtime_ns))
    with pytest.raises(checkpoint_io.CheckpointError, match="does not match the manifest"):
        checkpoint_io.verify_checkpoint(ckpt)
    # an unwritable cache only costs a re-hash
    monkeypatch.setenv(checkpoint_io.CACHE_ENV, "/proc/no-cache-here")
    checkpoint_io.verify_checkpoint(saved_checkpoint)


def test_plain_hf_directory_hash_is_computed_once_per_file_state(gqa_model, tmp_path, monkeypatch):
    """A plain HF directory has no manifest: its content hash (stored as checkpoint_hash by every analysis)
    hashes the shards once, then is remembered until a shard changes."""
    monkeypatch.setenv(checkpoint_io.CACHE_ENV, str(tmp_path / "cache"))
    plain = tmp_path / "plain"
    gqa_model.save_pretrained(plain)
    calls = []
    real = checkpoint_io._sha256
    monkeypatch.setattr(checkpoint_io, "_sha256", lambda p: calls.append(p.name) or real(p))
    first = checkpoint_io.checkpoint_hash(plain)
    assert calls == ["model.safetensors"]
    assert checkpoint_io.checkpoint_hash(plain) == first and len(calls) == 1
    expected = hashlib.sha256(hashlib.sha256((plain / "model.safetensors").read_bytes()).hexdigest().encode())
    assert first == expected.hexdigest()[:16]
    _corrupt_tensor_bytes(plain / "model.safetensors")
    assert checkpoint_io.checkpoint_hash(plain) != first and len(calls) == 2


def test_ranks_loading_one_fresh_checkpoint_at_once_hash_each_file_once(gqa_model, tmp_path, monkeypatch):
    """Every rank of a torchrun job verifies the same fresh checkpoint at the same moment: one of them
    hashes each file (a lock per verdict), the others wait and read its verdict (was: every rank read every
    byte at once). Threads stand in for the ranks: flock locks between open files, also in one process."""

    monkeypatch.setenv(checkpoint_io.CACHE_ENV, str(tmp_path / "cache"))
    saved = checkpoint_io.save_checkpoint(gqa_model, tmp_path / "a" / "ckpt-000001", {"step": 1})
    copied = Path(shutil.copytree(saved, tmp_path / "b" / "ckpt-000001"))  # a new file state: no verdict yet
    plain = tmp_path / "plain"
    gqa_model.save_pretrained(plain)
    calls, real = [], checkpoint_io._sha256

    def slow(p):
        calls.append(p.name)
        time.sleep(0.3)  # long enough for every "rank" to arrive while the first still hashes
        return real(p)

    monkeypatch.setattr(checkpoint_io, "_sha256", slow)
    for work in (lambda: checkpoint_io.verify_checkpoint(copied), lambda: checkpoint_io.checkpoint_hash(plain)):
        calls.clear()
        start, results, errors = threading.Barrier(4), [], []

        def rank(start=start, results=results, errors=errors, work=work):
            start.wait()
            try:
                results.append(work())
            except Exception as exc:  # noqa: BLE001 (reported below)
                errors.append(exc)

        threads = [threading.Thread(target=rank) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert (
            not errors and len(results) == 4 and len({json.dumps(r, sort_keys=True, default=str) for r in results}) == 1
        )
        assert sorted(calls) == sorted(set(calls)) and calls, calls  # each file hashed by one rank only


def test_fresh_save_is_remembered_and_hash_cost_is_small(gqa_model, tmp_path, monkeypatch):
    monkeypatch.setenv(checkpoint_io.CACHE_ENV, str(tmp_path / "cache"))
    path = checkpoint_io.save_checkpoint(gqa_model, tmp_path / "ckpt-000001", {"step": 1})
    monkeypatch.setattr(checkpoint_io, "_sha256", lambda p: pytest.fail(f"{p} hashed again after its own save"))
    checkpoint_io.verify_checkpoint(path)


def test_inspect_reads_the_scaling_of_an_older_config_json_as_the_loaded_model_runs(gqa_model, tmp_path):
    """A config.json written before transformers 5 states ``rope_theta`` / ``rope_scaling`` at the top level:
    inspect (and so every wavelength the analyses draw) must see the scaling the loaded model runs with."""
    from workbench import checkpoints

    gqa_model.save_pretrained(tmp_path / "old")
    cfg_file = tmp_path / "old" / "config.json"
    cfg = json.loads(cfg_file.read_text())
    cfg.pop("rope_parameters", None)
    cfg.update(rope_theta=5000.0, rope_scaling={"rope_type": "linear", "factor": 4.0})
    cfg_file.write_text(json.dumps(cfg))
    info = checkpoints.inspect(tmp_path / "old")
    model, _ = checkpoint_io.load(tmp_path / "old")
    params = dict(model.config.rope_parameters)
    assert info.rope_theta == params.pop("rope_theta") == 5000.0
    assert info.rope_scaling == params == {"rope_type": "linear", "factor": 4.0}


@pytest.mark.parametrize("content", [b"[1, 2]", b"\xff\xfe"])
def test_read_config_refuses_a_config_json_that_is_no_json_object(tmp_path, content):
    (tmp_path / "config.json").write_bytes(content)
    with pytest.raises(checkpoint_io.CheckpointError, match="config.json: (expected a JSON object|corrupt JSON)"):
        checkpoint_io.read_config(tmp_path, weights=False)


def test_save_takes_the_callers_cpu_state_dict_instead_of_a_second_copy(tmp_path):
    """The trainer already holds the full weights on the CPU (``get_state_dict``); those are what is saved, and a
    state dict of other keys is refused before anything is written."""
    from tiny import tiny_student

    from workbench.config import ModelConfig

    model = models.build_model(ModelConfig(**tiny_student()), seed=0)
    given = {k: v.clone() + 1 for k, v in model.state_dict().items()}  # different values: the saved ones are these
    want = {k: v.clone() for k, v in given.items()}
    checkpoint_io.save_checkpoint(model, tmp_path / "c", {"step": 1}, state_dict=given)
    saved = checkpoint_io.load(tmp_path / "c")[0].state_dict()
    assert all(torch.equal(saved[k], want[k]) for k in want)
    with pytest.raises(ValueError, match="state_dict does not match the model's keys"):
        checkpoint_io.save_checkpoint(model, tmp_path / "d", {"step": 1}, state_dict={"nope": torch.zeros(1)})
    assert not (tmp_path / "d").exists()
