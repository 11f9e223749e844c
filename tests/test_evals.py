"""Retrieval evaluation: exact lengths and depths in both renderings, the synthetic language, determinism,
RULER scoring on hand-made outputs, batched greedy decoding with a KV cache, and ``workbench eval`` with
its store (opened with plain xarray) and heatmap."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch
from tiny import tiny_student

from workbench.config import ModelConfig
from workbench.data import tokenizer as syn
from workbench.evals import TASKS, SyntheticRendering, TextRendering, make_sample, make_samples, quick_eval, scoring
from workbench.evals.runner import greedy_batch, score_samples

TINY = ModelConfig(**tiny_student(max_position_embeddings=1024, rope_theta=500.0))


def _local_tokenizer():
    """A byte-level BPE tokenizer trained here on the task templates (no download) that prepends <s>."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    from workbench.evals import render

    rng = np.random.default_rng(0)
    corpus = [v for t in (render.PASSKEY_TEXT, render.NIAH_TEXT, render.VT_TEXT) for v in t.values()] * 5
    corpus.append(" ".join(str(x) for x in rng.integers(0, 10**7, 50)))
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(
        corpus,
        trainers.BpeTrainer(
            vocab_size=700,
            special_tokens=["<s>", "</s>", "<pad>"],
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        ),
    )
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 0)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>")


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models crawl with 2 threads when neighbours are busy (measured on 2 cores); restore afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def text_tokenizer():
    return _local_tokenizer()


@pytest.fixture(scope="module")
def tiny_model():
    from workbench.models import build_model

    torch.manual_seed(0)
    return build_model(TINY, seed=0)


def _renderings(text_tokenizer):
    return {"synthetic": (SyntheticRendering(), (300, 517)), "text": (TextRendering(text_tokenizer), (384, 601))}


def _find(ids: np.ndarray, needle: np.ndarray) -> list[int]:
    n = len(needle)
    return [i for i in range(len(ids) - n + 1) if np.array_equal(ids[i : i + n], needle)]


# ------------------------------------------------------------------------------------ task generation


@pytest.mark.parametrize("which", ["synthetic", "text"])
def test_exact_length_and_needle_at_requested_depth(which, text_tokenizer):
    rendering, lengths = _renderings(text_tokenizer)[which]
    assert not isinstance(rendering, TextRendering) or rendering.add_bos
    for task in TASKS:
        for length in lengths:
            for depth in (0.0, 25.0, 50.0, 100.0):
                s = make_sample(task, length, depth, rendering, seed=3)
                assert len(s.input_ids) == length, (task, length, depth)
                assert np.array_equal(s.input_ids[: s.haystack_start], rendering.prefix(task))
                # the target needle's ids really are at needle_position
                assert np.array_equal(
                    s.input_ids[s.needle_position : s.needle_position + len(s.needle_ids)], s.needle_ids
                )
                hay = s.haystack_end - s.haystack_start
                if task in ("passkey", "niah", "multikey"):  # one gold needle: depth is its exact place
                    assert s.needle_position == s.haystack_start + round(depth / 100 * (hay - len(s.needle_ids)))
                    assert _find(s.input_ids, s.needle_ids) == [s.needle_position]
                if depth == 0.0:
                    assert s.needle_position == s.haystack_start
    # depth in percent of the haystack: 25 % sits a quarter of the way in
    s = make_sample("passkey", 1000, 25.0, SyntheticRendering(), seed=0)
    assert s.needle_position == round(0.25 * (1000 - 2 - 6))
    assert s.input_ids[s.needle_position] == syn.VOCAB.marker["PASS"]


def test_same_seed_same_samples_and_cells_independent(text_tokenizer):
    for rendering in (SyntheticRendering(), TextRendering(text_tokenizer)):
        a = make_samples("multikey", 400, [10.0, 90.0], 3, rendering, seed=7)
        b = make_samples("multikey", 400, [10.0, 90.0], 3, rendering, seed=7)
        assert all(np.array_equal(x.input_ids, y.input_ids) and x.refs == y.refs for x, y in zip(a, b))
        c = make_samples("multikey", 400, [10.0, 90.0], 3, rendering, seed=8)
        assert not all(np.array_equal(x.input_ids, y.input_ids) for x, y in zip(a, c))
        # a sample does not depend on which other cells were asked for
        alone = make_sample("multikey", 400, 90.0, rendering, seed=7, index=2)
        assert np.array_equal(alone.input_ids, a[5].input_ids)
    # needle-to-query distance is fixed by depth, but the distractors' places and the content vary
    places = {
        tuple(
            np.flatnonzero(
                make_sample("multikey", 300, 50.0, SyntheticRendering(), seed=0, index=i).input_ids
                == syn.VOCAB.marker["SET"]
            )
        )
        for i in range(8)
    }
    assert len(places) > 4


