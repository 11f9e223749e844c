"""The suite's own layout: its helper modules (``tiny``, ``corpus_fixtures``, shared test modules) import the way
pytest puts ``tests/`` on the path, so plain ``pytest`` from the repository root collects every file (not only
``python -m pytest``, which also puts the working directory on the path)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_every_test_module_collects_without_the_repository_root_on_the_path(tmp_path):
    (tmp_path / "workbench").symlink_to(ROOT / "workbench")  # the package alone, as an install provides it
    env = {**os.environ, "PYTHONPATH": str(tmp_path), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    # -P: no working directory on sys.path, as the ``pytest`` script runs; -p no:...: nothing written into ROOT
    out = subprocess.run(
        [sys.executable, "-P", "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider", str(ROOT / "tests")],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-2000:]
    assert "error" not in out.stdout.splitlines()[-1], out.stdout[-3000:]
