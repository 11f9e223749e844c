"""optim.compile (workbench.train.compiling): the compiled trainer follows the eager one, checkpoints unchanged."""

from __future__ import annotations

import json

import pytest
from tiny import tiny_student

from workbench import checkpoint_io, config
from workbench.train import train

STUDENT = tiny_student()
TOL = 1e-5  # absolute, on per-token losses around 5: float reassociation inside the compiled graphs only


@pytest.mark.slow  # one CPU compile of a block's forward and backward (about 30-60 s on 2 busy cores)
def test_compiled_losses_match_eager_and_checkpoints_keep_their_names(tmp_path):
    """... and the held-out evals between steps (generation with a KV cache) run the compiled blocks eagerly: they
    recompiled the block for every new cache shape (here 5 graphs instead of 1), up to dynamo's limit, with a
    screen of warnings."""
    import torch._dynamo.utils

    from workbench.evals import training_eval

    losses = {}
    for compiled in (False, True):
        cfg = config.from_dict(
            config.RunConfig,
            {
                "name": "c",
                "model": dict(STUDENT),
                "seed": 2,
                "data": {"kind": "synthetic-short", "doc_len_min": 16, "doc_len_max": 48},
                "optim": {"micro_batch_size": 2, "compile": compiled},
                "checkpoint": {"every": 0, "keep_last": 1},
                "phases": [{"name": "a", "steps": 3, "seq_len": 64, "rope_theta": 100, "lr": 3e-3}],
                "eval_every": 2,
                "eval_lengths": [64, 96],
                "eval_samples": 2,
            },
        )
        torch._dynamo.utils.counters.clear()
        run = train(cfg, out=str(tmp_path / f"run-{compiled}"), progress=False, evaluate=training_eval)
        losses[compiled] = [
            r["loss"] for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if r["kind"] == "train"
        ]
    print(f"eager {losses[False]}\ncompiled {losses[True]}")
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == 1  # the training block's graph only
    assert len(losses[True]) == 3
    assert losses[True] == pytest.approx(losses[False], abs=TOL)
    model, _ = checkpoint_io.load(tmp_path / "run-True" / "ckpt-000003")  # plain parameter names (no _orig_mod)
    assert "model.layers.0.self_attn.q_proj.weight" in model.state_dict()


def test_compile_auto_is_on_for_cuda_only_and_a_wrong_value_is_one_error():
    import torch

    from workbench.train.compiling import resolve_compile

    assert config.OptimConfig().compile == "auto"
    assert resolve_compile("auto", torch.device("cuda")) and not resolve_compile("auto", torch.device("cpu"))
    assert resolve_compile(True, torch.device("cpu")) and not resolve_compile(False, torch.device("cuda"))
    with pytest.raises(config.ConfigError, match="compile: .sometimes. matches none of true/false or .auto."):
        config.from_dict(config.OptimConfig, {"compile": "sometimes"}, "optim")
