"""Every objective's sampled gradient against the exact gradient of the expected reward.

Where the expected reward can be written out, so can its gradient, and each objective's
estimator can be held against it: how biased it is, how noisy, and how its importance ratios
shrink the batch. The world here is one softmax state over ``V`` tokens (the long-tail bandit,
:class:`drpo_sim.envs.bandit.LongTailBandit`, or any logits and rewards), the trainer's policy
``pi = softmax(z)`` and the engine's ``mu``:

    J(z) = sum_a pi(a) R(a),           grad_z J = pi * (R - J)          (the truth, on-policy)

A batch draws ``N`` tokens ``y_i ~ mu`` with group-relative advantages ``A_i = R(y_i) - mean_j R(y_j)``
(GRPO's, without the standard-deviation scaling), and an objective's gradient estimate is

    g = (1/N) sum_i dJ_i/dlogp_i * (e_{y_i} - pi),       dJ_i/dlogp_i = A_i r_i w_i

(the registry's closed-form :meth:`~drpo_sim.objectives.Objective.grad_logp`; ``e_y - pi`` is
``grad_z log pi(y)``). Over ``B`` independent batches (one vectorised evaluation, no loop over
batches or tokens), :func:`gradient_diagnostics` reports per objective:

- ``cosine``: between the mean estimate ``E[g]`` and the truth;
- ``batch_cosine``: the mean over batches of the cosine of one batch's ``g`` with the truth (what
  a single update sees);
- ``bias_norm`` ``||E[g] - grad J||`` and ``relative_bias`` (over ``||grad J||``);
- ``variance``: ``E||g - E[g]||^2``, the trace of the estimate's covariance;
- ``ess``: the ratios' effective sample size per token, ``(sum r)^2 / (N sum r^2)``, averaged over
  batches (1 on-policy; the same for every objective, since it is the batch's);
- ``share_<bin>_<pos|neg>``: the share of ``sum_i abs(dJ_i/dlogp_i)`` carried by tokens in each
  ``mu`` bin (:data:`drpo_sim.arena.train.MU_BINS`) and sign of ``A``.

Even ``pg_is`` is biased here at finite ``N``: the batch-mean baseline depends on the batch
(order ``1/N``) and the ratio is capped (``objectives.LOG_RATIO_MAX``). The Monte Carlo error of
``E[g]`` is ``sqrt(variance / B)``, returned as ``mean_se`` so a bias can be read against it.
The ESS is Kong's (1992) ``(sum w)^2 / sum w^2``, divided by ``N``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from drpo_sim import objectives
from drpo_sim.arena.train import MU_BINS

__all__ = ["exact_gradient", "sampled_gradients", "gradient_diagnostics", "DIAGNOSTICS"]

DIAGNOSTICS = ("cosine", "batch_cosine", "bias_norm", "relative_bias", "variance", "mean_se", "ess")
"""The columns :func:`gradient_diagnostics` gives every objective, beside its gradient shares."""


def _log_softmax(z: np.ndarray) -> np.ndarray:
    z = np.asarray(z, dtype=np.float64)
    return z - np.logaddexp.reduce(z)


def exact_gradient(logits: np.ndarray, rewards: np.ndarray) -> np.ndarray:
    """``grad_z sum_a softmax(z)_a R_a = pi * (R - J)`` for one state's logits ``[V]``."""
    pi = np.exp(_log_softmax(logits))
    r = np.asarray(rewards, dtype=np.float64)
    return pi * (r - pi @ r)


