"""Retrieval of a teacher checkpoint at 0.5x, 1x and 2x its training length, with the project's evals.

    .venv/bin/python analyses/experiments/teacher_eval.py data/teacher/tiny-teacher --train-len 1024

Prints one JSON line per (task, length): greedy exact-match accuracy over --samples seeded prompts with
needle depths spread over the window, and the mean log-probability of the gold answer.
"""

from __future__ import annotations

import argparse
import json

import torch

from workbench import checkpoint_io
from workbench.evals import quick_eval


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint")
    p.add_argument("--train-len", type=int, required=True)
    p.add_argument("--tasks", default="passkey,niah,multikey")
    p.add_argument("--samples", type=int, default=32)
    p.add_argument("--seed", type=int, default=20260417)
    args = p.parse_args()
    torch.set_num_threads(1)
    model, manifest = checkpoint_io.load(args.checkpoint)
    lengths = [args.train_len // 2, args.train_len, args.train_len * 2]
    for row in quick_eval(
        model, lengths=lengths, samples=args.samples, seed=args.seed, tasks=args.tasks.split(","), batch_size=8
    ):
        row["x_train_len"] = row["length"] / args.train_len
        print(json.dumps({k: (round(v, 4) if isinstance(v, float) else v) for k, v in row.items()}), flush=True)


if __name__ == "__main__":
    main()
