"""``workbench tokenize SOURCES... --tokenizer DIR --out CORPUS``: text into a memory-mapped token corpus, once."""

from __future__ import annotations

import argparse

HELP = "tokenise text / jsonl / parquet files or saved HF datasets once into a memory-mapped token corpus"
DESCRIPTION = (
    HELP + " (uint16/uint32 .bin shards, document offsets, tokenizer copy, manifest with hashes, counts and a "
    "document-length histogram), read by `data.kind: tokens, paths: [CORPUS]` in every run config. Uses the "
    "Hugging Face datasets library (offline) with --num-proc workers. Atomic: a killed run leaves no corpus; a rerun "
    "on unchanged sources, tokenizer and options reuses the corpus. --max-doc-tokens cuts documents into short "
    "documents (the paper's setting on real text)."
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "sources",
        nargs="*",
        metavar="SOURCE",
        help="files (.txt/.md, .jsonl/.json, .parquet) or directories saved with datasets' save_to_disk",
    )
    p.add_argument(
        "--config",
        default=None,
        metavar="CONFIG.yaml",
        help="convert the text / jsonl / parquet data section of a run config (its files, tokenizer, field, "
        "split, add_eos, max/min_doc_tokens) instead of SOURCE... and --tokenizer",
    )
    p.add_argument(
        "--phase",
        default=None,
        metavar="NAME",
        help="with --config: the data section of this phase (a phase's own data replaces the run's; default: the "
        "run's data section)",
    )
    p.add_argument("--tokenizer", default=None, metavar="DIR", help="local Hugging Face tokenizer directory")
    p.add_argument("--out", required=True, metavar="CORPUS", help="corpus directory to create (or reuse)")
    p.add_argument(
        "--kind",
        default=None,
        choices=["text", "jsonl", "parquet"],
        help="file type of every source (default: from each file's suffix)",
    )
    p.add_argument("--field", default="text", help="jsonl / parquet / dataset column holding the document text")
    p.add_argument("--split-lines", action="store_true", help="text files: one document per line (default: per file)")
    p.add_argument(
        "--eos",
        choices=["auto", "yes", "no"],
        default="auto",
        help="append the tokenizer's eos to every document (auto: when it has one)",
    )
    p.add_argument(
        "--max-doc-tokens",
        type=int,
        default=None,
        help="cut every document into consecutive segments of at most this many tokens, each a document",
    )
    p.add_argument("--min-doc-tokens", type=int, default=0, help="drop documents/segments shorter than this")
    p.add_argument(
        "--val-fraction",
        type=float,
        default=0.0,
        help="fraction of source documents held out into CORPUS/val (seeded, by document)",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the held-out split")
    p.add_argument("--num-proc", type=int, default=1, help="tokenising processes (datasets' map num_proc)")
    p.add_argument("--batch-size", type=int, default=1000, help="documents per map batch")
    p.add_argument("--shard-tokens", type=int, default=1 << 30, help="tokens per .bin shard")
    p.add_argument("--no-progress", action="store_true")


def run(args: argparse.Namespace) -> int:
    from workbench.data import corpus

    if args.shard_tokens < 1:
        raise ValueError(f"--shard-tokens must be >= 1, got {args.shard_tokens}")
    if args.phase is not None and not args.config:
        raise ValueError("--phase NAME picks a phase's data section of --config CONFIG.yaml: give --config too")
    if args.config:
        from_config(args)
    if not args.sources or not args.tokenizer:
        raise ValueError("give SOURCE... and --tokenizer DIR, or --config CONFIG.yaml")
    out, reused = corpus.tokenize(
        args.sources,
        args.out,
        args.tokenizer,
        kind=args.kind,
        field=args.field,
        split_lines=args.split_lines,
        add_eos={"auto": None, "yes": True, "no": False}[args.eos],
        max_doc_tokens=args.max_doc_tokens,
        min_doc_tokens=args.min_doc_tokens,
        val_fraction=args.val_fraction,
        seed=args.seed,
        num_proc=args.num_proc,
        batch_size=args.batch_size,
        shard_tokens=args.shard_tokens,
        progress=not args.no_progress,
    )
    print(f"token corpus: {out}" + (" (reused)" if reused else ""))
    return 0


def from_config(args: argparse.Namespace) -> None:
    """Fill the arguments from a run config's text-kind data section (``--config``), then say what to use instead."""
    from workbench import config as wconfig

    raw = wconfig.read_yaml(args.config)
    where = "data"
    if "phases" in raw or "name" in raw:
        run = wconfig.load_run_config(args.config)
        dcfg, text_phases = run.data, [ph.name for ph in run.phases if ph.data is not None and _is_text(ph.data)]
        if args.phase is not None:
            names = [ph.name for ph in run.phases]
            if args.phase not in names:
                raise ValueError(f"--phase {args.phase!r}: {args.config} has the phases {', '.join(names)}")
            phase = run.phases[names.index(args.phase)]
            dcfg, where = phase.data or run.data, f"phases[{names.index(args.phase)}].data" if phase.data else where
        elif not _is_text(dcfg) and text_phases:
            raise ValueError(
                f"--config {args.config}: the run's data is {dcfg.kind!r}, but the phases {', '.join(text_phases)} "
                "read text of their own: pick one with --phase NAME (one corpus per --out)"
            )
        elif text_phases:
            print(f"tokenize: the phases {', '.join(text_phases)} read text of their own: convert each with --phase")
    else:
        if args.phase is not None:
            raise ValueError(f"--phase {args.phase!r}: {args.config} is a data section, not a run config with phases")
        dcfg = wconfig.from_dict(wconfig.DataConfig, raw.get("data", raw), f"{args.config}: data")
    if not _is_text(dcfg):
        raise ValueError(f"--config {args.config}: {where}.kind {dcfg.kind!r} is not text, jsonl or parquet")
    if dcfg.tokenizer is None:
        raise ValueError(
            f"--config {args.config}: {where}.tokenizer is not set (the synthetic language needs no corpus)"
        )
    if args.sources:
        raise ValueError("give SOURCE... or --config, not both")
    opts = dcfg.options
    args.sources, args.tokenizer, args.kind = list(dcfg.paths), dcfg.tokenizer, dcfg.kind
    args.field, args.split_lines = opts.get("field", "text"), opts.get("split", "file") == "lines"
    if "add_eos" in opts:
        args.eos = "yes" if opts["add_eos"] else "no"
    args.max_doc_tokens = opts.get("max_doc_tokens", args.max_doc_tokens)
    args.min_doc_tokens = opts.get("min_doc_tokens", args.min_doc_tokens)
    print(
        f"tokenize: converting {where} of {args.config}; then use {where}: {{kind: tokens, paths: "
        f"[{args.out}]}} (the same packing)"
    )


def _is_text(dcfg) -> bool:
    return dcfg.kind in ("text", "jsonl", "parquet")
