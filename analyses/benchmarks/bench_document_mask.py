"""Benchmark: peak memory and tokens/s of a document-masked KD step on CPU, dense mask vs FlexAttention BlockMask.

    .venv/bin/python analyses/benchmarks/bench_document_mask.py [--lengths 4096,16384,32768] [--dense-max 16384]
        [--modes causal,flex,dense,student-dense]

One KD step = the student's forward + backward (causal SDPA) and the frozen teacher's forward under the
position-invariant ``reset`` view (every packed document alone: reset positions, document-masked attention), then
the chunked KD loss; ``workbench.train.distill.DistillModule``, as the trainer runs it. Modes:

- ``causal``: the teacher with the window's causal mask (reference: what attention costs without documents);
- ``flex``: the teacher's document mask as a ``BlockMask`` (``workbench.attention``, the default from 2,048 tokens);
- ``dense``: the teacher's document mask as the dense ``[1, 1, T, T]`` mask (the old path);
- ``student-dense``: student *and* teacher document-masked with the dense mask: the student's ``document``
  packing mode on CPU, where FlexAttention has no backward (torch 2.11-2.13); on CUDA it is flex
  (``bench_gpu_trainer.py`` measures that).

Each (mode, length) runs in its own subprocess, one torch thread: one warm-up step (flex compiles here), then the
kernel's peak-RSS counter is reset (/proc/self/clear_refs) and one timed step runs; peak = high-water mark minus
the resident memory before the timed step. Dense modes above ``--dense-max`` tokens are not run: the row gives the
dense mask's own size (it alone is T^2 x 4 bytes). Growth = peak at the longest length / peak at the shortest,
compared with causal's (goal: flex within 1.2x of causal's growth).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parents[2]
MODES = ("causal", "flex", "dense", "student-dense")


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def peak_rss_bytes() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return 0


def reset_peak() -> None:
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def child(mode: str, length: int) -> dict:
    """One KD step of ``mode`` at ``length`` tokens in this fresh process; returns its row."""
    import torch

    torch.set_num_threads(1)
    from workbench import attention
    from workbench.config import ModelConfig
    from workbench.models import build_model
    from workbench.train.distill import DistillModule
    from workbench.train.losses import LossSpec

    def model(seed: int, layers: int):
        return build_model(
            ModelConfig(
                vocab_size=256,
                hidden_size=64,
                num_layers=layers,
                num_heads=2,
                num_kv_heads=2,
                head_dim=32,
                intermediate_size=128,
                max_position_embeddings=length,
                rope_theta=10000.0,
            ),
            seed=seed,
        )

    student, teacher = model(0, 2), model(1, 2).requires_grad_(False).eval()
    g = torch.Generator().manual_seed(0)
    lens = torch.randint(64, 257, (length // 64,), generator=g)
    doc_ids = torch.repeat_interleave(torch.arange(len(lens)), lens)[:length][None]  # [1, T] packed 64-256 docs
    ids = torch.randint(0, 256, (1, length), generator=g)
    batch = {"input_ids": ids, "labels": ids.clone(), "doc_ids": doc_ids, "position_ids": torch.arange(length)[None]}
    backend = {"flex": "flex", "dense": "dense", "student-dense": "dense"}.get(mode, "auto")
    orig = attention.document_mask

    def teacher_mask(d, **kw):  # the reset view's mask, in this mode's backend
        return orig(d, **{**kw, "backend": backend})

    import workbench.train.distill as distill

    distill.attention.document_mask = teacher_mask  # the reset view reads attention.document_mask
    module = DistillModule(student, teacher, "same" if mode == "causal" else "reset")
    spec = LossSpec(kd_weight=1.0, chunk_size=1024)
    mask = attention.attention_mask(doc_ids, "document" if mode == "student-dense" else "causal", backend="dense")

    def step() -> float:
        t0 = time.perf_counter()
        loss = module(batch, mask, spec, float(length - 1))[0]
        loss.backward()
        student.zero_grad(set_to_none=True)
        return time.perf_counter() - t0

    t_warm = step()
    base = rss_bytes()
    reset_peak()
    seconds = step()
    return {
        "mode": mode,
        "length": length,
        "peak_mb": (peak_rss_bytes() - base) / 2**20,
        "seconds": seconds,
        "tokens_per_s": length / seconds,
        "warmup_s": t_warm,
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lengths", default="4096,16384,32768")
    ap.add_argument("--modes", default=",".join(MODES))
    ap.add_argument("--dense-max", type=int, default=16384, help="longest window the dense modes run at")
    ap.add_argument("--child", nargs=2, metavar=("MODE", "LENGTH"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        print(json.dumps(child(args.child[0], int(args.child[1]))))
        return 0
    lengths = [int(x) for x in args.lengths.split(",")]
    modes = [m for m in args.modes.split(",") if m]
    bad = [m for m in modes if m not in MODES]
    if bad:
        ap.error(f"--modes: unknown {bad}; choose from {MODES}")
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    rows: dict[tuple[str, int], dict] = {}
    print(f"{'mode':<14}{'tokens':>8}{'peak MB':>10}{'tokens/s':>10}{'warm-up s':>11}")
    for mode in modes:
        for n in lengths:
            if mode in ("dense", "student-dense") and n > args.dense_max:
                mask_gb = n * n * 4 / 2**30
                print(f"{mode:<14}{n:>8}  not run: the dense [1, 1, T, T] mask alone is {mask_gb:.1f} GiB (fp32)")
                continue
            p = subprocess.run(
                [sys.executable, __file__, "--child", mode, str(n)], capture_output=True, text=True, env=env
            )
            if p.returncode != 0:
                print(f"{mode:<14}{n:>8}  failed: {(p.stderr.strip().splitlines() or ['?'])[-1]}")
                continue
            r = rows[(mode, n)] = json.loads(p.stdout.strip().splitlines()[-1])
            print(f"{mode:<14}{n:>8}{r['peak_mb']:>10.0f}{r['tokens_per_s']:>10.0f}{r['warmup_s']:>11.1f}", flush=True)
    lo, hi = lengths[0], lengths[-1]
    print(f"\nmemory growth {lo} -> {hi} tokens (peak ratio):")
    growth = {}
    for mode in modes:
        if (mode, lo) in rows and (mode, hi) in rows:
            growth[mode] = rows[(mode, hi)]["peak_mb"] / max(rows[(mode, lo)]["peak_mb"], 1e-9)
            print(f"  {mode:<14}{growth[mode]:.2f}x")
    if "flex" in growth and "causal" in growth:
        print(f"  flex / causal growth: {growth['flex'] / growth['causal']:.2f} (goal <= 1.2)")
    for n in lengths:
        if ("flex", n) in rows and ("dense", n) in rows:
            f, d = rows[("flex", n)], rows[("dense", n)]
            print(
                f"  {n} tokens: dense / flex peak {d['peak_mb'] / max(f['peak_mb'], 1e-9):.2f}x, "
                f"flex / dense tokens/s {f['tokens_per_s'] / d['tokens_per_s']:.2f}x"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
