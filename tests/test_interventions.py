"""The RoPE interpretability engine against plain transformers, TransformerLens and nnsight.

One random-weight GQA checkpoint (4 query heads, 2 KV heads) is booted once per module in each backend.
RoPE bookkeeping (pair j = dims j and j + d/2, theta, positions) is checked against transformers' own
rotary code and weight edits, not against the workbench's.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
import xarray as xr

from workbench import checkpoint_io, interventions, models
from workbench.config import ConfigError, ModelConfig
from workbench.interventions import specs as S
from workbench.interventions.hooks import KINDS, act_name, parse_act_name
from workbench.interventions.perturb import rotate_pairs

TOL = 1e-4
LONG = 2112  # covers positions >= 2048


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    cfg = ModelConfig(
        vocab_size=128,
        hidden_size=64,
        num_layers=3,
        num_heads=4,
        num_kv_heads=2,
        head_dim=16,
        intermediate_size=128,
        max_position_embeddings=4096,
        rope_theta=500.0,
    )
    model = models.build_model(cfg, seed=3)
    with torch.no_grad():  # larger q/k so RoPE edits visibly move the logits of a random model
        for layer in model.model.layers:
            layer.self_attn.q_proj.weight.mul_(8)
            layer.self_attn.k_proj.weight.mul_(8)
    path = tmp_path_factory.mktemp("interp") / "run" / "ckpt-000001"
    checkpoint_io.save_checkpoint(model, path, {"phase": "test", "step": 1})
    return path


@pytest.fixture(scope="module")
def nn(ckpt):
    return interventions.load_backend(ckpt, "nnsight")


@pytest.fixture(scope="module")
def tl(ckpt):
    return interventions.load_backend(ckpt, "tl")


@pytest.fixture(scope="module")
def ref(ckpt):
    return checkpoint_io.load(ckpt)[0]


def _inputs(length=192, batch=2, start=0, seed=0):
    d = interventions.default_inputs(128, batch=batch, length=length, seed=seed, start=start)
    return d["input_ids"], d["position_ids"]


def _hf(ref, ids, pos):
    with torch.no_grad():
        return ref(input_ids=ids, position_ids=pos).logits


SPECS = [
    S.Spec("q-shift-layer1", [S.shift(23, "q", layers=[1])]),
    S.Spec("theta-per-head", [S.theta_swap(60.0, "q", heads=[1, 3]), S.theta_swap(60.0, "k", kv_heads=[1])]),
    S.Spec("rotate-long-wavelengths", [S.rotate(1.3, "q", pairs=S.PairSet(wavelength=[100, math.inf]))]),
    S.Spec("zero-band", [S.zero(pairs=S.PairSet(band=0, context_lengths=[64]), layers=[0, 2])]),
    S.Spec(
        "scale-then-noise",
        [S.scale(0.3, "k", pairs=S.PairSet(indices=[5, 6])), S.noise(0.5, seed=4, target="q", positions=[64, 10_000])],
    ),
]


# ------------------------------------------------------------------------------------------ backends


def test_identity_and_parity_at_positions_beyond_2048(nn, tl, ref):
    ids, pos = _inputs(LONG, batch=1)
    hf = _hf(ref, ids, pos)
    spec = SPECS[1] + SPECS[4]
    a, b = nn.run(ids, pos, [S.identity(), spec]), tl.run(ids, pos, [S.identity(), spec])
    tail = slice(2048, None)
    assert (a[0]["logits"] - hf)[:, tail].abs().max() <= TOL
    assert (b[0]["logits"] - hf)[:, tail].abs().max() <= TOL
    assert (a[1]["logits"] - b[1]["logits"])[:, tail].abs().max() <= TOL
    assert (a[1]["logits"] - hf)[:, tail].abs().max() > 1e-2  # the spec really perturbs


def test_same_spec_same_numbers_on_both_backends(nn, tl, ref):
    ids, pos = _inputs()
    hf = _hf(ref, ids, pos)
    a, b = nn.run(ids, pos, SPECS, capture="*"), tl.run(ids, pos, SPECS, capture="*")
    for spec, x, y in zip(SPECS, a, b):
        assert (x["logits"] - y["logits"]).abs().max() <= TOL, spec.name
        assert (x["logits"] - hf).abs().max() > 1e-3, f"{spec.name} changed nothing"
        for name in (act_name("rot_q", 1), act_name("rot_k", 1), act_name("resid_post", 2)):
            assert (x[name] - y[name]).abs().max() <= TOL, (spec.name, name)


def test_equal_shift_of_q_and_k_leaves_logits_unchanged(nn, tl, ref):
    ids, pos = _inputs(start=100)
    hf = _hf(ref, ids, pos)
    for be in (nn, tl):
        out = be.run(ids, pos, [S.Spec("both", [S.shift(1500, "both")]), S.Spec("q", [S.shift(1500, "q")])])
        assert (out[0]["logits"] - hf).abs().max() <= TOL
        assert (out[1]["logits"] - hf).abs().max() > 1e-2  # q alone: a relative change


def test_perturbation_confined_to_a_layer_changes_nothing_upstream(nn, tl):
    ids, pos = _inputs()
    spec = S.Spec("layer2", [S.rotate(2.0, layers=[2]), S.noise(1.0, seed=1, layers=[2])])
    for be in (nn, tl):
        clean, pert = be.run(ids, pos, [S.identity(), spec], capture="*")
        for name in clean:
            if parse_act_name(name)[1] in (0, 1):
                assert torch.equal(clean[name], pert[name]), (be.name, name)
        assert (clean[act_name("attn_out", 2)] - pert[act_name("attn_out", 2)]).abs().max() > 1e-3


def test_hook_names_exist_in_transformer_lens(tl):
    """Every name act_name builds is a hook of TransformerLens 4's bridge (its HookedTransformer; the capture
    names are the bridge's TransformerLens aliases), round-trips through parse_act_name, and an unknown kind is
    refused with one clear error."""
    for layer in range(tl.geometry.num_layers):
        for kind in KINDS[1:]:
            assert act_name(kind, layer, bridge=True) in tl.bridge.hook_dict, kind
            assert parse_act_name(act_name(kind, layer)) == (kind, layer)
            if kind != "pattern_js":  # a statistic of hook_pattern, no hook of its own
                assert act_name(kind, layer) in tl.bridge.hook_dict, kind
    assert parse_act_name(act_name("logits")) == ("logits", None)
    with pytest.raises(ValueError, match="unknown activation 'resid_mid'; known: logits, resid_post"):
        act_name("resid_mid", 0)
    with pytest.raises(ValueError, match="needs a layer"):
        act_name("rot_q")
    with pytest.raises(ValueError, match="not a capture name"):
        parse_act_name("blocks.x.hook_resid_post")


def test_q_shift_equals_transformers_rope_at_shifted_positions(nn, tl, ref):
    """Post-RoPE q under a q shift of 37 == transformers' apply_rotary_pos_emb of the pre-RoPE q (TL's
    hook_q) with transformers' own cos/sin at positions + 37."""
    from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

    ids, pos = _inputs(length=64, batch=1)
    got = nn.run(ids, pos, [S.Spec("s", [S.shift(37, "q", layers=[0])])], capture=act_name("rot_q", 0))[0]
    pre = {}
    tl.bridge.run_with_hooks(
        ids,
        position_ids=pos,
        return_type="logits",
        fwd_hooks=[(act_name("q", 0, bridge=True), lambda x, hook: pre.setdefault("q", x))],
    )
    q = pre["q"].transpose(1, 2)  # [B, H, T, d]
    cos, sin = ref.model.rotary_emb(q, pos + 37)
    expected, _ = apply_rotary_pos_emb(q, q, cos, sin)
    assert (got[act_name("rot_q", 0)] - expected).abs().max() <= 1e-4


