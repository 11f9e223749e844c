"""Training as a program: the flags, the run with the retrieval check as its evaluation callback, and the exit
status, shared by ``workbench train`` (:mod:`workbench.commands.train`) and ``python -m workbench.train``
(torchrun's entry point, which runs it without the ``workbench`` command line):

    torchrun --standalone --nproc_per_node 8 -m workbench.train data/configs/paper-kd-phasewise.yaml

It wires the trainer to the evaluations, so it sits above both in the data flow, beside the command line but
not part of it. Light to import (``workbench --help`` reads its flags): what it runs is imported when it runs.
"""

from __future__ import annotations

import argparse
import os
import sys

from workbench.user_errors import run_command

HELP = "train a student (CE or logit KD from a frozen teacher) through phases of window length and RoPE theta"
DESCRIPTION = (
    HELP + ". Single process here; multi-GPU: torchrun --nproc_per_node N -m workbench.train CONFIG. "
    "Writes runs/<name>/ (run.yaml, metrics.jsonl, ckpt-<step>/)."
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", help="run config YAML (e.g. data/configs/tiny-kd-phasewise.yaml)")
    p.add_argument("--resume", action="store_true", help="continue from the latest complete checkpoint of the run")
    p.add_argument("--out", default=None, help="run directory (default: the config's out_dir, else runs/<name>)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    # deferred: `workbench --help` imports this module, and these pull in torch and transformers
    from workbench.config import load_run_config
    from workbench.evals.runner import check_training_eval, training_eval
    from workbench.train import TrainingDiverged, train

    cfg = load_run_config(args.config)
    check_training_eval(cfg, args.config)
    try:
        run_dir = train(cfg, out=args.out, resume=args.resume, progress=not args.no_progress, evaluate=training_eval)
    except TrainingDiverged as exc:
        print(f"workbench train: stopped: {exc}", file=sys.stderr)
        return 1
    if os.environ.get("RANK", "0") == "0":
        print(f"run directory: {run_dir}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python -m workbench.train``: the train command alone, with the ``workbench`` command's error handling."""
    parser = argparse.ArgumentParser(
        prog="torchrun -m workbench.train",
        description=DESCRIPTION,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    add_arguments(parser)
    return run_command("train", run, parser.parse_args(argv))
