"""A tabular-softmax sequence environment with a verifiable terminal reward.

Each of ``n_prompts`` prompts has a hidden target sequence of ``horizon`` tokens. A response is
sampled token by token from a softmax over ``vocab_size`` tokens in state ``(prompt, position)``
(the state does not depend on earlier tokens, which keeps the exact expected reward in closed
form while the reward still couples the tokens of a sample). The reward is computed once per
response and, as in LLM RL, its advantage is broadcast to every token of the response:

* ``reward="prefix"``: the length of the correct prefix divided by ``T`` (one early mistake
  spoils the rest, like a wrong step in a derivation): ``R = (1/T) sum_k prod_{t<=k} 1[y_t = y*_t]``;
* ``reward="match"``: the fraction of positions equal to the target, ``R = (1/T) sum_t 1[y_t = y*_t]``.

Every state's initial policy is a Zipf law (exponent ``zipf_exponent``) over a state-specific random
ordering of the vocabulary; each target token is drawn with a log-uniform rank in
``[1, target_max_rank]`` (default ``V / 4``), so many targets are rare under the initial policy.
The structure (orderings and targets) is fixed by ``env_seed``, not by the run's seed: every seed
of a run trains on the same task.

Exact expected reward with ``q_t = pi(y*_t | prompt, t)``: prefix ``(1/T) sum_k prod_{t<=k} q_t``,
match ``(1/T) sum_t q_t``, averaged over prompts.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np

from drpo_sim.envs.bandit import zipf_logits

REWARDS = ("prefix", "match")


@dataclass(frozen=True)
class TabularSequence:
    vocab_size: int = 64
    n_prompts: int = 8
    horizon: int = 8
    zipf_exponent: float = 1.1
    reward: str = "prefix"
    target_max_rank: int = 0
    env_seed: int = 0

    def __post_init__(self) -> None:
        if not 2 <= self.vocab_size <= 2**20:
            raise ValueError(f"vocab_size must be in [2, 2**20], got {self.vocab_size}")
        if self.n_prompts < 1 or self.horizon < 1:
            raise ValueError(f"n_prompts and horizon must be >= 1, got {self.n_prompts} and {self.horizon}")
        if self.reward not in REWARDS:
            raise ValueError(f"unknown reward {self.reward!r}; valid: {', '.join(REWARDS)}")
        if not 0 <= self.target_max_rank <= self.vocab_size:
            raise ValueError(f"target_max_rank must be in [0, vocab_size] (0: V / 4), got {self.target_max_rank}")
        zipf_logits(self.vocab_size, self.zipf_exponent)

    @property
    def n_states(self) -> int:
        return self.n_prompts * self.horizon

    @cached_property
    def _structure(self) -> tuple[np.ndarray, np.ndarray]:
        rng = np.random.default_rng(np.random.SeedSequence([self.env_seed, 0x7AB]))
        s, v = self.n_states, self.vocab_size
        order = rng.permuted(np.tile(np.arange(v), (s, 1)), axis=1)  # order[s, k] = token of rank k+1
        max_rank = self.target_max_rank or max(v // 4, 1)
        rank = np.floor(np.exp(rng.uniform(0.0, np.log(max_rank + 1), size=s))).astype(np.int64)
        rank = np.clip(rank, 1, max_rank)
        targets = order[np.arange(s), rank - 1].reshape(self.n_prompts, self.horizon)
        return order, targets

    @property
    def targets(self) -> np.ndarray:
        """``[n_prompts, horizon]`` hidden target tokens."""
        return self._structure[1]

    def initial_logits(self) -> np.ndarray:
        order, _ = self._structure
        z = np.empty((self.n_states, self.vocab_size))
        np.put_along_axis(z, order, zipf_logits(self.vocab_size, self.zipf_exponent)[None, :], axis=1)
        return z

    def _score(self, correct: np.ndarray) -> np.ndarray:
        """Reward from per-position correctness (or its probability) along the last axis."""
        if self.reward == "match":
            return correct.mean(axis=-1)
        return np.cumprod(correct, axis=-1).mean(axis=-1)

    def rewards(self, prompts: np.ndarray, tokens: np.ndarray) -> np.ndarray:
        """``prompts [N, P]``, ``tokens [N, P, G, T]`` -> ``[N, P, G]``."""
        correct = tokens == self.targets[prompts][:, :, None, :]
        return self._score(correct.astype(np.float64))

    def expected_reward(self, logp: np.ndarray, probs: np.ndarray | None = None) -> np.ndarray:
        """Exact expected reward of ``logp [N, n_states, V]``, mean over prompts -> ``[N]``;
        ``probs``: ``exp(logp)`` when the caller already holds it (the same values)."""
        n = logp.shape[0]
        at = (slice(None), np.arange(self.n_states), self.targets.reshape(-1))
        q = (np.exp(logp[at]) if probs is None else probs[at]).reshape(n, self.n_prompts, self.horizon)
        return self._score(q).mean(axis=-1)

    def describe(self) -> dict[str, float]:
        z = self.initial_logits()
        logp0 = z - np.logaddexp.reduce(z, axis=1, keepdims=True)
        p_target = np.exp(logp0[np.arange(self.n_states), self.targets.reshape(-1)])
        return {
            "initial_reward": float(self.expected_reward(logp0[None])[0]),
            "optimal_reward": 1.0,
            "target_mu0_median": float(np.median(p_target)),
            "target_mu0_min": float(p_target.min()),
            "rare_target_frac": float(np.mean(p_target <= 0.01)),
        }
