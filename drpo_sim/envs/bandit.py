"""A one-state bandit over a long-tailed vocabulary.

The initial policy is a Zipf law: ``pi_0(token of rank k) proportional to k**(-s)`` with exponent
``s`` (``zipf_exponent``), the shape of an LLM's next-token distribution. Tokens are numbered by
rank (token 0 is the most likely). ``n_rewarded`` tokens carry a reward; their ranks are spaced
geometrically from ``first_rewarded_rank`` to ``rare_quantile * V``, so the rewarded set runs from a
frequent token to tokens with initial probability far below 1%: the tokens that ratio clipping
over-penalises (claim 5 of ``docs/reference.md``). Rewards rise with rarity, linearly from ``reward_min`` on
the most frequent rewarded token to 1 on the rarest, so the optimum is a token the initial policy
almost never samples and a method that learns only frequent tokens plateaus at ``reward_min``
(``reward_min = 1`` rewards every rewarded token equally).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np


def zipf_logits(vocab_size: int, exponent: float) -> np.ndarray:
    """Logits ``-s * log(k)`` for ranks ``k = 1..V``: a Zipf law after the softmax."""
    if vocab_size < 2:
        raise ValueError(f"vocab_size must be at least 2, got {vocab_size}")
    if not exponent >= 0:
        raise ValueError(f"zipf_exponent must be >= 0, got {exponent}")
    return -float(exponent) * np.log(np.arange(1, vocab_size + 1, dtype=np.float64))


@dataclass(frozen=True)
class LongTailBandit:
    """One state, one token per sample, reward ``R(token)`` (see the module docstring)."""

    vocab_size: int = 1024
    zipf_exponent: float = 1.1
    n_rewarded: int = 4
    first_rewarded_rank: int = 2
    rare_quantile: float = 0.25
    reward_min: float = 0.5

    n_prompts = 1
    horizon = 1

    def __post_init__(self) -> None:
        if not 8 <= self.vocab_size <= 2**24:
            raise ValueError(f"vocab_size must be in [8, 2**24], got {self.vocab_size}")
        if not 1 <= self.n_rewarded <= self.vocab_size // 2:
            raise ValueError(f"n_rewarded must be in [1, vocab_size / 2], got {self.n_rewarded}")
        if not 0 < self.rare_quantile <= 1:
            raise ValueError(f"rare_quantile must be in (0, 1], got {self.rare_quantile}")
        if not 0 <= self.reward_min <= 1:
            raise ValueError(f"reward_min must be in [0, 1], got {self.reward_min}")
        if not 1 <= self.first_rewarded_rank <= self.vocab_size:
            raise ValueError(f"first_rewarded_rank must be in [1, vocab_size], got {self.first_rewarded_rank}")
        zipf_logits(self.vocab_size, self.zipf_exponent)

    @property
    def n_states(self) -> int:
        return 1

    @cached_property
    def rewarded_tokens(self) -> np.ndarray:
        """Token ids (rank - 1) of the rewarded tokens, most frequent first."""
        n, v = self.n_rewarded, self.vocab_size
        last = max(self.rare_quantile * v, self.first_rewarded_rank + n - 1)
        ranks = np.round(np.geomspace(self.first_rewarded_rank, last, n)).astype(np.int64)
        # geometric spacing rounds several small ranks onto one integer: push duplicates apart
        ranks = np.maximum.accumulate(
            np.maximum(ranks, self.first_rewarded_rank + np.arange(n)) - np.arange(n)
        ) + np.arange(n)
        if ranks[-1] > v:
            raise ValueError(f"{n} rewarded tokens from rank {self.first_rewarded_rank} do not fit a vocabulary of {v}")
        return ranks - 1

    def token_rewards(self) -> np.ndarray:
        """``R[V]``: ``reward_min .. 1`` on the rewarded tokens (rarest highest), 0 elsewhere."""
        r = np.zeros(self.vocab_size)
        r[self.rewarded_tokens] = np.linspace(self.reward_min, 1.0, self.n_rewarded)
        return r

    def initial_logits(self) -> np.ndarray:
        return zipf_logits(self.vocab_size, self.zipf_exponent)[None, :]

    def rewards(self, prompts: np.ndarray, tokens: np.ndarray) -> np.ndarray:
        """``tokens [N, P, G, 1]`` -> ``[N, P, G]``."""
        return self.token_rewards()[tokens[..., 0]]

    def expected_reward(self, logp: np.ndarray, probs: np.ndarray | None = None) -> np.ndarray:
        """``sum_a pi(a) R(a)`` for ``logp [N, 1, V]``; ``probs``: ``exp(logp)`` when the caller
        already holds it (the same values, without a second pass of exponentials)."""
        pi = np.exp(logp[:, 0, :]) if probs is None else probs[:, 0, :]
        return pi @ self.token_rewards()

    def describe(self) -> dict[str, float]:
        p0 = np.exp(self.initial_logits()[0] - np.logaddexp.reduce(self.initial_logits()[0]))
        return {
            "initial_reward": float(p0 @ self.token_rewards()),
            "optimal_reward": 1.0,
            "rarest_rewarded_mu0": float(p0[self.rewarded_tokens[-1]]),
            "frequent_rewarded_mu0": float(p0[self.rewarded_tokens[0]]),
        }
