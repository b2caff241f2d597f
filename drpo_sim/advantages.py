"""Advantages: group-relative (GRPO) from sampled rewards, and their exact counterpart.

* Group-relative (DeepSeekMath 2024, Sec. 4.1.2): ``A_i = R_i - mean_j R_j`` over the ``G``
  samples of a prompt, optionally divided by the group's standard deviation (unbiased, ``ddof = 1``,
  as ``torch.std``) plus ``eps``. The DRPO paper (and Dr. GRPO) leave the division out.
* Exact (the infinite-group limit, for the exact-gradient mode): ``A(a) = R(a) - E_mu[R]`` for
  every token ``a``, divided by ``std_mu(R) + eps`` when normalised: the group mean and standard
  deviation converge to these as ``G`` grows, because the group is sampled from ``mu``.
* Reward scales spread across prompts (:func:`reward_scales`): the rewards of different prompts,
  as the learner sees them, multiplied by factors that span ``spread`` decades, so that the size of
  the advantages differs from prompt to prompt (the DRPO paper's claim about ``abs(A)`` is
  conditional on it). Both the simulator and the arena take it from here.
"""

from __future__ import annotations

import numpy as np

DEFAULT_EPS = 1e-6
MAX_REWARD_SCALE_SPREAD = 6.0
"""The widest spread of reward scales, in decades (a factor of a million between prompts)."""


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


def check_reward_scale_spread(spread: float) -> None:
    """``ValueError`` unless ``spread`` is a number of decades in ``[0, MAX_REWARD_SCALE_SPREAD]``."""
    if isinstance(spread, bool) or not (isinstance(spread, (int, float, np.floating)) and np.isfinite(spread)
                                        and 0 <= spread <= MAX_REWARD_SCALE_SPREAD):
        raise ValueError(f"reward_scale_spread must be in [0, {MAX_REWARD_SCALE_SPREAD:g}] decades, got {spread!r}")


def reward_scales(spread: float, n_prompts: int) -> np.ndarray:
    """The learner's reward scale of each of ``n_prompts`` prompts (or prompt kinds),
    ``10^(spread (u_p - 1/2))`` with ``u_p`` evenly spaced over ``[0, 1]``: the largest is
    ``10^spread`` times the smallest, their geometric mean is 1; all ones at ``spread = 0`` or for
    a single prompt."""
    check_reward_scale_spread(spread)
    if spread == 0 or n_prompts < 2:
        return np.ones(n_prompts)
    return 10.0 ** (spread * (np.linspace(0.0, 1.0, n_prompts) - 0.5))
