"""drpo_sim.geometry: the data of the geometry figures, computed directly and held to the math.

(The figures themselves, drawn through ``drpo-sim geometry``, are the command line's tests.)
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from drpo_sim import geometry, objectives
from drpo_sim.geometry import (
    GapConfig,
    GeometryConfig,
    drpo_weight_range,
    gap_curves,
    pi_grid,
    plane_axis,
    weight_curves,
    weight_plane,
)

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
        lp, lb = np.log(rows["pi"].to_numpy()), np.log(rows["mu"].to_numpy())
        extra = {}
        if name in cfg.more:  # one token at its plainest: pi_old = mu, its own sequence, Top-K at K = 1
            pi, mu = rows["pi"].to_numpy(), rows["mu"].to_numpy()
            extra = {"logp_old": lb, "sample_id": np.arange(len(rows)), "topk_tv": np.abs(pi - mu),
                     "topk_kl": objectives.binary_kl(lb, lp)}
        want = obj.weight(lp, lb, (rows["adv_sign"] * rows["abs_adv"]).to_numpy(), **extra)
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


def test_more_objectives_at_one_token_are_their_single_anchor_twins_on_cpu(curves):
    """At pi_old = mu and a sequence of one token: MiniRL is GRPO with its ratio capped at 10,
    decoupled PPO is PPO, GSPO is GRPO's clip at its own widths, Top-K TV at K = 1 is DPPO-TV."""
    def w(name):
        return curves[curves["name"] == name].reset_index(drop=True)

    grpo, ppo = w("grpo"), w("ppo")
    np.testing.assert_array_equal(w("decoupled_ppo")["weight"], ppo["weight"])
    np.testing.assert_array_equal(w("dppo_topk_tv")["weight"], w("dppo_tv")["weight"])
    r = grpo["ratio"].to_numpy()
    np.testing.assert_allclose(w("minirl")["weight"], grpo["weight"] * np.minimum(r, 10.0) / r, rtol=1e-12)
    gspo, a = w("gspo"), grpo["adv_sign"].to_numpy()
    clipped = ((a > 0) & (r > 1 + 4e-4)) | ((a < 0) & (r < 1 - 3e-4))
    np.testing.assert_array_equal(gspo["weight"].to_numpy() == 0, clipped)


def test_gap_curves_are_each_correction_by_hand_on_cpu():
    """Against the engine's gap b = pi_old / mu at pi = pi_old (r = b): each objective's weight as
    its source defines it, written here by hand."""
    cfg = GapConfig(n_b=61)
    d = gap_curves(cfg)
    assert set(d["panel"]) == {"objectives", "corrections"} and (d["pi_old"] < 1).all()
    assert 1.0 in set(d["b"]) and np.allclose(d["pi_old"], d["b"] * cfg.mu)

    def w(label_start, sign):
        rows = d[d["objective"].str.startswith(label_start) & (d["adv_sign"] == sign)]
        return rows["b"].to_numpy(), rows["weight"].to_numpy()

    for sign in (1.0, -1.0):
        b, got = w("pg_is", sign)
        np.testing.assert_array_equal(got, 1.0)
        b, got = w("grpo(eps_low=0.2, eps_high=0.28)+tis(cap=2.0)", sign)
        np.testing.assert_allclose(got, np.minimum(b, 2.0) / b, rtol=1e-12)
        b, got = w("grpo(eps_low=0.2, eps_high=0.28)+is()", sign)
        np.testing.assert_allclose(got, 1.0, rtol=1e-12)
        b, got = w("grpo(eps_low=0.2, eps_high=0.28)+icepop", sign)
        np.testing.assert_array_equal(got, ((b >= 0.5) & (b <= 5.0)).astype(float))
        b, got = w("grpo(eps_low=0.2, eps_high=0.28)+seq_mis", sign)
        np.testing.assert_array_equal(got, (b <= 2.0).astype(float))
        b, got = w("minirl", sign)
        np.testing.assert_allclose(got, np.minimum(b, 10.0) / b, rtol=1e-12)
        b, got = w("decoupled_ppo(eps_low=0.2, eps_high=0.2, is_cap=2.0)", sign)
        np.testing.assert_allclose(got, np.minimum(b, 2.0) / b, rtol=1e-12)
        b, got = w("drpo", sign)
        np.testing.assert_allclose(got, 1 - sign * cfg.mu * (b - 1) / 0.15, rtol=1e-9, atol=1e-12)
        b, got = w("dppo_tv_recompute", sign)
        np.testing.assert_array_equal(got, 1.0)  # anchored to pi_old: the gap is not its to mask
    grpo_alone = d[(d["objective"] == "grpo(eps_low=0.2, eps_high=0.28)") & (d["adv_sign"] == 1.0)]
    np.testing.assert_array_equal(grpo_alone["weight"].to_numpy() == 0, grpo_alone["b"].to_numpy() > 1.28)