def _check(logits: np.ndarray, engine_logits: np.ndarray, rewards: np.ndarray, n_samples: int,
           n_batches: int) -> None:
    shapes = {np.shape(logits), np.shape(engine_logits), np.shape(rewards)}
    if len(shapes) != 1 or len(next(iter(shapes))) != 1 or next(iter(shapes))[0] < 2:
        raise ValueError(f"logits, engine_logits and rewards must be vectors of one length >= 2, got shapes "
                         f"{np.shape(logits)}, {np.shape(engine_logits)}, {np.shape(rewards)}")
    if not (np.isfinite(logits).all() and np.isfinite(engine_logits).all() and np.isfinite(rewards).all()):
        raise ValueError("logits, engine_logits and rewards must be finite")
    for name, v in (("n_samples", n_samples), ("n_batches", n_batches)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 2:
            raise ValueError(f"{name} must be an integer >= 2, got {v!r}")


def sampled_gradients(objective: objectives.Objective, logits: np.ndarray, engine_logits: np.ndarray,
                      rewards: np.ndarray, *, n_samples: int, n_batches: int,
                      rng: np.random.Generator) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """The objective's gradient estimate ``g [B, V]`` of ``B = n_batches`` batches of
    ``N = n_samples`` tokens drawn from the engine (module docstring), and the batches'
    ``{"tokens", "logp", "logp_behavior", "advantage", "grad_logp"}``, each ``[B, N]``."""
    _check(logits, engine_logits, rewards, n_samples, n_batches)
    logp_all, logmu_all = _log_softmax(logits), _log_softmax(engine_logits)
    r_all = np.asarray(rewards, dtype=np.float64)
    v = logp_all.shape[0]
    tokens = rng.choice(v, size=(n_batches, n_samples), p=np.exp(logmu_all))
    reward = r_all[tokens]
    advantage = reward - reward.mean(axis=1, keepdims=True)
    logp, logp_b = logp_all[tokens], logmu_all[tokens]
    d = np.asarray(objective.grad_logp(logp, logp_b, advantage), dtype=np.float64)
    rows = np.arange(n_batches)[:, None] * v
    onehot = np.bincount((rows + tokens).ravel(), weights=d.ravel(), minlength=n_batches * v).reshape(n_batches, v)
    g = (onehot - d.sum(axis=1, keepdims=True) * np.exp(logp_all)[None, :]) / n_samples
    return g, {"tokens": tokens, "logp": logp, "logp_behavior": logp_b, "advantage": advantage, "grad_logp": d}


def _cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    na, nb = np.linalg.norm(a, axis=-1), np.linalg.norm(b, axis=-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where((na > 0) & (nb > 0), (a * b).sum(axis=-1) / (na * nb), np.nan)


def gradient_diagnostics(methods: Sequence[str | tuple[str, dict[str, Any]] | objectives.Objective], logits: np.ndarray,
                         engine_logits: np.ndarray, rewards: np.ndarray, *, n_samples: int = 64,
                         n_batches: int = 2000, rng: np.random.Generator) -> pd.DataFrame:
    """One row per objective (a registry name, ``(name, params)`` or an objective): the columns of
    :data:`DIAGNOSTICS` and the gradient shares (module docstring). Every objective sees the
    same batches (one draw from ``rng``), so their differences are paired."""
    _check(logits, engine_logits, rewards, n_samples, n_batches)
    truth = exact_gradient(logits, rewards)
    seed = int(rng.integers(2**63))  # one draw from the caller's generator; the same batches for every objective
    rows = []
    for m in methods:
        if isinstance(m, objectives.Objective):
            obj = m
        else:
            name, params = (m, {}) if isinstance(m, str) else m
            obj = objectives.get(name, **params)
        g, batch = sampled_gradients(obj, logits, engine_logits, rewards, n_samples=n_samples,
                                     n_batches=n_batches, rng=np.random.default_rng(seed))
        mean = g.mean(axis=0)
        variance = float(((g - mean) ** 2).sum(axis=1).mean())
        ratio = np.exp(np.minimum(batch["logp"] - batch["logp_behavior"], objectives.LOG_RATIO_MAX))
        ess = (ratio.sum(axis=1) ** 2 / (n_samples * (ratio**2).sum(axis=1))).mean()
        row = {"objective": str(obj), "cosine": float(_cosine(mean, truth)),
               "batch_cosine": float(np.nanmean(_cosine(g, truth[None, :]))),
               "bias_norm": float(np.linalg.norm(mean - truth)),
               "relative_bias": float(np.linalg.norm(mean - truth) / np.linalg.norm(truth)),
               "variance": variance, "mean_se": float(np.sqrt(variance / n_batches)), "ess": float(ess)}
        row.update(_shares(batch))
        rows.append(row)
    return pd.DataFrame(rows)


def _shares(batch: dict[str, np.ndarray]) -> dict[str, float]:
    mag = np.abs(batch["grad_logp"])
    mu, a = np.exp(batch["logp_behavior"]), batch["advantage"]
    total = mag.sum()
    out = {}
    for b, (lo, hi) in MU_BINS.items():
        in_bin = (mu > lo) & (mu <= hi)
        for s, side in (("pos", a > 0), ("neg", a < 0)):
            out[f"share_{b}_{s}"] = float(mag[in_bin & side].sum() / total) if total > 0 else float("nan")
    return out
