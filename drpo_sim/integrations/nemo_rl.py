"""A drpo_sim objective as a NeMo RL loss function: :class:`DrpoSimLossFn`, in place of ``ClippedPGLossFn``.

Usage (``docs/integrations.md``)::

    from drpo_sim.integrations.nemo_rl import DrpoSimLossFn
    loss_fn = DrpoSimLossFn("drpo", {"delta": 12.5})                  # token-level, like token_level_loss: true
    loss_fn = DrpoSimLossFn.from_nemo_config(master_config.loss_fn)   # or from NeMo RL's loss_fn section
    grpo_train(policy, ..., loss_fn, ...)                             # where setup()'s ClippedPGLossFn went

NeMo RL's loss functions are pluggable: the policy workers call whatever object ``grpo_train`` hands
them through the ``LossFunction`` protocol. This module implements that protocol duck-typed and
imports with torch alone; NeMo RL is never needed to import it, nor to run its tests. **The PyPI
package ``nemo-rl`` is a placeholder** (version 0.0.0: ``nemo_rl/__init__.py`` and
``package_info.py``, no ``nemo_rl.algorithms``), so drpo_sim declares no ``nemo_rl`` extra and the
tests hold this module against NeMo RL's published interface instead, read in the source of
``github.com/NVIDIA-NeMo/RL`` at commit :data:`NEMO_RL_COMMIT` (after v0.7.0; the interface below
has been stable since v0.6.0). This is our code, written from that reading:

* **The protocol** (``nemo_rl/algorithms/loss/interfaces.py``): attributes ``loss_type``
  (``LossType.TOKEN_LEVEL`` or ``SEQUENCE_LEVEL``) and ``input_type``; here ``LossInputType.LOGPROB``,
  so the worker's ``prepare_loss_input`` (``nemo_rl/algorithms/loss/utils.py``) turns the model's
  ``next_token_logits`` ``[B, T, V]`` into the sampled tokens' log-probs ``[B, T - 1]``
  (``get_next_token_logprobs_from_logits`` in ``nemo_rl/distributed/model_utils.py``: the logits of
  position ``t`` score ``input_ids[:, t + 1]``, over the vocabulary-parallel shards with Megatron,
  over a DTensor with ``seq_index``, with top-k/top-p filtering at training time) and calls
  ``loss_fn(data=..., global_valid_seqs=..., global_valid_toks=..., next_token_logprobs=...)``;
  sequence packing calls it once per unpadded sequence (``SequencePackingLossWrapper`` in
  ``nemo_rl/algorithms/loss/wrapper.py``) and sums the losses and metrics. It returns
  ``(loss, metrics)``. NeMo RL before v0.6.0 passed the logits themselves: not supported (a 3-D
  tensor is refused with that message).
* **The data** (``ClippedPGLossDataDict`` in ``nemo_rl/algorithms/loss/loss_functions.py``; the
  batch ``grpo_train`` builds in ``nemo_rl/algorithms/grpo.py``): ``[B, T]`` tensors over the whole
  sequence, prompt included, whose position ``t`` describes token ``t``, so the loss reads
  ``[:, 1:]`` of each to align with the log-probs: ``advantages``, ``token_mask`` (1 on the
  generated tokens), ``prev_logprobs`` (the policy's log-probs of the rollout recomputed by
  ``policy.get_logprobs`` before the update: drpo_sim's ``pi_old``, ``logp_old``),
  ``generation_logprobs`` (the inference engine's, vLLM's: drpo_sim's ``mu``, ``logp_behavior``),
  ``reference_policy_logprobs`` (for the KL penalty); and ``sample_mask`` ``[B]`` (the sequence's
  ``loss_multiplier``). The tokens in the loss are ``token_mask[:, 1:] * sample_mask[:, None]``
  (both read as 0/1, as NeMo RL fills them).
* **mu and pi_old.** ``mu`` is ``generation_logprobs`` (``mu="generation_logprobs"``, the default),
  or ``prev_logprobs`` with ``mu="prev_logprobs"``. A batch without ``generation_logprobs`` falls
  back to ``prev_logprobs`` with a :class:`MuFallbackWarning` saying so (once per change); then the
  objective sees the policy's drift since the rollout and no training-inference mismatch. An
  objective that reads ``pi_old`` (:attr:`~drpo_sim.objectives.Objective.needs_old`: ``minirl``,
  ``decoupled_ppo``, the ``*_recompute`` modes, any objective with a ``correction``) gets
  ``prev_logprobs``; NeMo RL fills it with zeros when ``loss_fn.force_on_policy_ratio`` is set
  (``_resolve_logprob_skip_flags`` in ``grpo.py``), which :meth:`DrpoSimLossFn.from_nemo_config`
  refuses.
* **Normalisation.** The workers count the tokens and sequences in the loss over the whole global
  batch on every data-parallel rank (``process_global_batch`` in ``nemo_rl/models/automodel/data.py``
  and ``nemo_rl/models/megatron/data.py``: ``global_valid_toks`` = the sum of
  ``token_mask[:, 1:] * sample_mask``, ``global_valid_seqs`` = the sum of ``sample_mask``, all-reduced),
  each micro-batch's loss is divided by those global counts (``masked_mean(...,
  global_normalization_factor=...)`` in ``ClippedPGLossFn.__call__``), the micro-batches'
  gradients accumulate, and the ranks' gradients are **summed**: the DTensor workers multiply the
  loss by ``dp_size * cp_size`` before ``backward()`` because FSDP averages over data-parallel ranks
  (``automodel_forward_backward`` in ``nemo_rl/models/automodel/train.py``;
  ``nemo_rl/models/policy/workers/dtensor_policy_worker.py``), and the Megatron worker undoes
  Megatron's averaging over micro-batches (``LossPostProcessor`` in ``nemo_rl/models/megatron/train.py``).
  So the gradient of a step is the gradient of the whole global batch's loss. Here the loss of one
  micro-batch of ``n`` tokens in ``S`` sequences (those with a token in the loss) is
  :func:`~drpo_sim.objectives.policy_loss` in ``agg_mode`` times the factor below, whose sum over
  the micro-batches and ranks is ``policy_loss`` over the global batch:

  ============================ ================ ============================================ ==========================
  NeMo RL ``loss_fn``          ``loss_type``    NeMo RL's loss of per-token ``l``, mask ``m`` ``agg_mode`` and factor
  ============================ ================ ============================================ ==========================
  ``token_level_loss: true``   ``TOKEN_LEVEL``  ``sum m l / global_valid_toks``              ``token-mean``,
                                                                                             ``n / global_valid_toks``
  ``token_level_loss: false``  ``SEQUENCE_``    ``sum_i s_i mean_t(l) / global_valid_seqs``  ``seq-mean-token-mean``,
  (GSPO's setting)             ``LEVEL``        (``mean_t`` over ``token_mask``)             ``S / global_valid_seqs``
  (drpo_sim only)              ``SEQUENCE_``    ``sum_i sum_t m l / global_valid_seqs``      ``seq-mean-token-sum``,
                               ``LEVEL``                                                     ``S / global_valid_seqs``
  (drpo_sim only)              ``SEQUENCE_``    ``sum_i sum_t m l / (H global_valid_seqs)``  ``seq-mean-token-sum-norm``
                               ``LEVEL``                                                     (``horizon=H``, required),
                                                                                             ``S / global_valid_seqs``
  ============================ ================ ============================================ ==========================

  The last two are not NeMo RL's but normalise the same way. One difference in the sequence modes:
  NeMo RL's ``global_valid_seqs`` counts a kept sequence with no token in the loss (an empty
  response), which drpo_sim's sequence means leave out; then the sum over ranks is
  ``policy_loss`` times (the sequences with a token) / ``global_valid_seqs``, as NeMo RL's own loss
  is. ``global_valid_*`` of ``None`` normalise by the micro-batch's own counts, as ``masked_mean``
  does; split-API trainers pass 1 and rescale afterwards (``MetricNormalizer``), which the
  factors above honour. Calling ``policy_loss`` on each micro-batch instead normalises each on its
  own: with two ranks of 248 and 335 tokens, the gradients come out ``583 / (2 * 248) = 1.18`` and
  ``583 / (2 * 335) = 0.87`` times the right ones (``tests/integrations/test_nemo_rl.py``).
* **KL penalty** (``reference_policy_kl_penalty``, ``reference_policy_kl_type``,
  ``kl_input_clamp_value``, ``kl_output_clamp_value``, as NeMo RL names them and with their
  meaning, ``calculate_kl`` in ``nemo_rl/algorithms/utils.py``): ``beta`` times the k1, k2 or k3
  estimate of ``KL(pi || pi_ref)`` at each token, its log-ratio clamped before and the estimate
  after, times the weight ``pi / sg(pi)`` (value 1, the score-function gradient; detached where the
  input clamp acts), aggregated as the policy loss. It reads ``reference_policy_logprobs``, and
  ``curr_logprobs_unfiltered`` where ``prepare_loss_input`` provides it (training-time top-k/top-p
  filtering). ``DrpoSimLossFn`` exposes ``reference_policy_kl_penalty`` as ``ClippedPGLossFn`` does,
  which is what ``prepare_loss_input`` reads.
* **Metrics**, Python floats computed on detached tensors, never in the autograd graph, each
  pre-normalised so that the sum over micro-batches and ranks is the global value (NeMo RL sums
  them: ``loss_metrics[k] /= num_global_batches`` in the workers, ``np.sum`` in ``grpo_train``), the
  convention of ``ClippedPGLossFn``: its keys ``loss``, ``probs_ratio`` (here the objective's ratio
  ``pi / mu``), ``probs_ratio_min`` and ``probs_ratio_max`` (this micro-batch's extrema, combined
  by min and max downstream; ``inf`` / ``-inf`` with no token), ``kl_penalty`` (the KL before
  ``beta``), ``token_mult_prob_error`` (read by ``grpo_train``), ``gen_kl_error``,
  ``policy_kl_error``, ``js_divergence_error``, ``sampling_importance_ratio`` (``pi_old / mu``),
  ``approx_entropy`` and ``num_valid_samples`` (read by the workers); and
  :func:`~drpo_sim.objectives.policy_loss`'s under ``drpo_sim/`` (``metrics="full"``):
  ``drpo_sim/pg_loss`` (the policy term of ``loss``), ``drpo_sim/valid_tokens`` (a count), the
  token means ``drpo_sim/{masked,attenuated,corrective,amplified}_frac``,
  ``drpo_sim/weight_mean``, ``drpo_sim/ratio_mean``, ``drpo_sim/abs_shift_mean``. Its maxima and
  minima are left out: NeMo RL combines by min/max only its four ``probs_ratio*`` extrema and sums
  every other key. :attr:`DrpoSimLossFn.metric_normalizations` gives each key's denominator.
* **Not reproduced:** ``ClippedPGLossFn``'s own surrogate and its options (``ratio_clip_*``,
  ``disable_ppo_ratio``, ``use_cispo``, ``sequence_level_importance_ratios``,
  ``use_importance_sampling_correction`` and the truncated importance sampling types,
  ``force_on_policy_ratio``, ``use_on_policy_kl_approximation``, ``positive_example_nll_weight``):
  the objective takes their place (``gspo`` for GSPO, ``cispo``, ``correction="tis"`` or
  ``"icepop"`` for a correction of the engine's gap). Objectives that read per-token inputs NeMo RL
  does not compute (the Top-K divergences ``topk_tv``, ``topk_kl``) or a statistic of the whole
  batch are refused at construction.

The loss object travels to NeMo RL's Ray workers by pickling: drpo_sim must be installed in the
workers' Python environments as well as the driver's.
"""

