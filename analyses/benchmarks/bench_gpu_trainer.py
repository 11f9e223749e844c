"""The prepared device check: bf16 KD steps of the 1.1B preset, eval and trace --check on CUDA, one table.

    python analyses/benchmarks/bench_gpu_trainer.py                 # CUDA: the check (about 2-3 min on one H200)
    python analyses/benchmarks/bench_gpu_trainer.py --dry-run       # CPU: tiny presets, the same table shape
    torchrun --standalone --nproc_per_node 8 analyses/benchmarks/bench_gpu_trainer.py --only kd-8k   # FSDP2

Rows (each a separate measurement; a failing row prints its error and the others still run):

- ``kd-8k``: bf16 KD steps of ``presets/paper-student-1.1b.yaml`` with a random teacher of the same 1.1B shape
  (built here, saved in bf16; nothing is downloaded), 8192 tokens per step, no activation checkpointing;
- ``kd-32k``: the same at 32768 tokens with activation checkpointing;
- ``eval``: ``workbench eval`` of the shipped tiny teacher (data/teacher/tiny-teacher) on the device;
- ``trace-check``: ``workbench trace --check --device DEVICE`` of the same checkpoint (TransformerLens and
  nnsight parity, identity, q/k shift invariance), as a user runs it;
- ``trace-device``: the same checks in-process (``workbench.interventions.check(..., device=)``), for the worst difference.

Columns: tokens per step, median tokens/s per GPU after warm-up, MFU, peak memory (CUDA: max allocated; CPU:
the process's max RSS) and ``workbench.train.memory.step_memory``'s estimate, wall time (for the KD rows: building
the student, loading the teacher, the steps and the phase-end checkpoint save, which is deleted after), status.
MFU counts the teacher's forward:

    MFU = tokens/s * (6 N_student + 2 N_teacher + 6 L T d + 2 L_t T d_t) / peak FLOP/s

(``--peak-tflops`` defaults by device name: H100/H200 989 dense bf16, A100 312; CPU: none, MFU '-').

On the device machine (python 3.12, torch 2.11, transformers 5.17: KINDS.md of the device tool) the workbench's
other imports travel as wheels: 17 wheels, 35 MB (with the working tree, about 11 MB, under the tool's 64 MiB),
transformers 5.24 among them: the pinned version (5.17 names the KV cache ``past_key_values``, 5.24 ``cache``). Only
what ``eval`` and ``trace --check`` import is carried (checked with ``python -X importtime``): TransformerLens's
wandb, beartype, typeguard and transformers-stream-generator and nnsight's websocket-client are never imported
on these paths. Prepare them here once (.whl is in .git/info/exclude):

    echo /.whl/ >> .git/info/exclude
    python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \\
      --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl \\
      zarr==3.1.6 numcodecs==0.16.6 donfig==0.8.1.post1 google-crc32c==1.9.0 xarray==2026.9.0 \\
      nnsight==0.8.1 transformer-lens==4.3.0 datasets==5.2.0 dill==0.4.1 multiprocess==0.70.19 \\
      greenlet==3.5.6 zstandard==0.25.0 pydantic==2.14.4 pydantic-core==2.50.5 annotated-types==0.8.0 \\
      typing-inspection==0.4.5 transformers==5.24.0

and run it there (device tool: carry [".whl"], timeout_s 420):

    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \\
      .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 || exit; \\
      python3 analyses/benchmarks/bench_gpu_trainer.py --json $OUT/bench.json 2>&1 | tee $OUT/bench.log
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from workbench import config, models  # noqa: E402
from workbench.train.memory import GB, step_memory  # noqa: E402

PEAK_BF16_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0, "A10": 125.0}
PRESETS = ROOT / "data/configs/presets"
TINY_CKPT = ROOT / "data/teacher/tiny-teacher"
ROWS = ("kd-8k", "kd-32k", "eval", "trace-check", "trace-device")
COLUMNS = ("check", "device", "tokens/step", "tokens/s/GPU", "MFU %", "peak mem GB", "estimate GB", "time s", "status")


def flops_per_token(student: config.ModelConfig, teacher: config.ModelConfig | None, seq_len: int) -> float:
    """Training FLOPs per token: student forward+backward, teacher forward (causal attention halves QK/AV)."""
    f = 6 * models.count_parameters(student) + 6 * student.num_layers * seq_len * student.num_heads \
        * student.resolved_head_dim
    if teacher is not None:
        f += 2 * models.count_parameters(teacher) + 2 * teacher.num_layers * seq_len * teacher.num_heads \
            * teacher.resolved_head_dim
    return float(f)


def peak_tflops(arg: float | None, device: torch.device) -> float | None:
    if arg:
        return arg
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    for key, value in PEAK_BF16_TFLOPS.items():
        if key in name:
            return value
    return None


def device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device).replace("NVIDIA ", "") if device.type == "cuda" else "cpu"


def plan(dry_run: bool) -> dict:
    """Shapes and sizes of the check (the device run) or of its CPU rehearsal (tiny presets)."""
    if dry_run:
        return {"student": PRESETS / "tiny-student.yaml", "teacher": PRESETS / "tiny-teacher.yaml",
                "kd-8k": 256, "kd-32k": 1024, "chunk": 256, "steps": 3, "warmup": 1,
                "eval_lengths": "256,512", "eval_samples": 2}
    return {"student": PRESETS / "paper-student-1.1b.yaml", "teacher": PRESETS / "paper-student-1.1b.yaml",
            "kd-8k": 8192, "kd-32k": 32768, "chunk": 4096, "steps": 6, "warmup": 2,
            "eval_lengths": "512,1024,2048", "eval_samples": 8}


def kd_row(name: str, p: dict, seq_len: int, checkpointing: bool, device: torch.device, tmp: Path,
           peak: float | None, world: int, rank: int) -> dict:
    from workbench.train import train

    student = config.load_model_config(p["student"])
    teacher = config.load_model_config(p["teacher"])
    window = max(p["kd-8k"], p["kd-32k"])  # one random teacher (saved once) for both rows
    student = config.ModelConfig(**{**config.to_dict(student), "max_position_embeddings":
                                    max(student.max_position_embeddings, window)})
    teacher = config.ModelConfig(**{**config.to_dict(teacher), "max_position_embeddings":
                                    max(teacher.max_position_embeddings, window)})
    teacher_dir = tmp / f"teacher-{teacher.hidden_size}-{window}"
    if rank == 0 and not teacher_dir.exists():
        models.save_checkpoint(models.build_model(teacher, seed=1, dtype=torch.bfloat16, device=device), teacher_dir,
                               {"step": 0, "phase": "random-teacher"})
    if world > 1:
        import torch.distributed as dist

        if not dist.is_initialized():
            dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        dist.barrier()
    raw = {"name": f"bench-{name}", "model": config.to_dict(student), "device": device.type, "seed": 0,
           "data": {"kind": "repeated", "options": {"period": min(512, seq_len // 4)}},
           "teacher": {"path": str(teacher_dir)},
           "optim": {"micro_batch_size": 1, "grad_accum_steps": 1, "precision": "bf16",
                     "activation_checkpointing": checkpointing},
           "loss": {"chunk_size": p["chunk"]},
           "checkpoint": {"every": 0, "keep_last": 1},
           "phases": [{"name": "bench", "steps": p["steps"], "seq_len": seq_len,
                       "rope_theta": student.rope_theta, "lr": 1e-4, "objective": "kd"}]}
    cfg = config.from_dict(config.RunConfig, raw, "bench")
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    t0 = time.perf_counter()
    run = train(cfg, out=str(tmp / f"run-{name}-{os.getpid() if world == 1 else 'dist'}"), progress=False)
    wall = time.perf_counter() - t0
    recs = [json.loads(ln) for ln in (run / "metrics.jsonl").read_text().splitlines()]
    train_recs = [r for r in recs if r["kind"] == "train"]
    tps = statistics.median(r["tokens_per_s"] for r in train_recs if r["step"] > p["warmup"]) / world
    mfu = tps * flops_per_token(student, teacher, seq_len) / (peak * 1e12) if peak else None
    est = step_memory(student, seq_len, micro_batch=1, world_size=world, teacher=teacher, chunk=p["chunk"],
                      checkpointing=checkpointing)
    finite = all(map(lambda r: r["loss"] == r["loss"], train_recs))
    if rank == 0:  # the phase-end checkpoint (fp32 weights + AdamW state: 13 GB at 1.1B) is not kept
        import shutil

        shutil.rmtree(run, ignore_errors=True)
    return {"check": f"{name} bf16 KD step" + (" +AC" if checkpointing else ""), "tokens/step": seq_len,
            "tokens/s/GPU": tps, "MFU %": None if mfu is None else 100 * mfu,
            "peak mem GB": max(r["peak_mem_mb"] for r in train_recs) / 1024, "estimate GB": est.total / GB,
            "time s": wall, "status": f"ok, loss {train_recs[-1]['loss']:.3f}" if finite else "NaN loss"}


def eval_row(p: dict, device: torch.device, tmp: Path) -> dict:
    import shutil

    from workbench import cli

    shutil.rmtree(tmp / "eval.zarr", ignore_errors=True)  # a rerun evaluates again
    args = ["eval", str(TINY_CKPT), "--tasks", "passkey,niah", "--lengths", p["eval_lengths"], "--depths", "3",
            "--samples", str(p["eval_samples"]), "--extrapolate", "--device", str(device), "--out", str(tmp / "eval.zarr")]
    out, err = io.StringIO(), io.StringIO()
    t0 = time.perf_counter()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = cli.main(args)
    status = "ok" if rc == 0 else f"rc {rc}: {err.getvalue().strip()[-200:]}"
    niah = [ln for ln in out.getvalue().splitlines() if " niah " in f" {ln} "]
    if rc == 0 and niah:
        status += ", " + " ".join(niah[0].split()[-len(p["eval_lengths"].split(",")):])
    return {"check": "eval tiny-teacher", "device": device_name(device),
            "tokens/step": max(int(x) for x in p["eval_lengths"].split(",")), "time s": time.perf_counter() - t0,
            "status": status}


def trace_row(device: torch.device) -> dict:
    """``workbench trace --check --device DEVICE`` as a user runs it (both backends, plain-HF reference)."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    t0 = time.perf_counter()
    p = subprocess.run([sys.executable, "-m", "workbench", "trace", str(TINY_CKPT), "--check", "--device", str(device)],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    lines = [ln for ln in p.stdout.splitlines() if ln.strip()]
    status = f"ok ({len(lines)} lines)" if p.returncode == 0 else f"rc {p.returncode}: {(p.stderr or p.stdout)[-200:]}"
    return {"check": "trace --check tiny-teacher", "device": device_name(device), "time s": time.perf_counter() - t0,
            "status": status}


def trace_device_row(device: torch.device) -> dict:
    """``workbench.interventions.check`` in-process on ``device``: the worst difference of the checks."""
    from workbench.interventions import sanity

    t0 = time.perf_counter()
    results = sanity.check(TINY_CKPT, device=str(device))
    failed = [r for r in results if not r.ok]
    worst = max(results, key=lambda r: r.value / r.tolerance if r.tolerance else (0.0 if r.value == 0 else 1e9))
    status = (f"ok, {len(results)} checks, worst {worst.value:.1e} (tol {worst.tolerance:g})" if not failed else
              f"FAILED {len(failed)}/{len(results)}: " + "; ".join(f"{r.name} {r.value:.1e}" for r in failed)[:200])
    return {"check": "trace checks in-process", "device": device_name(device), "time s": time.perf_counter() - t0,
            "status": status}


def fmt(value, col: str) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        if col in ("tokens/s/GPU",):
            return f"{value:,.0f}"
        return f"{value:.1f}" if col in ("MFU %", "time s") else f"{value:.2f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def table(rows: list[dict]) -> str:
    cells = [[fmt(r.get(c), c) for c in COLUMNS] for r in rows]
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "|".join("---" for _ in COLUMNS) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in cells]
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dry-run", action="store_true", help="CPU, tiny presets: rehearse the check, same table")
    ap.add_argument("--only", default=",".join(ROWS), help="comma-separated rows")
    ap.add_argument("--peak-tflops", type=float, default=None)
    ap.add_argument("--json", default=None, metavar="PATH", help="also write the rows as JSON")
    args = ap.parse_args()
    rows_wanted = [r.strip() for r in args.only.split(",") if r.strip()]
    unknown = set(rows_wanted) - set(ROWS)
    if unknown:
        ap.error(f"--only: unknown rows {sorted(unknown)}")
    if not args.dry_run and not torch.cuda.is_available():
        print("bench_gpu_trainer: needs a CUDA GPU (this machine has none); nothing measured. "
              "Rehearse with --dry-run.", file=sys.stderr)
        return 2
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    rank, world = int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
    if args.dry_run:
        torch.set_num_threads(1)
        device = torch.device("cpu")
    else:
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
        torch.backends.cuda.matmul.allow_tf32 = True
    p = plan(args.dry_run)
    peak = peak_tflops(args.peak_tflops, device)
    tmp = Path(os.environ.get("BENCH_TMP", tempfile.gettempdir())) / "bench-gpu-trainer"
    tmp.mkdir(parents=True, exist_ok=True)
    rows = []
    for name in rows_wanted:
        t0 = time.perf_counter()
        try:
            if name in ("kd-8k", "kd-32k"):
                row = kd_row(name, p, p[name], name == "kd-32k", device, tmp, peak, world, rank)
            elif rank != 0:
                continue
            elif name == "eval":
                row = eval_row(p, device, tmp)
            elif name == "trace-check":
                row = trace_row(device)
            else:
                row = trace_device_row(device)
        except Exception as exc:  # one failing row must not hide the others
            traceback.print_exc()
            row = {"check": name, "time s": time.perf_counter() - t0, "status": f"FAILED {type(exc).__name__}: "
                                                                               f"{str(exc)[:160]}"}
        row.setdefault("device", device_name(device) + (f" x {world}" if world > 1 else ""))
        rows.append(row)
        if device.type == "cuda":
            torch.cuda.empty_cache()
        if rank == 0:
            print(f"[{name}] {json.dumps(row, default=str)}", flush=True)
    if rank != 0:
        return 0
    versions = f"torch {torch.__version__}, transformers {__import__('transformers').__version__}"
    print(f"\n{'dry run (CPU, tiny presets)' if args.dry_run else device_name(device)}; {versions}; "
          f"peak {peak or '-'} TFLOP/s bf16\n")
    print(table(rows))
    if args.json:
        Path(args.json).write_text(json.dumps({"versions": versions, "dry_run": args.dry_run, "rows": rows},
                                              indent=2, default=str))
    return 0 if all(str(r["status"]).startswith("ok") for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
