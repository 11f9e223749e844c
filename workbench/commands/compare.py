"""``workbench compare``: group runs into arms (seed apart) and report means, intervals, paired differences."""

from __future__ import annotations

import argparse
from pathlib import Path

HELP = "arms (runs equal up to the seed): retrieval means with bootstrap intervals and paired differences"
DESCRIPTION = (
    "Reads the retrieval group of a store (from `workbench eval`), groups its checkpoints into arms by their "
    "runs' resolved configs (run.yaml without name/seed/out_dir; the last checkpoint of each run), and "
    "writes per arm x task x length the mean with a hierarchical bootstrap interval (seeds, then prompts "
    "within each seed) to the group arm_retrieval, and paired differences A - B (same prompts, same seed "
    "index) to arm_comparisons, and effective lengths (RULER: accuracy >= --threshold; NoLiMa: >= --fraction of "
    "its own score at the shortest length) with intervals to arm_effective_length. Checkpoints outside run "
    "directories (a teacher, a plain HF model) are "
    "reported on their own. Default comparisons: KD - CE for every pair of arms named kd-X / ce-X."
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "store",
        nargs="?",
        default=None,
        metavar="STORE",
        help="results store (*.zarr) with a retrieval group (or --store STORE)",
    )
    p.add_argument(
        "--store",
        dest="store_flag",
        default=None,
        metavar="STORE",
        help="the input store as a flag, as in the analyses' figure scripts",
    )
    p.add_argument("--out", default=None, help="store to write the summaries into (default: the input store)")
    p.add_argument(
        "--compare",
        action="append",
        default=[],
        metavar="'A - B'",
        help="a paired difference between two arms (repeatable); default: every kd-X - ce-X",
    )
    p.add_argument("--metric", default="correct", help="per-sample retrieval variable (correct, match_all, ...)")
    p.add_argument("--boot", type=int, default=2000, help="bootstrap resamples")
    p.add_argument("--level", type=float, default=0.95, help="interval level")
    p.add_argument("--seed", type=int, default=0, help="bootstrap seed")
    p.add_argument(
        "--threshold",
        type=float,
        default=0.5,
        help="effective length (RULER): longest length whose accuracy stays >= this",
    )
    p.add_argument(
        "--fraction",
        type=float,
        default=0.85,
        help="effective length (NoLiMa): longest length whose accuracy stays >= this x its own at the shortest length",
    )


def run(args: argparse.Namespace) -> int:
    from workbench import arms, store
    from workbench.evals import effective_length

    if args.boot < 100 or not 0.5 <= args.level < 1:
        raise ValueError(f"--boot must be >= 100 and --level in [0.5, 1), got {args.boot}, {args.level}")
    effective_length.check(args.threshold, args.fraction)
    if args.store and args.store_flag and Path(args.store) != Path(args.store_flag):
        raise ValueError(f"two input stores: STORE {args.store} and --store {args.store_flag}; give one")
    args.store = args.store or args.store_flag
    if not args.store:
        raise ValueError("compare needs its input store: workbench compare STORE (or --store STORE)")
    pairs = [arms.parse_comparison(c) for c in args.compare]
    ds = store.open_group(args.store, store.RETRIEVAL).load()
    if args.metric not in ds:
        raise ValueError(
            f"--metric {args.metric!r}: not a variable of {args.store}/{store.RETRIEVAL} "
            f"(has {', '.join(ds.data_vars)})"
        )
    groups, refs = arms.retrieval_arms(ds)
    pairs = pairs or arms.objective_pairs(groups)
    kw = dict(metric=args.metric, n_boot=args.boot, level=args.level, seed=args.seed)
    summary = arms.retrieval_summary(ds, **kw)
    comparisons = arms.retrieval_comparisons(ds, pairs, **kw) if pairs else None
    eff = arms.effective_length_summary(ds, threshold=args.threshold, fraction=args.fraction, **kw)
    out = Path(args.out or args.store)
    store.save(out, store.ARM_RETRIEVAL, summary)
    if comparisons is not None:
        store.save(out, store.ARM_COMPARISONS, comparisons)
    store.save(out, store.ARM_EFFECTIVE_LENGTH, eff)
    print(arms.summary_markdown(summary, args.metric))
    if comparisons is not None:
        print()
        print(arms.comparisons_markdown(comparisons))
    print()
    print(effective_length.markdown(eff))
    print(f"\narms: {', '.join(groups) or 'none'}; references: {', '.join(refs) or 'none'}; written to {out}")
    return 0