from __future__ import annotations

import enum
import math
import warnings
from collections.abc import Mapping
from typing import Any

import torch

from drpo_sim import objectives
from drpo_sim.objectives import AGG_MODES, LOG_RATIO_MAX, Objective, aggregate, policy_loss

try:  # NeMo RL's own enums when it is installed, so that its workers' comparisons (``is``, ``==``) hold
    from nemo_rl.algorithms.loss.interfaces import LossInputType, LossType

    HAVE_NEMO_RL = True
except ImportError:  # not installed, or the PyPI placeholder (no nemo_rl.algorithms)
    HAVE_NEMO_RL = False

    class LossType(enum.Enum):  # type: ignore[no-redef]
        """NeMo RL's ``LossType`` (``nemo_rl/algorithms/loss/interfaces.py``), the same values."""

        TOKEN_LEVEL = "token_level"
        SEQUENCE_LEVEL = "sequence_level"

    class LossInputType(enum.Enum):  # type: ignore[no-redef]
        """NeMo RL's ``LossInputType`` (``nemo_rl/algorithms/loss/interfaces.py``), the same values."""

        LOGIT = "logit"
        LOGPROB = "logprob"
        DISTILLATION = "distillation"
        DISTILLATION_CROSS_TOKENIZER = "distillation_cross_tokenizer"
        DRAFT = "draft"

