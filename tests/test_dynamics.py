"""drpo_sim.dynamics, frozen-mu dynamics: every rest point against docs/reference.md, and its local stability."""

import numpy as np
import pytest

from drpo_sim import dynamics, objectives
from drpo_sim.dynamics import FlowConfig, expected_rest_point, iterate, logit, rest_point_table, velocity


@pytest.fixture(scope="module")
def table():
    return rest_point_table()


def test_every_rest_point_matches_reference_on_cpu(table):
    """DRPO at mu + sign(A) delta, SPO at r = 1 + sign(A) eps, PPO/GRPO/DPPO at their boundaries,
    pg_is and cispo nowhere: docs/reference.md, 'Per-token maximisers'."""
    assert (table["kind"] == table["expected_kind"]).all(), table[table["kind"] != table["expected_kind"]]
    inner = table[table["kind"] == "interior"]
    assert set(inner["name"]) == {"drpo", "spo"}
    np.testing.assert_allclose(inner["pi_rest"], inner["expected_pi"], atol=1e-9)
    np.testing.assert_allclose(inner["weight_at_rest"], 0.0, atol=1e-8)
    bound = table[table["kind"] == "boundary"]
    assert set(bound["name"]) == {"ppo", "grpo", "dppo_tv", "dppo_kl"}
    lo = np.minimum(bound["pi_before"], bound["pi_rest"])
    hi = np.maximum(bound["pi_before"], bound["pi_rest"])
    assert ((lo <= bound["expected_pi"]) & (bound["expected_pi"] <= hi)).all()  # the last step crossed the boundary
    assert (bound["weight_at_rest"] == 0).all()
    assert (bound["eigenvalue"] == 0).all() and (bound["spectral_radius"] == 1).all()
    assert (bound["stability"] == "neutral").all()
    run = table[table["kind"] == "runaway"]
    toward_edge = np.sign(run["pi_rest"] - run["mu"]) == run["adv_sign"]
    assert toward_edge.all()
    pg = table[table["name"] == "pg_is"]
    assert (pg["kind"] == "runaway").all()
    np.testing.assert_allclose(pg["pi_rest"], np.where(pg["adv_sign"] > 0, 1.0, 0.0), atol=1e-5)


def test_drpo_rest_points_are_stable_with_the_closed_form_eigenvalue_on_cpu(table):
    d = table[(table["name"] == "drpo") & (table["kind"] == "interior")]
    assert len(d) >= 10 and d["stable"].all() and (d["stability"] == "stable").all()
    delta = d["objective"].str.extract(r"delta=([\d.]+)")[0].astype(float)
    p = d["pi_rest"]
    np.testing.assert_allclose(d["eigenvalue"], -(p**2) * (1 - p) ** 2 / delta, rtol=1e-5)
    np.testing.assert_allclose(d["jacobian"], 1 + FlowConfig().lr * d["eigenvalue"])
    assert (d["spectral_radius"] < 1).all()


def test_spo_eigenvalue_and_stiffness_on_cpu(table):
    s = table[(table["name"] == "spo") & (table["kind"] == "interior")]
    eps = s["objective"].str.extract(r"eps=([\d.]+)")[0].astype(float)
    p, r = s["pi_rest"], s["pi_rest"] / s["mu"]
    np.testing.assert_allclose(s["eigenvalue"], -p * r * (1 - p) ** 2 / eps, rtol=1e-5)
    assert s["stable"].all()


def test_masks_are_neutral_inside_and_pg_is_never_rests_on_cpu():
    grpo = objectives.get("grpo")
    mu = np.array([0.1])
    z_inside = logit(np.array([0.5]))  # r = 5, far past the clip for A > 0
    assert velocity(grpo, z_inside, mu, np.array([1.0]))[0] == 0.0
    pi, _, _, conv = iterate(objectives.get("pg_is"), np.array([0.2, 0.2]), np.array([1.0, -1.0]))
    assert not conv.any() and pi[0] > 1 - 1e-5 and pi[1] < 1e-5


def test_expected_update_is_the_mean_over_sampled_tokens_on_cpu():
    """v(z) = mu dJ/dlogp (1 - pi): the expectation over a ~ mu of the token's logit update,
    whose non-sampled branch contributes nothing (the rest carries no advantage)."""
    obj = objectives.get("drpo", delta=0.3)
    mu, pi, adv = 0.2, 0.35, 1.0
    v = velocity(obj, logit(np.array([pi])), np.array([mu]), np.array([adv]))[0]
    g = obj.grad_logp(np.log(pi), np.log(mu), adv)
    assert v == pytest.approx(mu * g * (1 - pi))
    assert v == pytest.approx(mu * adv * (pi / mu) * (1 - (pi - mu) / 0.3) * (1 - pi))


def test_expected_rest_point_rejects_unknown_objectives():
    with pytest.raises(ValueError, match="no rest point"):
        expected_rest_point("drpo_k3", {"delta": 1.0}, 0.5, 1.0)
    kind, p = expected_rest_point("dppo_kl", {"delta": 0.05, "delta_low": None, "delta_high": None}, 0.3, 1.0)
    assert kind == "boundary"
    assert float(objectives.binary_kl(np.log(0.3), np.log(p))) == pytest.approx(0.05)


def test_flow_field_shapes_and_directions_on_cpu():
    field, rest = dynamics.flow_field((("drpo", {"delta": 0.15}),), n=21)
    assert len(field) == 2 * 21 * 21 and len(rest) == 2 * 21
    up = field[(field["adv_sign"] == 1) & (np.isclose(field["pi"], field["mu"]))]
    assert (up["dpi"] > 0).all()  # on-policy, a positive advantage pushes pi up
    ok = rest[rest["converged"]]
    np.testing.assert_allclose(ok["pi_rest"], ok["expected_pi"], atol=1e-9)