def test_theta_swap_equals_transformers_model_with_that_theta(nn, ckpt):
    from transformers import AutoConfig, LlamaForCausalLM

    cfg = AutoConfig.from_pretrained(ckpt, local_files_only=True)
    cfg.rope_parameters = {**cfg.rope_parameters, "rope_theta": 2000.0}
    other = LlamaForCausalLM.from_pretrained(ckpt, config=cfg, local_files_only=True).eval()
    ids, pos = _inputs(length=256, batch=1)
    out = nn.run(ids, pos, [S.Spec("t", [S.theta_swap(2000.0)])])[0]["logits"]
    assert (out - _hf(other, ids, pos)).abs().max() <= 1e-3


def test_zeroing_pairs_equals_zeroing_their_weight_rows(nn, ckpt):
    """Pair j is dims (j, j + d/2): zeroing pairs {1, 6} of query head 2 and KV head 0 equals zeroing those
    rows of q_proj / k_proj in a plain transformers model."""
    other, _ = checkpoint_io.load(ckpt)
    d, half = 16, 8
    with torch.no_grad():
        for layer in other.model.layers:
            for j in (1, 6):
                layer.self_attn.q_proj.weight[2 * d + j] = 0
                layer.self_attn.q_proj.weight[2 * d + j + half] = 0
                layer.self_attn.k_proj.weight[0 * d + j] = 0
                layer.self_attn.k_proj.weight[0 * d + j + half] = 0
    ids, pos = _inputs(length=128, batch=1)
    spec = S.Spec(
        "z",
        [
            S.zero("q", pairs=S.PairSet(indices=[1, 6]), heads=[2]),
            S.zero("k", pairs=S.PairSet(indices=[1, 6]), kv_heads=[0]),
        ],
    )
    assert (nn.run(ids, pos, [spec])[0]["logits"] - _hf(other, ids, pos)).abs().max() <= TOL


