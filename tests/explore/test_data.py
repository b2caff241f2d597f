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