def _bindings(text: str) -> dict[str, str]:
    """Resolve every VAR statement of a synthetic prompt to its digits."""
    env: dict[str, str] = {}
    for name, rhs in re.findall(r"VAR (k\d+) = ((?:\d )*\d|k\d+)", text):
        env[name] = env[rhs] if rhs.startswith("k") else rhs
    return env


def test_synthetic_rendering_speaks_the_language():
    r = SyntheticRendering()
    for i in range(6):
        s = make_sample("passkey", 200, 40.0, r, seed=i)
        text = syn.decode(s.input_ids)
        (key,) = re.findall(r"PASS ((?:\d ){4}\d)", text)
        assert text.endswith("ASK PASS") and syn.decode(s.answer_ids) == key
        assert set(text.split()) - {"PASS", "ASK"} - set(syn.DIGITS) <= set(syn.FILLER)

        text = syn.decode(make_sample("multikey", 200, 40.0, r, seed=i).input_ids)
        facts = re.findall(r"SET (k\d+) (v\d+)", text)
        assert len(facts) == 4 and len({k for k, _ in facts}) == 4
        s = make_sample("multikey", 200, 40.0, r, seed=i)
        facts = dict(re.findall(r"SET (k\d+) (v\d+)", syn.decode(s.input_ids)))
        asked = syn.decode(s.input_ids).split()[-1]
        assert syn.decode(s.answer_ids) == facts[asked]

        s = make_sample("multivalue", 200, 40.0, r, seed=i)
        text = syn.decode(s.input_ids)
        key = text.split()[-1]
        values = [v for k, v in re.findall(r"SET (k\d+) (v\d+)", text) if k == key]
        assert syn.decode(s.answer_ids) == " SEP ".join(values) and len(values) == 4  # order of appearance

        s = make_sample("multiquery", 200, 40.0, r, seed=i)
        text = syn.decode(s.input_ids)
        facts = dict(re.findall(r"SET (k\d+) (v\d+)", text))
        asked = text[text.rindex("ASK") + 4 :].split(" SEP ")
        assert syn.decode(s.answer_ids) == " SEP ".join(facts[k] for k in asked)

        s = make_sample("vt", 200, 40.0, r, seed=i)
        text = syn.decode(s.input_ids)
        value = re.search(r"ASK ((?:\d ){4}\d)$", text).group(1)
        env = _bindings(text)
        bound = [n for n in re.findall(r"VAR (k\d+) =", text) if env[n] == value]
        assert syn.decode(s.answer_ids) == " SEP ".join(bound) and len(bound) == 5


def test_text_rendering_uses_ruler_templates(text_tokenizer):
    r = TextRendering(text_tokenizer)
    s = make_sample("passkey", 300, 50.0, r, seed=1)
    text = text_tokenizer.decode(s.input_ids, skip_special_tokens=True)
    key = s.refs[0]
    assert re.fullmatch(r"[1-9]\d{4}", key)
    assert f"The pass key is {key}. Remember it. {key} is the pass key." in text
    assert "The grass is green. The sky is blue." in text and text.endswith("What is the pass key? The pass key is")
    assert text_tokenizer.decode(s.answer_ids) == f" {key}"
    # the target needle starts a filler sentence (not in the middle of a word)
    assert text_tokenizer.decode(s.input_ids[: s.needle_position]).endswith(".")
    s = make_sample("vt", 400, 20.0, r, seed=1)
    text = text_tokenizer.decode(s.input_ids, skip_special_tokens=True)
    assert f"VAR {s.refs[0]} = " in text and f"VAR {s.refs[1]} = VAR {s.refs[0]}." in text
    assert "5 variables are assigned the value" in text


def test_bad_requests_fail_clearly():
    r = SyntheticRendering()
    with pytest.raises(ValueError, match="depth must be a percentage"):
        make_sample("passkey", 100, 120.0, r)
    with pytest.raises(ValueError, match="task vt at length 20.*longer length"):
        make_sample("vt", 20, 50.0, r)
    with pytest.raises(ValueError, match="unknown task 'needle'"):
        quick_eval(None, lengths=[64], tasks=("needle",))


# ---------------------------------------------------------------------------------------------- scoring


