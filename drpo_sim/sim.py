"""The training loop: any objective of the registry, on either environment, vectorised over seeds.

One run trains ``N`` independent copies of the policy (one per seed) in lock step: every array
carries a leading seed axis, and nothing loops in Python over seeds or tokens (the one exception is
drawing random numbers, one seeded stream per seed, so that a seed's trajectory does not depend on
which other seeds share its batch). Per step (sampled mode):

1. the engine computes ``mu`` from the rollout parameters (``staleness`` optimiser updates old:
   with ``updates_per_batch = m``, ``staleness = k m`` means ``k`` steps) through the off-policy
   channels (:mod:`drpo_sim.offpolicy`);
2. for each prompt of the step, ``G = group_size`` responses of ``T`` tokens are sampled from
   ``mu``, scored by the environment's verifiable reward, and given group-relative advantages
   (:mod:`drpo_sim.advantages`), broadcast to the response's tokens;
3. the batch is split into ``updates_per_batch`` mini-batches; for each, the trainer scores the
   tokens (``logp``), the objective gives ``dJ_t/dlogp`` in closed form
   (:meth:`Objective.grad_logp`), the loss aggregation gives each token's coefficient
   (:func:`aggregation_weights`), and the chain rule through the softmax,
   ``dJ_t/dz_{s,:} = dJ_t/dlogp * (onehot(y_t) - pi(.|s))``, gives the logits' gradient, which
   the policy maps to its parameters; the per-seed gradient norm is clipped and SGD or AdamW
   takes a step (minimising ``-aggregate(J)``).

Exact mode (bandit): instead of samples, the expected gradient under ``mu`` by enumerating the
vocabulary, ``E_{a~mu}[dJ_a/dlogp (onehot(a) - pi)]`` with exact advantages
``A(a) = R(a) - E_mu R``. With one token per sample every aggregation mode gives the same gradient.

Each update can emit its tokens as a :class:`drpo_sim.tokens.TokenBatch` (``token_sink``).

Metrics per method, seed and step (:data:`METRICS`): the exact expected reward of ``pi`` after the
step's updates; ``abs(pi - mu)`` over the sampled tokens (mean and max, ``pi`` at update time,
``mu`` the engine's); TV and ``KL(mu || pi)`` between the full distributions at rollout time, mean
over states; the fractions of sampled tokens the objective masks, attenuates, turns corrective or
amplifies, and the mean and extreme weights (all relative to the anchor the objective sees); the
gradient norm before clipping; the entropy of ``pi``; the mean sampled reward; and a non-finite flag.
A seed whose parameters or gradient go non-finite is frozen at its last finite parameters and
reported with ``nonfinite = True`` and ``expected_reward = NaN`` from then on; ``collapsed`` follows
the rule of :func:`drpo_sim.stats.collapsed`.
"""

from __future__ import annotations

import dataclasses
import json
import math
import tomllib
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from drpo_sim import advantages, objectives, stats
from drpo_sim.envs import ENVIRONMENTS, LongTailBandit, TabularSequence
from drpo_sim.offpolicy import OffPolicyConfig, engine_logp, trainer_logp
from drpo_sim.policies import POLICIES, Params, make_policy
from drpo_sim.tokens import TokenBatch

MODES = ("sampled", "exact")
OPTIMIZERS = ("adam", "sgd")
METRICS = (
    "expected_reward",
    "sample_reward",
    "shift_mean",
    "shift_max",
    "tv_mean",
    "kl_mean",
    "masked_frac",
    "attenuated_frac",
    "corrective_frac",
    "amplified_frac",
    "weight_mean",
    "weight_min",
    "weight_max",
    "grad_norm",
    "entropy",
    "nonfinite",
)


# --------------------------------------------------------------------------------------------
# Configuration
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class EnvConfig:
    """Which environment and its shape (see :mod:`drpo_sim.envs`)."""

    env: str = "bandit"
    vocab_size: int = 1024
    zipf_exponent: float = 1.1
    n_rewarded: int = 4
    reward_min: float = 0.5
    n_prompts: int = 8
    horizon: int = 4
    reward: str = "prefix"
    env_seed: int = 0
    policy: str = "tabular"
    n_features: int = 16

    def __post_init__(self) -> None:
        if self.env not in ENVIRONMENTS:
            raise ValueError(f"unknown env {self.env!r}; valid: {', '.join(ENVIRONMENTS)}")
        if self.policy not in POLICIES:
            raise ValueError(f"unknown policy {self.policy!r}; valid: {', '.join(POLICIES)}")
        self.make()

    def make(self) -> LongTailBandit | TabularSequence:
        if self.env == "bandit":
            return LongTailBandit(self.vocab_size, self.zipf_exponent, self.n_rewarded, reward_min=self.reward_min)
        return TabularSequence(
            self.vocab_size, self.n_prompts, self.horizon, self.zipf_exponent, self.reward, env_seed=self.env_seed
        )


