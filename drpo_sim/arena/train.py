"""RL in the arena: every (contestant, seed) run trained at once, as one batch of models.

A *contestant* is an objective of the registry with its parameters and its anchor (the
behaviour log-probs its ratio is taken against). At every step, for all runs together:

1. **weight sync**: the trainer's float32 parameters are copied into the engine's precision
   (:class:`drpo_sim.arena.model.Engine`);
2. **rollout**: the engine samples ``G`` responses of ``H`` tokens for each of ``P`` prompts and
   reports ``mu``, its own log-prob of each sampled token; with MoE, also its routes. Runs of the
   same seed see the same prompts and the same uniform draws (common random numbers), so objectives
   are compared on shared seeds;
3. **recompute**: the trainer's float32 pass gives ``pi_old`` of the same tokens (for the
   ``recomputed`` anchor and for the rollout-time diagnostics);
4. **reward and advantage**: the task's checked reward; group-relative advantages ``A = R - mean_G R``
   (no division by the standard deviation; :func:`drpo_sim.advantages.group_relative`). With
   ``reward_scale_spread = s > 0`` the learner sees each prompt's rewards multiplied by its key's
   scale, ``10^(s (k / (m - 1) - 1/2))`` for key ``k`` of ``m`` (:func:`drpo_sim.advantages.reward_scales`),
   so advantages of different keys differ in size by up to ``10^s``; the reported rewards stay
   the task's own;
5. **updates**: ``U`` mini-batches, one AdamW step each, every run with its own gradient-norm
   clip (1.0) and its own Adam state. The loss is each objective's surrogate
   (:meth:`drpo_sim.objectives.Objective.surrogate`) of the trainer's current ``log pi`` against the
   anchor, aggregated ``seq-mean-token-sum-norm`` over the horizon ``H``
   (:func:`drpo_sim.objectives.aggregation_weights`, each run normalised on its own). With routing
   replay the trainer uses the engine's routes, as R3 does;
6. **evaluation** every ``eval_every`` steps: the trainer's float32 policy samples one response to
   each held-out prompt, with draws shared by every run.

The anchors: ``"rollout"`` is the engine's ``mu`` (the papers' setting: the ratio carries the
precision mismatch and the drift of earlier mini-batches); ``"recomputed"`` is the trainer's
``pi_old`` (the arena's ``ppo@recomputed``, labelled MiniRL in its analyses: PPO's clip on
``pi / pi_old`` with no importance weight to ``mu``, so it ignores the mismatch entirely). The
objectives of three policies (``minirl``, ``decoupled_ppo``, the recompute modes, any corrected
objective; ``docs/objectives/three_policies.md``) receive ``pi_old`` as ``logp_old`` besides the
anchor, and the sequence-level ones read each response as one sequence. DPPO's Top-K modes read the
Top-K divergences (:func:`drpo_sim.objectives.topk_divergences`) between the engine's :data:`TOPK`
most likely tokens at each response position, reported by its rollout, and the current trainer's
distribution at each update. The registry's ``minirl``
is DPPO's own code's MiniRL (the clip anchored to ``pi_old``, importance-weighted to ``mu``, capped
at 10): not the same contestant as ``ppo@recomputed``.

**The table** has one row per (run, step): the contestant (``method``, its label; ``objective``,
``variant``, ``anchor``, ``params``), the engine setting (``precision``, ``routing_replay``, ``moe``,
``lr``, ``reward_scale_spread``), ``seed`` and ``step``, then :data:`METRICS`: the training ``reward`` of the
rollout; ``heldout_reward`` (NaN between evaluations); the rollout-time mismatch of
:func:`drpo_sim.lm.mismatch.run_statistics` between ``pi_old`` and ``mu``; the trainer's mean
per-token ``entropy``; ``response_len``; ``flip_rate`` (MoE: the share of response positions where
the engine's route differs from the trainer's own); averaged over the step's updates: ``grad_norm``
(per run, before clipping), the shares of tokens the objective masks, attenuates, turns corrective
or amplifies, and ``grad_share_<bin>_<sign>``: the share of the step's gradient coefficients
``sum_t abs(c_t dJ_t/dlogp_t)`` carried by sampled tokens in each bin of ``mu`` (:data:`MU_BINS`)
and sign of the advantage. That share weighs each token by the size of its coefficient on
``grad log pi``, not by the norm of its parameter gradient (which would need one backward pass
per bin). Then ``nonfinite`` (a run's update was skipped for a non-finite loss or gradient) and
``collapsed`` (:data:`COLLAPSE` on the held-out reward).
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from drpo_sim import objectives, stats
from drpo_sim.advantages import check_reward_scale_spread, group_relative, reward_scales
from drpo_sim.arena.model import PRECISIONS, Engine, Params, logits, logprobs_of, replicate, response_logprobs
from drpo_sim.arena.pretrain import BaseModelConfig, pretrain
from drpo_sim.config import check_positive_ints
from drpo_sim.lm.mismatch import run_statistics
from drpo_sim.lm.model import torch_threads

AGG_MODE = "seq-mean-token-sum-norm"
TOPK = 20
"""The ``K`` of DPPO's Top-K divergences in the arena: the engine reports its 20 most likely tokens at
each response position (vLLM's default ``max_logprobs``) when a contestant reads them."""
TOPK_COLUMNS = ("topk_tv", "topk_kl")
ANCHORS = ("rollout", "recomputed")
MU_BINS = {"rare": (0.0, 0.01), "low": (0.01, 0.1), "mid": (0.1, 0.5), "high": (0.5, 1.0)}
"""Bins of ``mu`` for the gradient shares: ``lo < mu <= hi`` (``rare``: ``mu <= 0.01``, as
:data:`drpo_sim.lm.mismatch.RARE_MU`)."""
COLLAPSE = stats.CollapseRule(drop=0.5, min_peak=0.5)
"""Declared before any arena run: a run has collapsed once its held-out reward falls below half
its best so far, counted only after it reached 0.5 (four times the reward of guessing a class)."""
ROLLOUT_MISMATCH = ("mismatch_mean", "mismatch_max", "pi_minus_mu_mean", "pi_minus_mu_min", "pi_minus_mu_max",
                    "log_ratio_mean", "kl_k3", "rare_share")
GRAD_SHARES = tuple(f"grad_share_{b}_{s}" for b in MU_BINS for s in ("pos", "neg"))
METRICS = ("reward", "heldout_reward", *ROLLOUT_MISMATCH, "entropy", "response_len", "flip_rate", "grad_norm",
           *(f"{r}_frac" for r in objectives.Regions.NAMES), *GRAD_SHARES, "nonfinite")
EVAL_SEED = 1_000_003
"""Seeds the held-out prompts and their draws (the same for every run and every experiment)."""


@dataclass(frozen=True)
class Contestant:
    """An objective of the registry, its parameters and its anchor (:data:`ANCHORS`)."""

    objective: str
    params: tuple[tuple[str, Any], ...] = ()
    anchor: str = "rollout"
    label: str = ""

    def __post_init__(self) -> None:
        self.build()  # unknown objective or parameter: ValueError naming the valid ones
        if self.anchor not in ANCHORS:
            raise ValueError(f"unknown anchor {self.anchor!r}; valid: {', '.join(ANCHORS)}")
        if not self.label:
            suffix = "".join(f" {k} {v}" for k, v in self.params)
            anchor = " (recomputed anchor)" if self.anchor == "recomputed" else ""
            object.__setattr__(self, "label", f"{self.objective}{suffix}{anchor}")

    @classmethod
    def of(cls, objective: str, anchor: str = "rollout", label: str = "", **params: Any) -> Contestant:
        return cls(objective, tuple(sorted(params.items())), anchor, label)

    def build(self) -> objectives.Objective:
        return objectives.get(self.objective, **dict(self.params))

    @property
    def variant(self) -> str:
        """What sets it apart from the plain objective: its non-default parameters and its anchor
        (``""`` for the plain objective), e.g. ``"delta=2.5"`` or ``"anchor=recomputed"``."""
        default = objectives.get(self.objective).params  # a correction's parameters are not among them
        parts = [f"{k}={v}" for k, v in self.build().params.items() if k not in default or v != default[k]]
        if self.anchor != "rollout":
            parts.append(f"anchor={self.anchor}")
        return ", ".join(parts)

    def spec(self) -> dict[str, Any]:
        """JSON-friendly: objective, full parameters, anchor and label."""
        return {"objective": self.objective, "params": self.build().params, "anchor": self.anchor,
                "label": self.label}


@dataclass(frozen=True)
class ArenaConfig:
    """One arena experiment's settings: the base model, the engine, the optimiser, the budget."""

    base: BaseModelConfig = BaseModelConfig()
    precision: str = "bf16"
    routing_replay: bool = False
    temperature: float = 1.0
    prompts_per_step: int = 4
    group_size: int = 8
    updates_per_batch: int = 4
    lr: float = 1e-3
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    reward_scale_spread: float = 0.0
    """Decades over which the learner's reward scales spread across the task's keys (module docstring, step 4)."""
    steps: int = 300
    n_eval: int = 64
    eval_every: int = 10

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise ValueError(f"unknown precision {self.precision!r}; valid: {', '.join(PRECISIONS)}")
        if self.routing_replay and not self.base.model.moe:
            raise ValueError("routing replay needs a mixture-of-experts model (n_experts >= 2)")
        check_reward_scale_spread(self.reward_scale_spread)
        check_positive_ints(self, "prompts_per_step", "group_size", "updates_per_batch", "steps", "n_eval",
                            "eval_every")
        if self.group_size < 2:
            raise ValueError(f"group_size must be at least 2 (group-relative advantages), got {self.group_size}")
        if (self.prompts_per_step * self.group_size) % self.updates_per_batch:
            raise ValueError(f"the batch of {self.prompts_per_step * self.group_size} sequences does not split "
                             f"into {self.updates_per_batch} mini-batches")
        for name in ("lr", "grad_clip", "temperature"):
            v = getattr(self, name)
            if isinstance(v, bool) or not (isinstance(v, (int, float)) and math.isfinite(v) and v > 0):
                raise ValueError(f"ArenaConfig.{name} must be a finite number > 0, got {v!r}")

    def flat(self) -> dict[str, Any]:
        """Every field, the nested ones as dicts (JSON-friendly)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_flat(cls, d: dict[str, Any]) -> ArenaConfig:
        return cls(**{**d, "base": BaseModelConfig.from_flat(d["base"])})


@dataclass
class _Adam:
    """AdamW (Loshchilov and Hutter 2019) over parameters with a leading run axis: each run has its
    own step count and skips its update when its gradient is not finite."""

    params: Params
    lr: float
    weight_decay: float
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    m: Params = field(init=False)
    v: Params = field(init=False)
    t: torch.Tensor = field(init=False)

    def __post_init__(self) -> None:
        self.m = {k: torch.zeros_like(p) for k, p in self.params.items()}
        self.v = {k: torch.zeros_like(p) for k, p in self.params.items()}
        first = next(iter(self.params.values()))
        self.t = torch.zeros(first.shape[0], device=first.device)

    @torch.no_grad()
    def step(self, grads: Params, ok: torch.Tensor) -> None:
        b1, b2 = self.betas
        self.t += ok.float()
        c1 = (1 - b1 ** self.t).clamp_min(1e-12)
        c2 = (1 - b2 ** self.t).clamp_min(1e-12)
        for k, p in self.params.items():
            shape = (-1,) + (1,) * (p.ndim - 1)
            keep = ok.view(shape)
            g = torch.where(keep, grads[k], 0.0)
            m = torch.where(keep, b1 * self.m[k] + (1 - b1) * g, self.m[k])
            v = torch.where(keep, b2 * self.v[k] + (1 - b2) * g * g, self.v[k])
            self.m[k], self.v[k] = m, v
            update = (m / c1.view(shape)) / ((v / c2.view(shape)).sqrt() + self.eps) + self.weight_decay * p
            p.sub_(torch.where(keep, self.lr * update, 0.0))


def train(config: ArenaConfig, contestants: Sequence[Contestant], seeds: Sequence[int], *,
          device: str | torch.device = "cpu", progress: bool = False) -> pd.DataFrame:
    """Train every (contestant, seed) run from the base model; one row per run and step (module
    docstring). On the CPU it runs on one torch thread; deterministic given the seeds (the prompts
    and draws come from CPU generators on any ``device``, so a GPU run sees the same data, while
    its kernels round differently)."""
    if not contestants or not seeds:
        raise ValueError("the arena needs at least one contestant and one seed")
    if len(set(contestants)) != len(contestants):
        raise ValueError("a contestant is listed twice")
    if len(set(seeds)) != len(seeds) or any(isinstance(s, bool) or not isinstance(s, int) or s < 0 for s in seeds):
        raise ValueError(f"seeds must be distinct non-negative integers, got {list(seeds)!r}")
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda: no CUDA device is available here; run on the CPU (the default)")
    with torch_threads(1):
        return _train(config, list(contestants), [int(s) for s in seeds], device, progress)


def cell_spec(config: ArenaConfig, contestants: Sequence[Contestant], seeds: Sequence[int]) -> dict[str, Any]:
    """What determines an arena cell's numbers: the full configuration, each contestant with its
    full parameters, and the seeds (:mod:`drpo_sim.run.cells`)."""
    return {"config": config.flat(), "contestants": [c.spec() for c in contestants], "seeds": [int(s) for s in seeds]}


def run_cell(spec: dict[str, Any]) -> pd.DataFrame:
    """One arena cell (:func:`cell_spec`): its table (:func:`train`)."""
    contestants = [Contestant.of(c["objective"], anchor=c["anchor"], label=c["label"], **c["params"])
                   for c in spec["contestants"]]
    return train(ArenaConfig.from_flat(spec["config"]), contestants, spec["seeds"])


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().cpu().numpy()


def _train(config: ArenaConfig, contestants: list[Contestant], seeds: list[int], device: torch.device,
           progress: bool) -> pd.DataFrame:
    cfg, task = config.base.model, config.base.task
    C, S = len(contestants), len(seeds)
    R, P, G, U = C * S, config.prompts_per_step, config.group_size, config.updates_per_batch
    B, H, plen, temp = P * G, task.response_len, task.prompt_len, config.temperature
    mb = B // U
    objs = [c.build() for c in contestants]
    reads_topk = any(set(TOPK_COLUMNS) & set(o.required_columns) for o in objs)
    run_contestant = torch.arange(C, device=device).repeat_interleave(S)  # run r: contestant r // S, seed r % S
    params = {k: v.to(device) for k, v in replicate(pretrain(config.base), R).items()}
    for p in params.values():
        p.requires_grad_(True)
    opt = _Adam(params, config.lr, config.weight_decay)
    gens = [torch.Generator().manual_seed(s) for s in seeds]
    eval_prompts = task.prompts(config.n_eval, torch.Generator().manual_seed(EVAL_SEED)).to(device)
    coef = objectives.aggregation_weights(torch.ones(R, mb, H, dtype=torch.bool, device=device), AGG_MODE,
                                          horizon=H)
    recomputed = torch.tensor([c.anchor == "recomputed" for c in contestants], device=device)[run_contestant]
    key_scale = torch.from_numpy(reward_scales(config.reward_scale_spread, task.n_classes))  # [m] float64
    rows: list[dict[str, np.ndarray]] = []
    initial = _heldout(params, config, eval_prompts, R, step=0)
    for step in tqdm(range(1, config.steps + 1), desc=f"arena/{config.precision}", unit="step",
                     disable=not progress, leave=False):
        # 1-2. weight sync, rollout (prompts and draws shared by the runs of a seed)
        prompts = torch.stack([task.prompts(P, g).repeat_interleave(G, dim=0) for g in gens]).to(device)  # [S,B,2]
        draws = torch.stack([torch.rand(H, B, generator=g) for g in gens], dim=1).to(device)  # [H, S, B]
        engine = Engine(params, cfg, config.precision)
        roll = engine.rollout(prompts.repeat(C, 1, 1), H, lambda j: draws[j].repeat(C, 1), temp,
                              trainer=params, topk=TOPK if reads_topk else 0)
        seqs, logp_mu = roll.seqs, roll.logp
        # 3. the trainer's pi_old of the same tokens (with routing replay, on the engine's routes)
        with torch.no_grad():
            z, own_routes = logits(params, cfg, seqs[..., :-1], roll.routes if config.routing_replay else None)
            lp_all, logp_old = logprobs_of(z, seqs, plen, temp)
            entropy = -(lp_all.exp() * lp_all).sum(-1).mean(dim=(-1, -2))
            del z, lp_all
        mask = torch.ones_like(logp_mu, dtype=torch.bool)
        row = {k: _np(v) for k, v in run_statistics(logp_old, logp_mu, mask).items() if k in ROLLOUT_MISMATCH}
        row["entropy"] = _np(entropy.double())
        row["response_len"] = _np(mask.sum(-1).double().mean(-1))
        row["flip_rate"] = _flip_rate(params, config, seqs, roll.routes, None if config.routing_replay else own_routes)
        # 4. reward, group-relative advantage
        reward = task.reward(seqs)  # [R, B]
        scaled = reward.double().cpu() * key_scale[seqs[:, :, 0].cpu()]  # the learner's rewards (step 4)
        adv = torch.from_numpy(group_relative(_np(scaled.view(R, P, G))).reshape(R, B)).float()
        adv = adv.to(device)
        row["reward"] = _np(reward.double().mean(-1))
        # 5. updates
        anchor = torch.where(recomputed[:, None, None], logp_old, logp_mu)
        acc = _Accumulator(R, device)
        for u in range(U):
            sl = slice(u * mb, (u + 1) * mb)
            routes = roll.routes[:, sl] if config.routing_replay else None  # R3: the engine's routes
            lp_all, logp = response_logprobs(params, cfg, seqs[:, sl], plen, temp, routes)
            topk = {}
            if reads_topk:  # DPPO's Top-K divergences of the engine's top tokens against the current trainer
                with torch.no_grad():
                    tv, kl = objectives.topk_divergences(lp_all.detach(), roll.topk_ids[:, sl], roll.topk_logp[:, sl])
                topk = {"topk_tv": tv, "topk_kl": kl}
            del lp_all
            loss = logp.new_zeros(())
            a = adv[:, sl, None].expand(-1, -1, H)
            for ci, obj in enumerate(objs):
                runs = slice(ci * S, (ci + 1) * S)
                # pi_old for the objectives of three policies (each response, a row, is one sequence)
                old = {"logp_old": logp_old[runs, sl],
                       **{k: v[runs] for k, v in topk.items() if k in obj.required_columns}}
                j = obj.surrogate(logp[runs], anchor[runs, sl], a[runs], **old)
                loss = loss - (coef[runs] * j).sum()
                with torch.no_grad():
                    g = coef[runs] * obj.grad_logp(logp[runs].detach(), anchor[runs, sl], a[runs], **old)
                    w = obj.weight(logp[runs].detach(), anchor[runs, sl], a[runs], **old)
                    acc.tokens(runs, w, g, logp_mu[runs, sl], a[runs])
            grads = torch.autograd.grad(loss, list(params.values()), allow_unused=True)
            grads = {k: torch.zeros_like(p) if gr is None else gr for (k, p), gr in zip(params.items(), grads)}
            norm = torch.sqrt(sum(gr.double().pow(2).flatten(1).sum(1) for gr in grads.values()))
            ok = torch.isfinite(norm)
            scale = torch.where(ok, torch.clamp(config.grad_clip / (norm + 1e-6), max=1.0), 0.0).float()
            opt.step({k: torch.nan_to_num(gr) * scale.view((-1,) + (1,) * (gr.ndim - 1)) for k, gr in grads.items()},
                     ok)
            acc.update(norm, ok)
        row.update(acc.result())
        # 6. held-out evaluation
        row["heldout_reward"] = (_heldout(params, config, eval_prompts, R, step)
                                 if step % config.eval_every == 0 or step == config.steps else np.full(R, np.nan))
        rows.append(row)
    return _table(rows, initial, config, contestants, seeds)


@torch.no_grad()
def _flip_rate(params: Params, config: ArenaConfig, seqs: torch.Tensor, engine_routes: torch.Tensor | None,
               own: torch.Tensor | None) -> np.ndarray:
    """Share of response-producing positions whose trainer route differs from the engine's (NaN if
    dense). ``own``: the trainer's own routes when its rollout-time pass already chose them (without
    routing replay); with replay they come from one more pass without it."""
    R = seqs.shape[0]
    if engine_routes is None:
        return np.full(R, np.nan)
    if own is None:
        _, own = logits(params, config.base.model, seqs[..., :-1])
    plen = config.base.task.prompt_len
    return _np((own[..., plen - 1:] != engine_routes[..., plen - 1:]).double().mean(dim=(-1, -2)))


@torch.no_grad()
def _heldout(params: Params, config: ArenaConfig, prompts: torch.Tensor, R: int, step: int) -> np.ndarray:
    """Mean reward of one fp32 sample per held-out prompt, draws shared by every run."""
    task = config.base.task
    gen = torch.Generator().manual_seed(EVAL_SEED + step)
    draws = torch.rand(task.response_len, len(prompts), generator=gen).to(prompts.device)
    roll = Engine(params, config.base.model, "fp32").rollout(
        prompts[None].expand(R, -1, -1), task.response_len, lambda j: draws[j][None].expand(R, -1),
        config.temperature)
    return _np(task.reward(roll.seqs).double().mean(-1))


class _Accumulator:
    """The step's update-time statistics, per run, averaged over its updates."""

    def __init__(self, R: int, device: torch.device):
        self.n = 0
        self.norm = torch.zeros(R, dtype=torch.float64, device=device)
        self.bad = torch.zeros(R, dtype=torch.bool, device=device)
        self.regions = {r: torch.zeros(R, dtype=torch.float64, device=device) for r in objectives.Regions.NAMES}
        self.shares = {k: torch.zeros(R, dtype=torch.float64, device=device) for k in GRAD_SHARES}

    def tokens(self, runs: slice, w: torch.Tensor, g: torch.Tensor, logp_mu: torch.Tensor, adv: torch.Tensor) -> None:
        regions = objectives.Regions.from_weight(w)
        for name in objectives.Regions.NAMES:
            self.regions[name][runs] += getattr(regions, name).double().mean(dim=(-1, -2))
        mag = g.abs().double()
        total = mag.sum(dim=(-1, -2)).clamp_min(1e-300)
        mu = logp_mu.exp()
        for b, (lo, hi) in MU_BINS.items():
            in_bin = (mu > lo) & (mu <= hi) if lo > 0 else mu <= hi
            for s, sign in (("pos", adv > 0), ("neg", adv < 0)):
                self.shares[f"grad_share_{b}_{s}"][runs] += (mag * (in_bin & sign)).sum(dim=(-1, -2)) / total

    def update(self, norm: torch.Tensor, ok: torch.Tensor) -> None:
        self.norm += torch.where(ok, norm, torch.full_like(norm, float("nan")))
        self.bad |= ~ok
        self.n += 1

    def result(self) -> dict[str, np.ndarray]:
        out = {"grad_norm": _np(self.norm / self.n), "nonfinite": _np(self.bad).copy()}
        out.update({f"{k}_frac": _np(v / self.n) for k, v in self.regions.items()})
        out.update({k: _np(v / self.n) for k, v in self.shares.items()})
        return out


