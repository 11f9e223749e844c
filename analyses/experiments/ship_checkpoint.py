"""Copy a trained checkpoint into data/ without its trainer state (a few MB), with the synthetic tokenizer
alongside so the directory works as a plain Hugging Face model, and the command that regenerates it.

    .venv/bin/python analyses/experiments/ship_checkpoint.py runs/tiny-teacher \
        --out data/teacher/tiny-teacher --recipe data/configs/tiny-teacher.yaml
    .venv/bin/python analyses/experiments/ship_checkpoint.py runs/tiny-student-short-theta500 \
        --out data/students/tiny-student-short-theta500 --recipe data/configs/stage1/tiny-student-short-theta500.yaml

Takes the run's last complete checkpoint; refuses to overwrite an existing directory.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from workbench import checkpoint_io
from workbench.data.tokenizer import synthetic_tokenizer
from workbench.runs import RunDir

DROP = {"files", "created", "versions", "rope_theta", "rope_scaling", "format"}  # re-filled by save_checkpoint


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run_dir", help="the training run directory")
    p.add_argument("--out", required=True, help="the shipped directory (must not exist)")
    p.add_argument("--recipe", required=True, help="the run config that regenerates it")
    args = p.parse_args()
    ckpts = RunDir(args.run_dir).checkpoints()
    if not ckpts:
        raise SystemExit(f"{args.run_dir}: no complete checkpoint")
    if Path(args.out).exists():
        raise SystemExit(f"{args.out}: already exists; remove it first (nothing is overwritten)")
    model, manifest = checkpoint_io.load(ckpts[-1])
    manifest = {k: v for k, v in manifest.items() if k not in DROP}
    manifest["source"] = f"{Path(args.run_dir).name}/{ckpts[-1].name}"
    manifest["source_hash"] = checkpoint_io.checkpoint_hash(ckpts[-1])
    manifest["regenerate"] = f"workbench train {args.recipe}"
    path = checkpoint_io.save_checkpoint(model, args.out, manifest, extra=synthetic_tokenizer().save_pretrained)
    print(f"shipped {ckpts[-1]} -> {path}")


if __name__ == "__main__":
    main()