@dataclass(frozen=True)
class TrainConfig:
    """The update rule: batch shape, advantages, loss aggregation, optimiser."""

    mode: str = "sampled"
    steps: int = 200
    group_size: int = 16
    prompts_per_step: int = 0
    std_norm: bool = False
    agg_mode: str = "seq-mean-token-sum-norm"
    optimizer: str = "adam"
    lr: float = 0.05
    beta1: float = 0.9
    beta2: float = 0.999
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    collapse_drop: float = 0.5
    reward_scale_spread: float = 0.0
    """Mixed reward scales across prompts, in decades: the rewards the learner's advantages are
    computed from are those of the task times ``10^(s (u_p - 1/2))`` for prompt ``p``, with ``u_p``
    evenly spaced over ``[0, 1]`` across the prompts, so advantages of different prompts differ in
    size by up to a factor ``10^s`` (geometric mean scale 1). The reported rewards stay the task's.
    0: every prompt on the task's scale. Needs the sampled mode and at least two prompts."""

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"unknown mode {self.mode!r}; valid: {', '.join(MODES)}")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"unknown optimizer {self.optimizer!r}; valid: {', '.join(OPTIMIZERS)}")
        if self.agg_mode not in objectives.AGG_MODES:
            raise ValueError(f"unknown agg_mode {self.agg_mode!r}; valid: {', '.join(objectives.AGG_MODES)}")
        for name in ("steps", "group_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.prompts_per_step < 0:
            raise ValueError(f"prompts_per_step must be >= 0 (0: every prompt), got {self.prompts_per_step}")
        if not (np.isfinite(self.lr) and self.lr > 0):
            raise ValueError(f"lr must be finite and > 0, got {self.lr}")
        if self.grad_clip < 0 or self.weight_decay < 0:
            raise ValueError("grad_clip and weight_decay must be >= 0 (grad_clip 0: off)")
        if not 0 < self.collapse_drop <= 1:
            raise ValueError(f"collapse_drop must be in (0, 1], got {self.collapse_drop}")
        if self.std_norm and self.group_size < 2 and self.mode == "sampled":
            raise ValueError("std_norm needs group_size >= 2")
        advantages.check_reward_scale_spread(self.reward_scale_spread)
        if self.reward_scale_spread and self.mode != "sampled":
            raise ValueError("reward_scale_spread scales the rewards of sampled prompts: it needs mode='sampled'")


@dataclass(frozen=True)
class SimConfig:
    """Everything a run depends on besides the objective and the seeds."""

    env: EnvConfig = field(default_factory=EnvConfig)
    offpolicy: OffPolicyConfig = field(default_factory=OffPolicyConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    SECTIONS = ("env", "offpolicy", "train")

    def __post_init__(self) -> None:
        if self.train.mode == "exact" and self.env.env != "bandit":
            raise ValueError("exact mode enumerates the vocabulary of one state: it needs env='bandit'")
        if self.train.mode == "sampled":
            env = self.env.make()
            n_samples = (self.train.prompts_per_step or env.n_prompts) * self.train.group_size
            if n_samples % self.offpolicy.updates_per_batch:
                raise ValueError(
                    f"updates_per_batch={self.offpolicy.updates_per_batch} must divide the {n_samples} samples of a "
                    "step"
                )
            if self.train.prompts_per_step > env.n_prompts:
                raise ValueError(f"prompts_per_step={self.train.prompts_per_step} exceeds n_prompts={env.n_prompts}")
            if self.train.reward_scale_spread and env.n_prompts < 2:
                raise ValueError("reward_scale_spread needs at least two prompts to spread the reward scales over")

    def flat(self) -> dict[str, Any]:
        """All fields in one flat dict (field names are unique across sections)."""
        return {k: v for sec in self.SECTIONS for k, v in dataclasses.asdict(getattr(self, sec)).items()}

    @classmethod
    def field_sections(cls) -> dict[str, str]:
        """Field name -> section name."""
        types = {"env": EnvConfig, "offpolicy": OffPolicyConfig, "train": TrainConfig}
        return {f.name: sec for sec, t in types.items() for f in dataclasses.fields(t)}

    @classmethod
    def from_flat(cls, values: dict[str, Any], base: SimConfig | None = None) -> SimConfig:
        """A config from flat ``{field: value}`` overrides on top of ``base`` (defaults)."""
        base = base or cls()
        where = cls.field_sections()
        unknown = sorted(set(values) - set(where))
        if unknown:
            raise ValueError(f"unknown configuration field(s) {', '.join(unknown)}; valid: {', '.join(sorted(where))}")
        parts = {sec: {} for sec in cls.SECTIONS}
        for k, v in values.items():
            parts[where[k]][k] = v
        return cls(**{sec: dataclasses.replace(getattr(base, sec), **parts[sec]) for sec in cls.SECTIONS})


# --------------------------------------------------------------------------------------------
# Seeded randomness
# --------------------------------------------------------------------------------------------


class SeedStreams:
    """One ``numpy.random.Generator`` per seed; draws come back stacked on a leading seed axis.

    Every method of a run consumes the same streams in the same order, so methods are compared on
    common random numbers, and a seed's numbers do not depend on the other seeds in the batch.
    """

    def __init__(self, seeds: Sequence[int]):
        self.gens = [np.random.default_rng(np.random.SeedSequence([int(s), 0xD290])) for s in seeds]

    def block(self, sl: slice) -> SeedStreams:
        """The streams of the seeds ``sl`` (the same generators: draws continue each seed's stream)."""
        sub = SeedStreams(())
        sub.gens = self.gens[sl]
        return sub

    def random(self, shape: tuple[int, ...]) -> np.ndarray:
        return np.stack([g.random(shape) for g in self.gens])

    def standard_normal(self, shape: tuple[int, ...]) -> np.ndarray:
        out = np.empty((len(self.gens), *shape))
        for g, o in zip(self.gens, out, strict=True):
            g.standard_normal(shape, out=o)  # the same draws as g.standard_normal(shape), without a copy
        return out

    def noise(self, cfg: OffPolicyConfig, shape: tuple[int, ...]) -> np.ndarray:
        if cfg.noise_dist == "student_t":
            return np.stack([g.standard_t(cfg.noise_df, shape) for g in self.gens])
        return self.standard_normal(shape)


# --------------------------------------------------------------------------------------------
# Optimiser
# --------------------------------------------------------------------------------------------


class Optimizer:
    """SGD or AdamW (decoupled weight decay, Loshchilov & Hutter 2019), per-seed gradient clipping.

    Clipping scales a seed's whole gradient by ``min(1, grad_clip / (norm + 1e-6))``, as
    ``torch.nn.utils.clip_grad_norm_``; the norm runs over all of the seed's parameters.

    An update is :meth:`advance` (count it) then :meth:`step` on each block of seeds in turn: the
    seeds are independent, so a block's tables stay in cache through the whole update, and the
    values are those of one call over every seed. Scratch arrays are kept between calls.
    """

    def __init__(self, cfg: TrainConfig, params: Params):
        self.cfg = cfg
        self.t = 0
        self.m = {k: np.zeros_like(v) for k, v in params.items()}
        self.v = {k: np.zeros_like(v) for k, v in params.items()}
        self.lr_t = cfg.lr
        self.c2 = 1.0
        self.scratch = Scratch()

    def grad_norm(self, grads: Params) -> np.ndarray:
        """Per-seed Euclidean norm over all of a seed's gradients."""
        sq = 0
        for k, g in grads.items():
            sq = sq + np.sum(np.multiply(g, g, out=self.scratch.get("sq", g.shape)), axis=tuple(range(1, g.ndim)))
        return np.sqrt(sq)

    def advance(self) -> None:
        """Start an update: count it, and fold Adam's bias corrections into the step size."""
        cfg = self.cfg
        self.t += 1
        if cfg.optimizer == "adam":
            self.lr_t = cfg.lr / (1 - cfg.beta1**self.t)
            self.c2 = 1.0 / np.sqrt(1 - cfg.beta2**self.t)

    def step(self, params: Params, grads: Params, frozen: np.ndarray, out: Params, sl: slice) -> np.ndarray:
        """The current update (:meth:`advance`) of the seeds ``sl``: ``params``, ``grads`` (the loss
        gradient) and ``frozen`` are theirs; frozen seeds do not move. Writes the new parameters
        into ``out[k][sl]`` (the old ones stay valid: the staleness history holds them) and returns
        the seeds' gradient norms before clipping. ``grads`` may be overwritten.
        """
        cfg = self.cfg
        lr_t = self.lr_t
        norm = self.grad_norm(grads)
        scale = np.ones_like(norm) if cfg.grad_clip == 0 else np.minimum(1.0, cfg.grad_clip / (norm + 1e-6))
        stopped = frozen | ~np.isfinite(norm)
        scale = np.where(stopped, 0.0, scale)
        for k, p in params.items():
            g = grads[k]
            if np.any(stopped):
                g = np.where(_seed_axis(stopped, g), 0.0, g)  # NaN * 0 would stay NaN
            if np.any(scale != 1.0):
                g *= _seed_axis(scale, g)
            if cfg.optimizer == "sgd":
                upd = g
            else:
                m, v = self.m[k][sl], self.v[k][sl]
                tmp = self.scratch.get("tmp", g.shape)
                m *= cfg.beta1
                m += np.multiply(1 - cfg.beta1, g, out=tmp)
                v *= cfg.beta2
                g *= g
                g *= 1 - cfg.beta2
                v += g
                upd = np.sqrt(v, out=tmp)
                upd *= self.c2
                upd += 1e-8
                np.divide(m, upd, out=upd)
            if cfg.weight_decay:
                upd = upd + (cfg.weight_decay * cfg.lr / lr_t) * p
            if np.any(frozen):
                upd = np.where(_seed_axis(frozen, upd), 0.0, upd)
            upd *= -lr_t
            np.add(upd, p, out=out[k][sl])
        return norm


class Scratch:
    """Named work arrays reused across calls (grown when a call needs more), so that a step's
    temporaries are not allocated, and their pages faulted in, again on every block."""

    def __init__(self) -> None:
        self.arrays: dict[str, np.ndarray] = {}

    def get(self, name: str, shape: tuple[int, ...]) -> np.ndarray:
        """A float64 array of ``shape`` (uninitialised), valid until the next ``get`` of ``name``."""
        size = math.prod(shape)
        buf = self.arrays.get(name)
        if buf is None or buf.size < size:
            buf = self.arrays[name] = np.empty(size)
        return buf[:size].reshape(shape)


def _block(params: Params, sl: slice) -> Params:
    return {k: v[sl] for k, v in params.items()}


def _seed_axis(x: np.ndarray, like: np.ndarray) -> np.ndarray:
    return x.reshape((-1,) + (1,) * (like.ndim - 1))


# --------------------------------------------------------------------------------------------
# Sampling and scattering on [N, S, V] tables
# --------------------------------------------------------------------------------------------


def sample_tokens(probs: np.ndarray, rows: np.ndarray, u: np.ndarray, first_row: int = 0) -> np.ndarray:
    """Inverse-CDF sampling: token ``y`` of row ``rows`` (a flat index into the ``[N*S]`` rows of
    a ``[N, S, V]`` table) with ``cdf[y-1] <= u < cdf[y]``; tokens with zero probability are never
    drawn. ``probs [..., V]`` holds the rows from ``first_row`` on (a block of seeds).

    All rows' CDFs are laid end to end (row ``i`` offset by ``i``, its index in the whole table, so
    that a block draws exactly the tokens the whole table would) and one ``searchsorted`` serves
    every draw.
    """
    v = probs.shape[-1]
    p = probs.reshape(-1, v)
    cdf = np.cumsum(p, axis=1)
    cdf /= cdf[:, -1:]
    cdf[:, -1] = 1.0
    cdf += np.arange(first_row, first_row + cdf.shape[0], dtype=np.float64)[:, None]
    local = rows - first_row
    tok = np.searchsorted(cdf.ravel(), rows + u, side="right") - local * v
    tok = np.clip(tok, 0, v - 1)
    bad = p[local, tok] == 0  # possible only through rounding of u + offset at a row's very end
    if np.any(bad):
        tok[bad] = np.argmax(cdf[local[bad]] - rows[bad, None] > u[bad, None], axis=1)
    return tok


def gather(table: np.ndarray, rows: np.ndarray, tokens: np.ndarray) -> np.ndarray:
    """``table[row, token]`` for a ``[N, S, V]`` table and flat row indices."""
    v = table.shape[-1]
    return table.reshape(-1)[rows * v + tokens]


TOPK = 20
"""How many of the engine's most likely tokens DPPO's Top-K divergence reads in the simulator
(:func:`drpo_sim.objectives.topk_divergences`): 20, the most log-probs vLLM returns per position
by default (``max_logprobs``). A vocabulary of at most 20 tokens gives the exact divergence."""


def engine_topk(logmu: np.ndarray, k: int = TOPK) -> tuple[np.ndarray, np.ndarray]:
    """The engine's ``k`` most likely tokens of each state of a ``[..., V]`` table and their log-probs
    (in no particular order: the divergence does not depend on it)."""
    k = min(k, logmu.shape[-1])
    ids = np.argpartition(-logmu, k - 1, axis=-1)[..., :k]
    return ids, np.take_along_axis(logmu, ids, axis=-1)


def topk_columns(obj: objectives.Objective, logpi: np.ndarray, topk: tuple[np.ndarray, np.ndarray] | None
                 ) -> dict[str, np.ndarray]:
    """DPPO's Top-K divergences of each state ``[..., 1]`` between the engine's top tokens ``topk``
    (:func:`engine_topk`) and the trainer's table ``logpi [..., V]``, for an objective that reads
    them (``{}`` for the others)."""
    wanted = {"topk_tv", "topk_kl"} & set(obj.required_columns)
    if not wanted:
        return {}
    tv, kl = objectives.topk_divergences(logpi, *topk)
    return {k: v[..., None] for k, v in (("topk_tv", tv), ("topk_kl", kl)) if k in wanted}


def logit_gradient(coef: np.ndarray, rows: np.ndarray, tokens: np.ndarray, pi: np.ndarray) -> np.ndarray:
    """``sum_t coef_t (onehot(y_t) - pi(.|s_t))`` accumulated into a ``[N, S, V]`` table."""
    return np.negative(loss_gradient(coef, rows, tokens, pi))


def loss_gradient(
    coef: np.ndarray, rows: np.ndarray, tokens: np.ndarray, pi: np.ndarray, out: np.ndarray | None = None
) -> np.ndarray:
    """``-sum_t coef_t (onehot(y_t) - pi(.|s_t))``, the loss's gradient in the logits, written into
    ``out`` (a ``[N, S, V]`` table, or a new one).

    One pass over the table, ``per_row * pi``, then the sampled entries, where the tokens' summed
    coefficients are subtracted (the few distinct entries only, not a second full table).
    Bit for bit the negation of the onehot table minus ``per_row * pi``: ``-(a - b) == b - a``
    in IEEE arithmetic, and the coefficients are summed in the same order.
    """
    n_rows, v = pi.shape[0] * pi.shape[1], pi.shape[-1]
    w = coef.ravel()
    per_row = np.bincount(rows.ravel(), weights=w, minlength=n_rows)
    out = np.multiply(per_row.reshape(pi.shape[:2] + (1,)), pi, out=out)
    hit, which = np.unique((rows * v + tokens).ravel(), return_inverse=True)
    flat = out.reshape(-1)
    flat[hit] -= np.bincount(which, weights=w, minlength=hit.size)
    return out


# --------------------------------------------------------------------------------------------
# The loop
# --------------------------------------------------------------------------------------------

TokenSink = Callable[[TokenBatch], None]


def run(
    cfg: SimConfig,
    method: str,
    seeds: Sequence[int],
    *,
    params: dict[str, Any] | None = None,
    token_sink: TokenSink | None = None,
    progress: Callable[[int], None] | None = None,
) -> pd.DataFrame:
    """Train ``method`` (a registry name, with ``params``) on every seed; return the tidy table.

    One row per seed and step (steps ``1..steps``), with the columns ``method, seed, step``,
    :data:`METRICS`, ``collapsed``, ``initial_reward``, one column per configuration field and
    ``method_params`` (JSON of the objective's parameters). ``token_sink`` receives a
    ``TokenBatch`` per update (sampled mode only). ``progress(k)`` is called after every step.
    """
    seeds = [int(s) for s in seeds]
    if not seeds:
        raise ValueError("run needs at least one seed")
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"duplicate seeds in {seeds}")
    if token_sink is not None and cfg.train.mode != "sampled":
        raise ValueError("token logs need sampled mode: exact mode samples no tokens")
    obj = objectives.get(method, **(params or {}))
    state = Simulation(cfg, obj, seeds, token_sink)
    rows = []
    for step in range(1, cfg.train.steps + 1):
        rows.append(state.step(step))
        if progress is not None:
            progress(1)
    return state.table(rows)


SEED_BLOCK_BYTES = 1 << 20
"""Bytes of one ``[seeds, states, V]`` float64 table that a block of seeds spans (at least one
seed). A step works through the seeds block by block, so that the dozen tables and temporaries
of one block (parameters, Adam moments, log-probs, probabilities, gradient) stay in cache from one
operation to the next instead of each operation streaming whole tables through memory."""


class Simulation:
    """The state of one run (parameters, history, optimiser), advanced by :meth:`step`.

    Every table is worked on one block of seeds at a time (:data:`SEED_BLOCK_BYTES`,
    ``seed_block`` seeds when given): the seeds are independent and each draws from its own stream
    in the same order, so the results do not depend on the blocks, bit for bit. What needs several
    seeds at once (advantages, the objective's weights, which may take batch statistics) works on
    the sampled tokens, between the table passes.
    """

    def __init__(
        self,
        cfg: SimConfig,
        obj: objectives.Objective,
        seeds: list[int],
        token_sink: TokenSink | None,
        *,
        seed_block: int | None = None,
    ):
        self.cfg, self.obj, self.seeds, self.sink = cfg, obj, seeds, token_sink
        self._reads_topk = bool({"topk_tv", "topk_kl"} & set(obj.required_columns))
        if cfg.train.mode == "exact" and obj.per_sequence:
            raise ValueError(f"{obj} takes a sequence-level ratio, but exact mode enumerates one state's vocabulary "
                             "and has no sequences: use mode='sampled'")
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
        self.opt = Optimizer(self.tr, self.params)
        self.history: deque[Params] = deque([self.params], maxlen=self.op.staleness + 1)
        self.dead = np.zeros(n, dtype=bool)
        if seed_block is not None and seed_block < 1:
            raise ValueError(f"seed_block must be >= 1, got {seed_block}")
        size = seed_block or max(1, SEED_BLOCK_BYTES // (self.env.n_states * self.env.vocab_size * 8))
        self.blocks = [slice(i, min(i + size, n)) for i in range(0, n, size)]
        self.scratch = Scratch()
        # the trainer's tables at self._tables[0]: log-probs, probabilities, entropy per seed
        self._tables: tuple[Params, np.ndarray, np.ndarray, np.ndarray] | None = None
        # tables no longer read, reused by the next update instead of fresh pages (see _update)
        self._spare: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        self.initial_reward = self.env.expected_reward(*self._trainer_tables()[:2])

    @property
    def _table_shape(self) -> tuple[int, int, int]:
        return (len(self.seeds), self.env.n_states, self.env.vocab_size)

    def trainer_logp(self) -> np.ndarray:
        """The trainer's log-probs ``[N, S, V]`` at the current parameters (computed once per
        update; the array is reused for later updates' tables: copy it to keep it)."""
        return self._trainer_tables()[0]

    def _trainer_tables(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The trainer's log-probs and probabilities ``[N, S, V]`` and entropy ``[N]`` (mean over
        states) at the current parameters; computed block by block, once per update."""
        if self._tables is None or self._tables[0] is not self.params:
            tables = self._free_tables()
            for sl in self.blocks:
                self._score_block(self.params, sl, *tables)
            self._tables = (self.params, *tables)
        return self._tables[1:]

    def _free_tables(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Arrays for a set of trainer tables: a spare set (see :meth:`_update`) or new ones."""
        if self._spare:
            return self._spare.pop()
        return np.empty(self._table_shape), np.empty(self._table_shape), np.empty(len(self.seeds))

    def _score_block(
        self, params: Params, sl: slice, logpi: np.ndarray, pi: np.ndarray, entropy: np.ndarray
    ) -> None:
        """The trainer's tables of the seeds ``sl`` at ``params``, written at ``[sl]``."""
        lp = trainer_logp(self.policy.logits(_block(params, sl)), self.op, out=logpi[sl])
        p = np.exp(lp, out=pi[sl])
        # the trainer's logits are finite, so no log-prob is -inf and p log p is well defined
        entropy[sl] = -(np.multiply(p, lp, out=self.scratch.get("plogp", p.shape))).sum(-1).mean(-1)

    @property
    def _engine_is_trainer(self) -> bool:
        """Whether the engine's log-probs are the trainer's bit for bit: no noise or bias, the same
        precision on both sides, no truncation, fresh parameters. The step then reuses the trainer's
        tables for ``mu``, and the TV and KL between them are exactly 0."""
        op = self.op
        return (
            not op.needs_noise
            and op.bias_std == 0
            and op.precision == op.trainer_precision
            and op.top_k == 0
            and op.top_p == 1
            and op.staleness == 0
        )

    # one step ------------------------------------------------------------------------------
    def step(self, step: int) -> dict[str, np.ndarray]:
        env, tr = self.env, self.tr
        acc = _Accumulator(len(self.seeds))
        if tr.mode == "exact":
            self._exact_updates(acc)
        else:
            self._sampled_updates(step, acc)
        logpi, pi, entropy = self._trainer_tables()
        reward = np.where(self.dead, np.nan, env.expected_reward(logpi, pi))
        ent = np.where(self.dead, np.nan, entropy)
        return acc.row(reward, ent, self.dead)

    def _engine_block(self, sl: slice, acc: _Accumulator) -> tuple[np.ndarray, np.ndarray]:
        """The engine's log-probs and probabilities ``mu`` of the seeds ``sl`` (from the rollout
        parameters, through the channels, drawing the seeds' engine noise), and their TV and KL
        to the trainer's, written into ``acc`` at ``[sl]``."""
        op = self.op
        logpi0, pi0, _ = self._trainer_tables()
        if self._engine_is_trainer:
            acc.tv[sl] = acc.kl[sl] = 0.0
            return logpi0[sl], pi0[sl]
        s_, v = self.env.n_states, self.env.vocab_size
        z_roll = self.policy.logits(_block(self.history[0], sl))
        noise = self.streams.block(sl).noise(op, (s_, v)) if op.needs_noise else None
        bias = self.bias[sl] if self.bias is not None else None
        logmu = engine_logp(z_roll, op, noise, bias)
        mu = np.exp(logmu)
        work = self.scratch.get("engine", mu.shape)
        acc.tv[sl] = 0.5 * np.abs(np.subtract(pi0[sl], mu, out=work), out=work).sum(-1).mean(-1)
        # KL(mu || pi) = sum mu (log mu - log pi); tokens with mu = 0 (truncated) contribute 0
        diff = np.subtract(logmu, logpi0[sl], out=work)
        diff[mu == 0] = 0.0
        acc.kl[sl] = np.multiply(mu, diff, out=work).sum(-1).mean(-1)
        return logmu, mu

    def _update(self, loss_grad: Callable[[slice], np.ndarray], *, recycle: bool = False) -> np.ndarray:
        """One optimiser step along ``loss_grad(sl)``, the loss's gradient in the logits of the
        seeds ``sl`` (minus the objective's); block by block, with the new trainer tables. Returns
        the per-seed gradient norm.

        ``recycle``: the caller reads the current trainer tables no more after this update, so
        they are kept for the next one to write into: a fresh table costs a page fault per 4 KiB
        on its first pass, as much again as the pass.
        """
        n = len(self.seeds)
        new = {k: np.empty_like(p) for k, p in self.params.items()}
        old_tables = self._trainer_tables()
        tables = self._free_tables()
        norm = np.empty(n)
        self.opt.advance()
        for sl in self.blocks:
            old, dead = _block(self.params, sl), self.dead[sl]
            grads = self.policy.backward(old, loss_grad(sl))
            with np.errstate(over="ignore", invalid="ignore"):
                norm[sl] = self.opt.step(old, grads, dead, new, sl)
                moved = _block(new, sl)
                finite = np.isfinite(norm[sl]) & np.logical_and.reduce(
                    [np.isfinite(p).reshape(p.shape[0], -1).all(axis=1) for p in moved.values()]
                )
            newly_dead = ~finite & ~dead
            if np.any(newly_dead):
                for k, p in moved.items():
                    p[newly_dead] = old[k][newly_dead]
                dead |= newly_dead
            self._score_block(new, sl, *tables)
        self.params = new
        self._tables = (new, *tables)
        self.history.append(new)
        if recycle:
            self._spare.append(old_tables)
        return norm

    def _anchor(self, logmu: np.ndarray, logpi0: np.ndarray) -> np.ndarray:
        return logmu if self.op.anchor == "rollout" else logpi0

    def _exact_updates(self, acc: _Accumulator) -> None:
        logpi0 = self._trainer_tables()[0]
        parts = [self._engine_block(sl, acc) for sl in self.blocks]
        logmu, mu = (np.concatenate(x) if len(parts) > 1 else x[0] for x in zip(*parts, strict=True))
        adv = advantages.exact(self.env.token_rewards(), mu, std_norm=self.tr.std_norm)
        anchor = self._anchor(logmu, logpi0)
        topk = engine_topk(logmu) if self._reads_topk else None
        for _ in range(self.op.updates_per_batch):
            logpi, pi, _ = self._trainer_tables()
            cols = {"logp_old": logpi0, **topk_columns(self.obj, logpi, topk)}
            g = self.obj.grad_logp(logpi, anchor, adv, **cols)
            q = np.where(mu > 0, mu * g, 0.0)
            grad_z = q - q.sum(-1, keepdims=True) * pi
            loss = np.negative(grad_z, out=grad_z)
            norm = self._update(lambda sl, loss=loss: loss[sl])
            w = self.obj.weight(logpi, anchor, adv, **cols)
            acc.add(w, np.abs(pi - mu), mu, norm)

    def _sampled_updates(self, step: int, acc: _Accumulator) -> None:
        env, op, tr = self.env, self.op, self.tr
        n, t_, s_ = len(self.seeds), env.horizon, env.n_states
        p_step = tr.prompts_per_step or env.n_prompts
        g_ = tr.group_size
        logpi0 = self._trainer_tables()[0]
        prompts = np.empty((n, p_step), dtype=np.int64)
        rows = np.empty((n, p_step, g_, t_), dtype=np.int64)
        tokens, lp_mu, lp_old = np.empty(rows.shape, dtype=np.int64), np.empty(rows.shape), np.empty(rows.shape)
        k = min(TOPK, env.vocab_size)
        topk = (np.empty((n * s_, k), dtype=np.int64), np.empty((n * s_, k))) if self._reads_topk else None
        # the rollout, block by block: the engine's tables, each seed's prompts and tokens
        for sl in self.blocks:
            logmu, mu = self._engine_block(sl, acc)
            if topk is not None:  # the engine's top tokens of each state, as it would report them
                states = slice(sl.start * s_, sl.stop * s_)
                topk[0][states], topk[1][states] = engine_topk(logmu.reshape(-1, env.vocab_size), k)
            streams = self.streams.block(sl)
            if p_step < env.n_prompts:
                prompts[sl] = np.argsort(streams.random((env.n_prompts,)), axis=1)[:, :p_step]
            else:
                prompts[sl] = np.arange(env.n_prompts)
            # rows[n, p, g, t]: flat index of state (prompt, t) of seed n in the [N, S, V] tables
            rows[sl] = (np.arange(sl.start, sl.stop)[:, None, None] * s_ + prompts[sl, :, None] * t_ + np.arange(t_))[
                :, :, None, :
            ]
            u = streams.random((p_step, g_, t_))
            first = sl.start * s_
            tok = sample_tokens(mu, rows[sl].ravel(), u.ravel(), first_row=first).reshape(rows[sl].shape)
            tokens[sl] = tok
            lp_mu[sl] = gather(logmu, rows[sl] - first, tok)
            lp_old[sl] = gather(logpi0[sl], rows[sl] - first, tok)
        rewards = env.rewards(prompts, tokens)
        adv = advantages.group_relative(rewards * self.reward_scale[prompts][..., None], std_norm=tr.std_norm)
        b = p_step * g_
        rows, tokens = rows.reshape(n, b, t_), tokens.reshape(n, b, t_)
        lp_mu, lp_old = lp_mu.reshape(n, b, t_), lp_old.reshape(n, b, t_)
        adv, rewards = adv.reshape(n, b, 1), rewards.reshape(n, b)
        group = np.broadcast_to(prompts[:, :, None], (n, p_step, g_)).reshape(n, b)
        anchor = self._anchor(lp_mu, lp_old)
        mask = np.ones((n, b // op.updates_per_batch, t_), dtype=bool)
        coef_agg = objectives.aggregation_weights(mask, tr.agg_mode, horizon=t_)
        acc.sample_reward = rewards.mean(axis=1)
        for u_idx, sl in enumerate(np.split(np.arange(b), op.updates_per_batch)):
            logpi, pi, _ = self._trainer_tables()
            r_, y_, a_ = rows[:, sl], tokens[:, sl], np.broadcast_to(adv[:, sl], (n, sl.size, t_))
            lp = gather(logpi, r_, y_)
            cols = {"logp_old": lp_old[:, sl]}
            for name, per_state in topk_columns(self.obj, logpi.reshape(-1, env.vocab_size), topk).items():
                cols[name] = per_state[:, 0][r_]  # each token's state's divergence
            g = self.obj.grad_logp(lp, anchor[:, sl], a_, **cols)
            coef = coef_agg * g

            def loss_grad(seeds: slice, coef=coef, r_=r_, y_=y_, pi=pi) -> np.ndarray:
                p = pi[seeds]
                out = self.scratch.get("grad", p.shape)
                return loss_gradient(coef[seeds], r_[seeds] - seeds.start * s_, y_[seeds], p, out=out)

            norm = self._update(loss_grad, recycle=True)
            w = self.obj.weight(lp, anchor[:, sl], a_, **cols)
            acc.add(w, np.abs(np.exp(lp) - np.exp(lp_mu[:, sl])), None, norm)
            if self.sink is not None:
                topk_read = {k: v for k, v in cols.items() if k != "logp_old"}
                self._emit(
                    step, u_idx, sl, y_, lp, lp_mu[:, sl], lp_old[:, sl], a_, rewards[:, sl], group[:, sl], p_step,
                    **topk_read,
                )

    def _emit(self, step, u_idx, sl, tokens, lp, lp_mu, lp_old, adv, rewards, group, p_step, **topk) -> None:
        """Hand the update's tokens to the sink as one ``TokenBatch`` (``sample_id`` and
        ``group_id`` numbered uniquely within a seed; the Top-K divergences ``topk_tv`` /
        ``topk_kl`` the objective read, when it reads them)."""
        n, b, t_ = tokens.shape
        shape = (n, b, t_)
        seed = np.broadcast_to(np.asarray(self.seeds)[:, None, None], shape)
        sample = np.broadcast_to((step - 1) * p_step * self.tr.group_size + sl[None, :, None], shape)
        self.sink(
            TokenBatch.from_arrays(
                logp=lp,
                logp_behavior=lp_mu,
                logp_old=lp_old,
                advantage=adv,
                mask=np.ones(shape, dtype=bool),
                sample_id=sample,
                group_id=np.broadcast_to((step - 1) * self.env.n_prompts + group[:, :, None], shape),
                position=np.broadcast_to(np.arange(t_), shape),
                token_id=tokens,
                reward=np.broadcast_to(rewards[:, :, None], shape),
                step=np.full(shape, step),
                seed=seed,
                update=np.full(shape, u_idx),
                **{k: np.broadcast_to(v, shape) for k, v in topk.items()},
            )
        )

    # results -------------------------------------------------------------------------------
    def table(self, rows: list[dict[str, np.ndarray]]) -> pd.DataFrame:
        n, steps = len(self.seeds), len(rows)
        cols = {k: np.stack([r[k] for r in rows], axis=1) for k in rows[0]}  # [N, steps]
        rule = stats.CollapseRule(drop=self.tr.collapse_drop)
        curves = np.concatenate([self.initial_reward[:, None], cols["expected_reward"]], axis=1)
        nonfinite = np.concatenate([np.zeros((n, 1), dtype=bool), cols["nonfinite"]], axis=1)
        collapsed = rule.detect(curves, nonfinite)[:, 1:]
        df = pd.DataFrame(
            {
                "method": self.obj.name,
                "seed": np.repeat(self.seeds, steps),
                "step": np.tile(np.arange(1, steps + 1), n),
                **{k: cols[k].ravel() for k in METRICS},
                "collapsed": collapsed.ravel(),
                "initial_reward": np.repeat(self.initial_reward, steps),
            }
        )
        for k, v in self.cfg.flat().items():
            df[k] = v
        df["method_params"] = json.dumps(self.obj.params, sort_keys=True)
        return df


class _Accumulator:
    """Per-seed sums over the updates of one step, turned into one metrics row."""

    def __init__(self, n: int):
        z = np.zeros(n)
        self.n_tok, self.shift_sum, self.w_sum = z.copy(), z.copy(), z.copy()
        self.shift_max = np.full(n, -np.inf)
        self.w_min, self.w_max = np.full(n, np.inf), np.full(n, -np.inf)
        self.regions = {k: z.copy() for k in objectives.Regions.NAMES}
        self.norms: list[np.ndarray] = []
        self.sample_reward = np.full(n, np.nan)
        self.tv, self.kl = z.copy(), z.copy()

    def add(self, w: np.ndarray, shift: np.ndarray, weights: np.ndarray | None, norm: np.ndarray) -> None:
        """Token weights ``w``, shifts, and (exact mode) the probability ``mu`` of each token."""
        axes = tuple(range(1, w.ndim))
        c = np.ones_like(w) if weights is None else weights
        support = c > 0
        self.n_tok += c.sum(axes)
        self.shift_sum += (c * shift).sum(axes)
        self.w_sum += (c * w).sum(axes)
        self.shift_max = np.maximum(self.shift_max, np.where(support, shift, -np.inf).max(axes))
        self.w_min = np.minimum(self.w_min, np.where(support, w, np.inf).min(axes))
        self.w_max = np.maximum(self.w_max, np.where(support, w, -np.inf).max(axes))
        reg = objectives.Regions.from_weight(w)
        for k in objectives.Regions.NAMES:
            self.regions[k] += (c * getattr(reg, k)).sum(axes)
        self.norms.append(norm)

    def row(self, reward: np.ndarray, entropy: np.ndarray, dead: np.ndarray) -> dict[str, np.ndarray]:
        tok = np.maximum(self.n_tok, 1e-300)
        out = {
            "expected_reward": reward,
            "sample_reward": self.sample_reward,
            "shift_mean": self.shift_sum / tok,
            "shift_max": self.shift_max,
            "tv_mean": self.tv,
            "kl_mean": self.kl,
            **{f"{k}_frac": self.regions[k] / tok for k in objectives.Regions.NAMES},
            "weight_mean": self.w_sum / tok,
            "weight_min": self.w_min,
            "weight_max": self.w_max,
            "grad_norm": np.mean(np.stack(self.norms), axis=0),
            "entropy": entropy,
            "nonfinite": dead.copy(),
        }
        return out


# --------------------------------------------------------------------------------------------
# Several methods
# --------------------------------------------------------------------------------------------


def simulate(
    cfg: SimConfig,
    methods: Iterable[str],
    seeds: Sequence[int],
    *,
    method_params: dict[str, dict[str, Any]] | None = None,
    token_sink_for: Callable[[str], TokenSink | None] | None = None,
    progress: bool = False,
) -> pd.DataFrame:
    """Run every method on the same seeds (common random numbers); one tidy table.

    ``method_params`` maps a method name to its objective parameters; params for a method not
    in ``methods`` are an error (a misspelt name would otherwise be ignored).
    """
    methods = list(methods)
    if not methods:
        raise ValueError("simulate needs at least one method")
    unknown = [m for m in methods if m not in objectives.available()]
    if unknown:
        raise ValueError(f"unknown method(s) {', '.join(unknown)}; valid: {', '.join(objectives.available())}")
    method_params = method_params or {}
    stray = sorted(set(method_params) - set(methods))
    if stray:
        raise ValueError(
            f"parameters given for {', '.join(stray)}, which is not among the methods {', '.join(methods)}"
        )
    frames = []
    bar = None
    if progress:
        bar = tqdm(total=len(methods) * cfg.train.steps, unit="step", desc="simulate")
    try:
        for m in methods:
            if bar is not None:
                bar.set_postfix_str(m)
            sink = token_sink_for(m) if token_sink_for else None
            frames.append(
                run(cfg, m, seeds, params=method_params.get(m), token_sink=sink, progress=bar.update if bar else None)
            )
    finally:
        if bar is not None:
            bar.close()
    return with_param_columns(pd.concat(frames, ignore_index=True))


def with_param_columns(df: pd.DataFrame) -> pd.DataFrame:
    """``df`` with one ``param_<name>`` column per objective parameter of any of its methods, read
    from the ``method_params`` JSON (empty where a method has no such parameter); existing
    ``param_`` columns are replaced. The layout of :func:`simulate`'s table, also for tables
    joined from runs of one method each."""
    df = df.drop(columns=[c for c in df.columns if c.startswith("param_")])
    params = {p: json.loads(p) for p in df["method_params"].unique()}
    for k in sorted({k for d in params.values() for k in d}):
        df[f"param_{k}"] = [params[p].get(k) for p in df["method_params"]]
    return df


def run_cell(spec: dict[str, Any]) -> pd.DataFrame:
    """One cell of a sweep or a panel (:mod:`drpo_sim.run.cells`): ``spec`` holds the full flat
    ``config``, the ``method``, its full objective ``params`` and the ``seeds``."""
    method = spec["method"]
    return simulate(
        SimConfig.from_flat(spec["config"]), [method], spec["seeds"], method_params={method: spec["params"]}
    )


# --------------------------------------------------------------------------------------------
# Experiment files
# --------------------------------------------------------------------------------------------

RUN_KEYS = ("methods", "seeds", "seed_start", "preset", "params")
"""Keys of an experiment file that are not configuration fields."""


def split_experiment(
    doc: dict[str, Any], source: str, *, also: tuple[str, ...] = ()
) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(run keys, flat configuration fields)`` of a parsed experiment file.

    Configuration fields may sit at the top level or in their section's table; ``also`` names
    further top-level keys the caller handles itself (they must already be removed from ``doc``;
    they only appear in the error listing the valid keys). Errors name ``source`` and the key.
    """
    where = SimConfig.field_sections()
    run: dict[str, Any] = {}
    config: dict[str, Any] = {}
    for key, value in doc.items():
        if key in SimConfig.SECTIONS:
            if not isinstance(value, dict):
                raise ValueError(f"{source}: [{key}] must be a table")
            for k, v in value.items():
                if where.get(k) != key:
                    valid = sorted(f for f, s in where.items() if s == key)
                    raise ValueError(f"{source}: [{key}] has no field {k!r}; valid: {', '.join(valid)}")
                config[k] = v
        elif key in RUN_KEYS:
            run[key] = value
        elif key in where:
            config[key] = value
        else:
            valid = ", ".join((*RUN_KEYS, *SimConfig.SECTIONS, *also))
            raise ValueError(f"{source}: unknown key {key!r}; valid: {valid} or a configuration field")
    return run, config


def read_experiment(path: str) -> dict[str, Any]:
    """An experiment TOML file -> ``{"config": flat overrides, "methods", "seeds", "seed_start",
    "preset", "params"}`` (absent keys left out).

    Configuration fields may sit at the top level or in ``[env]``, ``[offpolicy]``, ``[train]``;
    objective parameters in ``[params.<method>]``. Example::

        methods = ["pg_is", "grpo", "drpo"]
        seeds = 16
        preset = "fp8"
        [offpolicy]
        staleness = 4
        [train]
        steps = 300
        [params.drpo]
        delta = 2.5
    """

    try:
        with open(path, "rb") as fh:
            doc = tomllib.load(fh)
    except tomllib.TOMLDecodeError as err:
        raise ValueError(f"{path}: not valid TOML ({err})") from None
    run, config = split_experiment(doc, path)
    out: dict[str, Any] = {"config": config, **run}
    if "params" in out and not all(isinstance(v, dict) for v in out["params"].values()):
        raise ValueError(f"{path}: [params] must hold one table per method, e.g. [params.drpo]")
    return out
