"""Shared fixtures. Tests are offline, seeded and sized for 2 CPU cores."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# checkpoint-integrity verdicts (workbench.checkpoint_io.cache_dir) go to a fresh directory, never the user's cache
os.environ.setdefault("WORKBENCH_CACHE_DIR", __import__("tempfile").mkdtemp(prefix="workbench-test-cache-"))

import pytest
import torch

from workbench.config import ModelConfig

torch.set_num_threads(int(os.environ.get("WORKBENCH_TEST_THREADS", "2")))


@pytest.fixture
def gqa_config() -> ModelConfig:
    """A random-weight GQA Llama small enough for 4096-token forwards in a second."""
    return ModelConfig(
        vocab_size=96,
        hidden_size=64,
        num_layers=2,
        num_heads=4,
        num_kv_heads=2,
        head_dim=16,
        intermediate_size=128,
        max_position_embeddings=8192,
        rope_theta=500.0,
    )


@pytest.fixture
def gqa_model(gqa_config):
    from workbench.models import build_model

    return build_model(gqa_config, seed=0)


@pytest.fixture(scope="session")
def saved_checkpoint(tmp_path_factory):
    """A small GQA checkpoint saved by the workbench (random weights, theta 500)."""
    from workbench.checkpoint_io import save_checkpoint
    from workbench.models import build_model

    cfg = ModelConfig(
        vocab_size=96,
        hidden_size=64,
        num_layers=2,
        num_heads=4,
        num_kv_heads=2,
        head_dim=16,
        intermediate_size=128,
        max_position_embeddings=8192,
        rope_theta=500.0,
    )
    path = tmp_path_factory.mktemp("ckpt") / "ckpt-000010"
    save_checkpoint(build_model(cfg, seed=1), path, {"phase": "test", "step": 10})
    return path


@pytest.fixture(scope="session")
def quick_demo(tmp_path_factory):
    """(output directory, printed log) of ``workbench demo --quick --no-serve --seeds 1``: built once per session
    (about 2 minutes on 2 cores) for the end-to-end demo tests and the notebooks, which read it as ``runs/demo``."""
    import subprocess
    import sys

    from workbench.demo.students import SHIPPED_TEACHER

    if not (SHIPPED_TEACHER / "manifest.json").is_file():
        pytest.fail(f"the shipped teacher is missing at {SHIPPED_TEACHER}")
    out = tmp_path_factory.mktemp("demo") / "run"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "workbench",
            "demo",
            "--quick",
            "--no-serve",
            "--seeds",
            "1",
            "--no-progress",
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
        timeout=900,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return out, proc.stdout + proc.stderr
