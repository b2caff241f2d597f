"""The explorer's numbers (:mod:`drpo_sim.explore.data`): curves, boundaries and regions.

The ``_on_cpu`` tests hold every number the explorer shows against the registry
(:mod:`drpo_sim.objectives`): the boundaries it finds by bisection against the objects' own
parameters, the region images against ``Objective.regions``.
"""

from __future__ import annotations

import numpy as np
import pytest

from drpo_sim import geometry, objectives
from drpo_sim.explore import data

MUS = (1e-3, 0.01, 0.1, 0.5, 0.9)


def test_curve_is_the_registry_weight_on_cpu():
    for name in objectives.available():
        obj = objectives.get(name)
        for mu in MUS:
            for adv in (1.0, -0.25):
                c = data.curve(obj, mu, adv)
                assert mu in c.pi and np.all(np.diff(c.pi) > 0)
                lp, lb = np.log(c.pi), np.full_like(c.pi, np.log(mu))
                np.testing.assert_array_equal(c.w, geometry.single_token_weight(obj, lp, lb, adv))


@pytest.mark.parametrize(
    ("name", "params", "expected"),
    [
        # docs/reference.md: the clip is active at r = 1 + eps_high (A > 0) and r = 1 - eps_low (A < 0)
        ("ppo", {"eps_low": 0.2, "eps_high": 0.28}, lambda mu, s: mu * (1.28 if s > 0 else 0.8)),
        ("cispo", {"eps_high": 0.28}, lambda mu, s: mu * 1.28),
        # the TV mask at pi - mu = delta_high (A > 0) and -delta_low (A < 0)
        ("dppo_tv", {"delta_low": 0.1, "delta_high": 0.3}, lambda mu, s: mu + (0.3 if s > 0 else -0.1)),
        # the zeros of the weight: DRPO pi* = mu + sign(A) delta, SPO r* = 1 + sign(A) eps
        ("drpo", {"delta": 0.15}, lambda mu, s: mu + s * 0.15),
        ("spo", {"eps": 0.2}, lambda mu, s: mu * (1 + s * 0.2)),
    ],
)
def test_boundaries_sit_where_the_parameters_put_them_on_cpu(name, params, expected):
    obj = objectives.get(name, **params)
    for mu in MUS:
        for sign in (1.0, -1.0):
            c = data.curve(obj, mu, sign)
            want = expected(mu, sign)
            if not data.PI_MIN < want < 1 - data.PI_MIN:
                assert len(c.bounds.pi) == 0, (name, mu, sign, c.bounds.pi)
                continue
            assert len(c.bounds.pi) == 1, (name, mu, sign, c.bounds.pi)
            np.testing.assert_allclose(c.bounds.pi[0], want, rtol=1e-9)
            # the regions on either side are the ones the boundary reports
            eps = 1e-7 * min(want, 1 - want)
            near, far = (want - eps, want + eps) if want > mu else (want + eps, want - eps)
            codes = data.region_codes(obj.weight(np.log([near, far]), np.log(mu), sign))
            assert (codes[0], codes[1]) == (c.bounds.inner[0], c.bounds.outer[0])


def test_boundaries_are_vectorised_over_cases_on_cpu():
    obj = objectives.get("drpo", delta=0.2)
    mu = np.array([0.01, 0.3, 0.6])
    adv = np.array([1.0, -1.0, 1.0])
    pi = np.stack([data.pi_axis(m)[:400] for m in mu])
    b = data.boundaries(obj, pi, mu, adv)
    for i in range(3):
        single = data.boundaries(obj, pi[i : i + 1], mu[i : i + 1], adv[i : i + 1])
        np.testing.assert_array_equal(b.of(i).pi, single.pi)


def test_region_codes_follow_objective_regions_on_cpu():
    w = np.array([1.0, 0.0, 0.5, -0.3, 1.7, np.nextafter(1.0, 2.0)])
    np.testing.assert_array_equal(data.region_codes(w), [0, 1, 2, 3, 4, 4])
    assert data.REGION_NAMES[1:] == objectives.Regions.NAMES


def test_plane_is_the_regions_of_the_registry_weight_on_cpu():
    axis = data.plane_axis(40)
    for name, params in (("ppo", {}), ("dppo_tv", {}), ("drpo", {"delta": 0.15}), ("spo", {"eps": 0.2})):
        obj = objectives.get(name, **params)
        codes = data.plane_codes(obj, np.array([1.0, -1.0]), n=40)
        assert codes.shape == (2, 40, 40) and codes.dtype == np.uint8
        for k, sign in enumerate((1.0, -1.0)):
            for i, j in ((0, 39), (39, 0), (20, 5), (7, 33)):  # rows: pi, columns: mu
                reg = obj.regions(np.log(axis[i]), np.log(axis[j]), sign)
                flags = [bool(getattr(reg, n)) for n in objectives.Regions.NAMES]
                assert codes[k, i, j] == (flags.index(True) + 1 if any(flags) else 0)
    start, width = data.plane_extent()
    assert np.isclose(start, data.to_logit(data.PI_MIN)) and np.isclose(start + width, data.to_logit(1 - data.PI_MIN))


