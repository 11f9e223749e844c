"""Apply a :class:`~workbench.interventions.specs.Spec` to post-RoPE queries or keys: pure tensor functions.

Layout is ``[batch, heads, position, head_dim]`` (transformers'/nnsight's); the TransformerLens backend
transposes its ``[batch, position, heads, head_dim]`` hooks into it. Pair j is dims (j, j + d/2), and a
rotation by angle a maps (x_j, x_{j+d/2}) to (x_j cos a - x_{j+d/2} sin a, x_{j+d/2} cos a + x_j sin a),
which is transformers' ``q * cos + rotate_half(q) * sin``. Angles are computed in float64 so the edit adds
no error of its own beyond the model's.
"""

from __future__ import annotations

import hashlib
from typing import Literal

import torch

from workbench.interventions.specs import Geometry, Op, Spec


def rotate_pairs(x: torch.Tensor, angle: torch.Tensor) -> torch.Tensor:
    """Rotate every pair j of ``x`` [..., d] by ``angle`` [..., d/2] (broadcast), half-split layout."""
    half = x.shape[-1] // 2
    x1, x2 = x[..., :half], x[..., half:]
    cos, sin = torch.cos(angle).to(x.dtype), torch.sin(angle).to(x.dtype)
    return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1)


def _noise_generator(op: Op, layer: int, which: str) -> torch.Generator:
    """A generator seeded by (op seed, layer, q/k): the same noise on every backend and every run."""
    digest = hashlib.sha256(f"{op.seed}:{layer}:{which}".encode()).digest()
    return torch.Generator(device="cpu").manual_seed(int.from_bytes(digest[:8], "little") & (2**63 - 1))


def _mask(op: Op, geom: Geometry, x: torch.Tensor, which: str, positions: torch.Tensor) -> torch.Tensor:
    """Boolean [B, H, T, d/2] mask of the entries ``op`` touches (heads x positions x pairs)."""
    b, h, t, d = x.shape
    heads = op.scope.heads if which == "q" else op.scope.kv_heads
    if which == "k" and heads is None and op.scope.heads is not None:  # keys serving those query heads
        group = geom.num_heads // geom.num_kv_heads
        heads = sorted({hq // group for hq in op.scope.heads})
    head_mask = torch.ones(h, dtype=torch.bool, device=x.device)
    if heads is not None:
        head_mask = torch.zeros(h, dtype=torch.bool, device=x.device)
        head_mask[list(heads)] = True
    pos_mask = torch.ones(b, t, dtype=torch.bool, device=x.device)
    if op.scope.positions is not None:
        start, stop = op.scope.positions
        pos_mask = (positions >= start) & (positions < stop)
    pair_mask = torch.as_tensor(op.pairs.mask(geom), device=x.device)
    return head_mask[None, :, None, None] & pos_mask[:, None, :, None] & pair_mask[None, None, None, :]


def apply_op(
    op: Op, x: torch.Tensor, which: Literal["q", "k"], layer: int, positions: torch.Tensor, geom: Geometry
) -> torch.Tensor:
    """One op on post-RoPE ``x`` [B, H, T, d] of layer ``layer``; ``positions`` [B, T] are the position ids
    the model rotated with. Returns a new tensor (the input is not modified)."""
    if op.target not in (which, "both") or (op.scope.layers is not None and layer not in op.scope.layers):
        return x
    pos = positions.to(torch.float64)[:, None, :, None]  # [B, 1, T, 1]
    omega = torch.as_tensor(geom.inv_freq, dtype=torch.float64, device=x.device)  # [d/2]
    if op.kind == "shift":  # the same angle at every token: cos/sin of [d/2] angles, broadcast
        new = rotate_pairs(x, op.offset * omega)
    elif op.kind == "theta":
        new_omega = torch.as_tensor(geom.inv_freq_for(op.theta), dtype=torch.float64, device=x.device)
        new = rotate_pairs(x, pos * (new_omega - omega))
    elif op.kind == "rotate":
        new = rotate_pairs(x, torch.full((omega.numel(),), op.angle, dtype=torch.float64, device=x.device))
    elif op.kind == "zero":
        new = torch.zeros_like(x)
    elif op.kind == "scale":
        new = x * op.factor
    elif op.kind == "noise":
        eps = torch.randn(tuple(x.shape), generator=_noise_generator(op, layer, which), dtype=torch.float32)
        new = x + op.sigma * eps.to(device=x.device, dtype=x.dtype)
    else:  # pragma: no cover - Literal checked on load
        raise ValueError(f"unknown op kind {op.kind!r}")
    if _touches_everything(op, geom, which):
        return new
    mask = _mask(op, geom, x, which, positions)
    full = torch.cat([mask, mask], dim=-1)
    return torch.where(full, new, x)


def _touches_everything(op: Op, geom: Geometry, which: str) -> bool:
    """Whether the op's scope covers every head, position and pair (then no mask is needed)."""
    heads = op.scope.heads if which == "q" else (op.scope.kv_heads if op.scope.kv_heads is not None else op.scope.heads)
    return heads is None and op.scope.positions is None and bool(op.pairs.mask(geom).all())


def apply_spec(
    spec: Spec, x: torch.Tensor, which: Literal["q", "k"], layer: int, positions: torch.Tensor, geom: Geometry
) -> torch.Tensor:
    """All ops of ``spec`` in order on post-RoPE q or k of one layer ([B, H, T, d])."""
    for op in spec.ops:
        x = apply_op(op, x, which, layer, positions, geom)
    return x


def touches(spec: Spec, which: str, layer: int) -> bool:
    """Whether ``spec`` edits q/k of ``layer`` at all (backends skip hooks that would do nothing)."""
    return any(
        op.target in (which, "both") and (op.scope.layers is None or layer in op.scope.layers) for op in spec.ops
    )
