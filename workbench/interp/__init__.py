"""RoPE interpretability engine: perturbation specs, two backends, traces, the repeated-token experiment."""
