"""Config loading: every bad value gets one clear error naming the key and the file."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import yaml

from workbench import config, models

CONFIGS = Path(__file__).resolve().parents[1] / "data" / "configs"

GOOD = {
    "name": "t",
    "model": {
        "vocab_size": 128,
        "hidden_size": 64,
        "num_layers": 2,
        "num_heads": 4,
        "num_kv_heads": 2,
        "intermediate_size": 128,
        "max_position_embeddings": 1024,
        "rope_theta": 500,
    },
    "phases": [
        {"name": "short", "steps": 4, "seq_len": 256, "rope_theta": 500},
        {"name": "long", "steps": 4, "seq_len": 1024, "rope_theta": 10000},
    ],
}


def write(tmp_path, data, name="cfg.yaml"):
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data))
    return path


def with_change(path_keys, value):
    data = yaml.safe_load(yaml.safe_dump(GOOD))
    target = data
    for k in path_keys[:-1]:
        target = target[k]
    target[path_keys[-1]] = value
    return data


def test_good_config_loads(tmp_path):
    cfg = config.load_run_config(write(tmp_path, GOOD))
    assert cfg.phases[1].rope_theta == 10000.0 and isinstance(cfg.phases[1].rope_theta, float)
    assert cfg.model.resolved_head_dim == 16
    assert config.config_hash(cfg) == config.config_hash(config.load_run_config(write(tmp_path, GOOD)))


@pytest.mark.parametrize(
    "keys,value,expected",
    [
        (["model", "rope_theta"], 0, "model.rope_theta: must be > 0"),
        (["model", "rope_theta"], -5.0, "model.rope_theta: must be > 0"),
        (["phases", 0, "rope_theta"], 0, "phases[0].rope_theta: must be > 0"),
        (["model", "head_dim"], 15, "model.head_dim: RoPE needs an even head dim"),
        (["model", "num_kv_heads"], 3, "model.num_kv_heads: num_heads 4 is not divisible by num_kv_heads 3"),
        (["model", "hidden_size"], 66, "model.num_heads: hidden_size 66 is not divisible"),
        (["model", "colour"], "red", "model: unknown key 'colour'"),
        (["optimiser"], {}, ": unknown key 'optimiser'"),
        (["model", "num_layers"], "two", "model.num_layers: expected an integer, got 'two'"),
        (["model", "tie_word_embeddings"], "yes", "model.tie_word_embeddings: expected true/false"),
        (["phases", 1, "seq_len"], 4096, "phases[1].seq_len: 4096 is beyond the model's max_position_embeddings 1024"),
        (["phases", 0, "objective"], "kd", "phases[0].objective: 'kd' needs a teacher"),
        (["phases", 0, "objective"], "distil", "phases[0].objective: 'distil' is not one of"),
        (["model", "rope_scaling"], {"rope_type": "warp"}, "model.rope_scaling.rope_type: 'warp' is not one of"),
    ],
)
def test_bad_values_name_key_and_file(tmp_path, keys, value, expected):
    path = write(tmp_path, with_change(keys, value), "bad-config.yaml")
    with pytest.raises(config.ConfigError) as err:
        config.load_run_config(path)
    assert str(path) in str(err.value)
    assert expected in str(err.value)


def test_missing_key_and_missing_file(tmp_path):
    data = yaml.safe_load(yaml.safe_dump(GOOD))
    del data["model"]["vocab_size"]
    with pytest.raises(config.ConfigError, match=r"model\.vocab_size: missing required key"):
        config.load_run_config(write(tmp_path, data))
    with pytest.raises(config.ConfigError, match="config file not found"):
        config.load_run_config(tmp_path / "nope.yaml")


def test_model_may_name_a_preset_file(tmp_path):
    data = dict(GOOD, model=str(CONFIGS / "presets" / "tiny-student.yaml"))
    cfg = config.load_run_config(write(tmp_path, data))
    assert cfg.model.vocab_size == 128


@pytest.mark.parametrize("preset", sorted((CONFIGS / "presets").glob("*.yaml")), ids=lambda p: p.stem)
def test_preset_parameter_count_matches_stated_size(preset):
    cfg = config.load_model_config(preset)
    assert cfg.stated_params, f"{preset} must state its size"
    assert models.count_parameters(cfg) == pytest.approx(cfg.stated_params, rel=0.03)


def test_paper_student_is_tinyllama_shaped():
    cfg = config.load_model_config(CONFIGS / "presets" / "paper-student-1.1b.yaml")
    assert (cfg.num_layers, cfg.hidden_size, cfg.num_heads, cfg.num_kv_heads, cfg.intermediate_size) == (
        22,
        2048,
        32,
        4,
        5632,
    )


@pytest.mark.parametrize("path", sorted(CONFIGS.rglob("*.yaml")), ids=lambda p: str(p.relative_to(CONFIGS)))
def test_every_shipped_config_loads(path):
    config.load_config(path)


# ------------------------------------------------------------------------- defaults and the config hash


def test_ce_plus_kd_trains_with_default_weights(tmp_path):
    from workbench.train.losses import LossSpec

    data = {**GOOD, "teacher": {"path": "t"}, "phases": [{**GOOD["phases"][0], "objective": "ce+kd"}]}
    cfg = config.load_run_config(write(tmp_path, data))
    spec = LossSpec.for_objective(cfg.loss, "ce+kd")
    assert (spec.ce_weight, spec.kd_weight) == (0.5, 1.0)
    assert (LossSpec.for_objective(cfg.loss, "kd").ce_weight, LossSpec.for_objective(cfg.loss, "ce").kd_weight) == (
        0,
        0,
    )
    with pytest.raises(config.ConfigError, match="loss.ce_weight: objective 'ce\\+kd' needs ce_weight > 0"):
        config.load_run_config(write(tmp_path, {**data, "loss": {"ce_weight": 0.0}}))


def test_new_keys_at_their_defaults_leave_the_hash_alone(tmp_path):
    cfg = config.load_run_config(write(tmp_path, GOOD))
    explicit = config.load_run_config(write(tmp_path, {**GOOD, "optim": {"precision": "auto", "eps": 1e-8}}))
    assert config.config_hash(explicit) == config.config_hash(cfg)
    bf16 = config.load_run_config(write(tmp_path, {**GOOD, "optim": {"precision": "bf16"}}))
    other_lr = config.load_run_config(write(tmp_path, with_change(["phases", 1, "lr"], 2e-3)))
    assert len({config.config_hash(c) for c in (cfg, bf16, other_lr)}) == 3
    assert config.config_hash(cfg) == config.config_hash(config.from_dict(config.RunConfig, config.to_dict(cfg)))


def test_a_run_of_another_hash_version_is_one_error(tmp_path):
    config.check_hash_version(config.HASH_VERSION)
    config.check_hash_version(2)  # version 2 checkpoints resume (compared under version 2)
    with pytest.raises(config.ConfigError, match=r"config_hash_version 1 \(this workbench: 3\).*retrain, or resume"):
        config.check_hash_version(1)
    with pytest.raises(config.ConfigError, match="newer than this workbench knows"):
        config.check_hash_version(config.HASH_VERSION + 1)


def test_hash_v3_leaves_out_what_is_not_trained_and_v2_is_unchanged():
    """Version 3 ignores description, logging, evaluation and checkpointing; version 2 still hashes them, with
    the values the workbench wrote into version-2 manifests (computed before version 3 existed)."""
    import copy

    untrained = copy.deepcopy(GOOD)
    untrained.update(description="x", eval_every=5, logging={"tensorboard": False}, checkpoint={"keep_last": 1})
    plain, changed = (config.from_dict(config.RunConfig, d) for d in (GOOD, untrained))
    assert config.config_hash(plain) == config.config_hash(changed)
    assert (config.config_hash(plain, 2), config.config_hash(changed, 2)) == ("2f7f6134bda53ae2", "47ade4636c470215")
    compiled = copy.deepcopy(GOOD)
    for value, v2 in ((False, "2f7f6134bda53ae2"), ("auto", "2f7f6134bda53ae2"), (True, None)):
        compiled["optim"] = {"compile": value}  # v2's default was false; the run may switch it on --resume
        cfg = config.from_dict(config.RunConfig, compiled)
        assert config.config_hash(cfg) == config.config_hash(plain)
        assert (config.config_hash(cfg, 2) == "2f7f6134bda53ae2") == (v2 is not None), value
    trained = config.from_dict(config.RunConfig, with_change(["phases", 1, "lr"], 2e-3))
    assert config.config_hash(trained) != config.config_hash(plain)
    assert {k.split(".")[0] for k in config.UNTRAINED_KEYS} <= {f.name for f in dataclasses.fields(config.RunConfig)}
