"""A drpo_sim objective as the policy loss of TRL's ``GRPOTrainer`` (TRL 1.16), and its per-token dump.

Usage (``docs/integrations.md``)::

    from drpo_sim.integrations.trl import DrpoSimGRPOTrainer
    trainer = DrpoSimGRPOTrainer(model=model, reward_funcs=reward, args=GRPOConfig(...), train_dataset=data,
                                 objective="drpo", objective_params={"delta": 12.5}, token_log_dir="run/tokens")
    trainer.train()        # then: drpo-sim replay run/tokens --out run/replay

TRL has no pluggable policy loss: :class:`DrpoSimGRPOTrainer` overrides ``GRPOTrainer._compute_loss``.
What it reproduces was read in TRL 1.16.0's ``trl/trainer/grpo_trainer.py``; this is our code, written
from that reading:

* **The three log-probs.** ``_generate_single_turn`` returns the engine's per-token log-probs only with
  vLLM (the sampled token's, from vLLM's top-k); a ``rollout_func`` returns its own ``logprobs``;
  ``model.generate`` and transformers' continuous batching return none.
  ``_generate_and_score_completions`` pads them into ``sampling_per_token_logps`` (a token vLLM could
  not score is NaN) and recomputes the trainer's ``old_per_token_logps`` only when
  ``gradient_accumulation_steps % (steps_per_generation * num_iterations) != 0`` (the weights can change
  between rollout and update, e.g. ``num_iterations > 1``) or with vLLM's importance-sampling
  correction; otherwise ``_compute_loss`` uses the current log-probs, detached, which are equal to them.
  Here ``mu`` (``logp_behavior``) is ``sampling_per_token_logps`` when TRL has it (a NaN token takes
  ``pi_old``'s value, counted in ``drpo_sim/mu_unscored_frac``); without it, ``mu`` falls back to
  ``old_per_token_logps``, or to the detached current log-probs when TRL skipped those, with a
  :class:`MuFallbackWarning` saying which. ``logp_old`` is ``old_per_token_logps``: an objective that
  reads ``pi_old`` (:attr:`~drpo_sim.objectives.Objective.needs_old`) is refused at construction when
  TRL will not recompute it, with what to change.
* **Normalisation.** ``_compute_loss`` reduces the per-token loss ``l`` under the mask ``m``
  (``completion_mask``, times ``tool_mask`` with tools) by ``loss_type``, on each process's micro-batch
  of ``B`` rows. ``GRPOTrainer.loss_is_scaled_for_ga = True`` tells ``Trainer.training_step`` not to
  divide again, and data parallelism averages the gradients over the ``P`` processes. With ``G`` the
  accumulation steps (``current_gradient_accumulation_steps``; 1 in evaluation), ``K``
  ``steps_per_generation``, ``L`` ``max_completion_length`` and ``N`` = ``num_items_in_batch``, the
  count of ``m`` over the whole generation batch on every process (``accelerator.gather``):

  ================== ================================================ ============================ =================
  ``loss_type``      TRL's loss                                        ``policy_loss`` ``agg_mode``  times
  ================== ================================================ ============================ =================
  grpo, sapo         ``mean_i(sum_t m l / max(sum_t m, 1)) / G``       ``seq-mean-token-mean``       ``S / (B G)``
  bnpo               ``sum m l / max(sum m, 1) / G``                   ``token-mean``                ``1 / G``
  dr_grpo            ``sum m l / (B L) / G``                           ``seq-mean-token-sum-norm``   ``S / (B G)``
                                                                       (``horizon=L``)
  dapo, cispo, vespo ``sum m l / (max(N, 1) / P * G / K)``             ``token-mean``                ``n P K / (N G)``
                     (in evaluation without ``G / K``)
  luspo              ``mean_i(sum_t m l) / G``                         ``seq-mean-token-sum``        ``S / (B G)``
  ================== ================================================ ============================ =================

  (``S``: rows with a token in the loss, which drpo_sim's sequence means count and TRL's ``mean_i``
  does not tell apart; ``n``: this micro-batch's tokens.) So grpo, bnpo, dr_grpo and luspo are
  per-process means, and only dapo, cispo and vespo (dapo is TRL 1.16's default) normalise globally:
  their gradient, averaged over processes and summed over an accumulation window, is
  ``K / (N G)`` times the window's token sum, the token mean of the generation batch when ``K = G``.
  :func:`trl_policy_loss` is that table; the tests hold it against TRL's own ``_compute_loss``.
* **What TRL adds, kept:** the KL penalty (``beta``, with ``use_bias_correction_kl``), aggregated as
  above; the MoE router's auxiliary loss; the metrics ``entropy``, ``kl`` and ``aux_loss``, reduced
  across processes as TRL reduces them, and every metric ``_generate_and_score_completions`` logs
  (rewards, lengths, vLLM's mismatch). TRL's ``clip_ratio/*`` describe TRL's own surrogate and are
  replaced by ``policy_loss``'s ``metrics="full"`` under ``drpo_sim/`` (``drpo_sim/masked_frac``,
  ``drpo_sim/ratio_max``, ...). **Not applied:** TRL's surrogate parameters (``epsilon``,
  ``epsilon_high``, ``delta``, ``sapo_*``, ``vespo_*``: the objective's own parameters take their
  place) and the vLLM importance-sampling ratio (``mu`` is the engine's already: pass
  ``correction="tis"``, for example, for a correction); refused at construction, each with what to use:
  ``importance_sampling_level="sequence"`` (choose the ``gspo`` objective), ``off_policy_mask_threshold``,
  ``top_entropy_quantile < 1``, the entropy bonus.

**The per-token dump** (``token_log_dir``): at every micro-batch of training the tokens the loss saw
(``logp`` the current policy's, ``logp_behavior`` the ``mu`` above, ``logp_old`` when TRL recomputed
it, the sequence's advantage and reward, ``token_id``), with ``step`` the generation round (numbered
by the micro-batch it starts at, ``global_step * gradient_accumulation_steps`` plus the micro-batch
within the optimizer step: the optimizer step itself without accumulation, and a resumed run goes
on), ``update`` the optimizer step within the round, ``sample_id`` the row of the round's global
batch and ``group_id`` its prompt (``sample_id // num_generations``); one token log
(:mod:`drpo_sim.tokens`) per optimizer step and process, ``step{S}_update{U}_rank{R}.parquet``,
written atomically when the next step starts and at the end of ``train()``. Only tokens in the loss
(``mask`` true) are written. ``drpo-sim replay DIR`` reads the folder.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

try:
    import trl
    from trl import GRPOTrainer
except ImportError as _err:  # not installed (ModuleNotFoundError, kept as such), or not importable
    _why = " ".join(str(_err).split())  # one line
    raise type(_err)(f"drpo_sim.integrations.trl needs TRL: pip install 'drpo_sim[trl]' ({_why})",
                     name=_err.name) from _err

from drpo_sim import objectives
from drpo_sim.objectives import Objective, aggregate, policy_loss
from drpo_sim.tokens import TokenBatch, write_token_log

__all__ = [
    "DrpoSimGRPOTrainer",
    "DrpoSimLossMixin",
    "LOSS_TYPES",
    "MuFallbackWarning",
    "TESTED_TRL",
    "trl_aggregate",
    "trl_normalisation",
    "trl_policy_loss",
]

TESTED_TRL = "1.16"
"""The TRL release line this module was written against (its private ``_compute_loss`` and
``_generate_and_score_completions`` change between releases); another one gives a warning."""

if not trl.__version__.startswith(TESTED_TRL + "."):
    warnings.warn(f"drpo_sim.integrations.trl was written and tested against TRL {TESTED_TRL}.x, found "
                  f"{trl.__version__}: check the loss against TRL's (tests/integrations/test_trl.py)", stacklevel=2)

#: Each TRL ``loss_type``: the :func:`~drpo_sim.objectives.policy_loss` aggregation of its normaliser
#: (the module docstring's table). TRL's loss type chooses only the normalisation here: the surrogate is
#: the drpo_sim objective's.
LOSS_TYPES: dict[str, str] = {
    "grpo": "seq-mean-token-mean",
    "sapo": "seq-mean-token-mean",
    "bnpo": "token-mean",
    "dr_grpo": "seq-mean-token-sum-norm",
    "dapo": "token-mean",
    "cispo": "token-mean",
    "vespo": "token-mean",
    "luspo": "seq-mean-token-sum",
}
_GLOBAL = ("dapo", "cispo", "vespo")  # normalised by num_items_in_batch, the generation batch's token count

#: Keys of :func:`~drpo_sim.objectives.policy_loss`'s metrics reduced across processes by a sum, a
#: maximum or a minimum; the others are token means, weighted by each process's valid tokens.
_SUMMED, _MAXED, _MINNED = ("valid_tokens",), ("ratio_max", "weight_max", "abs_shift_max"), ("weight_min",)


class MuFallbackWarning(UserWarning):
    """TRL holds no inference-engine log-probs in this run: ``mu`` is the trainer's own (the message
    says which)."""


def trl_normalisation(
    loss_type: str, mask: torch.Tensor, *, max_completion_length: int | None = None,
    num_items_in_batch: torch.Tensor | float | None = None, num_processes: int = 1,
    gradient_accumulation_steps: int = 1, steps_per_generation: int | None = None, training: bool = True,
) -> tuple[str, int | None, torch.Tensor]:
    """TRL 1.16's normaliser of ``loss_type`` for one micro-batch ``mask`` (``[B, T]``) of one process,
    as ``(agg_mode, horizon, factor)``: TRL's loss of per-token values ``v`` is
    ``factor * aggregate(v, mask, agg_mode, horizon=horizon)`` (the module docstring's table).

    ``num_items_in_batch`` (TRL's input of that name: the mask's count over the generation batch on
    all processes) is needed by the globally normalised types (dapo, cispo, vespo),
    ``max_completion_length`` by dr_grpo; ``steps_per_generation`` defaults to
    ``gradient_accumulation_steps``, as in ``GRPOConfig``. ``training=False`` is TRL's evaluation
    (no accumulation).
    """
    if loss_type not in LOSS_TYPES:
        raise ValueError(f"unknown TRL loss_type {loss_type!r}; TRL 1.16 has {', '.join(LOSS_TYPES)}")
    if mask.ndim != 2:
        raise ValueError(f"mask must be [B, T], got shape {tuple(mask.shape)}")
    mode = LOSS_TYPES[loss_type]
    valid = mask != 0
    accumulation = gradient_accumulation_steps if training else 1
    if loss_type in _GLOBAL:
        if num_items_in_batch is None:
            raise ValueError(f"loss_type {loss_type!r} is normalised by num_items_in_batch, the generation batch's "
                             "token count on all processes (TRL's input of that name): pass it")
        total = torch.as_tensor(num_items_in_batch, dtype=torch.float32, device=mask.device).clamp(min=1.0)
        normaliser = total / num_processes
        if training:
            k = gradient_accumulation_steps if steps_per_generation is None else steps_per_generation
            normaliser = normaliser * gradient_accumulation_steps / k
        return mode, None, valid.sum().to(torch.float32) / normaliser
    if loss_type == "bnpo":
        return mode, None, torch.tensor(1.0 / accumulation, dtype=torch.float32, device=mask.device)
    horizon = None
    if loss_type == "dr_grpo":
        if max_completion_length is None:
            raise ValueError("loss_type 'dr_grpo' divides by max_completion_length: pass it")
        horizon = int(max_completion_length)
    rows_with_tokens = valid.any(dim=-1).sum().to(torch.float32)
    return mode, horizon, rows_with_tokens / (mask.shape[0] * accumulation)


def trl_aggregate(values: torch.Tensor, mask: torch.Tensor, loss_type: str = "dapo", **normalisation: Any
                  ) -> torch.Tensor:
    """TRL 1.16's reduction of per-token values ``[B, T]`` (a per-token loss, TRL's KL term) for
    ``loss_type``; ``normalisation``: the keywords of :func:`trl_normalisation`."""
    mode, horizon, factor = trl_normalisation(loss_type, mask, **normalisation)
    out = aggregate(values, mask, mode, horizon=horizon)
    return out * factor.to(device=out.device, dtype=out.dtype)


def trl_policy_loss(
    objective: str | Objective, logp: torch.Tensor, logp_behavior: torch.Tensor, advantage: torch.Tensor,
    mask: torch.Tensor, *, loss_type: str = "dapo", logp_old: torch.Tensor | None = None,
    metrics: bool | str = "full", **normalisation: Any,
) -> tuple[torch.Tensor, dict[str, float]]:
    """The policy loss TRL 1.16's ``GRPOTrainer._compute_loss`` would return for one process's
    micro-batch, with the drpo_sim ``objective``'s surrogate in place of TRL's.

    :func:`~drpo_sim.objectives.policy_loss` over ``[B, T]`` tensors in the aggregation that
    ``loss_type`` normalises by, times the factor of :func:`trl_normalisation` (``normalisation``: its
    keywords), so that the accumulation over micro-batches and the average over processes give TRL's
    gradient. The metrics are ``policy_loss``'s, for this micro-batch, in that aggregation.
    """
    mode, horizon, factor = trl_normalisation(loss_type, mask, **normalisation)
    loss, stats = policy_loss(objective, logp, logp_behavior, advantage, mask, agg_mode=mode, horizon=horizon,
                              metrics=metrics, logp_old=logp_old)
    return loss * factor.to(device=loss.device, dtype=loss.dtype), stats


_MULTIMODAL = ("pixel_values", "image_grid_thw", "num_images", "pixel_attention_mask", "spatial_shapes", "num_tiles",
               "image_sizes", "token_type_ids", "mm_token_type_ids", "image_position_ids")
_ROW, _REWARD, _ROUND = "drpo_sim_row", "drpo_sim_reward", "drpo_sim_round"  # per-row inputs the dump reads


class DrpoSimLossMixin:
    """TRL's ``GRPOTrainer`` with a drpo_sim objective's policy loss: put it before ``GRPOTrainer`` (or a
    subclass of it) in the bases, or use :class:`DrpoSimGRPOTrainer`.

    Keywords, besides ``GRPOTrainer``'s:

    * ``objective``: a name of :func:`drpo_sim.objectives.available` or an
      :class:`~drpo_sim.objectives.Objective` (default ``"drpo"``);
    * ``objective_params``: its parameters (``{"delta": 12.5}``), and ``correction``: a correction of
      :func:`drpo_sim.objectives.corrections` (its parameters among ``objective_params``), as in
      :func:`drpo_sim.objectives.get`;
    * ``token_log_dir``: where to write the per-token dump (the module docstring), or ``None``.

    ``args.loss_type`` chooses TRL's normalisation only (:data:`LOSS_TYPES`). See the module docstring
    for ``mu``, ``pi_old`` and what is refused.
    """

    def __init__(self, *args: Any, objective: str | Objective = "drpo",
                 objective_params: Mapping[str, Any] | None = None, correction: str | None = None,
                 token_log_dir: str | Path | None = None, **kwargs: Any) -> None:
        if isinstance(objective, Objective):
            if objective_params or correction is not None:
                raise ValueError("pass objective_params and correction with an objective's name, not an Objective")
            self.drpo_objective = objective
        else:
            self.drpo_objective = objectives.get(objective, correction=correction, **dict(objective_params or {}))
        self.token_log_dir = None if token_log_dir is None else Path(token_log_dir)
        self._drpo_round, self._drpo_round_start, self._drpo_rewards = 0, 0, None
        self._drpo_pending: tuple[tuple[int, int], list[TokenBatch]] | None = None
        self.mu_source: str | None = None  # what mu was at the last micro-batch (module docstring)
        super().__init__(*args, **kwargs)
        self._check_drpo_config()

    # configuration -------------------------------------------------------------------------------
    @property
    def recomputes_old(self) -> bool:
        """Whether TRL recomputes ``old_per_token_logps`` in this configuration (module docstring)."""
        generate_every = self.args.steps_per_generation * self.num_iterations
        return (self.args.gradient_accumulation_steps % generate_every != 0
                or bool(self.use_vllm and self.vllm_importance_sampling_correction))

    def _check_drpo_config(self) -> None:
        obj, a = self.drpo_objective, self.args
        name = f"drpo_sim objective {obj}"
        if a.loss_type not in LOSS_TYPES:
            raise ValueError(f"{name}: TRL loss_type {a.loss_type!r} has no known normalisation; use one of "
                             f"{', '.join(LOSS_TYPES)}")
        refused = {
            "importance_sampling_level='sequence'": (a.importance_sampling_level != "token",
                                                     "the objective defines the ratio: choose 'gspo' for GSPO"),
            f"off_policy_mask_threshold={a.off_policy_mask_threshold}": (a.off_policy_mask_threshold is not None,
                                                                          "the objective's own mask takes its place"),
            f"top_entropy_quantile={a.top_entropy_quantile}": (a.top_entropy_quantile < 1.0, "set it to 1.0"),
            "the entropy bonus (entropy_coef, use_adaptive_entropy)": (self._entropy_bonus_enabled,
                                                                       "set entropy_coef=0"),
        }
        for what, (bad, advice) in refused.items():
            if bad:
                raise ValueError(f"{name}: {what} is not supported with a drpo_sim objective; {advice}")
        if obj.uses_batch_statistic:
            raise ValueError(f"{name} takes a statistic of the whole batch, which TRL's padding would enter: "
                             "choose parameters that make it elementwise")
        other = [c for c in obj.required_columns if c != "logp_old"]
        if other:
            raise ValueError(f"{name} needs {', '.join(other)}, which TRL does not compute")
        if obj.needs_old and not self.recomputes_old:
            raise ValueError(
                f"{name} reads pi_old (logp_old), the trainer's log-probs of the rollout recomputed before the "
                "update, and TRL does not recompute them here: it does only when the weights can change between "
                "rollout and update (gradient_accumulation_steps not a multiple of steps_per_generation * "
                "num_iterations) or with use_vllm and vllm_importance_sampling_correction. Set num_iterations > 1, "
                "or use vLLM with that correction, or choose an objective that does not read pi_old")

    # the loss --------------------------------------------------------------------------------------
    def _behavior_logps(self, inputs: Mapping[str, Any], logp: torch.Tensor,
                        old: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``mu`` and, when it comes from the engine, where the engine gave none (NaN) to replace."""
        anchor = old if old is not None else logp.detach()
        engine = inputs.get("sampling_per_token_logps")
        if engine is not None:
            self.mu_source = "sampling_per_token_logps"
            unscored = torch.isnan(engine)
            return torch.where(unscored, anchor, engine), unscored
        source = "old_per_token_logps" if old is not None else "current log-probs, detached"
        if self.mu_source != source:
            self.mu_source = source
            head = ("drpo_sim: TRL holds no inference-engine log-probs in this run (they come only from vLLM or a "
                    "rollout_func returning logprobs, not from model.generate), so mu (logp_behavior) is ")
            if old is not None:
                tail = ("TRL's old_per_token_logps, the trainer's log-probs of the rollout recomputed before the "
                        "update: the objective sees the policy's drift since the rollout, no training-inference "
                        "mismatch")
            else:
                tail = ("the current log-probs, detached: TRL does not recompute old_per_token_logps here, as the "
                        "weights have not changed since the rollout, so pi/mu = 1 on every token and the objective "
                        "is on-policy policy gradient")
            warnings.warn(head + tail, MuFallbackWarning, stacklevel=3)
        return anchor, None

    def _compute_loss(self, model: Any, inputs: dict[str, Any]) -> torch.Tensor:
        prompt_ids, completion_ids = inputs["prompt_ids"], inputs["completion_ids"]
        completion_mask = inputs["completion_mask"]
        input_ids = torch.cat([prompt_ids, completion_ids], dim=1)
        attention_mask = torch.cat([inputs["prompt_mask"], completion_mask], dim=1)
        mask = completion_mask if "tool_mask" not in inputs else completion_mask * inputs["tool_mask"]
        logp, entropies, aux_loss = self._get_per_token_logps_and_entropies(
            model, input_ids, attention_mask, completion_ids.size(1), compute_entropy=True,
            compute_aux_loss=self.aux_loss_enabled, **{k: inputs.get(k) for k in _MULTIMODAL})
        old = inputs.get("old_per_token_logps")
        mu, unscored = self._behavior_logps(inputs, logp, old)
        if self.drpo_objective.needs_old and old is None:  # the configuration was checked: a subclass's inputs
            raise ValueError(f"drpo_sim objective {self.drpo_objective} reads pi_old, and this batch has no "
                             "old_per_token_logps")
        training = self.model.training
        mode = "train" if training else "eval"
        norm = dict(max_completion_length=self.max_completion_length,
                    num_items_in_batch=inputs.get("num_items_in_batch"),
                    num_processes=self.accelerator.num_processes,
                    gradient_accumulation_steps=self.current_gradient_accumulation_steps if training else 1,
                    steps_per_generation=self.args.steps_per_generation, training=training)
        advantages = inputs["advantages"]
        loss, stats = trl_policy_loss(self.drpo_objective, logp, mu, advantages, mask, loss_type=self.loss_type,
                                      logp_old=old if self.drpo_objective.needs_old else None, **norm)
        if self.beta != 0.0:
            ref = inputs["ref_per_token_logps"]
            kl = torch.exp(ref - logp) - (ref - logp) - 1
            if self.args.use_bias_correction_kl:
                kl = kl * torch.exp(logp - (logp.detach() if old is None else old))
            loss = loss + self.beta * trl_aggregate(kl, mask, self.loss_type, **norm)
            self._metrics[mode]["kl"].append(self._global_masked_mean(kl, mask))
        if self.aux_loss_enabled:
            loss = loss + self.router_aux_loss_coef * aux_loss / (norm["gradient_accumulation_steps"])
            self._metrics[mode]["aux_loss"].append(self.accelerator.gather_for_metrics(aux_loss).mean().item())
        self._metrics[mode]["entropy"].append(self._global_masked_mean(entropies, mask))
        if unscored is not None:
            stats["actor/mu_unscored_frac"] = float((unscored & (mask != 0)).sum()) / max(float(mask.sum()), 1.0)
        self._log_drpo_metrics(mode, stats)
        if training and self.token_log_dir is not None:
            self._dump_tokens(inputs, logp, mu, old, advantages, mask)
        return loss

    # metrics ----------------------------------------------------------------------------------------
    def _global_masked_mean(self, x: torch.Tensor, mask: torch.Tensor) -> float:
        """The mean of ``x`` over the mask's tokens on all processes (TRL's reduction of ``entropy``)."""
        m = mask.to(x.dtype)
        totals = self.accelerator.reduce(torch.stack([(x.detach() * m).sum(), m.sum()]), reduction="sum")
        return (totals[0] / totals[1].clamp(min=1.0)).item()

    def _log_drpo_metrics(self, mode: str, stats: Mapping[str, float]) -> None:
        """``policy_loss``'s metrics under ``drpo_sim/``, reduced across processes: counts summed, maxima
        and minima taken, the rest averaged weighted by each process's valid tokens."""
        keys = [k.removeprefix("actor/") for k in stats]
        local = torch.tensor([list(stats.values())], dtype=torch.float32, device=self.accelerator.device)
        every = self.accelerator.gather(local).cpu()  # [processes, metrics]
        n = every[:, keys.index("valid_tokens")] if "valid_tokens" in keys else torch.ones(every.shape[0])
        for j, key in enumerate(keys):
            col = every[:, j]
            seen = ~torch.isnan(col)
            if not bool(seen.any()):
                value = math.nan
            elif key in _SUMMED:
                value = float(col.sum())
            elif key in _MAXED:
                value = float(col[seen].max())
            elif key in _MINNED:
                value = float(col[seen].min())
            elif key == "pg_loss":
                value = float(col[seen].mean())
            else:
                w = n[seen]
                value = float((col[seen] * w).sum() / w.sum()) if float(w.sum()) > 0 else math.nan
            self._metrics[mode][f"drpo_sim/{key}"].append(value)

    # the per-token dump --------------------------------------------------------------------------------
    def _calculate_rewards(self, inputs, prompts, completions, completion_ids_list):
        rewards = super()._calculate_rewards(inputs, prompts, completions, completion_ids_list)
        self._drpo_rewards = rewards  # all processes' rows, one column per reward function
        return rewards

    def _generate_and_score_completions(self, inputs):
        out = super()._generate_and_score_completions(inputs)
        if self.model.training and self.token_log_dir is not None:
            b = out["completion_ids"].size(0)
            first = self.accelerator.process_index * b
            device = out["completion_ids"].device
            # the round's number: the micro-batch it starts at, counted over the run (a resumed run goes on)
            accumulation = self.args.gradient_accumulation_steps
            self._drpo_round = self.state.global_step * accumulation + self._step % accumulation
            self._drpo_round_start = self.state.global_step
            out[_ROW] = torch.arange(first, first + b, device=device)
            out[_ROUND] = torch.full((b,), self._drpo_round, device=device)
            per_func = self._drpo_rewards
            if per_func is not None and per_func.shape[0] >= first + b:
                weights = self.reward_weights.to(per_func.device)
                reward = (per_func * weights).nansum(dim=1)
                reward[torch.isnan(per_func).all(dim=1)] = torch.nan  # TRL's unscorable completions
                out[_REWARD] = reward[first:first + b].to(device)
        return out

    def _dump_tokens(self, inputs: Mapping[str, Any], logp: torch.Tensor, mu: torch.Tensor,
                     old: torch.Tensor | None, advantages: torch.Tensor, mask: torch.Tensor) -> None:
        if _ROW not in inputs:
            return
        valid = mask != 0
        rows, position = valid.nonzero(as_tuple=True)
        adv = advantages if advantages.dim() == 2 else advantages.unsqueeze(1).expand_as(logp)
        step = int(inputs[_ROUND][0])
        update = int(self.state.global_step - self._drpo_round_start)
        sample = inputs[_ROW][rows]

        def host(x: torch.Tensor) -> Any:
            return x.detach().cpu().numpy()

        columns = dict(
            logp=host(logp[valid]), logp_behavior=host(mu[valid]), advantage=host(adv[valid]),
            mask=host(torch.ones_like(rows, dtype=torch.bool)), sample_id=host(sample),
            group_id=host(torch.div(sample, self.num_generations, rounding_mode="floor")),
            position=host(position), token_id=host(inputs["completion_ids"][valid]),
            step=host(torch.full_like(rows, step)), update=host(torch.full_like(rows, update)),
        )
        if old is not None:
            columns["logp_old"] = host(old[valid])
        if _REWARD in inputs:
            columns["reward"] = host(inputs[_REWARD][rows])
        key = (step, update)
        if self._drpo_pending is not None and self._drpo_pending[0] != key:
            self.flush_token_log()
        if self._drpo_pending is None:
            self._drpo_pending = (key, [])
        self._drpo_pending[1].append(TokenBatch.from_arrays(**columns))

    def flush_token_log(self) -> Path | None:
        """Write the tokens held for the current optimizer step (done when the next one starts and at the
        end of ``train()``); the file written, or ``None``."""
        pending, self._drpo_pending = self._drpo_pending, None
        if pending is None or self.token_log_dir is None:
            return None
        (step, update), batches = pending
        path = self.token_log_dir / f"step{step:05d}_update{update:03d}_rank{self.accelerator.process_index}.parquet"
        self.token_log_dir.mkdir(parents=True, exist_ok=True)
        meta = {"source": "drpo_sim.integrations.trl", "trl": trl.__version__, "objective": self.drpo_objective.name,
                "params": {k: v for k, v in self.drpo_objective.params.items() if _jsonable(v)},
                "loss_type": self.loss_type, "num_generations": self.num_generations,
                "num_processes": self.accelerator.num_processes, "rank": self.accelerator.process_index,
                "mu": self.mu_source}
        return write_token_log(path, batches, metadata=meta)

    def train(self, *args: Any, **kwargs: Any) -> Any:
        out = super().train(*args, **kwargs)
        self.flush_token_log()
        return out


def _jsonable(v: Any) -> bool:
    return v is None or isinstance(v, (bool, int, float, str))


class DrpoSimGRPOTrainer(DrpoSimLossMixin, GRPOTrainer):
    """TRL's ``GRPOTrainer`` with a drpo_sim objective's policy loss (:class:`DrpoSimLossMixin`)."""
