"""``workbench eval``: long-context retrieval grids (passkey, NIAH, RULER-style) for checkpoints, into a store."""

from __future__ import annotations

import argparse
from pathlib import Path

from workbench.commands import add_checkpoints, add_device, add_threads, set_threads

HELP = "evaluate checkpoints on passkey / NIAH / RULER-style retrieval grids and write the store's 'retrieval' group"
DESCRIPTION = (
    HELP + ". Tasks: passkey, niah, multikey, multivalue, multiquery, vt. Checkpoints on the 128-token "
    "synthetic vocabulary are evaluated in its language; others with the tokenizer in their directory "
    "(or --tokenizer) and RULER text templates. New checkpoints are appended to an existing store."
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_checkpoints(p)
    p.add_argument("--tasks", default="passkey,niah", help="comma-separated tasks")
    p.add_argument("--lengths", default="256,512,1024", help="comma-separated prompt lengths in tokens")
    p.add_argument("--depths", type=int, default=5, help="number of needle depths, evenly spaced over 0-100 %%")
    p.add_argument("--samples", type=int, default=8, help="samples per (task, length, depth) cell")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="Zarr store (default: results.zarr in the first checkpoint's run dir)")
    p.add_argument(
        "--figure",
        default=None,
        metavar="PATH",
        help="also write the depth x length accuracy heatmap to PATH.html / PATH.png",
    )
    p.add_argument(
        "--figure-task",
        default=None,
        metavar="TASK",
        help="task drawn in the heatmap (default: accuracy averaged over all evaluated tasks)",
    )
    p.add_argument(
        "--extrapolate",
        action="store_true",
        help="allow lengths beyond the positions a checkpoint was trained with (recorded in the results)",
    )
    p.add_argument(
        "--tokenizer",
        default="auto",
        help="'auto', 'synthetic' or a local tokenizer directory (auto: the checkpoint's own, else synthetic)",
    )
    add_device(p)
    p.add_argument(
        "--dtype", default="auto", help="auto (bfloat16 on CUDA, float32 on CPU), float32, bfloat16, float16"
    )
    p.add_argument(
        "--batch-size",
        type=int,
        default=None,
        help="prompts per batch (default: about 4k prompt tokens per batch on CPU, 128k on CUDA)",
    )
    add_threads(p)


def _ints(text: str, what: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise ValueError(f"--{what} must be comma-separated integers, got {text!r}") from None


def run(args: argparse.Namespace) -> int:
    from workbench import checkpoints, store
    from workbench.evals import grid
    from workbench.evals.tasks import parse_tasks

    set_threads(args)
    if args.batch_size is not None and args.batch_size < 1:
        raise ValueError(f"--batch-size must be >= 1, got {args.batch_size}")
    tasks = parse_tasks(args.tasks)  # the request's own errors before the checkpoints'
    if args.figure_task is not None and args.figure_task not in tasks:
        raise ValueError(f"--figure-task {args.figure_task!r} is not one of the evaluated --tasks {args.tasks!r}")
    lengths = _ints(args.lengths, "lengths")
    paths = checkpoints.expand(args.checkpoints, args.phase_ends)
    out = Path(args.out) if args.out else paths[0].resolve().parent / "results.zarr"
    plan = grid.plan(
        paths,
        tasks=tasks,
        lengths=lengths,
        depths=args.depths,
        samples=args.samples,
        seed=args.seed,
        extrapolate=args.extrapolate,
        tokenizer=args.tokenizer,
        store=out,
    )
    ds = grid.evaluate_plan(plan, device=args.device, dtype=args.dtype, batch_size=args.batch_size)
    store.save(out, store.RETRIEVAL, ds)
    acc = grid.accuracy(ds, over=("depth", "sample"))
    for ckpt in acc["checkpoint"].values:
        for task in acc["task"].values:
            cells = "  ".join(
                f"{int(n)}:{acc.sel(checkpoint=ckpt, task=task, length=n).item():.2f}" for n in acc["length"].values
            )
            print(f"{ckpt}  {task:<10} accuracy by length  {cells}")
    print(f"wrote {len(plan.checkpoints)} checkpoint(s) to {out} (group '{store.RETRIEVAL}')")
    if args.figure:
        from workbench.figures import retrieval, save_figure

        draw = retrieval.heatmaps if ds.sizes["checkpoint"] > 1 else retrieval.heatmap
        fig = draw(ds, task=args.figure_task)
        for path in save_figure(fig, args.figure):
            print(f"wrote {path}")
    return 0
