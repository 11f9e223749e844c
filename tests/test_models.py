"""Models and checkpoints against plain transformers: format, theta, atomic saves, clear errors."""

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

from workbench import models, rope
from workbench.config import ModelConfig


def long_ids(vocab: int, length: int = 4096, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, vocab, (1, length), generator=torch.Generator().manual_seed(seed))


@torch.no_grad()
def test_checkpoint_loads_in_plain_transformers_with_equal_logits(gqa_model, tmp_path):
    ids = long_ids(gqa_model.config.vocab_size)
    ours = gqa_model(ids).logits
    path = models.save_checkpoint(gqa_model, tmp_path / "ckpt", {"step": 1})
    plain = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, local_files_only=True).eval()
    assert type(plain).__name__ == "LlamaForCausalLM"
    assert (plain(ids).logits - ours).abs().max().item() <= 1e-5


@torch.no_grad()
def test_set_rope_theta_round_trip_through_plain_transformers(gqa_model, tmp_path):
    ids = long_ids(gqa_model.config.vocab_size)
    before = gqa_model(ids).logits
    models.set_rope_theta(gqa_model, 50000.0)
    after = gqa_model(ids).logits
    assert (after - before).abs().max().item() > 1e-3, "changing theta must change the logits"
    path = models.save_checkpoint(gqa_model, tmp_path / "ckpt", {"step": 2})
    assert json.loads((path / "config.json").read_text())["rope_parameters"]["rope_theta"] == 50000.0
    plain = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, local_files_only=True).eval()
    assert (plain(ids).logits - after).abs().max().item() <= 1e-5
    loaded, manifest = models.load(path)
    assert manifest["rope_theta"] == 50000.0
    assert (loaded(ids).logits - after).abs().max().item() <= 1e-5


@torch.no_grad()
def test_set_rope_theta_equals_building_with_that_theta(gqa_config):
    changed = models.build_model(gqa_config, seed=3)
    models.set_rope_theta(changed, 123456.0)
    fresh = models.build_model(ModelConfig(**{**gqa_config.__dict__, "rope_theta": 123456.0}), seed=3)
    ids = long_ids(gqa_config.vocab_size, 2048)
    assert torch.equal(changed(ids).logits, fresh(ids).logits)
    torch.testing.assert_close(
        models.model_inv_freq(changed), torch.tensor(rope.inv_freq(123456.0, 16), dtype=torch.float32)
    )


@torch.no_grad()
def test_set_rope_theta_with_scaling_matches_transformers_init(gqa_config):
    scaling = {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 2048}
    changed = models.build_model(gqa_config, seed=3)
    models.set_rope_theta(changed, 10000.0, scaling)
    fresh = models.build_model(
        ModelConfig(**{**gqa_config.__dict__, "rope_theta": 10000.0, "rope_scaling": scaling}), seed=3
    )
    ids = long_ids(gqa_config.vocab_size, 1024)
    assert torch.equal(changed(ids).logits, fresh(ids).logits)


def test_set_rope_theta_keeps_hooks(gqa_model):
    calls = []
    gqa_model.model.rotary_emb.register_forward_hook(lambda *a: calls.append(1))
    models.set_rope_theta(gqa_model, 777.0)
    gqa_model(long_ids(gqa_model.config.vocab_size, 16))
    assert calls


def test_save_killed_half_way_leaves_nothing_loadable(tmp_path):
    """A child process is killed (os._exit) in the middle of writing the weights."""
    script = f"""
import os, sys
sys.path.insert(0, {os.getcwd()!r})
import safetensors.torch as st
from workbench.config import ModelConfig
from workbench import models
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
models.save_checkpoint(m, {str(tmp_path / "ckpt")!r}, {{'step': 1}})
"""
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert proc.returncode == 9, proc.stderr
    assert not (tmp_path / "ckpt").exists()
    leftovers = list(tmp_path.iterdir())
    assert leftovers and all(p.name.startswith(".tmp-") for p in leftovers)
    for p in leftovers + [tmp_path / "ckpt"]:
        with pytest.raises(models.CheckpointError):
            models.load(p)
    assert models.list_checkpoints(tmp_path) == []