def test_rotation_matches_transformers_rotate_half():
    from transformers.models.llama.modeling_llama import rotate_half

    x = torch.randn(2, 3, 5, 16, dtype=torch.float64)
    angle = torch.rand(8, dtype=torch.float64)
    cos, sin = torch.cat([angle.cos(), angle.cos()]), torch.cat([angle.sin(), angle.sin()])
    assert torch.allclose(rotate_pairs(x, angle), x * cos + rotate_half(x) * sin)


def test_noise_is_seeded(nn):
    ids, pos = _inputs(length=32, batch=1)
    a = nn.run(ids, pos, [S.Spec("n", [S.noise(0.5, seed=1)]), S.Spec("m", [S.noise(0.5, seed=2)])])
    b = nn.run(ids, pos, [S.Spec("n", [S.noise(0.5, seed=1)])])
    assert torch.equal(a[0]["logits"], b[0]["logits"])
    assert not torch.equal(a[0]["logits"], a[1]["logits"])


# --------------------------------------------------------------------------------------- validation


@pytest.mark.parametrize(
    "spec, key",
    [
        (S.Spec("x", [S.zero(layers=[3])]), "scope.layers: 3 out of range"),
        (S.Spec("x", [S.zero("q", heads=[4])]), "scope.heads: 4 out of range"),
        (S.Spec("x", [S.zero("k", kv_heads=[2])]), "scope.kv_heads: 2 out of range"),
        (S.Spec("x", [S.zero(pairs=S.PairSet(indices=[8]))]), "pairs.indices: pair 8 out of range"),
        (S.Spec("x", [S.zero(pairs=S.PairSet(wavelength=[1e9, 2e9]))]), "selects no pair"),
        (S.Spec("x", [S.zero(pairs=S.PairSet(band=5, context_lengths=[64]))]), "pairs.band: 5 out of range"),
        (S.Spec("x", [S.Op("theta")]), "theta"),
    ],
)
def test_out_of_range_specs_are_refused_before_running(nn, spec, key):
    ids, pos = _inputs(length=8, batch=1)
    with pytest.raises(ValueError, match=key.replace("(", r"\(")):
        nn.run(ids, pos, [spec])


