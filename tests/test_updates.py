"""Per-RoPE-pair weight/state updates and bands (issue 6): planted changes are found exactly where they
were planted, identical checkpoints give zero, and the pair/row mapping agrees with transformers."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import xarray as xr

from workbench import checkpoint_io, measurements, models, rope, store
from workbench.checkpoint_io import CheckpointError
from workbench.config import ModelConfig

D = 16  # head dim: 8 pairs


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
    """A GQA 'run': ckpt-000001 (phase 1), ckpt-000002 = a copy of it, ckpt-000003 with planted changes
    in q (layer 1, head 2, pair 3) and k (layer 0, kv_head 1, pair 5), trained at a larger theta."""
    root = tmp_path_factory.mktemp("runs") / "toy"
    model = models.build_model(_cfg(), seed=0)
    a = checkpoint_io.save_checkpoint(model, root / "ckpt-000001", {"phase": "short", "step": 1})
    b = checkpoint_io.save_checkpoint(model, root / "ckpt-000002", {"phase": "short", "step": 2})
    g = torch.Generator().manual_seed(1)
    dq = torch.randn(2, 64, generator=g, dtype=torch.float64) * 0.1
    dk = torch.randn(2, 64, generator=g, dtype=torch.float64) * 0.1
    rq, rk = measurements.pair_rows(2, 3, D), measurements.pair_rows(1, 5, D)
    with torch.no_grad():
        wq = model.model.layers[1].self_attn.q_proj.weight
        wk = model.model.layers[0].self_attn.k_proj.weight
        before_q = wq[list(rq)].double().clone()
        before_k = wk[list(rk)].double().clone()
        wq[list(rq)] += dq.float()
        wk[list(rk)] += dk.float()
        delta_q = wq[list(rq)].double() - before_q  # what float32 storage really holds
        delta_k = wk[list(rk)].double() - before_k
    models.set_rope_theta(model, 20000.0)
    c = checkpoint_io.save_checkpoint(model, root / "ckpt-000003", {"phase": "long", "step": 3})
    expect = {"q": (delta_q.norm() / before_q.norm()).item(), "k": (delta_k.norm() / before_k.norm()).item()}
    return {"a": a, "b": b, "c": c, "expect": expect}


# ----------------------------------------------------------------- the pair/row mapping, against transformers


def _capture_attention_inputs(monkeypatch):
    """Record the post-RoPE query/key that transformers' Llama hands its eager attention function."""
    from transformers.models.llama import modeling_llama

    seen = []
    original = modeling_llama.eager_attention_forward

    def spy(module, query, key, value, attention_mask, scaling, **kw):
        seen.append((query.detach().clone(), key.detach().clone()))
        return original(module, query, key, value, attention_mask, scaling, **kw)

    monkeypatch.setattr(modeling_llama, "eager_attention_forward", spy)
    return seen


