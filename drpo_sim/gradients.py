"""Every objective's sampled gradient against the exact gradient of the expected reward.

Where the expected reward can be written out, so can its gradient, and each objective's
estimator can be held against it: how biased it is, how noisy, and how its importance ratios
shrink the batch. Two worlds have it in closed form, because their states do not depend on the
sampled prefix:

- **the long-tail bandit**: one softmax state over ``V`` tokens
  (:class:`drpo_sim.envs.bandit.LongTailBandit`, or any logits and per-token rewards ``R``)::

      J(z) = sum_a pi(a) R(a),           grad_z J = pi * (R - J)

- **the tabular task** (:class:`drpo_sim.envs.tabular.TabularSequence`): ``P`` prompts of ``T``
  positions, one softmax state per (prompt, position), ``q_{p,t} = pi_{p,t}(y*_{p,t})`` the
  target's probability and ``J = (1/P) sum_p score(q_p)`` (``match``: ``mean_t q_t``; ``prefix``:
  ``(1/T) sum_k prod_{t<=k} q_t``). With ``C_k = prod_{t<=k} q_t``::

      dJ/dz_{(p,t),a} = (1/P) G_{p,t} (1[a = y*_{p,t}] - pi_{p,t}(a)),
      G_{p,t} = dscore/dlog q_t = q_t / T (match),  (1/T) sum_{k>=t} C_{p,k} (prefix)

  (``q_t dC_k/dq_t = C_k`` for ``k >= t``, so no division by a small ``q`` is needed).

**Three policies.** The engine's ``mu`` (logits ``engine_logits``), the trainer's policy at
rollout time ``pi_old`` (``old_logits``; ``logp_old`` of every objective, which those that do not
read it ignore) and the current ``pi`` (``logits``), which the truth is the on-policy gradient of.
In :func:`gradient_sweep` the three are built the way an RL system makes them:

- ``pi_old`` is the environment's initial policy (the parameters the rollout was made with);
- ``mu`` has the logits ``z_old + sigma * eps`` (``pi_old``'s parameters in the engine's numerics),
  ``eps`` one standard-normal draw ``[S, V]`` scaled by the mismatch size ``sigma`` (the
  simulator's Gaussian engine noise, :mod:`drpo_sim.offpolicy`; ``sigma = 0`` is a bit-exact engine);
- ``pi`` is ``pi_old`` after ``k`` updates (the staleness: ``k`` optimiser steps made since the
  rollout, as mini-batch updates on one batch or an asynchronous trainer give). Each update is a
  step along the exact gradient ``grad_z J`` at the current logits, of the length whose
  second-order KL is ``step_kl`` per token (:func:`after_updates`: TRPO's step-length rule,
  Schulman et al. 2015, with the plain gradient as direction), so ``k`` and ``step_kl`` read like
  the ``approx_kl`` a PPO trainer logs per update. A step along the truth is the noise-free update;
  a trainer's sampled steps would add their own noise on top.

**A batch** draws, for each of ``P`` prompts, ``G = n_samples`` responses from the engine (a
response of the bandit is one token), with group-relative advantages ``A = R - mean_group R``
(GRPO's, without the standard-deviation scaling) broadcast to the response's tokens. Each
objective's per-token ``d = dJ_t/dlogp_t`` is the registry's closed form
(:meth:`~drpo_sim.objectives.Objective.grad_logp`, ``A r w``), called with ``logp_old`` and a
``sample_id`` per response (in the bandit each sampled token is its own one-token sequence, so
sequence-level objectives and corrections act token by token there) and, for DPPO's Top-K modes,
the Top-K divergences of each state's exact distributions (:data:`TOPK`). The batch's estimate sums a
response's tokens and averages over the ``P G`` responses, the unbiased score-function form of
``grad J``::

    g = (1/(P G)) sum_{responses} sum_t d_t (e_{y_t} - pi_{s_t})           (e_y - pi = grad_z log pi(y))

(the bandit: ``g = (1/N) sum_i d_i (e_{y_i} - pi)``). Over ``B`` independent batches (vectorised:
no loop over batches or tokens; the statistics are computed from the sampled tokens, never from
dense ``[B, S, V]`` gradients), :func:`gradient_diagnostics` reports per objective:

- ``cosine``: between the mean estimate ``E[g]`` and the truth;
- ``batch_cosine``: the mean over batches of the cosine of one batch's ``g`` with the truth (what
  a single update sees; batches whose advantages are all 0 have no direction and are left out);
- ``bias_norm`` ``||E[g] - grad J||`` and ``relative_bias`` (over ``||grad J||``); ``norm_ratio``
  ``||E[g]|| / ||grad J||``, how much of the true step's length the mean estimate keeps (with the
  cosine, it splits the bias into a turn and a shrink);
- ``variance``: ``E||g - E[g]||^2``, the trace of the estimate's covariance;
- ``mean_se``: ``sqrt(variance / B)``, the Monte Carlo error of ``E[g]`` (a bias is read against it);
- ``ess``: the ratios' effective sample size per token, ``(sum r)^2 / (N sum r^2)`` with
  ``r = pi / mu`` over a batch's tokens, averaged over batches (Kong 1992; 1 on-policy; the
  batch's, the same for every objective); ``ess_seq`` the same of the responses' sequence ratios
  ``prod_t r_t``, the importance weight an unbiased sequence-level estimator needs (equal to
  ``ess`` in the bandit, whose responses are one token);
- ``share_<bin>_<pos|neg>``: the share of ``sum abs(d)`` carried by tokens in each ``mu`` bin
  (:data:`drpo_sim.arena.train.MU_BINS`) and sign of ``A``;
- with a ``reference`` objective, the paired difference from it on the same batches
  (:data:`PAIRED`): ``diff_rel = ||E[g - g_ref]|| / ||grad J||`` and its Monte Carlo error
  ``diff_rel_se``, ``diff_batch_rel`` (the mean over batches of ``||g - g_ref|| / ||g_ref||``,
  how far one update moves), and ``delta_batch_cosine`` with its error ``delta_batch_cosine_se``.

Even ``pg_is`` is biased at finite group size: the group-mean baseline depends on the sample, which
gives ``E[g] = (1 - 1/G) grad J`` exactly in the bandit, on- or off-policy (a constant baseline is
unbiased under importance weighting, and the ratio cap ``objectives.LOG_RATIO_MAX`` does not act at
these mismatches). In the tabular task only on-policy: a token's ratio ``pi/mu`` is not its
response's ratio ``prod_t pi/mu``, so once ``pi`` differs from ``mu`` token-level importance
sampling is biased too (the reason for the sequence-level corrections).

**The question of issue 16**: does DRPO at ``delta = 12.5`` produce a different gradient from
``pg_is``? Its weight ``1 - sign(A)(pi - mu)/12.5`` lies in ``[0.92, 1.08]``, so the two can differ
by a few percent at most. The margin, fixed before the full sweep was run (:data:`EQUIVALENCE_MARGIN`):
see :func:`equivalence`; the measured answer is in the README's section "Gradients against the truth"
and ``docs/figures/gradient_diagnostics*_equivalence.csv``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from drpo_sim import objectives
from drpo_sim.arena.train import MU_BINS
from drpo_sim.envs.tabular import TabularSequence

__all__ = [
    "DIAGNOSTICS",
    "EQUIVALENCE_MARGIN",
    "PAIRED",
    "SWEEP_OBJECTIVES",
    "after_updates",
    "equivalence",
    "exact_gradient",
    "gradient_diagnostics",
    "gradient_sweep",
    "sampled_gradients",
]

DIAGNOSTICS = ("cosine", "batch_cosine", "bias_norm", "relative_bias", "norm_ratio", "variance", "mean_se", "ess",
               "ess_seq")
"""The columns :func:`gradient_diagnostics` gives every objective, beside its gradient shares."""

PAIRED = ("diff_rel", "diff_rel_se", "diff_batch_rel", "delta_batch_cosine", "delta_batch_cosine_se")
"""The paired-difference columns :func:`gradient_diagnostics` adds when given a ``reference``."""

EQUIVALENCE_MARGIN = 0.01
"""The margin of :func:`equivalence`, fixed before the full sweep was run (issue 16, item 5).

