"""Learning-rate schedule: linear warmup then cosine decay, restarted at each phase (a pure function).

The schedule has no state besides the step, so exact resume needs only the step number.
"""

from __future__ import annotations

import math


def lr_at(step_in_phase: int, steps: int, lr: float, warmup_steps: int = 0, min_lr_ratio: float = 0.1) -> float:
    """LR for optimiser step ``step_in_phase`` (0-based) of a phase of ``steps`` steps.

    Warmup ramps linearly from lr/warmup to lr over ``warmup_steps``; cosine then decays to
    ``lr * min_lr_ratio`` at the phase's last step.
    """
    if step_in_phase < warmup_steps:
        return lr * (step_in_phase + 1) / warmup_steps
    decay_steps = max(steps - warmup_steps - 1, 1)
    progress = min((step_in_phase - warmup_steps) / decay_steps, 1.0)
    cosine = 0.5 * (1.0 + math.cos(math.pi * progress))
    return lr * (min_lr_ratio + (1.0 - min_lr_ratio) * cosine)