def test_ruler_scores_on_hand_made_outputs():
    preds = [
        "The special magic numbers are 1234567 and 7654321.",
        "I do not know.",
        "\n 7654321 \x07",
        "THE ANSWER: ABCDE",
    ]
    refs = [["1234567", "7654321"], ["1234567"], ["1234567", "7654321"], ["abcde", "FGHIJ"]]
    # RULER: all = mean of found fractions, part = mean of any-found, percent, 2 decimals
    assert scoring.string_match_all(preds, refs) == round((1 + 0 + 0.5 + 0.5) / 4 * 100, 2) == 50.0
    assert scoring.string_match_part(preds, refs) == round((1 + 0 + 1 + 1) / 4 * 100, 2) == 75.0
    assert scoring.string_match_part(preds[:3], refs[:3]) == 66.67
    assert scoring.match_all("ab 12", ["12", "AB", "c"]) == pytest.approx(2 / 3)
    assert scoring.postprocess_pred(" \n42\x07 ") == "42"
    # raw RULER is a substring test; the synthetic language matches whole tokens
    assert scoring.match_part("v12 SEP v3", ["v1"]) == 1.0
    assert scoring.match_part("v12 SEP v3", ["v1"], word_boundary=True) == 0.0
    assert scoring.match_all("k1 SEP k2", ["k1", "k2"], word_boundary=True) == 1.0
    assert scoring.match_all("4 0 9 1 7", ["0 9 1"], word_boundary=True) == 1.0
    assert scoring.exact_match([5, 6, 7], [5, 6]) and not scoring.exact_match([5], [5, 6])
    with pytest.raises(ValueError):
        scoring.string_match_all(["a"], [["a"], ["b"]])


# ---------------------------------------------------------------------------------------------- runner


def test_greedy_loop_matches_generate_and_full_forward_logprob(tiny_model):
    samples = make_samples("vt", 96, [0.0, 60.0], 2, SyntheticRendering(), seed=0)
    prompts = torch.as_tensor(np.stack([s.input_ids for s in samples]))
    gold = torch.as_tensor(np.stack([s.answer_ids for s in samples]))
    mask = torch.ones_like(gold, dtype=torch.bool)
    mask[1, 4:] = False  # a shorter gold answer in the batch
    generated, logprob = greedy_batch(tiny_model, prompts, gold, mask, 12)
    with torch.no_grad():
        reference = tiny_model.generate(prompts, max_new_tokens=12, min_new_tokens=12, do_sample=False)[:, 96:]
        full = tiny_model(torch.cat([prompts, gold], 1)).logits[:, 95:-1].log_softmax(-1)
    assert torch.equal(generated, reference)
    want = (full.gather(-1, gold[..., None]).squeeze(-1) * mask).sum(-1)
    assert torch.allclose(logprob, want, atol=1e-4)


def test_batched_equals_one_at_a_time(tiny_model, text_tokenizer):
    r = SyntheticRendering()
    samples = make_samples("multivalue", 128, [0.0, 100.0], 3, r, seed=1)
    batched = score_samples(tiny_model, samples, r)
    single = score_samples(tiny_model, samples, r, batch_size=1)
    for a, b in zip(batched, single):
        assert np.array_equal(a.generated, b.generated) and a.prediction == b.prediction
        assert a.answer_logprob == pytest.approx(b.answer_logprob, abs=1e-4)
        assert 0.0 <= a.match_all <= 1.0 and a.match_part in (0.0, 1.0)
    # a model that is forced to emit the gold answer scores 1 everywhere (the scorer is not always 0)
    s = samples[0]
    res = score_samples(_Oracle(s), [s], r)[0]
    assert res.correct and res.match_all == 1.0 and res.match_part == 1.0 and res.answer_logprob > -1e-3


class _Oracle(torch.nn.Module):
    """A 'model' whose next token is always the gold continuation of one sample (checks the scorer)."""

    def __init__(self, sample):
        super().__init__()
        self.seq = torch.as_tensor(np.r_[sample.input_ids, sample.answer_ids, [0] * 8])
        self.dummy = torch.nn.Parameter(torch.zeros(1))

    def forward(self, input_ids, position_ids, cache=None, use_cache=True, logits_to_keep=0):
        from types import SimpleNamespace

        nxt = self.seq[position_ids + 1]
        logits = torch.full((*input_ids.shape, 128), -1e4).scatter(-1, nxt[..., None], 0.0)
        if logits_to_keep:
            logits = logits[:, -logits_to_keep:]
        return SimpleNamespace(logits=logits, cache=_Cache())


class _Cache:
    def crop(self, n):
        pass