def test_specs_round_trip_yaml_and_example_files_load(tmp_path, nn):
    path = S.dump_specs(SPECS, tmp_path / "s.yaml")
    back = S.load_specs(path)
    assert [s.to_json() for s in back] == [s.to_json() for s in SPECS]
    for name in ("suite.yaml", "q-shift-low-freq.yaml"):
        for spec in S.load_specs(Path(__file__).parents[1] / "data" / "specs" / name):
            S.validate(spec, nn.geometry)
    (tmp_path / "bad.yaml").write_text("name: b\nops:\n  - {kind: shift, ofset: 3}\n")
    with pytest.raises(ConfigError, match=r"bad.yaml.*ops\[0\].*ofset"):
        S.load_specs(tmp_path / "bad.yaml")


# ------------------------------------------------------------------------------------------- traces


def test_trace_records_propagation_layer_by_layer(nn, tl, ckpt):
    spec = S.Spec("rot-layer1", [S.rotate(1.0, "q", layers=[1])])
    ids, pos = _inputs(length=128)
    ds = interventions.run_trace(ckpt, [spec], {"input_ids": ids, "position_ids": pos}, backend=nn, buckets=4)
    assert dict(ds.sizes) == {"checkpoint": 1, "spec": 2, "layer": 3, "position_bucket": 4}
    t = ds.isel(checkpoint=0)
    assert float(abs(t.sel(spec="clean").final_kl).max()) == 0.0
    r = t.sel(spec="rot-layer1")
    assert float(r.resid_rel_l2.sel(layer=0).max()) == 0.0 and float(r.lens_kl.sel(layer=0).max()) == 0.0
    assert float(r.q_rel_l2.sel(layer=1).min()) > 0.1 and float(r.resid_rel_l2.sel(layer=1).min()) > 0
    assert float(r.final_kl.mean()) > 0 and 0 <= float(r.top1_flip.max()) <= 1
    assert bool(np.isnan(r.pattern_js).all())  # nnsight runs sdpa: no pattern
    d2 = interventions.run_trace(ckpt, [spec], {"input_ids": ids, "position_ids": pos}, backend=tl, buckets=4)
    np.testing.assert_allclose(d2.final_kl.values, ds.final_kl.values, atol=1e-6)
    js = d2.pattern_js.isel(checkpoint=0).sel(spec="rot-layer1")
    assert float(js.sel(layer=0).max()) == 0.0 and float(js.sel(layer=1).min()) > 0


def test_streamed_trace_statistics_match_captured_activations(nn, ckpt):
    """The on-the-fly statistics equal float64 metrics recomputed from ``Backend.run``'s captures."""
    specs = [SPECS[0], SPECS[4]]
    ids, pos = _inputs(length=96)
    ds = interventions.run_trace(ckpt, specs, {"input_ids": ids, "position_ids": pos}, backend=nn, buckets=[0, 40, 96])
    got = nn.run(ids, pos, [S.identity("clean"), *specs], capture="*")
    clean = got[0]
    first = pos < 40

    def kl(p_logits, q_logits):
        lp, lq = torch.log_softmax(p_logits.double(), -1), torch.log_softmax(q_logits.double(), -1)
        return (lp.exp() * (lp - lq)).sum(-1)

    for c, spec in enumerate(specs, start=1):
        t = ds.isel(checkpoint=0).sel(spec=spec.name)
        for layer in range(3):
            r, rc = (
                got[c][act_name("resid_post", layer)].double(),
                clean[act_name("resid_post", layer)].double(),
            )
            rel = (r - rc).norm(dim=-1) / rc.norm(dim=-1)
            np.testing.assert_allclose(
                float(t.resid_rel_l2.sel(layer=layer)[0]), float(rel[first].mean()), rtol=1e-5, atol=1e-9
            )
            cos = torch.nn.functional.cosine_similarity(r, rc, dim=-1)
            np.testing.assert_allclose(float(t.resid_cos.sel(layer=layer)[1]), float(cos[~first].mean()), rtol=1e-6)
            q, qc = (
                got[c][act_name("rot_q", layer)].double(),
                clean[act_name("rot_q", layer)].double(),
            )
            qrel = (q - qc).transpose(1, 2).flatten(2).norm(dim=-1) / qc.transpose(1, 2).flatten(2).norm(dim=-1)
            np.testing.assert_allclose(
                float(t.q_rel_l2.sel(layer=layer)[1]), float(qrel[~first].mean()), rtol=1e-5, atol=1e-9
            )
            with torch.no_grad():
                lens = kl(nn.lens(rc.float()), nn.lens(r.float()))
            np.testing.assert_allclose(
                float(t.lens_kl.sel(layer=layer)[0]), float(lens[first].mean()), rtol=2e-3, atol=1e-9
            )
        lk = kl(clean["logits"], got[c]["logits"])
        np.testing.assert_allclose(float(t.final_kl[1]), float(lk[~first].mean()), rtol=1e-6, atol=1e-12)
        from scipy.spatial.distance import jensenshannon  # independent reference: sqrt of JS in nats

        pc, pg = (torch.softmax(z.double(), -1).flatten(0, 1).numpy() for z in (clean["logits"], got[c]["logits"]))
        js = jensenshannon(pc, pg, axis=-1) ** 2
        np.testing.assert_allclose(
            float(t.final_js[1]), float(js[(~first).flatten().numpy()].mean()), rtol=1e-6, atol=1e-12
        )
        flips = (clean["logits"].argmax(-1) != got[c]["logits"].argmax(-1)).double()
        assert float(t.top1_flip[0]) == pytest.approx(float(flips[first].mean()))
    assert float(ds.sel(spec="scale-then-noise").final_kl.max()) > 0


