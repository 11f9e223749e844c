"""``workbench model``: build a model from a preset, save it as a checkpoint, reload it, print its spectrum."""

from __future__ import annotations

import argparse

HELP = "build a model from a preset, save + reload it as a checkpoint, print its parameters and RoPE spectrum"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("preset", help="model preset or run config YAML (e.g. data/configs/presets/tiny-student.yaml)")
    p.add_argument("--out", default="runs/model-smoke/ckpt-init", help="checkpoint directory to write")
    p.add_argument("--theta", type=float, default=None, help="set this RoPE theta after building (really rebuilt)")
    p.add_argument(
        "--length",
        type=int,
        default=None,
        help="context length for the spectrum table (default: the model's max_position_embeddings)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace an existing --out checkpoint directory (atomically: the "
        "new checkpoint is written beside it and renamed over it); without it an existing one is refused",
    )


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    import torch

    from workbench import checkpoint_io, config, models, rope

    cfg = config.load_model_config(args.preset)
    out = Path(args.out)
    if (out.exists() or out.is_symlink()) and not args.overwrite:
        what = (
            "a checkpoint" if (out / checkpoint_io.MANIFEST).is_file() else "a file" if out.is_file() else "a directory"
        )
        raise FileExistsError(
            f"--out {out}: already exists ({what}); pass --overwrite to replace it, or choose "
            "another --out (nothing was written)"
        )
    if out.is_symlink() or (out.exists() and not out.is_dir()):
        raise FileExistsError(
            f"--out {out}: is {'a symlink' if out.is_symlink() else 'a file'}; --overwrite "
            "replaces checkpoint directories only"
        )
    if (
        out.is_dir()
        and any(out.iterdir())
        and not any((out / f).is_file() for f in (checkpoint_io.MANIFEST, "config.json"))
    ):
        raise FileExistsError(
            f"--out {out}: a directory that is not a model checkpoint (no {checkpoint_io.MANIFEST} or config.json); "
            "--overwrite replaces checkpoint directories only (nothing was written)"
        )
    from workbench.writable import probe

    probe(out.parent)  # a read-only / full / forbidden location: one line, before building the model
    n_params = models.count_parameters(cfg)
    print(
        f"preset {args.preset}: {n_params:,} parameters"
        + (f" (stated {cfg.stated_params:,.0f})" if cfg.stated_params else "")
    )
    model = models.build_model(cfg, seed=args.seed)
    if args.theta is not None:
        models.set_rope_theta(model, args.theta)
    path = checkpoint_io.save_checkpoint(
        model,
        args.out,
        {"phase": "init", "step": 0, "objective": None, "config_hash": config.config_hash(cfg), "source": args.preset},
    )
    loaded, manifest = checkpoint_io.load(path)
    ids = torch.randint(0, cfg.vocab_size, (1, 64), generator=torch.Generator().manual_seed(args.seed))
    with torch.no_grad():
        diff = (model(ids).logits - loaded(ids).logits).abs().max().item()
    print(f"saved and reloaded {path} (theta {manifest['rope_theta']:g}); max |logit diff| after reload: {diff:.2e}")
    length = args.length or cfg.max_position_embeddings
    print(rope.format_spectrum(models.rope_theta(loaded), cfg.resolved_head_dim, length, cfg.rope_scaling))
    return 0