def _table(rows: list[dict[str, np.ndarray]], initial: np.ndarray, config: ArenaConfig,
           contestants: list[Contestant], seeds: list[int]) -> pd.DataFrame:
    """Long table: one row per (run, step), labels first (module docstring)."""
    R = len(contestants) * len(seeds)
    steps = len(rows)
    cols = {k: np.stack([r[k] for r in rows], axis=1).reshape(-1) for k in METRICS}  # run-major
    run = np.repeat(np.arange(R), steps)
    c = run // len(seeds)
    world = ("moe_replay" if config.routing_replay else "moe") if config.base.model.moe else ""
    df = pd.DataFrame({
        "objective": [contestants[i].objective for i in c],
        "variant": [", ".join(v for v in (contestants[i].variant, world) if v) for i in c],
        "method": [contestants[i].label for i in c],
        "anchor": [contestants[i].anchor for i in c],
        "params": [json.dumps(contestants[i].build().params, sort_keys=True) for i in c],
        "precision": config.precision,
        "routing_replay": config.routing_replay,
        "moe": config.base.model.moe,
        "lr": config.lr,
        "reward_scale_spread": config.reward_scale_spread,
        "seed": np.asarray(seeds)[run % len(seeds)],
        "step": np.tile(np.arange(1, steps + 1), R),
        **cols,
    })
    held = np.concatenate([initial[:, None], np.stack([r["heldout_reward"] for r in rows], axis=1)], axis=1)
    flags = np.concatenate([np.zeros((R, 1), bool), np.stack([r["nonfinite"] for r in rows], axis=1)], axis=1)
    # collapse on the evaluated points (NaN between evaluations), carried forward between them
    filled = pd.DataFrame(held.T).ffill().to_numpy().T
    df["collapsed"] = stats.collapsed(filled, flags, COLLAPSE)[:, 1:].reshape(-1)
    df["initial_heldout_reward"] = np.repeat(initial, steps)
    df["nonfinite"] = df["nonfinite"].astype(bool)
    return df