def test_lens_kl_is_exact_where_logits_agree_and_close_to_float64():
    from workbench.divergence import lens_kl

    g = torch.Generator().manual_seed(0)
    z0 = 3 * torch.randn(5, 64, generator=g)
    z = torch.stack(
        [
            z0,
            z0,
            z0 + 1e-3 * torch.randn(5, 64, generator=g),
            z0 + torch.randn(5, 64, generator=g),
            z0 + 200 * torch.randn(5, 64, generator=g),
        ]
    )
    got = lens_kl(z)
    lp, lq = torch.log_softmax(z0.double(), -1), torch.log_softmax(z[1:].double(), -1)
    want = (lp.exp() * (lp - lq)).sum(-1)
    assert float(got[0].abs().max()) == 0.0
    # float32 with no cancellation: relative error ~ 1e-7 / |logit change|, 0.2 % at a 1e-3 change (KL ~ 1e-7)
    np.testing.assert_allclose(got[1].numpy(), want[1].numpy(), rtol=5e-3)
    np.testing.assert_allclose(got[2:].numpy(), want[2:].numpy(), rtol=1e-4)


def test_tl_backend_refuses_lengths_over_its_memory_estimate(tl, ckpt, tmp_path, monkeypatch, capsys):
    from workbench import cli
    from workbench.interventions.backends import eager_attention_bytes

    need = eager_attention_bytes(4, 2 * 2, 192)
    monkeypatch.setenv("WORKBENCH_MEMORY_BUDGET_GB", str(0.6 * need / 2**30))
    ids, pos = _inputs(length=192)
    with pytest.raises(interventions.LengthLimitError, match=r"GiB.*--backend nnsight"):
        interventions.run_trace(ckpt, [SPECS[0]], {"input_ids": ids, "position_ids": pos}, backend=tl)
    interventions.run_trace(ckpt, [SPECS[0]], {"input_ids": ids[:1], "position_ids": pos[:1]}, backend=tl)  # 2 rows fit
    spec = tmp_path / "s.yaml"
    S.dump_specs([SPECS[0]], spec)
    argv = ["trace", str(ckpt), "--spec", str(spec), "--out", str(tmp_path / "t.zarr"), "--length", "192"]
    assert cli.main([*argv, "--backend", "tl"]) == 2
    err = capsys.readouterr().err
    assert "needs about" in err and "--backend nnsight" in err and err.count("\n") == 1
    assert not (tmp_path / "t.zarr").exists()
    assert cli.main(argv) == 0  # nnsight has no such limit


