"""drpo_sim.envs.tabular: the tabular sequence environment's rewards, exact and sampled."""

import numpy as np
import pytest

from drpo_sim.envs import TabularSequence, zipf_logits
from drpo_sim.policies import log_softmax


@pytest.mark.parametrize("reward", ["prefix", "match"])
def test_tabular_expected_reward_matches_monte_carlo_on_cpu(reward):
    env = TabularSequence(vocab_size=6, n_prompts=3, horizon=4, reward=reward, target_max_rank=6)
    rng = np.random.default_rng(0)
    z = env.initial_logits() + rng.normal(size=(env.n_states, env.vocab_size))
    logp = log_softmax(z)[None]
    exact = env.expected_reward(logp)[0]
    # sample 200k responses per prompt, score them with the reward function
    n = 200_000
    p = np.exp(logp[0]).reshape(env.n_prompts, env.horizon, -1)
    cdf = p.cumsum(-1)
    u = rng.random((env.n_prompts, n, env.horizon))
    tokens = (u[..., None] > cdf[:, None]).sum(-1)
    prompts = np.arange(env.n_prompts)[None]
    rewards = env.rewards(prompts, tokens[None])
    assert rewards.mean() == pytest.approx(exact, abs=4 * rewards.std() / np.sqrt(rewards.size))


def test_tabular_reward_by_hand_on_cpu():
    env = TabularSequence(vocab_size=8, n_prompts=1, horizon=4, reward="prefix")
    t = env.targets[0]
    wrong = (t + 1) % 8
    resp = np.array([[t, [t[0], t[1], wrong[2], t[3]], [wrong[0], t[1], t[2], t[3]]]])[None]  # [1, 1, 3, 4]
    np.testing.assert_allclose(env.rewards(np.zeros((1, 1), int), resp)[0, 0], [1.0, 0.5, 0.0])
    env_m = TabularSequence(vocab_size=8, n_prompts=1, horizon=4, reward="match")
    np.testing.assert_allclose(env_m.rewards(np.zeros((1, 1), int), resp)[0, 0], [1.0, 0.75, 0.75])


def test_tabular_structure_depends_on_env_seed_only():
    a, b, c = TabularSequence(env_seed=0), TabularSequence(env_seed=0), TabularSequence(env_seed=1)
    np.testing.assert_array_equal(a.targets, b.targets)
    assert not np.array_equal(a.targets, c.targets)
    z = a.initial_logits()
    np.testing.assert_allclose(np.sort(z, axis=1)[:, ::-1], np.broadcast_to(zipf_logits(a.vocab_size, 1.1), z.shape))
