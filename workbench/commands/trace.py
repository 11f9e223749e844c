"""``workbench trace``: perturb RoPE on q/k, trace it layer by layer into the logits, write a store."""

from __future__ import annotations

import argparse
from pathlib import Path

from workbench.commands import add_device, add_threads, set_threads

HELP = "perturb RoPE on queries/keys of a checkpoint, trace the effect into the logits, write a Zarr store"
DESCRIPTION = (
    HELP + ". Also: --check (built-in sanity: identity, TL/nnsight parity, q/k shift invariance, "
    "layer locality) and --experiment repeated-tokens."
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    from workbench import inputs

    p.add_argument("checkpoint", help="workbench checkpoint or local HF Llama directory")
    p.add_argument(
        "--spec",
        action="append",
        default=[],
        metavar="SPEC.yaml",
        help="perturbation spec file (one spec or 'specs: [...]'); repeatable (see data/specs/)",
    )
    p.add_argument("--backend", choices=["nnsight", "tl"], default="nnsight")
    inputs.add_arguments(p)  # --inputs / --tokenizer, shared with updates and probe (workbench.inputs)
    p.add_argument("--length", type=int, default=512, help="length of default inputs")
    p.add_argument("--start", type=int, default=0, help="first position id of default inputs")
    p.add_argument("--buckets", type=int, default=8, help="position buckets")
    p.add_argument("--batch-size", type=int, default=None, help="run the inputs in chunks of this many rows")
    p.add_argument(
        "--capture",
        action="append",
        default=[],
        metavar="NAME",
        help="also store raw activations whose names match (glob, e.g. 'blocks.1.attn.hook_rot_q'); "
        "repeatable; group 'activations'",
    )
    p.add_argument("--out", default=None, help="Zarr store to write (appends; a cell is never written twice)")
    p.add_argument("--check", action="store_true", help="run the built-in sanity checks and exit (1 on failure)")
    add_threads(p)
    add_device(p, "; statistics are float32 either way")
    p.add_argument("--experiment", choices=["repeated-tokens"], default=None)
    p.add_argument("--window", type=int, default=None, help="repeated tokens: window (default max positions)")
    p.add_argument("--period", type=int, default=32, help="repeated tokens: length of the repeated sequence")
    p.add_argument("--copies", type=int, default=8, help="repeated tokens: copies spread over the window")
    p.add_argument(
        "--samples",
        type=int,
        default=2,
        help="input sequences: rows of the default inputs, or the repeated-tokens random sequences",
    )
    p.add_argument(
        "--attention",
        choices=["packed", "isolated"],
        default="packed",
        help="repeated tokens: copies causal across one window, or each its own sequence",
    )


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from workbench import architectures, checkpoint_io, interventions, models, store
    from workbench import inputs as wb_inputs
    from workbench.interventions.activations import captured_layers
    from workbench.interventions.specs import validate_all

    set_threads(args)
    args.device = str(models.pick_device(args.device))  # a bad device is one error before any work
    ckpt = Path(args.checkpoint)
    if not ckpt.is_dir():
        raise checkpoint_io.CheckpointError(f"{ckpt}: checkpoint directory not found")
    specs = [s for path in args.spec for s in interventions.load_specs(path)]
    if args.out and Path(args.out).exists():
        store.check_schema(args.out)  # refuses a store of another (or an old) schema before any work
    if args.check:
        with tqdm(total=2, desc="sanity checks", unit="backend") as bar:
            results = interventions.check(ckpt, device=args.device, progress=bar)
        for r in results:
            print(r)
        for name, why in architectures.unsupported_backends(ckpt, ("nnsight", "tl")).items():
            print(f"skip {name}: {why}")
        return 0 if all(r.ok for r in results) else 1
    if not args.out:
        raise ValueError("--out STORE is required (or use --check)")
    if args.experiment is None and not specs:
        raise ValueError("give at least one --spec SPEC.yaml (examples in data/specs/)")
    inputs, _ = wb_inputs.for_models([ckpt], args, seq_len=args.length, batch=args.samples, start=args.start)
    group = store.REPEATED_TOKENS if args.experiment == "repeated-tokens" else store.TRACES
    interventions.check_writable(args.out, group, ckpt, specs)  # a spec already stored is refused before any work
    if args.capture:
        interventions.check_writable(args.out, store.ACTIVATIONS, ckpt, specs)
    if args.backend == "tl":  # eager [rows, heads, T, T] attention: refuse what cannot fit before loading anything
        length = int(inputs["input_ids"].shape[-1]) if inputs is not None else args.length
        batch = (
            int(inputs["input_ids"].shape[0]) if inputs is not None and inputs["input_ids"].ndim == 2 else args.samples
        )
        rows = (len([s for s in specs if not s.is_identity]) + 1) * min(args.batch_size or batch, batch)
        if args.experiment is None:
            interventions.check_backend_length(ckpt, "tl", rows, length, device=args.device)
    be = interventions.load_backend(ckpt, args.backend, device=args.device)
    validate_all([interventions.identity("clean"), *specs], be.geometry)  # before any forward pass
    if args.capture:
        captured_layers(args.capture, be.geometry.num_layers)  # a filter matching nothing, before the trace is written
    if args.experiment == "repeated-tokens":
        ds = interventions.repeated_tokens(
            ckpt,
            specs,
            backend=be,
            window=args.window,
            period=args.period,
            copies=args.copies,
            samples=args.samples,
            attention=args.attention,
            progress=True,
        )
        interventions.write_repeated(args.out, ds)
        print(f"repeated tokens ({args.attention}): offsets {list(map(int, ds.offset.values))}")
        for s in ds.spec.values:
            row = ds.sel(spec=s).isel(checkpoint=0)
            print(f"  {s:>24}: KL to first copy {' '.join(f'{v:.2e}' for v in row.kl_to_first.values)}")
            print(f"  {'':>24}  KD signal        {' '.join(f'{v:.2e}' for v in row.kl_to_mean.values)}")
            if s != "clean":
                print(f"  {'':>24}  KL vs clean      {' '.join(f'{v:.2e}' for v in row.kl_vs_clean.values)}")
        print(f"wrote group {store.REPEATED_TOKENS} of {args.out}")
        return 0
    ds = interventions.run_trace(
        ckpt, specs, inputs, backend=be, buckets=args.buckets, batch_size=args.batch_size, progress=True
    )
    interventions.write_traces(args.out, ds)
    final = ds.final_kl.isel(checkpoint=0).mean("position_bucket")
    for s in ds.spec.values:
        print(
            f"  {s:>24}: final KL {float(final.sel(spec=s)):.3e}  top-1 flips "
            f"{float(ds.top1_flip.sel(spec=s).isel(checkpoint=0).mean()):.3f}"
        )
    print(f"wrote group {store.TRACES} of {args.out}")
    if args.capture:
        acts = interventions.capture_activations(ckpt, specs, inputs, names=args.capture, backend=be)
        interventions.write_activations(args.out, acts)
        print(f"wrote group {store.ACTIVATIONS} of {args.out} ({', '.join(sorted(acts.data_vars))})")
    return 0