try:  # added to NeMo RL after its other enums (split-API trainers)
    from nemo_rl.algorithms.loss.interfaces import MetricNormalizer
except ImportError:

    class MetricNormalizer(enum.Enum):  # type: ignore[no-redef]
        """NeMo RL's ``MetricNormalizer`` (``nemo_rl/algorithms/loss/interfaces.py``), the same values:
        the global count a metric was divided by."""

        TOKENS = "tokens"
        SEQUENCES = "sequences"
        NONE = "none"


__all__ = [
    "HAVE_NEMO_RL",
    "KL_TYPES",
    "LossInputType",
    "LossType",
    "MetricNormalizer",
    "MissingField",
    "MU_SOURCES",
    "MuFallbackWarning",
    "NEMO_RL_COMMIT",
    "DrpoSimLossFn",
]

NEMO_RL_COMMIT = "7ea279abfbeb698b092856d0dab61e7cf39bc909"
"""The commit of ``github.com/NVIDIA-NeMo/RL`` whose interface this module follows (2026-08-22, after
v0.7.0; the module docstring lists the files read)."""

MU_SOURCES = ("generation_logprobs", "prev_logprobs")
"""The data fields ``mu`` (``logp_behavior``) can be read from: the engine's log-probs or the trainer's."""
KL_TYPES = ("k1", "k2", "k3")
"""NeMo RL's estimates of the KL penalty (Schulman's k1, k2, k3)."""

