"""Every supported architecture x every feature, on tiny random models built from transformers' own config
classes (offline, seconds each). References are transformers' own computations (the attention module's
pre-RoPE q/k, the model's output logits), never the workbench's code.

The README's architecture table is backed cell by cell by the tests here (see ``FEATURES``).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml
from tiny import tiny_student

from workbench import architectures as A
from workbench import checkpoint_io, config, models
from workbench.interventions.hooks import act_name
from workbench.runs import RunDir

torch.set_num_threads(1)

ARCHS = list(A.NAMES)
VOCAB = 128  # the synthetic tokenizer's, saved into every tiny model directory
SHAPE = dict(
    vocab_size=VOCAB,
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=16,
    max_position_embeddings=256,
)
# per architecture, what makes its layout differ (Gemma 2: a head dim apart from hidden/heads, small caps so
# the soft-capping matters at these logit scales; Qwen3 with q/k biases off as released)
EXTRA = {
    "gemma2": dict(head_dim=12, query_pre_attn_scalar=20, final_logit_softcapping=2.0, attn_logit_softcapping=3.0),
    "mistral": dict(sliding_window=None),
}


def hf_tiny(arch: str, seed: int = 0):
    """A tiny random model from transformers' own config class (no workbench code)."""
    a = A.get(arch)
    kw = dict(
        SHAPE,
        bos_token_id=None,
        eos_token_id=None,
        pad_token_id=None,
        rope_parameters={"rope_type": "default", "rope_theta": 500.0},
        **EXTRA.get(arch, {}),
    )
    cfg = a.config_class()(**kw)
    torch.manual_seed(seed)
    model = a.model_class()(cfg).eval()
    with torch.no_grad():  # HF inits biases/norms at 0/1: make every parameter matter
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model


