"""Interventions: edit a model's RoPE and follow the effect (compare :mod:`workbench.measurements`, which
reads a model without editing it).

A :class:`Spec` (``specs``) names edits of the post-RoPE queries/keys (shift, theta swap, rotate, zero,
scale, noise on chosen pairs; ``perturb`` is the one pair-editing function). Two backends (``backends``:
TransformerLens' bridge and nnsight) apply specs at the same hook point and return the same captures, so
traces (``traces``), the repeated-token experiment (``repeated``), activations under specs
(``activations``) and the sanity checks (``sanity``) run on either.

Python API::

    from workbench import interventions
    specs = [interventions.Spec("q-shift", [interventions.shift(64, "q", layers=[1])])]
    ds = interventions.run_trace("runs/x/ckpt-000100", specs, backend="nnsight")      # xr.Dataset
    interventions.write_traces("results.zarr", ds)
    rep = interventions.repeated_tokens("data/teacher/tiny-teacher", specs)          # xr.Dataset
    interventions.write_repeated("results.zarr", rep)
    acts = interventions.capture_activations(ckpt, specs, names=["blocks.1.attn.hook_rot_*"])
    interventions.write_activations("results.zarr", acts)
    for result in interventions.check(ckpt): print(result)
"""

from __future__ import annotations

import json
from pathlib import Path

import xarray as xr

from workbench import checkpoints
from workbench import store as wstore  # the module; `store` is a store path
from workbench.interventions.activations import capture_activations, write_activations
from workbench.interventions.backends import (
    Backend,
    LengthLimitError,
    NNsightBackend,
    TransformerLensBackend,
    check_eager_length,
    load_backend,
    plain_hf_logits,
)
from workbench.interventions.repeated import repeated_tokens
from workbench.interventions.sanity import check
from workbench.interventions.specs import (
    Geometry,
    Op,
    PairSet,
    Scope,
    Spec,
    dump_specs,
    identity,
    load_specs,
    noise,
    rotate,
    scale,
    shift,
    theta_swap,
    zero,
)
from workbench.interventions.traces import default_inputs, run_trace


def _skip_written_clean(store: str | Path, group: str, ds: xr.Dataset) -> xr.Dataset:
    """Every run carries the identity ``clean``; when a checkpoint's clean cell is already stored, keep it."""
    done = wstore.written_cells(store, group)
    if "clean" in ds.spec.values and all((str(c), "clean") in done for c in ds.checkpoint.values):
        ds = ds.drop_sel(spec="clean")
    return ds


def write_traces(store: str | Path, ds: xr.Dataset) -> Path:
    """Write (append) a run_trace Dataset into group ``traces``; a (checkpoint, spec) cell is written once."""
    return wstore.save(store, wstore.TRACES, _skip_written_clean(store, wstore.TRACES, ds))


def write_repeated(store: str | Path, ds: xr.Dataset) -> Path:
    """Write (append) a repeated_tokens Dataset into group ``repeated_tokens``."""
    return wstore.save(store, wstore.REPEATED_TOKENS, _skip_written_clean(store, wstore.REPEATED_TOKENS, ds))


def check_backend_length(ckpt_path: str | Path, backend: str, n_rows: int, length: int, device: str = "cpu") -> None:
    """Refuse (``LengthLimitError``), from config.json alone, a TransformerLens run whose eager attention
    would not fit in the memory of ``device`` (the budget the loaded backend checks against too); nnsight
    (sdpa) has no such limit."""
    if backend != "tl":
        return
    cfg = json.loads((Path(ckpt_path) / "config.json").read_text())
    check_eager_length(int(cfg["num_attention_heads"]), n_rows, length, device=device)


def check_writable(store: str | Path, group: str, ckpt_path: str | Path, specs) -> None:
    """Refuse, before any forward pass, specs the store already holds for this checkpoint (StoreError)."""
    label = checkpoints.label(ckpt_path)
    runs = [s for s in specs if not s.is_identity]
    if (label, "clean") not in wstore.written_cells(store, group):
        runs = [identity("clean"), *runs]
    if runs:
        wstore.refuse(
            store,
            group,
            cells={"checkpoint": [label], "spec": [r.name for r in runs]},
            spec_hash=[r.ops_hash for r in runs],
        )


__all__ = [
    "Backend",
    "Geometry",
    "LengthLimitError",
    "check_backend_length",
    "NNsightBackend",
    "Op",
    "PairSet",
    "Scope",
    "Spec",
    "TransformerLensBackend",
    "capture_activations",
    "check",
    "check_writable",
    "default_inputs",
    "dump_specs",
    "identity",
    "load_backend",
    "load_specs",
    "noise",
    "plain_hf_logits",
    "repeated_tokens",
    "rotate",
    "run_trace",
    "scale",
    "shift",
    "theta_swap",
    "write_activations",
    "write_repeated",
    "write_traces",
    "zero",
]
