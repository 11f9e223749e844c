"""The demo's own pieces: arm naming, aggregation by arm, eval-time band interventions vs the interp engine."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import xarray as xr

from workbench import checkpoint_io, models
from workbench.arms import parse_arm
from workbench.config import ModelConfig
from workbench.demo import ablations, findings
from workbench.demo.arms import arm_config, arms


def test_arms_cover_objectives_schedules_seeds_and_share_a_token_budget(tmp_path):
    todo = arms(2)
    assert len(todo) == 12 and len({a.name for a in todo}) == 12
    budgets = set()
    for arm in todo[::2]:
        cfg = arm_config(arm, teacher=tmp_path)
        assert cfg.seed == arm.seed and cfg.name == arm.name
        assert all(ph.objective == arm.objective for ph in cfg.phases)
        assert cfg.data.packing.positions == "continue"
        budgets.add(sum(ph.steps * ph.seq_len for ph in cfg.phases))
        start = checkpoint_io.read_manifest(cfg.init_from)["rope_theta"]  # the stage-1 student it extends
        assert (start < cfg.phases[-1].rope_theta) == (arm.schedule == "phasewise")
        assert (start == 500.0) == (arm.schedule != "fixed-large")
    assert len(budgets) == 1, f"arms must have the same token budget, got {budgets}"
    parsed = parse_arm(f"{todo[3].name}/ckpt-000090")
    assert parsed.is_protocol_arm and (parsed.arm, parsed.seed) == (todo[3].group, todo[3].seed)
    assert not parse_arm("teacher/tiny-teacher").is_protocol_arm


def test_by_arm_aggregates_seeds_and_drops_the_teacher():
    names = ["teacher/tiny-teacher", "kd-phasewise-s0/ckpt-9", "kd-phasewise-s1/ckpt-9", "ce-fixed-small-s0/ckpt-9"]
    da = xr.DataArray(
        np.array([[1.0, 1.0], [0.5, 0.25], [0.7, 0.35], [0.1, 0.0]]),
        dims=("checkpoint", "length"),
        coords={"checkpoint": names, "length": [256, 1024]},
    )
    out = findings.by_arm(da, "checkpoint")
    assert list(out["arm"].values) == ["kd-phasewise", "ce-fixed-small"]
    assert out.sel(arm="kd-phasewise", length=1024).values.tolist() == [0.25, 0.35]
    assert np.isnan(out.sel(arm="ce-fixed-small", seed=1)).all()
    assert findings.fmt_mean_std([0.5, 0.7]) == "0.60 ± 0.14"


def test_pair_trend_sign():
    upd = xr.Dataset(
        {
            "q_rel_update": (
                ("comparison", "layer", "head", "pair"),
                np.arange(8, dtype=float).reshape(1, 1, 1, 8) * np.ones((2, 2, 3, 1)),
            )
        },
        coords={"comparison": ["a -> b", "c -> d"]},
    )
    upd["q_rel_update"][1] = upd["q_rel_update"][1][..., ::-1].values
    assert findings.pair_trend(upd).values.tolist() == pytest.approx([1.0, -1.0])


@pytest.fixture(scope="module")
def gqa_checkpoint(tmp_path_factory):
    cfg = ModelConfig(
        vocab_size=128,
        hidden_size=64,
        num_layers=2,
        num_heads=4,
        num_kv_heads=2,
        head_dim=16,
        intermediate_size=128,
        max_position_embeddings=2048,
        rope_theta=500.0,
    )
    path = tmp_path_factory.mktemp("abl") / "ckpt-000001"
    checkpoint_io.save_checkpoint(models.build_model(cfg, seed=5), path, {"step": 1})
    return path


@pytest.mark.parametrize("op", ["zero", "rotate"])
def test_band_intervention_equals_the_engines_post_rope_edit(gqa_checkpoint, op):
    """Editing q_proj/k_proj outputs (pre-RoPE) must equal the nnsight engine's edit of post-RoPE q/k."""
    from workbench import interventions
    from workbench.interventions.specs import PairSet

    pairs = [5, 6, 7]
    model, _ = checkpoint_io.load(gqa_checkpoint)
    ids = torch.randint(0, 128, (1, 300), generator=torch.Generator().manual_seed(0))
    pos = torch.arange(300)[None]
    target = "both" if op == "zero" else "q"  # rotating q and k alike would leave q.k unchanged
    with torch.no_grad():
        clean = model(ids, position_ids=pos).logits
        with ablations.band_intervention(model, pairs, op, angle=math.pi / 3, target=target):
            hooked = model(ids, position_ids=pos).logits
        again = model(ids, position_ids=pos).logits
    edit = (
        interventions.zero("both", pairs=PairSet(indices=pairs))
        if op == "zero"
        else interventions.rotate(math.pi / 3, "q", pairs=PairSet(indices=pairs))
    )
    engine = interventions.load_backend(gqa_checkpoint, "nnsight").run(ids, pos, [interventions.Spec("edit", [edit])])[
        0
    ]["logits"]
    assert (hooked - clean).abs().max() > 1e-3
    torch.testing.assert_close(hooked, engine.to(hooked.dtype), atol=1e-4, rtol=0)
    assert torch.equal(again, clean), "hooks must be removed on exit"


