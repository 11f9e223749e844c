"""``workbench teacher-cache CONFIG --out DIR``: store the teacher's top-k log-probs for a run's KD phases."""

from __future__ import annotations

import argparse

from workbench.commands import add_device, add_threads, set_threads

HELP = "run a run config's teacher once over the run's data and store top-k log-probs (+ leftover mass) for KD"
DESCRIPTION = (
    HELP + ". Then set teacher.cache: DIR in the run config; the trainer reads the cache instead of "
    "running the teacher."
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", help="run config YAML with a teacher section and KD phases")
    p.add_argument("--out", required=True, help="cache directory to create (must not exist)")
    p.add_argument("--top-k", type=int, default=32, help="teacher tokens kept per position")
    p.add_argument("--world-size", type=int, default=1, help="cover the windows a run with this many ranks draws")
    p.add_argument("--batch-size", type=int, default=8, help="windows per teacher forward")
    add_threads(p)
    add_device(p)
    p.add_argument("--no-progress", action="store_true")


def run(args: argparse.Namespace) -> int:
    from workbench import models
    from workbench.config import load_run_config
    from workbench.train import teacher_cache

    set_threads(args)
    if args.world_size < 1 or args.batch_size < 1:
        raise ValueError("--world-size and --batch-size must be >= 1")
    args.device = str(models.pick_device(args.device))  # a bad device is one error before any work
    cfg = load_run_config(args.config)
    path = teacher_cache.build(
        cfg,
        args.out,
        k=args.top_k,
        world_size=args.world_size,
        batch_size=args.batch_size,
        device=args.device,
        progress=not args.no_progress,
    )
    print(f"teacher cache: {path}")
    return 0
