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
and ``figures/gradient_diagnostics*_equivalence.csv`` (the reproduce stage ``gradient_diagnostics``).

**The arena, small** (the last section, :func:`arena_gradient_diagnostics`, :func:`arena_gradient_sweep`):
a third world, where the mismatch is not injected but is the engine's reduced-precision pass over
the transformer's own parameters. A tiny configuration (8 tokens, responses of 3) has few enough
responses to enumerate, so ``J`` and its gradient with respect to every parameter are exact there.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
import torch
from scipy import sparse

from drpo_sim import objectives
from drpo_sim.arena.model import PRECISIONS, ArenaModel, Engine, Params, logits, response_logprobs, shapes
from drpo_sim.arena.pretrain import BaseModelConfig, pretrain
from drpo_sim.arena.task import WalkTask
from drpo_sim.arena.train import AGG_MODE, MU_BINS
from drpo_sim.envs.bandit import LongTailBandit
from drpo_sim.envs.tabular import TabularSequence
from drpo_sim.lm.model import torch_threads

__all__ = [
    "ARENA_BASE",
    "DIAGNOSTICS",
    "EQUIVALENCE_MARGIN",
    "PAIRED",
    "QUESTION",
    "SWEEP_OBJECTIVES",
    "WORLDS",
    "ArenaEnumeration",
    "after_updates",
    "arena_expected_reward",
    "arena_gradient_diagnostics",
    "arena_gradient_sweep",
    "equivalence",
    "exact_gradient",
    "gradient_diagnostics",
    "gradient_sweep",
    "sampled_gradients",
    "world",
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

QUESTION = "drpo (delta 12.5)"
"""The label of :data:`SWEEP_OBJECTIVES` whose equivalence with ``pg_is`` the sweep reports (issue 16:
does DRPO at the paper's ``delta`` produce a different gradient from ``pg_is``?)."""

WORLDS = ("bandit", "tabular")
"""The worlds with an exact gradient (:func:`world`)."""


def world(env: str, vocab: int, *, zipf_exponent: float | None = None, n_prompts: int | None = None,
          horizon: int | None = None) -> tuple[np.ndarray, np.ndarray | TabularSequence]:
    """``(pi_old's logits, rewards)`` of a world of :data:`WORLDS` at vocabulary ``vocab``: the
    long-tail bandit's initial logits ``[V]`` and per-token rewards, or the tabular task's initial
    logits ``[P T, V]`` and the task itself (its rewards); unset knobs take the world's defaults."""
    if env not in WORLDS:
        raise ValueError(f"unknown world {env!r}; the worlds with an exact gradient are {', '.join(WORLDS)}")
    knobs = {} if zipf_exponent is None else {"zipf_exponent": zipf_exponent}
    if env == "bandit":
        bandit = LongTailBandit(vocab_size=vocab, **knobs)
        return bandit.initial_logits()[0], bandit.token_rewards()
    knobs.update({k: v for k, v in (("n_prompts", n_prompts), ("horizon", horizon)) if v is not None})
    task = TabularSequence(vocab_size=vocab, **knobs)
    return task.initial_logits(), task


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
    _check_reference(specs, reference)
    seed = int(rng.integers(2**63))  # one draw from the caller's generator; the same batches for every objective
    bt = _Batches(logits, engine_logits, old_logits, rewards, n_samples, n_batches, np.random.default_rng(seed))
    return _objective_rows(specs, reference, bt, exact_gradient(logits, rewards).ravel(), n_batches)


def _check_reference(specs: list[tuple[str, objectives.Objective]], reference: str | None) -> None:
    if reference is not None and reference not in [lab for lab, _ in specs]:
        raise ValueError(f"reference {reference!r} is not among the objectives ({', '.join(lab for lab, _ in specs)})")


def _objective_rows(specs: list[tuple[str, objectives.Objective]], reference: str | None, bt: Any,
                    truth: np.ndarray, n_batches: int) -> pd.DataFrame:
    """One row per objective of the diagnostics on the batches ``bt`` (:class:`_Batches` or
    :class:`_ArenaBatches`: ``grad_logp``, ``mean``, ``sq_norm``, ``dot`` and the tokens' log-probs and
    advantages) against the exact gradient ``truth``; with ``reference``, the paired differences."""
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
        row = {"objective": str(obj), "label": lab,
               **_diagnostics(mean, variance, batch_cos, truth, truth_norm, n_batches), "ess": ess, "ess_seq": ess_seq}
        row.update(_shares(np.abs(d), np.exp(bt.logp_behavior).reshape(d.shape), bt.advantage.reshape(d.shape)))
        if ref is not None:
            row["reference"] = reference
            row.update(_paired(bt, d - ref["d"], ref, batch_cos, truth_norm))
        rows.append(row)
    return pd.DataFrame(rows)


def _diagnostics(mean: np.ndarray, variance: float, batch_cos: np.ndarray, truth: np.ndarray, truth_norm: float,
                 n_batches: int) -> dict[str, float]:
    """The columns of :data:`DIAGNOSTICS` but the ESS, from the mean estimate, its variance and each
    batch's cosine with the truth (NaN where undefined: a zero mean, a zero truth, no batch with a
    direction)."""
    mean_norm = float(np.linalg.norm(mean))
    bias = float(np.linalg.norm(mean - truth))
    return {"cosine": float(mean @ truth / (mean_norm * truth_norm)) if mean_norm * truth_norm > 0 else np.nan,
            "batch_cosine": float(np.nanmean(batch_cos)) if np.isfinite(batch_cos).any() else np.nan,
            "bias_norm": bias,
            "relative_bias": bias / truth_norm if truth_norm > 0 else np.nan,
            "norm_ratio": mean_norm / truth_norm if truth_norm > 0 else np.nan,
            "variance": variance, "mean_se": float(np.sqrt(variance / n_batches))}


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
    reference (:data:`EQUIVALENCE_MARGIN`), per cell of a :func:`gradient_sweep` table (or of an
    :func:`arena_gradient_sweep` table, whose cells are precisions instead of noise stds):
    ``equivalent`` when ``diff_rel + z diff_rel_se < margin``, ``different`` when
    ``diff_rel - z diff_rel_se > margin``, else ``undecided``; with the cell's ``delta_cosine``
    (cosine with the truth of the label's mean gradient minus the reference's)."""
    if "diff_rel" not in table.columns:
        raise ValueError("the table has no paired differences: run the sweep with a reference")
    if label not in set(table["label"]):
        raise ValueError(f"no objective labelled {label!r} in the table ({', '.join(dict.fromkeys(table['label']))})")
    cells = [c for c in ("noise_std", "precision") if c in table.columns] + ["staleness"]  # the sweep's axes
    mine = table[table["label"] == label].set_index(cells)
    ref = table[table["label"] == table["reference"]].set_index(cells)
    out = mine[["kl_engine", "kl_stale", "diff_rel", "diff_rel_se", "diff_batch_rel", "delta_batch_cosine",
                "delta_batch_cosine_se"]].copy()
    out["delta_cosine"] = mine["cosine"] - ref["cosine"].reindex(mine.index)
    lo, hi = out["diff_rel"] - z * out["diff_rel_se"], out["diff_rel"] + z * out["diff_rel_se"]
    out["verdict"] = np.where(hi < margin, "equivalent", np.where(lo > margin, "different", "undecided"))
    return out.reset_index()


# ----------------------------------------------------------------------------------------------
# the arena in a small configuration: the exact gradient of a transformer's expected reward
#
# In the two worlds above the engine's mismatch is an injected noise on logits. In the arena
# (drpo_sim.arena) it is the reduced-precision pass over the very parameters the trainer updates.
# Its expected reward is a sum over every response, which a small enough task can enumerate: then
# the gradient with respect to the transformer's parameters is exact, and every objective's
# sampled gradient can be held against it as above, in parameter space.

ARENA_BASE = BaseModelConfig(model=ArenaModel(vocab_size=8, max_len=5, d_model=16, n_heads=2, d_mlp=32),
                             task=WalkTask(vocab_size=8, n_classes=4, response_len=3, misread=0.25),
                             steps=400, lr=1e-2)
"""The small arena of :func:`arena_gradient_diagnostics`: the walk task with ``V = 8`` tokens in 4
classes of 2 and responses of ``H = 3`` tokens (``8^3 = 512`` responses per prompt), a quarter of the
demonstrations misread (:data:`drpo_sim.arena.calibration.MISREAD`), and the arena's transformer at
``d_model = 16`` (2,600 parameters) pretrained on it for 400 steps. On the 4 prompts of
:class:`ArenaEnumeration` by default: an expected reward of 0.42 (0.25 is guessing a class; every
prompt has a response of reward 1), 1.24 nats of entropy per token, and per token under ``mu``
``E abs(pi - mu)`` = 1.7e-3 in bf16, 2.4e-4 in fp16 and 2.9e-3 in fp8 (``KL(mu || pi_old)`` 3.1e-5,
9.1e-7 and 2.3e-4): the size of the arena's calibrated bf16 mismatch (about 4e-3) within a factor 3."""

MAX_RESPONSES = 4096
"""The most responses per prompt (``V^H``) :class:`ArenaEnumeration` enumerates."""

MAX_SCORE_ENTRIES = 2**25
"""The largest score Jacobian (rows times parameters, float64: 256 MiB) :class:`ArenaEnumeration` builds."""


def _flat(grads: Sequence[torch.Tensor]) -> torch.Tensor:
    """Parameters or gradients ``[R, ...]`` per name -> ``[R, n_params]`` (the names' order)."""
    return torch.cat([g.reshape(g.shape[0], -1) for g in grads], dim=1)


def _digits(n: int, vocab: int, length: int) -> torch.Tensor:
    """The ``n = vocab^length`` token tuples of ``length`` in lexicographic order, ``[n, length]``."""
    return (torch.arange(n)[:, None] // vocab ** torch.arange(length - 1, -1, -1)) % vocab


def arena_expected_reward(params: Params, cfg: ArenaModel, seqs: torch.Tensor, rewards: torch.Tensor,
                          prompt_len: int = WalkTask.prompt_len) -> torch.Tensor:
    """``J = (1/P) sum_p sum_y pi(y | x_p) R(x_p, y)``, differentiable in ``params`` (one run's,
    ``[1, ...]``, in their own dtype: float64 for an exact gradient) through the trainer's pass
    (:func:`drpo_sim.arena.model.response_logprobs`): ``seqs [P, n, P_len + H]`` every response of
    each of ``P`` prompts, ``rewards [P, n]`` theirs."""
    p, n, length = seqs.shape
    logp = response_logprobs(params, cfg, seqs.reshape(1, p * n, length), prompt_len)[1]  # [1, P n, H]
    return (logp.sum(-1).exp().view(p, n) * rewards.to(logp.dtype)).sum(dim=1).mean()


class ArenaEnumeration:
    """Every response of a small arena task, the trainer's policies over them and the exact gradient.

    ``n_prompts`` prompts of ``base.task`` (drawn with ``prompt_seed``), each with all ``n = V^H``
    responses (``seqs [P, n, 2 + H]``, lexicographic) and their checked rewards (``rewards [P, n]``,
    the task's :meth:`~drpo_sim.arena.task.WalkTask.right`, float64). A *state* is a prompt and a
    prefix ``(p, y_<t)`` (``P sum_{t<H} V^t`` of them, position-major), a *key* ``state V + y`` one
    token in one state; ``token_key [P, n, H]`` is every response's tokens as keys.

    - ``params_old``: ``pi_old``, the base model (``base``; or ``params``), the policy the rollout
      is made with, which the engine copies; ``params``: ``pi``, after ``staleness`` exact-gradient
      steps from it (:meth:`step`);
    - ``logp_old`` / ``logp``: the trainer's float32 log-probs of every key (``[n_keys]``, as float64);
    - ``scores [n_keys, n_params]``: ``grad_theta log pi(y | state)`` at ``params``, float64;
    - ``truth [n_params]``: ``grad_theta J`` at ``params`` by autograd through
      :func:`arena_expected_reward` in float64; ``expected_reward``, ``expected_reward_old``: ``J``.

    The parameters are flattened in the order of :func:`drpo_sim.arena.model.shapes`.
    """

    def __init__(self, base: BaseModelConfig = ARENA_BASE, *, n_prompts: int = 4, prompt_seed: int = 0,
                 staleness: int = 0, step_kl: float = 1e-3, params: Params | None = None):
        task, cfg = base.task, base.model
        v, h = task.vocab_size, task.response_len
        if isinstance(n_prompts, bool) or not isinstance(n_prompts, int) or n_prompts < 1:
            raise ValueError(f"n_prompts must be an integer >= 1, got {n_prompts!r}")
        if v**h > MAX_RESPONSES:
            raise ValueError(f"{v}^{h} = {v**h} responses per prompt: the exact gradient enumerates at most "
                             f"{MAX_RESPONSES} (a smaller vocabulary or response length)")
        if isinstance(staleness, bool) or not isinstance(staleness, (int, np.integer)) or staleness < 0:
            raise ValueError(f"staleness (updates since the rollout) must be an integer >= 0, got {staleness!r}")
        if not (isinstance(step_kl, (int, float)) and np.isfinite(step_kl) and step_kl > 0):
            raise ValueError(f"step_kl must be a finite number > 0, got {step_kl!r}")
        self.base, self.task, self.cfg = base, task, cfg
        self.vocab, self.horizon, self.n_prompts, self.n = v, h, n_prompts, v**h
        self.staleness, self.step_kl = int(staleness), float(step_kl)
        self.prompts = task.prompts(n_prompts, torch.Generator().manual_seed(prompt_seed))  # [P, 2]
        resp = _digits(self.n, v, h)
        self.seqs = torch.cat([self.prompts[:, None].expand(-1, self.n, -1), resp[None].expand(n_prompts, -1, -1)],
                              dim=2)  # [P, n, 2 + H]
        self.rewards = task.right(self.seqs).double().mean(dim=-1).numpy()  # [P, n]
        # states (t, p, prefix y_<t): position-major, then prompt, then the prefix in lexicographic order
        self.state_offsets = np.concatenate([[0], np.cumsum([n_prompts * v**t for t in range(h)])])
        self.n_states = int(self.state_offsets[-1])
        self.n_keys = self.n_states * v
        t = np.arange(h)
        i = np.arange(self.n)[:, None]
        prefix, token = i // v ** (h - t), (i // v ** (h - 1 - t)) % v  # [n, H]
        state = self.state_offsets[:-1] + np.arange(n_prompts)[:, None, None] * v**t + prefix  # [P, n, H]
        self.token_key = state * v + token
        # the distinct inputs (prompt and y_1 .. y_{H-1}) and, per position, the input each state is read at
        self.inputs = torch.cat([self.prompts[:, None].expand(-1, v ** (h - 1), -1),
                                 _digits(v ** (h - 1), v, h - 1)[None].expand(n_prompts, -1, -1)],
                                dim=2).reshape(-1, task.prompt_len + h - 1)
        self._read_at = [(np.arange(n_prompts)[:, None] * v ** (h - 1) + np.arange(v**t)[None, :] * v ** (h - 1 - t))
                         .ravel() for t in range(h)]
        self.names = list(shapes(cfg))
        self.n_params = sum(int(np.prod(s)) for s in shapes(cfg).values())
        if self.n_keys * self.n_params > MAX_SCORE_ENTRIES:
            raise ValueError(f"the score Jacobian would have {self.n_keys} x {self.n_params} entries, more than "
                             f"{MAX_SCORE_ENTRIES}: a smaller model or task")
        with torch_threads(1):
            self.params_old = {k: x.detach().clone() for k, x in (pretrain(base) if params is None else params).items()}
            self.logp_old = self._trainer_logp(self.params_old)
            self.expected_reward_old = self._expected_reward(self.logp_old)
            current = self.params_old
            for _ in range(self.staleness):
                current = self.step(current)
            self.params = current
            self.logp = self._trainer_logp(current) if self.staleness else self.logp_old
            self.expected_reward = self._expected_reward(self.logp)
            self.scores = self.score_jacobian(current)
            self.truth = self.exact_gradient(current)

    # the trainer ---------------------------------------------------------------------------
    def _trainer_logp(self, params: Params) -> np.ndarray:
        """The trainer's float32 log-probs of every key ``[n_keys]`` (float64)."""
        with torch.no_grad():
            dummy = torch.zeros(len(self.inputs), 1, dtype=torch.long)
            lp_all = response_logprobs(params, self.cfg, torch.cat([self.inputs, dummy], dim=1)[None],
                                       self.task.prompt_len)[0][0]  # [N_in, H, V]
        return torch.cat([lp_all[rows, t] for t, rows in enumerate(self._read_at)]).double().numpy().ravel()

    def seq_logp(self, key_logp: np.ndarray) -> np.ndarray:
        """Every response's log-probability ``[P, n]`` from its keys' ``key_logp [n_keys]``."""
        return key_logp[self.token_key].sum(axis=-1)

    def _expected_reward(self, key_logp: np.ndarray) -> float:
        return float((np.exp(self.seq_logp(key_logp)) * self.rewards).sum(axis=1).mean())

    def exact_gradient(self, params: Params) -> np.ndarray:
        """``grad_theta J`` at ``params`` ``[n_params]``: autograd through :func:`arena_expected_reward`
        with the parameters in float64 (the trainer's function, evaluated without float32 rounding)."""
        p64 = {k: x.detach().double().requires_grad_(True) for k, x in params.items()}
        with torch.enable_grad():
            j = arena_expected_reward(p64, self.cfg, self.seqs, torch.from_numpy(self.rewards), self.task.prompt_len)
            grads = torch.autograd.grad(j, [p64[k] for k in self.names])
        return _flat(grads)[0].numpy()

    def score_jacobian(self, params: Params) -> np.ndarray:
        """``grad_theta log pi(y | state)`` of every key at ``params``, ``[n_keys, n_params]`` float64.
        Each distinct input is its own run of the arena's batched model (its run axis: the runs never
        mix), so one backward pass per (position, token) gives every state's row at once."""
        v, n_in = self.vocab, len(self.inputs)
        runs = {k: params[k].detach().double().expand(n_in, *params[k].shape[1:]).clone().requires_grad_(True)
                for k in self.names}
        out = np.empty((self.n_keys, self.n_params))
        with torch.enable_grad():
            z, _ = logits(runs, self.cfg, self.inputs[:, None, :])  # [N_in, 1, P_len + H - 1, V]
            lp = torch.log_softmax(z[:, 0, self.task.prompt_len - 1:], dim=-1)  # [N_in, H, V]
            for t, rows in enumerate(self._read_at):
                keys = (self.state_offsets[t] + np.arange(len(rows))) * v
                for y in range(v):
                    grads = torch.autograd.grad(lp[rows, t, y].sum(), [runs[k] for k in self.names],
                                                retain_graph=True)
                    out[keys + y] = _flat([g[rows] for g in grads]).numpy()
        return out

    def fisher(self, key_logp: np.ndarray, scores: np.ndarray, direction: np.ndarray) -> float:
        """The per-token Fisher quadratic form of ``direction``: ``(1/(P H)) sum_p E_{y ~ pi}
        sum_t Var_{pi(.|y_<t)}(s . direction)``, the second-order KL(pi || pi + eta direction) per
        token over ``eta^2 / 2``; ``pi`` given by its keys' log-probs, ``scores`` its score Jacobian."""
        u = (scores @ direction).reshape(self.n_states, self.vocab)
        pk = np.exp(key_logp).reshape(self.n_states, self.vocab)
        var = (pk * u**2).sum(axis=1) - (pk * u).sum(axis=1) ** 2  # [n_states]
        visit = np.exp(self.seq_logp(key_logp))  # [P, n]
        return float((visit[..., None] * var[self.token_key // self.vocab]).sum() / (self.n_prompts * self.horizon))

    def step(self, params: Params) -> Params:
        """One exact-gradient update from ``params`` (float32, the trainer's dtype): a step along
        ``grad J`` whose second-order KL per token is ``step_kl`` (:meth:`fisher`; TRPO's step length
        along the plain gradient, as :func:`after_updates` in the worlds above)."""
        g = self.exact_gradient(params)
        f = self.fisher(self._trainer_logp(params), self.score_jacobian(params), g)
        if f <= 0:
            return params
        eta = np.sqrt(2.0 * self.step_kl / f)
        flat = torch.from_numpy(eta * g)
        out, i = {}, 0
        for k in self.names:
            size = params[k].numel()
            out[k] = (params[k].double() + flat[i:i + size].view(params[k].shape)).float()
            i += size
        return out

    # the engine ----------------------------------------------------------------------------
    def engine_state_logp(self, precision: str) -> np.ndarray:
        """The engine's log-probs ``log mu`` of every token in every state, ``[n_states, V]`` (float64
        of its float32 values), for ``pi_old``'s parameters in ``precision``.

        ``fp32`` is the arena's control: ``mu`` is the trainer's own float32 ``pi_old``, bit for bit
        (:meth:`drpo_sim.arena.model.Engine.rollout` given the trainer). Otherwise the engine's own
        incremental pass (:class:`~drpo_sim.arena.model.Engine`), read by ``H`` forced rollouts: the
        ``r``-th rollout runs every prefix of length ``r`` and reports the engine's whole next-token
        distribution there (``topk = V``); its prefix is forced by drawing, at each earlier position,
        the midpoint of the wanted token's interval of the engine's CDF (known from the earlier
        rollouts, and computed as its sampler does). That the rollouts did follow is checked."""
        v, h, n_p = self.vocab, self.horizon, self.n_prompts
        if precision == "fp32":
            return self.logp_old.reshape(self.n_states, v).copy()
        engine = Engine(self.params_old, self.cfg, precision)
        known: list[torch.Tensor] = []  # per position t: [P V^t, V] float32, vocabulary order
        with torch_threads(1):
            for r in range(h):
                forced = _digits(v**r, v, r).repeat(n_p, 1)  # [P V^r, r]
                rows = torch.arange(n_p).repeat_interleave(v**r)
                draws = []
                for j in range(r):
                    lp = known[j][rows * v**j + torch.arange(v**r).repeat(n_p) // v ** (r - j)]
                    cdf = lp.exp().cumsum(dim=-1)
                    y = forced[:, j:j + 1]
                    lo = torch.where(y > 0, cdf.gather(-1, (y - 1).clamp_min(0)), 0.0)[:, 0]
                    hi = cdf.gather(-1, y)[:, 0]
                    mid = ((lo.double() + hi.double()) / 2).float()
                    draws.append(torch.where(mid < hi, mid, lo))
                draws.append(torch.zeros(len(rows)))
                roll = engine.rollout(self.prompts[rows][None], r + 1, lambda j: draws[j][None], topk=v)
                if not torch.equal(roll.seqs[0, :, self.task.prompt_len:-1], forced):
                    raise RuntimeError(f"the {precision} engine did not follow the forced prefixes of length {r}")
                lp_r = torch.empty(len(rows), v).scatter_(-1, roll.topk_ids[0, :, r], roll.topk_logp[0, :, r])
                known.append(lp_r)
        return torch.cat(known).double().numpy()


class _ArenaBatches:
    """``B`` batches of ``G`` responses per prompt drawn from the engine's ``mu`` over the enumerated
    responses, with the three policies' log-probs of their tokens ``[B, P G, H]`` (the layout of
    :class:`_Batches`); a batch's gradient is a sum of rows of the score Jacobian, ``W @ scores`` with
    ``W [B, n_keys]`` sparse. Gives :func:`_paired` what it needs (``mean``, ``sq_norm``)."""

    def __init__(self, world: ArenaEnumeration, engine_state_logp: np.ndarray, n_samples: int, n_batches: int,
                 rng: np.random.Generator):
        b, g, n_p, v = n_batches, n_samples, world.n_prompts, world.vocab
        self.world, self.n_batches = world, b
        self.logmu_keys = engine_state_logp.ravel()
        self.logmu_all, self.logp_all = engine_state_logp, world.logp.reshape(world.n_states, v)
        # exact sampling from mu's sequence probabilities (renormalised per prompt against float32 rounding),
        # by inverse CDF in every prompt at once: the prompts' CDFs laid end to end, prompt p on [p, p + 1]
        probs = np.exp(world.seq_logp(self.logmu_keys))  # [P, n]
        cdf = np.cumsum(probs, axis=1)
        cdf = (cdf / cdf[:, -1:] + np.arange(n_p)[:, None]).ravel()
        prompt = np.broadcast_to(np.arange(n_p)[None, :, None], (b, n_p, g))
        e = np.minimum(np.searchsorted(cdf, prompt + rng.random((b, n_p, g)), side="right"), (prompt + 1) * world.n - 1)
        shape = (b, n_p * g, world.horizon)
        self.key = world.token_key.reshape(-1, world.horizon)[e].reshape(shape)
        self.logp = world.logp[self.key]
        self.logp_behavior = self.logmu_keys[self.key]
        self.logp_old = world.logp_old[self.key]
        reward = world.rewards.ravel()[e]  # [B, P, G]
        adv = reward - reward.mean(axis=2, keepdims=True)
        self.advantage = np.repeat(adv.reshape(b, -1, 1), world.horizon, axis=-1)
        self.sample_id = np.repeat(np.arange(b * n_p * g).reshape(b, -1, 1), world.horizon, axis=-1)
        # the arena's aggregation (AGG_MODE) times H: 1/(P G) on every token of the batch's full-length responses
        mask = np.ones(shape[1:], dtype=bool)
        self.coef = objectives.aggregation_weights(mask, AGG_MODE, horizon=world.horizon) * world.horizon
        self._rows = np.repeat(np.arange(b), self.key[0].size)
        self._cache: tuple[np.ndarray, np.ndarray] | None = None

    def grad_logp(self, obj: objectives.Objective) -> np.ndarray:
        """The objective's ``dJ_t/dlogp_t`` of every sampled token ``[B, P G, H]`` (as :meth:`_Batches.grad_logp`)."""
        extra = {c: self.topk(c) for c in getattr(obj, "required_columns", ()) if c in ("topk_tv", "topk_kl")}
        d = obj.grad_logp(self.logp, self.logp_behavior, self.advantage, logp_old=self.logp_old,
                          sample_id=self.sample_id, **extra)
        return np.asarray(d, dtype=np.float64).reshape(self.key.shape)

    def topk(self, column: str) -> np.ndarray:
        """DPPO's Top-K divergence between the engine's and the current policy's whole next-token
        distributions at each sampled token's state (the engine's :data:`TOPK` most likely tokens:
        all ``V`` here, so the divergences are exact), ``[B, P G, H]``."""
        if not hasattr(self, "_topk"):
            k = min(TOPK, self.world.vocab)
            ids = np.argsort(-self.logmu_all, axis=1, kind="stable")[:, :k]
            tv, kl = objectives.topk_divergences(self.logp_all, ids, np.take_along_axis(self.logmu_all, ids, axis=1))
            self._topk = {"topk_tv": np.asarray(tv), "topk_kl": np.asarray(kl)}
        return self._topk[column][self.key // self.world.vocab]

    def gradients(self, d: np.ndarray) -> np.ndarray:
        """Every batch's gradient ``[B, n_params]``: ``sum_t coef d_t grad log pi(y_t | state_t)``."""
        if self._cache is not None and self._cache[0] is d:
            return self._cache[1]
        w = sparse.csr_array(((self.coef * d).ravel(), (self._rows, self.key.ravel())),
                             shape=(self.n_batches, self.world.n_keys))
        out = np.asarray(w @ self.world.scores)
        self._cache = (d, out)
        return out

    def mean(self, d: np.ndarray) -> np.ndarray:
        return self.gradients(d).mean(axis=0)

    def sq_norm(self, d: np.ndarray) -> np.ndarray:
        g = self.gradients(d)
        return np.einsum("bk,bk->b", g, g)

    def dot(self, d: np.ndarray, v: np.ndarray) -> np.ndarray:
        return self.gradients(d) @ v


def _arena_world(world: ArenaEnumeration, engine_state_logp: np.ndarray, bt: _ArenaBatches) -> dict[str, float]:
    """How far apart the three policies are, per token (exact sequence expectations), and the
    rollout-time mismatch of the sampled tokens."""
    h, n_p = world.horizon, world.n_prompts
    lm = engine_state_logp.ravel()
    mu_seq = np.exp(world.seq_logp(lm))
    old_seq = np.exp(world.seq_logp(world.logp_old))
    abs_tok = np.abs(np.exp(world.logp) - np.exp(lm))[world.token_key].sum(axis=-1)
    return {"kl_engine": float((mu_seq * (world.seq_logp(lm) - world.seq_logp(world.logp_old))).sum() / (n_p * h)),
            "kl_stale": float((old_seq * (world.seq_logp(world.logp_old) - world.seq_logp(world.logp))).sum()
                              / (n_p * h)),
            "abs_shift": float((mu_seq * abs_tok).sum() / (n_p * h)),
            "mismatch_mean": float(np.abs(np.exp(bt.logp_old) - np.exp(bt.logp_behavior)).mean()),
            "expected_reward": world.expected_reward,
            "truth_norm": float(np.linalg.norm(world.truth))}


def arena_gradient_diagnostics(methods: Sequence[str | tuple[str, dict[str, Any]] | objectives.Objective]
                               | Mapping[str, str | tuple[str, dict[str, Any]] | objectives.Objective]
                               | None = None, *, precision: str = "bf16",
                               world: ArenaEnumeration | None = None, base: BaseModelConfig = ARENA_BASE,
                               n_prompts: int = 4, staleness: int = 0, step_kl: float = 1e-3,
                               n_samples: int = 8, n_batches: int = 2000, rng: np.random.Generator,
                               reference: str | None = "pg_is") -> pd.DataFrame:
    """Every objective's sampled gradient against the exact gradient of the expected reward of a
    small arena, in parameter space: one row per objective (``methods``, default
    :data:`SWEEP_OBJECTIVES`), with the columns of :func:`gradient_diagnostics` (:data:`DIAGNOSTICS`,
    the gradient shares, with ``reference`` :data:`PAIRED`) and the three policies' distances.

    **The world** (:class:`ArenaEnumeration`, built from ``base``, ``n_prompts``, ``staleness`` and
    ``step_kl`` unless ``world`` is given): the arena's transformer (:data:`ARENA_BASE`: ``V = 8``,
    ``H = 3``, 2,600 parameters) on ``P`` prompts of its walk task, where every one of the ``V^H``
    responses of each prompt can be enumerated. Then ``J(theta) = (1/P) sum_p sum_y pi_theta(y|x_p)
    R(x_p, y)``, with the task's own checked reward, is a finite sum, and its gradient with respect to
    every parameter is computed by autograd through the trainer's pass: exact up to floating-point
    rounding (evaluated in float64; the trainer's float32 pass differs from it by float32 rounding,
    about 1e-7 relative, in the policies the objectives read).

    **The three policies** as in the arena: ``pi_old`` is the base model (the rollout's parameters);
    ``mu`` is the :class:`~drpo_sim.arena.model.Engine` at ``precision`` over ``pi_old``'s parameters,
    its real reduced-precision pass (:meth:`ArenaEnumeration.engine_state_logp`; ``fp32``: ``mu =
    pi_old`` bit for bit); ``pi`` is ``pi_old`` after ``staleness`` exact-gradient steps of second-order
    KL ``step_kl`` per token (:meth:`ArenaEnumeration.step`). The truth is ``grad J`` at ``pi``.

    **A batch** draws ``G = n_samples`` responses per prompt from ``mu``, exactly: the engine's
    probability of every enumerated response is the product of its token probabilities in the
    engine's pass, and the draws are by inverse CDF over them, all batches at once (equivalent to the
    engine's token-by-token sampler, and ``B`` times cheaper than calling it ``B`` times). Advantages
    are group-relative (``R - mean_G R``); every objective's per-token ``d_t``
    (:meth:`~drpo_sim.objectives.Objective.grad_logp`, given ``logp_old`` and a ``sample_id`` per
    response, and for DPPO's Top-K modes the exact divergences of each state's whole distributions)
    weighs the token's score ``grad_theta log pi(y_t | x, y_<t)``, a row of the score Jacobian computed
    once by autograd (:meth:`ArenaEnumeration.score_jacobian`), with the arena's aggregation
    (:data:`~drpo_sim.arena.train.AGG_MODE`, ``seq-mean-token-sum-norm``) times ``H``::

        g = (1/(P G)) sum_{responses} sum_t d_t grad_theta log pi(y_t | x, y_<t)

    (the arena's own loss gradient is ``g / H`` with one update per batch: the same direction, and
    ``g`` is the unbiased score-function form of ``grad J``, so lengths read against the truth).

    **What holds.** On-policy (fp32, no staleness) ``pg_is`` has ``d_t = A`` on every token, and
    ``E[g] = (1 - 1/G) grad J`` exactly, for sequences as for one token: the group mean includes the
    response's own reward with weight ``1/G``, and the other responses' rewards are independent of
    it. Off-policy, a token's ratio ``pi/mu`` is not its response's, so token-level importance
    sampling is biased as in the tabular task.

    **Limits.** The world is tiny (``V^H <= 4096`` responses per prompt, :data:`MAX_RESPONSES`; the
    score Jacobian ``n_keys x n_params`` in memory, :data:`MAX_SCORE_ENTRIES`), so its mismatch is
    that of a 16-wide model over 3 tokens, not of the arena's 64-token responses; the gradient is the
    parameter-space gradient (not the natural gradient, nor the preconditioned step AdamW would take);
    ``J`` averages over the ``P`` fixed prompts (the task's prompt distribution is not enumerated);
    one update per batch (no mini-batches, no gradient clipping); dense models only are meaningful
    for the truth (a mixture of experts' top-1 route is not differentiable).

    **Columns**, besides the objective's: the cell (``precision``, ``staleness``, ``step_kl``,
    ``n_prompts``, ``n_samples``, ``n_batches``) and the three policies' distances, per token and
    exact (expectations over every response): ``kl_engine`` = KL(mu || pi_old), ``kl_stale`` =
    KL(pi_old || pi), ``abs_shift`` = ``E_mu abs(pi - mu)``; ``mismatch_mean``, the rollout-time
    ``abs(pi_old - mu)`` averaged over the sampled tokens (the arena's ``mismatch_mean``,
    :func:`drpo_sim.lm.mismatch.run_statistics`); ``expected_reward`` ``J`` at ``pi`` and
    ``truth_norm`` ``||grad J||``.

    ``rng``: one draw, the batches' seed (every objective sees the same batches, so their differences
    are paired).
    """
    methods = SWEEP_OBJECTIVES if methods is None else methods
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; valid: {', '.join(PRECISIONS)}")
    for name, v in (("n_samples", n_samples), ("n_batches", n_batches)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 2:
            raise ValueError(f"{name} must be an integer >= 2, got {v!r}")
    if world is None:
        world = ArenaEnumeration(base, n_prompts=n_prompts, staleness=staleness, step_kl=step_kl)
    return _arena_table(methods, world, precision, world.engine_state_logp(precision), n_samples, n_batches,
                        int(rng.integers(2**63)), reference)


def _arena_table(methods, world: ArenaEnumeration, precision: str, engine_state_logp: np.ndarray, n_samples: int,
                 n_batches: int, seed: int, reference: str | None) -> pd.DataFrame:
    specs = _specs(methods)
    _check_reference(specs, reference)
    bt = _ArenaBatches(world, engine_state_logp, n_samples, n_batches, np.random.default_rng(seed))
    table = _objective_rows(specs, reference, bt, world.truth, n_batches)
    cell = {"precision": precision, "staleness": world.staleness, "step_kl": world.step_kl,
            "n_prompts": world.n_prompts, "n_samples": int(n_samples), "n_batches": int(n_batches),
            **_arena_world(world, engine_state_logp, bt)}
    return table.assign(**cell)[[*cell, *table.columns]]


def arena_gradient_sweep(precisions: Sequence[str] = PRECISIONS, *,
                         methods: Mapping[str, Any] | Sequence[Any] | None = None,
                         base: BaseModelConfig = ARENA_BASE, n_prompts: int = 4, staleness: Sequence[int] = (0,),
                         step_kl: float = 1e-3, n_samples: int = 8, n_batches: int = 2000,
                         rng: np.random.Generator, reference: str | None = "pg_is") -> pd.DataFrame:
    """:func:`arena_gradient_diagnostics` over engine precisions and staleness, as one tidy table: one
    row per (``precision``, ``staleness``, objective), ``methods`` defaulting to
    :data:`SWEEP_OBJECTIVES`. One world per staleness (the same ``pi_old`` and prompts), one engine
    per precision (over ``pi_old``, shared by every staleness), and one draw from ``rng`` seeding the
    batches of every cell: common random numbers, the same uniforms through each cell's ``mu``."""
    precisions, staleness = list(precisions), list(staleness)
    if not precisions or not staleness:
        raise ValueError("the sweep needs at least one precision and one staleness")
    bad = [p for p in precisions if p not in PRECISIONS]
    if bad:
        raise ValueError(f"unknown precisions {bad}; valid: {', '.join(PRECISIONS)}")
    if len(set(precisions)) != len(precisions) or len(set(staleness)) != len(staleness):
        raise ValueError(f"precisions and staleness must not repeat, got {precisions} and {staleness}")
    for name, v in (("n_samples", n_samples), ("n_batches", n_batches)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 2:
            raise ValueError(f"{name} must be an integer >= 2, got {v!r}")
    methods = SWEEP_OBJECTIVES if methods is None else methods
    seed = int(rng.integers(2**63))
    first = ArenaEnumeration(base, n_prompts=n_prompts, staleness=0, step_kl=step_kl)
    engines = {p: first.engine_state_logp(p) for p in precisions}
    tables = []
    for k in staleness:
        world = first if k == 0 else ArenaEnumeration(base, n_prompts=n_prompts, staleness=k, step_kl=step_kl)
        tables += [_arena_table(methods, world, p, engines[p], n_samples, n_batches, seed, reference)
                   for p in precisions]
    return pd.concat(tables, ignore_index=True)
