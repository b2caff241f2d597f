"""The trust-region facts of REFERENCE.md: weight bounds, identities, per-token maximisers."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from scipy.optimize import minimize_scalar
from strategies import token_batches

import drpo_sim as ds

PAPER_DELTAS = [12.5, 2.5, 1.0, 0.5, 0.15]


@pytest.mark.parametrize("delta", PAPER_DELTAS)
@given(batch=token_batches())
def test_drpo_weight_stays_in_its_bounds_on_cpu(delta, batch):
    """Claim 1: ``1 - 1/delta <= w <= 1 + 1/delta`` for every token, however rare."""
    w = ds.objectives.get("drpo", delta=delta).weight(*batch)
    tol = 1e-12
    assert (w >= 1 - 1 / delta - tol).all() and (w <= 1 + 1 / delta + tol).all()


@pytest.mark.parametrize("delta", [0.05, 0.15, 0.5])
@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_drpo_weight_is_zero_at_the_boundary_and_corrective_beyond_on_cpu(delta, sign):
    """Claim 3: at ``abs(pi - mu) = delta`` in the advantage's direction ``w = 0``; beyond it ``w < 0``."""
    drpo = ds.objectives.get("drpo", delta=delta)
    mu = np.linspace(0.01, 0.99, 99)
    boundary = mu + sign * delta
    ok = (boundary > 0) & (boundary < 1)
    mu, boundary = mu[ok], boundary[ok]
    adv = np.full_like(mu, sign)
    np.testing.assert_allclose(drpo.weight(np.log(boundary), np.log(mu), adv), 0.0, atol=1e-9)
    inside = mu + sign * delta * 0.5
    assert (drpo.weight(np.log(inside), np.log(mu), adv) > 0).all()
    beyond = np.clip(mu + sign * delta * 1.5, 1e-12, 1.0)
    moved = np.abs(beyond - mu) > delta
    assert moved.any()
    assert (drpo.weight(np.log(beyond[moved]), np.log(mu[moved]), adv[moved]) < 0).all()
    # and against the advantage's direction the weight exceeds 1: the token is pulled back
    against = np.clip(mu - sign * delta * 0.5, 1e-12, 1.0)
    assert (drpo.weight(np.log(against), np.log(mu), adv) > 1).all()


def test_drpo_weight_never_turns_corrective_at_the_papers_delta_on_cpu():
    """Claim 3, second half: with ``delta = 12.5`` no shift (at most 1) reaches the boundary."""
    grid = np.linspace(1e-6, 1.0, 600)
    mu, pi = np.meshgrid(grid, grid)
    for sign in (1.0, -1.0):
        w = ds.objectives.get("drpo", delta=12.5).weight(np.log(pi), np.log(mu), sign)
        assert w.min() >= 1 - 1 / 12.5 - 1e-12 and w.max() <= 1 + 1 / 12.5 + 1e-12
        assert (w > 0).all()
        np.testing.assert_allclose([w.min(), w.max()], [0.92, 1.08], atol=1e-5)


@pytest.mark.parametrize("bound", [1e2, 1e4, 1e5])
def test_spo_weight_exceeds_any_bound_as_mu_goes_to_zero_on_cpu(bound):
    """Claim 1: for a fixed shift, SPO's weight grows like ``1/mu``; DRPO's does not move."""
    spo, drpo = ds.objectives.get("spo", eps=12.5), ds.objectives.get("drpo", delta=12.5)
    shift = 0.05
    mu = np.logspace(-1, -8, 200)  # r stays below the documented cap e^20
    pi = mu + shift
    w_spo = spo.weight(np.log(pi), np.log(mu), 1.0)
    w_drpo = drpo.weight(np.log(pi), np.log(mu), 1.0)
    assert np.abs(w_spo).max() > bound
    first = int(np.argmax(np.abs(w_spo) > bound))
    assert np.all(np.abs(w_spo[first:]) > bound)  # and stays past it as mu keeps falling
    np.testing.assert_allclose(w_drpo, 1 - shift / 12.5, rtol=1e-9)
    # 1/mu growth: |w| * mu tends to shift / eps
    np.testing.assert_allclose(np.abs(w_spo[-1]) * mu[-1], shift / 12.5, rtol=1e-3)