def save_plain(model, path: Path) -> Path:
    from workbench.data.tokenizer import synthetic_tokenizer

    model.save_pretrained(path)
    synthetic_tokenizer().save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def plain_dirs(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("archs")
    return {arch: save_plain(hf_tiny(arch), root / arch) for arch in ARCHS}


def ids_pos(batch: int = 2, length: int = 24, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(4, VOCAB, (batch, length), generator=g)
    return ids, torch.arange(length).expand(batch, -1).contiguous()


class HFPreRope:
    """transformers' own pre-RoPE q/k: the arguments its attention passes to ``apply_rotary_pos_emb``
    ([B, H, T, d], after Qwen3's q_norm/k_norm, split out of Phi-3's qkv_proj by Phi-3's code)."""

    def __init__(self, model, monkeypatch):
        module = sys.modules[type(model).__module__]
        original = module.apply_rotary_pos_emb
        self.calls: list[tuple[torch.Tensor, torch.Tensor]] = []

        def spy(q, k, *a, **kw):
            self.calls.append((q, k))
            return original(q, k, *a, **kw)

        monkeypatch.setattr(module, "apply_rotary_pos_emb", spy)


# ------------------------------------------------------------------------------- build (student)


@pytest.mark.parametrize("arch", ARCHS)
def test_student_built_from_model_architecture(arch, tmp_path):
    m = config.ModelConfig(
        vocab_size=VOCAB,
        hidden_size=32,
        num_layers=2,
        num_heads=4,
        num_kv_heads=2,
        intermediate_size=64,
        max_position_embeddings=256,
        rope_theta=300.0,
        head_dim=12,
        architecture=arch,
    )
    config.validate_model(m)
    model = models.build_model(m, seed=1)
    assert type(model) is A.get(arch).model_class() and type(model.config) is A.get(arch).config_class()
    assert model.config.model_type == arch and model.config.head_dim == 12
    assert models.model_config_of(model) == m
    ids, pos = ids_pos()
    path = checkpoint_io.save_checkpoint(model, tmp_path / "ckpt", {"phase": "p", "step": 0})
    loaded, manifest = checkpoint_io.load(path)
    assert type(loaded) is type(model) and manifest["rope_theta"] == 300.0
    with torch.no_grad():
        before = loaded(input_ids=ids, position_ids=pos).logits
        assert torch.allclose(before, model(input_ids=ids, position_ids=pos).logits, atol=1e-5)
        models.set_rope_theta(loaded, 5000.0)  # the architecture's own rotary class, rebuilt for real
        after = loaded(input_ids=ids, position_ids=pos).logits
    assert (after - before).abs().max() > 1e-5  # (fresh init: tiny logits; numerics are ~1e-7)
    fresh = A.get(arch).model_class()(loaded.config)
    assert torch.allclose(models.model_inv_freq(loaded), models.model_inv_freq(fresh))
    if arch == "gemma2":
        assert model.config.query_pre_attn_scalar == 12 and A.final_softcap(model.config) == 30.0


def test_architecture_key_keeps_existing_run_hashes(tmp_path):
    base = {
        "name": "t",
        "model": {
            "vocab_size": 128,
            "hidden_size": 32,
            "num_layers": 1,
            "num_heads": 2,
            "num_kv_heads": 1,
            "intermediate_size": 64,
            "max_position_embeddings": 128,
        },
        "phases": [{"name": "a", "steps": 1, "seq_len": 32, "rope_theta": 100, "lr": 1e-3, "objective": "ce"}],
    }
    plain = config.from_dict(config.RunConfig, base)
    explicit = config.from_dict(config.RunConfig, dict(base, model=dict(base["model"], architecture="llama")))
    qwen = config.from_dict(config.RunConfig, dict(base, model=dict(base["model"], architecture="qwen2")))
    assert config.config_hash(plain) == config.config_hash(explicit)
    assert config.config_hash(plain) != config.config_hash(qwen)
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(dict(base, model=dict(base["model"], architecture="gpt2"))))
    with pytest.raises(config.ConfigError, match=r"model\.architecture: 'gpt2' is not one of llama, mistral"):
        config.load_run_config(bad)


def test_unsupported_models_get_one_clear_error(tmp_path, plain_dirs):
    import shutil

    other = tmp_path / "gpt2"
    shutil.copytree(plain_dirs["llama"], other)
    cfg = json.loads((other / "config.json").read_text())
    (other / "config.json").write_text(json.dumps(dict(cfg, model_type="gpt2")))
    with pytest.raises(
        checkpoint_io.CheckpointError, match="architecture 'gpt2' is not supported; the workbench supports llama"
    ):
        checkpoint_io.load(other)
    partial = tmp_path / "phi3-partial"
    shutil.copytree(plain_dirs["phi3"], partial)
    cfg = json.loads((partial / "config.json").read_text())
    cfg["rope_parameters"]["partial_rotary_factor"] = 0.5
    (partial / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(checkpoint_io.CheckpointError, match="partial_rotary_factor 0.5"):
        checkpoint_io.load(partial)


# ---------------------------------------------------------------------------------- q/k rows


@pytest.mark.parametrize("arch", ARCHS)
def test_qk_rows_and_pre_rope_hooks_match_transformers(arch, monkeypatch):
    model = hf_tiny(arch)
    spy = HFPreRope(model, monkeypatch)
    attn_in: list[torch.Tensor] = []
    attn = model.model.layers[0].self_attn
    attn.register_forward_pre_hook(
        lambda _m, args, kwargs: attn_in.append(kwargs.get("hidden_states", args[0] if args else None)),
        with_kwargs=True,
    )
    ours: dict[str, torch.Tensor] = {}
    handles = A.pre_rope_hooks(attn, model.config, lambda which, x: ours.__setitem__(which, x))
    ids, pos = ids_pos()
    with torch.no_grad():
        model(input_ids=ids, position_ids=pos)
    for h in handles:
        h.remove()
    hf_q, hf_k = spy.calls[0]  # layer 0: [B, H, T, d]
    b, t = ids.shape
    d = A.head_dim(model.config)
    # 1. the q/k rows (views into a fused weight) reproduce transformers' projections
    proj = A.projections(attn, model.config)
    x = attn_in[0]
    for which, ref in (("q", hf_q), ("k", hf_k)):
        w, bias = proj[which]["weight"], proj[which]["bias"]
        assert (bias is not None) == (arch == "qwen2")
        y = F.linear(x, w, bias).view(b, t, -1, d)
        if arch == "qwen3":  # q_norm/k_norm before RoPE
            y = getattr(attn, f"{which}_norm")(y)
        assert torch.allclose(y.transpose(1, 2), ref, atol=1e-6), which
        # 2. the pre-RoPE hooks see exactly what RoPE is applied to
        assert torch.equal(ours[which].view(b, t, -1, d).transpose(1, 2), ref)
    if arch == "phi3":  # views: writes go through to the fused parameter
        assert proj["q"]["weight"].data_ptr() == attn.qkv_proj.weight.data_ptr()
        assert proj["k"]["weight"].data_ptr() == attn.qkv_proj.weight[model.config.num_attention_heads * d :].data_ptr()


def _pair_rows_by_gradient(model, arch, monkeypatch, which: str, head: int, pair: int) -> dict[str, torch.Tensor]:
    """Parameters (name -> nonzero-row mask) that transformers' own forward uses for dims (pair, pair + d/2)
    of ``head`` in the pre-RoPE ``which`` of layer 0: the definition of a pair's rows, from the gradient."""
    model = model.train()
    captured: list[torch.Tensor] = []
    if arch == "qwen3":  # the norm's input is the projection reshaped by Qwen3's own code
        norm = getattr(model.model.layers[0].self_attn, f"{which}_norm")
        norm.register_forward_pre_hook(lambda _m, args: captured.append(args[0].transpose(1, 2)))
    else:
        spy = HFPreRope(model, monkeypatch)
    ids, pos = ids_pos(batch=1, length=8)
    model(input_ids=ids, position_ids=pos)
    x = captured[0] if arch == "qwen3" else spy.calls[0][0 if which == "q" else 1]
    d = x.shape[-1]
    model.zero_grad()
    x[0, head, :, [pair, pair + d // 2]].sum().backward()
    rows = {}
    for name, p in model.model.layers[0].self_attn.named_parameters():
        if p.grad is not None and p.grad.abs().sum() > 0 and ("proj" in name):
            g = p.grad if p.grad.ndim == 2 else p.grad[:, None]
            rows[name] = g.abs().sum(1) > 0
    model.eval()
    return rows


@pytest.mark.parametrize("arch", ARCHS)
def test_updates_find_the_pair_rows_in_every_layout(arch, tmp_path, monkeypatch, plain_dirs):
    """Change exactly the rows transformers uses for (layer 0, head, pair) of q; the weight view reports a
    change there and nowhere else (fused qkv split, biases included)."""
    from workbench import measurements

    before = hf_tiny(arch)
    head, pair = 1, 2
    rows = _pair_rows_by_gradient(before, arch, monkeypatch, "q", head, pair)
    assert rows, "no parameter rows found"
    after = hf_tiny(arch)
    with torch.no_grad():
        for name, mask in rows.items():
            p = dict(after.model.layers[0].self_attn.named_parameters())[name]
            p[mask] += 0.5
    a = save_plain(before, tmp_path / "a")
    b = save_plain(after, tmp_path / "b")
    ds = measurements.weight_updates([a, b])
    rel = ds["q_rel_update"].isel(comparison=0).values  # [layer, head, pair]
    changed = np.argwhere(rel > 1e-9)
    assert changed.tolist() == [[0, head, pair]]
    assert float(ds["k_rel_update"].max()) == 0.0


class HFRawQK:
    """transformers' own q/k of every layer as its projections make them, [B, H, T, d]: the input of
    Qwen3's q_norm/k_norm, else what its attention hands ``apply_rotary_pos_emb``."""

    def __init__(self, model, arch, monkeypatch):
        self.calls: list[tuple[torch.Tensor, torch.Tensor]] = []
        if arch == "qwen3":
            self._q: list[torch.Tensor] = []
            for layer in model.model.layers:
                layer.self_attn.q_norm.register_forward_pre_hook(lambda _m, a: self._q.append(a[0].transpose(1, 2)))
                layer.self_attn.k_norm.register_forward_pre_hook(
                    lambda _m, a: self.calls.append((self._q.pop(0), a[0].transpose(1, 2)))
                )
        else:
            self.calls = HFPreRope(model, monkeypatch).calls


@pytest.mark.parametrize("arch", ARCHS)
def test_frozen_pairs_hold_the_pair_rows_transformers_uses(arch, monkeypatch):
    """The frozen-pairs ablation (train/ablations.py) restores exactly the q/k rows of the frozen pairs:
    after a random update of every attention parameter of layer 0 and ``restore()``, transformers' own q/k
    of layer 0 are unchanged in the frozen pairs' dims and changed in all others (Phi-3: inside qkv_proj)."""
    from workbench.train.ablations import FrozenPairs

    model = hf_tiny(arch)
    raw = HFRawQK(model, arch, monkeypatch)
    ids, pos = ids_pos()
    with torch.no_grad():
        model(input_ids=ids, position_ids=pos)
    q0, k0 = raw.calls[0]
    pairs = np.array([0, 3])
    frozen = FrozenPairs(model, pairs)
    with torch.no_grad():  # an "optimiser step" on every attention parameter of layer 0 only
        for p in model.model.layers[0].self_attn.parameters():
            p.add_(torch.randn_like(p))
    frozen.restore()
    raw.calls.clear()
    with torch.no_grad():
        model(input_ids=ids, position_ids=pos)
    q1, k1 = raw.calls[0]
    d = q0.shape[-1]
    dims = np.r_[pairs, pairs + d // 2]
    other = np.setdiff1d(np.arange(d), dims)
    assert torch.allclose(q1[..., dims], q0[..., dims], atol=1e-6)
    assert torch.allclose(k1[..., dims], k0[..., dims], atol=1e-6)
    assert (q1[..., other] - q0[..., other]).abs().min() > 0 and (k1[..., other] - k0[..., other]).abs().max() > 1e-2


# ---------------------------------------------------------------------------- trace (backends)


@pytest.mark.parametrize("arch", ARCHS)
def test_trace_check_both_backends(arch, plain_dirs):
    from workbench.interventions import backends as B
    from workbench.interventions import sanity
    from workbench.interventions import specs as S

    path = plain_dirs[arch]
    tl_ok = arch not in A.TL_UNSUPPORTED
    results = sanity.check(path, length=48, backends=("nnsight", "tl") if tl_ok else ("nnsight",))
    assert all(r.ok for r in results), "\n".join(map(str, results))
    assert any(r.name.startswith("tl vs nnsight") for r in results) == tl_ok
    # the post-RoPE edit really acts (on every backend that runs it)
    ids, pos = ids_pos(batch=1, length=24)
    spec = S.Spec("q-shift", [S.shift(9, "q", layers=[1])])
    for name in ("nnsight", "tl") if tl_ok else ("nnsight",):
        out = B.load_backend(path, name).run(ids, pos, [S.identity(), spec])
        assert (out[1]["logits"] - out[0]["logits"]).abs().max() > 1e-4, name
    if not tl_ok:
        with pytest.raises(A.ArchitectureError, match="backend tl: .*use --backend nnsight"):
            B.load_backend(path, "tl")


def test_transformerlens_phi3_bridge_does_not_run_its_rotary_hooks(plain_dirs):
    """Why the tl backend refuses Phi-3: the bridge lists hook_rot_q but never calls it."""
    from transformer_lens.model_bridge import TransformerBridge

    from workbench.data.tokenizer import synthetic_tokenizer

    hf = checkpoint_io.load(plain_dirs["phi3"], attn_implementation="eager")[0]
    tok = synthetic_tokenizer()
    tok.init_kwargs.setdefault("name_or_path", str(plain_dirs["phi3"]))
    bridge = TransformerBridge.boot_transformers(str(plain_dirs["phi3"]), hf_model=hf, tokenizer=tok, device="cpu")
    assert act_name("rot_q", 0, bridge=True) in bridge.hook_dict
    fired = []
    ids, pos = ids_pos(batch=1, length=8)
    bridge.run_with_hooks(
        ids, position_ids=pos, fwd_hooks=[(act_name("rot_q", 0, bridge=True), lambda x, hook: fired.append(1))]
    )
    assert fired == []


@pytest.mark.parametrize("arch", ARCHS)
def test_logit_lens_applies_the_final_softcap(arch, plain_dirs):
    """lens(last residual) == the model's output logits, soft-capping included (Gemma 2), on both backends."""
    from workbench.interventions import backends as B
    from workbench.interventions import specs as S

    ids, pos = ids_pos(batch=1, length=16)
    hf = checkpoint_io.load(plain_dirs[arch])[0]
    with torch.no_grad():
        ref = hf(input_ids=ids, position_ids=pos).logits
    last = act_name("resid_post", hf.config.num_hidden_layers - 1)
    for name in ("nnsight", "tl") if arch not in A.TL_UNSUPPORTED else ("nnsight",):
        be = B.load_backend(plain_dirs[arch], name)
        out = be.run(ids, pos, [S.identity()], capture=[last])[0]
        assert torch.allclose(out["logits"], ref, atol=1e-4), name
        with torch.no_grad():
            assert torch.allclose(be.lens(out[last]), ref, atol=1e-4), name
    if arch == "gemma2":
        assert float(ref.abs().max()) < hf.config.final_logit_softcapping


# ------------------------------------------------------------------------------- KD teacher


@pytest.mark.parametrize("arch", ARCHS)
def test_chunked_kd_loss_sees_the_teachers_real_logits(arch, plain_dirs):
    """The chunked loss, fed the teacher's hidden states + lm_head (+ soft-cap), equals a dense KL against the
    teacher's own output logits from transformers, in value and gradient."""
    from workbench.train.losses import LossSpec, OnlineTeacher, chunked_loss, divergence

    teacher = checkpoint_io.load(plain_dirs[arch])[0]
    ids, pos = ids_pos(batch=2, length=20)
    with torch.no_grad():
        t_out = teacher(input_ids=ids, position_ids=pos, output_hidden_states=True)
    t_hidden, t_logits = t_out.hidden_states[-1], t_out.logits
    torch.manual_seed(0)
    h = torch.randn(2, 20, 24, requires_grad=True)
    w = torch.randn(VOCAB, 24, requires_grad=True)
    labels = torch.randint(0, VOCAB, (2, 20))
    spec = LossSpec(ce_weight=0.3, kd_weight=1.0, temperature=2.0, chunk_size=7)
    r = chunked_loss(
        h, w, labels, spec, teacher=OnlineTeacher(t_hidden, teacher.lm_head.weight, A.final_softcap(teacher.config))
    )
    r.loss.backward()
    gh, gw = h.grad.clone(), w.grad.clone()
    h.grad = w.grad = None
    s_logits = (h @ w.t()).reshape(-1, VOCAB)
    kd = divergence(
        F.log_softmax(t_logits.reshape(-1, VOCAB) / 2.0, -1), F.log_softmax(s_logits / 2.0, -1), "forward_kl"
    )
    dense = (0.3 * F.cross_entropy(s_logits, labels.reshape(-1), reduction="sum") + 4.0 * kd.sum()) / 40
    dense.backward()
    assert torch.allclose(r.loss, dense, rtol=1e-5, atol=1e-6)
    assert torch.allclose(gh, h.grad, atol=1e-6) and torch.allclose(gw, w.grad, atol=1e-6)


def test_student_softcap_in_the_chunked_loss_matches_gemma2_logits(plain_dirs):
    """A Gemma 2 student: the loss is CE of its soft-capped output logits, gradient included."""
    from workbench.train.losses import LossSpec, chunked_loss

    student = checkpoint_io.load(plain_dirs["gemma2"])[0].train()
    ids, pos = ids_pos(batch=1, length=12)
    labels = torch.randint(0, VOCAB, (1, 12))
    hidden = student.model(input_ids=ids, position_ids=pos).last_hidden_state
    spec = LossSpec(ce_weight=1.0, kd_weight=0.0, chunk_size=5, student_softcap=A.final_softcap(student.config))
    ours = chunked_loss(hidden, student.lm_head.weight, labels, spec).loss
    ref = F.cross_entropy(student(input_ids=ids, position_ids=pos).logits.reshape(-1, VOCAB), labels.reshape(-1))
    assert torch.allclose(ours, ref, rtol=1e-5)
    plain = chunked_loss(hidden, student.lm_head.weight, labels, LossSpec(ce_weight=1.0, kd_weight=0.0)).loss
    assert not torch.allclose(plain, ref, rtol=1e-3)


TRAIN_STUDENT = tiny_student(vocab_size=VOCAB, max_position_embeddings=256)


def _run_cfg(teacher: Path, **model) -> dict:
    return {
        "name": "arch",
        "model": dict(TRAIN_STUDENT, **model),
        "seed": 3,
        "data": {"kind": "synthetic-short", "doc_len_min": 16, "doc_len_max": 48},
        "optim": {"micro_batch_size": 2, "grad_accum_steps": 1},
        "checkpoint": {"every": 1, "keep_last": 3},
        "loss": {"chunk_size": 40},
        "teacher": {"path": str(teacher)},
        "phases": [{"name": "p", "steps": 2, "seq_len": 48, "rope_theta": 100, "lr": 3e-3, "objective": "kd"}],
    }


@pytest.mark.parametrize("arch", ARCHS)
def test_kd_from_each_teacher_architecture_trains_and_resumes(arch, tmp_path, plain_dirs):
    """KD from a teacher of each architecture into a Llama student (shared synthetic tokenizer): trains,
    checkpoints, and a resume from step 1 reproduces the uninterrupted losses."""
    import shutil

    from workbench.train import train

    cfg = config.from_dict(config.RunConfig, _run_cfg(plain_dirs[arch]))
    full = train(cfg, out=str(tmp_path / "full"), progress=False)
    recs = [json.loads(x) for x in (full / "metrics.jsonl").read_text().splitlines()]
    train_recs = [(r["step"], r["loss"]) for r in recs if r["kind"] == "train"]
    assert len(train_recs) == 2 and all(np.isfinite(loss) and loss > 0 for _, loss in train_recs)
    part = tmp_path / "part"
    shutil.copytree(full, part)
    shutil.rmtree(part / "ckpt-000002")
    train(cfg, out=str(part), resume=True, progress=False)
    again = [
        (r["step"], r["loss"])
        for r in map(json.loads, (part / "metrics.jsonl").read_text().splitlines())
        if r["kind"] == "train"
    ]
    assert again == train_recs


@pytest.mark.parametrize("arch", ARCHS)
def test_student_of_each_architecture_trains_with_ce(arch, tmp_path, plain_dirs):
    """``model.architecture`` students train (CE) and save checkpoints that plain transformers loads."""
    from transformers import AutoModelForCausalLM

    from workbench.train import train

    raw = _run_cfg(plain_dirs["llama"], architecture=arch)
    raw["phases"][0]["objective"] = "ce"
    del raw["teacher"]
    run = train(config.from_dict(config.RunConfig, raw), out=str(tmp_path / "run"), progress=False)
    ckpt = RunDir(run).checkpoints()[-1]
    plain = AutoModelForCausalLM.from_pretrained(ckpt, local_files_only=True)
    assert plain.config.model_type == arch


# ------------------------------------------------------------------------------- eval, probe


@pytest.mark.parametrize("arch", ARCHS)
def test_eval_runs_on_each_architecture(arch, plain_dirs):
    from workbench.evals import grid

    p = grid.plan([plain_dirs[arch]], tasks="passkey", lengths=[64], depths=2, samples=2, tokenizer="auto")
    ds = grid.evaluate_plan(p, device="cpu", dtype="float32", progress=False)
    assert ds["correct"].sizes["checkpoint"] == 1
    logp = ds["answer_logprob"].values
    assert np.isfinite(logp).all() and (logp < 0).all()


@pytest.mark.parametrize("arch", ARCHS)
def test_probe_and_state_view_on_each_architecture(arch, tmp_path, plain_dirs):
    from workbench import measurements

    probes = measurements.position_probes([plain_dirs[arch]], seq_len=64, n_windows=4)
    assert probes.sizes["layer"] == 3 and np.isfinite(probes["r2"].values).all()
    other = save_plain(hf_tiny(arch, seed=1), tmp_path / "other")
    states = measurements.state_updates([plain_dirs[arch], other], seq_len=32, n_windows=1)
    half = A.head_dim(dict(SHAPE, **EXTRA.get(arch, {}))) // 2
    assert states.sizes["pair"] == half
    assert np.isfinite(states["q_norm_change"].values).all()


# ------------------------------------------------------------------- tokenizers travel (item 2)

LICENSES = [Path("/usr/share/common-licenses") / n for n in ("Apache-2.0", "GPL-3", "Artistic", "BSD")]


@pytest.fixture(scope="module")
def bpe(tmp_path_factory) -> tuple[Path, Path]:
    """A BPE tokenizer trained locally with `tokenizers` (vocab 300) and a jsonl corpus of paragraphs. It has
    Qwen's ``<|endoftext|>``: transformers 5 loads a tokenizer next to a Qwen2 config.json as Qwen2Tokenizer,
    which adds that token when it is missing."""
    from tokenizers import Tokenizer, pre_tokenizers, trainers
    from tokenizers import models as tm
    from transformers import PreTrainedTokenizerFast

    root = tmp_path_factory.mktemp("bpe")
    paras = [
        p.strip()
        for f in LICENSES
        if f.is_file()
        for p in f.read_text(errors="ignore").split("\n\n")
        if len(p.strip()) > 80
    ][:200]
    assert len(paras) > 20
    backend = Tokenizer(tm.BPE(unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.train_from_iterator(
        paras, trainers.BpeTrainer(vocab_size=300, special_tokens=["<unk>", "<eos>", "<|endoftext|>"])
    )
    tok = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>", eos_token="<eos>")
    tok.save_pretrained(root / "tok")
    corpus = root / "corpus.jsonl"
    corpus.write_text("\n".join(json.dumps({"text": p}) for p in paras))
    return root / "tok", corpus


def _bpe_run(tok: Path, corpus: Path, teacher: Path | None = None, **model) -> dict:
    raw = {
        "name": "bpe",
        "model": {**TRAIN_STUDENT, "vocab_size": 320, **model},
        "seed": 1,
        "data": {"kind": "jsonl", "paths": [str(corpus)], "tokenizer": str(tok)},
        "optim": {"micro_batch_size": 2, "grad_accum_steps": 1},
        "checkpoint": {"every": 1, "keep_last": 3},
        "loss": {"chunk_size": 40},
        "phases": [
            {
                "name": "p",
                "steps": 2,
                "seq_len": 48,
                "rope_theta": 100,
                "lr": 3e-3,
                "objective": "kd" if teacher else "ce",
            }
        ],
    }
    if teacher is not None:
        raw["teacher"] = {"path": str(teacher)}
    return raw


def test_checkpoints_carry_the_data_tokenizer(tmp_path, bpe):
    from transformers import AutoTokenizer

    from workbench.train import train

    tok, corpus = bpe
    run = train(config.from_dict(config.RunConfig, _bpe_run(tok, corpus)), out=str(tmp_path / "run"), progress=False)
    for ckpt in RunDir(run).checkpoints():
        saved = AutoTokenizer.from_pretrained(ckpt, local_files_only=True)
        assert saved.get_vocab() == AutoTokenizer.from_pretrained(tok, local_files_only=True).get_vocab()
        checkpoint_io.verify_checkpoint(ckpt)  # tokenizer files are listed (and hashed) in the manifest
        assert "tokenizer.json" in checkpoint_io.read_manifest(ckpt)["files"]


def test_synthetic_runs_carry_the_synthetic_tokenizer(tmp_path):
    from transformers import AutoTokenizer

    from workbench.data.tokenizer import synthetic_tokenizer
    from workbench.train import train

    raw = _run_cfg(Path("unused"))
    del raw["teacher"]
    raw["phases"][0]["objective"] = "ce"
    run = train(config.from_dict(config.RunConfig, raw), out=str(tmp_path / "run"), progress=False)
    saved = AutoTokenizer.from_pretrained(RunDir(run).checkpoints()[-1], local_files_only=True)
    assert saved.get_vocab() == synthetic_tokenizer().get_vocab()


def test_qwen2_teacher_with_the_shared_bpe_tokenizer_distils_into_llama_and_resumes(tmp_path, bpe):
    """The issue's case: KD from a Qwen2-shaped teacher into a Llama-shaped student, one BPE tokenizer."""
    import shutil

    from transformers import AutoTokenizer

    from workbench.train import train

    tok, corpus = bpe
    teacher = hf_tiny("qwen2")
    teacher.resize_token_embeddings(320)
    tdir = tmp_path / "teacher"
    teacher.save_pretrained(tdir)
    AutoTokenizer.from_pretrained(tok, local_files_only=True).save_pretrained(tdir)
    cfg = config.from_dict(config.RunConfig, _bpe_run(tok, corpus, tdir))
    full = train(cfg, out=str(tmp_path / "full"), progress=False)
    losses = [
        (r["step"], r["kd"])
        for r in map(json.loads, (full / "metrics.jsonl").read_text().splitlines())
        if r["kind"] == "train"
    ]
    assert len(losses) == 2 and all(kd > 0 for _, kd in losses)
    part = tmp_path / "part"
    shutil.copytree(full, part)
    shutil.rmtree(part / "ckpt-000002")
    train(cfg, out=str(part), resume=True, progress=False)
    assert [
        (r["step"], r["kd"])
        for r in map(json.loads, (part / "metrics.jsonl").read_text().splitlines())
        if r["kind"] == "train"
    ] == losses
    assert (
        AutoTokenizer.from_pretrained(RunDir(part).checkpoints()[-1], local_files_only=True).get_vocab()
        == AutoTokenizer.from_pretrained(tok, local_files_only=True).get_vocab()
    )


def test_teacher_with_another_tokenizer_is_one_error_before_training(tmp_path, bpe, plain_dirs, capsys):
    from workbench.cli import main as cli_main

    tok, corpus = bpe
    raw = _bpe_run(tok, corpus, plain_dirs["llama"], vocab_size=VOCAB)  # synthetic-tokenizer teacher, BPE data
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(raw))
    rc = cli_main(["train", str(tmp_path / "cfg.yaml"), "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc != 0 and len(err) == 1 and "teacher's tokenizer" in err[0] and "differs from data.tokenizer" in err[0]
    assert not (tmp_path / "run").exists()


def test_teacher_without_tokenizer_is_accepted_with_one_warning(tmp_path, plain_dirs):
    import shutil

    from workbench.train import train

    tdir = tmp_path / "teacher"
    shutil.copytree(plain_dirs["qwen3"], tdir)
    for f in tdir.iterdir():
        if f.name.startswith(("tokenizer", "special_tokens")):
            f.unlink()
    with pytest.warns(UserWarning, match="has no tokenizer; assuming it uses the run's") as caught:
        train(config.from_dict(config.RunConfig, _run_cfg(tdir)), out=str(tmp_path / "run"), progress=False)
    assert sum("has no tokenizer" in str(w.message) for w in caught) == 1


@pytest.mark.parametrize("arch", ARCHS)
def test_band_intervention_is_the_engines_edit_in_every_layout(arch, plain_dirs):
    """The eval-time band intervention (pre-RoPE, at architectures.pre_rope_hooks: after Qwen3's q/k norms,
    inside Phi-3's fused qkv_proj) equals the nnsight engine's post-RoPE edit of the same spec."""
    import math

    from workbench.interventions import backends as B
    from workbench.interventions import bands

    model, _ = checkpoint_io.load(plain_dirs[arch])
    ids, pos = ids_pos(batch=1, length=24)
    half = A.head_dim(model.config) // 2
    pairs = [1, half - 2]
    engine = B.load_backend(plain_dirs[arch], "nnsight")
    with torch.no_grad():
        clean = model(ids, position_ids=pos).logits
        for op, target in (("zero", "both"), ("rotate", "q")):
            with bands.band_intervention(model, pairs, op, angle=math.pi / 3, target=target):
                hooked = model(ids, position_ids=pos).logits
            want = engine.run(ids, pos, [bands.band_spec(pairs, op, math.pi / 3, target)])[0]["logits"]
            assert (hooked - clean).abs().max() > 1e-4, (arch, op)
            torch.testing.assert_close(hooked, want.to(hooked.dtype), atol=1e-4, rtol=0)
        assert torch.equal(model(ids, position_ids=pos).logits, clean), "hooks must be removed on exit"
