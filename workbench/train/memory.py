"""Per-GPU memory estimate of a training step (for planning paper-scale runs and the trainer's memory check).

The peak of a step is one of two moments, whichever is larger (measured with the allocator's history on an H200,
``analyses/benchmarks/bench_gpu_memory.py``, 2026-12-04; docs/gpu.md):

- the **loss**: every activation kept for backward plus the chunked KD/CE loss (logits of one chunk for both
  models, softmax and gradient) and the hidden states around the head;
- the **backward** through the last block: the kept activations plus that block's recompute and the gradients
  of its largest intermediates (the parameter gradients appear as the kept activations are freed, so they count
  only where they outgrow them).

Always alive: the student's fp32 weights and AdamW moments (sharded over ``world_size`` ranks; gradients are set
to None after each step), the frozen teacher, and under FSDP2 one all-gathered bf16 block of each model and the
root group (both models' embeddings, final norms and lm_heads: gathered from the forward through the backward,
checked on CPU with two gloo ranks; the chunked loss's gradient of the lm_head is of that unsharded weight). With
``grad_accum`` > 1 the gradients summed over the earlier micro-batches are alive through the later ones' loss and
backward as well.

Under bf16 autocast with fp32 weights (one GPU) the **residual stream is fp32** (the embedding output is fp32,
and fp32 + bf16 adds to fp32): each checkpointed block input is ``T x H x 4`` bytes, not 2. Under FSDP2 the
gathered weights are bf16 and so is the stream (not measured here: no multi-GPU machine was lent). One block's
activations per token, as transformers' Llama runs them under autocast: two residual-stream tensors, the two
RMSNorms' fp32 intermediates (8 H bytes), attention (q, k, v, RoPE, output: about 6 H low-precision values) and
the MLP (gate, up, SiLU, product: about 5.5 I values).
"""

from __future__ import annotations

from dataclasses import dataclass

from workbench.config import ModelConfig
from workbench.models import count_parameters

GB = 1024**3
LOSS_CHUNK_COPIES = 6.5  # fp32 [chunk, vocab] buffers alive in the chunked loss (measured: 3.16 GiB at 4096 x 32000)
HEAD_BYTES_PER_HIDDEN = 44  # hidden states around the head in the loss phase, bytes per token per H (measured)


@dataclass(frozen=True)
class StepMemory:
    states: float  # student fp32 weights + AdamW moments (sharded); gradients are in `working`
    teacher: float  # frozen teacher weights (sharded)
    gathered: float  # FSDP2 only: one all-gathered block of each model and the root group (fp32 under fp32 precision)
    stored: float  # activations kept for backward: block inputs (checkpointing) or every block's activations
    working: float  # the larger of the loss phase and the backward phase, beyond `stored`

    @property
    def total(self) -> float:
        return self.states + self.teacher + self.gathered + self.stored + self.working


def _block_params(m: ModelConfig) -> int:
    d = m.resolved_head_dim
    attn = m.hidden_size * d * (m.num_heads * 2 + m.num_kv_heads * 2)
    return attn + 3 * m.hidden_size * m.intermediate_size + 2 * m.hidden_size


def _root_params(m: ModelConfig) -> int:
    """Parameters outside the blocks (embeddings, final norm, lm_head): FSDP2's root group."""
    return count_parameters(m) - m.num_layers * _block_params(m)


def block_activation_bytes(m: ModelConfig, *, low: int, stream: int) -> float:
    """Bytes per token one block keeps for its backward (``low``: bytes of an autocast value, ``stream``: of the
    residual stream)."""
    h, i = m.hidden_size, m.intermediate_size
    return 2 * stream * h + 8 * h + 6 * low * h + 5.5 * low * i


def step_memory(
    student: ModelConfig,
    seq_len: int,
    *,
    micro_batch: int = 1,
    world_size: int = 8,
    teacher: ModelConfig | None = None,
    chunk: int = 4096,
    checkpointing: bool = True,
    precision: str = "bf16",
    grad_accum: int = 1,
    teacher_runs: bool = True,
) -> StepMemory:
    """Estimated peak bytes per GPU for one micro-batch of ``seq_len`` tokens (``precision``: bf16 or fp32;
    ``grad_accum``: micro-batches per optimiser step; ``teacher_runs`` False: the teacher is held but not run, as
    in a CE phase of a run that distils in another)."""
    tokens = micro_batch * seq_len
    p = count_parameters(student)
    sharded = world_size > 1
    low = 2 if precision == "bf16" else 4  # an autocast activation
    stream = 2 if sharded and precision == "bf16" else 4  # the residual stream: fp32 unless FSDP2 gathers bf16
    h, i, layers = student.hidden_size, student.intermediate_size, student.num_layers
    block = tokens * block_activation_bytes(student, low=low, stream=stream)  # one block's activations
    block_grads = tokens * (3 * low * i + stream * h)  # gradients of its largest intermediates
    if checkpointing:
        stored = (layers + 1) * tokens * h * stream  # every block's input and the last block's output
        backward = block + block_grads
    else:
        stored = layers * block
        backward = block_grads
    grads = 4 * p / world_size
    # the chunked loss's fp32 gradient of the lm_head weight it is given: under FSDP2 the root's unsharded weight,
    # full size on every rank (the rest of the head's gradients are sharded)
    vh = student.vocab_size * h
    head_grads = 4 * vh + (0 if student.tie_word_embeddings else 4 * vh / world_size)
    held = grads if grad_accum > 1 else 0.0  # the earlier micro-batches' summed gradients
    backward += (held or max(grads - stored, 0.0)) + head_grads
    loss = LOSS_CHUNK_COPIES * min(chunk, tokens) * student.vocab_size * 4
    loss += tokens * HEAD_BYTES_PER_HIDDEN * h * (low / 2) + held
    teacher_bytes = gathered = 0.0
    if teacher is not None:
        teacher_bytes = low * count_parameters(teacher) / world_size
    if teacher is not None and teacher_runs:
        loss += tokens * teacher.hidden_size * low  # the teacher's last hidden states, kept for the chunked loss
    if sharded:  # bf16 under mixed precision; fp32 precision gathers the fp32 weights (distributed.mixed_precision)
        # one block of each model while it runs, and the root group (both models' embeddings, norms and lm_heads),
        # which FSDP2 keeps gathered from the forward through the backward
        gathered = low * (_block_params(student) + p - layers * _block_params(student))
        if teacher is not None:
            gathered += low * (_root_params(teacher) + (_block_params(teacher) if teacher_runs else 0))
    return StepMemory(
        states=12 * p / world_size,
        teacher=teacher_bytes,
        gathered=gathered,
        stored=stored,
        working=max(loss, backward),
    )
