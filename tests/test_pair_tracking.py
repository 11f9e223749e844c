"""Pair updates tracked during training (workbench.train.pair_tracking): the records at a phase end equal
`workbench updates` (measurements.weight_updates) between the phase-start and the phase-end checkpoints."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from tiny import tiny_student

from workbench import checkpoint_io, config, measurements, models, rope
from workbench.train import pair_tracking, train

STUDENT = tiny_student(num_layers=2)


def test_tracked_updates_equal_workbench_updates_at_phase_ends(tmp_path):
    init = tmp_path / "init"
    checkpoint_io.save_checkpoint(
        models.build_model(config.ModelConfig(**STUDENT), seed=5), init, {"phase": "i", "step": 0}
    )
    cfg = config.from_dict(
        config.RunConfig,
        {
            "name": "t",
            "model": dict(STUDENT),
            "seed": 3,
            "init_from": str(init),
            "track_every": 2,
            "data": {"kind": "synthetic-short", "doc_len_min": 16, "doc_len_max": 48},
            "optim": {"micro_batch_size": 2, "grad_accum_steps": 1},
            "checkpoint": {"every": 0, "keep_last": 1},
            "phases": [
                {"name": "short", "steps": 3, "seq_len": 64, "rope_theta": 100, "lr": 3e-3, "objective": "ce"},
                {"name": "long", "steps": 3, "seq_len": 128, "rope_theta": 5000, "lr": 3e-3, "objective": "ce"},
            ],
        },
    )
    run = train(cfg, out=str(tmp_path / "run"), progress=False)
    recs = pair_tracking.read_records(run)
    assert [(r["phase"], r["step"]) for r in recs] == [("short", 2), ("short", 3), ("long", 5), ("long", 6)]
    assert recs[-1]["critical_pair"] == rope.critical_pair(5000, 16, 128) == 3  # the long phase's
    for rec, (before, after) in (
        (recs[1], (init, run / "ckpt-000003")),
        (recs[3], (run / "ckpt-000003", run / "ckpt-000006")),
    ):
        ref = measurements.weight_updates([before, after])
        for p in ("q", "k"):
            tracked = np.asarray(rec[f"{p}_rel_update"])
            assert tracked.shape == ref[f"{p}_rel_update"].shape[1:] and tracked.max() > 0
            np.testing.assert_array_equal(tracked, ref[f"{p}_rel_update"].values[0])
    scal = pair_tracking.scalars(recs[-1])
    assert scal["pair_updates/q_critical"] == scal["pair_updates/q_pair03"] > 0
    # ... and reach the tracker: TensorBoard holds the same scalars at the tracked steps
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run / "tensorboard"))
    events.Reload()
    logged = events.Scalars("pair_updates/q_critical")
    assert [e.step for e in logged] == [2, 3, 5, 6]
    assert logged[-1].value == pytest.approx(scal["pair_updates/q_critical"], rel=1e-6)
    # the Training tab draws the live records: the latest phase, critical pair marked
    from app.paths import root_of
    from app.views import training

    fig = training.pair_updates_view(root_of(tmp_path), ["run"])
    np.testing.assert_array_equal(fig.data[0].z, np.asarray(recs[-1]["q_rel_update"]).reshape(-1, 8))
    assert list(fig.data[1].y) == [5, 6] and fig.layout.shapes[0].x0 == 2.5
    assert training.pair_updates_view(root_of(tmp_path), []) is None


def test_track_every_is_validated():
    with pytest.raises(config.ConfigError, match="track_every"):
        config.from_dict(
            config.RunConfig,
            {
                "name": "t",
                "model": dict(STUDENT),
                "track_every": -1,
                "phases": [{"name": "a", "steps": 1, "seq_len": 64, "rope_theta": 100}],
            },
        )


def test_phase_start_snapshot_is_exact_float32():
    """The phase start is kept in float32 (half of float64's memory and file): the fp32 weights exactly."""
    from workbench.train.pair_tracking import snapshot

    model = models.build_model(config.ModelConfig(**STUDENT), seed=1)
    snap = snapshot(model)
    assert len(snap) == STUDENT["num_layers"] and all(t.dtype == torch.float32 for t in snap[0].values())
    assert torch.equal(snap[0]["q_proj.weight"], model.model.layers[0].self_attn.q_proj.weight.detach())


def test_tracked_critical_pair_follows_the_models_rope_scaling(tmp_path):
    """The critical pair a record marks is the first pair whose wavelength, as the model runs it, reaches the
    phase's window: Llama-3 scaling stretches the long wavelengths, so it comes earlier than theta alone says."""
    from transformers import LlamaConfig, LlamaForCausalLM

    def tracker(model, seq_len):
        return pair_tracking.PairTracker(
            tmp_path, 0, True, model, phase="a", start_step=0, step=0, theta=500000.0, seq_len=seq_len
        )

    shape = dict(vocab_size=64, hidden_size=128, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2)
    plain = LlamaForCausalLM(LlamaConfig(**shape, rope_parameters={"rope_type": "default", "rope_theta": 500000.0}))
    scaled = LlamaForCausalLM(
        LlamaConfig(
            **shape,
            max_position_embeddings=32768,
            rope_parameters={
                "rope_type": "llama3",
                "rope_theta": 500000.0,
                "factor": 8.0,
                "low_freq_factor": 1.0,
                "high_freq_factor": 4.0,
                "original_max_position_embeddings": 8192,
            },
        )  # fmt: skip
    )
    for length in (256, 4096, 20000):
        assert tracker(plain, length).critical == rope.critical_pair(500000.0, 64, length)
    wavelengths = 2 * np.pi / scaled.model.rotary_emb.inv_freq.double().numpy()  # transformers' own
    assert tracker(scaled, 20000).critical == int(np.argmax(wavelengths >= 20000))
    assert tracker(scaled, 20000).critical < rope.critical_pair(500000.0, 64, 20000)
