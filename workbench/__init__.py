"""RoPE-KD workbench: long-context distillation and RoPE interpretability on real Llama checkpoints."""

__version__ = "0.1.0"
