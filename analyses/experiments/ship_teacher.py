"""Copy a trained teacher checkpoint into data/teacher/ without its trainer state (a few MB), with the
synthetic tokenizer alongside so the directory works as a plain Hugging Face model.

    .venv/bin/python analyses/experiments/ship_teacher.py runs/tiny-teacher [--out data/teacher/tiny-teacher]

Takes the run's last complete checkpoint; refuses to overwrite an existing directory.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from workbench import models
from workbench.data.tokenizer import synthetic_tokenizer

DROP = {"files", "created", "versions", "rope_theta", "rope_scaling", "format"}  # re-filled by save_checkpoint


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("run_dir")
    p.add_argument("--out", default="data/teacher/tiny-teacher")
    args = p.parse_args()
    ckpts = models.list_checkpoints(args.run_dir)
    if not ckpts:
        raise SystemExit(f"{args.run_dir}: no complete checkpoint")
    if Path(args.out).exists():
        raise SystemExit(f"{args.out}: already exists; remove it first (nothing is overwritten)")
    model, manifest = models.load(ckpts[-1])
    manifest = {k: v for k, v in manifest.items() if k not in DROP}
    manifest["source"] = f"{Path(args.run_dir).name}/{ckpts[-1].name}"
    manifest["source_hash"] = models.checkpoint_hash(ckpts[-1])
    manifest["regenerate"] = "workbench train data/configs/tiny-teacher.yaml"
    path = models.save_checkpoint(model, args.out, manifest, extra=synthetic_tokenizer().save_pretrained)
    print(f"shipped {ckpts[-1]} -> {path}")


if __name__ == "__main__":
    main()
