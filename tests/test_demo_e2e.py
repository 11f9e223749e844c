"""`workbench demo --quick --no-serve` end to end: every artefact exists, is non-empty, and opens with plain
xarray (the budget for this test is 3 minutes on 2 cores)."""

from __future__ import annotations

import json

import pytest
import xarray as xr

from workbench.demo.students import arms

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def demo_run(quick_demo):
    """The session's ``workbench demo --quick`` output (conftest; the notebooks' tests read it too)."""
    return quick_demo


def nonempty(path) -> bool:
    return path.is_file() and path.stat().st_size > 0


def test_demo_prints_the_table_and_writes_the_report(demo_run):
    out, stdout = demo_run
    assert "| arm | task | seeds | @256 | @1024 |" in stdout
    assert "Loading weights" not in stdout  # transformers' per-load bars (also in worker processes) are off
    report = (out / "REPORT.md").read_text()
    for heading in (
        "## Settings",
        "### Stage 1",
        "### Paired differences",
        "## F2",
        "## F3",
        "## The continuous scorecard",
        "Effective lengths",
        "F3 over training steps",
    ):
        assert heading in report
    for finding in ("**F1**", "**KD vs CE**", "**Cross-document KD signal**"):
        assert finding in report
    assert "![" in report and "figures/results/f1_passkey_accuracy_by_arm.png" in report  # embedded


def test_demo_extends_every_arm_from_its_stage1_student(demo_run):
    out, _ = demo_run
    for arm in arms(1):
        ends = [
            p
            for p in (out / "students" / arm.name).glob("ckpt-*")
            if '"phase_end": true' in (p / "manifest.json").read_text()
        ]
        assert len(ends) == 1, arm.name
        manifest = json.loads((ends[0] / "manifest.json").read_text())
        assert "tiny-student-short-theta" in str(manifest["parent"])
        metrics = (out / "students" / arm.name / "metrics.jsonl").read_text()
        assert '"kind": "eval"' in metrics  # held-out retrieval during training


def test_demo_stores_open_with_plain_xarray(demo_run):
    out, _ = demo_run
    expected = {
        "results.zarr": [
            "retrieval",
            "arm_retrieval",
            "arm_comparisons",
            "kd_signal",
            "repeated_tokens",
            "traces",
            "updates_weights",
            "updates_states",
            "bands",
            "arm_bands",
            "probes",
            "position_loss",
            "arm_effective_length",
        ],
        "teacher.zarr": ["traces", "probes"],
    }
    for store, groups in expected.items():
        for group in groups:
            ds = xr.open_zarr(out / store, group=group, consolidated=False)
            assert ds.sizes and all(ds[v].size for v in ds.data_vars), (store, group)
    retrieval = xr.open_zarr(out / "results.zarr", group="retrieval", consolidated=False)
    assert retrieval.sizes["checkpoint"] == 9  # teacher + 2 stage-1 students + 6 arms


def test_demo_renders_every_figure_family_as_png_and_html(demo_run):
    out, _ = demo_run
    figures = list((out / "figures").rglob("*.png"))
    for family in ("f1_", "f2_", "f3_", "probes_", "scorecard_"):
        pngs = [p for p in figures if p.name.startswith(family)]
        assert pngs and all(nonempty(p) and nonempty(p.with_suffix(".html")) for p in pngs), family