Two objectives produce the same gradient, for practical purposes, in one setting when the paired
relative difference of their mean gradients ``||E[g_a - g_b]|| / ||grad J||`` lies below 1% with
its 95% interval (estimate +- 1.96 Monte Carlo errors): smaller than the ``1/G = 1.6%`` bias that
the group-mean baseline alone gives every estimator at ``G = 64``, and far below one batch's noise.
They differ when the interval lies above the margin; otherwise the sweep cannot tell."""

TOPK = 20
"""The ``K`` of DPPO's Top-K divergences here (``dppo_topk_tv``, ``dppo_topk_kl``): the engine's 20
most likely tokens of each state, the most log-probs an engine such as vLLM returns by default
(``max_logprobs = 20``); the divergences are exact functions of the states' distributions here."""

SWEEP_OBJECTIVES: dict[str, tuple[str, dict[str, Any]]] = {
    "pg_is": ("pg_is", {}),
    "grpo": ("grpo", {}),
    "cispo": ("cispo", {}),
    "dppo_tv": ("dppo_tv", {}),
    "drpo (delta 12.5)": ("drpo", {"delta": 12.5}),
    "drpo (delta 0.15)": ("drpo", {"delta": 0.15}),
    "minirl": ("minirl", {}),
    "decoupled_ppo": ("decoupled_ppo", {}),
    "grpo + tis": ("grpo", {"correction": "tis", "cap": 2.0}),
}
"""The objectives of :func:`gradient_sweep` by default: label -> ``(name, params)`` of
:func:`drpo_sim.objectives.get`; two anchored to ``mu`` with a ratio clip (GRPO) or a capped
ratio (CISPO), DPPO-TV's mask, DRPO at the paper's ``delta`` and at DPPO-TV's threshold, and three
anchored to ``pi_old`` (MiniRL, decoupled PPO, GRPO with token TIS)."""