def test_overwriting_a_checkpoint_is_atomic(gqa_model, tmp_path, monkeypatch):
    path = models.save_checkpoint(gqa_model, tmp_path / "ckpt", {"step": 1})

    def boom(*a, **k):
        raise RuntimeError("disk full")

    monkeypatch.setattr(type(gqa_model), "save_pretrained", boom)
    with pytest.raises(RuntimeError, match="disk full"):
        models.save_checkpoint(gqa_model, path, {"step": 2})
    assert models.read_manifest(path)["step"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt"]


def test_corrupt_and_truncated_weights_get_clear_errors(saved_checkpoint, tmp_path):
    truncated = tmp_path / "truncated"
    shutil.copytree(saved_checkpoint, truncated)
    weights = truncated / models.WEIGHTS
    with open(weights, "r+b") as f:
        f.truncate(weights.stat().st_size - 100)
    with pytest.raises(models.CheckpointError, match="truncated"):
        models.load(truncated)

    corrupt = tmp_path / "corrupt"
    shutil.copytree(saved_checkpoint, corrupt)
    weights = corrupt / models.WEIGHTS
    size = weights.stat().st_size
    weights.write_bytes(b"\xff" * size)  # same size, garbage header
    with pytest.raises(models.CheckpointError, match="corrupt or truncated safetensors"):
        models.load(corrupt, full_hash=False)
    with pytest.raises(models.CheckpointError, match="sha256"):
        models.load(corrupt)


def test_missing_and_foreign_directories(saved_checkpoint, tmp_path):
    with pytest.raises(models.CheckpointError, match="not found"):
        models.load(tmp_path / "nowhere")
    plain = tmp_path / "plain"
    shutil.copytree(saved_checkpoint, plain)
    (plain / models.MANIFEST).unlink()
    with pytest.raises(models.CheckpointError, match="no manifest.json"):
        models.load(plain)
    model, manifest = models.load(plain, allow_plain_hf=True)
    assert manifest == {} and models.rope_theta(model) == 500.0
    foreign = tmp_path / "gpt2"
    shutil.copytree(plain, foreign)
    cfg = json.loads((foreign / "config.json").read_text())
    (foreign / "config.json").write_text(json.dumps({**cfg, "model_type": "gpt2"}))
    with pytest.raises(models.CheckpointError, match="architecture .gpt2. is not supported"):
        models.load(foreign, allow_plain_hf=True)


def reference_interleaved_rope(x: torch.Tensor, positions: torch.Tensor, theta: float) -> torch.Tensor:
    """Meta's original Llama RoPE: adjacent dims (2j, 2j+1) form complex number j, rotated by omega_j*pos."""
    d = x.shape[-1]
    omega = 1.0 / theta ** (torch.arange(0, d, 2, dtype=torch.float64) / d)
    angles = torch.polar(torch.ones(len(positions), d // 2, dtype=torch.float64), positions[:, None] * omega)
    z = torch.view_as_complex(x.double().reshape(*x.shape[:-1], d // 2, 2).contiguous())
    return torch.view_as_real(z * angles).reshape(x.shape)


@torch.no_grad()
def test_interleaved_import_gives_same_attention_scores_as_meta_layout():
    from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

    torch.manual_seed(0)
    heads, d, hidden, theta, T = 2, 16, 32, 1000.0, 50
    w_interleaved = torch.randn(heads * d, hidden, dtype=torch.float64)
    x = torch.randn(T, hidden, dtype=torch.float64)
    positions = torch.arange(T, dtype=torch.float64) * 7
    q_meta = reference_interleaved_rope((x @ w_interleaved.T).reshape(T, heads, d).transpose(0, 1), positions, theta)
    scores_meta = q_meta @ q_meta.transpose(-1, -2)

    w_hf = models.interleaved_to_half_split(w_interleaved, heads, d)
    q = (x @ w_hf.T).reshape(T, heads, d).transpose(0, 1)[None]
    omega = torch.as_tensor(rope.inv_freq(theta, d), dtype=torch.float64)
    emb = torch.cat([positions[:, None] * omega] * 2, dim=-1)[None]
    q_hf, _ = apply_rotary_pos_emb(q, q, emb.cos(), emb.sin())
    scores_hf = q_hf[0] @ q_hf[0].transpose(-1, -2)
    torch.testing.assert_close(scores_hf, scores_meta, rtol=1e-10, atol=1e-9)
    assert torch.equal(models.half_split_to_interleaved(w_hf, heads, d), w_interleaved)


def test_model_command_builds_saves_reloads(tmp_path):
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "workbench",
            "model",
            "data/configs/presets/tiny-student.yaml",
            "--out",
            str(tmp_path / "ckpt-init"),
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "max |logit diff| after reload: 0.00e+00" in out
    assert "critical dimension" in out
    models.load(tmp_path / "ckpt-init")


# --------------------------------------------------------------------------------- integrity on load


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
    models.verify_checkpoint(copy)  # intact copy passes
    _corrupt_tensor_bytes(copy / models.WEIGHTS)
    models.read_config(copy)  # the header still parses: only the hash can tell
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
    assert f"{copy / models.WEIGHTS}: sha256" in err and "does not match the manifest" in err
    assert err.count("error:") == 1 and not (tmp_path / "r.zarr").exists()
    with pytest.raises(models.CheckpointError, match="model.safetensors: sha256"):
        models.load(copy)


def test_integrity_verdict_cached_outside_the_checkpoint(saved_checkpoint, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    monkeypatch.setenv(models.CACHE_ENV, str(cache))
    ckpt = tmp_path / "ckpt"
    shutil.copytree(saved_checkpoint, ckpt)
    before = sorted(p.name for p in ckpt.rglob("*"))
    calls = []
    real = models._sha256
    monkeypatch.setattr(models, "_sha256", lambda p: calls.append(p.name) or real(p))
    models.verify_checkpoint(ckpt)
    hashed = len(calls)
    assert hashed >= 2 and "model.safetensors" in calls  # weights + config files
    models.verify_checkpoint(ckpt)
    models.load(ckpt)
    assert len(calls) == hashed  # remembered: no second hash
    assert sorted(p.name for p in ckpt.rglob("*")) == before and any(cache.rglob("*.json"))
    # corrupted in place with its mtime restored: the ctime/inode in the key still forces a re-hash
    weights = ckpt / models.WEIGHTS
    st = weights.stat()
    _corrupt_tensor_bytes(weights)
    os.utime(weights, ns=(st.st_atime_ns, st.st_mtime_ns))
    with pytest.raises(models.CheckpointError, match="does not match the manifest"):
        models.verify_checkpoint(ckpt)
    # an unwritable cache only costs a re-hash
    monkeypatch.setenv(models.CACHE_ENV, "/proc/no-cache-here")
    models.verify_checkpoint(saved_checkpoint)


def test_plain_hf_directory_hash_is_computed_once_per_file_state(gqa_model, tmp_path, monkeypatch):
    """A plain HF directory has no manifest: its content hash (stored as checkpoint_hash by every analysis)
    hashes the shards once, then is remembered until a shard changes."""
    monkeypatch.setenv(models.CACHE_ENV, str(tmp_path / "cache"))
    plain = tmp_path / "plain"
    gqa_model.save_pretrained(plain)
    calls = []
    real = models._sha256
    monkeypatch.setattr(models, "_sha256", lambda p: calls.append(p.name) or real(p))
    first = models.checkpoint_hash(plain)
    assert calls == ["model.safetensors"]
    assert models.checkpoint_hash(plain) == first and len(calls) == 1
    expected = hashlib.sha256(hashlib.sha256((plain / "model.safetensors").read_bytes()).hexdigest().encode())
    assert first == expected.hexdigest()[:16]
    _corrupt_tensor_bytes(plain / "model.safetensors")
    assert models.checkpoint_hash(plain) != first and len(calls) == 2


def test_ranks_loading_one_fresh_checkpoint_at_once_hash_each_file_once(gqa_model, tmp_path, monkeypatch):
    """Every rank of a torchrun job verifies the same fresh checkpoint at the same moment: one of them
    hashes each file (a lock per verdict), the others wait and read its verdict (was: every rank read every
    byte at once). Threads stand in for the ranks: flock locks between open files, also in one process."""

    monkeypatch.setenv(models.CACHE_ENV, str(tmp_path / "cache"))
    saved = models.save_checkpoint(gqa_model, tmp_path / "a" / "ckpt-000001", {"step": 1})
    copied = Path(shutil.copytree(saved, tmp_path / "b" / "ckpt-000001"))  # a new file state: no verdict yet
    plain = tmp_path / "plain"
    gqa_model.save_pretrained(plain)
    calls, real = [], models._sha256

    def slow(p):
        calls.append(p.name)
        time.sleep(0.3)  # long enough for every "rank" to arrive while the first still hashes
        return real(p)

    monkeypatch.setattr(models, "_sha256", slow)
    for work in (lambda: models.verify_checkpoint(copied), lambda: models.checkpoint_hash(plain)):
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
    monkeypatch.setenv(models.CACHE_ENV, str(tmp_path / "cache"))
    path = models.save_checkpoint(gqa_model, tmp_path / "ckpt-000001", {"step": 1})
    monkeypatch.setattr(models, "_sha256", lambda p: pytest.fail(f"{p} hashed again after its own save"))
    models.verify_checkpoint(path)
