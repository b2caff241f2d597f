"""Answer formats of different lengths: the smallest world in which loss aggregation matters.

A caricature of length bias (notebook 8 of the tutorials). One prompt; the policy's first token
picks one of ``K`` answer *formats*, ``pi = softmax(theta)``; a response in format ``k`` then runs
``lengths[k]`` tokens in all (the tokens after the first are fixed, so only the first carries a
gradient) and is right with probability ``success[k]``, whatever else it says. Groups of
``group_size`` responses get group-relative advantages ``A_i = R_i - mean_j R_j``
(:func:`drpo_sim.advantages.group_relative`, no division by the standard deviation).

The loss is ``-aggregate(J, mask, mode)`` over the group's ``[G, H]`` tokens, so the gradient on
``theta`` is ``sum_i c_i A_i w_i (e_{k_i} - pi)``, with ``c_i`` the coefficient of response ``i``'s
first token under ``mode`` (:func:`drpo_sim.objectives.aggregation_weights`, the one definition of
the four modes) and ``A w`` the objective's ``dJ/dlog pi`` on-policy (``r = 1``; the registry's
:meth:`~drpo_sim.objectives.Objective.grad_logp`; ``pg_is`` by default, where it is ``A``).

* :meth:`FormatWorld.true_gradient`: ``d E[R] / d theta = pi (success - pi . success)``.
* :meth:`FormatWorld.expected_gradient`: the exact expectation of the aggregated gradient over
  the group's formats and rewards, by enumerating the ``K ** G`` format combinations (the
  coefficients depend on the lengths only, and the gradient is linear in the rewards, so their
  expectation enters exactly). ``seq-mean-token-sum`` and ``seq-mean-token-sum-norm`` give a
  constant ``c`` and so a multiple of the true gradient, ``(G - 1) / G`` times a constant;
  ``seq-mean-token-mean`` (GRPO's) gives ``c_i = 1 / (G L_i)``: the gradient of a different
  objective, biased toward short formats when right and long ones when wrong (Liu et al. 2025,
  *Understanding R1-Zero-like training*, arXiv:2503.20783); ``token-mean`` (DAPO's) gives one ``c``
  per group, ``1 / sum_j L_j``, so it only weighs groups of long responses less.
* :meth:`FormatWorld.flow`: exact expected-gradient ascent with steps of a fixed length, so that
  the modes, whose gradients differ by constant factors, are compared by direction alone.
* :meth:`FormatWorld.train`: sampled groups and Adam, vectorised over seeds (Adam is invariant to a
  constant factor of the gradient, so the modes' scales do not matter there either).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from functools import cached_property

import numpy as np

from drpo_sim import objectives
from drpo_sim.advantages import group_relative

#: the combinations enumerated by :meth:`FormatWorld.expected_gradient` at most (``K ** G``)
MAX_COMBINATIONS = 1 << 16


@dataclass(frozen=True)
class FormatWorld:
    """``K`` answer formats: their names, lengths in tokens and success rates (module docstring)."""

    names: tuple[str, ...] = ("short", "long, careful", "short, wrong", "long, wrong")
    lengths: tuple[int, ...] = (8, 64, 8, 64)
    success: tuple[float, ...] = (0.5, 0.6, 0.1, 0.1)
    group_size: int = 6
    horizon: int = 64
    objective: str = "pg_is"

    def __post_init__(self) -> None:
        k = len(self.names)
        if k < 2 or len(self.lengths) != k or len(self.success) != k:
            raise ValueError(f"names, lengths and success must have one entry per format (at least 2), got "
                             f"{len(self.names)}, {len(self.lengths)}, {len(self.success)}")
        if any(not (isinstance(n, (int, np.integer)) and 1 <= n <= self.horizon) for n in self.lengths):
            raise ValueError(f"every length must be an integer in [1, horizon = {self.horizon}], got {self.lengths}")
        if any(not 0.0 <= p <= 1.0 for p in self.success):
            raise ValueError(f"success rates must lie in [0, 1], got {self.success}")
        if self.group_size < 2:
            raise ValueError(f"group_size must be at least 2 (group-relative advantages), got {self.group_size}")
        objectives.get(self.objective)  # an unknown name raises, naming the valid ones

    @property
    def k(self) -> int:
        return len(self.names)

    def policy(self, theta: np.ndarray) -> np.ndarray:
        """``softmax(theta)`` over the last axis."""
        z = np.asarray(theta, dtype=np.float64)
        e = np.exp(z - z.max(axis=-1, keepdims=True))
        return e / e.sum(axis=-1, keepdims=True)

    def expected_reward(self, theta: np.ndarray) -> np.ndarray:
        return self.policy(theta) @ np.asarray(self.success)

    def true_gradient(self, theta: np.ndarray) -> np.ndarray:
        """``d E[R] / d theta = pi * (success - E[R])`` (the softmax's Jacobian)."""
        pi, p = self.policy(theta), np.asarray(self.success)
        return pi * (p - (pi @ p)[..., None])

    def mask(self, formats: np.ndarray) -> np.ndarray:
        """The ``[..., G, H]`` token mask of responses in ``formats`` (``[..., G]``)."""
        lengths = np.asarray(self.lengths)[formats]
        return np.arange(self.horizon) < lengths[..., None]

    def first_coefficients(self, formats: np.ndarray, mode: str) -> np.ndarray:
        """Each response's first-token coefficient ``c_i`` under ``mode`` (``[..., G]``)."""
        return objectives.aggregation_weights(self.mask(formats), mode, horizon=self.horizon)[..., 0]

    def _dj_dlogp(self, advantage: np.ndarray) -> np.ndarray:
        """The objective's ``dJ/dlog pi`` on-policy (``pi = mu``; any log-prob gives ``r = 1``)."""
        logp = np.full(np.shape(advantage), np.log(0.5))
        return objectives.get(self.objective).grad_logp(logp, logp, advantage)

    @cached_property
    def _combinations(self) -> np.ndarray:
        if self.k**self.group_size > MAX_COMBINATIONS:
            raise ValueError(f"{self.k} formats in groups of {self.group_size} make {self.k ** self.group_size} "
                             f"combinations; the exact expectation enumerates at most {MAX_COMBINATIONS}: use a "
                             f"smaller group or train() to sample")
        return np.array(list(itertools.product(range(self.k), repeat=self.group_size)))

    @cached_property
    def _coefficients(self) -> dict[str, np.ndarray]:
        return {mode: self.first_coefficients(self._combinations, mode) for mode in objectives.AGG_MODES}

    def expected_gradient(self, theta: np.ndarray, mode: str) -> np.ndarray:
        """The exact expectation of the aggregated gradient on ``theta`` (``[K]``) under ``mode``."""
        combos = self._combinations
        pi = self.policy(theta)
        prob = np.prod(pi[combos], axis=1)  # P(the group's formats)
        p = np.asarray(self.success)[combos]
        advantage = group_relative(p)  # E[A_i | formats]: the advantage is linear in the rewards
        c = self._coefficients[mode]
        coef = prob[:, None] * c * self._dj_dlogp(advantage)  # [C, G]
        # sum_i coef_i (e_{k_i} - pi)
        onto = np.zeros((combos.shape[0], self.k))
        np.add.at(onto, (np.arange(combos.shape[0])[:, None], combos), coef)
        return onto.sum(axis=0) - coef.sum() * pi

    def flow(self, mode: str | None, steps: int, lr: float = 0.05) -> np.ndarray:
        """``pi`` after each of ``steps`` steps ``theta += lr g / |g|`` from ``theta = 0``, with ``g``
        the expected gradient under ``mode`` (``None``: the true gradient). ``[steps, K]``."""
        theta = np.zeros(self.k)
        out = np.empty((steps, self.k))
        for s in range(steps):
            g = self.true_gradient(theta) if mode is None else self.expected_gradient(theta, mode)
            norm = np.linalg.norm(g)
            if norm > 0:
                theta = theta + lr * g / norm
            out[s] = self.policy(theta)
        return out

    def train(self, mode: str, seeds: int, steps: int, lr: float = 0.05, seed: int = 0) -> np.ndarray:
        """Sampled groups, one Adam step (``betas = (0.9, 0.999)``) per group, ``seeds`` independent runs
        from ``theta = 0`` drawn from ``numpy.random.default_rng(seed)``. Returns ``pi`` before each step,
        ``[steps, seeds, K]``."""
        rng = np.random.default_rng(seed)
        theta = np.zeros((seeds, self.k))
        m1, m2 = np.zeros_like(theta), np.zeros_like(theta)
        p = np.asarray(self.success)
        out = np.empty((steps, seeds, self.k))
        for s in range(steps):
            pi = self.policy(theta)
            out[s] = pi
            u = rng.random((seeds, self.group_size, 1))
            formats = np.minimum((u > np.cumsum(pi, axis=-1)[:, None, :]).sum(axis=-1), self.k - 1)
            rewards = (rng.random((seeds, self.group_size)) < p[formats]).astype(np.float64)
            coef = self.first_coefficients(formats, mode) * self._dj_dlogp(group_relative(rewards))
            g = np.einsum("sg,sgk->sk", coef, np.eye(self.k)[formats] - pi[:, None, :])
            m1 = 0.9 * m1 + 0.1 * g
            m2 = 0.999 * m2 + 0.001 * g * g
            theta = theta + lr * (m1 / (1 - 0.9 ** (s + 1))) / (np.sqrt(m2 / (1 - 0.999 ** (s + 1))) + 1e-8)
        return out
