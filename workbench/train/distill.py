"""The model side of a training step: student + frozen teacher + chunked loss in one module, the teacher, precision.

``DistillModule`` runs the student and (for KD without a cache) the teacher and the chunked KD/CE loss in one
forward, so FSDP2's root unshards both lm_head weights while the loss uses them. Precision: ``auto`` is bf16 on
CUDA and fp32 elsewhere; bf16 autocasts the compute while master weights, optimiser state and checkpoints stay
fp32; the frozen teacher is held in bf16 under bf16 precision.
Shapes in comments: B windows, T tokens a window, H / H_t the student's / teacher's hidden size.
"""

from __future__ import annotations

import contextlib
from dataclasses import replace as dc_replace

import torch

from workbench import architectures, attention, checkpoint_io, data, models
from workbench.config import ConfigError, RunConfig
from workbench.train.losses import CachedTeacher, LossSpec, OnlineTeacher, chunked_loss


class DistillModule(torch.nn.Module):
    """Student (+ frozen teacher) and the chunked loss in one forward, so FSDP2's root unshards both
    lm_head weights while the loss uses them. Returns a tuple of tensors (loss, per_token, ce_sum, kd_sum,
    valid)."""

    def __init__(self, student, teacher=None, teacher_positions: str = "same"):
        super().__init__()
        self.student = student
        self.teacher = teacher
        self.teacher_positions = teacher_positions  # "reset": position-invariant targets (an ablation)

    def forward(
        self,
        batch: dict[str, torch.Tensor],
        attention_mask,
        spec: LossSpec,
        normalizer: float,
        cached: CachedTeacher | None = None,
    ):
        kw = dict(attention_mask=attention_mask, position_ids=batch["position_ids"], use_cache=False)
        with attention.attention_for(self.student, attention_mask):  # flex_attention for a BlockMask
            hidden = self.student.model(input_ids=batch["input_ids"], **kw).last_hidden_state[:, :-1]  # [B, T-1, H]
        labels = batch["labels"][:, 1:]  # [B, T-1]; HF convention: hidden at t predicts labels[t + 1]
        teacher = cached
        if spec.kd_weight and cached is None:
            with torch.no_grad():
                if self.teacher_positions == "reset":
                    kw = dict(kw, **reset_view(batch["doc_ids"], hidden.dtype))
                with attention.attention_for(self.teacher, kw["attention_mask"]):
                    t_hidden = self.teacher.model(input_ids=batch["input_ids"], **kw).last_hidden_state[:, :-1]
                    # t_hidden [B, T-1, H_t]
            teacher = OnlineTeacher(
                t_hidden, self.teacher.lm_head.weight, architectures.final_softcap(self.teacher.config)
            )
        if architectures.final_softcap(self.student.config):  # Gemma 2: the loss sees the soft-capped logits
            spec = dc_replace(spec, student_softcap=architectures.final_softcap(self.student.config))
        r = chunked_loss(hidden, self.student.lm_head.weight, labels, spec, teacher=teacher, normalizer=normalizer)
        return r.loss, r.per_token, r.ce_sum, r.kd_sum, r.valid  # [], [B, T-1], [], [], [B, T-1]


def reset_view(doc_ids: torch.Tensor, dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
    """The teacher's inputs under ``teacher.positions: reset`` (online and cached alike): every packed document
    alone, from position 0 and document-masked (a FlexAttention BlockMask where flex runs: the teacher is never
    differentiated, so on CPU too; see ``workbench.attention``)."""
    return {
        "position_ids": data.reset_positions(doc_ids),  # [B, T]
        "attention_mask": attention.document_mask(doc_ids, dtype=dtype),  # [B, 1, T, T] or a BlockMask
    }


def resolve_precision(name: str, device: torch.device) -> str:
    """``optim.precision`` for a device: auto is bf16 on CUDA and fp32 elsewhere."""
    if name == "auto":
        return "bf16" if device.type == "cuda" else "fp32"
    if name not in ("fp32", "bf16"):
        raise ConfigError(f"optim.precision: {name!r} is not one of 'auto', 'fp32', 'bf16'")
    return name


def autocast_for(precision: str, device: torch.device):
    """bf16 autocast on the run's device (CPU included) for the student, the teacher and the chunked loss;
    master weights, optimiser state and checkpoints stay fp32."""
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def load_teacher(cfg: RunConfig, device: torch.device, precision: str = "fp32"):
    """The frozen teacher at its configured theta; held in bf16 under bf16 precision (it is never trained)."""
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    teacher, _ = checkpoint_io.load(cfg.teacher.path, device=device, dtype=dtype)
    if cfg.teacher.rope_theta is not None:
        models.set_rope_theta(teacher, cfg.teacher.rope_theta, models.model_config_of(teacher).rope_scaling)
    teacher.requires_grad_(False)
    return teacher.eval()
