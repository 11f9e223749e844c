"""workbench.rope against transformers' own RoPE implementation."""

from __future__ import annotations

import math
import subprocess
import sys

import numpy as np
import pytest
import torch
from transformers import LlamaConfig
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS
from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

from workbench import rope

HEAD_DIM = 64
MAX_POS = 8192

SCALINGS = [
    None,
    {"rope_type": "linear", "factor": 4.0},
    {"rope_type": "dynamic", "factor": 2.0},
    {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 2048},
    {
        "rope_type": "yarn",
        "factor": 8.0,
        "original_max_position_embeddings": 4096,
        "beta_fast": 16,
        "beta_slow": 2,
        "mscale": 0.7,
        "mscale_all_dim": 1.0,
        "truncate": False,
    },
    {
        "rope_type": "llama3",
        "factor": 8.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 2048,
    },
    {
        "rope_type": "longrope",
        "original_max_position_embeddings": 2048,
        "short_factor": list(np.linspace(1.0, 2.0, HEAD_DIM // 2)),
        "long_factor": list(np.linspace(1.0, 16.0, HEAD_DIM // 2)),
    },
]


def hf_inv_freq(theta, scaling, seq_len=None):
    params = {"rope_type": "default", **(scaling or {}), "rope_theta": theta}
    cfg = LlamaConfig(
        hidden_size=HEAD_DIM * 4,
        num_attention_heads=4,
        head_dim=HEAD_DIM,
        max_position_embeddings=MAX_POS,
        rope_parameters=params,
    )
    if params["rope_type"] == "default":
        inv, factor = LlamaRotaryEmbedding.compute_default_rope_parameters(cfg)
    else:
        inv, factor = ROPE_INIT_FUNCTIONS[params["rope_type"]](cfg, "cpu", seq_len)
    return inv.double().numpy(), factor


@pytest.mark.parametrize("scaling", SCALINGS, ids=lambda s: (s or {}).get("rope_type", "default"))
@pytest.mark.parametrize("theta", [500.0, 10000.0, 1e6])
def test_inv_freq_matches_transformers(theta, scaling):
    expected, factor = hf_inv_freq(theta, scaling)
    ours = rope.inv_freq(theta, HEAD_DIM, scaling, max_position_embeddings=MAX_POS)
    assert ours.shape == (HEAD_DIM // 2,)
    np.testing.assert_allclose(ours, expected, rtol=1e-6)
    assert rope.attention_factor(scaling, max_position_embeddings=MAX_POS) == pytest.approx(factor, rel=1e-6)
    np.testing.assert_allclose(
        rope.wavelengths(theta, HEAD_DIM, scaling, max_position_embeddings=MAX_POS), 2 * math.pi / expected, rtol=1e-6
    )


@pytest.mark.parametrize("scaling", [SCALINGS[2], SCALINGS[6]], ids=["dynamic", "longrope"])
def test_inv_freq_seq_len_dependent_types(scaling):
    expected, _ = hf_inv_freq(10000.0, scaling, seq_len=3 * MAX_POS)
    ours = rope.inv_freq(10000.0, HEAD_DIM, scaling, max_position_embeddings=MAX_POS, seq_len=3 * MAX_POS)
    np.testing.assert_allclose(ours, expected, rtol=1e-6)


def test_pair_layout_is_half_split_as_in_transformers():
    """Pair j of HF's rotary embedding rotates dims j and j + d/2 by omega_j * position."""
    from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

    d, theta, pos = 16, 100.0, 37
    cfg = LlamaConfig(
        hidden_size=d, num_attention_heads=1, head_dim=d, rope_parameters={"rope_type": "default", "rope_theta": theta}
    )
    emb = LlamaRotaryEmbedding(cfg)
    x = torch.zeros(1, 1, 1, d)
    cos, sin = emb(x, torch.tensor([[pos]]))
    omega = rope.inv_freq(theta, d)
    for j in range(d // 2):
        q = torch.zeros(1, 1, 1, d)
        q[..., j] = 1.0
        rotated, _ = apply_rotary_pos_emb(q, q, cos, sin)
        expected = torch.zeros(d)
        expected[j], expected[j + d // 2] = math.cos(omega[j] * pos), math.sin(omega[j] * pos)
        torch.testing.assert_close(rotated.flatten(), expected, atol=1e-5, rtol=0)


def test_pair_view_is_the_pair_dims_layout_for_torch_and_numpy():
    """pair_view(x, dim)[..., h, j, ...] is x's dim pair_dims([j])[h] along ``dim``; a view, the same for numpy."""
    d = 16
    x = torch.randn(2, 3, d, 5, dtype=torch.float64)
    for dim in (2, -2):
        v = rope.pair_view(x, dim=dim)
        assert v.shape == (2, 3, 2, d // 2, 5) and v.data_ptr() == x.data_ptr()
        for j in range(d // 2):
            a, b = rope.pair_dims([j], d)
            assert torch.equal(v[:, :, 0, j], x[:, :, a]) and torch.equal(v[:, :, 1, j], x[:, :, b])
    n = x.transpose(-1, -2).contiguous().numpy()
    assert np.array_equal(rope.pair_view(n), rope.pair_view(torch.from_numpy(n)).numpy())
    with pytest.raises(ValueError, match="even"):
        rope.pair_view(torch.zeros(3, 5))


def test_wavelength_mask_is_pairs_in_wavelengths_on_any_frequencies():
    theta, d = 1e4, 64
    inv, lam = rope.inv_freq(theta, d), rope.wavelengths(theta, d)
    mask = rope.wavelength_mask(inv, lam[3], lam[10])  # inclusive at both ends
    assert (
        np.flatnonzero(mask).tolist()
        == list(range(3, 11))
        == rope.pairs_in_wavelengths(theta, d, lam[3], lam[10]).tolist()
    )
    doubled = rope.wavelength_mask(2 * inv, lam[3] / 2 * (1 - 1e-9), lam[10] / 2 * (1 + 1e-9))  # a model's own buffer
    assert np.flatnonzero(doubled).tolist() == list(range(3, 11))
    assert rope.wavelength_mask(inv).all()


def test_critical_dimension_matches_formula_and_wavelengths():
    theta, d, length = 10000.0, 128, 4096
    assert rope.critical_dimension(theta, d, length) == 2 * math.ceil(64 * math.log(length / (2 * math.pi), theta))
    j = rope.critical_pair(theta, d, length)
    lam = rope.wavelengths(theta, d)
    assert lam[j - 1] <= length < lam[j]  # last pair that rotates fully, first that does not
    full = rope.theta_for_full_rotation(d, length)
    assert rope.wavelengths(full, d).max() == pytest.approx(length, rel=1e-9)
    # extending 4k -> 32k: the new theta puts the old critical pair's wavelength ratio at the new length
    extended = rope.theta_for_target_length(theta, length, 32768)
    assert rope.critical_dimension(extended, d, 32768) == rope.critical_dimension(theta, d, length)
    assert extended > theta


def test_base_lower_bound_is_first_passing_theta_of_the_scan():
    d, length = 32, 512
    grid = np.logspace(2, 8, 601)
    bound = rope.base_lower_bound(d, length, thetas=grid)
    i = int(np.searchsorted(grid, bound))
    assert rope.long_range_sum(bound, d, length).min() >= 0
    assert all(rope.long_range_sum(t, d, length).min() < 0 for t in grid[:i])


def _brute_first_pass(head_dim: int, length: int, grid: np.ndarray, tolerance: float = 0.0) -> int | None:
    """Independent reference: B(m) at every grid point in turn (batches of thetas), first index that passes."""
    j = np.arange(head_dim // 2, dtype=np.float64)
    m = np.arange(length + 1, dtype=np.float64)
    for start in range(0, grid.size, 128):
        omega = grid[start : start + 128, None] ** (-2.0 * j / head_dim)  # [T, d/2]
        worst = np.cos(m[None, :, None] * omega[:, None, :]).sum(-1).min(axis=1)  # [T]
        ok = np.flatnonzero(worst >= -tolerance)
        if ok.size:
            return start + int(ok[0])
    return None


@pytest.mark.parametrize("d, length, tolerance", [(8, 64, 0.0), (16, 128, 0.0), (16, 256, 0.0), (16, 96, 0.5)])
def test_bound_scan_equals_a_brute_force_fine_scan(d, length, tolerance):
    grid = rope.bound_grid(2, 6)  # the defining grid 10^(k/10000), theta in [1e2, 1e6]
    expected = _brute_first_pass(d, length, grid, tolerance)
    assert expected is not None
    assert rope.scan_base_bound(d, length, grid, tolerance) == expected
    assert rope.base_lower_bound(d, length, thetas=grid, tolerance=tolerance) == grid[expected]
    # the passing set is fragmented: some later grid point fails again (why it is scanned, never bisected) ...
    later = grid[expected + 1 : expected + 2001 : 10]
    assert not all(rope.long_range_sum(t, d, length).min() >= -tolerance for t in later)
    # ... and a coarser grid (100 a decade, a subset of this one) can only find the same theta or a later one
    coarse = rope.base_lower_bound(d, length, thetas=rope.bound_grid(2, 6, 100), tolerance=tolerance)
    assert coarse >= grid[expected]
    if (d, length) == (16, 256):
        assert coarse > 1.3 * grid[expected]  # 1.20e4 against 8,570: it steps over the first windows


def test_bound_scan_on_irregular_grids_and_edge_cases():
    rng = np.random.default_rng(0)
    d, length = 16, 100
    grid = np.sort(10 ** rng.uniform(1, 5, 3000))
    assert rope.scan_base_bound(d, length, grid) == _brute_first_pass(d, length, grid)
    assert rope.scan_base_bound(d, length, grid[:5]) is None  # nothing passes below 100
    first = _brute_first_pass(d, length, grid)
    assert rope.scan_base_bound(d, length, grid[first:]) == 0
    with pytest.raises(ValueError, match="increasing"):
        rope.scan_base_bound(d, length, grid[::-1])
    with pytest.raises(ValueError, match="no theta"):
        rope.base_lower_bound(d, length, thetas=grid[:5])


def test_base_lower_bound_known_values_at_its_resolution():
    """d=64, L=4096 passes at 1.00e5 (a grid of 100 points a decade steps over that window: 1.38e5); d=128
    against an independent 0.05 % scan (issue 14): 1k 4,295, 2k 1.159e4, 4k 2.696e4, 8k 8.378e4."""
    grid = rope.bound_grid()  # passing thetas= bypasses the shipped table: this computes
    assert rope.BOUND_RESOLUTION <= 5e-4
    assert rope.base_lower_bound(64, 4096, thetas=grid) == pytest.approx(1.00e5, rel=2e-3)
    assert rope.base_lower_bound(64, 4096, thetas=np.logspace(2, 12, 1001)) == pytest.approx(1.38e5, rel=1e-2)
    for length, value in [(1024, 4295), (2048, 1.159e4), (4096, 2.696e4), (8192, 8.378e4)]:
        assert rope.base_lower_bound(128, length, thetas=grid) == pytest.approx(value, rel=5e-4)


def test_shipped_bound_table_matches_the_scan():
    table = rope.shipped_base_bounds()
    assert {(d, 1024 << i) for d in (64, 128) for i in range(8)} <= set(table)
    text = rope.BOUND_TABLE.read_text()
    assert f"10**(k/{rope.BOUND_STEPS_PER_DECADE})" in text and "resolution" in text
    for d, length in [(64, 1024), (128, 2048)]:
        computed = rope.base_lower_bound(d, length, thetas=rope.bound_grid())
        assert table[d, length] == computed == rope.base_lower_bound(d, length)
        assert rope.long_range_sum(computed, d, length).min() >= 0
    assert table[128, 16384] == pytest.approx(2.317e5, rel=5e-4)  # 16k: below the paper's 3.1e5, as is 2k
    assert rope.base_lower_bound(64, 1000) == rope.base_lower_bound(64, 1000, thetas=rope.bound_grid())  # no hit


def test_long_range_sum_is_not_monotone_in_theta():
    """Why the bound is scanned: a larger theta can fail where a smaller one passed."""
    d, length = 32, 512
    grid = np.logspace(2, 8, 601)
    ok = np.array([rope.long_range_sum(t, d, length).min() >= 0 for t in grid])
    first = int(np.argmax(ok))
    assert ok[first] and not ok[first:].all()  # passes at the bound, fails again at some larger theta


def test_utilisation_and_bands():
    theta, d = 10000.0, 64
    lam = rope.wavelengths(theta, d)
    util = rope.utilisation(theta, d, 1024)
    assert util.full_rotation_fraction == pytest.approx(np.mean(lam <= 1024))
    assert util.mean_coverage == pytest.approx(np.mean(np.minimum(1.0, 1024 / lam)))
    bands = rope.assign_bands(theta, d, [256, 4096])
    assert bands.tolist() == [0 if x <= 256 else 1 if x <= 4096 else 2 for x in lam]
    assert rope.band_edges_label([256, 4096]) == ["lambda<=256", "256<lambda<=4096", "lambda>4096"]


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="theta"):
        rope.inv_freq(0, 64)
    with pytest.raises(ValueError, match="even"):
        rope.inv_freq(10000, 63)
    with pytest.raises(ValueError, match="unknown rope scaling"):
        rope.inv_freq(10000, 64, {"rope_type": "magic"})


def test_rope_command_prints_table():
    out = subprocess.run(
        [sys.executable, "-m", "workbench", "rope", "--theta", "10000", "--head-dim", "64", "--length", "4096"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "critical dimension" in out
    rows = [line for line in out.splitlines() if line.strip()[:2].strip().isdigit()]
    assert len(rows) == 32
    assert f"{2 * math.pi:.6g}" in rows[0]
