"""The simulator's step as it was before issue 18, item 4: the oracle that
``tests/test_sim.py::test_blocked_step_is_the_reference_bit_for_bit`` holds the blocked step to.

A frozen copy of ``drpo_sim/sim.py`` at commit 9df87fd (the optimiser, the sampling and
scattering helpers and ``Simulation``'s step), written one whole-table NumPy operation at a time.
The optimised step must give the same result tables for the same seeds, bit for bit. Do not
"improve" this file: its value is that it does not change.
"""

from __future__ import annotations

from collections import deque

import numpy as np

from drpo_sim import advantages, objectives, sim
from drpo_sim.offpolicy import engine_logp, trainer_logp
from drpo_sim.policies import Params, make_policy
from drpo_sim.sim import SeedStreams, SimConfig, TokenSink, TrainConfig, _Accumulator


def run_reference(cfg: SimConfig, method: str, seeds: list[int], params: dict | None = None, token_sink=None):
    """``drpo_sim.sim.run`` with the reference step: the tidy result table."""
    state = ReferenceSimulation(cfg, objectives.get(method, **(params or {})), [int(s) for s in seeds], token_sink)
    return state.table([state.step(k) for k in range(1, cfg.train.steps + 1)])


class ReferenceOptimizer:
    """SGD or AdamW (decoupled weight decay, Loshchilov & Hutter 2019), per-seed gradient clipping.

    Clipping scales a seed's whole gradient by ``min(1, grad_clip / (norm + 1e-6))``, as
    ``torch.nn.utils.clip_grad_norm_``; the norm runs over all of the seed's parameters.
    """

    def __init__(self, cfg: TrainConfig, params: Params):
        self.cfg = cfg
        self.t = 0
        self.m = {k: np.zeros_like(v) for k, v in params.items()}
        self.v = {k: np.zeros_like(v) for k, v in params.items()}

    @staticmethod
    def grad_norm(grads: Params) -> np.ndarray:
        sq = sum(np.sum(g * g, axis=tuple(range(1, g.ndim))) for g in grads.values())
        return np.sqrt(sq)

    def step(self, params: Params, grads: Params, frozen: np.ndarray) -> tuple[Params, np.ndarray]:
        """One update of the loss gradient ``grads``; seeds where ``frozen`` do not move.

        Returns new parameter arrays (the old ones stay valid: the staleness history holds them)
        and the per-seed gradient norm before clipping. ``grads`` may be overwritten.
        """
        cfg = self.cfg
        norm = self.grad_norm(grads)
        scale = np.ones_like(norm) if cfg.grad_clip == 0 else np.minimum(1.0, cfg.grad_clip / (norm + 1e-6))
        stopped = frozen | ~np.isfinite(norm)
        scale = np.where(stopped, 0.0, scale)
        self.t += 1
        lr_t = cfg.lr
        if cfg.optimizer == "adam":
            lr_t = cfg.lr / (1 - cfg.beta1**self.t)  # bias corrections folded into the step size
            c2 = 1.0 / np.sqrt(1 - cfg.beta2**self.t)
        new = {}
        for k, p in params.items():
            g = grads[k]
            if np.any(stopped):
                g = np.where(_seed_axis(stopped, g), 0.0, g)  # NaN * 0 would stay NaN
            if np.any(scale != 1.0):
                g *= _seed_axis(scale, g)
            if cfg.optimizer == "sgd":
                upd = g
            else:
                m, v = self.m[k], self.v[k]
                m *= cfg.beta1
                m += (1 - cfg.beta1) * g
                v *= cfg.beta2
                g *= g
                g *= 1 - cfg.beta2
                v += g
                upd = np.sqrt(v)
                upd *= c2
                upd += 1e-8
                np.divide(m, upd, out=upd)
            if cfg.weight_decay:
                upd = upd + (cfg.weight_decay * cfg.lr / lr_t) * p
            if np.any(frozen):
                upd = np.where(_seed_axis(frozen, upd), 0.0, upd)
            upd *= -lr_t
            upd += p
            new[k] = upd
        return new, norm


def _seed_axis(x: np.ndarray, like: np.ndarray) -> np.ndarray:
    return x.reshape((-1,) + (1,) * (like.ndim - 1))



def sample_tokens(probs: np.ndarray, rows: np.ndarray, u: np.ndarray) -> np.ndarray:
    """Inverse-CDF sampling: token ``y`` of row ``rows`` (a flat index into the ``[N*S]`` rows of
    ``probs [..., V]``) with ``cdf[y-1] <= u < cdf[y]``; tokens with zero probability are never drawn.

    All rows' CDFs are laid end to end (row ``i`` offset by ``i``) so that one ``searchsorted``
    serves every draw.
    """
    v = probs.shape[-1]
    p = probs.reshape(-1, v)
    cdf = np.cumsum(p, axis=1)
    cdf /= cdf[:, -1:]
    cdf[:, -1] = 1.0
    cdf += np.arange(cdf.shape[0], dtype=np.float64)[:, None]
    tok = np.searchsorted(cdf.ravel(), rows + u, side="right") - rows * v
    tok = np.clip(tok, 0, v - 1)
    bad = p[rows, tok] == 0  # possible only through rounding of u + offset at a row's very end
    if np.any(bad):
        tok[bad] = np.argmax(cdf[rows[bad]] - rows[bad, None] > u[bad, None], axis=1)
    return tok


