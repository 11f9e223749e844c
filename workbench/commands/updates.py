"""``workbench updates``: which RoPE pairs of W_q / W_k (and of the q/k states) moved between checkpoints."""

from __future__ import annotations

import argparse
from pathlib import Path

from workbench.commands import add_checkpoints, add_device, add_threads, set_threads

HELP = "per layer x head x RoPE pair: W_q/W_k updates and q/k state changes between checkpoints, by frequency band"
DESCRIPTION = (
    "Compare checkpoints (consecutive pairs, or each against --reference) per layer, head and RoPE pair "
    "(half-split pair j = dims j, j+d/2) from the raw HF weights, measure the pre-RoPE q/k state norms on "
    "packed probe windows, group pairs into frequency bands by the phase context lengths, and append the "
    "groups updates_weights, updates_states and bands to the store. A run directory stands for all its "
    "checkpoints."
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    from workbench import inputs

    add_checkpoints(p)
    p.add_argument("--out", required=True, help="results store (*.zarr) to create or append to")
    p.add_argument(
        "--reference", default=None, help="compare every checkpoint against this one instead of consecutively"
    )
    p.add_argument(
        "--phase-lengths",
        default=None,
        help="context lengths of the phases, e.g. 256,1024 (default: the phases' seq_len in the run's "
        "run.yaml; without either, no band summary)",
    )
    p.add_argument("--no-states", action="store_true", help="skip the state view (weights and bands only)")
    p.add_argument("--seq-len", type=int, default=1024, help="length of the packed probe windows for the state view")
    p.add_argument("--windows", type=int, default=2, help="packed probe windows for the state view")
    p.add_argument("--seed", type=int, default=0, help="seed of the probe windows")
    p.add_argument(
        "--figures",
        default=None,
        metavar="DIR",
        help="also write the heatmaps and band bars (HTML + PNG) into this folder",
    )
    add_threads(p)
    add_device(p, "; statistics are float32 either way")
    inputs.add_arguments(p)  # --inputs / --tokenizer, shared with trace and probe (workbench.inputs)


def run(args: argparse.Namespace) -> int:
    from workbench import checkpoints, inputs, measurements, models, store
    from workbench.measurements.capture import probe_batch
    from workbench.measurements.weights import comparison_label, comparison_pairs, resolve_reference

    set_threads(args)
    args.device = str(models.pick_device(args.device))  # a bad device is one error before any work
    paths = checkpoints.expand(args.checkpoints, args.phase_ends)
    if args.seq_len < 2 or args.windows < 1:
        raise ValueError(f"--seq-len must be >= 2 and --windows >= 1, got {args.seq_len} and {args.windows}")
    lengths = measurements.parse_lengths(args.phase_lengths) if args.phase_lengths else checkpoints.phase_lengths(paths)
    all_paths, ref = resolve_reference(paths, args.reference)
    infos = checkpoints.inspect_all(all_paths, minimum=2)
    batch, what = (
        (None, None)
        if args.no_states
        else inputs.for_models(  # the models' own vocabulary, checked
            all_paths,
            args,
            seq_len=args.seq_len,
            batch=args.windows,
            seed=args.seed,
            synthetic_default=lambda: probe_batch(args.seq_len, args.windows, args.seed),
        )
    )
    labels = [comparison_label(infos[a].label, infos[b].label) for a, b in comparison_pairs(len(infos), ref)]
    groups = (
        [store.UPDATES_WEIGHTS]
        + ([] if args.no_states else [store.UPDATES_STATES])
        + ([store.BANDS] if lengths else [])
    )
    for group in groups:
        store.refuse(args.out, group, labels=labels)

    weights = measurements.weight_updates(paths, reference=args.reference, progress=True)
    store.save(args.out, store.UPDATES_WEIGHTS, weights)
    if not args.no_states:
        states = measurements.state_updates(
            paths,
            reference=args.reference,
            seq_len=args.seq_len,
            n_windows=args.windows,
            seed=args.seed,
            device=args.device,
            progress=True,
            inputs=batch,
        )
        states.attrs["inputs"] = what
        store.save(args.out, store.UPDATES_STATES, states)
    bands = None
    if lengths:
        bands = measurements.band_summary(weights, lengths)
        store.save(args.out, store.BANDS, bands)
    else:
        print("no --phase-lengths and no run.yaml beside the checkpoints: band summary skipped")
    print(summary(weights, bands))
    print(f"wrote {', '.join(groups)} to {args.out}")
    if args.figures:
        from workbench.figures import save_figure
        from workbench.figures import updates as fig

        out = Path(args.figures)
        for i, comp in enumerate(map(str, weights["comparison"].values)):
            save_figure(fig.layer_pair_heatmap(weights, comparison=comp, phase_lengths=lengths), out / f"updates-q-{i}")
            save_figure(
                fig.layer_pair_heatmap(weights, comparison=comp, var="k_rel_update", phase_lengths=lengths),
                out / f"updates-k-{i}",
            )
            if bands is not None:
                save_figure(fig.band_bars(bands, comparison=comp), out / f"bands-q-{i}")
        print(f"figures in {out}")
    return 0


def summary(weights, bands) -> str:
    """Plain-text digest: per comparison, the mean relative W_q update per layer and band (or per pair)."""
    lines = []
    for comp in map(str, weights["comparison"].values):
        lines.append(
            f"{comp}  (theta {float(weights['rope_theta_before'].sel(comparison=comp)):g} -> "
            f"{float(weights['rope_theta_after'].sel(comparison=comp)):g})"
        )
        if bands is not None:
            b = bands.sel(comparison=comp)
            head = "  layer " + " ".join(f"{str(x):>18}" for x in b["band"].values)
            lines.append(head + "   (mean |dW_q|/|W_q| per band)")
            for layer in b["layer"].values:
                vals = b["q_rel_update"].sel(layer=layer).values
                lines.append(f"  {int(layer):>5} " + " ".join(f"{v:>18.4g}" for v in vals))
            crit = ", ".join(
                f"L={int(L)}: {int(c)}"
                for L, c in zip(b["phase_length"].values, b["critical_pair"].sel(end="after").values)
            )
            lines.append(f"  critical pair at theta after: {crit}; pairs per band {b['n_pairs'].values.tolist()}")
            trend = ", ".join(f"layer {int(x)}: {v:+.2f}" for x, v in zip(b["layer"].values, b["q_index_trend"].values))
            lines.append(f"  rank correlation pair index vs |dW_q|/|W_q| (> 0: slower pairs moved more): {trend}")
        else:
            q = weights["q_rel_update"].sel(comparison=comp).mean(["layer", "head"]).values
            lines.append("  mean |dW_q|/|W_q| per pair: " + " ".join(f"{v:.3g}" for v in q))
    return "\n".join(lines)
