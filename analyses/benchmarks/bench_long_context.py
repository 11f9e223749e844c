"""Benchmark: time and peak memory of `trace` (nnsight), `updates` and `probe` from 1k to 32k tokens.

    .venv/bin/python analyses/benchmarks/bench_long_context.py [--lengths 1024,4096,16384,32768]
        [--cases trace,updates,probe] [--cuda-lengths 1024,4096,16384,32768,131072]

A 2-layer tiny model (the tiny-student preset, positions up to the longest length) and a perturbed copy
of it are saved once; every (case, length) then runs in its own subprocess, one torch thread, as the
real command (``workbench.cli.main``) on one window of that length:

- ``trace``: ``workbench trace CKPT --spec q-shift --samples 1 --length L`` (nnsight backend, clean + 1 spec);
- ``updates``: ``workbench updates CKPT_A CKPT_B --seq-len L --windows 1`` (weights + state view);
- ``probe``: ``workbench probe CKPT --seq-len L --windows 4 --score-seq-len L`` (position probes + the
  score decomposition, fast method).

Peak memory is the process's high-water mark of resident memory during the command minus its resident
memory just before it (everything imported, the "idle process"): the kernel's peak is reset through
/proc/self/clear_refs before the command, so each number belongs to its case alone. The table shows
each step's ratio to the previous length; linear memory means <= 4.5x for each 4x in length. Times
include the forward passes, whose attention is quadratic in compute (but linear in memory with sdpa).

The CUDA section (when a GPU is there) runs the same cases with the models on the GPU (trace through the
library, updates/probe with ``--device cuda``) and reports torch's peak allocated GPU memory above the
idle process; without a GPU it prints one line saying it was skipped.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

ROOT = Path(__file__).resolve().parents[2]
SPEC = """name: q-shift-64
description: q only, +64 positions, every layer and pair
ops:
  - {kind: shift, target: q, offset: 64}
