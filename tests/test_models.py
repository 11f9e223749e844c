"""Models against plain transformers: theta changes for real, interleaved import, the ``model`` command."""

from __future__ import annotations

import json
import subprocess
import sys

import torch
from transformers import AutoModelForCausalLM

from workbench import checkpoint_io, models, rope
from workbench.config import ModelConfig


def long_ids(vocab: int, length: int = 4096, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, vocab, (1, length), generator=torch.Generator().manual_seed(seed))


@torch.no_grad()
def test_set_rope_theta_round_trip_through_plain_transformers(gqa_model, tmp_path):
    ids = long_ids(gqa_model.config.vocab_size)
    before = gqa_model(ids).logits
    models.set_rope_theta(gqa_model, 50000.0)
    after = gqa_model(ids).logits
    assert (after - before).abs().max().item() > 1e-3, "changing theta must change the logits"
    path = checkpoint_io.save_checkpoint(gqa_model, tmp_path / "ckpt", {"step": 2})
    assert json.loads((path / "config.json").read_text())["rope_parameters"]["rope_theta"] == 50000.0
    plain = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, local_files_only=True).eval()
    assert (plain(ids).logits - after).abs().max().item() <= 1e-5
    loaded, manifest = checkpoint_io.load(path)
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
    checkpoint_io.load(tmp_path / "ckpt-init")
