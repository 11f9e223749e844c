"""Benchmark: Zarr store writes vs raw numpy.save of the same bytes; one-slice read vs full read.

    .venv/bin/python analyses/benchmarks/bench_store.py [--mb 64] [--repeats 3]

Writes an activations-shaped float32 array (checkpoint, spec, sample, layer, head, position, pair, half)
through ``workbench.store.write_grid`` (chunks of one (checkpoint, spec, layer), uncompressed as
``write_activations`` does) and the same bytes with ``numpy.save``; then reads one (layer, head) slice lazily vs the whole
variable. Ratios are measured side by side in one run (threads pinned). Goal: write throughput >= 0.5x
numpy.save. Also reported with both fsynced (what a durable store costs).
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time

import numpy as np
import xarray as xr

from workbench import store


def _fsync_tree(path: str) -> None:
    for root, _, files in os.walk(path):
        for name in files:
            with open(os.path.join(root, name), "rb") as f:
                os.fsync(f.fileno())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mb", type=float, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import dask

    dask.config.set(scheduler="synchronous")
    layers, heads, pairs = 8, 8, 32
    positions = max(16, int(args.mb * 2**20 / 4 / (2 * layers * heads * pairs * 2)))
    rng = np.random.default_rng(0)
    data = rng.standard_normal((1, 2, 1, layers, heads, positions, pairs, 2)).astype(np.float32)
    dims = ("checkpoint", "spec", "sample", "layer", "head", "position", "pair", "half")
    best = {"zarr write": np.inf, "numpy.save": np.inf, "zarr durable": np.inf, "numpy durable": np.inf,
            "slice read": np.inf, "full read": np.inf}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.repeats):
            ds = xr.Dataset({"rot_q": (dims, data)},
                            coords={"checkpoint": np.array([f"c{r}"], dtype=object),
                                    "spec": np.array(["clean", "x"], dtype=object),
                                    **store.pair_coords(10000.0, 2 * pairs)})
            path = f"{tmp}/s{r}.zarr"
            t = time.perf_counter()
            store.write_grid(path, "activations", ds, chunk_dims=("checkpoint", "spec", "layer"), compress=False)
            best["zarr write"] = min(best["zarr write"], time.perf_counter() - t)
            _fsync_tree(path)
            best["zarr durable"] = min(best["zarr durable"], time.perf_counter() - t)
            t = time.perf_counter()
            with open(f"{tmp}/a{r}.npy", "wb") as f:
                np.save(f, data)
                f.flush()
                best["numpy.save"] = min(best["numpy.save"], time.perf_counter() - t)
                os.fsync(f.fileno())
            best["numpy durable"] = min(best["numpy durable"], time.perf_counter() - t)
            opened = xr.open_zarr(path, group="activations", consolidated=False, chunks={})
            t = time.perf_counter()
            opened.rot_q.isel(layer=3, head=5).values
            best["slice read"] = min(best["slice read"], time.perf_counter() - t)
            t = time.perf_counter()
            opened.rot_q.values
            best["full read"] = min(best["full read"], time.perf_counter() - t)
            shutil.rmtree(path)
    mb = data.nbytes / 2**20
    print(f"{mb:.1f} MiB float32 activations, {layers} layers x {heads} heads, best of {args.repeats}")
    print(f"zarr write throughput / numpy.save throughput: {best['numpy.save'] / best['zarr write']:.2f}x "
          "(page cache; goal >= 0.5x)")
    print(f"  the same, both fsynced to disk:               {best['numpy durable'] / best['zarr durable']:.2f}x")
    print(f"one (layer, head) slice read / full read time:  {best['slice read'] / best['full read']:.3f}x "
          f"(slice is 1/{layers * heads} of the data)")


if __name__ == "__main__":
    main()
