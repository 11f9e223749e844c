"""The main job: reproduce the paper's three findings at toy scale on CPU, end to end.

``workbench demo`` = :func:`workbench.demo.pipeline.run`: teacher -> {KD, CE} x {fixed small, fixed large,
phase-wise theta} students over seeds -> retrieval beyond the training length -> repeated-token experiment
and perturbation sweep -> per-pair updates between phases -> position probes -> store -> figures ->
REPORT.md -> dashboard.
"""

from workbench.demo.pipeline import DemoOptions, run

__all__ = ["DemoOptions", "run"]