def test_repeated_tokens_store_and_result(nn, ckpt, tmp_path):
    late = S.Spec("noise-after-1024", [S.noise(1.0, seed=0, positions=[1024, 100_000])])
    iso = interventions.repeated_tokens(
        ckpt, [late], backend=nn, window=2048, period=16, copies=6, attention="isolated"
    )
    clean = iso.isel(checkpoint=0).sel(spec="clean")
    assert float(clean.kl_to_first.max()) < 1e-9  # RoPE is relative: isolated copies are identical
    pert = iso.isel(checkpoint=0).sel(spec="noise-after-1024")
    before = pert.offset.values + 16 <= 1024
    assert float(pert.kl_vs_clean[before].max()) < 1e-9 and float(pert.kl_vs_clean[~before].min()) > 1e-4
    packed = interventions.repeated_tokens(ckpt, [late], backend=nn, window=2048, period=16, copies=6)
    store = tmp_path / "r.zarr"
    interventions.write_repeated(store, packed)
    ds = xr.open_zarr(store, group="repeated_tokens", consolidated=False)
    assert set(ds.dims) == {"checkpoint", "spec", "copy"} and list(ds.offset.values)[0] == 0
    assert float(ds.kl_to_first.sel(spec="clean").isel(checkpoint=0, copy=-1)) > 0  # copies see earlier copies
    assert float(ds.kl_to_mean.min()) >= 0


def test_cli_trace_writes_a_store_and_refuses_twice(ckpt, tmp_path, capsys):
    from workbench import cli

    spec = tmp_path / "s.yaml"
    S.dump_specs([SPECS[0]], spec)
    out = tmp_path / "t.zarr"
    assert (
        cli.main(
            [
                "trace",
                str(ckpt),
                "--spec",
                str(spec),
                "--out",
                str(out),
                "--length",
                "64",
                "--capture",
                "blocks.1.attn.hook_rot_q",
            ]
        )
        == 0
    )
    ds = xr.open_zarr(out, group="traces", consolidated=False)
    assert list(ds.spec.values) == ["clean", "q-shift-layer1"]
    acts = xr.open_zarr(out, group="activations", consolidated=False)
    assert bool(np.isnan(acts.rot_q.sel(layer=0)).all()) and not bool(np.isnan(acts.rot_q.sel(layer=1)).any())
    assert cli.main(["trace", str(ckpt), "--spec", str(spec), "--out", str(out), "--length", "64"]) == 2
    assert "already written" in capsys.readouterr().err
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: b\nops:\n  - {kind: zero, scope: {layers: [7]}}\n")
    assert cli.main(["trace", str(ckpt), "--spec", str(bad), "--out", str(tmp_path / "u.zarr")]) == 2
    assert "layers: 7 out of range" in capsys.readouterr().err
    assert not (tmp_path / "u.zarr").exists()
    none = ["--capture", "blocks.0.attn.hook_bogus"]  # a capture filter matching nothing: refused before the trace
    assert cli.main(["trace", str(ckpt), "--spec", str(spec), "--out", str(tmp_path / "v.zarr"), *none]) == 2
    assert "matches no capture name" in capsys.readouterr().err
    assert not (tmp_path / "v.zarr").exists()


@pytest.mark.slow
def test_cli_check_passes(ckpt, capsys):
    from workbench import cli

    assert cli.main(["trace", str(ckpt), "--check", "--device", "cpu"]) == 0
    assert capsys.readouterr().out.count("ok ") == 7
    assert cli.main(["trace", str(ckpt), "--check", "--device", "nonsense"]) == 2  # one line, no traceback
    assert "nonsense" in capsys.readouterr().err


def test_trace_figures_from_the_store(nn, ckpt, tmp_path):
    from workbench.figures import traces as F

    spec = S.Spec("rot-layer1", [S.rotate(1.0, "q", layers=[1])])
    ds = interventions.run_trace(
        ckpt, [spec], interventions.default_inputs(128, batch=1, length=64), backend=nn, buckets=2
    )
    interventions.write_traces(tmp_path / "f.zarr", ds)
    stored = xr.open_zarr(tmp_path / "f.zarr", group="traces", consolidated=False)
    fig = F.divergence_by_layer(stored, "lens_kl")
    assert [t.name for t in fig.data] == ["rot-layer1"] and len(fig.data[0].y) == 3
    assert len(F.final_kl_bars(stored).data) == 1
    assert F.divergence_heatmap(stored, "rot-layer1").data[0].z.shape == (3, 2)
    with pytest.raises(ValueError, match="no spec 'nope'"):
        F.divergence_heatmap(stored, "nope")
    rep = interventions.repeated_tokens(ckpt, backend=nn, window=256, period=8, copies=4, samples=1)
    fig = F.repeated_kl_vs_offset(rep, "kl_to_first")
    assert list(fig.data[0].x) == list(rep.offset.values)


