"""drpo_sim.advantages: group-relative and exact advantages, against hand computations."""

import numpy as np
import pytest

from drpo_sim import advantages


def test_group_relative_advantages_by_hand_on_cpu():
    r = np.array([[1.0, 0.0, 0.0, 1.0], [0.5, 0.5, 0.5, 0.5]])
    np.testing.assert_allclose(advantages.group_relative(r), [[0.5, -0.5, -0.5, 0.5], [0, 0, 0, 0]])
    std = np.std([1.0, 0, 0, 1], ddof=1)
    np.testing.assert_allclose(
        advantages.group_relative(r, std_norm=True)[0], np.array([0.5, -0.5, -0.5, 0.5]) / (std + 1e-6)
    )
    with pytest.raises(ValueError):
        advantages.group_relative(np.ones((2, 1)), std_norm=True)


def test_exact_advantages_are_the_infinite_group_limit_on_cpu():
    rewards = np.array([0.0, 1.0, 0.5])
    mu = np.array([0.5, 0.25, 0.25])
    a = advantages.exact(rewards, mu)
    np.testing.assert_allclose(a, rewards - mu @ rewards)
    rng = np.random.default_rng(3)
    draws = rewards[rng.choice(3, size=(2000, 64), p=mu)]
    sd = np.sqrt(mu @ rewards**2 - (mu @ rewards) ** 2)
    np.testing.assert_allclose(advantages.exact(rewards, mu, std_norm=True), (rewards - mu @ rewards) / (sd + 1e-6))
    assert draws.std(ddof=1, axis=1).mean() == pytest.approx(sd, rel=0.02)


@pytest.mark.parametrize("bad", [-0.5, 6.5, float("nan"), float("inf"), True, "2"])
def test_reward_scales_reject_a_spread_outside_zero_to_six_decades_on_cpu(bad):
    with pytest.raises(ValueError, match=r"reward_scale_spread must be in \[0, 6\] decades"):
        advantages.reward_scales(bad, 8)


def test_reward_scales_span_the_spread_with_geometric_mean_one_on_cpu():
    for spread, n in ((1.0, 8), (3.0, 5)):
        s = advantages.reward_scales(spread, n)
        assert s.max() / s.min() == pytest.approx(10.0 ** spread)
        assert np.exp(np.log(s).mean()) == pytest.approx(1.0)
    assert np.array_equal(advantages.reward_scales(4.0, 1), np.ones(1))
