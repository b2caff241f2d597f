"""drpo_sim.geometry: the data of the geometry figures, computed directly and held to the math.

(The figures themselves, drawn through ``drpo-sim geometry``, are the command line's tests.)
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from drpo_sim import geometry, objectives
from drpo_sim.geometry import GeometryConfig, drpo_weight_range, pi_grid, plane_axis, weight_curves, weight_plane

CFG = dataclasses.replace(GeometryConfig(), n_plane=120)  # the grid the command-line test drew with


@pytest.fixture(scope="module")
def curves():
    return weight_curves(CFG)


@pytest.fixture(scope="module")
def plane():
    return weight_plane(CFG)


@pytest.fixture(scope="module")
def ranges():
    return drpo_weight_range(CFG)


def test_weight_curves_cover_every_objective_mu_and_sign_on_cpu(curves):
    cfg = CFG
    assert set(curves["name"]) == {n for n, _ in cfg.objectives}
    assert sorted(curves["mu"].unique()) == sorted(cfg.mus)
    assert set(curves["adv_sign"]) == {1.0, -1.0}
    assert not curves.isna().any().any()
    at_mu = curves[np.isclose(curves["pi"], curves["mu"], rtol=0, atol=1e-12) & (curves["abs_adv"] == 1.0)]
    assert len(at_mu) == len(cfg.objectives) * len(cfg.mus) * 2  # pi = mu is on every curve's grid
    k1 = at_mu["name"] == "drpo_kl"
    np.testing.assert_allclose(at_mu[~k1]["weight"], 1.0, atol=1e-7)  # on-policy, every objective is plain PG
    # except the k1 KL penalty, whose gradient vanishes on-policy only in expectation over a ~ mu
    np.testing.assert_allclose(at_mu[k1]["weight"], 1.0 + at_mu[k1]["adv_sign"] / 0.15, rtol=1e-7)
    drpo = curves[curves["name"] == "drpo"]
    assert drpo["weight"].between(1 - 1 / 0.15 - 1e-6, 1 + 1 / 0.15 + 1e-6).all()


def test_weight_curves_are_the_registrys_weights_on_cpu(curves):
    """Each row is its objective's weight at its point; the extra sizes of A only for the one
    objective whose weight depends on them; ratio and shift as named."""
    cfg = CFG
    built = cfg.build()
    for name, obj in built.items():
        rows = curves[curves["name"] == name]
        sizes = {1.0, *cfg.abs_adv_extra} if name == cfg.abs_adv_objective else {1.0}
        assert set(rows["abs_adv"]) == sizes, name
        assert (rows["objective"] == str(obj)).all() and (rows["ablation"] == (name in cfg.ablations)).all()
        want = obj.weight(np.log(rows["pi"].to_numpy()), np.log(rows["mu"].to_numpy()),
                          (rows["adv_sign"] * rows["abs_adv"]).to_numpy())
        np.testing.assert_array_equal(rows["weight"].to_numpy(), want, err_msg=name)
    np.testing.assert_allclose(curves["ratio"], curves["pi"] / curves["mu"], rtol=1e-15)
    np.testing.assert_allclose(curves["shift"], curves["pi"] - curves["mu"], rtol=0, atol=1e-15)
    grid = pi_grid(cfg, 0.5)
    assert grid[0] == pytest.approx(cfg.pi_min) and grid[-1] == pytest.approx(1 - cfg.pi_min)
    assert 0.5 in grid and np.all(np.diff(grid) > 0)


def test_plane_masks_and_delta_ranges_match_the_math_on_cpu(plane, ranges):
    assert len(plane) == 2 * CFG.n_plane**2
    np.testing.assert_allclose(np.unique(plane["mu"]), plane_axis(CFG.n_plane))
    up = plane[plane["adv_sign"] == 1.0]
    # DPPO-TV masks exactly where the shift passes delta in the advantage's direction, and DRPO's
    # weight is negative exactly there: the same geometry (points on the boundary itself, where
    # rounding of pi - mu decides, are left out)
    off_boundary = np.abs(up["pi"] - up["mu"] - 0.15) > 1e-6
    up = up[off_boundary]
    np.testing.assert_array_equal(up["masked_dppo_tv"], (up["pi"] - up["mu"]) > 0.15)
    np.testing.assert_array_equal(up["weight_drpo"] < 0, up["masked_dppo_tv"])
    ranges, range_curves = ranges
    ranges = ranges.set_index("delta")
    assert list(ranges.index) == list(CFG.deltas)
    np.testing.assert_allclose(ranges.loc[12.5, ["weight_min", "weight_max"]], [0.92, 1.08], atol=0.005)
    assert ranges.loc[12.5, "corrective_fraction"] == 0.0
    assert ranges.loc[0.15, "corrective_fraction"] > 0.3
    assert (ranges["weight_min"] >= ranges["bound_low"] - 1e-12).all()
    assert (ranges["weight_max"] <= ranges["bound_high"] + 1e-12).all()
    np.testing.assert_allclose(ranges["bound_low"], 1 - 1 / ranges.index.to_numpy())
    np.testing.assert_allclose(ranges["bound_high"], 1 + 1 / ranges.index.to_numpy())
    # the curves at mu = 0.5: DRPO's weight 1 - sign(A) (pi - mu) / delta
    for (delta, sign), c in range_curves.groupby(["delta", "adv_sign"]):
        assert (c["mu"] == 0.5).all()
        np.testing.assert_allclose(c["weight"], 1 - sign * c["shift"] / delta, rtol=1e-9, atol=1e-12)


def test_plane_masks_are_the_registrys_masked_regions_on_cpu(plane):
    built = CFG.build()
    for sign, half in plane.groupby("adv_sign"):
        lp, lb = np.log(half["pi"].to_numpy()), np.log(half["mu"].to_numpy())
        adv = np.full(len(half), sign)
        for name in CFG.plane_masks:
            want = objectives.Regions.from_weight(built[name].weight(lp, lb, adv)).masked
            np.testing.assert_array_equal(half[f"masked_{name}"].to_numpy(), want, err_msg=name)
        for name in CFG.plane_weights:
            np.testing.assert_array_equal(half[f"weight_{name}"].to_numpy(), built[name].weight(lp, lb, adv))
    assert geometry.ADV_SIGNS == (1.0, -1.0)


def test_single_tokens_are_drawn_at_the_plainest_case_of_each_extra_input_on_cpu():
    """Two-policy objectives: their own weight. The others: pi_old = mu, one-token sequences, the
    Top-K divergence at K = 1 (the binary TV and KL): so the recompute modes are the rollout's,
    a correction changes nothing, GSPO clips the token's ratio and Top-K TV masks as binary TV."""
    pi = np.array([0.05, 0.3, 0.5, 0.9])
    mu = np.array([0.3, 0.05, 0.45, 0.6])
    lp, lb, adv = np.log(pi), np.log(mu), np.array([1.0, 1.0, -1.0, -1.0])
    stw = geometry.single_token_weight
    for name in ("drpo", "grpo", "dppo_tv"):
        obj = objectives.get(name)
        np.testing.assert_array_equal(stw(obj, lp, lb, adv), obj.weight(lp, lb, adv))
    pairs = [("dppo_tv_recompute", "dppo_tv"), ("dppo_topk_tv", "dppo_tv"), ("decoupled_ppo", "ppo")]
    for new, old in pairs:
        np.testing.assert_array_equal(stw(objectives.get(new), lp, lb, adv), objectives.get(old).weight(lp, lb, adv))
    corrected = objectives.get("drpo", delta=0.2, correction="seq_mis")
    np.testing.assert_array_equal(stw(corrected, lp, lb, adv), objectives.get("drpo", delta=0.2).weight(lp, lb, adv))
    gspo = objectives.get("gspo", eps_low=0.1, eps_high=0.1)
    np.testing.assert_array_equal(stw(gspo, lp, lb, adv), objectives.get("ppo", eps_low=0.1, eps_high=0.1)
                                  .weight(lp, lb, adv))
