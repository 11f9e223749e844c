"""optim.precision on CPU: the bf16 path (autocast, FSDP2 mixed precision, fp32 master weights) against fp32.

Tolerances (measured on this machine; the bounds leave 10x headroom):
- chunked KD+CE loss under bf16 autocast vs fp32: loss rel <= 1e-3 (measured <= 9e-5), gradients of the hidden
  states and of lm_head rel (L2) <= 2e-2 (measured <= 4.3e-3); bf16 must also *differ* from fp32 (rel > 1e-5);
- a 4-step KD/CE+KD run, bf16 vs fp32: per-step loss, CE and KD rel <= 1e-2 (measured <= 5e-4);
- 2 gloo ranks in bf16 (FSDP2 bf16 params, fp32 reduce) vs 1 process in bf16: see tests/test_distributed.py;
- resume in bf16: bit-exact.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest
import torch

from workbench import checkpoint_io, config, models
from workbench.train import distill, distributed, train
from workbench.train.losses import LossSpec, OnlineTeacher, chunked_loss

sys.path.insert(0, str(Path(__file__).parent))
from test_train import TEACHER, run_cfg  # noqa: E402  (one tiny student/teacher pair for the trainer tests)


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).norm() / a.float().norm())


def _loss_and_grads(spec, h, w, th, tw, labels, autocast: bool):
    h = h.clone().requires_grad_()
    w = w.clone().requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        r = chunked_loss(h, w, labels, spec, teacher=OnlineTeacher(th, tw))
    r.loss.backward()
    r.loss = r.loss.detach()
    return r, h.grad, w.grad


@pytest.mark.parametrize("kind", ["forward_kl", "reverse_kl", "jsd"])
def test_chunked_loss_bf16_autocast_within_tolerance_of_fp32(kind):
    g = torch.Generator().manual_seed(0)
    n, hid, t_hid, vocab = 300, 64, 96, 256
    h, w = torch.randn(n, hid, generator=g), 0.2 * torch.randn(vocab, hid, generator=g)
    th, tw = torch.randn(n, t_hid, generator=g), 0.2 * torch.randn(vocab, t_hid, generator=g)
    labels = torch.randint(0, vocab, (n,), generator=g)
    labels[::7] = -100
    spec = LossSpec(ce_weight=0.5, kd_weight=1.0, kd_kind=kind, chunk_size=128, temperature=2.0)
    a, gh32, gw32 = _loss_and_grads(spec, h, w, th, tw, labels, autocast=False)
    b, gh16, gw16 = _loss_and_grads(spec, h, w, th, tw, labels, autocast=True)
    assert b.loss.dtype == torch.float32 and gh16.dtype == gw16.dtype == torch.float32  # fp32 out, bf16 inside
    assert abs(float(b.loss - a.loss)) / float(a.loss) <= 1e-3
    assert abs(float(b.kd_sum - a.kd_sum)) / float(a.kd_sum) <= 1e-3
    assert 1e-5 < _rel(gh32, gh16) <= 2e-2 and 1e-5 < _rel(gw32, gw16) <= 2e-2
    # bf16 inputs (what FSDP2's bf16 parameters hand the loss): gradients come back in bf16, same tolerance
    c, gh_b, gw_b = _loss_and_grads(spec, h.bfloat16(), w.bfloat16(), th.bfloat16(), tw.bfloat16(), labels, False)
    assert gh_b.dtype == gw_b.dtype == torch.bfloat16
    assert abs(float(c.loss - a.loss)) / float(a.loss) <= 1e-2 and _rel(gh32, gh_b) <= 3e-2 and _rel(gw32, gw_b) <= 3e-2


def test_precision_resolution_and_fsdp_policy():
    cpu, cuda = torch.device("cpu"), torch.device("cuda", 0)
    assert distill.resolve_precision("auto", cpu) == "fp32" and distill.resolve_precision("auto", cuda) == "bf16"
    assert distill.resolve_precision("bf16", cpu) == "bf16"
    mp = distributed.mixed_precision("bf16")
    assert mp.param_dtype == torch.bfloat16 and mp.reduce_dtype == torch.float32
    assert distributed.mixed_precision("fp32").param_dtype is None
    with pytest.raises(config.ConfigError, match="optim.precision: 'fp16' is not one of"):
        config.from_dict(
            config.RunConfig,
            run_cfg(
                None, optim={"precision": "fp16"}, phases=[{"name": "a", "steps": 1, "seq_len": 8, "rope_theta": 1e2}]
            ),
        )


@pytest.fixture(scope="module")
def teacher(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("teacher") / "teacher"
    checkpoint_io.save_checkpoint(models.build_model(config.ModelConfig(**TEACHER), seed=7), path, {"step": 0})
    return path


def _cfg(teacher: Path, precision: str) -> config.RunConfig:
    c = run_cfg(
        teacher,
        optim={"micro_batch_size": 2, "grad_accum_steps": 2, "precision": precision},
        checkpoint={"every": 0, "keep_last": 1},
    )
    c["phases"][0].update(steps=2, objective="ce+kd")
    c["phases"][1].update(steps=2)
    return config.from_dict(config.RunConfig, c)


def _records(run: Path) -> list[tuple]:
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    return [(r["step"], r["loss"], r["ce"], r["kd"]) for r in rows if r["kind"] == "train"]


@pytest.fixture(scope="module")
def bf16_run(teacher, tmp_path_factory) -> Path:
    return train(_cfg(teacher, "bf16"), out=str(tmp_path_factory.mktemp("bf16") / "run"), progress=False)


def test_bf16_kd_run_within_tolerance_of_fp32_and_saves_fp32_weights(teacher, bf16_run, tmp_path):
    fp32 = _records(train(_cfg(teacher, "fp32"), out=str(tmp_path / "fp32"), progress=False))
    bf16 = _records(bf16_run)
    assert [r[0] for r in bf16] == [1, 2, 3, 4]
    assert bf16 != fp32  # bf16 really ran
    for a, b in zip(fp32, bf16):
        assert b[1:] == pytest.approx(a[1:], rel=1e-2, abs=1e-9)
    for ckpt in ("ckpt-000002", "ckpt-000004"):
        manifest = checkpoint_io.read_manifest(bf16_run / ckpt)
        assert manifest["precision"] == "bf16" and manifest["weights_dtype"] == "float32"
    model, _ = checkpoint_io.load(bf16_run / "ckpt-000004")
    assert {p.dtype for p in model.parameters()} == {torch.float32}
    assert checkpoint_io.read_manifest(tmp_path / "fp32" / "ckpt-000004")["precision"] == "fp32"


def test_bf16_resume_is_bit_exact(bf16_run, teacher, tmp_path):
    resumed = tmp_path / "resumed"
    shutil.copytree(bf16_run, resumed)
    shutil.rmtree(resumed / "ckpt-000004")
    train(_cfg(teacher, "bf16"), out=str(resumed), resume=True, progress=False)
    assert _records(resumed) == _records(bf16_run)
    a = checkpoint_io.load(bf16_run / "ckpt-000004")[0].state_dict()
    b = checkpoint_io.load(resumed / "ckpt-000004")[0].state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_device_check_dry_run_prints_the_table(tmp_path):
    """analyses/benchmarks/bench_gpu_trainer.py --dry-run: the device check's rows on CPU, same table shape."""
    import os
    import subprocess

    root = Path(__file__).resolve().parents[1]
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "OMP_NUM_THREADS": "1",
        "BENCH_TMP": str(tmp_path),
        "PYTHONPATH": str(root),
    }
    p = subprocess.run(
        [
            sys.executable,
            str(root / "analyses/benchmarks/bench_gpu_trainer.py"),
            "--dry-run",
            "--only",
            "kd-32k,eval",
            "--json",
            str(tmp_path / "rows.json"),
        ],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-2000:]
    assert (
        "| check | device | tokens/step | tokens/s/GPU | MFU % | peak mem GiB | estimate GiB | time s | status |"
        in p.stdout
    )
    rows = json.loads((tmp_path / "rows.json").read_text())["rows"]
    assert [r["check"] for r in rows] == ["kd-32k bf16 KD step +AC", "eval tiny-teacher"]
    assert rows[0]["tokens/step"] == 1024 and rows[0]["tokens/s/GPU"] > 0 and rows[0]["estimate GiB"] > 0
    assert all(r["status"].startswith("ok") for r in rows)
