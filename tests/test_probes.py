"""Attention-score decomposition by RoPE pair (checked against transformers' eager attention), position
probes (scikit-learn), the `workbench updates` / `workbench probe` commands, the store groups and figures."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch
import xarray as xr

from workbench import checkpoint_io, cli, measurements, models, rope
from workbench.config import ModelConfig
from workbench.measurements import scores
from workbench.measurements.capture import capture, probe_batch

D = 16


def pair_contributions(q: torch.Tensor, k: torch.Tensor, scaling: float) -> torch.Tensor:
    """The dense reference: every per-pair score term, q [B, H, Tq, d], k [B, H, Tk, d] -> [B, H, Tq, Tk, d/2]."""
    return scaling * torch.einsum("bhtxp,bhsxp->bhtsp", rope.pair_view(q), rope.pair_view(k))


def _cfg(**kw) -> ModelConfig:
    base = dict(
        vocab_size=128,
        hidden_size=64,
        num_layers=2,
        num_heads=4,
        num_kv_heads=2,
        head_dim=D,
        intermediate_size=128,
        max_position_embeddings=4096,
        rope_theta=500.0,
    )
    return ModelConfig(**{**base, **kw})


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """Three checkpoints of a GQA 'run'; the last two were 'trained' (noise added) at a larger theta."""
    root = tmp_path_factory.mktemp("runs") / "toy"
    model = models.build_model(_cfg(), seed=0)
    paths = [
        checkpoint_io.save_checkpoint(
            model, root / "ckpt-000001", {"phase": "short", "step": 1, "objective": "kd", "phase_end": True}
        )
    ]
    g = torch.Generator().manual_seed(0)
    models.set_rope_theta(model, 20000.0)
    for step in (2, 3):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(0.01 * torch.randn(p.shape, generator=g))
        paths.append(
            checkpoint_io.save_checkpoint(
                model, root / f"ckpt-{step:06d}", {"phase": "long", "step": step, "phase_end": step == 3}
            )
        )
    return paths


# ------------------------------------------------------------------------------------ score decomposition


def test_pair_terms_sum_to_the_scores_of_transformers_eager_attention(monkeypatch):
    """Per-pair terms from our capture, summed over pairs, reproduce the scores HF's eager attention
    really softmaxes (its attention weights), and our post-RoPE q/k equal the ones HF computed."""
    from transformers.models.llama import modeling_llama

    seen = []
    original = modeling_llama.eager_attention_forward

    def spy(module, query, key, value, attention_mask, scaling, **kw):
        out, weights = original(module, query, key, value, attention_mask, scaling, **kw)
        seen.append((query.detach(), key.detach(), weights.detach()))
        return out, weights

    monkeypatch.setattr(modeling_llama, "eager_attention_forward", spy)
    model = models.build_model(_cfg(), seed=2, attn_implementation="eager")
    batch = probe_batch(48, 2, seed=1)
    cap = capture(model, batch)
    assert len(seen) == 2
    for layer, (hf_q, hf_k, hf_weights) in enumerate(seen):
        q_rot, k_rot = cap.rotated(layer)
        torch.testing.assert_close(q_rot, hf_q, rtol=0, atol=1e-6)
        torch.testing.assert_close(k_rot, hf_k, rtol=0, atol=1e-6)
        k_full = modeling_llama.repeat_kv(k_rot, 2)
        terms = pair_contributions(q_rot, k_full, cap.scaling)  # [B, H, T, T, P]
        assert terms.shape[-1] == D // 2
        score = terms.sum(-1)
        torch.testing.assert_close(score, q_rot @ k_full.transpose(2, 3) * cap.scaling, rtol=1e-5, atol=1e-6)
        causal = torch.ones(48, 48, dtype=torch.bool).tril()
        probs = torch.softmax(score.masked_fill(~causal, float("-inf")), dim=-1)
        torch.testing.assert_close(probs, hf_weights, rtol=1e-4, atol=1e-6)


def test_bucketed_means_match_brute_force_and_sum_over_pairs():
    torch.manual_seed(0)
    b, h, t, d = 2, 3, 37, 8
    q, k = torch.randn(b, h, t, d, dtype=torch.float64), torch.randn(b, h, t, d, dtype=torch.float64)
    pos = torch.arange(t).repeat(b, 1)
    lo, hi = scores.distance_buckets(t)
    assert lo.tolist() == [0, 1, 2, 4, 8, 16, 32] and hi.tolist() == [0, 1, 3, 7, 15, 31, 36]
    got = scores.bucketed_contributions(q, k, pos, 0.5, len(lo), block=5)
    full = pair_contributions(q, k, 0.5).numpy()  # [B, H, T, T, P]
    ti, si = np.meshgrid(np.arange(t), np.arange(t), indexing="ij")
    for i, (a, z) in enumerate(zip(lo, hi)):
        sel = (ti >= si) & (ti - si >= a) & (ti - si <= z)
        want = full[:, :, sel, :].sum(axis=(0, 2))  # [H, P]
        np.testing.assert_allclose(got["contribution"][:, :, i], want, rtol=1e-10, atol=1e-10)
        assert got["count"][i] == b * sel.sum()
    assert got["count"].sum() == b * t * (t + 1) // 2


def _qk(b, h, t, d, seed=0):
    g = torch.Generator().manual_seed(seed)
    q = (
        torch.randn(b, h, t, d, generator=g, dtype=torch.float64) * torch.linspace(0.3, 2.0, d, dtype=torch.float64)
        + 0.2
    )
    k = torch.randn(b, h, t, d, generator=g, dtype=torch.float64) - 0.1
    return q, k


def test_fast_decomposition_is_exact_at_short_length():
    """Prefix sums give every bucket's mean term exactly; below the sample size the |term| means are exact too."""
    b, h, t, d = 2, 3, 200, 8
    q, k = _qk(b, h, t, d)
    pos = (torch.arange(t) + torch.tensor([[0], [5]])).contiguous()  # rows start at different positions
    lo, hi = scores.distance_buckets(t)
    exact = scores.decompose(q, k, pos, 0.5, lo, hi, method="exact")
    fast = scores.decompose(q, k, pos, 0.5, lo, hi, method="fast")
    np.testing.assert_allclose(fast["contribution"], exact["contribution"], rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(fast["abs_contribution"], exact["abs_contribution"], rtol=1e-10, atol=1e-12)
    assert fast["count"].tolist() == exact["count"].tolist() == fast["n_abs"].tolist()
    # a sample smaller than the buckets: |term| estimated, the mean term still exact
    small = scores.decompose(q, k, pos, 0.5, lo, hi, abs_sample={"pairs": 64})
    np.testing.assert_allclose(small["contribution"], exact["contribution"], rtol=1e-10, atol=1e-12)
    assert small["n_abs"].max() == 2 * 64 and not np.allclose(small["abs_contribution"], exact["abs_contribution"])
    with pytest.raises(ValueError, match="contiguous position"):
        scores.decompose(q, k, torch.cat([torch.arange(100), torch.arange(100)]).repeat(b, 1), 0.5, lo, hi)


def test_sampled_abs_terms_close_to_exact_at_2k_and_seeded():
    b, h, t, d = 1, 2, 2048, 8
    q, k = _qk(b, h, t, d, seed=1)
    pos = torch.arange(t)[None]
    lo, hi = scores.distance_buckets(t)
    exact = scores.decompose(q, k, pos, 0.5, lo, hi, method="exact")
    fast = scores.decompose(q, k, pos, 0.5, lo, hi, abs_sample={"pairs": 16384}, seed=3)
    np.testing.assert_allclose(fast["contribution"], exact["contribution"], rtol=1e-9, atol=1e-12)
    rel = np.abs(fast["abs_contribution"] / exact["abs_contribution"] - 1)
    sampled = fast["n_abs"] < exact["count"]
    assert sampled.sum() >= 4 and (rel[..., ~sampled] < 1e-10).all()
    assert rel[..., sampled].max() < 0.05 and np.median(rel[..., sampled]) < 0.01
    again = scores.decompose(q, k, pos, 0.5, lo, hi, abs_sample={"pairs": 16384}, seed=3)
    other = scores.decompose(q, k, pos, 0.5, lo, hi, abs_sample={"pairs": 16384}, seed=4)
    np.testing.assert_array_equal(again["abs_contribution"], fast["abs_contribution"])
    assert not np.array_equal(other["abs_contribution"][..., sampled], fast["abs_contribution"][..., sampled])


def test_score_decomposition_methods_agree_and_state_the_sample(run_dir):
    fast = measurements.score_decomposition(run_dir[:1], seq_len=96, abs_sample={"pairs": 256}, seed=2)
    exact = measurements.score_decomposition(run_dir[:1], seq_len=96, method="exact", seed=2)
    np.testing.assert_allclose(fast["contribution"].values, exact["contribution"].values, rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(fast["abs_contribution"].values, exact["abs_contribution"].values, rtol=0.25)
    assert fast.attrs["score_method"] == "fast" and exact.attrs["score_method"] == "exact"
    assert fast.attrs["abs_sample_pairs"] == 256 and fast.attrs["abs_sample_seed"] == 2
    assert (fast["n_abs_sampled"] <= fast["n_scored"]).all() and (exact["n_abs_sampled"] == exact["n_scored"]).all()
    assert int(fast["n_abs_sampled"].max()) == 256


def test_score_decomposition_dataset(run_dir):
    ds = measurements.score_decomposition(run_dir[:2], seq_len=64)
    assert ds["contribution"].dims == ("checkpoint", "layer", "head", "pair", "distance")
    assert list(ds["checkpoint"].values) == ["toy/ckpt-000001", "toy/ckpt-000002"]
    xr.testing.assert_allclose(ds["contribution"].sum("pair"), ds["score"])
    assert ds["n_scored"].sum("distance").values.tolist() == [64 * 65 // 2] * 2
    assert (ds["abs_contribution"] >= np.abs(ds["contribution"]) - 1e-12).all()
    assert ds["rope_theta"].values.tolist() == [500.0, 20000.0]


# ---------------------------------------------------------------------------------------------- probes


def test_probes_recover_position_when_it_is_there_and_not_otherwise():
    rng = np.random.default_rng(0)
    n_win, t = 8, 128
    pos = np.tile(np.arange(t), n_win)
    groups = np.repeat(np.arange(n_win), t)
    noise = rng.normal(size=(n_win * t, 16))
    informative = noise.copy()
    informative[:, 0] = np.log1p(pos) + 0.05 * rng.normal(size=len(pos))
    informative[:, 1] = pos / t
    good = measurements.probes.fit_probes(informative, pos, groups, n_buckets=4, seq_len=t)
    bad = measurements.probes.fit_probes(noise, pos, groups, n_buckets=4, seq_len=t)
    assert good["r2"] > 0.95 and good["accuracy"] > 0.8  # chance 0.25
    assert bad["r2"] < 0.05 and bad["accuracy"] < bad["chance"] + 0.1
    assert good["chance"] == pytest.approx(0.25)


def test_position_probes_dataset(run_dir):
    ds = measurements.position_probes(run_dir[:1], seq_len=64, n_windows=4, n_buckets=4)
    assert ds["r2"].dims == ("checkpoint", "layer") and ds.sizes["layer"] == 3
    assert list(ds["site"].values) == ["embed", "block 0", "block 1"]
    assert list(ds["layer"].values) == [-1, 0, 1]  # layer l = block l in every group; -1 = the embeddings
    # token embeddings carry no absolute position (RoPE adds none to the residual stream)
    assert ds["r2"].sel(layer=-1).item() < 0.1
    with pytest.raises(ValueError, match="at least 4 windows"):
        measurements.position_probes(run_dir[:1], n_windows=2)


# ------------------------------------------------------------------------------------ commands and store


def test_updates_and_probe_commands_write_and_append_to_the_store(run_dir, tmp_path, capsys):
    out = tmp_path / "res.zarr"
    a, b, c = map(str, run_dir)
    assert (
        cli.main(["updates", a, b, "--out", str(out), "--phase-lengths", "64,256", "--seq-len", "64", "--windows", "1"])
        == 0
    )
    assert "toy/ckpt-000001 -> toy/ckpt-000002" in capsys.readouterr().out
    assert (
        cli.main(["updates", b, c, "--out", str(out), "--phase-lengths", "64,256", "--seq-len", "64", "--windows", "1"])
        == 0
    )
    w = xr.open_zarr(out, group="updates_weights", consolidated=False)  # plain xarray, no project code
    assert list(w["comparison"].values) == ["toy/ckpt-000001 -> toy/ckpt-000002", "toy/ckpt-000002 -> toy/ckpt-000003"]
    assert list(w["wavelength_after"].sel(comparison="toy/ckpt-000001 -> toy/ckpt-000002").values) == pytest.approx(
        list(rope.wavelengths(20000.0, D))
    )
    assert w.attrs["analysis"] == "weight_updates"
    bands = xr.open_zarr(out, group="bands", consolidated=False)
    assert bands.sizes["comparison"] == 2 and list(bands["band"].values) == [
        "lambda<=64",
        "64<lambda<=256",
        "lambda>256",
    ]
    st = xr.open_zarr(out, group="updates_states", consolidated=False)
    assert st["q_norm"].dims == ("comparison", "end", "layer", "head", "pair")
    before = w["q_rel_update"].values.copy()
    # the same comparison again is refused with one clear message, and nothing changes
    assert cli.main(["updates", a, b, "--out", str(out), "--phase-lengths", "64,256"]) == 2
    assert "already written" in capsys.readouterr().err
    np.testing.assert_array_equal(
        xr.open_zarr(out, group="updates_weights", consolidated=False)["q_rel_update"].values, before
    )
    # a run directory stands for its checkpoints; probes append per checkpoint
    assert (
        cli.main(
            [
                "probe",
                str(run_dir[0].parent),
                "--out",
                str(out),
                "--seq-len",
                "64",
                "--windows",
                "4",
                "--buckets",
                "4",
                "--score-seq-len",
                "32",
            ]
        )
        == 0
    )
    pr = xr.open_zarr(out, group="probes", consolidated=False)
    assert list(pr["checkpoint"].values) == ["toy/ckpt-000001", "toy/ckpt-000002", "toy/ckpt-000003"]
    sd = xr.open_zarr(out, group="score_decomposition", consolidated=False)
    assert sd.sizes["checkpoint"] == 3 and "contribution" in sd


def test_probe_command_scores_a_long_window_with_the_sampled_path(run_dir, tmp_path):
    """At 3k tokens the command's score decomposition samples the long buckets, says so in the store, and
    its mean terms still sum to the mean score."""
    out = tmp_path / "long.zarr"
    assert (
        cli.main(
            [
                "probe",
                str(run_dir[0]),
                "--out",
                str(out),
                "--seq-len",
                "64",
                "--windows",
                "4",
                "--score-seq-len",
                "3072",
                "--abs-sample-pairs",
                "4096",
                "--seed",
                "5",
            ]
        )
        == 0
    )
    sd = xr.open_zarr(out, group="score_decomposition", consolidated=False).load()
    assert sd.attrs["score_method"] == "fast" and sd.attrs["abs_sample_pairs"] == 4096
    assert sd.attrs["abs_sample_seed"] == 5 and sd.attrs["seq_len"] == 3072
    assert int(sd["distance_hi"].max()) == 3071 and int(sd["n_scored"].sum()) == 3072 * 3073 // 2
    sampled = sd["n_abs_sampled"] < sd["n_scored"]
    assert int(sampled.sum()) >= 6 and int(sd["n_abs_sampled"].max()) == 4096
    np.testing.assert_allclose(sd["contribution"].sum("pair").values, sd["score"].values, rtol=1e-6, atol=1e-9)
    assert cli.main(["probe", str(run_dir[1]), "--out", str(tmp_path / "x.zarr"), "--abs-sample-pairs", "0"]) == 2


def test_updates_on_a_run_directory_compares_phase_ends(run_dir, tmp_path):
    out = tmp_path / "pe.zarr"
    assert cli.main(["updates", str(run_dir[0].parent), "--phase-ends", "--no-states", "--out", str(out)]) == 0
    ds = xr.open_zarr(out, group="updates_weights", consolidated=False)
    assert list(ds["comparison"].values) == ["toy/ckpt-000001 -> toy/ckpt-000003"]
    assert list(ds["phase_before"].values) == ["short"] and list(ds["phase_after"].values) == ["long"]


@pytest.mark.parametrize(
    "argv,message",
    [
        (["updates", "{a}", "--out", "{out}"], "at least 2"),
        (["updates", "{a}", "{missing}", "--out", "{out}"], "not found"),
        (["updates", "{a}", "{a}", "--out", "{out}"], "more than once"),
        (["updates", "{a}", "{b}", "--out", "{out}", "--phase-lengths", "64,x"], "not an integer"),
        (["probe", "{a}", "--out", "{out}", "--windows", "2"], "--windows"),
    ],
)
def test_commands_refuse_bad_input_with_one_message(run_dir, tmp_path, capsys, argv, message):
    fill = {
        "a": str(run_dir[0]),
        "b": str(run_dir[1]),
        "missing": str(tmp_path / "nope"),
        "out": str(tmp_path / "s.zarr"),
    }
    assert cli.main([x.format(**fill) for x in argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"workbench {argv[0]}: error:") and message in err[0]
    assert not (tmp_path / "s.zarr").exists()


# ---------------------------------------------------------------------------------------------- figures


def test_figures_show_the_update_where_it_happened(run_dir):
    from workbench.figures import updates as fig

    w = measurements.weight_updates(run_dir)
    comp = str(w["comparison"].values[0])
    heat = fig.layer_pair_heatmap(w, comparison=comp, phase_lengths=[64, 256])
    np.testing.assert_allclose(heat.data[0].z, w["q_rel_update"].sel(comparison=comp).mean("head").values)
    ticks = heat.layout.xaxis.ticktext
    assert len(ticks) == D // 2 and ticks[0].startswith("0<br>6.28")
    crit = [s.x0 + 0.5 for s in heat.layout.shapes]
    assert crit == [rope.critical_pair(20000.0, D, 64), rope.critical_pair(20000.0, D, 256)]
    one = fig.head_pair_heatmap(w, 1, comparison=comp, var="k_rel_update")
    assert np.asarray(one.data[0].z).shape == (2, D // 2)
    bands = measurements.band_summary(w, [64, 256])
    bars = fig.band_bars(bands, comparison=comp)
    assert [t.name.split(" ")[0] for t in bars.data] == list(bands["band"].values)
    with pytest.raises(ValueError, match="no comparison"):
        fig.layer_pair_heatmap(w, comparison="x -> y")
    probes = xr.Dataset(
        {
            "r2": (("checkpoint", "layer"), [[0.0, 0.5]]),
            "accuracy": (("checkpoint", "layer"), [[0.2, 0.6]]),
            "chance": (("checkpoint", "layer"), [[0.25, 0.25]]),
        },
        coords={"checkpoint": ["r/c"], "layer": [-1, 0], "site": ("layer", ["embed", "block 0"])},
    )
    sd = measurements.score_decomposition(run_dir[:1], seq_len=32)
    profile = fig.score_profile(sd, 1)
    np.testing.assert_allclose(
        profile.data[0].z, sd["contribution"].isel(checkpoint=0).sel(layer=1).mean("head").values
    )
    assert list(profile.data[0].x)[:4] == ["0", "1", "2-3", "4-7"] and profile.data[0].y[3].startswith("3 (")
    curves = fig.probe_curves(probes, metric="accuracy")
    assert list(curves.data[0].y) == [0.2, 0.6] and list(curves.data[0].x) == ["embed", "block 0"]


def test_plain_hf_directories_are_analysed_like_checkpoints(tmp_path):
    """A foreign HF Llama directory (no manifest, e.g. a teacher) is analysed as it is (it needed
    ``allow_plain_hf`` before); a workbench save that lost its manifest (``trainer/`` inside) is refused."""
    path = tmp_path / "hf" / "teacher"
    models.build_model(_cfg(num_layers=1), seed=4).save_pretrained(path)
    half = tmp_path / "hf" / "half"
    shutil.copytree(path, half)
    (half / checkpoint_io.STATE_DIR).mkdir()
    with pytest.raises(checkpoint_io.CheckpointError, match="did not finish"):
        measurements.position_probes([half], seq_len=32, n_windows=4, n_buckets=2)
    ds = measurements.position_probes([path], seq_len=32, n_windows=4, n_buckets=2)
    assert list(ds["checkpoint"].values) == ["hf/teacher"] and ds["step"].values.tolist() == [-1]
