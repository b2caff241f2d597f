"""Environments with a long-tailed vocabulary, sequence-level rewards and a known optimum.

Both environments expose the same small interface, which the simulator relies on:

* ``n_prompts``, ``horizon`` (tokens per sample), ``vocab_size`` and ``n_states``
  (``n_prompts * horizon``; state ``s = prompt * horizon + position``);
* ``initial_logits()``: ``[n_states, vocab_size]`` logits of the initial policy (a Zipf law);
* ``rewards(prompts, tokens)``: the verifiable sequence reward of sampled responses,
  ``prompts [N, P]`` and ``tokens [N, P, G, T]`` give ``[N, P, G]`` rewards in ``[0, 1]``;
* ``expected_reward(logp, probs=None)``: the exact expected reward of a policy
  ``logp [N, n_states, V]``, averaged over prompts (no sampling); ``probs = exp(logp)`` may be
  passed when already computed;
* ``token_rewards()`` (bandit only): the reward of each token, for the exact-gradient mode.

:mod:`drpo_sim.envs.formats` is not one of them: a one-decision world of answer formats of different
lengths for the loss aggregation's length bias (tutorial 8), with its own exact expected gradient.
"""

from drpo_sim.envs.bandit import LongTailBandit, zipf_logits
from drpo_sim.envs.tabular import TabularSequence

ENVIRONMENTS = ("bandit", "tabular")

__all__ = ["ENVIRONMENTS", "LongTailBandit", "TabularSequence", "zipf_logits"]
