"""Per-GPU memory estimate of a training step (for planning paper-scale runs; not a measurement).

Counts, in bytes, under bf16 autocast with fp32 master weights and FSDP2 sharding over ``world_size`` ranks:
student weights + gradients + AdamW moments (16 bytes/param, sharded), the all-gathered bf16 copy of one
block, activation-checkpointed block inputs (one [B, T, H] bf16 tensor per layer) plus one block's
recompute peak (attention by SDPA/flash is O(T)), the chunked KD loss (student and teacher fp32 logits of one
chunk, with softmax and gradient), and a frozen bf16 teacher (sharded) with one block's activations.
"""

from __future__ import annotations

from dataclasses import dataclass

from workbench.config import ModelConfig
from workbench.models import count_parameters

GB = 1024**3


@dataclass(frozen=True)
class StepMemory:
    states: float  # student fp32 weights, grads, AdamW moments (sharded)
    activations: float  # checkpointed block inputs + one block's recompute peak
    loss: float  # chunked KD/CE logits of one chunk for both models
    teacher: float  # teacher bf16 weights (sharded) + one block's activations
    gathered: float  # one all-gathered bf16 block of each model

    @property
    def total(self) -> float:
        return self.states + self.activations + self.loss + self.teacher + self.gathered


def _block_params(m: ModelConfig) -> int:
    d = m.resolved_head_dim
    attn = m.hidden_size * d * (m.num_heads * 2 + m.num_kv_heads * 2)
    return attn + 3 * m.hidden_size * m.intermediate_size + 2 * m.hidden_size


def step_memory(
    student: ModelConfig,
    seq_len: int,
    *,
    micro_batch: int = 1,
    world_size: int = 8,
    teacher: ModelConfig | None = None,
    chunk: int = 4096,
    checkpointing: bool = True,
) -> StepMemory:
    """Estimated bytes per GPU for one micro-batch of ``seq_len`` tokens."""
    tokens = micro_batch * seq_len
    p = count_parameters(student)
    states = 16 * p / world_size
    h, i = student.hidden_size, student.intermediate_size
    per_block_peak = tokens * (8 * h + 3 * i) * 2  # q,k,v,o, norms, residuals + gate/up/act in bf16
    stored = tokens * h * 2 * (student.num_layers if checkpointing else 0)
    if not checkpointing:
        per_block_peak *= student.num_layers
    loss = 3 * 2 * min(chunk, tokens) * student.vocab_size * 4
    teacher_bytes = 0.0
    gathered = 2 * _block_params(student)
    if teacher is not None:
        teacher_bytes = 2 * count_parameters(teacher) / world_size + 2 * tokens * teacher.hidden_size * 2
        gathered += 2 * _block_params(teacher)
    return StepMemory(
        states=states, activations=stored + per_block_peak, loss=loss, teacher=teacher_bytes, gathered=gathered
    )