"""


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def peak_rss_bytes() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def command(case: str, length: int, work: Path, out: Path, device: str) -> list[str]:
    a, b = str(work / "run" / "ckpt-000001"), str(work / "run" / "ckpt-000002")
    dev = ["--device", device]
    if case == "trace":
        return [
            "trace",
            a,
            "--spec",
            str(work / "spec.yaml"),
            "--samples",
            "1",
            "--length",
            str(length),
            "--out",
            str(out),
            *dev,
        ]
    if case == "updates":
        return ["updates", a, b, "--seq-len", str(length), "--windows", "1", "--out", str(out), *dev]
    if case == "probe":
        return [
            "probe",
            a,
            "--seq-len",
            str(length),
            "--windows",
            "4",
            "--score-seq-len",
            str(length),
            "--out",
            str(out),
            *dev,
        ]
    raise ValueError(case)


def child(case: str, length: int, work: Path, device: str) -> None:
    """One case in this (fresh) process: import everything, measure idle, run, print one JSON line."""
    import contextlib
    import io

    import torch

    torch.set_num_threads(1)
    import nnsight  # noqa: F401  (imports count as idle, not as the case)
    import sklearn.linear_model  # noqa: F401
    import transformers  # noqa: F401

    from workbench import cli, interventions

    out = work / f"store-{case}-{length}-{device}.zarr"
    cuda = device.startswith("cuda")
    if cuda:
        torch.cuda.init()
        torch.cuda.reset_peak_memory_stats()
        idle_gpu = torch.cuda.memory_allocated()
    idle = rss_bytes()
    clean_peak = reset_peak()
    t0 = time.perf_counter()
    sink = io.StringIO()
    with contextlib.redirect_stdout(sink), contextlib.redirect_stderr(io.StringIO()):
        if cuda and case == "trace":  # the trace command has no --device: the library, same call
            path = work / "run" / "ckpt-000001"
            be = interventions.load_backend(path, "nnsight", device=device)
            specs = interventions.load_specs(work / "spec.yaml")
            ds = interventions.run_trace(
                path, specs, interventions.default_inputs(be.vocab_size, batch=1, length=length), backend=be
            )
            interventions.write_traces(out, ds)
            rc = 0
        else:
            rc = cli.main(command(case, length, work, out, device))
    if cuda:
        torch.cuda.synchronize()
    wall = time.perf_counter() - t0
    row = {
        "case": case,
        "length": length,
        "rc": rc,
        "time_s": wall,
        "peak_mb": (peak_rss_bytes() - idle) / 2**20 if clean_peak else float("nan"),
        "idle_mb": idle / 2**20,
    }
    if cuda:
        row["gpu_peak_mb"] = (torch.cuda.max_memory_allocated() - idle_gpu) / 2**20
    print("RESULT " + json.dumps(row))


def make_checkpoints(work: Path, max_len: int) -> None:
    import torch

    from workbench import checkpoint_io, config, models

    cfg = config.load_model_config(ROOT / "data/configs/presets/tiny-student.yaml")
    cfg = dataclasses.replace(cfg, max_position_embeddings=max_len)
    model = models.build_model(cfg, seed=0)
    checkpoint_io.save_checkpoint(model, work / "run" / "ckpt-000001", {"phase": "short", "step": 1, "objective": "kd"})
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.01 * torch.randn(p.shape, generator=g))
    checkpoint_io.save_checkpoint(model, work / "run" / "ckpt-000002", {"phase": "long", "step": 2, "objective": "kd"})
    (work / "spec.yaml").write_text(SPEC)


def run_case(case: str, length: int, work: Path, device: str, timeout: float) -> dict:
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
        "HF_HUB_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "PYTHONPATH": str(ROOT),
    }
    cmd = [sys.executable, __file__, "--child", case, "--length", str(length), "--work", str(work), "--device", device]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout, cwd=ROOT)
    except subprocess.TimeoutExpired:
        return {"case": case, "length": length, "rc": "timeout"}
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[7:])
    return {"case": case, "length": length, "rc": proc.returncode, "error": proc.stderr.strip().splitlines()[-1:]}


def table(rows: list[dict], cases: list[str], key: str, unit: str) -> None:
    print(f"{'case':<8} {'tokens':>7} {'time s':>8} {'x prev':>7} {unit:>11} {'x prev':>7}")
    for case in cases:
        prev = None
        for r in (r for r in rows if r["case"] == case):
            if r.get("rc") != 0:
                print(f"{case:<8} {r['length']:>7}  failed: {r.get('rc')} {r.get('error', '')}")
                prev = None
                continue
            tx = f"{r['time_s'] / prev['time_s']:.2f}x" if prev else "-"
            mx = f"{r[key] / prev[key]:.2f}x" if prev and prev[key] > 0 else "-"
            print(f"{case:<8} {r['length']:>7} {r['time_s']:>8.1f} {tx:>7} {r[key]:>11.1f} {mx:>7}")
            prev = r


def check_linear(rows: list[dict], key: str) -> list[str]:
    bad = []
    for case in sorted({r["case"] for r in rows}):
        ok = [r for r in rows if r["case"] == case and r.get("rc") == 0]
        for a, b in zip(ok, ok[1:]):
            growth, mem = b["length"] / a["length"], b[key] / max(a[key], 1e-9)
            if mem > 4.5 / 4 * growth:
                bad.append(f"{case} {a['length']}->{b['length']}: memory x{mem:.2f} for x{growth:g} tokens")
    return bad


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lengths", default="1024,4096,16384,32768")
    ap.add_argument("--cases", default="trace,updates,probe")
    ap.add_argument("--cuda-lengths", default="1024,4096,16384,32768")
    ap.add_argument("--timeout", type=float, default=1800, help="seconds per case")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--length", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--work", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--device", default="cpu", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args.child, args.length, Path(args.work), args.device)
        return
    import torch

    lengths = [int(x) for x in args.lengths.split(",")]
    cuda_lengths = [int(x) for x in args.cuda_lengths.split(",")]
    cases = args.cases.split(",")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        make_checkpoints(work, max(lengths + cuda_lengths))
        print(
            "2-layer tiny model (tiny-student preset), one window per case, 1 torch thread, one subprocess per "
            "case; memory = peak RSS above the idle process"
        )
        rows = []
        for length in lengths:
            for case in cases:
                rows.append(run_case(case, length, work, "cpu", args.timeout))
                r = rows[-1]
                print(
                    f"  ran {case} at {length}: {r.get('time_s', float('nan')):.1f} s, "
                    f"{r.get('peak_mb', float('nan')):.0f} MiB (rc {r.get('rc')})",
                    flush=True,
                )
        print("\nCPU")
        table(rows, cases, "peak_mb", "peak MiB")
        bad = check_linear(rows, "peak_mb")
        print(
            "memory linear in length (each 4x in tokens <= 4.5x in memory): "
            + ("yes" if not bad else "NO: " + "; ".join(bad))
        )
        print("\nCUDA")
        if not torch.cuda.is_available():
            print("skipped: no CUDA device on this machine")
            return
        gpu_rows = [run_case(case, length, work, "cuda", args.timeout) for length in cuda_lengths for case in cases]
        print(f"device {torch.cuda.get_device_name(0)}; memory = peak allocated GPU memory above the idle process")
        table(gpu_rows, cases, "gpu_peak_mb", "GPU MiB")
        bad = check_linear(gpu_rows, "gpu_peak_mb")
        print("GPU memory linear in length: " + ("yes" if not bad else "NO: " + "; ".join(bad)))


if __name__ == "__main__":
    main()
