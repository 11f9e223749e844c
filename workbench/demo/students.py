"""The students the demo trains: {KD, CE} x {fixed small theta, fixed large theta, phase-wise theta} x seeds.

Stage 2 of the paper's protocol: every arm extends a shipped stage-1 (short-context) student
(``data/students/``, recipes in ``data/configs/stage1/``) to the long window. Every arm is one of the shipped
configs (``data/configs/tiny-<objective>-<schedule>.yaml``, ablations in ``data/configs/ablations/``), so what
the demo trains is exactly what a user gets from ``workbench train`` on that file; the demo only sets the
seed, the run directory, absolute teacher / stage-1 paths and (for ``--quick``) scales the step counts down.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

from workbench import config
from workbench.arms import OBJECTIVES, SCHEDULES

REPO = Path(__file__).resolve().parents[2]
CONFIGS = REPO / "data" / "configs"
SHIPPED_TEACHER = REPO / "data" / "teacher" / "tiny-teacher"
TEACHER_CONFIG = CONFIGS / "tiny-teacher.yaml"
STUDENTS = REPO / "data" / "students"  # the shipped stage-1 students
STAGE1_CONFIGS = CONFIGS / "stage1"

TRACKS = 8  # pair-update records per run (track_every = total steps / TRACKS): F3 over training steps


@dataclass(frozen=True)
class Arm:
    """One student run of the demo: a training arm (a shipped config file) with one seed."""

    objective: str
    schedule: str
    seed: int
    variant: str = ""  # ablation variant: "posfree" or "freeze-long" (data/configs/ablations/)

    @property
    def group(self) -> str:
        """The arm without its seed: what the results table aggregates over."""
        base = f"{self.objective}-{self.schedule}"
        return f"{base}+{self.variant}" if self.variant else base

    @property
    def name(self) -> str:
        return f"{self.group}-s{self.seed}"

    @property
    def config_path(self) -> Path:
        base = f"tiny-{self.objective}-{self.schedule}"
        return CONFIGS / "ablations" / f"{base}-{self.variant}.yaml" if self.variant else CONFIGS / f"{base}.yaml"


def arms(seeds: int, objectives=OBJECTIVES, schedules=SCHEDULES) -> list[Arm]:
    return [Arm(o, s, seed) for o in objectives for s in schedules for seed in range(seeds)]


def arm_config(arm: Arm, *, teacher: Path, step_scale: float = 1.0) -> config.RunConfig:
    """The RunConfig of an arm: its shipped config with seed, name, absolute teacher and stage-1 paths and
    scaled steps (``--quick``) set."""
    cfg = config.load_run_config(arm.config_path)
    phases = [
        dataclasses.replace(
            ph,
            steps=max(2, round(ph.steps * step_scale)),
            warmup_steps=min(ph.warmup_steps, max(1, round(ph.steps * step_scale) // 4)),
        )
        for ph in cfg.phases
    ]
    teacher_cfg = dataclasses.replace(cfg.teacher, path=str(teacher)) if cfg.teacher else None
    init = str(REPO / cfg.init_from) if cfg.init_from and not Path(cfg.init_from).is_absolute() else cfg.init_from
    total = sum(ph.steps for ph in phases)
    eval_every = cfg.eval_every if step_scale == 1.0 else max(1, total // 2)  # scaled runs: two held-out evals
    cfg = dataclasses.replace(
        cfg,
        name=arm.name,
        seed=arm.seed,
        phases=phases,
        teacher=teacher_cfg,
        init_from=init,
        eval_every=eval_every if cfg.eval_every else 0,
        track_every=cfg.track_every or max(1, total // TRACKS),
    )
    config.validate(cfg)
    return cfg


def stage1_student(theta: float) -> Path:
    """The shipped stage-1 student trained at ``theta``."""
    return STUDENTS / f"tiny-student-short-theta{theta:g}"