@st.composite
def vocab_policies(draw):
    """Two long-tailed distributions over a vocabulary and an advantage per token."""
    v = draw(st.integers(2, 400))
    seed = draw(st.integers(0, 2**32 - 1))
    alpha = draw(st.sampled_from([0.05, 0.3, 1.0, 5.0]))
    rng = np.random.default_rng(seed)
    # floored at 1e-7 so that r = pi/mu stays below the documented ratio cap e^20
    mu = rng.dirichlet(np.full(v, alpha)) + 1e-7
    pi = rng.dirichlet(np.full(v, alpha)) + 1e-7
    adv = rng.normal(size=v) * draw(st.sampled_from([1e-3, 1.0, 1e3]))
    return pi / pi.sum(), mu / mu.sum(), adv


@given(vocab_policies())
def test_chi_square_and_l2_identities_enumerated_over_the_vocabulary_on_cpu(policies):
    """Claim 2: ``E_mu[abs(A)(r-1)^2] = sum abs(A)(pi-mu)^2/mu`` (SPO), ``E_mu[abs(A) mu (r-1)^2] = sum abs(A)(pi-mu)^2`` (DRPO).

    The left sides are read off the objectives' own surrogates: the penalty is ``r A - J``.
    """
    pi, mu, adv = policies
    lp, lb = np.log(pi), np.log(mu)
    eps = delta = 0.7
    r = pi / mu
    spo_penalty = 2 * eps * (r * adv - ds.objectives.get("spo", eps=eps).surrogate(lp, lb, adv))
    drpo_penalty = 2 * delta * (r * adv - ds.objectives.get("drpo", delta=delta).surrogate(lp, lb, adv))
    chi2 = np.sum(np.abs(adv) * (pi - mu) ** 2 / mu)
    l2 = np.sum(np.abs(adv) * (pi - mu) ** 2)
    scale = np.sum(np.abs(adv) * r * mu) + np.sum(np.abs(adv) * r**2 * mu)  # size of the cancelling terms
    assert abs(np.sum(mu * spo_penalty) - chi2) <= 1e-9 * scale + 1e-300
    assert abs(np.sum(mu * drpo_penalty) - l2) <= 1e-9 * scale + 1e-300
    # with abs(A) = 1 the two are the chi-square divergence and the squared l2 distance
    ones = np.ones_like(adv)
    chi2_div = np.sum(mu * 2 * eps * (r - ds.objectives.get("spo", eps=eps).surrogate(lp, lb, ones)))
    np.testing.assert_allclose(chi2_div, np.sum(pi**2 / mu) - 1.0, rtol=1e-7, atol=1e-9)


def _argmax_pi(obj, mu: float, sign: float) -> float:
    """Maximise the surrogate over ``pi in (0, 1)`` with ``mu`` and ``A`` fixed (bounded search on logp)."""
    lb = np.log(np.array([mu]))
    res = minimize_scalar(
        lambda x: -float(obj.surrogate(np.array([x]), lb, np.array([sign]))[0]),
        bounds=(math.log(1e-9), 0.0),
        method="bounded",
        options={"xatol": 1e-12},
    )
    return math.exp(res.x)


@pytest.mark.parametrize("delta", [0.05, 0.15, 0.3])
@pytest.mark.parametrize("mu", [0.001, 0.1, 0.4, 0.7])
@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_drpo_surrogate_peaks_at_mu_plus_sign_delta_on_cpu(delta, mu, sign):
    """``pi* = mu + sign(A) delta`` where that lies in (0, 1); otherwise the peak is at the edge."""
    pi_star = _argmax_pi(ds.objectives.get("drpo", delta=delta), mu, sign)
    target = mu + sign * delta
    expected = target if 0 < target < 1 else (1.0 if sign > 0 else 1e-9)
    assert pi_star == pytest.approx(expected, abs=1e-6)


