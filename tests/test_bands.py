"""Band interventions at evaluation time (workbench.interventions.bands) vs the engines' post-RoPE edit."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from workbench import checkpoint_io
from workbench.interventions import bands


@pytest.mark.parametrize("op", ["zero", "rotate"])
def test_band_intervention_equals_the_engines_post_rope_edit(saved_checkpoint, op):
    """Editing q_proj/k_proj outputs (pre-RoPE) must equal the nnsight engine's edit of post-RoPE q/k."""
    from workbench import interventions
    from workbench.interventions.specs import PairSet

    pairs = [5, 6, 7]
    model, _ = checkpoint_io.load(saved_checkpoint)  # GQA, head_dim 16, theta 500
    ids = torch.randint(0, 96, (1, 300), generator=torch.Generator().manual_seed(0))
    pos = torch.arange(300)[None]
    target = "both" if op == "zero" else "q"  # rotating q and k alike would leave q.k unchanged
    with torch.no_grad():
        clean = model(ids, position_ids=pos).logits
        with bands.band_intervention(model, pairs, op, angle=math.pi / 3, target=target):
            hooked = model(ids, position_ids=pos).logits
        again = model(ids, position_ids=pos).logits
    edit = (
        interventions.zero("both", pairs=PairSet(indices=pairs))
        if op == "zero"
        else interventions.rotate(math.pi / 3, "q", pairs=PairSet(indices=pairs))
    )
    engine = interventions.load_backend(saved_checkpoint, "nnsight").run(
        ids, pos, [interventions.Spec("edit", [edit])]
    )[0]["logits"]
    assert (hooked - clean).abs().max() > 1e-3
    torch.testing.assert_close(hooked, engine.to(hooked.dtype), atol=1e-4, rtol=0)
    assert torch.equal(again, clean), "hooks must be removed on exit"


def test_band_conditions_are_interp_specs():
    """The band intervention is the engines' spec (one pair edit): zero/rotate of PairSet(indices), identity
    for no pairs."""
    from workbench import interventions
    from workbench.interventions.specs import PairSet

    got = bands.band_spec([5, 6, 7], "rotate", math.pi / 3, "q")
    want = interventions.Spec("x", [interventions.rotate(math.pi / 3, "q", pairs=PairSet(indices=[5, 6, 7]))])
    assert got.ops_json() == want.ops_json()
    assert (
        bands.band_spec(np.array([1, 2]), "zero").ops_json()
        == interventions.Spec("x", [interventions.zero("both", pairs=PairSet(indices=[1, 2]))]).ops_json()
    )
    assert bands.band_spec([], "zero").is_identity


def test_band_conditions_split_pairs_by_document_length():
    from workbench import rope

    conds = bands.band_conditions(rope.inv_freq(10000.0, 32), 256)
    short, long = conds["zero lambda<=256"][2], conds["zero lambda>256"][2]
    assert sorted(short.tolist() + long.tolist()) == list(range(16))
    assert (rope.wavelengths(10000.0, 32)[long] > 256).all()
    with pytest.raises(ValueError, match="op must be"):
        with bands.band_intervention(torch.nn.Module(), [], "warp"):
            pass


def test_bands_and_frozen_pairs_follow_the_models_rope_scaling():
    """A Llama-3-scaled model: the band split and the frozen pairs come from the wavelengths transformers'
    rotary module runs with (low frequencies stretched by the factor), not from theta alone."""
    import types

    from transformers import LlamaConfig, LlamaForCausalLM

    from workbench import models, rope
    from workbench.train.ablations import FrozenPairs

    scaling = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0}
    cfg = LlamaConfig(
        vocab_size=64, hidden_size=128, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
        num_key_value_heads=1, max_position_embeddings=32768,
        rope_parameters={"rope_theta": 500000.0, **scaling, "original_max_position_embeddings": 8192},
    )  # fmt: skip
    model = LlamaForCausalLM(cfg)
    runs_with = 2 * math.pi / model.model.rotary_emb.inv_freq.double().numpy()  # transformers' own [32]
    plain = rope.wavelengths(500000.0, 64)
    assert not np.allclose(runs_with, plain)
    doc = 20000
    long = bands.band_conditions(models.model_inv_freq(model).double().numpy(), doc)["zero lambda>20000"][2]
    assert long.tolist() == np.flatnonzero(runs_with > doc).tolist()
    assert long.tolist() != np.flatnonzero(plain > doc).tolist()
    phase = types.SimpleNamespace(rope_theta=500000.0, freeze_wavelengths=(doc, math.inf))
    frozen = FrozenPairs.for_phase(model, phase).pairs
    assert frozen.tolist() == np.flatnonzero(runs_with >= doc).tolist() == long.tolist()
