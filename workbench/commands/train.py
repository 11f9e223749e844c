"""``workbench train CONFIG.yaml [--resume]``: phase-wise CE / logit-KD training (see workbench.train).

The command is :mod:`workbench.launch`, which ``python -m workbench.train`` (torchrun's entry point) runs too,
without the ``workbench`` command line around it.
"""

from __future__ import annotations

from workbench.launch import DESCRIPTION, HELP, add_arguments, run

__all__ = ["DESCRIPTION", "HELP", "add_arguments", "run"]
