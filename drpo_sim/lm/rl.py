"""RL fine-tuning of the pretrained tiny transformer with any objective of the registry.

The setting follows the DRPO paper (Yao et al. 2026, experimental setup): at each step

1. **weight sync**: the float32 trainer's weights are copied into an inference engine in
   ``precision`` (:func:`drpo_sim.lm.precision.engine_copy`);
2. **rollout**: the engine samples ``G`` responses for each of ``prompts_per_step`` prompts and
   reports ``mu``, the log-prob of each sampled token under its own low-precision logits;
3. **reward and advantage**: the task's verifiable reward ``R``; group-relative advantages without
   the division by the standard deviation, ``A_i = R_i - mean_j R_j`` over the prompt's ``G``
   samples (:func:`drpo_sim.advantages.group_relative`), broadcast over the response's tokens;
4. **updates**: the batch is split into ``updates_per_batch`` mini-batches, one AdamW step each
   (weight decay 0.01, gradients clipped to norm 1.0). Every mini-batch's loss is
   :func:`drpo_sim.objectives.policy_loss` on the trainer's float32 ``logp`` (``pi`` at that
   update) against the engine's ``mu``: the ratio ``r = pi / mu`` stays anchored to the rollout
   log-probs across the mini-batches, so it carries both the precision mismatch and the drift of
   the earlier updates. Loss aggregation ``seq-mean-token-sum-norm`` with the fixed horizon
   ``H = n_digits + 1`` (the paper's setting); tokens after a response's ``EOS`` are masked.
5. **evaluation**: the float32 trainer on a fixed held-out prompt set: one response per prompt
   sampled at temperature 1 with a fixed generator (``eval_reward``, an estimate of the expected
   reward RL maximises, free of the engine's precision), and every ``greedy_every`` steps greedy
   decoding (:func:`drpo_sim.lm.pretrain.evaluate`).

The objective's math lives in :mod:`drpo_sim.objectives` only; this loop never writes a formula.

One row per step (:data:`METRICS`): ``reward`` (mean sampled reward of the engine's rollout),
``eval_reward`` (after the step's updates), ``eval_greedy`` and ``eval_exact`` (greedy partial
reward and exact-match rate, NaN between greedy evaluations), the rollout-time mismatch
between the trainer's ``pi_old`` (its float32 log-probs of the rollout, before any update) and the
engine's ``mu`` over valid tokens (``mismatch_mean`` and ``mismatch_max`` of ``abs(pi_old - mu)``;
``pi_minus_mu_mean``, ``_min`` and ``_max`` of the signed ``pi_old - mu``; ``log_ratio_mean`` of
``log pi_old - log mu``; ``kl_k3``, the k3 estimate of ``KL(mu || pi_old)`` from the engine's own
samples; all defined in :mod:`drpo_sim.lm.mismatch`), the trainer's mean per-token ``entropy``
over the rollout's valid positions and the mean ``response_len`` in tokens, and, averaged over
the step's updates, the statistics of :func:`drpo_sim.objectives.policy_loss` at update time
(its full set, ``metrics="full"``: ``shift_mean``/``shift_max`` of ``abs(pi - mu)``, the
fractions of tokens the objective's weight masks, attenuates, turns corrective or amplifies, the
weights), the loss, the gradient norm before clipping, and ``nonfinite`` (a non-finite loss or
gradient was met: that update was skipped). Then ``collapsed`` (:func:`drpo_sim.stats.collapsed`
on ``eval_reward``), ``initial_eval_reward``, and the configuration's fields.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from drpo_sim import advantages, objectives, stats
from drpo_sim.lm.mismatch import token_statistics
from drpo_sim.lm.model import generate, response_logprobs_all, token_logprobs, torch_threads
from drpo_sim.lm.precision import PRECISIONS, engine_copy
from drpo_sim.lm.pretrain import Checkpoint, eval_digits, evaluate, load_checkpoint
from drpo_sim.lm.task import EOS, PAD, REWARD_MODES
from drpo_sim.tokens import TokenBatch, TokenLogWriter

DEFAULT_AGG = "seq-mean-token-sum-norm" if "seq-mean-token-sum-norm" in objectives.AGG_MODES else "seq-mean-token-sum"
ROLLOUT_MISMATCH = ("mismatch_mean", "mismatch_max", "pi_minus_mu_mean", "pi_minus_mu_min", "pi_minus_mu_max",
                    "log_ratio_mean", "kl_k3")
"""The statistics of :mod:`drpo_sim.lm.mismatch` the table keeps for every step's rollout."""