# ----------------------------------------------------------------------------------------------
# the worlds


def _log_softmax(z: np.ndarray) -> np.ndarray:
    z = np.asarray(z, dtype=np.float64)
    return z - np.logaddexp.reduce(z, axis=-1, keepdims=True)


def _tabular_gradient(env: TabularSequence, logits: np.ndarray) -> np.ndarray:
    logp = _log_softmax(logits)  # [S, V]
    s, t_len = np.arange(env.n_states), env.horizon
    target = env.targets.reshape(-1)
    log_q = logp[s, target].reshape(env.n_prompts, t_len)
    if env.reward == "match":
        g = np.exp(log_q) / t_len
    else:  # prefix: (1/T) sum_{k >= t} C_k, a reverse cumulative sum of the prefix products
        c = np.exp(np.cumsum(log_q, axis=1))
        g = np.cumsum(c[:, ::-1], axis=1)[:, ::-1] / t_len
    g = g.reshape(-1, 1) / env.n_prompts
    grad = -g * np.exp(logp)
    grad[s, target] += g[:, 0]
    return grad


def exact_gradient(logits: np.ndarray, rewards: np.ndarray | TabularSequence) -> np.ndarray:
    """The exact on-policy ``grad_z J`` (module docstring): of one state's logits ``[V]`` with
    per-token rewards ``[V]`` (``pi * (R - J)``), or of a tabular task's logits ``[P T, V]``."""
    if isinstance(rewards, TabularSequence):
        return _tabular_gradient(rewards, logits)
    pi = np.exp(_log_softmax(logits))
    r = np.asarray(rewards, dtype=np.float64)
    return pi * (r - pi @ r)


def after_updates(old_logits: np.ndarray, rewards: np.ndarray | TabularSequence, *, updates: int,
                  step_kl: float) -> np.ndarray:
    """The trainer's logits after ``updates`` steps from ``old_logits`` (``pi_old``), each along the
    exact gradient at the current logits and of length ``eta = sqrt(2 step_kl / F)``, where
    ``F = mean_s Var_{pi_s}(g_s)`` is the gradient's Fisher quadratic form (``g^T F g`` of a softmax,
    averaged over states): the step whose second-order KL(pi_before || pi_after) per token is
    ``step_kl`` (TRPO's step length, Schulman et al. 2015, along the plain gradient). A loop over
    the ``updates`` (a handful), never over tokens."""
    if isinstance(updates, bool) or not isinstance(updates, (int, np.integer)) or updates < 0:
        raise ValueError(f"staleness (updates since the rollout) must be an integer >= 0, got {updates!r}")
    if not (isinstance(step_kl, (int, float, np.integer, np.floating)) and np.isfinite(step_kl) and step_kl > 0):
        raise ValueError(f"step_kl must be a finite number > 0, got {step_kl!r}")
    z = np.array(old_logits, dtype=np.float64)
    for _ in range(int(updates)):
        g = exact_gradient(z, rewards)
        pi = np.exp(_log_softmax(z))
        fisher = float(np.mean((pi * g**2).sum(axis=-1) - (pi * g).sum(axis=-1) ** 2))
        if fisher <= 0:
            break  # a stationary point: nothing to follow
        z = z + np.sqrt(2.0 * step_kl / fisher) * g
    return z


