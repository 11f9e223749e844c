"""Shared command line of the figure scripts: read a store, write one figure family as PNG + HTML."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def main(job: str, doc: str | None) -> int:
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument(
        "--store",
        type=Path,
        nargs="+",
        default=[Path("runs/demo/results.zarr"), Path("runs/demo/teacher.zarr")],
        help="results store(s) written by `workbench demo` / eval / trace / updates / probe",
    )
    parser.add_argument("--out", type=Path, default=Path("figures"), help="output folder (PNG + HTML)")
    parser.add_argument("--no-png", action="store_true", help="HTML only (no kaleido/chromium)")
    args = parser.parse_args()
    from workbench.figures import jobs
    from workbench.store import StoreError

    written = []
    stores = [s for s in args.store if s.exists()]
    if not stores:
        print(
            f"{Path(sys.argv[0]).name}: error: no store found at {', '.join(map(str, args.store))} "
            "(run `make demo` first or pass --store)",
            file=sys.stderr,
        )
        return 2
    try:
        for store in stores:
            out = args.out / store.stem if len(stores) > 1 else args.out
            written += jobs.render(job, store, out, png=not args.no_png)
    except StoreError as exc:
        print(f"{Path(sys.argv[0]).name}: error: {exc}", file=sys.stderr)
        return 2
    for path in written:
        print(path)
    if not written:
        print(f"{Path(sys.argv[0]).name}: the store(s) hold no data for {job}", file=sys.stderr)
    return 0
