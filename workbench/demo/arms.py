"""The demo's experimental arms: {KD, CE} x {fixed small theta, fixed large theta, phase-wise theta} x seeds.

Every arm is one of the shipped tiny student configs (``data/configs/tiny-<objective>-<schedule>.yaml``), so
what the demo trains is exactly what a user gets from ``workbench train`` on that file; the demo only sets the
seed, the run directory, the teacher path and (for ``--quick``) scales the step counts down.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

from workbench import config

REPO = Path(__file__).resolve().parents[2]
CONFIGS = REPO / "data" / "configs"
SHIPPED_TEACHER = REPO / "data" / "teacher" / "tiny-teacher"
TEACHER_CONFIG = CONFIGS / "tiny-teacher.yaml"

OBJECTIVES = ("kd", "ce")
SCHEDULES = ("fixed-small", "fixed-large", "phasewise")


@dataclass(frozen=True)
class Arm:
    """One training arm of the demo (a config file) with one seed."""

    objective: str
    schedule: str
    seed: int
    variant: str = ""  # ablation variant, e.g. "posfree-reset" or "freeze-long-band"

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
        return CONFIGS / f"tiny-{self.objective}-{self.schedule}.yaml"


def arms(seeds: int, objectives=OBJECTIVES, schedules=SCHEDULES) -> list[Arm]:
    return [Arm(o, s, seed) for o in objectives for s in schedules for seed in range(seeds)]


def arm_config(arm: Arm, *, teacher: Path, step_scale: float = 1.0, teacher_positions: str = "same",
               freeze_wavelengths: list[float] | None = None) -> config.RunConfig:
    """The RunConfig of an arm: its shipped config with seed, name, teacher and scaled steps set; the
    ablations set the teacher's positions ("reset": position-invariant targets) or freeze a band of RoPE
    pairs in the last (extension) phase."""
    cfg = config.load_run_config(arm.config_path)
    phases = [dataclasses.replace(ph, steps=max(2, round(ph.steps * step_scale)),
                                  warmup_steps=min(ph.warmup_steps, max(1, round(ph.steps * step_scale) // 4)))
              for ph in cfg.phases]
    if freeze_wavelengths is not None:
        phases[-1] = dataclasses.replace(phases[-1], freeze_wavelengths=list(freeze_wavelengths))
    teacher_cfg = (dataclasses.replace(cfg.teacher, path=str(teacher), positions=teacher_positions)
                   if cfg.teacher else None)
    cfg = dataclasses.replace(cfg, name=arm.name, seed=arm.seed, phases=phases, teacher=teacher_cfg)
    config.validate(cfg)
    return cfg
