"""Compute the shipped table of RoPE base lower bounds (arXiv 2405.14591), data/rope/base_lower_bound.csv.

    .venv/bin/python analyses/base_bound_table.py [--head-dims 64 128 --lengths 1024 ... 131072]

Each bound is the first theta of the log grid 10 ** (k / 10000) (relative step 0.023 %, see
``rope.base_lower_bound``) with B(m) = sum_j cos(m theta^(-2j/d)) >= 0 for all m <= L. A second column scans a
finer grid (--finer points a decade) to show how much the answer depends on the resolution: the passing thetas
are narrow windows, and a coarser grid can step over the first one. Numpy only, one BLAS thread advised
(OPENBLAS_NUM_THREADS=1); prints each row with its time and the paper's d = 128 values beside it.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from workbench import rope  # noqa: E402

LENGTHS = [1024 << i for i in range(8)]  # 1k .. 128k
PAPER_D128 = {1024: 4.3e3, 2048: 1.6e4, 4096: 2.7e4, 8192: 8.4e4, 16384: 3.1e5}  # its table, as quoted in issue 14
COLUMNS = [
    "head_dim",
    "length",
    "base_lower_bound",
    "steps_per_decade",
    "resolution",
    "finer_bound",
    "finer_steps_per_decade",
    "seconds",
]


def row(head_dim: int, length: int, finer: int) -> dict[str, float | int | str]:
    """One table row: the bound on the defining grid (checked in the reference arithmetic) and on a finer one."""
    start = time.perf_counter()
    grid = rope.bound_grid()
    i = rope.scan_base_bound(head_dim, length, grid)
    if i is None:
        raise SystemExit(f"no theta in [1, 1e12] passes for d={head_dim}, L={length}")
    seconds = time.perf_counter() - start
    bound = float(grid[i])
    assert rope.long_range_sum(bound, head_dim, length).min() >= 0  # it passes, as long_range_sum computes it
    fine = ""
    if finer:
        fgrid = rope.bound_grid(steps_per_decade=finer)
        j = rope.scan_base_bound(head_dim, length, fgrid)
        fine = repr(float(fgrid[j])) if j is not None else ""
    return {
        "head_dim": head_dim,
        "length": length,
        "base_lower_bound": repr(bound),
        "steps_per_decade": rope.BOUND_STEPS_PER_DECADE,
        "resolution": f"{rope.BOUND_RESOLUTION:.6g}",
        "finer_bound": fine,
        "finer_steps_per_decade": finer or "",
        "seconds": f"{seconds:.2f}",
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--head-dims", type=int, nargs="+", default=[64, 128], help="head dimensions (even)")
    p.add_argument("--lengths", type=int, nargs="+", default=LENGTHS, help="context lengths L in tokens")
    p.add_argument(
        "--finer", type=int, default=50_000, help="points a decade of the resolution check column (0: skip it)"
    )
    p.add_argument("--out", type=Path, default=rope.BOUND_TABLE, help="CSV to write")
    args = p.parse_args(argv)
    rows = []
    for d in args.head_dims:
        for length in args.lengths:
            r = row(d, length, args.finer)
            rows.append(r)
            paper = PAPER_D128.get(length) if d == 128 else None
            print(
                f"d={d:<4} L={length:<7} bound {float(r['base_lower_bound']):.4g}  finer grid "
                f"{float(r['finer_bound'] or 'nan'):.4g}  paper {paper if paper else '-'}  ({r['seconds']} s)",
                flush=True,
            )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    header = [
        "# RoPE base lower bound (arXiv 2405.14591), written by analyses/base_bound_table.py",
        f"# base_lower_bound: first theta = 10**(k/{rope.BOUND_STEPS_PER_DECADE}) (relative step "
        f"{rope.BOUND_RESOLUTION:.4%}) with sum_j cos(m theta^(-2j/d)) >= 0 for all 0 <= m <= length",
        "# finer_bound: the same on the grid of finer_steps_per_decade (resolution check); "
        "seconds: time of the defining scan, one core",
    ]
    body = [",".join(COLUMNS)] + [",".join(str(r[c]) for c in COLUMNS) for r in rows]
    args.out.write_text("\n".join(header + body) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