# ------------------------------------------------------------------ the shipped tiny trained teacher

TEACHER = Path(__file__).parents[1] / "data" / "teacher" / "tiny-teacher"


@pytest.mark.skipif(not (TEACHER / "config.json").is_file(), reason="tiny teacher not shipped in data/teacher/")
def test_trained_teacher_identity_parity_shift_and_repeated_tokens(tmp_path):
    nn_t, tl_t = interventions.load_backend(TEACHER, "nnsight"), interventions.load_backend(TEACHER, "tl")
    ref_t = checkpoint_io.load(TEACHER)[0]
    ids, pos = _inputs(LONG, batch=1)
    hf = _hf(ref_t, ids, pos)
    last = nn_t.geometry.num_layers - 1
    runs = [
        S.identity(),
        S.Spec("equal", [S.shift(700, "both")]),
        S.Spec("q-shift-last", [S.shift(48, "q", layers=[last])]),
    ]
    a, b = nn_t.run(ids, pos, runs, capture="blocks.0.*"), tl_t.run(ids, pos, runs, capture="blocks.0.*")
    tail = slice(2048, None)
    for out in (a, b):
        assert (out[0]["logits"] - hf)[:, tail].abs().max() <= TOL
        assert (out[1]["logits"] - hf).abs().max() <= TOL
        assert torch.equal(out[2][act_name("resid_post", 0)], out[0][act_name("resid_post", 0)]) or last == 0
    assert (a[2]["logits"] - b[2]["logits"])[:, tail].abs().max() <= TOL
    rep = interventions.repeated_tokens(TEACHER, [runs[2]], backend=nn_t, window=2048, period=32, copies=4, samples=1)
    interventions.write_repeated(tmp_path / "t.zarr", rep)
    ds = xr.open_zarr(tmp_path / "t.zarr", group="repeated_tokens", consolidated=False)
    assert set(ds.spec.values) == {"clean", "q-shift-last"} and np.isfinite(ds.kl_to_mean.values).all()


@pytest.mark.parametrize(
    "scaling",
    [
        {"rope_type": "dynamic", "factor": 4.0},
        {
            "rope_type": "longrope",
            "short_factor": [1.0] * 8,
            "long_factor": [4.0] * 8,
            "original_max_position_embeddings": 64,
            "factor": 1.0,
        },
    ],
    ids=["dynamic", "longrope"],
)
def test_length_dependent_scaling_is_refused_past_the_frequencies_read_at_load(scaling, tmp_path):
    """dynamic-NTK and LongRoPE change their frequencies in transformers' forward past a length; below it the
    Geometry's frequencies are the ones transformers' rotary module runs with, past it a run is refused."""
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(
        vocab_size=64,
        hidden_size=64,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=64,
        rope_parameters={**scaling, "rope_theta": 1e4},
    )
    torch.manual_seed(0)
    LlamaForCausalLM(cfg).save_pretrained(tmp_path / "m")
    be = interventions.load_backend(tmp_path / "m", "nnsight")
    used: list[torch.Tensor] = []
    be.hf.model.rotary_emb.register_forward_hook(lambda mod, _i, _o: used.append(mod.inv_freq.double().clone()))
    ids = torch.zeros(1, 64, dtype=torch.long)
    be.run(ids, torch.arange(64)[None], [S.identity("clean")])
    np.testing.assert_allclose(be.geometry.inv_freq, used[-1].numpy(), rtol=1e-6)
    with pytest.raises(ValueError, match="beyond 64 positions"):
        be.run(torch.zeros(1, 65, dtype=torch.long), torch.arange(65)[None], [S.identity("clean")])
