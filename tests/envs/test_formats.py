"""drpo_sim.envs.formats: the answer-formats world's exact expected gradient under each loss aggregation."""

import dataclasses

import numpy as np
import pytest

from drpo_sim import objectives
from drpo_sim.advantages import group_relative
from drpo_sim.envs.formats import FormatWorld

WORLD = FormatWorld(lengths=(3, 16, 5, 12), success=(0.5, 0.7, 0.2, 0.1), group_size=4, horizon=16)
THETAS = [np.zeros(4), np.array([0.3, -1.0, 0.7, 0.1]), np.array([-2.0, 1.5, 0.0, -0.5])]


@pytest.mark.parametrize("theta", THETAS)
def test_constant_normalisers_give_a_multiple_of_the_true_gradient_on_cpu(theta):
    """c = 1/G per token: E[sum_i c A_i (e_k - pi)] = (G - 1)/G * pi (p - E[R]) exactly (the group mean
    includes the response itself); the constant horizon divides it by H once more."""
    g, h = WORLD.group_size, WORLD.horizon
    truth = WORLD.true_gradient(theta)
    np.testing.assert_allclose(WORLD.expected_gradient(theta, "seq-mean-token-sum"), (g - 1) / g * truth,
                               rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(WORLD.expected_gradient(theta, "seq-mean-token-sum-norm"), (g - 1) / g / h * truth,
                               rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("theta", THETAS)
def test_grpo_aggregation_is_the_length_weighted_gradient_on_cpu(theta):
    """seq-mean-token-mean: c_i = 1/(G L_i), so E = (G - 1)/G * sum_k pi_k (p_k - E[R]) / L_k (e_k - pi)."""
    g = WORLD.group_size
    pi, p, n = WORLD.policy(theta), np.array(WORLD.success), np.array(WORLD.lengths)
    s = pi * (p - pi @ p) / n
    want = (g - 1) / g * (s - s.sum() * pi)
    np.testing.assert_allclose(WORLD.expected_gradient(theta, "seq-mean-token-mean"), want, rtol=1e-12, atol=1e-15)


def test_expected_gradient_agrees_with_sampled_groups_on_cpu():
    """The enumeration against a Monte Carlo mean of the sampled estimator, for every mode (token-mean
    has no closed form): within 5 standard errors."""
    rng = np.random.default_rng(3)
    theta = THETAS[1]
    pi, n = WORLD.policy(theta), 400_000
    formats = rng.choice(WORLD.k, size=(n, WORLD.group_size), p=pi)
    rewards = (rng.random(formats.shape) < np.array(WORLD.success)[formats]).astype(float)
    adv = group_relative(rewards)
    for mode in objectives.AGG_MODES:
        coef = WORLD.first_coefficients(formats, mode) * adv
        per_group = np.einsum("ng,ngk->nk", coef, np.eye(WORLD.k)[formats] - pi)
        mean, se = per_group.mean(axis=0), per_group.std(axis=0, ddof=1) / np.sqrt(n)
        assert np.all(np.abs(mean - WORLD.expected_gradient(theta, mode)) < 5 * se + 1e-15), mode


def test_token_mean_is_one_constant_per_group_on_cpu():
    formats = np.array([[0, 1, 1, 3], [2, 2, 0, 1]])
    c = WORLD.first_coefficients(formats, "token-mean")
    lengths = np.array(WORLD.lengths)[formats]
    np.testing.assert_allclose(c, 1.0 / lengths.sum(axis=1, keepdims=True) * np.ones_like(c), rtol=1e-15)
    np.testing.assert_allclose(WORLD.first_coefficients(formats, "seq-mean-token-mean"),
                               1.0 / (WORLD.group_size * lengths), rtol=1e-15)


def test_another_objective_on_policy_gives_the_same_gradient_on_cpu():
    """On-policy (r = 1) the registry's weight of PPO, DRPO or DPPO is 1: the aggregation alone matters."""
    theta = THETAS[2]
    for name in ("grpo", "drpo", "dppo_tv"):
        other = dataclasses.replace(WORLD, objective=name)
        for mode in objectives.AGG_MODES:
            np.testing.assert_allclose(other.expected_gradient(theta, mode), WORLD.expected_gradient(theta, mode),
                                       rtol=1e-12, atol=1e-15)


def test_flow_and_training_on_the_default_world_on_cpu():
    """The notebook's world: the constant normaliser follows the true gradient's path step for step; GRPO's
    aggregation reaches the careful format later, and keeps more long wrong answers than short ones."""
    world = FormatWorld()
    truth, norm, grpo = world.flow(None, 200), world.flow("seq-mean-token-sum-norm", 200), world.flow(
        "seq-mean-token-mean", 200)
    np.testing.assert_allclose(norm, truth, rtol=1e-9, atol=1e-12)
    first = [int(np.argmax(f[:, 1] >= 0.9)) for f in (truth, grpo)]
    assert 0 < first[0] < first[1]
    assert grpo[99, 3] / grpo[99, 2] > 2.0 and abs(truth[99, 3] / truth[99, 2] - 1.0) < 1e-9
    pi = world.train("seq-mean-token-mean", seeds=8, steps=20, seed=5)
    assert pi.shape == (20, 8, world.k)
    np.testing.assert_allclose(pi.sum(axis=-1), 1.0, rtol=1e-12)
    np.testing.assert_array_equal(pi, world.train("seq-mean-token-mean", seeds=8, steps=20, seed=5))


@pytest.mark.parametrize(("changes", "message"), [
    ({"lengths": (8, 64)}, "one entry per format"),
    ({"lengths": (8, 65, 8, 64)}, "horizon"),
    ({"success": (0.5, 1.5, 0.1, 0.1)}, r"\[0, 1\]"),
    ({"group_size": 1}, "at least 2"),
    ({"objective": "nope"}, "nope"),
])
def test_bad_worlds_are_refused_on_cpu(changes, message):
    with pytest.raises((ValueError, KeyError), match=message):
        dataclasses.replace(FormatWorld(), **changes)


def test_too_many_combinations_is_a_clear_error_on_cpu():
    with pytest.raises(ValueError, match="combinations"):
        dataclasses.replace(FormatWorld(), group_size=16).expected_gradient(np.zeros(4), "token-mean")
