"""What holds the GPU memory at the peak of a KD training step, against ``train.memory.step_memory``'s terms.

    python analyses/benchmarks/bench_gpu_memory.py --rows doc-kd-128k,kd-8k --json $OUT/memory.json  # CUDA
    python analyses/benchmarks/bench_gpu_memory.py --dry-run                                          # CPU rehearsal

Runs the trainer (``workbench.train.train``) on the device check's KD rows (``bench_gpu_trainer.kd_config``: the
1.1B preset, a random 1.1B teacher, bf16, 3 steps) under PyTorch's allocator history
(``torch.cuda.memory._record_memory_history``, Python stacks), replays the allocations to the moment of the peak,
and prints the blocks alive then, grouped by the innermost workbench / transformers / torch frame that allocated
them (allocations made by the autograd engine have no Python frame: "backward (autograd)"), with the peak's own
allocation site. The device check measures the peak; this says what it is made of, so ``step_memory`` can be
fitted to it. On CPU (``--dry-run``) there is no allocator history: it runs the tiny presets and checks the replay
on a made-up trace.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_gpu_trainer as check  # noqa: E402

from workbench.train.memory import GB, step_memory  # noqa: E402

ROWS = {"kd-8k": False, "kd-32k": True, "doc-kd-32k": True, "doc-kd-128k": True}  # row -> activation checkpointing
SITES = ("/workbench/", "/transformers/", "/torch/")


def site(frames: list[dict]) -> str:
    """The innermost workbench or transformers frame (else torch's, else the innermost) as 'file:line name'."""
    if not frames:
        return "backward (autograd)"
    for markers in (SITES[:2], SITES[2:]):
        for f in frames:  # innermost first
            name = f.get("filename", "")
            for marker in markers:
                if marker in name:
                    return f"{name.split(marker, 1)[1]}:{f.get('line')} {f.get('name')}"
    f = frames[0]
    return f"{f.get('filename')}:{f.get('line')} {f.get('name')}"


def caller(frames: list[dict]) -> str:
    """The innermost workbench frame (which step of the trainer), or '-'."""
    for f in frames:
        if "/workbench/" in f.get("filename", ""):
            return f"{f['filename'].split('/workbench/', 1)[1]}:{f.get('line')} {f.get('name')}"
    return "-"


def live_at_peak(trace: list[dict]) -> tuple[int, int, list[dict]]:
    """(peak bytes, index of the peak's allocation, the blocks alive then) from one device's allocator trace:
    'alloc' adds a block, 'free_requested' removes it (what ``memory_allocated`` counts)."""
    now = peak = 0
    at = -1
    for i, e in enumerate(trace):
        if e["action"] == "alloc":
            now += e["size"]
            if now > peak:
                peak, at = now, i
        elif e["action"] == "free_requested":
            now -= e["size"]
    live: dict[int, dict] = {}
    for e in trace[: at + 1]:
        if e["action"] == "alloc":
            live[e["addr"]] = e
        elif e["action"] == "free_requested":
            live.pop(e["addr"], None)
    return peak, at, list(live.values())


def breakdown(blocks: list[dict], top: int = 25, by=site) -> list[dict]:
    """Live blocks grouped by allocation site (or ``by`` of their frames), largest first."""
    groups: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for b in blocks:
        g = groups[by(b.get("frames") or [])]
        g[0] += b["size"]
        g[1] += 1
    rows = [{"site": k, "GiB": v[0] / GB, "blocks": v[1]} for k, v in groups.items()]
    return sorted(rows, key=lambda r: -r["GiB"])[:top]


def measure(row: str, p: dict, device: torch.device, tmp: Path, steps: int) -> dict:
    from workbench.train import train

    seq_len, checkpointing = p[row], ROWS[row]
    cfg, student, teacher = check.kd_config(
        row, p, seq_len, checkpointing, device, tmp, 1, 0, document=row.startswith("doc-"), steps=steps
    )
    est = step_memory(
        student, seq_len, micro_batch=1, world_size=1, teacher=teacher, chunk=p["chunk"], checkpointing=checkpointing
    )
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
        torch.cuda.memory._record_memory_history(max_entries=2_000_000, stacks="python")
    t0 = time.perf_counter()
    run = train(cfg, out=str(tmp / f"mem-{row}-{os.getpid()}"), progress=False)
    wall = time.perf_counter() - t0
    out = {
        "row": row,
        "tokens": seq_len,
        "checkpointing": checkpointing,
        "estimate GiB": {k: getattr(est, k) / GB for k in ("states", "teacher", "gathered", "stored", "working")},
        "estimate total GiB": est.total / GB,
        "time s": wall,
    }
    if cuda:
        snapshot = torch.cuda.memory._snapshot()
        torch.cuda.memory._record_memory_history(enabled=None)
        trace = snapshot["device_traces"][device.index or 0]
        peak, at, blocks = live_at_peak(trace)
        out.update(
            {
                "max_memory_allocated GiB": torch.cuda.max_memory_allocated(device) / GB,
                "trace peak GiB": peak / GB,
                "trace events": len(trace),
                "peak allocation": {
                    "site": site(trace[at].get("frames") or []),
                    "workbench caller": caller(trace[at].get("frames") or []),
                    "MiB": trace[at]["size"] / 2**20,
                },
                "alive at peak": breakdown(blocks),
                "alive at peak, by workbench caller": breakdown(blocks, top=12, by=caller),
            }
        )
    import shutil

    shutil.rmtree(run, ignore_errors=True)
    return out


def rehearse_replay() -> None:
    """The replay on a made-up trace: two blocks alive at the peak, the freed one not counted."""
    fr = [{"filename": "/x/workbench/train/step.py", "line": 3, "name": "forward"}]
    trace = [
        {"action": "alloc", "addr": 1, "size": 100, "frames": fr},
        {"action": "alloc", "addr": 2, "size": 50, "frames": []},
        {"action": "free_requested", "addr": 1, "size": 100},
        {"action": "free_completed", "addr": 1, "size": 100},
        {"action": "alloc", "addr": 3, "size": 120, "frames": fr},
        {"action": "free_requested", "addr": 3, "size": 120},
    ]
    peak, at, blocks = live_at_peak(trace)
    assert (peak, at, sorted(b["addr"] for b in blocks)) == (170, 4, [2, 3]), (peak, at, blocks)
    sites = {r["site"]: r["blocks"] for r in breakdown(blocks)}
    assert sites == {"train/step.py:3 forward": 1, "backward (autograd)": 1}, sites
    torch_frame = {"filename": "/v/torch/nn/functional.py", "line": 9, "name": "silu"}
    hf_frame = {"filename": "/v/transformers/models/llama/modeling_llama.py", "line": 7, "name": "forward"}
    assert site([torch_frame, hf_frame, fr[0]]) == "models/llama/modeling_llama.py:7 forward"
    assert caller([torch_frame, hf_frame, fr[0]]) == "train/step.py:3 forward"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", default="doc-kd-128k,kd-8k", help=f"comma-separated, of {', '.join(ROWS)}")
    ap.add_argument("--steps", type=int, default=3, help="training steps per row (the peak needs AdamW's state)")
    ap.add_argument("--dry-run", action="store_true", help="CPU, tiny presets, no allocator history")
    ap.add_argument("--json", default=None, metavar="PATH", help="also write the results as JSON")
    args = ap.parse_args()
    rows = [r.strip() for r in args.rows.split(",") if r.strip()]
    if unknown := set(rows) - set(ROWS):
        ap.error(f"--rows: unknown {sorted(unknown)}; known: {', '.join(ROWS)}")
    if not args.dry_run and not torch.cuda.is_available():
        print("bench_gpu_memory: needs a CUDA GPU; rehearse with --dry-run", file=sys.stderr)
        return 2
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    rehearse_replay()
    if args.dry_run:
        torch.set_num_threads(1)
        device = torch.device("cpu")
    else:
        device = torch.device("cuda", 0)
        torch.cuda.set_device(device)
    p = check.plan(args.dry_run)
    tmp = Path(os.environ.get("BENCH_TMP", tempfile.gettempdir())) / "bench-gpu-trainer"
    tmp.mkdir(parents=True, exist_ok=True)
    results = []
    for row in rows:
        try:
            results.append(measure(row, p, device, tmp, args.steps))
        except Exception as exc:  # one failing row must not hide the others
            import traceback

            traceback.print_exc()
            results.append({"row": row, "error": f"{type(exc).__name__}: {str(exc)[:300]}"})
        print(json.dumps(results[-1], indent=1, default=str), flush=True)
        if args.json:
            Path(args.json).write_text(json.dumps(results, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