# the engine's gap b = pi_old / mu -------------------------------------------------------------
GAPS = (0.1, 0.5, 1.0, 2.0, 4.0, 10.0)
THREE_POLICY = (("minirl", {}), ("decoupled_ppo", {}), ("dppo_tv_recompute", {}))
CORRECTED = (("grpo", {"correction": "tis"}), ("grpo", {"correction": "icepop"}), ("grpo", {"correction": "seq_mis"}))


@pytest.mark.parametrize(("name", "params"), THREE_POLICY + CORRECTED)
def test_curve_at_a_gap_is_the_registry_weight_at_pi_old_on_cpu(name, params):
    obj = objectives.get(name, **params)
    assert obj.needs_old
    for mu in MUS:
        for adv in (1.0, -0.25):
            today = data.curve(obj, mu, adv)  # pi_old = mu, as before the gap control
            for b in GAPS:
                c = data.curve(obj, mu, adv, gap=b)
                if b * mu >= 1.0:  # no pi_old < 1: not drawn, never clamped
                    assert c.pi.size == c.w.size == c.bounds.pi.size == 0, (name, mu, b)
                    continue
                np.testing.assert_array_equal(c.pi, data.pi_axis(mu))
                lp, lb = np.log(c.pi), np.full_like(c.pi, np.log(mu))
                want = geometry.single_token_weight(obj, lp, lb, adv, logp_old=np.log(b * mu))
                np.testing.assert_array_equal(c.w, want)
                if b == 1.0:  # at b = 1 nothing changes
                    np.testing.assert_array_equal(c.w, today.w)
                    np.testing.assert_array_equal(c.bounds.pi, today.bounds.pi)


def test_objectives_that_do_not_read_pi_old_ignore_the_gap_on_cpu():
    for name in ("grpo", "drpo", "dppo_tv", "gspo", "dppo_topk_tv"):
        obj = objectives.get(name)
        assert not obj.needs_old
        for b in (0.1, 4.0, 200.0):  # even b mu >= 1: they are drawn, unchanged
            c, today = data.curve(obj, 0.5, 1.0, gap=b), data.curve(obj, 0.5, 1.0)
            np.testing.assert_array_equal(c.w, today.w)
            np.testing.assert_array_equal(c.bounds.pi, today.bounds.pi)
        np.testing.assert_array_equal(data.plane_codes(obj, np.array([1.0]), n=30, gap=4.0),
                                      data.plane_codes(obj, np.array([1.0]), n=30))


def test_corrections_at_a_gap_on_cpu():
    """What the docs quote: GRPO+TIS (cap 2) at b = 4 halves the weight at pi = pi_old; IcePop keeps
    b in [0.5, 5] and masks the rest (at the thresholds themselves float rounding of log(b mu) - log(mu)
    decides, so they are not tested); MiniRL's cap 10 on r = pi/mu attenuates beyond pi = 10 mu."""
    mu = 0.01
    tis, icepop = objectives.get("grpo", correction="tis"), objectives.get("grpo", correction="icepop")
    c = data.curve(tis, mu, 1.0, gap=4.0)
    inside = c.pi < c.bounds.pi[0]
    np.testing.assert_allclose(c.w[inside], 0.5, rtol=1e-12)  # c / b = 2 / 4 up to GRPO's clip on pi / pi_old
    np.testing.assert_allclose(c.bounds.pi, [1.28 * 4.0 * mu], rtol=1e-9)
    assert (c.bounds.inner[0], c.bounds.outer[0]) == (2, 1)  # attenuated -> masked
    for b, kept in ((0.4, False), (0.63, True), (4.0, True), (6.3, False)):
        w = data.curve(icepop, mu, 1.0, gap=b).w
        assert np.any(w == 1.0) == kept and (kept or np.all(w == 0.0)), b
    minirl = data.curve(objectives.get("minirl"), mu, -1.0, gap=4.0)
    np.testing.assert_allclose(minirl.bounds.pi, [0.8 * 4.0 * mu, 10.0 * mu], rtol=1e-9)  # rho clip, then the cap


def test_plane_at_a_gap_on_cpu():
    n = 40
    axis = data.plane_axis(n)
    for obj in (objectives.get("minirl"), objectives.get("grpo", correction="tis")):
        for b in (0.5, 4.0):
            codes = data.plane_codes(obj, np.array([1.0, -1.0]), n=n, gap=b)
            assert codes.shape == (2, n, n)
            off = b * axis >= 1.0  # columns (mu) with no pi_old < 1
            assert np.all(codes[:, :, off] == data.NOT_DRAWN) and (off.any() == (b > 1))
            assert not np.any(codes[:, :, ~off] == data.NOT_DRAWN)
            for k, sign in enumerate((1.0, -1.0)):
                for i, j in ((0, 3), (39, 1), (20, 5), (7, 12)):  # rows: pi, columns: mu (all with b mu < 1)
                    w = geometry.single_token_weight(obj, np.log(axis[i]), np.log(axis[j]), sign,
                                                     logp_old=np.log(b * axis[j]))
                    assert codes[k, i, j] == data.region_codes(np.atleast_1d(w))[0]
        np.testing.assert_array_equal(data.plane_codes(obj, np.array([1.0]), n=n, gap=1.0),
                                      data.plane_codes(obj, np.array([1.0]), n=n))
    assert len(data.PALETTE) == data.NOT_DRAWN + 1