@pytest.mark.parametrize("eps", [0.2, 0.5])
@pytest.mark.parametrize("mu", [0.001, 0.1, 0.4])
@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_spo_surrogate_peaks_at_ratio_one_plus_sign_eps_on_cpu(eps, mu, sign):
    pi_star = _argmax_pi(ds.objectives.get("spo", eps=eps), mu, sign)
    assert pi_star / mu == pytest.approx(1 + sign * eps, abs=1e-6)


def _gradient_flow(obj, mu: float, sign: float, steps: int = 4000, lr: float = 2e-3) -> tuple[float, float]:
    """Ascend ``J`` in ``logp`` from ``pi = mu`` along ``grad_logp``; return the final ``pi`` and gradient.

    The step ``lr g / (1 + abs(g))`` has the same rest points as plain ascent but never jumps
    more than ``lr`` nats, so a hard boundary is overshot by at most one small step.
    """
    lb = np.array([math.log(mu)])
    adv = np.array([sign])
    logp = lb.copy()
    for _ in range(steps):
        g = obj.grad_logp(logp, lb, adv)
        logp = np.minimum(logp + lr * g / (1.0 + np.abs(g)), 0.0)  # steps of at most lr nats
    return float(np.exp(logp[0])), float(obj.grad_logp(logp, lb, adv)[0])


@pytest.mark.parametrize(
    "name,params,mu,sign,expected",
    [
        ("ppo", {"eps_low": 0.2, "eps_high": 0.28}, 0.3, 1.0, 0.3 * 1.28),
        ("ppo", {"eps_low": 0.2, "eps_high": 0.28}, 0.3, -1.0, 0.3 * 0.8),
        ("grpo", {}, 0.01, 1.0, 0.01 * 1.28),
        ("dppo_tv", {"delta": 0.15}, 0.3, 1.0, 0.45),
        ("dppo_tv", {"delta": 0.15}, 0.3, -1.0, 0.15),
        ("dppo_tv", {"delta": 0.15}, 0.001, 1.0, 0.151),
    ],
)
def test_ppo_and_dppo_stop_at_their_boundaries_on_cpu(name, params, mu, sign, expected):
    """PPO and DPPO have no interior peak: the gradient is ``A r`` until the boundary, then exactly 0."""
    obj = ds.objectives.get(name, **params)
    pi_end, g_end = _gradient_flow(obj, mu, sign)
    assert g_end == 0.0
    assert pi_end == pytest.approx(expected, rel=2e-2)  # within one step past the boundary
    assert (pi_end - expected) * sign >= 0  # it stops just after crossing, not before


@pytest.mark.parametrize("mu,sign", [(0.3, 1.0), (0.01, 1.0), (0.6, -1.0)])
def test_drpo_and_spo_gradient_flows_come_to_rest_at_their_maximisers_on_cpu(mu, sign):
    drpo_pi, drpo_g = _gradient_flow(ds.objectives.get("drpo", delta=0.15), mu, sign, steps=20000, lr=0.05)
    assert drpo_pi == pytest.approx(mu + sign * 0.15, abs=1e-6) and abs(drpo_g) < 1e-8
    spo_pi, _ = _gradient_flow(ds.objectives.get("spo", eps=0.5), mu, sign, steps=20000, lr=0.05)
    assert spo_pi / mu == pytest.approx(1 + sign * 0.5, abs=1e-6)


def test_pg_is_has_no_rest_point_on_cpu():
    """Without a trust region the flow runs to the edge of the simplex (ever slower downwards, as ``r -> 0``)."""
    pg = ds.objectives.get("pg_is")
    pi_up, _ = _gradient_flow(pg, 0.3, 1.0, steps=20000, lr=0.05)
    assert pi_up == 1.0
    pi_down = [_gradient_flow(pg, 0.3, -1.0, steps=n, lr=0.05)[0] for n in (1000, 4000, 16000)]
    assert pi_down[0] > pi_down[1] > pi_down[2] and pi_down[2] < 1e-3
