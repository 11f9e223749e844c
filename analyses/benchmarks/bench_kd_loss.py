"""Chunked KD loss vs the dense reference: peak memory and time, side by side (not a test).

    .venv/bin/python analyses/benchmarks/bench_kd_loss.py [--tokens 8192 --vocab 32000 --hidden 512]

Forward KL, fp32, CPU, one thread. Each measurement of peak memory runs in its own subprocess (peak RSS
above the RSS after the inputs exist), so one variant's allocations cannot hide the other's; times are
measured in this process, variants alternating, and reported as ratios. Goals (issue 3): memory ratio
<= 0.15, time ratio <= 1.0.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from workbench.train.losses import LossSpec, OnlineTeacher, chunked_loss, dense_loss  # noqa: E402


def make_inputs(n: int, v: int, h: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(n, h, generator=g).requires_grad_()
    weight = (torch.randn(v, h, generator=g) / h**0.5).requires_grad_()
    t_hidden = torch.randn(n, h, generator=g)
    t_weight = torch.randn(v, h, generator=g) / h**0.5
    labels = torch.randint(0, v, (n,), generator=g)
    labels[::17] = -100
    return hidden, weight, t_hidden, t_weight, labels


def step(variant: str, inputs, chunk: int) -> float:
    """One loss forward + backward; returns the loss value."""
    hidden, weight, t_hidden, t_weight, labels = inputs
    spec = LossSpec(ce_weight=0.0, kd_weight=1.0, chunk_size=chunk)
    if variant == "dense":
        loss = dense_loss(hidden, weight, labels, spec, teacher_hidden=t_hidden, teacher_weight=t_weight)
    else:
        loss = chunked_loss(hidden, weight, labels, spec, teacher=OnlineTeacher(t_hidden, t_weight)).loss
    loss.backward()
    value = float(loss.detach())
    hidden.grad = weight.grad = None
    return value


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def child(args) -> None:
    """Subprocess: peak RSS of one forward+backward above the RSS with the inputs allocated."""
    torch.set_num_threads(1)
    inputs = make_inputs(args.tokens, args.vocab, args.hidden)
    base = rss_mb()
    step(args.child, inputs, args.chunk)
    print(json.dumps({"peak_mb": rss_mb() - base}))


def peak_in_subprocess(variant: str, args) -> float:
    cmd = [
        sys.executable,
        __file__,
        "--child",
        variant,
        "--tokens",
        str(args.tokens),
        "--vocab",
        str(args.vocab),
        "--hidden",
        str(args.hidden),
        "--chunk",
        str(args.chunk),
    ]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])["peak_mb"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tokens", type=int, default=8192)
    p.add_argument("--vocab", type=int, default=32000)
    p.add_argument("--hidden", type=int, default=512)
    p.add_argument("--chunk", type=int, default=1024)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--child", choices=["dense", "chunked"], default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        return child(args)
    torch.set_num_threads(1)
    print(
        f"KD loss (forward KL, fp32, CPU, 1 thread): {args.tokens} tokens x vocab {args.vocab}, hidden "
        f"{args.hidden}, chunk {args.chunk}"
    )
    mem = {v: peak_in_subprocess(v, args) for v in ("dense", "chunked")}
    inputs = make_inputs(args.tokens, args.vocab, args.hidden)
    times: dict[str, list[float]] = {"dense": [], "chunked": []}
    values = {}
    step("chunked", inputs, args.chunk)  # warm-up
    for _ in range(args.repeats):
        for v in ("dense", "chunked"):
            t0 = time.perf_counter()
            values[v] = step(v, inputs, args.chunk)
            times[v].append(time.perf_counter() - t0)
    best = {v: min(ts) for v, ts in times.items()}
    print(f"{'variant':>8} {'peak MB':>10} {'best s':>8}")
    for v in ("dense", "chunked"):
        print(f"{v:>8} {mem[v]:>10.0f} {best[v]:>8.2f}")
    print(f"loss values: dense {values['dense']:.6f}, chunked {values['chunked']:.6f}")
    print(f"peak-memory ratio chunked/dense: {mem['chunked'] / mem['dense']:.3f} (goal <= 0.15)")
    print(f"time ratio chunked/dense:        {best['chunked'] / best['dense']:.3f} (goal <= 1.0)")


if __name__ == "__main__":
    main()
