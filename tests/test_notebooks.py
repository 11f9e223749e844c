"""The notebooks run top to bottom on tiny checkpoints (public API only)."""

from __future__ import annotations

import os
from pathlib import Path

import nbformat
import pytest
import torch
from nbclient import NotebookClient

from workbench import models
from workbench.config import ModelConfig

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"


@pytest.fixture(scope="module")
def two_checkpoints(tmp_path_factory):
    """A tiny GQA model and a copy whose W_q of layer 1 moved only in the long-wavelength pairs."""
    cfg = ModelConfig(vocab_size=128, hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=2, head_dim=32,
                      intermediate_size=128, max_position_embeddings=1024, rope_theta=500.0)
    root = tmp_path_factory.mktemp("nb")
    model = models.build_model(cfg, seed=0)
    a = models.save_checkpoint(model, root / "run" / "ckpt-000010", {"phase": "short", "step": 10, "phase_end": True})
    models.set_rope_theta(model, 10000.0)
    with torch.no_grad():
        w = model.model.layers[1].self_attn.q_proj.weight.view(4, 32, 64)
        w[:, 12:16] *= 1.5
        w[:, 28:32] *= 1.5
    b = models.save_checkpoint(model, root / "run" / "ckpt-000020", {"phase": "long", "step": 20, "phase_end": True})
    return a, b


def execute(name: str, env: dict[str, str]) -> nbformat.NotebookNode:
    book = nbformat.read(NOTEBOOKS / name, as_version=4)
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        NotebookClient(book, timeout=300, kernel_name="python3",
                       resources={"metadata": {"path": str(NOTEBOOKS)}}).execute()
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    return book


def outputs(book) -> list:
    return [o for cell in book.cells if cell.cell_type == "code" for o in cell.get("outputs", [])]


def test_quick_tour_runs(two_checkpoints):
    book = execute("01_quick_tour.ipynb", {"WORKBENCH_CKPT": str(two_checkpoints[0])})
    assert not [o for o in outputs(book) if o.output_type == "error"]
    plots = [o for o in outputs(book) if "application/vnd.plotly.v1+json" in o.get("data", {})]
    assert len(plots) == 2


def test_spectrum_and_updates_runs(two_checkpoints):
    a, b = two_checkpoints
    book = execute("02_spectrum_and_updates.ipynb", {"WORKBENCH_CKPT_A": str(a), "WORKBENCH_CKPT_B": str(b)})
    assert not [o for o in outputs(book) if o.output_type == "error"]
    text = "".join(o.get("text", "") for o in outputs(book))
    assert "critical pair" in text
    plots = [o for o in outputs(book) if "application/vnd.plotly.v1+json" in o.get("data", {})]
    assert len(plots) == 3
