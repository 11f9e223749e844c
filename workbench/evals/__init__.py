"""Long-context retrieval evaluation: passkey, needle-in-a-haystack grids and RULER-style tasks.

- :mod:`~workbench.evals.tasks`: seeded task generators with exact lengths and needle depths;
- :mod:`~workbench.evals.render`: the synthetic-language and real-tokenizer (RULER text) renderings;
- :mod:`~workbench.evals.scoring`: exact match, RULER's string_match_all / string_match_part, gold log-prob;
- :mod:`~workbench.evals.runner`: batched greedy decoding with a KV cache, :func:`quick_eval` and
  :func:`training_eval` (the trainer's evaluation callback);
- :mod:`~workbench.evals.grid`: checkpoints x tasks x lengths x depths x samples -> an xarray Dataset in
  the store's ``retrieval`` group.
"""

from workbench.evals.render import SyntheticRendering, TextRendering, rendering_for
from workbench.evals.runner import quick_eval, score_samples, training_eval
from workbench.evals.tasks import TASKS, Sample, TaskSpec, depth_grid, make_sample, make_samples

__all__ = [
    "TASKS",
    "Sample",
    "TaskSpec",
    "SyntheticRendering",
    "TextRendering",
    "depth_grid",
    "make_sample",
    "make_samples",
    "quick_eval",
    "rendering_for",
    "score_samples",
    "training_eval",
]