@pytest.mark.parametrize("proj,head,pair", [("q_proj", 2, 3), ("k_proj", 1, 6), ("q_proj", 0, 0)])
def test_pair_rows_are_the_dims_transformers_rotates_together(monkeypatch, proj, head, pair):
    """Keep only the two rows pair_rows() names: transformers' own RoPE then produces a nonzero vector in
    exactly that head and dims (j, j + d/2), rotated by position * 2*pi / wavelength (the store coordinate)."""
    seen = _capture_attention_inputs(monkeypatch)
    model = models.build_model(_cfg(num_layers=1), seed=3, attn_implementation="eager")
    rows = list(measurements.pair_rows(head, pair, D))
    with torch.no_grad():
        w = getattr(model.model.layers[0].self_attn, proj).weight
        keep = w[rows].clone()
        w.zero_()
        w[rows] = keep
    p = 37
    ids = torch.tensor([[5, 5]])
    with torch.no_grad():
        model(input_ids=ids, position_ids=torch.tensor([[0, p]]))
    query, key = seen[0]
    x = (query if proj == "q_proj" else key)[0]  # [heads, T, d]
    nz = torch.nonzero(x.abs() > 1e-12)
    assert set(nz[:, 0].tolist()) == {head}
    assert set(nz[:, 2].tolist()) == {pair, pair + D // 2}
    v0, vp = x[head, 0, [pair, pair + D // 2]], x[head, 1, [pair, pair + D // 2]]
    angle = math.atan2(vp[1], vp[0]) - math.atan2(v0[1], v0[0])
    wavelength = rope.wavelengths(500.0, D)[pair]
    expected = 2 * math.pi * p / wavelength
    assert math.isclose(math.remainder(angle - expected, 2 * math.pi), 0.0, abs_tol=1e-4)
    assert torch.allclose(v0.norm(), vp.norm(), rtol=1e-5)


def test_split_pairs_matches_pair_rows():
    w = torch.arange(4 * D * 3, dtype=torch.float64).reshape(4 * D, 3)
    blocks = measurements.split_pairs(w, 4, D)
    for h in range(4):
        for j in range(D // 2):
            r0, r1 = measurements.pair_rows(h, j, D)
            assert torch.equal(blocks[h, j], torch.stack([w[r0], w[r1]]))


# ---------------------------------------------------------------------------------------- weight view


def test_planted_change_is_found_exactly_there_and_nowhere_else(run_dir):
    ds = measurements.weight_updates([run_dir["b"], run_dir["c"]])
    q, k = ds["q_rel_update"].isel(comparison=0), ds["k_rel_update"].isel(comparison=0)
    assert q.dims == ("layer", "head", "pair") and k.dims == ("layer", "kv_head", "pair")
    assert k.sizes["kv_head"] == 2 and q.sizes["head"] == 4
    hot_q = np.argwhere(q.values != 0)
    hot_k = np.argwhere(k.values != 0)
    assert hot_q.tolist() == [[1, 2, 3]]
    assert hot_k.tolist() == [[0, 1, 5]]
    assert q.values[1, 2, 3] == pytest.approx(run_dir["expect"]["q"], rel=1e-9)
    assert k.values[0, 1, 5] == pytest.approx(run_dir["expect"]["k"], rel=1e-9)
    cos = ds["q_cosine"].isel(comparison=0).values
    assert cos[1, 2, 3] < 1 and np.count_nonzero(cos != 1.0) == 1
    assert ds["comparison"].item() == "toy/ckpt-000002 -> toy/ckpt-000003"
    assert ds["rope_theta_before"].item() == 500.0 and ds["rope_theta_after"].item() == 20000.0
    # the pair axis is labelled by wavelength (at the theta of record) and dims
    assert ds["dims"].values[3] == "3,11"
    assert ds["wavelength"].values == pytest.approx(2 * math.pi * 20000.0 ** (2 * np.arange(8) / D))


def test_identical_checkpoints_give_exactly_zero(run_dir):
    ds = measurements.weight_updates([run_dir["a"], run_dir["b"]])
    for p in ("q", "k"):
        assert (ds[f"{p}_rel_update"].values == 0).all()
        assert (ds[f"{p}_cosine"].values == 1).all()
        assert (ds[f"{p}_norm_before"].values == ds[f"{p}_norm_after"].values).all()
    st = measurements.state_updates([run_dir["a"], run_dir["b"]], seq_len=64, n_windows=1)
    assert (st["q_norm_change"].values == 0).all() and (st["k_norm_change"].values == 0).all()
    assert st.attrs["n_windows"] == 1 and "batch_size" not in st.attrs


def test_consecutive_and_reference_comparisons(run_dir):
    a, b, c = run_dir["a"], run_dir["b"], run_dir["c"]
    cons = measurements.weight_updates([a, b, c])
    assert list(cons["comparison"].values) == [
        "toy/ckpt-000001 -> toy/ckpt-000002",
        "toy/ckpt-000002 -> toy/ckpt-000003",
    ]
    ref = measurements.weight_updates([b, c], reference=a)
    assert list(ref["comparison"].values) == [
        "toy/ckpt-000001 -> toy/ckpt-000002",
        "toy/ckpt-000001 -> toy/ckpt-000003",
    ]
    assert list(ref["step_after"].values) == [2, 3]
    xr.testing.assert_equal(
        ref["q_rel_update"].isel(comparison=1, drop=True), cons["q_rel_update"].isel(comparison=1, drop=True)
    )


def test_state_view_sees_the_planted_query_change_only_in_its_pair(run_dir, tmp_path):
    """Only W_q of layer 1 changed (theta kept): pre-RoPE query norms move in that one pair only."""
    model, _ = checkpoint_io.load(run_dir["a"])
    rows = list(measurements.pair_rows(2, 3, D))
    with torch.no_grad():
        model.model.layers[1].self_attn.q_proj.weight[rows] *= 2.0
    other = checkpoint_io.save_checkpoint(model, tmp_path / "toy" / "ckpt-000009", {"phase": "short", "step": 9})
    st = measurements.state_updates([run_dir["a"], other], seq_len=128, n_windows=1)
    change = st["q_norm_change"].isel(comparison=0).values
    assert np.argwhere(change != 0).tolist() == [[1, 2, 3]]
    assert change[1, 2, 3] == pytest.approx(1.0, rel=1e-5)  # rows doubled -> pair norm doubled
    assert (st["k_norm_change"].values == 0).all()
    coh = st["q_phase_coherence"].sel(end="before").isel(comparison=0).values
    assert ((coh >= 0) & (coh <= 1 + 1e-9)).all()
    # fast pairs sweep the circle over 128 positions (low coherence); the slowest barely turns
    assert coh[..., 0].mean() < coh[..., -1].mean()


def test_bad_inputs_fail_before_any_work(run_dir, tmp_path):
    with pytest.raises(ValueError, match="at least 2"):
        measurements.weight_updates([run_dir["a"]])
    with pytest.raises(CheckpointError, match="not found"):
        measurements.weight_updates([run_dir["a"], tmp_path / "nope"])
    other = checkpoint_io.save_checkpoint(
        models.build_model(_cfg(num_layers=3), seed=0), tmp_path / "x" / "ckpt-1", {"step": 1}
    )
    with pytest.raises(ValueError, match="attention shape"):
        measurements.weight_updates([run_dir["a"], other])
    with pytest.raises(ValueError, match="not an integer"):
        measurements.parse_lengths("256,abc")


# ---------------------------------------------------------------------------------------------- bands


def test_bands_follow_transformers_wavelengths_and_rope_theory(run_dir):
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

    from workbench import rope

    ds = measurements.weight_updates([run_dir["b"], run_dir["c"]])
    bands = measurements.band_summary(ds, [64, 1024])
    assert list(bands["band"].values) == ["lambda<=64", "64<lambda<=1024", "lambda>1024"]
    model, _ = checkpoint_io.load(run_dir["c"])
    hf_wavelength = (2 * math.pi / LlamaRotaryEmbedding(config=model.config).inv_freq.double()).numpy()
    expected_band = np.searchsorted([64, 1024], hf_wavelength, side="left")
    assert bands["pair_band"].isel(comparison=0).values.tolist() == expected_band.tolist()
    assert bands["n_pairs"].isel(comparison=0).values.tolist() == np.bincount(expected_band, minlength=3).tolist()
    # the planted q change (layer 1, pair 3) lands in pair 3's band, averaged over heads and the band's pairs
    b3 = int(expected_band[3])
    n = int((expected_band == b3).sum())
    assert bands["q_rel_update"].isel(comparison=0).sel(layer=1).values[b3] == pytest.approx(
        run_dir["expect"]["q"] / (4 * n), rel=1e-9
    )
    others = np.delete(bands["q_rel_update"].isel(comparison=0).sel(layer=1).values, b3)
    assert np.nan_to_num(others).tolist() == [0.0] * len(others)
    crit = bands["critical_pair"].isel(comparison=0)
    assert crit.sel(end="after", phase_length=1024).item() == rope.critical_pair(20000.0, D, 1024)
    assert crit.sel(end="before", phase_length=64).item() == rope.critical_pair(500.0, D, 64)


def test_bands_of_a_scaled_model_follow_the_frequencies_transformers_runs_with(tmp_path):
    """Linear RoPE scaling stretches every wavelength: the bands are those of transformers' own (scaled)
    inv_freq, not of the bare theta."""
    from transformers import LlamaConfig, LlamaForCausalLM
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

    cfg = LlamaConfig(
        vocab_size=64,
        hidden_size=64,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=256,
        rope_parameters={"rope_type": "linear", "factor": 8.0, "rope_theta": 500.0},
    )
    for name in ("a", "b"):
        LlamaForCausalLM(cfg).save_pretrained(tmp_path / name)
    ds = measurements.weight_updates([tmp_path / "a", tmp_path / "b"])
    bands = measurements.band_summary(ds, [64, 1024])
    hf_wavelength = (2 * math.pi / LlamaRotaryEmbedding(config=cfg).inv_freq.double()).numpy()
    expected_band = np.searchsorted([64, 1024], hf_wavelength, side="left")
    assert bands["pair_band"].isel(comparison=0).values.tolist() == expected_band.tolist()
    np.testing.assert_allclose(bands["wavelength"].values, hf_wavelength, rtol=1e-6)  # the displayed coordinate too


def test_dynamic_ntk_model_runs_through_updates_and_probe_at_transformers_wavelengths(tmp_path):
    """Dynamic NTK needs max_position_embeddings to give its frequencies: `updates` and `probe` used to fail
    with "dynamic NTK scaling needs max_position_embeddings" after all their work. Up to that length the
    model runs its base frequencies, which the stores record (checked against transformers)."""
    from transformers import LlamaConfig, LlamaForCausalLM
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

    from workbench import cli

    cfg = LlamaConfig(
        vocab_size=128,
        hidden_size=64,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,  # the synthetic vocabulary: no tokenizer
        rope_parameters={"rope_type": "dynamic", "factor": 2.0, "rope_theta": 1000.0},
    )
    for seed, name in enumerate(("a", "b")):
        torch.manual_seed(seed)
        LlamaForCausalLM(cfg).save_pretrained(tmp_path / name)
    hf_wavelength = (2 * math.pi / LlamaRotaryEmbedding(config=cfg).inv_freq.double()).numpy()
    a, b = str(tmp_path / "a"), str(tmp_path / "b")
    assert (
        cli.main(
            [
                "updates",
                a,
                b,
                "--out",
                str(tmp_path / "u.zarr"),
                "--seq-len",
                "32",
                "--windows",
                "1",
                "--phase-lengths",
                "32,128",
                "--device",
                "cpu",
            ]
        )
        == 0
    )
    assert (
        cli.main(
            [
                "probe",
                a,
                "--out",
                str(tmp_path / "p.zarr"),
                "--seq-len",
                "32",
                "--windows",
                "4",
                "--buckets",
                "2",
                "--score-seq-len",
                "32",
                "--device",
                "cpu",
            ]
        )
        == 0
    )
    for path, group in (
        (tmp_path / "u.zarr", store.UPDATES_WEIGHTS),
        (tmp_path / "u.zarr", store.UPDATES_STATES),
        (tmp_path / "u.zarr", store.BANDS),
        (tmp_path / "p.zarr", store.SCORE_DECOMPOSITION),
    ):
        np.testing.assert_allclose(store.open_group(path, group)["wavelength"].values, hf_wavelength, rtol=1e-6)


def test_store_appends_comparisons_at_other_thetas_and_refuses_repeats(run_dir, tmp_path):
    out = tmp_path / "s.zarr"
    first = measurements.weight_updates([run_dir["a"], run_dir["b"]])  # theta 500 -> 500
    second = measurements.weight_updates([run_dir["b"], run_dir["c"]])  # theta 500 -> 20000
    store.save(out, "updates_weights", first)
    store.save(out, "updates_weights", second)
    ds = xr.open_zarr(out, group="updates_weights", consolidated=False)
    assert ds.sizes["comparison"] == 2
    assert ds["wavelength_after"].values[0] == pytest.approx(rope.wavelengths(500.0, D))
    assert ds["wavelength_after"].values[1] == pytest.approx(rope.wavelengths(20000.0, D))
    assert ds["wavelength"].values == pytest.approx(first["wavelength"].values)  # first write kept
    assert ds.attrs["written"] == first.attrs["written"]
    assert np.argwhere(ds["q_rel_update"].values != 0).tolist() == [[1, 1, 2, 3]]
    with pytest.raises(store.StoreError, match="already written"):
        store.save(out, "updates_weights", second)


def test_index_trend_says_whether_slower_pairs_moved_more():
    pairs = np.arange(8)
    rising = xr.DataArray(
        np.broadcast_to(pairs * 0.1 + 0.01, (1, 2, 4, 8)).copy(), dims=("comparison", "layer", "head", "pair")
    )
    rising[0, 1] = rising[0, 1, :, ::-1].values  # layer 1: faster pairs moved more
    trend = measurements.bands.index_trend(rising)
    assert trend[0].tolist() == [1.0, -1.0]
    flat = xr.zeros_like(rising)
    assert np.isnan(measurements.bands.index_trend(flat)).all()


def test_one_spearman_for_bands_and_the_demo_with_ties_as_scipy():
    """stats.index_spearman is Spearman's rho with average ranks (a frozen band's exact-zero updates tie), and
    both the bands' index trend and the demo's pair trend are it."""
    from scipy.stats import spearmanr

    from workbench import stats
    from workbench.demo import findings

    rng = np.random.default_rng(0)
    x = rng.integers(0, 3, size=(3, 2, 4, 8)).astype(float)
    x[..., 5:] = 0.0  # a frozen band: ties
    upd = xr.DataArray(x, dims=("comparison", "layer", "head", "pair"))
    per_layer = x.mean(2)
    want = np.array([[spearmanr(np.arange(8), r).statistic for r in c] for c in per_layer])
    np.testing.assert_allclose(stats.index_spearman(per_layer), want, rtol=0, atol=1e-12)
    np.testing.assert_allclose(measurements.bands.index_trend(upd), want, rtol=0, atol=1e-12)
    trend = findings.pair_trend(xr.Dataset({"q_rel_update": upd}, coords={"comparison": ["a", "b", "c"]}))
    np.testing.assert_allclose(
        trend.values, [spearmanr(np.arange(8), r).statistic for r in x.mean((1, 2))], rtol=0, atol=1e-12
    )
