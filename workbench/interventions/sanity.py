"""Built-in sanity checks of a checkpoint in both backends, against plain transformers.

1. identity: the clean spec reproduces plain HF logits (both backends, positions >= 2048 included);
2. parity: a non-trivial spec gives the same logits on the TransformerLens and nnsight backends;
3. shift invariance: shifting q and k by the same offset leaves the logits unchanged (RoPE is relative);
4. locality: a spec confined to layer L leaves every capture upstream of L unchanged.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path

import torch

from workbench import architectures
from workbench.interventions import specs as S
from workbench.interventions.backends import load_backend, plain_hf_logits
from workbench.interventions.hooks import act_name
from workbench.interventions.traces import default_inputs


@dataclass
class CheckResult:
    name: str
    value: float  # max |difference|
    tolerance: float

    @property
    def ok(self) -> bool:
        return self.value <= self.tolerance

    def __str__(self) -> str:
        return (
            f"{'ok  ' if self.ok else 'FAIL'} {self.name}: max |diff| {self.value:.2e} (tolerance {self.tolerance:.0e})"
        )


def check(
    ckpt_path: str | Path,
    *,
    length: int = 2112,
    batch: int = 1,
    tolerance: float = 1e-4,
    backends: tuple[str, ...] = ("nnsight", "tl"),
    device: str = "cpu",
    progress=None,
) -> list[CheckResult]:
    """Run the checks (``length`` >= 2048 + something so positions >= 2048 are covered) with both backends and
    the plain-HF reference on ``device`` -> results. On CUDA, TF32 matmuls are off while they run (the checks
    compare fp32 logits at ``tolerance``)."""
    with _no_tf32():
        return _check(
            ckpt_path,
            length=length,
            batch=batch,
            tolerance=tolerance,
            backends=backends,
            device=device,
            progress=progress,
        )


@contextlib.contextmanager
def _no_tf32():
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def _check(
    ckpt_path: str | Path,
    *,
    length: int,
    batch: int,
    tolerance: float,
    backends: tuple[str, ...],
    device: str,
    progress,
) -> list[CheckResult]:
    skip = architectures.unsupported_backends(ckpt_path, backends)  # e.g. tl on Phi-3 (fused qkv, no rotary hooks)
    loaded = {name: load_backend(ckpt_path, name, device=str(device)) for name in backends if name not in skip}
    geom = next(iter(loaded.values())).geometry
    length = min(length, geom.max_position_embeddings)
    inputs = default_inputs(next(iter(loaded.values())).vocab_size, batch=batch, length=length)
    ids, pos = inputs["input_ids"], inputs["position_ids"]
    tail = slice(2048 if length > 2048 else length // 2, None)
    ref = plain_hf_logits(ckpt_path, ids, pos, device=str(device))
    last = geom.num_layers - 1
    probe = S.Spec(
        "probe",
        [
            S.shift(17, "q", pairs=S.PairSet(indices=list(range(geom.head_dim // 4))), layers=[last]),
            S.noise(0.05, seed=3, target="k", layers=[last]),
        ],
    )
    equal = S.Spec("equal-qk-shift", [S.shift(333, "both")])
    results, logits = [], {}
    for name, be in loaded.items():
        out = be.run(ids, pos, [S.identity(), probe, equal], capture=[act_name("resid_post", i) for i in range(last)])
        logits[name] = out[1]["logits"]
        results.append(
            CheckResult(
                f"{name}: identity == plain HF (positions >= {tail.start})",
                (out[0]["logits"] - ref)[:, tail].abs().max().item(),
                tolerance,
            )
        )
        results.append(
            CheckResult(
                f"{name}: equal q/k shift leaves logits unchanged",
                (out[2]["logits"] - ref).abs().max().item(),
                tolerance,
            )
        )
        upstream = max(
            [(out[1][k] - out[0][k]).abs().max().item() for k in out[0] if k != act_name("logits")], default=0.0
        )
        results.append(CheckResult(f"{name}: spec on layer {last} changes nothing upstream", upstream, 0.0))
        if progress:
            progress.update(1)
    if len(loaded) == 2:
        a, b = logits.values()
        results.append(CheckResult("tl vs nnsight: same spec, same logits", (a - b).abs().max().item(), tolerance))
    return results
