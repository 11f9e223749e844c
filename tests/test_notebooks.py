"""The notebooks run top to bottom WITH THEIR OWN DEFAULTS, as a user opens them after `make demo`.

Each notebook is executed from a copy of ``notebooks/`` inside a temporary tree whose ``runs/demo`` is a
``workbench demo --quick`` output (the session fixture ``quick_demo``, shared with ``test_demo_e2e``), so the
notebooks' default ``../runs/demo`` resolves there and no environment variable points them anywhere: the
notebook code is the shipped one. ``01_your_model`` runs in a tree with no ``runs/`` at all (it must work right
after `make venv`). The time each takes is printed. The committed notebooks carry no outputs.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
OVERRIDES = (
    "WORKBENCH_DEMO",
    "WORKBENCH_RUN",
    "WORKBENCH_MODEL",
    "WORKBENCH_CKPT_A",
    "WORKBENCH_CKPT_B",
)  # the notebooks' overrides: unset, so the defaults are what runs
PLOTLY = "application/vnd.plotly.v1+json"

# notebook -> (needs the demo's output, figures it must end with at least, texts its outputs must contain)
EXPECTED = {
    "01_your_model.ipynb": (
        False,
        5,
        ["ok   nnsight: identity == plain HF", "tl vs nnsight", "zero-lambda>256", "clean_accuracy"],
    ),
    "02_spectrum_and_updates.ipynb": (
        True,
        4,
        ["critical pair", "students/tiny-student-short-theta500", "kd-phasewise-s0/ckpt-", "lambda>1024"],
    ),
    "03_demo_results.ipynb": (
        True,
        7,
        ["arm_comparisons", "kd-phasewise - ce-phasewise", "kd-phasewise-s1/ckpt-", "teacher/tiny-teacher"],
    ),
    "04_training_run.ipynb": (True, 3, ["positions 512-1024", "theta 500 -> 10000", "niah@1024"]),
}


def test_every_notebook_is_covered():
    assert sorted(p.name for p in NOTEBOOKS.glob("*.ipynb")) == sorted(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_committed_notebooks_have_no_outputs(name):
    book = nbformat.read(NOTEBOOKS / name, as_version=4)
    nbformat.validate(book)
    code = [c for c in book.cells if c.cell_type == "code"]
    assert code and all(not c.outputs and c.execution_count is None for c in code), (
        f"{name}: strip the outputs before committing (Jupyter: Edit > Clear Outputs of All Cells)"
    )


def execute(name: str, tree: Path) -> tuple[nbformat.NotebookNode, float]:
    """Run ``notebooks/<name>`` from a copy in ``tree/notebooks`` with the notebook's own defaults."""
    (tree / "notebooks").mkdir(parents=True, exist_ok=True)
    shutil.copy(NOTEBOOKS / name, tree / "notebooks" / name)
    book = nbformat.read(tree / "notebooks" / name, as_version=4)
    saved = {k: os.environ.pop(k) for k in OVERRIDES if k in os.environ}
    start = time.perf_counter()
    try:
        NotebookClient(
            book, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tree / "notebooks")}}
        ).execute()
    finally:
        os.environ.update(saved)
    return book, time.perf_counter() - start


def outputs(book) -> list:
    return [o for cell in book.cells if cell.cell_type == "code" for o in cell.get("outputs", [])]


def text_of(book) -> str:
    parts = []
    for o in outputs(book):
        parts.append(o.get("text", ""))
        parts.append(str(o.get("data", {}).get("text/plain", "")))
    return "\n".join(parts)


@pytest.fixture(scope="module")
def demo_tree(quick_demo, tmp_path_factory):
    """A tree laid out like the repository after `make demo`: runs/demo -> the quick demo's output."""
    tree = tmp_path_factory.mktemp("nbtree")
    (tree / "runs").mkdir()
    (tree / "runs" / "demo").symlink_to(quick_demo[0], target_is_directory=True)
    return tree


def check_run(name: str, tree: Path, capsys) -> None:
    """Execute ``name`` in ``tree`` with its defaults; no error, enough figures, the last code cell a figure."""
    _, n_figures, texts = EXPECTED[name]
    book, seconds = execute(name, tree)
    with capsys.disabled():
        print(f"\n[notebook] {name}: {seconds:.1f} s with its defaults")
    assert not [o for o in outputs(book) if o.output_type == "error"]
    plots = [o for o in outputs(book) if PLOTLY in o.get("data", {})]
    assert len(plots) >= n_figures, f"{name}: {len(plots)} figures"
    last = [c for c in book.cells if c.cell_type == "code"][-1]
    assert any(PLOTLY in o.get("data", {}) for o in last.outputs), f"{name} must end in a figure"
    text = text_of(book)
    for needle in texts:
        assert needle in text, f"{name}: {needle!r} not in its outputs"


@pytest.mark.slow
@pytest.mark.parametrize("name", [n for n in sorted(EXPECTED) if not EXPECTED[n][0]])
def test_notebook_runs_right_after_make_venv(name, tmp_path, capsys):
    """No runs/ in the tree at all: the notebook needs only the repository (the shipped teacher)."""
    check_run(name, tmp_path, capsys)


@pytest.mark.slow
@pytest.mark.parametrize("name", [n for n in sorted(EXPECTED) if EXPECTED[n][0]])
def test_notebook_runs_after_the_demo(name, demo_tree, capsys):
    check_run(name, demo_tree, capsys)
