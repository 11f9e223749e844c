"""The per-GPU memory estimate used for the GPU recipe (docs/gpu.md) behaves as its formula says."""

from workbench import config
from workbench.train.memory import step_memory


def test_memory_estimate_scales_as_expected():
    s = config.load_model_config("data/configs/presets/paper-student-1.1b.yaml")
    one, eight = step_memory(s, 8192, world_size=1), step_memory(s, 8192, world_size=8)
    assert one.states == 8 * eight.states and one.states == 16 * 1_100_048_384
    short, long = step_memory(s, 8192), step_memory(s, 131072)
    assert long.activations == 16 * short.activations
    assert long.loss == short.loss  # chunked: independent of the sequence length
    assert step_memory(s, 8192, checkpointing=False).activations > short.activations
