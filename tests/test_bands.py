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
    conds = bands.band_conditions(10000.0, 32, 256)
    short, long = conds["zero lambda<=256"][2], conds["zero lambda>256"][2]
    assert sorted(short.tolist() + long.tolist()) == list(range(16))
    from workbench import rope

    assert (rope.wavelengths(10000.0, 32)[long] > 256).all()
    with pytest.raises(ValueError, match="op must be"):
        with bands.band_intervention(torch.nn.Module(), [], "warp"):
            pass
