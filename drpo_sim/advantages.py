"""Advantages: group-relative (GRPO) from sampled rewards, and their exact counterpart.

* Group-relative (DeepSeekMath 2024, Sec. 4.1.2): ``A_i = R_i - mean_j R_j`` over the ``G``
  samples of a prompt, optionally divided by the group's standard deviation (unbiased, ``ddof = 1``,
  as ``torch.std``) plus ``eps``. The DRPO paper (and Dr. GRPO) leave the division out.
* Exact (the infinite-group limit, for the exact-gradient mode): ``A(a) = R(a) - E_mu[R]`` for
  every token ``a``, divided by ``std_mu(R) + eps`` when normalised: the group mean and standard
  deviation converge to these as ``G`` grows, because the group is sampled from ``mu``.
"""

from __future__ import annotations

import numpy as np

DEFAULT_EPS = 1e-6


def group_relative(rewards: np.ndarray, *, std_norm: bool = False, eps: float = DEFAULT_EPS) -> np.ndarray:
    """``rewards [..., G]`` -> advantages ``[..., G]``."""
    g = rewards.shape[-1]
    if g < 1:
        raise ValueError("group_relative needs at least one sample per group")
    adv = rewards - rewards.mean(axis=-1, keepdims=True)
    if std_norm:
        if g < 2:
            raise ValueError("std-normalised advantages need at least 2 samples per group")
        adv = adv / (rewards.std(axis=-1, ddof=1, keepdims=True) + eps)
    return adv


def exact(token_rewards: np.ndarray, mu: np.ndarray, *, std_norm: bool = False, eps: float = DEFAULT_EPS) -> np.ndarray:
    """``token_rewards [V]``, behaviour ``mu [..., V]`` -> ``A [..., V]`` (see the module docstring)."""
    mean = mu @ token_rewards
    adv = token_rewards - mean[..., None]
    if std_norm:
        var = np.maximum(mu @ token_rewards**2 - mean**2, 0.0)
        adv = adv / (np.sqrt(var)[..., None] + eps)
    return adv
