"""GPU throughput and MFU of the trainer on the paper-scale 1.1B student (not a test; needs CUDA).

    .venv/bin/python analyses/benchmarks/bench_gpu_trainer.py [--seq-len 8192 --steps 12 --objective kd]
    torchrun --standalone --nproc_per_node 8 analyses/benchmarks/bench_gpu_trainer.py ...   # FSDP2

Runs ``workbench.train.train`` on the ``presets/paper-student-1.1b.yaml`` shape with synthetic data of the
right vocabulary (``repeated`` kind: throughput does not depend on content) and, for KD, a random teacher
of ``--teacher-preset`` shape saved to a temp dir (no weights are downloaded). Reports median tokens/s per
GPU after warm-up and MFU:

    MFU = tokens/s * (6 * N_student + 2 * N_teacher + attention) / peak FLOP/s

with attention FLOPs per token 6 * L * T * d (student fwd+bwd, causal) + 2 * L_t * T * d_t (teacher fwd).
``--peak-tflops`` defaults by device name (H100/H200 989 bf16 dense, A100 312). Goal: MFU >= 50 % on an
H200. Refuses on a machine without CUDA.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from workbench import config, models  # noqa: E402

PEAK_BF16_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0, "A10": 125.0}


def flops_per_token(student: config.ModelConfig, teacher: config.ModelConfig | None, seq_len: int) -> float:
    """Training FLOPs per token: student forward+backward, teacher forward (causal attention halves QK/AV)."""
    f = 6 * models.count_parameters(student) + 6 * student.num_layers * seq_len * student.num_heads \
        * student.resolved_head_dim
    if teacher is not None:
        f += 2 * models.count_parameters(teacher) + 2 * teacher.num_layers * seq_len * teacher.num_heads \
            * teacher.resolved_head_dim
    return float(f)


def peak_tflops(arg: float | None) -> float:
    if arg:
        return arg
    name = torch.cuda.get_device_name()
    for key, value in PEAK_BF16_TFLOPS.items():
        if key in name:
            return value
    raise SystemExit(f"unknown GPU {name!r}: pass --peak-tflops (dense bf16 peak of one device)")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--objective", choices=["kd", "ce"], default="kd")
    p.add_argument("--seq-len", type=int, default=8192)
    p.add_argument("--micro-batch", type=int, default=1)
    p.add_argument("--steps", type=int, default=12)
    p.add_argument("--warmup", type=int, default=4)
    p.add_argument("--chunk-size", type=int, default=4096)
    p.add_argument("--activation-checkpointing", action="store_true")
    p.add_argument("--teacher-preset", default=str(ROOT / "data/configs/presets/paper-student-1.1b.yaml"),
                   help="shape of the random teacher (same vocabulary as the student)")
    p.add_argument("--peak-tflops", type=float, default=None)
    args = p.parse_args()
    if not torch.cuda.is_available():
        print("bench_gpu_trainer: needs a CUDA GPU (this machine has none); nothing measured.", file=sys.stderr)
        return 2
    from transformers.utils import logging as hf_logging

    from workbench.train import train

    hf_logging.disable_progress_bar()
    torch.backends.cuda.matmul.allow_tf32 = True
    rank = int(os.environ.get("RANK", "0"))
    world = int(os.environ.get("WORLD_SIZE", "1"))
    student = config.load_model_config(ROOT / "data/configs/presets/paper-student-1.1b.yaml")
    teacher_cfg = config.load_model_config(args.teacher_preset) if args.objective == "kd" else None
    peak = peak_tflops(args.peak_tflops)
    tmp = Path(os.environ.get("BENCH_TMP", tempfile.gettempdir())) / "bench-gpu-trainer"
    teacher_dir = tmp / "teacher"
    if teacher_cfg is not None and rank == 0 and not teacher_dir.exists():
        models.save_checkpoint(models.build_model(teacher_cfg, seed=1, dtype=torch.bfloat16), teacher_dir,
                               {"step": 0, "phase": "random-teacher"})
    if world > 1:
        import torch.distributed as dist

        dist.init_process_group("nccl")
        dist.barrier()
    raw = {"name": "bench-gpu", "model": config.to_dict(student), "device": "cuda", "seed": 0,
           "data": {"kind": "repeated", "options": {"period": 512}},
           "optim": {"micro_batch_size": args.micro_batch, "grad_accum_steps": 1,
                     "activation_checkpointing": args.activation_checkpointing},
           "loss": {"chunk_size": args.chunk_size},
           "checkpoint": {"every": 0, "keep_last": 1},
           "phases": [{"name": "bench", "steps": args.steps, "seq_len": args.seq_len,
                       "rope_theta": student.rope_theta, "lr": 1e-4, "objective": args.objective}]}
    if teacher_cfg is not None:
        raw["teacher"] = {"path": str(teacher_dir)}
    cfg = config.from_dict(config.RunConfig, raw, "bench")
    out = tmp / f"run-{args.objective}-{args.seq_len}-{os.getpid() if world == 1 else 'dist'}"
    run = train(cfg, out=str(out), progress=rank == 0)
    if rank != 0:
        return 0
    recs = [json.loads(ln) for ln in (run / "metrics.jsonl").read_text().splitlines()]
    tps = statistics.median(r["tokens_per_s"] for r in recs if r["kind"] == "train" and r["step"] > args.warmup)
    per_gpu = tps / world
    fpt = flops_per_token(student, teacher_cfg, args.seq_len)
    mfu = per_gpu * fpt / (peak * 1e12)
    print(f"{torch.cuda.get_device_name()} x {world}: objective {args.objective}, seq_len {args.seq_len}, "
          f"micro-batch {args.micro_batch}, activation checkpointing {args.activation_checkpointing}")
    print(f"tokens/s per GPU {per_gpu:,.0f}; FLOPs/token {fpt / 1e9:.2f} G; peak {peak:.0f} TFLOP/s; "
          f"MFU {100 * mfu:.1f} % (goal >= 50 %); peak memory {max(r['peak_mem_mb'] for r in recs):,.0f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
