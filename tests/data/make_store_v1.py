"""How tests/data/store-v1 was made: with the workbench-store/1 code (commit 62f7a4f), probes, score_decomposition,
updates_weights, updates_states, bands, traces and retrieval of a 2-layer toy run.

    git worktree add /tmp/oldwb 62f7a4f
    cd /tmp/oldwb && HF_HUB_OFFLINE=1 PYTHONPATH=/tmp/oldwb .venv/bin/python tests/data/make_store_v1.py /tmp/v1
    cp -r /tmp/v1/runs/toy/results.zarr tests/data/store-v1   # (the checkpoints are not kept)
"""

import shutil
import sys
from pathlib import Path

import torch

torch.set_num_threads(1)
from workbench import checkpoint_io, cli, models, store  # noqa: E402 (after the thread pin)
from workbench.config import ModelConfig  # noqa: E402

assert store.SCHEMA == "workbench-store/1"
work = Path(sys.argv[1])
shutil.rmtree(work, ignore_errors=True)
work.mkdir(parents=True)
root = work / "runs" / "toy"
cfg = ModelConfig(
    vocab_size=128,
    hidden_size=32,
    num_layers=2,
    num_heads=2,
    num_kv_heads=1,
    head_dim=16,
    intermediate_size=64,
    max_position_embeddings=512,
    rope_theta=500.0,
)
model = models.build_model(cfg, seed=0)
a = checkpoint_io.save_checkpoint(
    model, root / "ckpt-000001", {"phase": "short", "step": 1, "objective": "kd", "phase_end": True}
)
models.set_rope_theta(model, 20000.0)
g = torch.Generator().manual_seed(0)
with torch.no_grad():
    for p in model.parameters():
        p.add_(0.01 * torch.randn(p.shape, generator=g))
b = checkpoint_io.save_checkpoint(
    model, root / "ckpt-000002", {"phase": "long", "step": 2, "objective": "kd", "phase_end": True}
)
out = str(root / "results.zarr")
spec = work / "spec.yaml"
spec.write_text("name: q-shift\nops:\n  - {kind: shift, target: q, offset: 8}\n")

assert (
    cli.main(
        ["updates", str(a), str(b), "--out", out, "--phase-lengths", "64,256", "--seq-len", "32", "--batch-size", "1"]
    )
    == 0
)
assert (
    cli.main(
        [
            "probe",
            str(a),
            str(b),
            "--out",
            out,
            "--seq-len",
            "32",
            "--windows",
            "4",
            "--buckets",
            "4",
            "--score-seq-len",
            "32",
            "--max-train",
            "200",
        ]
    )
    == 0
)
assert (
    cli.main(["trace", str(b), "--spec", str(spec), "--out", out, "--length", "32", "--batch", "1", "--buckets", "2"])
    == 0
)
assert (
    cli.main(
        [
            "eval",
            str(a),
            str(b),
            "--out",
            out,
            "--tasks",
            "passkey",
            "--lengths",
            "64",
            "--depths",
            "2",
            "--samples",
            "1",
        ]
    )
    == 0
)
print(store.groups(out))
