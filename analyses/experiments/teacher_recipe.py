"""Recipe search for the tiny long-context teacher: a bare training loop over build_model + synthetic
long documents, logging held-out passkey / key-value accuracy (``workbench.evals.quick_eval``, not only the loss)
as it trains.

    .venv/bin/python analyses/experiments/teacher_recipe.py --stages 256:400,512:300,1024:300 --out /tmp/t1

Each stage is SEQ_LEN:STEPS; the number of key-value facts grows with the stage (--pairs per 256 tokens).
Prints one JSON line per evaluation; with --out, each stage ends by saving the model to OUT-SEQ_LEN-STEP (HF dir).
"""

from __future__ import annotations

import argparse
import json
import math
import time

import numpy as np
import torch

from workbench import checkpoint_io, config, models
from workbench.data.synthetic import document
from workbench.evals import quick_eval


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="data/configs/presets/tiny-teacher.yaml")
    p.add_argument("--stages", default="256:400,512:300,1024:300")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--warmup", type=int, default=50)
    p.add_argument("--pairs", type=float, default=2.0, help="max key-value facts per 256 tokens")
    p.add_argument("--queries", type=int, default=3, help="queries per fact")
    p.add_argument("--echoes", type=float, default=0.0, help="echo spans per 128 tokens")
    p.add_argument("--supervise", default="answers", choices=["answers", "all"])
    p.add_argument("--theta", type=float, default=None)
    p.add_argument("--eval-every", type=int, default=50)
    p.add_argument("--eval-n", type=int, default=32)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None)
    p.add_argument("--init", default=None, help="start from this checkpoint instead of a fresh model")
    args = p.parse_args()
    torch.set_num_threads(args.threads)

    cfg = config.load_model_config(args.preset)
    if args.theta:
        cfg.rope_theta = args.theta
    model = (checkpoint_io.load(args.init)[0] if args.init else models.build_model(cfg, seed=args.seed)).train()
    stages = [tuple(int(x) for x in s.split(":")) for s in args.stages.split(",")]
    total = sum(n for _, n in stages)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, betas=(0.9, 0.95), weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt,
        lambda s: min(1.0, (s + 1) / args.warmup) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(s, total) / total))),
    )
    rng = np.random.default_rng(args.seed)
    step, t0 = 0, time.time()
    for seq_len, n_steps in stages:
        max_pairs = max(1, int(args.pairs * seq_len / 256))
        for _ in range(n_steps):
            docs = [
                document(
                    rng,
                    seq_len,
                    num_pairs=int(rng.integers(1, max_pairs + 1)),
                    queries_per_fact=args.queries,
                    supervise=args.supervise,
                    echoes=int(args.echoes * seq_len / 128),
                )
                for _ in range(args.batch)
            ]
            ids = torch.as_tensor(np.stack([d.ids for d in docs]))
            labels = torch.where(torch.as_tensor(np.stack([d.target for d in docs])), ids, -100)
            loss = model(input_ids=ids, labels=labels).loss
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
            step += 1
            if step % args.eval_every == 0 or step == total:
                model.eval()
                row = {
                    "step": step,
                    "seq_len": seq_len,
                    "loss": round(loss.item(), 4),
                    "wall_s": round(time.time() - t0, 1),
                }
                # the project's evaluation (greedy exact match, depths spread 0-100 %), as the trainer runs it
                for r in quick_eval(
                    model, lengths=sorted({256, seq_len, 1024}), samples=args.eval_n, seed=123, tasks=["passkey"]
                ):
                    row[f"pk@{r['length']}"] = r["accuracy"]
                    row[f"pk_logprob@{r['length']}"] = round(r["answer_logprob"], 3)  # partial credit
                for r in quick_eval(
                    model, lengths=[seq_len], samples=args.eval_n, seed=123, tasks=["niah", "multikey"]
                ):
                    row[f"{r['task']}@{seq_len}"] = r["accuracy"]
                print(json.dumps(row), flush=True)
                model.train()
        if args.out:
            checkpoint_io.save_checkpoint(
                model.eval(), f"{args.out}-{seq_len}-{step}", {"phase": "recipe", "step": step}
            )
            model.train()


if __name__ == "__main__":
    main()
