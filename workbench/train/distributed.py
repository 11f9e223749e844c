"""Data parallelism from outside the model: torchrun process groups and FSDP2 ``fully_shard``.

Nothing here knows about losses or data. ``init()`` reads torchrun's environment (RANK, WORLD_SIZE,
LOCAL_RANK) and starts a process group (NCCL on CUDA, gloo on CPU); ``shard(module, blocks)`` applies
``fully_shard`` to every transformer block and then to the root, as torchtitan does.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init(device: torch.device) -> Dist:
    """Start the process group when launched by torchrun with WORLD_SIZE > 1; a no-op otherwise."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist()
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return Dist(
        rank=dist.get_rank(), world_size=dist.get_world_size(), local_rank=int(os.environ.get("LOCAL_RANK", "0"))
    )


def shutdown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def all_reduce_sum(x: torch.Tensor, d: Dist) -> torch.Tensor:
    """Sum a tensor over ranks (identity in a single process)."""
    if d.enabled:
        dist.all_reduce(x, op=dist.ReduceOp.SUM)
    return x


def all_gather_objects(obj, d: Dist) -> list:
    if not d.enabled:
        return [obj]
    out = [None] * d.world_size
    dist.all_gather_object(out, obj)
    return out


def barrier(d: Dist) -> None:
    if d.enabled:
        dist.barrier()


def mixed_precision(precision: str):
    """FSDP2 policy: bf16 unsharded parameters for compute, fp32 gradient reduction (the sharded master
    parameters and the optimiser stay fp32); fp32: no casts."""
    from torch.distributed.fsdp import MixedPrecisionPolicy  # lazy: FSDP2 only under torchrun

    if precision == "bf16":
        return MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
    return MixedPrecisionPolicy()


def shard(root: torch.nn.Module, blocks: list[torch.nn.Module], precision: str = "fp32") -> None:
    """FSDP2: shard each block, then the root (which owns the remaining parameters: embeddings, norms,
    lm_heads). Gradients are *summed* over ranks: the loss is already normalised by the global token count."""
    from torch.distributed.fsdp import fully_shard  # lazy: FSDP2 only under torchrun

    mp = mixed_precision(precision)
    for block in blocks:
        fully_shard(block, mp_policy=mp)
    fully_shard(root, mp_policy=mp)
    for m in [*blocks, root]:
        m.set_gradient_divide_factor(1.0)
        m.set_force_sum_reduction_for_comms(True)  # plain SUM: gloo has no PREMUL_SUM