def test_quick_eval_rows(tiny_model):
    rows = quick_eval(tiny_model, lengths=[64, 96], samples=4, tasks=("passkey", "niah"))
    assert [(r["task"], r["length"]) for r in rows] == [("passkey", 64), ("passkey", 96), ("niah", 64), ("niah", 96)]
    for r in rows:
        assert set(r) == {"task", "length", "accuracy", "answer_logprob"}
        assert 0.0 <= r["accuracy"] <= 1.0 and r["answer_logprob"] < 0
    assert rows == quick_eval(tiny_model, lengths=[64, 96], samples=4, tasks=("passkey", "niah"))
    assert not tiny_model.training


# --------------------------------------------------------------------------------------- command + store


def test_eval_command_writes_store_and_heatmap(tmp_path, text_tokenizer, capsys):
    import xarray as xr

    from workbench.checkpoint_io import save_checkpoint
    from workbench.cli import main
    from workbench.models import build_model

    a = save_checkpoint(
        build_model(TINY, seed=0),
        tmp_path / "kd-run" / "ckpt-000100",
        {"phase": "short", "step": 100, "objective": "kd", "seq_len": 256},
    )
    text_cfg = ModelConfig(**{**TINY.__dict__, "vocab_size": len(text_tokenizer)})
    b = save_checkpoint(
        build_model(text_cfg, seed=1),
        tmp_path / "hf-run" / "ckpt-000001",
        {"step": 1},
        extra=text_tokenizer.save_pretrained,
    )
    out = tmp_path / "results.zarr"
    common = [
        "--tasks",
        "passkey,niah,multikey,multivalue,multiquery,vt",
        "--lengths",
        "384,512",
        "--depths",
        "3",
        "--samples",
        "2",
        "--out",
        str(out),
    ]

    # 384 and 512 > the 256 positions ckpt A was trained with: refused before any work, nothing written
    assert main(["eval", str(a), *common]) == 2
    assert "exceed the 256 positions" in capsys.readouterr().err and not out.exists()

    assert (
        main(
            [
                "eval",
                str(a),
                *common,
                "--extrapolate",
                "--figure",
                str(tmp_path / "fig" / "grid"),
                "--figure-task",
                "passkey",
            ]
        )
        == 0
    )
    assert (tmp_path / "fig" / "grid.html").stat().st_size > 0 and (tmp_path / "fig" / "grid.png").stat().st_size > 0
    assert main(["eval", str(b), *common]) == 0  # a second checkpoint (real tokenizer) is appended
    assert main(["eval", str(b), *common]) == 2  # the same checkpoint twice is refused
    assert "already written" in capsys.readouterr().err
    assert main(["eval", str(b), *common[:-4], "--samples", "3", "--out", str(out)]) == 2  # another grid

    ds = xr.open_zarr(str(out), group="retrieval", consolidated=False)  # plain xarray, no project code
    assert dict(ds.sizes) == {"checkpoint": 2, "task": 6, "length": 2, "depth": 3, "sample": 2}
    assert list(ds["checkpoint"].values) == ["kd-run/ckpt-000100", "hf-run/ckpt-000001"]
    assert list(ds["depth"].values) == [0.0, 50.0, 100.0] and list(ds["length"].values) == [384, 512]
    assert list(ds["extrapolate"].values) == [True, False]
    assert list(ds["max_positions"].values) == [256, 1024]
    assert ds["rendering"].values[0] == "synthetic" and str(ds["rendering"].values[1]).startswith("text:")
    for name in ("correct", "match_all", "match_part", "answer_logprob", "prediction", "gold"):
        assert ds[name].dims == ("checkpoint", "task", "length", "depth", "sample")
    logprob = ds["answer_logprob"].values
    assert np.isfinite(logprob).all() and (logprob < 0).all()
    assert ds["needle_position"].sel(checkpoint="kd-run/ckpt-000100", task="passkey", depth=0.0).values.tolist() == [
        [0, 0],
        [0, 0],
    ]
    assert ds.attrs["schema"] == "workbench-store/3"
    assert set(json.loads(ds.attrs["checkpoint_hashes"])) == {"kd-run/ckpt-000100", "hf-run/ckpt-000001"}
    assert len(set(ds["checkpoint_hash"].values)) == 2


