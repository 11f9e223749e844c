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
    plan = p.add_argument_group("planning (--plan: print each phase's estimated memory per GPU, train nothing)")
    plan.add_argument(
        "--plan",
        action="store_true",
        help="print every phase's estimated peak memory per GPU against the budget and exit (0: every phase "
        "fits, 2: one does not); reads the config and the teacher's config.json only, so it runs on a laptop",
    )
    plan.add_argument("--world-size", type=int, default=None, help="ranks to plan for (default: $WORLD_SIZE or 1)")
    plan.add_argument(
        "--device", choices=["cpu", "cuda"], default=None, help="device to plan for (default: the config's)"
    )
    plan.add_argument(
        "--gpu-memory",
        type=float,
        default=None,
        metavar="GIB",
        help="memory of one GPU in GiB, for planning on a machine without it (e.g. 80 for an H100; default: this "
        "machine's GPU, or $WORKBENCH_MEMORY_BUDGET_GB as the budget itself; not both)",
    )


def run(args: argparse.Namespace) -> int:
    # deferred: `workbench --help` imports this module, and these pull in torch and transformers
    from workbench.config import load_run_config
    from workbench.evals.runner import check_training_eval, training_eval
    from workbench.train import TrainingDiverged, train

    cfg = load_run_config(args.config)
    if args.plan:
        return print_plan(cfg, args)
    # torchtitan's allocator setting for long windows (fewer fragmentation OOMs); read at the first CUDA allocation,
    # PYTORCH_CUDA_ALLOC_CONF before its newer name PYTORCH_ALLOC_CONF: a user's setting under either is kept
    if not os.environ.get("PYTORCH_ALLOC_CONF"):
        os.environ.setdefault("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True")
    if (args.world_size, args.device, args.gpu_memory) != (None, None, None):
        raise ValueError(
            "--world-size, --device and --gpu-memory plan a run: use them with --plan (a run trains on the config's "
            "device, over the ranks torchrun starts)"
        )
    check_training_eval(cfg, args.config)
    try:
        run_dir = train(cfg, out=args.out, resume=args.resume, progress=not args.no_progress, evaluate=training_eval)
    except TrainingDiverged as exc:
        print(f"workbench train: stopped: {exc}", file=sys.stderr)
        return 1
    if os.environ.get("RANK", "0") == "0":
        print(f"run directory: {run_dir}")
    return 0


def print_plan(cfg, args: argparse.Namespace) -> int:
    """``--plan``: one line per phase (the estimate's parts and the budget), 0 if every phase fits, else 2."""
    import torch

    from workbench import budget, models
    from workbench.train.rundir import TRAIN_CUDA_FRACTION, phase_memory

    world = args.world_size if args.world_size is not None else int(os.environ.get("WORLD_SIZE", "1"))
    if world < 1:
        raise ValueError(f"--world-size must be >= 1, got {world}")
    if args.device or cfg.device == "auto":
        device = args.device or models.pick_device("auto").type
    else:  # the config's device, whether or not this machine has it (a cluster run planned on a laptop)
        device = "cuda" if cfg.device.startswith("cuda") else models.pick_device(cfg.device).type
    if args.gpu_memory is not None and (device != "cuda" or not args.gpu_memory > 0):
        raise ValueError("--gpu-memory GIB (> 0) plans a CUDA run: use it with --device cuda")
    if args.gpu_memory is not None and os.environ.get("WORKBENCH_MEMORY_BUDGET_GB"):
        raise ValueError("--gpu-memory and WORKBENCH_MEMORY_BUDGET_GB both give the budget: unset one")
    if args.gpu_memory is not None:
        limit = TRAIN_CUDA_FRACTION * args.gpu_memory * 2**30
        source = f"{100 * TRAIN_CUDA_FRACTION:.0f} % of --gpu-memory {args.gpu_memory:g} GiB"
    elif device == "cuda" and not torch.cuda.is_available() and not os.environ.get("WORKBENCH_MEMORY_BUDGET_GB"):
        raise ValueError("planning a CUDA run on a machine without a GPU: give --gpu-memory GIB (one GPU's memory)")
    else:
        limit = budget.memory_budget(device, cuda_fraction=TRAIN_CUDA_FRACTION)
        source = budget.budget_source(device, TRAIN_CUDA_FRACTION)
    rows = phase_memory(cfg, world, device)
    gib = 2**30
    print(
        f"plan: {cfg.name}, {world} rank{'s' if world > 1 else ''} on {device}, micro-batch "
        f"{cfg.optim.micro_batch_size}, budget {limit / gib:,.1f} GiB per {'GPU' if device == 'cuda' else 'process'} "
        f"({source}); estimated peak per rank (workbench.train.memory, fitted to H200 peaks: docs/gpu.md)"
    )
    unit, size = ("GiB", gib) if max(r.total for r in rows) >= gib else ("MiB", 2**20)  # tiny CPU runs read in MiB
    parts = ("weights+AdamW", "teacher", "gathered", "kept act.", "loss|backward", "mask", "total")
    header = ("phase", "seq_len", *(f"{p} {unit}" for p in parts))
    table = [header] + [
        (
            r.name,
            f"{r.seq_len:,}",
            *(f"{getattr(r.step, k) / size:.1f}" for k in ("states", "teacher", "gathered", "stored", "working")),
            f"{r.mask / size:.1f}",
            f"{r.total / size:.1f}" + ("" if r.total <= limit else "  OVER"),
        )
        for r in rows
    ]
    widths = [max(len(row[c]) for row in table) for c in range(len(header))]
    for row in table:
        print("  ".join(cell.rjust(w) if c else cell.ljust(w) for c, (cell, w) in enumerate(zip(row, widths))))
    over = [r for r in rows if r.total > limit]
    for r in over:
        print(
            f"workbench train --plan: phases[{r.index}] ({r.name}) needs about {r.total / gib:,.1f} GiB, over the "
            f"{limit / gib:,.1f} GiB budget: lower seq_len or optim.micro_batch_size, add ranks, or a teacher.cache",
            file=sys.stderr,
        )
    return 2 if over else 0


def main(argv: list[str] | None = None) -> int:
    """``python -m workbench.train``: the train command alone, with the ``workbench`` command's error handling."""
    parser = argparse.ArgumentParser(
        prog="torchrun -m workbench.train",
        description=DESCRIPTION,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    add_arguments(parser)
    return run_command("train", run, parser.parse_args(argv))
