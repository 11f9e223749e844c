"""Benchmark: batched retrieval evaluation vs one sample at a time, samples/s ratio, side by side in one run.

    .venv/bin/python analyses/benchmarks/bench_eval.py [--preset data/configs/presets/tiny-teacher.yaml]
        [--lengths 256,1024] [--samples 32] [--task passkey] [--repeats 3]

Both main modes run the same code path (``workbench.evals.runner.score_samples``: one prefill per batch
and a KV-cached greedy loop); only the batch size differs. A third column is the naive reference: one
sample at a time, no KV cache (every greedy step re-reads the whole prompt). Threads are pinned; the modes
alternate within each repeat so a busy neighbour slows all alike; ratios use the best time of each mode.
Also checks that all modes produce identical greedy outputs.
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from workbench import config, models  # noqa: E402
from workbench.evals import SyntheticRendering, make_samples  # noqa: E402
from workbench.evals.runner import score_samples  # noqa: E402


@torch.no_grad()
def naive_greedy(model, samples) -> list[np.ndarray]:
    """One sample at a time, no cache: a full forward over prompt + generated tokens per new token."""
    out = []
    for s in samples:
        ids = torch.as_tensor(s.input_ids)[None]
        for _ in range(len(s.answer_ids)):
            nxt = model(input_ids=ids, use_cache=False, logits_to_keep=1).logits[:, -1].argmax(-1)
            ids = torch.cat([ids, nxt[:, None]], 1)
        out.append(ids[0, len(s.input_ids) :].numpy())
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="data/configs/presets/tiny-teacher.yaml")
    p.add_argument("--lengths", default="256,1024")
    p.add_argument("--samples", type=int, default=32)
    p.add_argument("--task", default="passkey")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)

    model = models.build_model(config.load_model_config(args.preset), seed=0)
    rendering = SyntheticRendering()
    print(f"preset {args.preset}, task {args.task}, {args.samples} samples per length, threads {args.threads}")
    print(
        f"{'length':>7} {'batched s/s':>12} {'one-by-one s/s':>15} {'no-cache s/s':>13} "
        f"{'batched/one':>12} {'batched/no-cache':>17}"
    )
    for length in (int(x) for x in args.lengths.split(",")):
        depths = list(np.linspace(0, 100, args.samples))
        samples = make_samples(args.task, length, depths, 1, rendering, seed=0)
        best = {"batched": float("inf"), "single": float("inf"), "naive": float("inf")}
        outputs = {}
        score_samples(model, samples[:2], rendering)  # warm-up
        for _ in range(args.repeats):
            for mode, batch_size in (("batched", None), ("single", 1)):
                t0 = time.perf_counter()
                outputs[mode] = score_samples(model, samples, rendering, batch_size=batch_size)
                best[mode] = min(best[mode], time.perf_counter() - t0)
            t0 = time.perf_counter()
            naive = naive_greedy(model, samples)
            best["naive"] = min(best["naive"], time.perf_counter() - t0)
        same = all(
            np.array_equal(a.generated, b.generated) and np.array_equal(a.generated, c)
            for a, b, c in zip(outputs["batched"], outputs["single"], naive)
        )
        rate = {m: len(samples) / t for m, t in best.items()}
        print(
            f"{length:>7} {rate['batched']:>12.1f} {rate['single']:>15.1f} {rate['naive']:>13.1f} "
            f"{rate['batched'] / rate['single']:>11.1f}x {rate['batched'] / rate['naive']:>16.1f}x"
            f"{'' if same else '  OUTPUTS DIFFER'}"
        )


if __name__ == "__main__":
    main()
