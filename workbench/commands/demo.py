"""``workbench demo``: the whole chain on tiny models, on CPU, in minutes."""

from __future__ import annotations

import argparse
from pathlib import Path

HELP = "reproduce the paper's findings at toy scale: train, evaluate, trace, analyse, report, serve"
DESCRIPTION = (
    HELP + ". Trains KD and CE students under three theta schedules from the shipped tiny teacher, "
    "evaluates retrieval beyond the training length, runs the repeated-token experiment, a perturbation "
    "sweep, per-pair update analysis and position probes, writes figures and REPORT.md, then serves the "
    "dashboard. Re-running reuses everything already computed."
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", type=Path, default=Path("runs/demo"), help="run directory (reused if present)")
    p.add_argument("--seeds", type=int, default=None, help="seeds per arm (default 3; 1 with --quick)")
    p.add_argument(
        "--prompts",
        type=int,
        default=32,
        help="retrieval prompts per (checkpoint, task, length) cell, spread over depths 0-100 %%",
    )
    p.add_argument("--quick", action="store_true", help="a smoke run: few steps, small grids, one seed (~2 minutes)")
    p.add_argument("--full", action="store_true", help="also run the causal ablations")
    p.add_argument("--teacher", type=Path, default=None, help="teacher checkpoint (default: the shipped tiny teacher)")
    p.add_argument("--no-serve", action="store_true", help="do not start the dashboard at the end")
    p.add_argument("--port", type=int, default=8050, help="dashboard port (127.0.0.1)")
    p.add_argument("--jobs", type=int, default=2, help="arms trained in parallel (worker processes, 1 thread each)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def run(args: argparse.Namespace) -> int:
    seeds = args.seeds if args.seeds is not None else (1 if args.quick else 3)
    if seeds < 1 or args.jobs < 1 or args.prompts < 1:
        raise ValueError(f"--seeds, --jobs and --prompts must be >= 1, got {seeds}, {args.jobs}, {args.prompts}")
    from workbench.demo import DemoOptions
    from workbench.demo import run as run_demo

    report, _ = run_demo(
        DemoOptions(
            out=args.out,
            seeds=seeds,
            prompts=args.prompts,
            quick=args.quick,
            full=args.full,
            teacher=args.teacher,
            progress=not args.no_progress,
            jobs=args.jobs,
        )
    )
    print(f"\nreport: {report}")
    if not args.no_serve:
        from app.main import serve

        print(f"dashboard: http://127.0.0.1:{args.port}/  (Ctrl-C to stop)")
        serve(args.out, host="127.0.0.1", port=args.port)
    return 0