# the NeMo RL fields, as the errors describe them
_FIELDS = {
    "advantages": "the per-token advantages, [B, T]",
    "token_mask": "1 on the tokens in the loss, [B, T]",
    "sample_mask": "1 on the sequences in the loss, [B]",
    "prev_logprobs": "the policy's log-probs of the rollout recomputed before the update (pi_old), [B, T]",
    "generation_logprobs": "the inference engine's log-probs of the sampled tokens (mu), [B, T]",
    "reference_policy_logprobs": "the reference policy's log-probs, for the KL penalty, [B, T]",
}
# policy_loss's metrics (``actor/`` keys) passed on under ``drpo_sim/``: token means, scaled by the
# micro-batch's share of the global tokens; the rest of policy_loss's keys are extrema, left out
_TOKEN_MEANS = ("masked_frac", "attenuated_frac", "corrective_frac", "amplified_frac", "weight_mean", "ratio_mean",
                "abs_shift_mean")
# ClippedPGLossFn's options a drpo_sim objective replaces, with their defaults (ClippedPGLossConfig) and what
# to use instead: from_nemo_config refuses any other value
_REPLACED = {
    "disable_ppo_ratio": (False, "choose the pg_is objective"),
    "use_cispo": (False, "choose the cispo objective"),
    "sequence_level_importance_ratios": (False, "choose the gspo objective (and token_level_loss: false)"),
    "ratio_clip_c": (None, "use the objective's dual_clip (ppo, grpo)"),
    "use_importance_sampling_correction": (False, "use drpo_sim.correction (is, tis, icepop, seq_tis, ...)"),
    "truncated_importance_sampling_type": (None, "use drpo_sim.correction (tis, icepop, seq_mis, ...)"),
    "force_on_policy_ratio": (False, "NeMo RL then fills prev_logprobs with zeros; leave it false"),
    "use_on_policy_kl_approximation": (False, "not supported by DrpoSimLossFn's KL penalty"),
    "positive_example_nll_weight": (0.0, "not supported by DrpoSimLossFn"),
}
_CLIP_DEFAULTS = {"ratio_clip_min": 0.2, "ratio_clip_max": 0.2}


class MuFallbackWarning(UserWarning):
    """The batch has no ``generation_logprobs``: ``mu`` is the trainer's ``prev_logprobs``."""


class MissingField(ValueError):
    """The NeMo RL data dict lacks a field the loss needs (``field``)."""

    def __init__(self, field: str, message: str):
        super().__init__(message)
        self.field = field


def _as_dict(cfg: Any) -> dict[str, Any]:
    """A NeMo RL config section as a dict: a mapping, a pydantic model (``ClippedPGLossConfig``) or an object."""
    if cfg is None:
        return {}
    if isinstance(cfg, Mapping):
        return dict(cfg)
    if hasattr(cfg, "model_dump"):
        return dict(cfg.model_dump())
    return dict(vars(cfg))


