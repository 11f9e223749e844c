"""``workbench train CONFIG --plan``: every phase's estimated memory per GPU against the budget, nothing trained."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml

from workbench import config
from workbench.cli import main as cli_main
from workbench.train import rundir

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def paper_config(tmp_path, monkeypatch):
    """The shipped paper KD config with an 8B Llama-3-shaped teacher (its config.json only: --plan reads no
    weights), written beside the presets it names."""
    from transformers import LlamaConfig

    teacher = tmp_path / "teacher"
    LlamaConfig(
        vocab_size=32000, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
        num_key_value_heads=8, max_position_embeddings=131072,
    ).save_pretrained(teacher)  # fmt: skip
    raw = yaml.safe_load((ROOT / "data/configs/paper-kd-phasewise.yaml").read_text())
    raw["teacher"]["path"] = str(teacher)
    raw["data"] = {"kind": "synthetic-short", "doc_len_min": 64, "doc_len_max": 2048}  # no corpus on disk here
    raw["model"] = config.to_dict(config.load_model_config(ROOT / "data/configs/presets/paper-student-1.1b.yaml"))
    path = tmp_path / "paper.yaml"
    path.write_text(yaml.safe_dump(raw))
    monkeypatch.delenv("WORKBENCH_MEMORY_BUDGET_GB", raising=False)
    monkeypatch.chdir(tmp_path)
    return path


def test_plan_of_the_paper_run_on_one_and_on_eight_h100s(paper_config, capsys):
    args = ["train", str(paper_config), "--plan", "--device", "cuda", "--gpu-memory", "80"]
    assert cli_main([*args, "--world-size", "1"]) == 2
    out, err = capsys.readouterr()
    lines = out.splitlines()
    assert "budget 68.0 GiB per GPU (85 % of --gpu-memory 80 GiB)" in lines[0], lines[0]
    short, long = lines[2].split(), lines[3].split()
    assert short[0] == "short-8k" and long[0] == "long-128k" and long[-1] == "OVER" and short[-1] != "OVER"
    assert "phases[1] (long-128k) needs about" in err and "over the 68.0 GiB budget" in err
    assert cli_main([*args, "--world-size", "8"]) == 0  # FSDP2 over 8 ranks shards weights, moments and teacher
    eight = capsys.readouterr().out.splitlines()
    cfg = config.load_run_config(paper_config)
    want = [r.total / 2**30 for r in rundir.phase_memory(cfg, 8, "cuda")]
    assert [float(line.split()[-1]) for line in eight[2:4]] == pytest.approx(want, abs=0.05)
    assert not any("OVER" in line for line in eight)


def test_plan_on_cpu_and_its_mistakes(paper_config, tmp_path, capsys):
    tiny = ROOT / "data/configs/tiny-ce-phasewise.yaml"
    assert cli_main(["train", str(tiny), "--plan"]) == 0  # the CPU budget: 60 % of available memory
    assert "on cpu" in capsys.readouterr().out
    assert not (tmp_path / "runs").exists()  # nothing trained, nothing written
    if not __import__("torch").cuda.is_available():
        assert cli_main(["train", str(paper_config), "--plan", "--device", "cuda"]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "give --gpu-memory GIB" in err[0], err
    assert cli_main(["train", str(tiny), "--plan", "--gpu-memory", "80", "--device", "cpu"]) == 2
    assert "use it with --device cuda" in capsys.readouterr().err


def test_plan_refuses_world_size_0(capsys):
    """--world-size 0 planned one rank ($WORLD_SIZE's default took over the falsy 0)."""
    assert cli_main(["train", str(ROOT / "data/configs/tiny-ce-phasewise.yaml"), "--plan", "--world-size", "0"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--world-size must be >= 1, got 0" in err[0], err


@pytest.mark.parametrize("option", [["--device", "cpu"], ["--world-size", "8"], ["--gpu-memory", "80"]])
def test_planning_options_without_plan_are_refused(option, tmp_path, capsys):
    """A run trained on the config's device, ignoring --device (and --world-size, --gpu-memory) without --plan."""
    out = tmp_path / "run"
    assert cli_main(["train", str(ROOT / "data/configs/tiny-ce-phasewise.yaml"), *option, "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "use them with --plan" in err[0], err
    assert not out.exists()


def test_plan_refuses_gpu_memory_with_the_budget_variable(paper_config, capsys, monkeypatch):
    """WORKBENCH_MEMORY_BUDGET_GB silently won over an explicit --gpu-memory."""
    monkeypatch.setenv("WORKBENCH_MEMORY_BUDGET_GB", "8")
    assert cli_main(["train", str(paper_config), "--plan", "--device", "cuda", "--gpu-memory", "80"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "unset one" in err[0], err


def test_plan_takes_the_configs_cuda_device_on_a_machine_without_one(paper_config, capsys):
    """--device's default is the config's (cuda for the paper runs); it was refused where this machine has no GPU
    ("device: 'cuda' requested but no CUDA device is available") unless --device cuda was repeated."""
    assert cli_main(["train", str(paper_config), "--plan", "--gpu-memory", "141", "--world-size", "8"]) == 0
    assert "8 ranks on cuda" in capsys.readouterr().out


def test_plan_names_a_missing_teacher_directory(paper_config, tmp_path, capsys):
    """It said "no readable config.json (Repo id must be in the form 'repo_name' or 'namespace/repo_name' ...)"."""
    raw = yaml.safe_load(paper_config.read_text())
    raw["teacher"]["path"] = str(tmp_path / "no-such-teacher")
    paper_config.write_text(yaml.safe_dump(raw))
    assert cli_main(["train", str(paper_config), "--plan", "--device", "cuda", "--gpu-memory", "80"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"workbench train: error: teacher.path: directory {tmp_path / 'no-such-teacher'} not found"], err


@pytest.mark.parametrize("user", [None, "PYTORCH_CUDA_ALLOC_CONF", "PYTORCH_ALLOC_CONF"])
def test_the_launcher_sets_expandable_segments_unless_the_user_set_an_allocator(user, tmp_path, monkeypatch):
    """torch reads PYTORCH_CUDA_ALLOC_CONF before PYTORCH_ALLOC_CONF (its newer name): the launcher's default under
    the old name overrode a user's setting under the new one."""
    for name in ("PYTORCH_CUDA_ALLOC_CONF", "PYTORCH_ALLOC_CONF"):
        monkeypatch.delenv(name, raising=False)
    if user is not None:
        monkeypatch.setenv(user, "backend:native")
    run_config = str(ROOT / "data/configs/tiny-ce-phasewise.yaml")
    assert cli_main(["train", run_config, "--world-size", "8", "--out", str(tmp_path / "run")]) == 2  # stops after it
    expected = {None: "expandable_segments:True", "PYTORCH_CUDA_ALLOC_CONF": "backend:native"}.get(user)
    assert os.environ.get("PYTORCH_CUDA_ALLOC_CONF") == expected
