"""Benchmark: ``optim.compile`` vs eager on CPU: loss difference after N steps and the tokens/s ratio.

    .venv/bin/python analyses/benchmarks/bench_compile.py [--steps 6] [--seq-len 256] [--threads 1]

Two runs of the trainer (``workbench.train.train``) from one config and seed, a tiny KD run (student 2 layers,
width 64; teacher 2 layers, width 96) on packed short documents, one eager and one with ``optim.compile: true``.
Prints the per-step losses side by side, the max |loss difference| over the first ``--steps - 1`` steps (the
training trajectories must agree up to float reassociation), the first step's time (the compile) and the tokens/s
ratio compiled / eager over the steps after the first.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=6, help="training steps, at least 2 (default 6)")
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    if args.steps < 2:  # the loss comparison and the tokens/s ratio are over the steps after the first
        ap.error(f"--steps: at least 2, not {args.steps}")
    import torch

    torch.set_num_threads(args.threads)
    from workbench import checkpoint_io, config, models, tokenizers
    from workbench.train import train

    student = dict(
        vocab_size=256,
        hidden_size=64,
        num_layers=2,
        num_heads=4,
        num_kv_heads=2,
        head_dim=16,
        intermediate_size=128,
        max_position_embeddings=4096,
        rope_theta=500.0,
    )
    with tempfile.TemporaryDirectory() as tmp:
        teacher = Path(tmp) / "teacher"
        checkpoint_io.save_checkpoint(
            models.build_model(config.ModelConfig(**dict(student, hidden_size=96)), seed=7),
            teacher,
            {"phase": "t", "step": 0},
            extra=lambda tmp_dir: tokenizers.save(tokenizers.synthetic(), tmp_dir),  # the run's vocabulary
        )
        results = {}
        for compiled in (False, True):
            cfg = config.from_dict(
                config.RunConfig,
                {
                    "name": "bench",
                    "model": student,
                    "seed": 0,
                    "teacher": {"path": str(teacher)},
                    "data": {"kind": "synthetic-short", "doc_len_min": 32, "doc_len_max": 128},
                    "optim": {"micro_batch_size": 2, "compile": compiled},
                    "checkpoint": {"every": 0, "keep_last": 1},
                    "phases": [
                        {
                            "name": "p",
                            "steps": args.steps,
                            "seq_len": args.seq_len,
                            "rope_theta": 500,
                            "lr": 1e-3,
                            "objective": "kd",
                        }
                    ],
                },
            )
            t0 = time.perf_counter()
            run = train(cfg, out=str(Path(tmp) / f"run-{compiled}"), progress=False)
            wall = time.perf_counter() - t0
            recs = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
            recs = [r for r in recs if r["kind"] == "train"]
            results[compiled] = (recs, wall)
    eager, comp = results[False][0], results[True][0]
    print(f"{'step':>4}{'eager loss':>14}{'compiled loss':>15}{'|diff|':>10}")
    for e, c in zip(eager, comp):
        print(f"{e['step']:>4}{e['loss']:>14.6f}{c['loss']:>15.6f}{abs(e['loss'] - c['loss']):>10.2e}")
    n = args.steps - 1
    diff = max(abs(e["loss"] - c["loss"]) for e, c in zip(eager[:n], comp[:n]))
    tps = [sum(r["tokens_per_s"] for r in rs[1:]) / max(len(rs) - 1, 1) for rs in (eager, comp)]
    first = [rs[0]["tokens"] / rs[0]["tokens_per_s"] for rs in (eager, comp)]
    print(
        f"\nmax |loss diff| over the first {n} steps: {diff:.2e}; after step {n}: "
        f"{abs(eager[n - 1]['loss'] - comp[n - 1]['loss']):.2e}"
    )
    print(f"first step: eager {first[0]:.1f} s, compiled {first[1]:.1f} s (the compile)")
    print(
        f"tokens/s after the first step: eager {tps[0]:.0f}, compiled {tps[1]:.0f}, ratio compiled/eager "
        f"{tps[1] / tps[0]:.2f}x (threads {args.threads})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
