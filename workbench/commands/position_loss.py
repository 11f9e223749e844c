"""``workbench position-loss``: loss and KL-to-teacher by position on held-out long documents."""

from __future__ import annotations

import argparse

from workbench.commands import add_checkpoints, add_device, add_threads, set_threads

HELP = "loss and KL(teacher || checkpoint) by position bucket on held-out long documents, with bootstrap intervals"
DESCRIPTION = (
    HELP + ". The continuous context-extension scorecard (retrieval accuracy saturates): one held-out "
    "document per window, per-token CE and (with --teacher) KL to the teacher from the chunked loss on "
    "hidden states (memory linear in length), summed in log-spaced position buckets up to --length; "
    "buckets beyond a checkpoint's trained positions are marked extrapolation. Written to the store "
    "group position_loss, appended along checkpoint."
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_checkpoints(p)
    p.add_argument(
        "--documents",
        nargs="+",
        default=["synthetic"],
        metavar="SRC",
        help="'synthetic' (the synthetic language, held-out seeds), a token corpus directory "
        "(`workbench tokenize`; its val split when it has one; its tokenizer must be the "
        "checkpoint's) or text files (one document each, through the checkpoint's tokenizer)",
    )
    p.add_argument("--n-documents", type=int, default=16, help="number of documents (synthetic, corpus, files)")
    p.add_argument("--length", type=int, default=2048, help="document length in tokens (the longest position asked)")
    p.add_argument("--teacher", default=None, metavar="CKPT", help="also KL(teacher || checkpoint) by position")
    p.add_argument("--first-bucket", type=int, default=32, help="upper edge of the first bucket; edges double")
    p.add_argument("--edges", default=None, help="explicit bucket edges, e.g. 256,1024 (0 and --length added)")
    p.add_argument(
        "--extrapolate",
        action="store_true",
        help="allow documents beyond a checkpoint's trained positions (recorded per bucket)",
    )
    p.add_argument(
        "--tokenizer",
        default="auto",
        help="'auto' (each checkpoint's own), 'synthetic' or a directory; the checkpoints and the teacher must "
        "share one vocabulary (the synthetic one for --documents synthetic)",
    )
    p.add_argument("--seed", type=int, default=0, help="document seed (synthetic) and bootstrap seed")
    p.add_argument("--boot", type=int, default=2000, help="bootstrap resamples")
    p.add_argument("--chunk-size", type=int, default=1024, help="tokens per lm_head chunk (memory bound)")
    p.add_argument("--out", required=True, metavar="STORE", help="results store (*.zarr)")
    p.add_argument("--figure", default=None, metavar="PATH", help="also write the by-position figure PATH.html/.png")
    add_device(p)
    add_threads(p)


def run(args: argparse.Namespace) -> int:
    from workbench import checkpoints, inputs, store
    from workbench.evals import position_loss as pl

    set_threads(args)
    if args.length < 2 or args.n_documents < 1 or args.chunk_size < 1 or args.first_bucket < 1 or args.boot < 100:
        raise ValueError("--length >= 2, --n-documents >= 1, --chunk-size >= 1, --first-bucket >= 1, --boot >= 100")
    paths = checkpoints.expand(args.checkpoints, args.phase_ends)
    edges = None
    if args.edges:
        try:
            inner = sorted({int(x) for x in args.edges.split(",") if x.strip()} - {0})
        except ValueError:
            raise ValueError(f"--edges must be comma-separated integers, got {args.edges!r}") from None
        edges = [0] + [e for e in inner if e < args.length] + [args.length]
    # one vocabulary for every model (the documents' token ids are shared, and KL needs one): the synthetic
    # language for synthetic documents, else the tokenizer the text or corpus is read with
    vocab = inputs.resolve(paths + ([args.teacher] if args.teacher else []), args.tokenizer)
    synthetic = args.documents == [pl.SYNTHETIC_SOURCE]
    if synthetic and not vocab.synthetic:
        raise inputs.InputError(
            f"--documents synthetic: the models read {vocab.source}'s tokenizer, not the synthetic vocabulary; "
            "give text files or a token corpus in their vocabulary (--documents FILE ...)"
        )
    tok = None if synthetic else vocab.tokenizer
    docs = pl.load_documents(args.documents, n=args.n_documents, length=args.length, tokenizer=tok, seed=args.seed)
    labels = [checkpoints.label(p) for p in paths]
    edges = pl.bucket_edges(docs, args.first_bucket, edges)
    store.refuse(args.out, store.POSITION_LOSS, labels=labels, attrs=pl.settings(docs, edges, args.teacher))
    ds = pl.position_loss(
        paths,
        docs,
        teacher=args.teacher,
        first_bucket=args.first_bucket,
        edges=edges,
        extrapolate=args.extrapolate,
        device=args.device,
        chunk_size=args.chunk_size,
        n_boot=args.boot,
        seed=args.seed,
    )
    store.save(args.out, store.POSITION_LOSS, ds)
    print(pl.table(ds))
    print(f"wrote {len(labels)} checkpoint(s) to {args.out} (group '{store.POSITION_LOSS}')")
    if args.figure:
        from workbench.figures import position_loss as fig
        from workbench.figures import save_figure

        for path in save_figure(fig.by_position(ds), args.figure):
            print(f"wrote {path}")
    return 0