def _check(logits: np.ndarray, engine_logits: np.ndarray, rewards: Any, n_samples: int, n_batches: int,
           old_logits: np.ndarray | None) -> None:
    old = logits if old_logits is None else old_logits
    if isinstance(rewards, TabularSequence):
        want = (rewards.n_states, rewards.vocab_size)
        if {np.shape(logits), np.shape(engine_logits), np.shape(old)} != {want}:
            raise ValueError(f"the tabular task needs logits, engine_logits and old_logits of shape {want} "
                             f"(states x vocabulary), got {np.shape(logits)}, {np.shape(engine_logits)}, "
                             f"{np.shape(old)}")
    else:
        shapes = {np.shape(logits), np.shape(engine_logits), np.shape(rewards), np.shape(old)}
        if len(shapes) != 1 or len(next(iter(shapes))) != 1 or next(iter(shapes))[0] < 2:
            raise ValueError(f"logits, engine_logits, old_logits and rewards must be vectors of one length >= 2, "
                             f"got shapes {np.shape(logits)}, {np.shape(engine_logits)}, {np.shape(old)}, "
                             f"{np.shape(rewards)}")
        if not np.isfinite(rewards).all():
            raise ValueError("logits, engine_logits, old_logits and rewards must be finite")
    if not (np.isfinite(logits).all() and np.isfinite(engine_logits).all() and np.isfinite(old).all()):
        raise ValueError("logits, engine_logits, old_logits and rewards must be finite")
    for name, v in (("n_samples", n_samples), ("n_batches", n_batches)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 2:
            raise ValueError(f"{name} must be an integer >= 2, got {v!r}")


# ----------------------------------------------------------------------------------------------
# the batches


class _Batches:
    """``B`` batches drawn from the engine: each token's state and token (``key = s V + y``), the
    three policies' log-probs, the advantages and sample ids, shaped ``[B, P G, T]`` for the
    objectives (each row one response, the last two axes one batch), and the per-batch grouping
    of equal keys that the squared norms need (computed once, shared by every objective)."""

    def __init__(self, logits, engine_logits, old_logits, rewards, n_samples, n_batches, rng):
        tab = isinstance(rewards, TabularSequence)
        z = np.atleast_2d(np.asarray(logits, dtype=np.float64))
        self.n_states, self.vocab = z.shape
        p, t_len = (rewards.n_prompts, rewards.horizon) if tab else (1, 1)
        b, g = n_batches, n_samples
        self.logp_all = _log_softmax(z)
        self.pi = np.exp(self.logp_all)
        self.logmu = logmu = _log_softmax(np.atleast_2d(engine_logits))
        logold = _log_softmax(np.atleast_2d(logits if old_logits is None else old_logits))
        # inverse-CDF sampling in every state at once: the states' CDFs laid end to end, state s on [s, s + 1]
        cdf = np.cumsum(np.exp(logmu), axis=1)
        cdf = (cdf / cdf[:, -1:] + np.arange(self.n_states)[:, None]).ravel()
        state = np.broadcast_to((np.arange(p)[:, None] * t_len + np.arange(t_len))[None, :, None, :], (b, p, g, t_len))
        u = rng.random((b, p, g, t_len))
        key = np.minimum(np.searchsorted(cdf, state + u, side="right"), (state + 1) * self.vocab - 1)
        token = key - state * self.vocab
        if tab:
            reward = rewards.rewards(np.broadcast_to(np.arange(p), (b, p)), token)
        else:
            reward = np.asarray(rewards, dtype=np.float64)[token[..., 0]]
        adv = reward - reward.mean(axis=2, keepdims=True)
        shape = (b, p * g, t_len)
        self.state, self.key = state.reshape(b, -1), key.reshape(b, -1)
        self.tokens = token.reshape(shape)
        self.advantage = np.repeat(adv[..., None], t_len, axis=-1).reshape(shape)
        self.logp = self.logp_all.ravel()[key].reshape(shape)
        self.logp_behavior = logmu.ravel()[key].reshape(shape)
        self.logp_old = logold.ravel()[key].reshape(shape)
        self.sample_id = np.repeat(np.arange(b * p * g).reshape(b, p * g, 1), t_len, axis=-1)
        self.n_responses = p * g
        # equal keys of one batch, grouped: ||sum_k d_k e_{key_k}||^2 = sum over groups of (sum d)^2
        order = np.argsort(self.key, axis=1, kind="stable")
        sk = np.take_along_axis(self.key, order, axis=1)
        new = np.ones(sk.shape, dtype=bool)
        new[:, 1:] = sk[:, 1:] != sk[:, :-1]
        self._order = order
        self._group = np.cumsum(new.ravel()) - 1
        self._group_batch = np.repeat(np.arange(b), new.sum(axis=1))
        self._batch_state = (np.arange(b)[:, None] * self.n_states + self.state).ravel()
        self._pi_at = self.pi.ravel()[self.key]

    def grad_logp(self, obj: objectives.Objective) -> np.ndarray:
        """The objective's ``dJ_t/dlogp_t`` of every token, ``[B, K]`` (``K = P G T``): given ``logp_old``
        and the ``sample_id`` whatever it reads, and DPPO's Top-K divergences where it reads them."""
        extra = {c: self.topk(c) for c in getattr(obj, "required_columns", ()) if c in ("topk_tv", "topk_kl")}
        d = obj.grad_logp(self.logp, self.logp_behavior, self.advantage, logp_old=self.logp_old,
                          sample_id=self.sample_id, **extra)
        return np.asarray(d, dtype=np.float64).reshape(self.key.shape)

    def topk(self, column: str) -> np.ndarray:
        """DPPO's Top-K divergence ``column`` (``topk_tv`` or ``topk_kl``) between the engine's and the
        current policy's whole distributions at each token's state, over the engine's :data:`TOPK`
        most likely tokens and the rest (:func:`drpo_sim.objectives.topk_divergences`), ``[B, P G, T]``."""
        if not hasattr(self, "_topk"):
            k = min(TOPK, self.vocab)
            ids = np.argsort(-self.logmu, axis=1, kind="stable")[:, :k]
            tv, kl = objectives.topk_divergences(self.logp_all, ids, np.take_along_axis(self.logmu, ids, axis=1))
            self._topk = {"topk_tv": np.asarray(tv), "topk_kl": np.asarray(kl)}
        return self._topk[column][self.state].reshape(self.tokens.shape)

    def mean(self, d: np.ndarray) -> np.ndarray:
        """``E[g]`` over the batches, ``[S V]``, from the tokens' ``d``."""
        b, sv = d.shape[0], self.n_states * self.vocab
        u = np.bincount(self.key.ravel(), weights=d.ravel(), minlength=sv)
        total = np.bincount(self.state.ravel(), weights=d.ravel(), minlength=self.n_states)
        return (u - (total[:, None] * self.pi).ravel()) / (b * self.n_responses)

    def dot(self, d: np.ndarray, v: np.ndarray) -> np.ndarray:
        """``g_b . v`` of every batch ``[B]``, for a vector ``v [S V]``."""
        v = np.asarray(v).ravel()
        c = (self.pi * v.reshape(self.n_states, self.vocab)).sum(axis=1)
        return (d * (v[self.key] - c[self.state])).sum(axis=1) / self.n_responses

    def sq_norm(self, d: np.ndarray) -> np.ndarray:
        """``||g_b||^2`` of every batch ``[B]``: ``sum_s ||u_s - D_s pi_s||^2`` with ``u_s`` the sum of
        ``d e_y`` over the batch's tokens in state ``s`` and ``D_s`` the sum of their ``d``."""
        b, bs = d.shape[0], d.shape[0] * self.n_states
        sums = np.bincount(self._group, weights=np.take_along_axis(d, self._order, axis=1).ravel())
        uu = np.bincount(self._group_batch, weights=sums**2, minlength=b)
        total = np.bincount(self._batch_state, weights=d.ravel(), minlength=bs).reshape(b, -1)
        upi = np.bincount(self._batch_state, weights=(d * self._pi_at).ravel(), minlength=bs).reshape(b, -1)
        pp = (self.pi**2).sum(axis=1)
        out = uu - 2.0 * (total * upi).sum(axis=1) + (total**2 * pp).sum(axis=1)
        return np.maximum(out, 0.0) / self.n_responses**2

    def dense(self, d: np.ndarray) -> np.ndarray:
        """Every batch's ``g`` as a dense ``[B, S, V]`` array (for small checks; the statistics never need it)."""
        b, sv = d.shape[0], self.n_states * self.vocab
        rows = np.arange(b)[:, None] * sv
        u = np.bincount((rows + self.key).ravel(), weights=d.ravel(), minlength=b * sv).reshape(b, self.n_states, -1)
        total = np.bincount(self._batch_state, weights=d.ravel(), minlength=b * self.n_states).reshape(b, -1)
        return (u - total[:, :, None] * self.pi[None]) / self.n_responses


def sampled_gradients(objective: objectives.Objective, logits: np.ndarray, engine_logits: np.ndarray,
                      rewards: np.ndarray | TabularSequence, *, n_samples: int, n_batches: int,
                      rng: np.random.Generator,
                      old_logits: np.ndarray | None = None) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """The objective's gradient estimates ``g`` of ``B = n_batches`` batches (module docstring):
    ``[B, V]`` for one state's logits ``[V]``, ``[B, S, V]`` for a tabular task's ``[S, V]``; and the
    batches' ``{"tokens", "logp", "logp_behavior", "logp_old", "advantage", "sample_id",
    "grad_logp"}``, each ``[B, P G, T]`` (one state: ``[B, N]``, each token its own sample).
    ``old_logits`` is ``pi_old`` (default: ``logits``, no update since the rollout). Dense, so for small checks: the
    diagnostics compute their statistics from the tokens instead."""
    _check(logits, engine_logits, rewards, n_samples, n_batches, old_logits)
    bt = _Batches(logits, engine_logits, old_logits, rewards, n_samples, n_batches, rng)
    d = bt.grad_logp(objective)
    g = bt.dense(d)
    batch = {"tokens": bt.tokens, "logp": bt.logp, "logp_behavior": bt.logp_behavior, "logp_old": bt.logp_old,
             "advantage": bt.advantage, "sample_id": bt.sample_id, "grad_logp": d.reshape(bt.tokens.shape)}
    if np.ndim(logits) == 1:
        return g[:, 0], {k: v[..., 0] for k, v in batch.items()}
    return g, batch


# ----------------------------------------------------------------------------------------------
# the diagnostics


def _safe_ratio(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(b > 0, a / np.where(b > 0, b, 1.0), np.nan)


def _specs(methods) -> list[tuple[str, objectives.Objective]]:
    items = methods.items() if isinstance(methods, Mapping) else ((None, m) for m in methods)
    out = []
    for label, m in items:
        if isinstance(m, objectives.Objective):
            obj = m
        else:
            name, params = (m, {}) if isinstance(m, str) else m
            obj = objectives.get(name, **params)
        out.append((str(label) if label is not None else m if isinstance(m, str) else str(obj), obj))
    labels = [lab for lab, _ in out]
    if len(set(labels)) != len(labels):
        raise ValueError(f"objectives listed twice: {labels}")
    return out


def gradient_diagnostics(methods: Sequence[str | tuple[str, dict[str, Any]] | objectives.Objective]
                         | Mapping[str, str | tuple[str, dict[str, Any]] | objectives.Objective],
                         logits: np.ndarray, engine_logits: np.ndarray, rewards: np.ndarray | TabularSequence, *,
                         n_samples: int = 64, n_batches: int = 2000, rng: np.random.Generator,
                         old_logits: np.ndarray | None = None, reference: str | None = None) -> pd.DataFrame:
    """One row per objective (a registry name, ``(name, params)`` or an objective; or a mapping
    label -> one of those): ``objective`` (its full spec), ``label``, the columns of
    :data:`DIAGNOSTICS` and the gradient shares (module docstring); with ``reference`` (a label
    among them) also the paired differences of :data:`PAIRED`. ``logits`` is the current ``pi``,
    ``engine_logits`` the engine's ``mu``, ``old_logits`` the trainer's ``pi_old`` at rollout time
    (default ``logits``); ``rewards`` per-token rewards ``[V]`` (one state) or a
    :class:`~drpo_sim.envs.tabular.TabularSequence` (logits ``[P T, V]``, ``n_samples`` responses
    per prompt). Every objective sees the same batches (one draw from ``rng``), so their
    differences are paired."""
    _check(logits, engine_logits, rewards, n_samples, n_batches, old_logits)
    specs = _specs(methods)
    if reference is not None and reference not in [lab for lab, _ in specs]:
        raise ValueError(f"reference {reference!r} is not among the objectives ({', '.join(lab for lab, _ in specs)})")
    seed = int(rng.integers(2**63))  # one draw from the caller's generator; the same batches for every objective
    bt = _Batches(logits, engine_logits, old_logits, rewards, n_samples, n_batches, np.random.default_rng(seed))
    truth = exact_gradient(logits, rewards).ravel()
    truth_norm = float(np.linalg.norm(truth))
    log_r = np.minimum(bt.logp - bt.logp_behavior, objectives.LOG_RATIO_MAX)
    ess, ess_seq = _ess(log_r.reshape(n_batches, -1)), _ess(log_r.sum(axis=2))
    ref = None
    if reference is not None:
        d_ref = bt.grad_logp(dict(specs)[reference])
        sq_ref = bt.sq_norm(d_ref)
        ref = {"d": d_ref, "sq": sq_ref, "cos": _safe_ratio(bt.dot(d_ref, truth), np.sqrt(sq_ref) * truth_norm)}
    rows = []
    for lab, obj in specs:
        d = ref["d"] if lab == reference else bt.grad_logp(obj)
        mean = bt.mean(d)
        sq = bt.sq_norm(d)
        variance = max(float(sq.mean() - mean @ mean), 0.0)
        batch_cos = _safe_ratio(bt.dot(d, truth), np.sqrt(sq) * truth_norm)
        mean_norm = float(np.linalg.norm(mean))
        row = {"objective": str(obj), "label": lab,
               "cosine": float(mean @ truth / (mean_norm * truth_norm)) if mean_norm * truth_norm > 0 else np.nan,
               "batch_cosine": float(np.nanmean(batch_cos)) if np.isfinite(batch_cos).any() else np.nan,
               "bias_norm": float(np.linalg.norm(mean - truth)),
               "relative_bias": float(np.linalg.norm(mean - truth) / truth_norm) if truth_norm > 0 else np.nan,
               "norm_ratio": mean_norm / truth_norm if truth_norm > 0 else np.nan,
               "variance": variance, "mean_se": float(np.sqrt(variance / n_batches)), "ess": ess, "ess_seq": ess_seq}
        row.update(_shares(np.abs(d), np.exp(bt.logp_behavior).reshape(d.shape), bt.advantage.reshape(d.shape)))
        if ref is not None:
            row["reference"] = reference
            row.update(_paired(bt, d - ref["d"], ref, batch_cos, truth_norm))
        rows.append(row)
    return pd.DataFrame(rows)


def _ess(log_w: np.ndarray) -> float:
    """Kong's ESS per weight, ``(sum w)^2 / (n sum w^2)``, of each row of log-weights, averaged over rows
    (computed relative to each row's largest weight, so a sequence's product cannot overflow)."""
    w = np.exp(log_w - log_w.max(axis=1, keepdims=True))
    return float((w.sum(axis=1) ** 2 / (w.shape[1] * (w**2).sum(axis=1))).mean())


def _paired(bt: _Batches, delta: np.ndarray, ref: dict[str, np.ndarray], batch_cos: np.ndarray,
            truth_norm: float) -> dict[str, float]:
    """The paired difference ``g - g_ref`` on the same batches (:data:`PAIRED`)."""
    n = delta.shape[0]
    mean = bt.mean(delta)
    sq = bt.sq_norm(delta)
    var = max(float(sq.mean() - mean @ mean), 0.0)
    dcos = batch_cos - ref["cos"]
    ok = np.isfinite(dcos)
    return {"diff_rel": float(np.linalg.norm(mean) / truth_norm),
            "diff_rel_se": float(np.sqrt(var / n) / truth_norm),
            "diff_batch_rel": float(np.nanmean(_safe_ratio(np.sqrt(sq), np.sqrt(ref["sq"])))),
            "delta_batch_cosine": float(dcos[ok].mean()) if ok.any() else np.nan,
            "delta_batch_cosine_se": float(dcos[ok].std(ddof=1) / np.sqrt(ok.sum())) if ok.sum() > 1 else np.nan}


def _shares(mag: np.ndarray, mu: np.ndarray, a: np.ndarray) -> dict[str, float]:
    total = mag.sum()
    out = {}
    for b, (lo, hi) in MU_BINS.items():
        in_bin = (mu > lo) & (mu <= hi)
        for s, side in (("pos", a > 0), ("neg", a < 0)):
            out[f"share_{b}_{s}"] = float(mag[in_bin & side].sum() / total) if total > 0 else float("nan")
    return out


# ----------------------------------------------------------------------------------------------
# the sweep over mismatch and staleness


def _world(old_logits: np.ndarray, logits: np.ndarray, engine_logits: np.ndarray,
           rewards: np.ndarray | TabularSequence) -> dict[str, float]:
    """How far apart the three policies are, per token (mean over states)."""
    lo, lp, lm = _log_softmax(old_logits), _log_softmax(logits), _log_softmax(engine_logits)
    po, pm, pp = np.exp(lo), np.exp(lm), np.exp(lp)
    j = (float(rewards.expected_reward(lp[None])[0]) if isinstance(rewards, TabularSequence)
         else float(pp @ np.asarray(rewards, dtype=np.float64)))
    return {"kl_engine": float(np.mean((pm * (lm - lo)).sum(axis=-1))),    # KL(mu || pi_old)
            "kl_stale": float(np.mean((po * (lo - lp)).sum(axis=-1))),     # KL(pi_old || pi)
            "abs_shift": float(np.mean((pm * np.abs(pp - pm)).sum(axis=-1))),  # E_mu |pi - mu|
            "expected_reward": j,
            "truth_norm": float(np.linalg.norm(exact_gradient(logits, rewards)))}


def gradient_sweep(old_logits: np.ndarray, rewards: np.ndarray | TabularSequence, *,
                   methods: Mapping[str, Any] | Sequence[Any] | None = None, noise_stds: Sequence[float],
                   staleness: Sequence[int], step_kl: float, n_samples: int, n_batches: int,
                   rng: np.random.Generator, reference: str | None = "pg_is") -> pd.DataFrame:
    """The diagnostics over a grid of mismatch size (engine noise std ``sigma``) and staleness
    (updates since the rollout), as a tidy table: one row per (``noise_std``, ``staleness``,
    objective), with the three policies' distances (``kl_engine`` = KL(mu || pi_old),
    ``kl_stale`` = KL(pi_old || pi), ``abs_shift`` = ``E_mu abs(pi - mu)``, per token), the true
    gradient's norm, the columns of :func:`gradient_diagnostics` and, with a ``reference`` (default
    ``pg_is``, a label of ``methods``), the paired differences from it.

    ``old_logits`` is ``pi_old`` (``[V]`` or, for a tabular task, ``[P T, V]``); ``methods`` defaults
    to :data:`SWEEP_OBJECTIVES`. Random state: two draws from ``rng``, one for the engine's noise
    direction ``eps`` (shared by every ``sigma``: the mismatch grows along one direction) and one for
    the batches (shared by every cell: common random numbers, the same uniforms through each cell's
    engine CDF, so the curves are smooth in ``sigma``).
    """
    methods = SWEEP_OBJECTIVES if methods is None else methods
    noise_stds, staleness = list(noise_stds), list(staleness)
    if not noise_stds or not staleness:
        raise ValueError("the sweep needs at least one engine noise std and one staleness")
    bad = [s for s in noise_stds if isinstance(s, bool) or not isinstance(s, (int, float, np.integer, np.floating))
           or not (np.isfinite(s) and s >= 0)]
    if bad:
        raise ValueError(f"engine noise stds must be finite numbers >= 0, got {bad}")
    if len(set(noise_stds)) != len(noise_stds) or len(set(staleness)) != len(staleness):
        raise ValueError(f"noise stds and staleness must not repeat, got {noise_stds} and {staleness}")
    old = np.asarray(old_logits, dtype=np.float64)
    _check(old, old, rewards, n_samples, n_batches, None)
    noise_seed, batch_seed = (int(s) for s in rng.integers(2**63, size=2))
    eps = np.random.default_rng(noise_seed).standard_normal(old.shape)
    current = {k: after_updates(old, rewards, updates=k, step_kl=step_kl) for k in staleness}
    tables = []
    for k in staleness:
        for sigma in noise_stds:
            engine = old + float(sigma) * eps
            table = gradient_diagnostics(methods, current[k], engine, rewards, n_samples=n_samples,
                                         n_batches=n_batches, rng=np.random.default_rng(batch_seed),
                                         old_logits=old, reference=reference)
            world = {"noise_std": float(sigma), "staleness": int(k), "step_kl": float(step_kl),
                     "n_samples": int(n_samples), "n_batches": int(n_batches),
                     **_world(old, current[k], engine, rewards)}
            tables.append(table.assign(**world)[[*world, *table.columns]])
    return pd.concat(tables, ignore_index=True)


def equivalence(table: pd.DataFrame, label: str, *, margin: float = EQUIVALENCE_MARGIN,
                z: float = 1.96) -> pd.DataFrame:
    """The verdict of the pre-registered equivalence test of objective ``label`` against the sweep's
    reference (:data:`EQUIVALENCE_MARGIN`), per cell of a :func:`gradient_sweep` table:
    ``equivalent`` when ``diff_rel + z diff_rel_se < margin``, ``different`` when
    ``diff_rel - z diff_rel_se > margin``, else ``undecided``; with the cell's ``delta_cosine``
    (cosine with the truth of the label's mean gradient minus the reference's)."""
    if "diff_rel" not in table.columns:
        raise ValueError("the table has no paired differences: run the sweep with a reference")
    if label not in set(table["label"]):
        raise ValueError(f"no objective labelled {label!r} in the table ({', '.join(dict.fromkeys(table['label']))})")
    cells = ["noise_std", "staleness"]
    mine = table[table["label"] == label].set_index(cells)
    ref = table[table["label"] == table["reference"]].set_index(cells)
    out = mine[["kl_engine", "kl_stale", "diff_rel", "diff_rel_se", "diff_batch_rel", "delta_batch_cosine",
                "delta_batch_cosine_se"]].copy()
    out["delta_cosine"] = mine["cosine"] - ref["cosine"].reindex(mine.index)
    lo, hi = out["diff_rel"] - z * out["diff_rel_se"], out["diff_rel"] + z * out["diff_rel_se"]
    out["verdict"] = np.where(hi < margin, "equivalent", np.where(lo > margin, "different", "undecided"))
    return out.reset_index()