def gather(table: np.ndarray, rows: np.ndarray, tokens: np.ndarray) -> np.ndarray:
    """``table[row, token]`` for a ``[N, S, V]`` table and flat row indices."""
    v = table.shape[-1]
    return table.reshape(-1)[rows * v + tokens]


def logit_gradient(coef: np.ndarray, rows: np.ndarray, tokens: np.ndarray, pi: np.ndarray) -> np.ndarray:
    """``sum_t coef_t (onehot(y_t) - pi(.|s_t))`` accumulated into a ``[N, S, V]`` table."""
    n_rows, v = pi.shape[0] * pi.shape[1], pi.shape[-1]
    onehot = np.bincount((rows * v + tokens).ravel(), weights=coef.ravel(), minlength=n_rows * v)
    per_row = np.bincount(rows.ravel(), weights=coef.ravel(), minlength=n_rows)
    return onehot.reshape(pi.shape) - per_row.reshape(pi.shape[:2] + (1,)) * pi



class ReferenceSimulation(sim.Simulation):
    """The step of ``drpo_sim.sim.Simulation`` before issue 18 (whole tables, one operation at a
    time); ``table`` and ``_emit`` are inherited unchanged."""

    def __init__(self, cfg: SimConfig, obj: objectives.Objective, seeds: list[int], token_sink: TokenSink | None):
        self.cfg, self.obj, self.seeds, self.sink = cfg, obj, seeds, token_sink
        self.env = cfg.env.make()
        self.op = cfg.offpolicy
        self.tr = cfg.train
        n = len(seeds)
        self.streams = SeedStreams(seeds)
        z0 = self.env.initial_logits()
        self.policy = make_policy(cfg.env.policy, z0, n_features=cfg.env.n_features)
        draws = None
        if cfg.env.policy == "shared":
            draws = self.streams.standard_normal((z0.shape[0] + z0.shape[1], cfg.env.n_features))
        self.params = self.policy.init(z0, n, draws)
        # the engine's persistent bias, drawn once (only when on, so other runs' streams are unchanged)
        self.bias = self.streams.standard_normal(z0.shape) if self.op.bias_std > 0 else None
        # each prompt's reward scale as the learner sees it (all ones without a spread), fixed for the run
        self.reward_scale = advantages.reward_scales(self.tr.reward_scale_spread, self.env.n_prompts)
        self.opt = ReferenceOptimizer(self.tr, self.params)
        self.history: deque[Params] = deque([self.params], maxlen=self.op.staleness + 1)
        self.dead = np.zeros(n, dtype=bool)
        self._cache: tuple[Params, np.ndarray] | None = None
        self.initial_reward = self.env.expected_reward(self.trainer_logp())

    def trainer_logp(self) -> np.ndarray:
        """The trainer's log-probs ``[N, S, V]`` at the current parameters (computed once per update)."""
        if self._cache is None or self._cache[0] is not self.params:
            self._cache = (self.params, trainer_logp(self.policy.logits(self.params), self.op))
        return self._cache[1]

    # one step ------------------------------------------------------------------------------
    def step(self, step: int) -> dict[str, np.ndarray]:
        env, op, tr = self.env, self.op, self.tr
        n, s_, v = len(self.seeds), self.env.n_states, self.env.vocab_size
        z_roll = self.policy.logits(self.history[0])
        noise = self.streams.noise(op, (s_, v)) if op.needs_noise else None
        logmu = engine_logp(z_roll, op, noise, self.bias)
        logpi0 = self.trainer_logp()
        mu, pi0 = np.exp(logmu), np.exp(logpi0)
        acc = _Accumulator(n)
        acc.tv = 0.5 * np.abs(pi0 - mu).sum(-1).mean(-1)
        # KL(mu || pi) = sum mu (log mu - log pi); tokens with mu = 0 (truncated) contribute 0
        acc.kl = (mu * np.subtract(logmu, logpi0, out=np.zeros_like(mu), where=mu > 0)).sum(-1).mean(-1)
        del pi0
        if tr.mode == "exact":
            self._exact_updates(logmu, mu, logpi0, acc)
        else:
            self._sampled_updates(step, logmu, mu, logpi0, acc)
        logpi = self.trainer_logp()
        reward = np.where(self.dead, np.nan, env.expected_reward(logpi))
        # the trainer's logits are finite, so no log-prob is -inf and p log p is well defined
        ent = np.where(self.dead, np.nan, -(np.exp(logpi) * logpi).sum(-1).mean(-1))
        return acc.row(reward, ent, self.dead)

    def _update(self, grad_z: np.ndarray) -> np.ndarray:
        """Ascend ``J`` along the logits' gradient ``grad_z`` (one optimiser step); the grad norm."""
        grads = self.policy.backward(self.params, -grad_z)
        with np.errstate(over="ignore", invalid="ignore"):
            new, norm = self.opt.step(self.params, grads, self.dead)
            finite = np.isfinite(norm) & np.logical_and.reduce(
                [np.isfinite(p).reshape(p.shape[0], -1).all(axis=1) for p in new.values()]
            )
        newly_dead = ~finite & ~self.dead
        if np.any(newly_dead):
            new = {k: np.where(_seed_axis(newly_dead, p), self.params[k], p) for k, p in new.items()}
            self.dead |= newly_dead
        self.params = new
        self.history.append(new)
        return norm

    def _anchor(self, logmu: np.ndarray, logpi0: np.ndarray) -> np.ndarray:
        return logmu if self.op.anchor == "rollout" else logpi0

    def _exact_updates(self, logmu: np.ndarray, mu: np.ndarray, logpi0: np.ndarray, acc: _Accumulator) -> None:
        adv = advantages.exact(self.env.token_rewards(), mu, std_norm=self.tr.std_norm)
        anchor = self._anchor(logmu, logpi0)
        for _ in range(self.op.updates_per_batch):
            logpi = self.trainer_logp()
            pi = np.exp(logpi)
            g = self.obj.grad_logp(logpi, anchor, adv)
            q = np.where(mu > 0, mu * g, 0.0)
            grad_z = q - q.sum(-1, keepdims=True) * pi
            norm = self._update(grad_z)
            w = self.obj.weight(logpi, anchor, adv)
            acc.add(w, np.abs(pi - mu), mu, norm)

    def _sampled_updates(
        self, step: int, logmu: np.ndarray, mu: np.ndarray, logpi0: np.ndarray, acc: _Accumulator
    ) -> None:
        env, op, tr = self.env, self.op, self.tr
        n, t_, s_ = len(self.seeds), env.horizon, env.n_states
        p_step = tr.prompts_per_step or env.n_prompts
        if p_step < env.n_prompts:
            prompts = np.argsort(self.streams.random((env.n_prompts,)), axis=1)[:, :p_step]
        else:
            prompts = np.broadcast_to(np.arange(env.n_prompts), (n, p_step))
        g_ = tr.group_size
        # rows[n, p, g, t]: flat index of state (prompt, t) of seed n in the [N, S, V] tables
        rows = (np.arange(n)[:, None, None, None] * s_ + prompts[:, :, None, None] * t_ + np.arange(t_)).repeat(
            g_, axis=2
        )
        u = self.streams.random((p_step, g_, t_))
        tokens = sample_tokens(mu, rows.ravel(), u.ravel()).reshape(rows.shape)
        rewards = env.rewards(prompts, tokens)
        adv = advantages.group_relative(rewards * self.reward_scale[prompts][..., None], std_norm=tr.std_norm)
        b = p_step * g_
        rows, tokens = rows.reshape(n, b, t_), tokens.reshape(n, b, t_)
        adv, rewards = adv.reshape(n, b, 1), rewards.reshape(n, b)
        group = np.broadcast_to(prompts[:, :, None], (n, p_step, g_)).reshape(n, b)
        lp_mu = gather(logmu, rows, tokens)
        lp_old = gather(logpi0, rows, tokens)
        anchor = self._anchor(lp_mu, lp_old)
        mask = np.ones((n, b // op.updates_per_batch, t_), dtype=bool)
        coef_agg = objectives.aggregation_weights(mask, tr.agg_mode, horizon=t_)
        acc.sample_reward = rewards.mean(axis=1)
        for u_idx, sl in enumerate(np.split(np.arange(b), op.updates_per_batch)):
            logpi = self.trainer_logp()
            pi = np.exp(logpi)
            r_, y_, a_ = rows[:, sl], tokens[:, sl], np.broadcast_to(adv[:, sl], (n, sl.size, t_))
            lp = gather(logpi, r_, y_)
            g = self.obj.grad_logp(lp, anchor[:, sl], a_)
            norm = self._update(logit_gradient(coef_agg * g, r_, y_, pi))
            w = self.obj.weight(lp, anchor[:, sl], a_)
            acc.add(w, np.abs(np.exp(lp) - np.exp(lp_mu[:, sl])), None, norm)
            if self.sink is not None:
                self._emit(
                    step, u_idx, sl, y_, lp, lp_mu[:, sl], lp_old[:, sl], a_, rewards[:, sl], group[:, sl], p_step
                )

