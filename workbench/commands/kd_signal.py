"""``workbench kd-signal``: the cross-document KD signal of checkpoints over packed short documents."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from workbench.commands import add_checkpoints, add_device, add_threads, set_threads

HELP = "cross-document KD signal: KL(full causal window || document-masked) per token, by distance and token kind"
DESCRIPTION = (
    "For each checkpoint (a teacher, or any model on the data's vocabulary): pack the data config's documents "
    "into windows and compute, per token, KL(p_full || p_doc) between the model with causal attention across "
    "the whole window and the same model with document-masked attention (same tokens, same position ids): the "
    "part of the KD target that depends on content outside the token's own document, which CE on short "
    "documents cannot see. Summaries by distance to the document start (log buckets) and by kind of the "
    "predicted token; appended to the store group kd_signal along checkpoint. A run directory stands for all "
    "its checkpoints."
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_checkpoints(p)
    p.add_argument(
        "--data",
        required=True,
        metavar="CONFIG.yaml",
        help="a run config (its data section), a file with a data: section, or a bare data section",
    )
    p.add_argument("--phase", default=None, metavar="NAME", help="use this phase's data (falls back to the run's)")
    p.add_argument("--seq-len", type=int, default=1024, help="window length the documents are packed into")
    p.add_argument("--windows", type=int, default=8, help="number of windows")
    p.add_argument("--batch-size", type=int, default=2, help="windows per forward pass (results do not depend on it)")
    p.add_argument("--seed", type=int, default=0, help="seed of the data stream")
    p.add_argument("--out", required=True, metavar="STORE", help="results store (*.zarr) to create or append to")
    p.add_argument(
        "--figure", default=None, metavar="PATH", help="also write PATH-by-distance and PATH-by-kind (.html + .png)"
    )
    p.add_argument(
        "--all-tokens",
        action="store_true",
        help="summarise every token (default: only the targets the KD loss uses, labels != -100)",
    )
    p.add_argument("--chunk-size", type=int, default=1024, help="tokens per unembedding chunk (memory bound)")
    add_threads(p)
    add_device(p)
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"], help="model dtype")


def run(args: argparse.Namespace) -> int:
    import torch

    from workbench import checkpoints, models, store
    from workbench.measurements import cross_document as cd

    set_threads(args)
    if args.chunk_size < 1:
        raise ValueError(f"--chunk-size must be >= 1, got {args.chunk_size}")
    args.device = str(models.pick_device(args.device))  # a bad device is one error before any work
    paths = checkpoints.expand(args.checkpoints, args.phase_ends)
    dcfg = cd.load_data_config(args.data, args.phase)
    cd.check_inputs(paths, dcfg, seq_len=args.seq_len, n_windows=args.windows, batch_size=args.batch_size)
    cd.check_boundaries(dcfg, seq_len=args.seq_len, n_windows=args.windows, batch_size=args.batch_size, seed=args.seed)
    summary = "all" if args.all_tokens else "kd_targets"
    labels = [checkpoints.label(p) for p in paths]
    cd.check_writable(
        args.out,
        labels,
        cd.data_attrs(dcfg, seq_len=args.seq_len, n_windows=args.windows, seed=args.seed, summary_tokens=summary),
    )
    if args.figure:
        import workbench.figures.kd_signal  # noqa: F401  (a broken plotting stack fails before the models run)

    ds = cd.cross_document_kl_checkpoints(
        paths,
        dcfg,
        seq_len=args.seq_len,
        n_windows=args.windows,
        batch_size=args.batch_size,
        seed=args.seed,
        device=args.device,
        dtype=getattr(torch, args.dtype),
        chunk_size=args.chunk_size,
        summary_tokens=summary,
        progress=True,
    )
    ds.attrs["data_config"] = str(args.data)
    if args.phase:
        ds.attrs["phase"] = args.phase
    cd.write_kd_signal(args.out, ds)
    print_summary(ds)
    print(f"wrote group {store.KD_SIGNAL} ({len(labels)} checkpoint(s)) to {args.out}")
    if args.figure:
        from workbench.figures import kd_signal as fig
        from workbench.figures import save_figures

        stem = Path(args.figure)
        if stem.suffix in (".png", ".html"):
            stem = stem.with_suffix("")
        figs = {f"{stem.name}-by-distance": fig.kl_by_distance(ds), f"{stem.name}-by-kind": fig.kl_by_kind(ds)}
        try:
            written = save_figures(figs, stem.parent)
        except RuntimeError as exc:  # kaleido without a Chrome/Chromium: keep the HTML, say so, keep the results
            written = [stem.parent / f"{name}.html" for name in figs]
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            print(
                f"workbench kd-signal: warning: PNG figures not written ({first}; install chromium for "
                "kaleido); the HTML figures and the store are written",
                file=sys.stderr,
            )
        print("figures: " + ", ".join(map(str, written)))
    return 0


def print_summary(ds) -> None:
    """Overall numbers, then the by-kind and by-distance tables, one column per checkpoint."""
    names = [str(c) for c in ds["checkpoint"].values]
    width = max(12, *(len(n) for n in names))
    tokens = "KD targets" if ds.attrs.get("summary_tokens") == "kd_targets" else "all tokens"
    print(f"cross-document KD signal, KL(full || document-masked) in nats, over {tokens}")
    print(f"{'checkpoint':<{width}}  {'mean':>8} {'median':>9} {'p95':>8} {'top5%share':>10} {'after doc 0':>11}")
    for n in names:
        r = ds.sel(checkpoint=n)
        print(
            f"{n:<{width}}  {float(r['mean']):8.3f} {float(r['median']):9.2e} {float(r['p95']):8.3f} "
            f"{float(r['top5_share']):10.3f} {float(r['mean_after_first_doc']):11.3f}"
        )
    for dim, short, title in (
        ("kind", "kind", "predicted token kind"),
        ("distance_bucket", "distance", "distance to document start"),
    ):
        print(f"\nmean / median / p95 / share of KL mass by {title} (n tokens)")
        for n in names:
            print(f"  {n}")
            r = ds.sel(checkpoint=n)
            for label, count in zip(ds[dim].values, ds[f"n_by_{short}"].values):
                if int(count) == 0:
                    continue
                v = r.sel({dim: label})
                print(
                    f"    {str(label):<10} {float(v[f'mean_by_{short}']):8.3f} {float(v[f'median_by_{short}']):9.2e} "
                    f"{float(v[f'p95_by_{short}']):8.3f} {float(v[f'share_by_{short}']):7.3f}   ({int(count)})"
                )
