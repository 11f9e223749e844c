"""``workbench probe``: position probes per layer and the per-pair attention-score decomposition."""

from __future__ import annotations

import argparse
from pathlib import Path

from workbench.commands import add_checkpoints, add_device, add_threads, set_threads

HELP = "position probes (residual stream -> absolute position, per layer) and per-pair score decomposition"
DESCRIPTION = (
    "For each checkpoint: fit scikit-learn probes from the residual stream at every layer to the absolute "
    "position of packed probe windows (ridge on log position: held-out R^2; logistic on position buckets: "
    "held-out accuracy), and split the attention scores into per-RoPE-pair terms by relative-distance "
    "bucket. Appends the groups probes and score_decomposition to the store. A run directory stands for "
    "all its checkpoints."
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    from workbench import inputs

    add_checkpoints(p)
    p.add_argument("--out", required=True, help="results store (*.zarr) to create or append to")
    p.add_argument("--seq-len", type=int, default=512, help="length of the packed probe windows")
    p.add_argument("--windows", type=int, default=8, help="probe windows (a quarter are held out)")
    p.add_argument("--buckets", type=int, default=8, help="equal-width position buckets for the classifier")
    p.add_argument("--max-train", type=int, default=4000, help="at most this many training tokens per probe")
    p.add_argument("--no-scores", action="store_true", help="skip the attention-score decomposition")
    p.add_argument("--score-seq-len", type=int, default=512, help="window length for the score decomposition")
    p.add_argument(
        "--score-method",
        choices=["fast", "exact"],
        default="fast",
        help="fast: mean terms exact via prefix sums, mean |term| from a seeded sample of (query, key) "
        "positions per distance bucket, linear in length; exact: every pair, quadratic (reference)",
    )
    p.add_argument(
        "--abs-sample-pairs",
        type=int,
        default=65536,
        help="fast method: (query, key) pairs sampled per distance bucket for the mean |term|",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--figures", default=None, metavar="DIR", help="also write the probe curves (HTML + PNG) into this folder"
    )
    add_threads(p)
    add_device(p, "; statistics are float32 either way")
    inputs.add_arguments(p)  # --inputs / --tokenizer, shared with trace and updates (workbench.inputs)


def run(args: argparse.Namespace) -> int:
    from workbench import checkpoints, inputs, measurements, models, store
    from workbench.measurements.capture import probe_batch

    set_threads(args)
    args.device = str(models.pick_device(args.device))  # a bad device is one error before any work
    paths = checkpoints.expand(args.checkpoints, args.phase_ends)
    if args.seq_len < 8 or args.score_seq_len < 2:
        raise ValueError(f"--seq-len must be >= 8 and --score-seq-len >= 2, got {args.seq_len}, {args.score_seq_len}")
    if args.abs_sample_pairs < 1:
        raise ValueError(f"--abs-sample-pairs must be >= 1, got {args.abs_sample_pairs}")
    if args.windows < 4:
        raise ValueError(f"--windows must be >= 4 (a quarter are held out), got {args.windows}")
    if args.buckets < 2 or args.buckets > args.seq_len:
        raise ValueError(f"--buckets must be between 2 and --seq-len, got {args.buckets}")
    if args.max_train < args.buckets:  # the probe needs training tokens of every position bucket
        raise ValueError(
            f"--max-train must be >= --buckets ({args.buckets}): a probe needs training tokens of "
            f"every position bucket, got {args.max_train}"
        )
    infos = checkpoints.inspect_all(paths, minimum=1)
    batch, what = inputs.for_models(
        paths,
        args,
        seq_len=args.seq_len,
        batch=args.windows,
        seed=args.seed,
        synthetic_default=lambda: probe_batch(args.seq_len, args.windows, args.seed),
    )
    if batch["input_ids"].shape[0] < 4:
        raise inputs.InputError(
            f"--inputs {args.inputs}: {batch['input_ids'].shape[0]} window(s); position probes "
            "need at least 4 (a quarter are held out)"
        )
    score_batch = (
        None
        if args.no_scores
        else inputs.for_models(
            paths,
            args,
            seq_len=args.score_seq_len,
            batch=1,
            seed=args.seed,
            synthetic_default=lambda: probe_batch(args.score_seq_len, 1, args.seed),
        )[0]
    )
    labels = [i.label for i in infos]
    groups = [store.PROBES] + ([] if args.no_scores else [store.SCORE_DECOMPOSITION])
    for group in groups:
        store.refuse(args.out, group, labels=labels)

    probes = measurements.position_probes(
        paths,
        seq_len=args.seq_len,
        n_windows=args.windows,
        n_buckets=args.buckets,
        seed=args.seed,
        max_train=args.max_train,
        device=args.device,
        progress=True,
        inputs=batch,
    )
    probes.attrs["inputs"] = what
    store.save(args.out, store.PROBES, probes)
    if not args.no_scores:
        scores = measurements.score_decomposition(
            paths,
            seq_len=args.score_seq_len,
            seed=args.seed,
            method=args.score_method,
            abs_sample={"pairs": args.abs_sample_pairs},
            device=args.device,
            progress=True,
            inputs=score_batch,
        )
        scores.attrs["inputs"] = what
        store.save(args.out, store.SCORE_DECOMPOSITION, scores)
    sites = [str(s) for s in probes["site"].values]
    print(f"{'checkpoint':<40} {'metric':<9} " + " ".join(f"{s:>9}" for s in sites))
    for ckpt in labels:
        for metric in ("r2", "accuracy"):
            vals = probes[metric].sel(checkpoint=ckpt).values
            print(f"{ckpt:<40} {metric:<9} " + " ".join(f"{v:>9.3f}" for v in vals))
    print(f"chance accuracy ~{float(probes['chance'].mean()):.3f}; wrote {', '.join(groups)} to {args.out}")
    if args.figures:
        from workbench.figures import save_figure
        from workbench.figures import updates as fig

        out = Path(args.figures)
        save_figure(fig.probe_curves(probes, metric="r2"), out / "probes-r2")
        save_figure(fig.probe_curves(probes, metric="accuracy"), out / "probes-accuracy")
        if not args.no_scores:
            for i, ckpt in enumerate(labels):
                for layer in map(int, scores["layer"].values):
                    save_figure(fig.score_profile(scores, layer, checkpoint=ckpt), out / f"scores-{i}-layer{layer}")
        print(f"figures in {out}")
    return 0
