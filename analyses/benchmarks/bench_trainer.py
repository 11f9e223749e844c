"""Trainer throughput vs a bare PyTorch loop doing the same model, batches and loss (not a test).

    .venv/bin/python analyses/benchmarks/bench_trainer.py [--steps 30 --seq-len 512 --batch 8]

Both sides: the tiny-student preset, the same seeded synthetic stream, AdamW, clipping, one thread.
The bare loop is what a user would write by hand: ``LlamaForCausalLM(labels=...)`` for CE, and for KD a
no-grad teacher forward plus ``F.kl_div`` on full logits. The trainer side is ``workbench.train.train``
(chunked loss, metrics, bucket losses, progress off, a checkpoint only at the end). Reported: median
tokens/s over steps after warm-up and tokens per CPU-second of the whole run (steady under other
processes' load), each the best of ``--rounds`` alternating rounds, and the ratios (goal >= 0.9).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from workbench import checkpoint_io, config, models, tokenizers  # noqa: E402
from workbench.data import attention_mask, make_stream  # noqa: E402
from workbench.train import train  # noqa: E402
from workbench.train.phases import phase_seed  # noqa: E402


def run_config(objective: str, teacher: Path | None, args) -> config.RunConfig:
    student = config.load_model_config(ROOT / "data" / "configs" / "presets" / "tiny-student.yaml")
    raw = {
        "name": "bench",
        "model": config.to_dict(student),
        "seed": 0,
        "data": {"kind": "synthetic-short", "doc_len_min": 64, "doc_len_max": 256},
        "optim": {"micro_batch_size": args.batch, "grad_accum_steps": 1, "grad_clip": 1.0},
        "checkpoint": {"every": 0, "keep_last": 1},
        "phases": [
            {
                "name": "p",
                "steps": args.steps,
                "seq_len": args.seq_len,
                "rope_theta": 10000,
                "lr": 1e-3,
                "objective": objective,
            }
        ],
    }
    if teacher is not None:
        raw["teacher"] = {"path": str(teacher)}
    return config.from_dict(config.RunConfig, raw, "bench")


def trainer_tps(cfg: config.RunConfig, out: Path, warmup: int) -> tuple[float, float]:
    """(median wall tokens/s per step after warm-up, tokens per CPU-second of the whole run)."""
    cpu = time.process_time()
    run = train(cfg, out=str(out), progress=False)
    cpu = time.process_time() - cpu
    recs = [json.loads(ln) for ln in (run / "metrics.jsonl").read_text().splitlines()]
    wall = statistics.median(r["tokens_per_s"] for r in recs if r["kind"] == "train" and r["step"] > warmup)
    return wall, recs[-1]["tokens"] / cpu


def bare_tps(cfg: config.RunConfig, teacher_path: Path | None, warmup: int) -> tuple[float, float]:
    """(median wall tokens/s per step after warm-up, tokens per CPU-second of the whole loop)."""
    cpu = time.process_time()
    ph = cfg.phases[0]
    model = models.build_model(cfg.model, seed=cfg.seed)
    models.set_rope_theta(model, ph.rope_theta)
    model.train()
    teacher = checkpoint_io.load(teacher_path)[0].requires_grad_(False) if teacher_path else None
    opt = torch.optim.AdamW(
        model.parameters(), lr=ph.lr, betas=tuple(cfg.optim.betas), weight_decay=cfg.optim.weight_decay
    )
    stream = make_stream(cfg.data, ph.seq_len, cfg.optim.micro_batch_size, phase_seed(cfg, 0))
    rates, tokens = [], 0
    for i in range(ph.steps):
        t0 = time.perf_counter()
        b = stream.next()
        mask = attention_mask(b["doc_ids"], cfg.data.packing.attention)
        if teacher is None:
            loss = model(
                input_ids=b["input_ids"], position_ids=b["position_ids"], attention_mask=mask, labels=b["labels"]
            ).loss
        else:
            with torch.no_grad():
                t = teacher(input_ids=b["input_ids"], position_ids=b["position_ids"], attention_mask=mask).logits
            s = model(input_ids=b["input_ids"], position_ids=b["position_ids"], attention_mask=mask).logits
            valid = b["labels"][:, 1:] != -100
            kl = F.kl_div(s[:, :-1].log_softmax(-1), t[:, :-1].log_softmax(-1), log_target=True, reduction="none").sum(
                -1
            )
            loss = kl[valid].sum() / valid.sum()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.optim.grad_clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
        float(loss.detach())
        tokens += b["input_ids"].numel()
        if i >= warmup:
            rates.append(b["input_ids"].numel() / (time.perf_counter() - t0))
    return statistics.median(rates), tokens / (time.process_time() - cpu)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--seq-len", type=int, default=512)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--warmup", type=int, default=3, help="steps not timed, fewer than --steps (default 3)")
    args = p.parse_args()
    if not 0 <= args.warmup < args.steps:  # the medians are over the steps after the warm-up
        p.error(f"--warmup: from 0 to --steps - 1 ({args.steps - 1}), not {args.warmup}")
    torch.set_num_threads(1)
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        teacher = tmp / "teacher"
        tcfg = config.load_model_config(ROOT / "data" / "configs" / "presets" / "tiny-teacher.yaml")
        checkpoint_io.save_checkpoint(
            models.build_model(tcfg, seed=1),
            teacher,
            {"step": 0},
            extra=lambda tmp_dir: tokenizers.save(tokenizers.synthetic(), tmp_dir),  # the run's vocabulary
        )
        print(f"tiny-student, {args.batch} x {args.seq_len} tokens per step, {args.steps} steps, 1 thread")
        print(
            "wall: median tokens/s per step after warm-up; cpu: tokens per CPU-second of the whole run "
            "(robust to other processes; includes model build and the final checkpoint)"
        )
        print(
            f"{'objective':>9} {'bare wall':>10} {'ours wall':>10} {'ratio':>6} {'bare cpu':>9} {'ours cpu':>9} "
            f"{'ratio':>6}"
        )
        for objective in ("ce", "kd"):
            t_path = teacher if objective == "kd" else None
            cfg = run_config(objective, t_path, args)
            bare, ours = [], []
            for r in range(args.rounds):  # alternate so background load hits both sides alike
                bare.append(bare_tps(cfg, t_path, args.warmup))
                ours.append(trainer_tps(cfg, tmp / f"{objective}-{r}", args.warmup))
            bw, bc = max(x[0] for x in bare), max(x[1] for x in bare)
            ow, oc = max(x[0] for x in ours), max(x[1] for x in ours)
            print(f"{objective:>9} {bw:>10.0f} {ow:>10.0f} {ow / bw:>6.2f} {bc:>9.0f} {oc:>9.0f} {oc / bc:>6.2f}")
        print("goal: trainer / bare >= 0.9")


if __name__ == "__main__":
    main()
