"""Benchmark: a perturbation trace vs plain transformers forwards of the same batch and conditions.

    .venv/bin/python analyses/benchmarks/bench_trace.py [--preset data/configs/presets/tiny-teacher.yaml]
        [--length 1024] [--batch 2] [--specs 3] [--repeats 5]

A trace of S specs runs the batch S+1 times (clean + each spec) in one forward; the plain reference is one
transformers forward of the same (S+1) x batch rows, same attention implementation (sdpa for nnsight,
eager for TransformerLens). Rows:

- ``nnsight run``: ``NNsightBackend.run`` (one invoke per spec, q/k edits in every layer), no captures;
- ``nnsight run_trace``: the full trace (statistics of every layer + logit lens + final divergences),
  computed on the fly inside the forward (``Backend.stream`` + ``TraceStats``);
- ``tl run``: ``TransformerLensBackend.run`` vs plain eager transformers.

Threads are pinned to 1; the modes alternate within each repeat, so each repeat gives one ratio per mode
measured side by side; the table shows the median of those ratios over the repeats (and the ratio of the
best times). Goal (issue 14): nnsight run_trace <= 1.3x.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from workbench import checkpoint_io, config, interventions, models  # noqa: E402
from workbench.interventions import specs as S  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="data/configs/presets/tiny-teacher.yaml")
    ap.add_argument("--length", type=int, default=1024)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--specs", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=9)
    args = ap.parse_args()
    torch.set_num_threads(1)
    cfg = config.load_model_config(args.preset)
    with tempfile.TemporaryDirectory() as tmp:
        path = checkpoint_io.save_checkpoint(models.build_model(cfg, seed=0), f"{tmp}/bench/ckpt-0", {"phase": "bench"})
        specs = [S.Spec(f"q-shift-{k}", [S.shift(16 * (k + 1), "q")]) for k in range(args.specs)]
        runs = [S.identity(), *specs]
        inputs = interventions.default_inputs(cfg.vocab_size, batch=args.batch, length=args.length)
        ids, pos = inputs["input_ids"], inputs["position_ids"]
        n = len(runs)
        big_ids, big_pos = ids.repeat(n, 1), pos.repeat(n, 1)
        sdpa, _ = checkpoint_io.load(path)
        eager, _ = checkpoint_io.load(path, attn_implementation="eager")
        nn, tl = interventions.load_backend(path, "nnsight"), interventions.load_backend(path, "tl")

        def hf(model):
            with torch.no_grad():
                model(input_ids=big_ids, position_ids=big_pos)

        modes = {
            "hf sdpa": lambda: hf(sdpa),
            "nnsight run": lambda: nn.run(ids, pos, runs),
            "nnsight run_trace": lambda: interventions.run_trace(path, specs, inputs, backend=nn),
            "hf eager": lambda: hf(eager),
            "tl run": lambda: tl.run(ids, pos, runs),
        }
        for fn in modes.values():  # warm up
            fn()
        times = {k: [] for k in modes}
        for _ in range(args.repeats):
            for name, fn in modes.items():
                t = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - t)
    print(
        f"preset {args.preset}, batch {args.batch} x {args.length} tokens, clean + {args.specs} specs "
        f"({n * args.batch} rows), 1 thread, {args.repeats} interleaved repeats"
    )
    print(f"{'mode':<20} {'median ratio':>13} {'best/best':>10} {'min..max ratio':>16}   reference")
    for name, ref in (("nnsight run", "hf sdpa"), ("nnsight run_trace", "hf sdpa"), ("tl run", "hf eager")):
        ratios = [a / b for a, b in zip(times[name], times[ref])]
        print(
            f"{name:<20} {statistics.median(ratios):>12.2f}x {min(times[name]) / min(times[ref]):>9.2f}x "
            f"{min(ratios):>7.2f}..{max(ratios):.2f}x   {ref} (median {statistics.median(times[ref]) * 1e3:.0f} ms)"
        )


if __name__ == "__main__":
    main()