def test_eval_command_bad_input(tmp_path, capsys):
    from workbench.cli import main

    assert main(["eval", str(tmp_path / "missing"), "--out", str(tmp_path / "s.zarr")]) == 2
    assert "not found" in capsys.readouterr().err
    assert main(["eval", str(tmp_path), "--tasks", "passkey,nope"]) == 2
    assert "unknown task 'nope'" in capsys.readouterr().err
    assert main(["eval", str(tmp_path), "--lengths", "256,abc"]) == 2
    assert "--lengths" in capsys.readouterr().err


def test_figures_show_cell_means():
    import xarray as xr

    from workbench.figures import retrieval as fr

    rng = np.random.default_rng(0)
    shape = (2, 2, 3, 4, 5)  # checkpoint, task, length, depth, sample
    correct = rng.random(shape) < 0.5
    ds = xr.Dataset(
        {"correct": (("checkpoint", "task", "length", "depth", "sample"), correct)},
        coords={
            "checkpoint": ["kd/ckpt-1", "ce/ckpt-1"],
            "task": ["passkey", "niah"],
            "length": [256, 512, 1024],
            "depth": [0.0, 25.0, 75.0, 100.0],
            "sample": np.arange(5),
            "max_positions": ("checkpoint", [256, 256]),
            "rope_theta": ("checkpoint", [500.0, 5e4]),
        },
    )
    fig = fr.heatmap(ds, "ce/ckpt-1", task="niah")
    z = np.asarray(fig.data[0].z)
    assert z.shape == (4, 3)  # depth rows x length columns
    assert z[2, 1] == pytest.approx(correct[1, 1, 1, 2].mean())
    both = fr.heatmaps(ds)
    assert len(both.data) == 2 and np.allclose(both.data[0].z, correct[0].mean(axis=(0, 3)).T)
    lines = fr.accuracy_vs_length(ds, task="passkey")
    assert [t.name for t in lines.data] == ["kd/ckpt-1 (theta 500)", "ce/ckpt-1 (theta 50000)", "trained length 256"]
    assert np.allclose(lines.data[1].y, correct[1, 0].mean(axis=(1, 2)))
    with pytest.raises(ValueError, match="no checkpoint 'x'"):
        fr.heatmap(ds, "x")


TEACHER = __import__("pathlib").Path(__file__).resolve().parents[1] / "data" / "teacher" / "tiny-teacher"


@pytest.mark.skipif(not (TEACHER / "manifest.json").exists(), reason="the tiny teacher has not been shipped yet")
def test_shipped_teacher_retrieves_in_the_synthetic_language():
    """The tasks speak the language the teacher was trained on: it retrieves where a random model cannot."""
    from workbench.checkpoint_io import load

    model, manifest = load(TEACHER)
    rows = {r["task"]: r for r in quick_eval(model, lengths=[256], samples=12, tasks=("passkey", "niah"), seed=1)}
    assert rows["niah"]["accuracy"] >= 0.75 and rows["passkey"]["accuracy"] >= 0.4
    assert rows["passkey"]["answer_logprob"] > -5.0  # a uniform guess over 10 digits x 5 is -11.5


def test_checkpoint_reading_commands_take_a_run_directory_and_phase_ends(tmp_path, capsys):
    """`CKPT` means the same in eval, updates, probe and kd-signal: a checkpoint, or a run directory standing
    for its complete checkpoints (oldest first); `--phase-ends` keeps the phase ends."""
    import xarray as xr

    from workbench.checkpoint_io import save_checkpoint
    from workbench.cli import main
    from workbench.models import build_model

    run = tmp_path / "run"
    for step, end in ((1, False), (2, True), (3, True)):
        save_checkpoint(
            build_model(TINY, seed=step),
            run / f"ckpt-{step:06d}",
            {"phase": "short", "step": step, "objective": "kd", "phase_end": end},
        )
    common = ["--tasks", "passkey", "--lengths", "64", "--depths", "1", "--samples", "1", "--device", "cpu"]
    assert main(["eval", str(run), *common, "--out", str(tmp_path / "all.zarr")]) == 0
    assert main(["eval", str(run), "--phase-ends", *common]) == 0  # default store: results.zarr in the run
    every = xr.open_zarr(tmp_path / "all.zarr", group="retrieval", consolidated=False)
    ends = xr.open_zarr(run / "results.zarr", group="retrieval", consolidated=False)
    assert every.checkpoint.values.tolist() == ["run/ckpt-000001", "run/ckpt-000002", "run/ckpt-000003"]
    assert ends.checkpoint.values.tolist() == ["run/ckpt-000002", "run/ckpt-000003"]
    assert main(["eval", str(tmp_path), *common]) == 2  # neither a checkpoint nor a run directory
    assert "neither a checkpoint nor a run directory" in capsys.readouterr().err