class DrpoSimLossFn:
    """NeMo RL's ``LossFunction`` with a drpo_sim objective's policy loss (the module docstring).

    * ``objective``: a name of :func:`drpo_sim.objectives.available` or an
      :class:`~drpo_sim.objectives.Objective` (default ``"drpo"``); ``objective_params``: its
      parameters (``{"delta": 12.5}``); ``correction``: a correction of
      :func:`drpo_sim.objectives.corrections` (its parameters among ``objective_params``), as in
      :func:`drpo_sim.objectives.get`;
    * ``agg_mode``: the aggregation, ``"token-mean"`` (``LossType.TOKEN_LEVEL``, normalised by
      ``global_valid_toks``: NeMo RL's ``token_level_loss: true``, the default) or a sequence mean
      (``LossType.SEQUENCE_LEVEL``, normalised by ``global_valid_seqs``: ``"seq-mean-token-mean"`` is
      ``token_level_loss: false``); ``horizon``: the fixed length of ``"seq-mean-token-sum-norm"``
      (required with it: NeMo RL's micro-batches are padded to different lengths);
    * ``mu``: the field ``mu`` is read from (:data:`MU_SOURCES`; ``"generation_logprobs"`` falls back
      to ``prev_logprobs`` with a :class:`MuFallbackWarning` when a batch has none);
    * ``reference_policy_kl_penalty``, ``reference_policy_kl_type``, ``kl_input_clamp_value``,
      ``kl_output_clamp_value``: NeMo RL's KL penalty (off at 0, the default here);
    * ``metrics``: ``policy_loss``'s metrics under ``drpo_sim/`` (``"full"``, ``"default"`` or
      ``False``); NeMo RL's own keys are always returned;
    * ``use_fused_linear_logprobs``: set it as NeMo RL's ``setup()`` sets it for ``ClippedPGLossFn``
      (Megatron's fused linear cross-entropy hands the loss log-probs, not logits).

    ``DrpoSimLossFn(...)(next_token_logprobs, data, global_valid_seqs, global_valid_toks)`` returns
    ``(loss, metrics)``. :meth:`from_nemo_config` builds one from NeMo RL's ``loss_fn`` section.
    """

    input_type = LossInputType.LOGPROB

    def __init__(
        self, objective: str | Objective = "drpo", objective_params: Mapping[str, Any] | None = None, *,
        correction: str | None = None, agg_mode: str = "token-mean", horizon: int | None = None,
        mu: str = "generation_logprobs", reference_policy_kl_penalty: float = 0.0,
        reference_policy_kl_type: str = "k3", kl_input_clamp_value: float | None = 20.0,
        kl_output_clamp_value: float | None = 10.0, metrics: bool | str = "full",
        use_fused_linear_logprobs: bool = False,
    ):
        if isinstance(objective, Objective):
            if objective_params or correction is not None:
                raise ValueError("pass objective_params and correction with an objective's name, not an Objective")
            obj = objective
        else:
            obj = objectives.get(objective, correction=correction, **dict(objective_params or {}))
        name = f"DrpoSimLossFn: drpo_sim objective {obj}"
        other = [c for c in obj.required_columns if c != "logp_old"]
        if other:
            raise ValueError(f"{name} needs {', '.join(other)}, which NeMo RL does not compute; choose another "
                             "objective")
        if obj.uses_batch_statistic:
            raise ValueError(f"{name} takes a statistic of the whole batch, which NeMo RL hands the loss in "
                             "micro-batches: choose parameters that make it elementwise")
        if agg_mode not in AGG_MODES:
            raise ValueError(f"unknown agg_mode {agg_mode!r}; valid: {', '.join(AGG_MODES)}")
        if agg_mode == "seq-mean-token-sum-norm":
            if not (isinstance(horizon, int) and not isinstance(horizon, bool) and horizon > 0):
                raise ValueError("agg_mode 'seq-mean-token-sum-norm' needs horizon, a positive integer (e.g. "
                                 f"policy.max_total_sequence_length): NeMo RL's micro-batches differ in length; "
                                 f"got {horizon!r}")
        elif horizon is not None:
            raise ValueError(f"horizon is the fixed length of agg_mode 'seq-mean-token-sum-norm', not {agg_mode!r}")
        if mu not in MU_SOURCES:
            raise ValueError(f"mu must be one of {', '.join(MU_SOURCES)}, got {mu!r}")
        if reference_policy_kl_type not in KL_TYPES:
            raise ValueError(f"reference_policy_kl_type must be one of {', '.join(KL_TYPES)}, got "
                             f"{reference_policy_kl_type!r}")
        if not (metrics in (False, True) or metrics in ("default", "full")):
            raise ValueError(f"metrics must be one of False, True, 'default', 'full'; got {metrics!r}")
        self.objective = obj
        self.agg_mode = agg_mode
        self.horizon = horizon
        self.mu = mu
        self.reference_policy_kl_penalty = float(reference_policy_kl_penalty)
        self.reference_policy_kl_type = reference_policy_kl_type
        self.kl_input_clamp_value = kl_input_clamp_value
        self.kl_output_clamp_value = kl_output_clamp_value
        self.metrics = metrics
        self.use_fused_linear_logprobs = bool(use_fused_linear_logprobs)
        self.loss_type = LossType.TOKEN_LEVEL if agg_mode == "token-mean" else LossType.SEQUENCE_LEVEL
        self.mu_source: str | None = None  # the field mu came from at the last call
        grad = MetricNormalizer.TOKENS if self.loss_type == LossType.TOKEN_LEVEL else MetricNormalizer.SEQUENCES
        tokens, none = MetricNormalizer.TOKENS, MetricNormalizer.NONE
        #: Each metric key's global denominator (NeMo RL's ``metric_normalizations``, read by split-API trainers).
        self.metric_normalizations: dict[str, Any] = {
            "loss": grad, "kl_penalty": grad, "drpo_sim/pg_loss": grad,
            **{k: tokens for k in ("probs_ratio", "token_mult_prob_error", "gen_kl_error", "policy_kl_error",
                                   "js_divergence_error", "sampling_importance_ratio", "approx_entropy")},
            **{f"drpo_sim/{k}": tokens for k in _TOKEN_MEANS},
            **{k: none for k in ("num_valid_samples", "drpo_sim/valid_tokens", "probs_ratio_min", "probs_ratio_max")},
        }

    @classmethod
    def from_nemo_config(cls, loss_config: Any, **overrides: Any) -> DrpoSimLossFn:
        """A loss from NeMo RL's ``loss_fn`` config section (``master_config.loss_fn``, a
        ``ClippedPGLossConfig`` or a mapping), whose ``drpo_sim`` entry holds this class's keywords
        (``objective``, ``objective_params``, ``correction``, ``mu``, ``metrics``, ``agg_mode``, ``horizon``;
        ``overrides`` take precedence over it).

        Read from NeMo RL's keys: ``token_level_loss`` (``token-mean`` or ``seq-mean-token-mean``; an
        ``agg_mode`` must agree with it), the KL penalty (``reference_policy_kl_penalty``, 0 with
        ``use_kl_in_reward``, ``reference_policy_kl_type``, ``kl_input_clamp_value``,
        ``kl_output_clamp_value``). Refused, with what to use: a non-default value of an option of
        ``ClippedPGLossFn``'s surrogate that the objective replaces (``use_cispo``,
        ``sequence_level_importance_ratios``, ``use_importance_sampling_correction``,
        ``force_on_policy_ratio``, ...). ``ratio_clip_min`` / ``ratio_clip_max`` other than 0.2 give a
        warning: the objective's parameters set its clip.
        """
        cfg = _as_dict(loss_config)
        own = {**_as_dict(cfg.get("drpo_sim")), **overrides}
        for key, (default, advice) in _REPLACED.items():
            value = cfg.get(key, default)
            if value != default:
                raise ValueError(f"DrpoSimLossFn: loss_fn.{key}={value!r} belongs to ClippedPGLossFn's surrogate, "
                                 f"which the drpo_sim objective replaces: {advice}")
        clips = {k: cfg[k] for k, d in _CLIP_DEFAULTS.items() if k in cfg and cfg[k] != d}
        if clips:
            warnings.warn(f"DrpoSimLossFn: {', '.join(f'loss_fn.{k}={v}' for k, v in clips.items())} not used: the "
                          "drpo_sim objective's parameters (drpo_sim.objective_params) set its clip", stacklevel=2)
        level = cfg.get("token_level_loss", True)
        mode = own.pop("agg_mode", None)
        if mode is None:
            mode = "token-mean" if level else "seq-mean-token-mean"
        elif (mode == "token-mean") != bool(level):
            raise ValueError(f"DrpoSimLossFn: agg_mode {mode!r} disagrees with loss_fn.token_level_loss={level}")
        kl = dict(
            reference_policy_kl_penalty=0.0 if cfg.get("use_kl_in_reward") else cfg.get("reference_policy_kl_penalty",
                                                                                        0.0),
            reference_policy_kl_type=cfg.get("reference_policy_kl_type", "k3"),
            kl_input_clamp_value=cfg.get("kl_input_clamp_value", 20.0),
            kl_output_clamp_value=cfg.get("kl_output_clamp_value", 10.0),
        )
        return cls(**{**kl, "agg_mode": mode, **own})

    def __repr__(self) -> str:
        beta = self.reference_policy_kl_penalty
        kl = f", reference_policy_kl_penalty={beta}" if beta else ""
        return f"DrpoSimLossFn({self.objective}, agg_mode={self.agg_mode!r}, mu={self.mu!r}{kl})"

    # the data --------------------------------------------------------------------------------------
    def _field(self, data: Mapping[str, Any], name: str) -> torch.Tensor:
        if name not in data or data[name] is None:
            have = ", ".join(sorted(str(k) for k in data)) or "none"
            raise MissingField(name, f"{self!r}: the data has no '{name}' ({_FIELDS[name]}); its fields: {have}")
        return data[name]

    def _token_field(self, data: Mapping[str, Any], name: str, shape: tuple[int, ...]) -> torch.Tensor:
        """A ``[B, T]`` field aligned with the ``[B, T - 1]`` log-probs (``[:, 1:]``); an advantage may be ``[B]``."""
        x = self._field(data, name)
        if name == "advantages" and x.ndim == 1 and x.shape[0] == shape[0]:
            return x
        if x.ndim != 2 or (x.shape[0], x.shape[1] - 1) != shape:
            raise ValueError(f"{self!r}: '{name}' has shape {tuple(x.shape)}; with next_token_logprobs of shape "
                             f"{shape} it should be [B, T] = {(shape[0], shape[1] + 1)} (position t of the data is "
                             "token t; the log-probs start at token 1)")
        return x[:, 1:]

    def _behavior(self, data: Mapping[str, Any], shape: tuple[int, ...]) -> torch.Tensor:
        """``mu``, from ``self.mu``'s field, or ``prev_logprobs`` (with a warning) when the batch lacks
        ``generation_logprobs``."""
        source = self.mu
        if source == "generation_logprobs" and data.get(source) is None and data.get("prev_logprobs") is not None:
            source = "prev_logprobs"
            if self.mu_source != source:
                warnings.warn(
                    f"{self!r}: the batch has no generation_logprobs (the inference engine's log-probs), so mu "
                    "(logp_behavior) is prev_logprobs, the policy's log-probs of the rollout recomputed before the "
                    "update: the objective sees the policy's drift since the rollout, no training-inference mismatch",
                    MuFallbackWarning, stacklevel=3)
        self.mu_source = source
        return self._token_field(data, source, shape)

    # the loss ---------------------------------------------------------------------------------------
    def __call__(self, next_token_logprobs: torch.Tensor, data: Mapping[str, Any],
                 global_valid_seqs: torch.Tensor | float | None, global_valid_toks: torch.Tensor | float | None,
                 ) -> tuple[torch.Tensor, dict[str, float]]:
        """The loss of one micro-batch, normalised by the global counts, and its metrics (module docstring)."""
        logp = next_token_logprobs
        if logp.ndim != 2:
            raise ValueError(f"{self!r}: next_token_logprobs must be [B, T - 1], got shape {tuple(logp.shape)}; "
                             "logits are turned into log-probs by NeMo RL's prepare_loss_input (NeMo RL >= 0.6, "
                             "input_type LossInputType.LOGPROB)")
        shape = tuple(logp.shape)
        obj = self.objective
        token_mask = self._token_field(data, "token_mask", shape)
        sample_mask = self._field(data, "sample_mask")
        if tuple(sample_mask.shape) != (shape[0],):
            raise ValueError(f"{self!r}: 'sample_mask' has shape {tuple(sample_mask.shape)}, should be [B] = "
                             f"{(shape[0],)}")
        mask = (token_mask != 0) & (sample_mask != 0).unsqueeze(-1)
        advantages = self._token_field(data, "advantages", shape)
        mu = self._behavior(data, shape)
        old = self._token_field(data, "prev_logprobs", shape) if obj.needs_old else None

        pg_local, stats = policy_loss(obj, logp, mu, advantages, mask, agg_mode=self.agg_mode, horizon=self.horizon,
                                      metrics=self.metrics, logp_old=old)
        # this micro-batch's share of the global normaliser (module docstring's table)
        n_tok = mask.sum()
        n_seq = mask.any(dim=-1).sum()
        if self.loss_type == LossType.TOKEN_LEVEL:
            count, total = n_tok, global_valid_toks
        else:
            count, total = n_seq, global_valid_seqs
        factor = self._share(count, total, pg_local)
        pg = pg_local * factor
        loss = pg
        kl = None
        if self.reference_policy_kl_penalty != 0.0:
            kl = aggregate(self._kl(data, logp, mask, shape), mask, self.agg_mode, horizon=self.horizon) * factor
            loss = pg + self.reference_policy_kl_penalty * kl
        return loss, self._metrics(data, logp, mu, mask, shape, sample_mask, loss, pg, kl, stats,
                                   n_tok, global_valid_toks)

    @staticmethod
    def _share(count: torch.Tensor, total: torch.Tensor | float | None, like: torch.Tensor) -> torch.Tensor:
        """``count / total`` (1 when ``total`` is ``None``: the micro-batch's own count), a constant."""
        if total is None:
            return torch.ones((), dtype=like.dtype, device=like.device)
        total = torch.as_tensor(total, device=like.device).to(like.dtype)
        return count.to(like.dtype) / total.clamp(min=1.0)

    def _kl(self, data: Mapping[str, Any], logp: torch.Tensor, mask: torch.Tensor, shape: tuple[int, ...]
            ) -> torch.Tensor:
        """NeMo RL's per-token KL penalty term (before ``beta``), zero on the padding."""
        ref = self._token_field(data, "reference_policy_logprobs", shape)
        current = data.get("curr_logprobs_unfiltered")
        current = logp if current is None else current
        # the padding may hold anything: replaced, so that it reaches neither the value nor the gradient
        current = torch.where(mask, current, torch.zeros_like(current))
        ref = torch.where(mask, ref.to(current.dtype), torch.zeros_like(current))
        log_ratio = ref - current  # log(pi_ref / pi)
        weight = torch.nan_to_num(torch.exp(current - current.detach()), nan=0.0, posinf=0.0, neginf=0.0)
        if self.kl_input_clamp_value is not None:
            c = float(self.kl_input_clamp_value)
            clamped = log_ratio.clamp(min=-c, max=c)
            weight = torch.where(log_ratio == clamped, weight, weight.detach())
            log_ratio = clamped
        kl = weight * _kl_estimate(log_ratio, self.reference_policy_kl_type)
        if self.kl_output_clamp_value is not None:
            c = float(self.kl_output_clamp_value)
            kl = kl.clamp(min=-c, max=c)
        return kl

    # the metrics ------------------------------------------------------------------------------------
    def _metrics(self, data: Mapping[str, Any], logp: torch.Tensor, mu: torch.Tensor, mask: torch.Tensor,
                 shape: tuple[int, ...], sample_mask: torch.Tensor, loss: torch.Tensor, pg: torch.Tensor,
                 kl: torch.Tensor | None, stats: Mapping[str, float], n_tok: torch.Tensor,
                 global_valid_toks: torch.Tensor | float | None) -> dict[str, float]:
        """NeMo RL's metric keys and policy_loss's under ``drpo_sim/``, pre-normalised for summing; one
        read-back from the device."""
        with torch.no_grad():
            dtype = torch.float32 if logp.dtype in (torch.float16, torch.bfloat16) else logp.dtype
            m = mask.to(dtype)

            def valid(x: torch.Tensor) -> torch.Tensor:
                return torch.where(mask, x.detach().to(dtype), torch.zeros((), dtype=dtype, device=x.device))

            lp = valid(logp)
            # the engine's and the trainer's log-probs of the rollout, each the other when absent (mu's source)
            gen = (valid(self._token_field(data, "generation_logprobs", shape))
                   if data.get("generation_logprobs") is not None else valid(mu))
            prev = (valid(self._token_field(data, "prev_logprobs", shape))
                    if data.get("prev_logprobs") is not None else gen)
            log_r = (lp - valid(mu)).clamp(max=LOG_RATIO_MAX)  # the objective's ratio pi/mu, capped as drpo_sim caps it
            r = torch.exp(log_r)
            kl_type = self.reference_policy_kl_type
            log_mix = torch.logaddexp(prev, gen) - math.log(2.0)  # log((pi_old + mu) / 2)
            # NeMo RL's Jensen-Shannon term: (f(log pi_old - log m) + f(log mu - log m)) / 2, f(x) = e^x - 1 - x
            js = 0.5 * _kl_estimate(prev - log_mix, "k3") + 0.5 * _kl_estimate(gen - log_mix, "k3")
            token_sums = {
                "probs_ratio": r,
                "token_mult_prob_error": torch.exp((gen - prev).abs()),
                "gen_kl_error": _kl_estimate(prev - gen, kl_type),  # KL(mu || pi_old)
                "policy_kl_error": _kl_estimate(gen - prev, kl_type),  # KL(pi_old || mu)
                "js_divergence_error": js,
                "sampling_importance_ratio": torch.nan_to_num(torch.exp(prev - gen), nan=0.0, posinf=0.0, neginf=0.0),
                "approx_entropy": -torch.exp(lp - gen) * lp,
            }
            inf = torch.tensor(math.inf, dtype=dtype, device=r.device)
            values = {
                **{k: (m * v).sum() for k, v in token_sums.items()},
                "probs_ratio_min": torch.where(mask, r, inf).min() if r.numel() else inf,
                "probs_ratio_max": torch.where(mask, r, -inf).max() if r.numel() else -inf,
                "loss": loss.detach(), "drpo_sim/pg_loss": pg.detach(),
                "kl_penalty": torch.zeros((), dtype=dtype, device=r.device) if kl is None else kl.detach(),
                "num_valid_samples": sample_mask.detach().sum(),
                "n_tok": n_tok, "global_valid_toks": (n_tok if global_valid_toks is None else
                                                      torch.as_tensor(global_valid_toks, device=r.device)),
            }
            read = dict(zip(values, torch.stack([v.to(torch.float64).reshape(()) for v in values.values()]).tolist()))
        total = max(read.pop("global_valid_toks"), 1.0)
        share = read.pop("n_tok") / total
        out = {k: (v / total if k in token_sums else v) for k, v in read.items()}
        for key, value in stats.items():
            name = key.removeprefix("actor/")
            if name in _TOKEN_MEANS:
                out[f"drpo_sim/{name}"] = 0.0 if math.isnan(value) else value * share
            elif name == "valid_tokens":
                out["drpo_sim/valid_tokens"] = value
        return out


def _kl_estimate(log_ratio: torch.Tensor, kl_type: str) -> torch.Tensor:
    """Schulman's estimate of ``KL(p || q)`` from ``log_ratio = log(q / p)`` at a token sampled from ``p``
    (NeMo RL's ``calculate_kl`` convention, ``logr = logprobs_reference - logprobs``)."""
    if kl_type == "k1":
        return -log_ratio
    if kl_type == "k2":
        return 0.5 * log_ratio * log_ratio
    return torch.exp(log_ratio) - 1.0 - log_ratio
