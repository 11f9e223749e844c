"""One module per ``workbench`` subcommand: ``HELP``, ``add_arguments(parser)``, ``run(args) -> int``; the
command line runs each through :func:`workbench.user_errors.run_command`.

Each ``run`` imports the workbench modules it uses inside the function, the one place the house defers
imports of its own modules: ``workbench --help`` imports every command module, and those modules pull in
torch, transformers, xarray and dash, seconds of start-up that ``--help`` and argument errors do not need.
"""

from __future__ import annotations

import argparse

# analysis commands (trace, updates, probe, kd-signal, eval, teacher-cache) all default to this device
DEVICE_DEFAULT = "auto"
DEVICE_HELP = "where the models run: auto (this rank's CUDA device if there is one, else cpu), cpu, cuda, cuda:N"


def add_checkpoints(p: argparse.ArgumentParser) -> None:
    """The checkpoints a command reads, the same in every command that reads several: ``CKPT...`` (a run
    directory stands for all its complete checkpoints, ``workbench.checkpoints.expand``) and ``--phase-ends``."""
    p.add_argument(
        "checkpoints",
        nargs="+",
        metavar="CKPT",
        help="checkpoint directories (runs/<run>/ckpt-*, or plain Hugging Face model directories), "
        "or a run directory for all its checkpoints",
    )
    p.add_argument(
        "--phase-ends",
        action="store_true",
        help="keep only checkpoints whose manifest says phase_end (e.g. phase 1 end, phase 2 end)",
    )


def add_threads(p: argparse.ArgumentParser) -> None:
    """``--threads``, the same flag in every command that runs models on the CPU."""
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice, the cores)")


def set_threads(args: argparse.Namespace) -> None:
    """Apply ``--threads`` (one error for a count below 1)."""
    if args.threads is None:
        return
    if args.threads < 1:
        raise ValueError(f"--threads must be >= 1, got {args.threads}")
    import torch  # deferred as every command's run(): `workbench --help` needs no torch

    torch.set_num_threads(args.threads)


def add_device(p: argparse.ArgumentParser, note: str = "") -> None:
    """``--device``, the same flag and default in every analysis command."""
    p.add_argument("--device", default=DEVICE_DEFAULT, help=DEVICE_HELP + note)
