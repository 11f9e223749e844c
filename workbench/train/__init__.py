"""Training: the chunked KD/CE loss, the phase-wise trainer, FSDP2 data parallelism, the teacher cache.

``train(cfg, out=..., resume=...)`` runs a RunConfig; ``python -m workbench.train CONFIG`` is the torchrun
entry point; ``workbench train CONFIG`` the command.
"""

from workbench.train.trainer import TrainingDiverged, train

__all__ = ["TrainingDiverged", "train"]