METRICS = (
    "reward", "eval_reward", "eval_greedy", "eval_exact",
    *ROLLOUT_MISMATCH, "entropy", "response_len",
    "shift_mean", "shift_max",
    "masked_frac", "attenuated_frac", "corrective_frac", "amplified_frac",
    "weight_mean", "weight_min", "weight_max",
    "loss", "grad_norm", "valid_tokens", "nonfinite",
)


@dataclass
class LabConfig:
    """One RL run (defaults: the DRPO paper's optimiser setting at a learning rate for a 0.1 M model)."""

    objective: str = "drpo"
    params: dict[str, Any] = field(default_factory=dict)
    """Objective parameters for :func:`drpo_sim.objectives.get`, e.g. ``{"delta": 2.5}``."""
    precision: str = "bf16"
    group_size: int = 8
    prompts_per_step: int = 8
    steps: int = 150
    updates_per_batch: int = 4
    lr: float = 3e-4
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    agg_mode: str = DEFAULT_AGG
    reward_mode: str = "partial"
    """The task's reward: ``"partial"`` (credit per correct position) or ``"exact"`` (:mod:`drpo_sim.lm.task`)."""
    n_eval: int = 64
    """Held-out prompts; ``eval_reward`` samples one response for each at every step."""
    greedy_every: int = 10
    """Greedy evaluation (``eval_greedy``, ``eval_exact``) every this many steps and at the last (NaN between)."""
    seed: int = 0

    def __post_init__(self) -> None:
        self.build_objective()  # unknown objective or parameter: ValueError naming the valid ones
        if self.precision not in PRECISIONS:
            raise ValueError(f"unknown precision {self.precision!r}; valid: {', '.join(PRECISIONS)}")
        if self.reward_mode not in REWARD_MODES:
            raise ValueError(f"unknown reward_mode {self.reward_mode!r}; valid: {', '.join(REWARD_MODES)}")
        if self.agg_mode not in objectives.AGG_MODES:
            raise ValueError(f"unknown agg_mode {self.agg_mode!r}; valid: {', '.join(objectives.AGG_MODES)}")
        for name in ("group_size", "prompts_per_step", "steps", "updates_per_batch", "n_eval", "greedy_every"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be a positive integer, got {v!r}")
        if self.group_size < 2:
            raise ValueError(f"group_size must be at least 2 (group-relative advantages), got {self.group_size}")
        n = self.group_size * self.prompts_per_step
        if n % self.updates_per_batch:
            raise ValueError(f"the batch of {n} sequences does not split into {self.updates_per_batch} mini-batches")
        for name in ("lr", "grad_clip"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and math.isfinite(v) and v > 0):
                raise ValueError(f"{name} must be a finite number > 0, got {v!r}")
        if not (math.isfinite(self.weight_decay) and self.weight_decay >= 0):
            raise ValueError(f"weight_decay must be >= 0, got {self.weight_decay!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise ValueError(f"seed must be a non-negative integer, got {self.seed!r}")

    def build_objective(self) -> objectives.Objective:
        return objectives.get(self.objective, **self.params)

    def flat(self) -> dict[str, Any]:
        """The configuration as JSON-friendly fields (``params`` as a JSON string)."""
        d = dataclasses.asdict(self)
        d["params"] = json.dumps(self.build_objective().params, sort_keys=True)
        return d


def train(
    config: LabConfig,
    checkpoint: Checkpoint | str,
    token_log: TokenLogWriter | None = None,
    *,
    progress: bool = False,
) -> pd.DataFrame:
    """Fine-tune the checkpoint's model with ``config``; one row per step (module docstring).

    ``checkpoint`` is a :class:`~drpo_sim.lm.pretrain.Checkpoint` or the path of one. With
    ``token_log``, each optimiser update writes a :class:`~drpo_sim.tokens.TokenBatch` of its
    mini-batch (``logp``: the trainer at that update; ``logp_behavior``: the engine's ``mu``;
    ``logp_old``: the trainer at rollout time; all response positions, ``mask`` false after
    ``EOS``; ``sample_id`` and ``group_id`` unique within the run). Runs on one torch thread
    (:func:`~drpo_sim.lm.model.torch_threads`) and is deterministic given ``config.seed``.
    """
    with torch_threads(1):
        return _train(config, checkpoint, token_log, progress)


class _Collect(list):
    """A token sink that keeps the batches in memory (a worker returns them to the driver)."""

    write = list.append


def run_cell(spec: dict[str, Any], checkpoint: Checkpoint) -> tuple[pd.DataFrame, list[TokenBatch] | None, dict]:
    """One lab run as a cell of :mod:`drpo_sim.run.cells`: ``spec`` holds the ``lab``
    configuration's fields (:class:`LabConfig`), the ``pretrain`` configuration the checkpoint
    was made with, and whether to keep a ``token_log``. Returns the table, the token batches
    (None without a token log) and the token log's metadata."""
    config = LabConfig(**spec["lab"])
    if dataclasses.asdict(checkpoint.config) != spec["pretrain"]:
        raise ValueError(f"the checkpoint was pretrained with {dataclasses.asdict(checkpoint.config)}, "
                         f"the cell asks for {spec['pretrain']}")
    sink = _Collect() if spec["token_log"] else None
    table = train(config, checkpoint, sink)
    meta = {"source": "drpo_sim.lm", "config": config.flat(),
            "checkpoint": checkpoint.path.name if checkpoint.path else None}
    return table, (list(sink) if sink is not None else None), meta


def _train(config: LabConfig, checkpoint: Checkpoint | str, token_log: TokenLogWriter | _Collect | None,
           progress: bool) -> pd.DataFrame:
    ckpt = load_checkpoint(checkpoint) if not isinstance(checkpoint, Checkpoint) else checkpoint
    task = ckpt.task
    obj = config.build_objective()
    model = ckpt.model()
    opt = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    gen = torch.Generator().manual_seed(config.seed)
    held_out = eval_digits(task, config.n_eval)
    initial = evaluate(model, task, held_out, reward_mode=config.reward_mode)
    P, G, U = config.prompts_per_step, config.group_size, config.updates_per_batch
    B, H = P * G, task.response_len
    mb = B // U
    rows = []
    for step in tqdm(range(1, config.steps + 1), desc=f"{obj.name}/{config.precision}", unit="step",
                     disable=not progress, leave=False):
        # 1-2. weight sync, rollout by the engine (mu: its own log-probs of its samples)
        engine = engine_copy(model, config.precision)
        digits = task.sample_digits(P, gen).repeat_interleave(G, dim=0)  # [B, n], groups contiguous
        roll = generate(engine, task.prompts(digits), H, eos_id=EOS, pad_id=PAD, generator=gen)
        seqs, logp_mu, mask = roll.seqs, roll.logp, roll.mask
        # 3. reward, group-relative advantage (no std normalisation)
        reward = task.reward(seqs[:, task.prompt_len :], digits, config.reward_mode)
        adv = torch.from_numpy(advantages.group_relative(reward.view(P, G).double().numpy()).reshape(B)).float()
        with torch.no_grad():
            logp_all = response_logprobs_all(model, seqs, task.prompt_len)
            logp_old = logp_all.gather(-1, seqs[:, task.prompt_len :, None]).squeeze(-1)  # = token_logprobs
        row = {"step": step, "reward": float(reward.mean()), **_rollout_mismatch(logp_old, logp_mu, mask),
               **_rollout_shape(logp_all, mask)}
        del logp_all
        # 4. mini-batch updates, ratio anchored to the rollout's mu
        acc: list[dict[str, float]] = []
        nonfinite = False
        for u in range(U):
            sl = slice(u * mb, (u + 1) * mb)
            logp = token_logprobs(model, seqs[sl], task.prompt_len)
            loss, m = objectives.policy_loss(
                obj, logp, logp_mu[sl], adv[sl], mask[sl], agg_mode=config.agg_mode, horizon=H, metrics="full"
            )
            opt.zero_grad(set_to_none=True)
            loss.backward()
            norm = float(torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip))
            finite = math.isfinite(norm) and math.isfinite(float(loss.detach()))
            if finite:
                opt.step()
            nonfinite |= not finite
            acc.append({**m, "grad_norm": norm})
            if token_log is not None:
                token_log.write(
                    _token_batch(
                        logp,
                        logp_mu[sl],
                        logp_old[sl],
                        adv[sl],
                        mask[sl],
                        seqs[sl, task.prompt_len :],
                        reward[sl],
                        step,
                        u,
                        sl,
                        B,
                        G,
                        config.seed,
                    )
                )
        row.update(_mean_update_metrics(acc))
        row["nonfinite"] = nonfinite
        # 5. evaluation of the float32 trainer on the held-out prompts
        greedy = step % config.greedy_every == 0 or step == config.steps
        row.update(evaluate(model, task, held_out, greedy=greedy, reward_mode=config.reward_mode))
        rows.append(row)
    return _table(rows, config, ckpt, initial)


def _rollout_mismatch(logp_old: torch.Tensor, logp_mu: torch.Tensor, mask: torch.Tensor) -> dict[str, float]:
    """The rollout-time columns of :func:`drpo_sim.lm.mismatch.token_statistics` (module docstring)."""
    stats_ = token_statistics(logp_old, logp_mu, mask)
    return {k: stats_[k] for k in ROLLOUT_MISMATCH}


def _rollout_shape(logp_all: torch.Tensor, mask: torch.Tensor) -> dict[str, float]:
    """The trainer's mean per-token entropy over the rollout's valid positions (from its full
    distribution ``logp_all [B, R, V]``) and the mean response length in tokens."""
    entropy = -(logp_all.exp() * logp_all).sum(-1)
    return {
        "entropy": float(entropy[mask].double().mean()),
        "response_len": float(mask.sum(dim=1).double().mean()),
    }


def _mean_update_metrics(acc: list[dict[str, float]]) -> dict[str, float]:
    """The step's update statistics: means over updates, except the extremes (max / min)."""
    def col(k):
        return np.array([a[k] for a in acc], dtype=float)

    out = {
        "shift_mean": np.nanmean(col("actor/abs_shift_mean")),
        "shift_max": np.nanmax(col("actor/abs_shift_max")),
        **{f"{r}_frac": np.nanmean(col(f"actor/{r}_frac")) for r in objectives.Regions.NAMES},
        "weight_mean": np.nanmean(col("actor/weight_mean")),
        "weight_min": np.nanmin(col("actor/weight_min")),
        "weight_max": np.nanmax(col("actor/weight_max")),
        "loss": np.mean(col("actor/pg_loss")),
        "grad_norm": np.mean(col("grad_norm")),
        "valid_tokens": np.sum(col("actor/valid_tokens")),
    }
    return {k: float(v) for k, v in out.items()}


def _token_batch(logp, logp_mu, logp_old, adv, mask, tokens, reward, step, update, sl, B, G, seed) -> TokenBatch:
    """One update's tokens as a :class:`TokenBatch` (ids numbered uniquely within the run)."""
    n, h = logp.shape
    sample = (step - 1) * B + torch.arange(sl.start, sl.stop)
    shape = (n, h)
    return TokenBatch.from_arrays(
        logp=logp.detach(),
        logp_behavior=logp_mu,
        advantage=adv[:, None].expand(shape),
        mask=mask,
        sample_id=sample[:, None].expand(shape),
        group_id=(sample // G)[:, None].expand(shape),
        position=torch.arange(h)[None, :].expand(shape),
        token_id=tokens,
        logp_old=logp_old,
        reward=reward[:, None].expand(shape),
        step=np.full(shape, step),
        seed=np.full(shape, seed),
        update=np.full(shape, update),
    )


def _table(rows: list[dict], config: LabConfig, ckpt: Checkpoint, initial: dict[str, float]) -> pd.DataFrame:
    """The tidy table: one row per step, the configuration repeated in columns."""
    df = pd.DataFrame(rows)
    curve = np.concatenate([[initial["eval_reward"]], df["eval_reward"].to_numpy()])[None, :]
    flags = np.concatenate([[False], df["nonfinite"].to_numpy(dtype=bool)])[None, :]
    df["collapsed"] = stats.collapsed(curve, flags)[0, 1:]
    df["initial_eval_reward"] = initial["eval_reward"]
    df.insert(0, "seed", config.seed)
    df.insert(0, "precision", config.precision)
    df.insert(0, "method", config.objective)
    for k, v in config.flat().items():
        if k not in ("objective", "precision", "seed", "steps"):
            df[k if k != "params" else "method_params"] = v
    df["pretrain_key"] = ckpt.config.key()
    df["n_digits"] = ckpt.config.n_digits
    return df
