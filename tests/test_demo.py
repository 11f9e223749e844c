"""The demo's own pieces: the students it trains and their names, the F3 trend, the report's warnings."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr

from workbench import checkpoint_io
from workbench.arms import parse_arm
from workbench.demo import findings
from workbench.demo.students import arm_config, arms


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


def test_report_verdicts_come_from_intervals_over_seeds():
    """One seed has no interval over seeds: no verdict and no [x, x]; several seeds: the verdict of the
    intervals, a contradiction said as such."""
    from workbench.demo.report import _over_seeds, _seed_verdict
    from workbench.stats import Interval

    below, across = Interval(-0.5, -0.8, -0.2, 0.0), Interval(0.1, -0.2, 0.4, 0.7)
    assert "not tested" in _seed_verdict([below], 1)
    assert _over_seeds(below, 1) == "-0.50"
    assert _over_seeds(below, 3) == "-0.50 [-0.80, -0.20]"
    assert "contradicted" in _seed_verdict([below, below], 3)
    assert "inconclusive" in _seed_verdict([across], 3)
    assert "supported" in _seed_verdict([Interval(0.5, 0.2, 0.8, 1.0)], 3)


def test_report_kd_vs_ce_verdict_reads_only_the_lengths_beyond_the_documents(tmp_path):
    """The KD vs CE verdict is 'beyond the 256-token documents': a difference at 128 or 256 does not enter it."""
    from workbench import store as wstore
    from workbench.demo.report import f1_section

    lengths = np.array([128, 256, 512])
    arm_names = np.array(["kd-phasewise", "ce-phasewise"], dtype=object)
    ones = np.ones((2, 1, 3))
    summary = xr.Dataset(
        {v: (("arm", "task", "length"), ones) for v in ("correct", "correct_lo", "correct_hi")},
        coords={
            "arm": arm_names,
            "task": np.array(["niah"], dtype=object),
            "length": lengths,
            "is_reference": ("arm", np.array([False, False])),
            "n_seeds": ("arm", np.array([3, 3])),
        },
    )
    diff = np.array([[[0.5, 0.5, -0.3]]])  # KD above CE inside the documents, below beyond them
    comp = xr.Dataset(
        {"difference": (("comparison", "task", "length"), diff)}
        | {f"difference_{s}": (("comparison", "task", "length"), diff + d) for s, d in (("lo", -0.1), ("hi", 0.1))},
        coords={
            "comparison": np.array(["kd-phasewise - ce-phasewise"], dtype=object),
            "task": np.array(["niah"], dtype=object),
            "length": lengths,
        },
    )
    store = tmp_path / "s.zarr"
    wstore.save(store, wstore.ARM_RETRIEVAL, summary)
    wstore.save(store, wstore.ARM_COMPARISONS, comp)
    (line,) = [x for x in f1_section(store, {}, tmp_path) if x.startswith("- **KD vs CE**")]
    assert "**contradicted**" in line, line
