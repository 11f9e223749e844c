"""Benchmark: Zarr store writes vs raw numpy.save of the same bytes; one-slice read vs full read.

    .venv/bin/python analyses/benchmarks/bench_store.py [--mb 64] [--repeats 11] [--quick]

Writes an activations-shaped float32 array (checkpoint, spec, sample, layer, head, position, pair, half)
through ``workbench.store.write_grid`` (chunks of one (checkpoint, spec, layer), uncompressed, as
``write_activations`` does) and the same bytes with ``numpy.save``. Every case runs once per repeat, in an
order rotated from repeat to repeat (A/B interleaved, side by side in one process), twice: back to back
(as the issue measured: the kernel may still be flushing the previous case's pages) and right after an
``os.sync()`` (no case pays for another's). The table gives the median over repeats; throughput ratio =
numpy.save time / case time (goal: write_grid >= 0.5x).

Cases: the previous write path (``xarray.Dataset.to_zarr``, as ``write_grid`` called it before, also under
``zarr.config`` async concurrency 1 and 64); ``write_grid`` (new group, and appending a second checkpoint
to an existing group); the same data with other encodings through ``store.write``: one shard per
(checkpoint, spec) cell (what ``write_grid`` does), one file per chunk, Blosc lz4 and zstd level 1; both
fsynced (durable) for numpy, the previous path and ``write_grid``. Then reading one (layer, head) slice
lazily vs the whole variable, for shards and plain chunks. Numbers are ratios from one run, not absolute
times (the machine is shared). Nothing here uses torch; if something imported it, it is pinned to 1 thread.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import xarray as xr  # noqa: E402
import zarr  # noqa: E402

from workbench import rope, store  # noqa: E402

DIMS = ("checkpoint", "spec", "sample", "layer", "head", "position", "pair", "half")
CHUNK_DIMS = store.GROUPS[store.ACTIVATIONS].chunk_dims  # ("checkpoint", "spec", "layer")


def _fsync_tree(path: str) -> None:
    if os.path.isfile(path):
        with open(path, "rb") as f:
            os.fsync(f.fileno())
        return
    for root, _dirs, files in os.walk(path):
        for name in files:
            with open(os.path.join(root, name), "rb") as f:
                os.fsync(f.fileno())
        fd = os.open(root, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _dataset(data: np.ndarray, name: str, pairs: int) -> xr.Dataset:
    return xr.Dataset(
        {"rot_q": (DIMS, data)},
        coords={
            "checkpoint": np.array([name], dtype=object),
            "spec": np.array(["clean", "x"], dtype=object),
            **store.pair_coords(rope.wavelengths(10000.0, 2 * pairs)),
        },
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mb", type=float, default=64)
    ap.add_argument("--repeats", type=int, default=11)
    ap.add_argument("--quick", action="store_true", help="only numpy.save, the previous path and write_grid")
    args = ap.parse_args()
    if "torch" in sys.modules:  # nothing here needs torch; pin it if something imported it
        sys.modules["torch"].set_num_threads(1)
    import dask
    from zarr.codecs import BloscCodec, ZstdCodec

    dask.config.set(scheduler="synchronous")
    layers, heads, pairs = 8, 8, 32
    positions = max(16, int(args.mb * 2**20 / 4 / (2 * layers * heads * pairs * 2)))
    rng = np.random.default_rng(0)
    data = rng.standard_normal((1, 2, 1, layers, heads, positions, pairs, 2)).astype(np.float32)
    other = rng.standard_normal(data.shape).astype(np.float32)
    shard = (1, 1, 1, layers, heads, positions, pairs, 2)

    def encoding(ds: xr.Dataset, **extra) -> dict:
        enc = store.chunk_encoding(ds, CHUNK_DIMS, compress=False)
        enc["rot_q"].update(extra)
        return enc

    def previous(path: str, concurrency: int | None = None) -> None:  # write_grid before this change
        ds = _dataset(data, "c", pairs)
        ds[store.WRITTEN] = (("checkpoint", "spec"), np.ones((1, 2), np.int8))
        cfg = {"async.concurrency": concurrency} if concurrency else {}
        with zarr.config.set(cfg):
            ds.to_zarr(
                path,
                group=store.ACTIVATIONS,
                mode="w-",
                zarr_format=3,
                consolidated=False,
                encoding=store.chunk_encoding(ds, CHUNK_DIMS, compress=False),
            )

    def grid(path: str) -> None:  # one shard file per (checkpoint, spec) cell, chunks of one layer inside
        store.save(path, store.ACTIVATIONS, _dataset(data, "c", pairs))  # write_grid, as the registry says

    def variant(**extra):
        def run(path: str) -> None:
            ds = _dataset(data, "c", pairs)
            store.write(path, store.ACTIVATIONS, ds, encoding=encoding(ds, **extra))

        return run

    def npsave(path: str) -> None:
        with open(path, "wb") as f:
            np.save(f, data)

    cases: dict[str, tuple] = {  # name: (write, prepare or None, durable)
        "numpy.save": (npsave, None, True),
        "xarray.to_zarr (previous write_grid)": (previous, None, True),
        "write_grid (new group)": (grid, None, True),
    }
    if not args.quick:
        cases.update(
            {
                "  previous, zarr async.concurrency=1": (lambda p: previous(p, 1), None, False),
                "  previous, zarr async.concurrency=64": (lambda p: previous(p, 64), None, False),
                "write_grid (append a 2nd checkpoint)": (
                    lambda p: store.save(p, store.ACTIVATIONS, _dataset(other, "d", pairs)),
                    grid,
                    False,
                ),
                "store.write, one shard per cell": (variant(shards=shard), None, False),
                "store.write, one file per (ckpt, spec, layer)": (variant(), None, False),
                "store.write, blosc lz4 clevel 1 + shuffle": (
                    variant(compressors=[BloscCodec(cname="lz4", clevel=1, shuffle="shuffle")]),
                    None,
                    False,
                ),
                "store.write, zstd level 1": (variant(compressors=[ZstdCodec(level=1)]), None, False),
            }
        )
    modes = ("back to back", "after os.sync()")
    times = {(mode, name): [] for mode in modes for name in cases}
    durable: dict[str, list[float]] = {name: [] for name, c in cases.items() if c[2]}
    names = list(cases)
    with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_TMP")) as tmp:
        for r in range(args.repeats + 1):  # the first round warms imports and caches; not counted
            order = names[r % len(names) :] + names[: r % len(names)]
            for i, name in enumerate(order):
                write, prepare, fsync = cases[name]
                for mode in modes:
                    path = f"{tmp}/r{r}-{i}-{mode[:4]}" + ("" if name == "numpy.save" else ".zarr")
                    if prepare:
                        prepare(path)
                    if mode == modes[1]:
                        os.sync()  # no dirty pages of an earlier case are being flushed meanwhile
                    t = time.perf_counter()
                    write(path)
                    elapsed = time.perf_counter() - t
                    if fsync and mode == modes[1]:
                        _fsync_tree(path)
                        if r:
                            durable[name].append(time.perf_counter() - t)
                    if r:
                        times[mode, name].append(elapsed)
                    shutil.rmtree(path, ignore_errors=True) if os.path.isdir(path) else os.remove(path)
        reads = {}
        for label, write in (("one shard per cell (write_grid)", grid), ("one file per chunk", variant())):
            path = f"{tmp}/read-{label[:5]}.zarr"
            write(path)
            opened = xr.open_zarr(path, group=store.ACTIVATIONS, consolidated=False, chunks={})
            piece, whole = [], []
            for _ in range(args.repeats):
                t = time.perf_counter()
                _ = opened.rot_q.isel(layer=3, head=5).values
                piece.append(time.perf_counter() - t)
                t = time.perf_counter()
                _ = opened.rot_q.values
                whole.append(time.perf_counter() - t)
            reads[label] = statistics.median(piece) / statistics.median(whole)

    mb = data.nbytes / 2**20
    med = {key: statistics.median(v) for key, v in times.items()}
    print(
        f"{mb:.1f} MiB float32 activations, {layers} layers x {heads} heads; median of {args.repeats} "
        f"interleaved repeats (zarr {zarr.__version__}, xarray {xr.__version__})"
    )
    print(f"{'case':44s} " + "".join(f"{m:>26s}" for m in modes))
    print(f"{'':44s} " + "".join(f"{'ms   / numpy.save':>26s}" for _ in modes))
    for name in names:
        print(
            f"{name:44s} "
            + "".join(f"{med[m, name] * 1e3:17.1f} {med[m, 'numpy.save'] / med[m, name]:7.2f}x" for m in modes)
        )
    dbase = statistics.median(durable["numpy.save"])
    print("both fsynced to disk (durable; after os.sync()):")
    for name in durable:
        m = statistics.median(durable[name])
        print(f"{name:44s} {m * 1e3:17.1f} {dbase / m:7.2f}x")
    new, old = "write_grid (new group)", "xarray.to_zarr (previous write_grid)"
    for mode in modes:
        base = med[mode, "numpy.save"]
        print(
            f"zarr write throughput / numpy.save throughput ({mode}): {base / med[mode, new]:.2f}x "
            f"(before: {base / med[mode, old]:.2f}x; page cache; goal >= 0.5x)"
        )
    print(
        f"  the same, both fsynced to disk: {dbase / statistics.median(durable[new]):.2f}x "
        f"(before: {dbase / statistics.median(durable[old]):.2f}x)"
    )
    for label, ratio in reads.items():
        print(
            f"one (layer, head) slice read / full read time, {label}: {ratio:.3f}x "
            f"(slice is 1/{layers * heads} of the data)"
        )


if __name__ == "__main__":
    main()
