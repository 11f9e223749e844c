"""The prepared device check: bf16 KD steps of the 1.1B preset, eval and trace --check on CUDA, one table.

    python analyses/benchmarks/bench_gpu_trainer.py --budget 340   # CUDA: the check (under 6 min on one H200)
    python analyses/benchmarks/bench_gpu_trainer.py --dry-run       # CPU: tiny presets, the same table shape
    torchrun --standalone --nproc_per_node 8 analyses/benchmarks/bench_gpu_trainer.py --only kd-8k   # FSDP2

Rows (each a separate measurement; a failing row prints its error and the others still run):

- ``kd-8k``: bf16 KD steps of ``presets/paper-student-1.1b.yaml`` with a random teacher of the same 1.1B shape
  (built here, saved in bf16; nothing is downloaded), 8192 tokens per step, no activation checkpointing;
- ``kd-32k``: the same at 32768 tokens with activation checkpointing;
- ``doc-kd-32k`` / ``doc-kd-128k``: the KD step of ``kd-32k`` with ``packing.attention: document`` (documents
  of 256 tokens): student and teacher under FlexAttention ``BlockMask``s from the document ids
  (``workbench.attention``), activation checkpointing, at 32768 and 131072 tokens;
- ``kd-8k-compiled``: ``kd-8k`` with ``optim.compile: true`` (the first step, which compiles, is a warm-up step);
- ``doc-kd-32k-compiled``: ``doc-kd-32k`` with ``optim.compile: true`` (compiled blocks around FlexAttention with
  activation checkpointing);
- ``flex-equal``: every architecture of ``workbench.architectures`` (tiny random models, 1024 tokens): max |logit
  difference| and relative max |gradient difference| of the BlockMask against the dense 4D mask (the gradients
  only here: FlexAttention has no backward on CPU);
- ``eval``: ``workbench eval`` of the shipped tiny teacher (data/teacher/tiny-teacher) on the device;
- ``trace-check``: ``workbench trace --check --device DEVICE`` of the same checkpoint (TransformerLens and
  nnsight parity, identity, q/k shift invariance), as a user runs it;
- ``trace-device``: the same checks in-process (``workbench.interventions.check(..., device=)``),
  for the worst difference.

Columns: tokens per step, median tokens/s per GPU after warm-up, MFU, peak memory (CUDA: max allocated; CPU:
the process's max RSS) and ``workbench.train.memory.step_memory``'s estimate, wall time (for the KD rows: building
the student, loading the teacher, the steps and the phase-end checkpoint save, which is deleted after), status.
MFU counts the teacher's forward:

    MFU = tokens/s * (6 N_student + 2 N_teacher + 12 L K d + 4 L_t K d_t) / peak FLOP/s

with K the keys each query attends on average in the blocks the kernel computes: T / 2 for causal attention
(so 6 L T d), and for the document-masked rows the 128 x 128 blocks the ``BlockMask`` keeps (partial and full)
x 128^2 / T: attention FLOPs of the masked blocks only.

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
      python3 analyses/benchmarks/bench_gpu_trainer.py --budget 340 --json $OUT/bench.json 2>&1 | tee $OUT/bench.log
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import signal
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

from workbench import checkpoint_io, config, models, tokenizers  # noqa: E402
from workbench.train.memory import GB, step_memory  # noqa: E402

PEAK_BF16_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0, "A10": 125.0}
PRESETS = ROOT / "data/configs/presets"
TINY_CKPT = ROOT / "data/teacher/tiny-teacher"
ROWS = (
    "kd-8k",
    "kd-32k",
    "doc-kd-32k",
    "doc-kd-128k",
    "kd-8k-compiled",
    "doc-kd-32k-compiled",
    "flex-equal",
    "eval",
    "trace-check",
    "trace-device",
)
KD_ROWS = ("kd-8k", "kd-32k", "doc-kd-32k", "doc-kd-128k", "kd-8k-compiled", "doc-kd-32k-compiled")
CHECKPOINTED = ("kd-32k", "doc-kd-32k", "doc-kd-128k", "doc-kd-32k-compiled")  # rows with activation checkpointing
DOC_LEN = 256  # document length of the document-masked rows
COLUMNS = (
    "check",
    "device",
    "tokens/step",
    "tokens/s/GPU",
    "MFU %",
    "peak mem GiB",
    "estimate GiB",
    "time s",
    "status",
)


def flops_per_token(
    student: config.ModelConfig, teacher: config.ModelConfig | None, seq_len: int, keys_per_query: float | None = None
) -> float:
    """Training FLOPs per token: student forward+backward, teacher forward; attention over ``keys_per_query``
    keys per query (default T / 2: causal attention halves QK/AV)."""
    k = seq_len / 2 if keys_per_query is None else keys_per_query
    f = (
        6 * models.count_parameters(student)
        + 12 * student.num_layers * k * student.num_heads * student.resolved_head_dim
    )
    if teacher is not None:
        f += (
            2 * models.count_parameters(teacher)
            + 4 * teacher.num_layers * k * teacher.num_heads * teacher.resolved_head_dim
        )
    return float(f)


def masked_keys_per_query(seq_len: int, doc_len: int = DOC_LEN) -> tuple[float, float]:
    """(keys per query the flex kernel computes, fraction of causal blocks kept) for documents of ``doc_len``:
    the BlockMask's partial + full blocks x BLOCK^2 / T (attention FLOPs of the masked blocks only)."""
    from workbench import attention

    bm = attention.block_mask((torch.arange(seq_len) // doc_len)[None])
    kept = int(bm.kv_num_blocks.sum() + bm.full_kv_num_blocks.sum())
    nb = -(-seq_len // attention.BLOCK)
    return kept * attention.BLOCK**2 / seq_len, kept / (nb * (nb + 1) / 2)


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
        return {
            "student": PRESETS / "tiny-student.yaml",
            "teacher": PRESETS / "tiny-teacher.yaml",
            "kd-8k": 256,
            "kd-32k": 1024,
            "doc-kd-32k": 1024,
            "doc-kd-128k": 2048,
            "kd-8k-compiled": 256,
            "doc-kd-32k-compiled": 1024,
            "flex-equal": 256,
            "chunk": 256,
            "steps": 3,
            "warmup": 1,
            "eval_lengths": "256,512",
            "eval_samples": 2,
        }
    return {
        "student": PRESETS / "paper-student-1.1b.yaml",
        "teacher": PRESETS / "paper-student-1.1b.yaml",
        "kd-8k": 8192,
        "kd-32k": 32768,
        "doc-kd-32k": 32768,
        "doc-kd-128k": 131072,
        "kd-8k-compiled": 8192,
        "doc-kd-32k-compiled": 32768,
        "flex-equal": 1024,
        "chunk": 4096,
        "steps": 6,
        "warmup": 2,
        "eval_lengths": "512,1024,2048",
        "eval_samples": 8,
    }


def kd_config(
    name: str,
    p: dict,
    seq_len: int,
    checkpointing: bool,
    device: torch.device,
    tmp: Path,
    world: int,
    rank: int,
    document: bool = False,
    compile: bool = False,
    steps: int | None = None,
) -> tuple[config.RunConfig, config.ModelConfig, config.ModelConfig]:
    """(run config, student, teacher) of a KD row; the random teacher is built and saved once under ``tmp``."""
    student = config.load_model_config(p["student"])
    teacher = config.load_model_config(p["teacher"])
    window = max(p[r] for r in KD_ROWS)  # one random teacher (saved once) for every KD row
    student = config.ModelConfig(
        **{**config.to_dict(student), "max_position_embeddings": max(student.max_position_embeddings, window)}
    )
    teacher = config.ModelConfig(
        **{**config.to_dict(teacher), "max_position_embeddings": max(teacher.max_position_embeddings, window)}
    )
    teacher_dir = tmp / f"teacher-{teacher.hidden_size}-{window}"
    if rank == 0 and not tokenizers.has_tokenizer(teacher_dir):  # also rebuilds a cached teacher saved without one
        checkpoint_io.save_checkpoint(
            models.build_model(teacher, seed=1, dtype=torch.bfloat16, device=device),
            teacher_dir,
            {"step": 0, "phase": "random-teacher"},
            extra=lambda tmp_dir: tokenizers.save(tokenizers.synthetic(), tmp_dir),  # the run's vocabulary
        )
    if world > 1:
        import torch.distributed as dist

        if not dist.is_initialized():
            dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        dist.barrier()
    raw = {
        "name": f"bench-{name}",
        "model": config.to_dict(student),
        "device": device.type,
        "seed": 0,
        "data": {
            "kind": "repeated",
            "options": {"period": DOC_LEN if document else min(512, seq_len // 4)},
            "packing": {"attention": "document" if document else "causal"},
        },
        "teacher": {"path": str(teacher_dir)},
        "optim": {
            "micro_batch_size": 1,
            "grad_accum_steps": 1,
            "precision": "bf16",
            "activation_checkpointing": checkpointing,
            "compile": compile,
        },
        "loss": {"chunk_size": p["chunk"]},
        "checkpoint": {"every": 0, "keep_last": 1},
        "phases": [
            {
                "name": "bench",
                "steps": steps or (p["steps"] if name in ("kd-8k", "kd-32k") else p["warmup"] + 2),
                "seq_len": seq_len,
                "rope_theta": student.rope_theta,
                "lr": 1e-4,
                "objective": "kd",
            }
        ],
    }
    return config.from_dict(config.RunConfig, raw, "bench"), student, teacher


def kd_row(
    name: str,
    p: dict,
    seq_len: int,
    checkpointing: bool,
    device: torch.device,
    tmp: Path,
    peak: float | None,
    world: int,
    rank: int,
    document: bool = False,
    compile: bool = False,
) -> dict:
    from workbench.train import train

    cfg, student, teacher = kd_config(
        name, p, seq_len, checkpointing, device, tmp, world, rank, document=document, compile=compile
    )
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    t0 = time.perf_counter()
    run = train(cfg, out=str(tmp / f"run-{name}-{os.getpid() if world == 1 else 'dist'}"), progress=False)
    wall = time.perf_counter() - t0
    recs = [json.loads(ln) for ln in (run / "metrics.jsonl").read_text().splitlines()]
    train_recs = [r for r in recs if r["kind"] == "train"]
    tps = statistics.median(r["tokens_per_s"] for r in train_recs if r["step"] > p["warmup"]) / world
    kpq, kept = masked_keys_per_query(seq_len) if document else (None, 1.0)
    mfu = tps * flops_per_token(student, teacher, seq_len, kpq) / (peak * 1e12) if peak else None
    est = step_memory(
        student,
        seq_len,
        micro_batch=1,
        world_size=world,
        teacher=teacher,
        chunk=p["chunk"],
        checkpointing=checkpointing,
    )
    finite = all(map(lambda r: r["loss"] == r["loss"], train_recs))
    if rank == 0:  # the phase-end checkpoint (fp32 weights + AdamW state: 13 GB at 1.1B) is not kept
        import shutil

        shutil.rmtree(run, ignore_errors=True)
    status = f"ok, loss {train_recs[-1]['loss']:.3f}" if finite else "NaN loss"
    if document:
        status += (
            f", flex, {100 * kept:.1f}% of causal blocks"
            if device.type == "cuda"
            else ", dense mask (CPU: flex has no backward)"
        )
    if compile:
        first = train_recs[0]["tokens"] / train_recs[0]["tokens_per_s"]
        eager = [r for r in rows_done if r.get("check", "").startswith(name.removesuffix("-compiled") + " ")]
        status += f", first step {first:.0f} s" + (
            f", {tps / eager[0]['tokens/s/GPU']:.2f}x eager" if eager and eager[0].get("tokens/s/GPU") else ""
        )
    return {
        "check": f"{name} bf16 KD step" + (" +AC" if checkpointing else ""),
        "tokens/step": seq_len,
        "tokens/s/GPU": tps,
        "MFU %": None if mfu is None else 100 * mfu,
        "peak mem GiB": max(r["peak_mem_mb"] for r in train_recs) / 1024,
        "estimate GiB": est.total / GB,
        "time s": wall,
        "status": status,
    }


rows_done: list[dict] = []  # the rows measured so far (the compiled row compares itself with kd-8k)


def flex_equal_row(p: dict, device: torch.device) -> dict:
    """Every architecture: the BlockMask vs the dense mask, logits and (CUDA) gradients, tiny random models
    (documents of 16-299 tokens, two windows)."""
    from workbench import architectures, attention

    t0, seq, grad = time.perf_counter(), p["flex-equal"], device.type == "cuda"
    g = torch.Generator().manual_seed(0)
    lens = torch.randint(16, 300, (seq,), generator=g)
    docs = torch.repeat_interleave(torch.arange(seq), lens)[:seq].expand(2, seq).contiguous().to(device)
    ids = torch.randint(0, 64, (2, seq), generator=g).to(device)
    res, bad = {}, []
    tf32 = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False  # fp32 both ways: the comparison is of masks, not of TF32
    for arch in architectures.NAMES:
        try:
            res[arch] = attention.compare_with_dense(
                architectures.tiny(arch, max_positions=seq).to(device), ids, docs, grad=grad
            )
        except Exception as exc:  # one architecture's failure is reported, the others still run
            bad.append(f"{arch}: {type(exc).__name__}: {str(exc)[:80]}")
    torch.backends.cuda.matmul.allow_tf32 = tf32
    bad += [
        f"{a}: logits {r['logit_diff']:.1e}" for a, r in res.items() if r["logit_diff"] > 1e-3 * max(r["logit_max"], 1)
    ]
    bad += [f"{a}: grads {r['grad_rel_diff']:.1e}" for a, r in res.items() if r.get("grad_rel_diff", 0) > 1e-2]
    cells = " ".join(
        f"{a} {r['logit_diff']:.0e}" + (f"/{r['grad_rel_diff']:.0e}" if grad else "") for a, r in res.items()
    )
    status = (
        "ok, " if not bad else "FAILED " + "; ".join(bad)[:200] + " | "
    ) + f"max abs logit diff{'/rel grad diff' if grad else ' (no CPU backward)'}: {cells}"
    return {
        "check": "flex vs dense mask, 6 architectures",
        "device": device_name(device),
        "tokens/step": seq,
        "time s": time.perf_counter() - t0,
        "status": status,
    }


def eval_row(p: dict, device: torch.device, tmp: Path) -> dict:
    import shutil

    from workbench import cli

    shutil.rmtree(tmp / "eval.zarr", ignore_errors=True)  # a rerun evaluates again
    args = [
        "eval",
        str(TINY_CKPT),
        "--tasks",
        "passkey,niah",
        "--lengths",
        p["eval_lengths"],
        "--depths",
        "3",
        "--samples",
        str(p["eval_samples"]),
        "--extrapolate",
        "--device",
        str(device),
        "--out",
        str(tmp / "eval.zarr"),
    ]
    out, err = io.StringIO(), io.StringIO()
    t0 = time.perf_counter()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = cli.main(args)
    status = "ok" if rc == 0 else f"rc {rc}: {err.getvalue().strip()[-200:]}"
    niah = [ln for ln in out.getvalue().splitlines() if " niah " in f" {ln} "]
    if rc == 0 and niah:
        status += ", " + " ".join(niah[0].split()[-len(p["eval_lengths"].split(",")) :])
    return {
        "check": "eval tiny-teacher",
        "device": device_name(device),
        "tokens/step": max(int(x) for x in p["eval_lengths"].split(",")),
        "time s": time.perf_counter() - t0,
        "status": status,
    }


def trace_row(device: torch.device) -> dict:
    """``workbench trace --check --device DEVICE`` as a user runs it (both backends, plain-HF reference)."""
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
    }
    t0 = time.perf_counter()
    p = subprocess.run(
        [sys.executable, "-m", "workbench", "trace", str(TINY_CKPT), "--check", "--device", str(device)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    lines = [ln for ln in p.stdout.splitlines() if ln.strip()]
    status = f"ok ({len(lines)} lines)" if p.returncode == 0 else f"rc {p.returncode}: {(p.stderr or p.stdout)[-200:]}"
    return {
        "check": "trace --check tiny-teacher",
        "device": device_name(device),
        "time s": time.perf_counter() - t0,
        "status": status,
    }


def trace_device_row(device: torch.device) -> dict:
    """``workbench.interventions.check`` in-process on ``device``: the worst difference of the checks."""
    from workbench.interventions import sanity

    t0 = time.perf_counter()
    results = sanity.check(TINY_CKPT, device=str(device))
    failed = [r for r in results if not r.ok]
    worst = max(results, key=lambda r: r.value / r.tolerance if r.tolerance else (0.0 if r.value == 0 else 1e9))
    status = (
        f"ok, {len(results)} checks, worst {worst.value:.1e} (tol {worst.tolerance:g})"
        if not failed
        else f"FAILED {len(failed)}/{len(results)}: " + "; ".join(f"{r.name} {r.value:.1e}" for r in failed)[:200]
    )
    return {
        "check": "trace checks in-process",
        "device": device_name(device),
        "time s": time.perf_counter() - t0,
        "status": status,
    }


class RowTimeout(Exception):
    """A row ran past ``--row-timeout``."""


def _row_timeout(signum, frame):
    raise RowTimeout("row ran past --row-timeout")


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
    ap.add_argument(
        "--row-timeout",
        type=float,
        default=150.0,
        help="seconds one row may take before it is stopped and reported (0: no limit)",
    )
    ap.add_argument(
        "--budget",
        type=float,
        default=0.0,
        help="seconds for the whole check: a row that would start after it is reported as skipped, and "
        "no row runs past it (0: no limit)",
    )
    args = ap.parse_args()
    rows_wanted = [r.strip() for r in args.only.split(",") if r.strip()]
    unknown = set(rows_wanted) - set(ROWS)
    if unknown:
        ap.error(f"--only: unknown rows {sorted(unknown)}")
    if not args.dry_run and not torch.cuda.is_available():
        print(
            "bench_gpu_trainer: needs a CUDA GPU (this machine has none); nothing measured. Rehearse with --dry-run.",
            file=sys.stderr,
        )
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
    start = time.perf_counter()
    for name in rows_wanted:
        t0 = time.perf_counter()
        left = args.budget - (t0 - start) if args.budget else float("inf")
        limit = min(args.row_timeout or float("inf"), left)
        if left <= 5:
            rows.append({"check": name, "device": device_name(device), "status": "skipped: --budget spent"})
            continue
        try:
            if limit < float("inf") and world == 1:  # bounded: a row past its time raises RowTimeout, the others run
                signal.signal(signal.SIGALRM, _row_timeout)
                signal.setitimer(signal.ITIMER_REAL, limit)
            if name in KD_ROWS:
                row = kd_row(
                    name,
                    p,
                    p[name],
                    name in CHECKPOINTED,
                    device,
                    tmp,
                    peak,
                    world,
                    rank,
                    document=name.startswith("doc-"),
                    compile=name.endswith("-compiled"),
                )
            elif rank != 0:
                continue
            elif name == "flex-equal":
                row = flex_equal_row(p, device)
            elif name == "eval":
                row = eval_row(p, device, tmp)
            elif name == "trace-check":
                row = trace_row(device)
            else:
                row = trace_device_row(device)
        except Exception as exc:  # one failing row must not hide the others
            traceback.print_exc()
            row = {
                "check": name,
                "time s": time.perf_counter() - t0,
                "status": f"FAILED {type(exc).__name__}: {str(exc)[:160]}",
            }
        finally:
            if limit < float("inf") and world == 1:
                signal.setitimer(signal.ITIMER_REAL, 0)
        row.setdefault("device", device_name(device) + (f" x {world}" if world > 1 else ""))
        rows.append(row)
        rows_done.append(row)
        if device.type == "cuda":
            torch.cuda.empty_cache()
        if rank == 0:
            print(f"[{name}] {json.dumps(row, default=str)}", flush=True)
    if rank != 0:
        return 0
    versions = f"torch {torch.__version__}, transformers {__import__('transformers').__version__}"
    print(
        f"\n{'dry run (CPU, tiny presets)' if args.dry_run else device_name(device)}; {versions}; "
        f"peak {peak or '-'} TFLOP/s bf16\n"
    )
    print(table(rows))
    if args.json:
        Path(args.json).write_text(
            json.dumps({"versions": versions, "dry_run": args.dry_run, "rows": rows}, indent=2, default=str)
        )
    return 0 if all(str(r["status"]).startswith("ok") for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