def test_band_conditions_are_interp_specs():
    """The band intervention is the engines' spec (one pair edit): zero/rotate of PairSet(indices), identity
    for no pairs."""
    from workbench import interventions
    from workbench.interventions.specs import PairSet

    got = ablations.band_spec([5, 6, 7], "rotate", math.pi / 3, "q")
    want = interventions.Spec("x", [interventions.rotate(math.pi / 3, "q", pairs=PairSet(indices=[5, 6, 7]))])
    assert got.ops_json() == want.ops_json()
    assert (
        ablations.band_spec(np.array([1, 2]), "zero").ops_json()
        == interventions.Spec("x", [interventions.zero("both", pairs=PairSet(indices=[1, 2]))]).ops_json()
    )
    assert ablations.band_spec([], "zero").is_identity


def test_band_conditions_split_pairs_by_document_length():
    conds = ablations.band_conditions(10000.0, 32, 256)
    short, long = conds["zero lambda<=256"][2], conds["zero lambda>256"][2]
    assert sorted(short.tolist() + long.tolist()) == list(range(16))
    from workbench import rope

    assert (rope.wavelengths(10000.0, 32)[long] > 256).all()
    with pytest.raises(ValueError, match="op must be"):
        with ablations.band_intervention(torch.nn.Module(), [], "warp"):
            pass


def test_report_flags_a_task_the_teacher_guesses_at():
    """A multi-key task the teacher answers at the guessing rate (1/4) gets a warning; one it solves does not."""
    import numpy as np
    import xarray as xr

    from workbench.demo.report import teacher_at_chance

    arms = np.array(["teacher/t", "kd-a"], dtype=object)
    lengths = np.array([256, 1024])

    def summary(teacher_mean: float, half_width: float) -> xr.Dataset:
        mean = np.array([[[teacher_mean] * 2], [[0.5] * 2]])  # (arm, task, length)
        return xr.Dataset(
            {
                "correct": (("arm", "task", "length"), mean),
                "correct_lo": (("arm", "task", "length"), mean - half_width),
                "correct_hi": (("arm", "task", "length"), mean + half_width),
            },
            coords={"arm": arms, "task": np.array(["multikey"], dtype=object), "length": lengths},
        )

    note = teacher_at_chance(summary(0.27, 0.1), ["teacher/t"], "multikey")
    assert len(note) == 1 and "guessing rate (1/4 = 0.25" in note[0]
    assert teacher_at_chance(summary(0.9, 0.05), ["teacher/t"], "multikey") == []
    assert teacher_at_chance(summary(0.27, 0.1), [], "multikey") == []  # no teacher: nothing to say
    assert teacher_at_chance(summary(0.27, 0.1).assign_coords(task=["niah"]), ["teacher/t"], "niah") == []
