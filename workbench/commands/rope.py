"""``workbench rope``: print the per-pair RoPE spectrum table and its summary numbers."""

from __future__ import annotations

import argparse
import json

HELP = "print the RoPE spectrum (per-pair wavelengths, critical dimension, base bound, utilisation)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--theta", type=float, default=10000.0, help="RoPE base")
    p.add_argument("--head-dim", type=int, default=64, help="attention head dimension (even)")
    p.add_argument("--length", type=int, default=4096, help="context length L in tokens")
    p.add_argument(
        "--scaling",
        type=json.loads,
        default=None,
        help='transformers-style rope scaling as JSON, e.g. \'{"rope_type": "linear", "factor": 4}\'',
    )
    p.add_argument(
        "--base-bound",
        action="store_true",
        help="also give the base lower bound (arXiv 2405.14591): the first theta of a 0.023 %% log "
        "grid with B(m) >= 0 for all m <= L (shipped table for its rows, else scanned)",
    )


def run(args: argparse.Namespace) -> int:
    from workbench import rope

    print(rope.format_spectrum(args.theta, args.head_dim, args.length, args.scaling))
    if args.base_bound:
        bound = rope.base_lower_bound(args.head_dim, args.length)
        print(
            f"base lower bound for L={args.length}: {bound:.6g} (first theta with B(m) >= 0 for all m <= L "
            f"on the {rope.BOUND_GRID_LABEL})"
        )
    return 0
