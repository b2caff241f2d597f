"""drpo_sim.envs.bandit: the long-tailed bandit's Zipf policy and its rare rewarded tokens."""

import numpy as np
import pytest

from drpo_sim.envs import LongTailBandit
from drpo_sim.policies import log_softmax


@pytest.mark.parametrize("v", [8, 64, 1024, 65536])
def test_bandit_is_zipf_with_rare_rewarded_tokens_on_cpu(v):
    env = LongTailBandit(vocab_size=v)
    logp = log_softmax(env.initial_logits())[0]
    p = np.exp(logp)
    ranks = np.arange(1, v + 1)
    np.testing.assert_allclose(p / p[0], ranks ** -1.1, rtol=1e-12)
    r = env.token_rewards()
    assert np.count_nonzero(r) == env.n_rewarded
    assert r.max() == 1.0 and r[env.rewarded_tokens[-1]] == 1.0  # the rarest rewarded token is the best
    assert np.all(np.diff(env.rewarded_tokens) > 0)
    if v >= 1024:
        assert p[env.rewarded_tokens[-1]] < 0.001  # the optimum is a rare token
    assert env.expected_reward(logp[None, None]) == pytest.approx(p @ r)


def test_bandit_rejects_bad_shapes():
    for kwargs in ({"vocab_size": 4}, {"n_rewarded": 0}, {"reward_min": 2.0}, {"rare_quantile": 0.0},
                   {"zipf_exponent": -1.0}):
        with pytest.raises(ValueError):
            LongTailBandit(**kwargs)
