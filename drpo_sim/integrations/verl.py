"""drpo_sim objectives as verl policy losses (verl 0.9.1): ``loss_mode=drpo_sim/<name>``.

Usage (``docs/integrations.md``): importing this module registers every objective of
:func:`drpo_sim.objectives.available` in verl's policy-loss registry under ``drpo_sim/<name>``, with
its default parameters (:func:`register_all`); a configured one is registered by :func:`register`::

    # my_losses.py, named in the verl config: actor_rollout_ref.model.external_lib=my_losses
    from drpo_sim.integrations import verl as drpo_verl
    drpo_verl.register("drpo", delta=6.0, name="drpo_sim/drpo_d6")

    # then: actor_rollout_ref.actor.policy_loss.loss_mode=drpo_sim/drpo_d6

verl looks its policy loss up by name in the process that trains (a Ray worker), so the module that
registers it must be imported there: ``actor_rollout_ref.model.external_lib=drpo_sim.integrations.verl``
(or your own module, as above) makes verl import it where it builds the model's config.

What it reproduces was read in verl 0.9.1 (the ``verl`` wheel of PyPI); this is our code, written from
that reading:

* **The registry and the signature** (``verl/trainer/ppo/core_algos.py``): ``register_policy_loss(name)``
  is a decorator storing the function under ``name``; ``get_policy_loss_fn(name)`` returns it (a
  ``ValueError`` listing the names otherwise). Its only caller in 0.9.1 is ``ppo_loss`` of
  ``verl/workers/utils/losses.py`` (the engine workers; the older ``dp_actor.py`` is gone), which
  calls ``fn(old_log_prob=, log_prob=, advantages=, response_mask=, loss_agg_mode=config.loss_agg_mode,
  config=<the ActorConfig>, rollout_is_weights=)`` on one micro-batch, every tensor ``[B, T]``
  right-padded, the mask boolean, and takes back ``(pg_loss, metrics)``: a dict of floats that verl
  averages over micro-batches (``Metric.from_dict(..., AggregationType.MEAN)``); ``ppo_loss`` then sets
  ``actor/pg_loss`` itself and adds the entropy bonus and the KL loss (``use_kl_loss``), both
  aggregated as below. (``core_algos.PolicyLossFn`` names the seventh argument ``rollout_log_probs``:
  what is passed is ``rollout_is_weights``.)
* **The three log-probs.** ``ppo_loss`` selects only ``response_mask``, ``old_log_probs``,
  ``advantages``, ``rollout_is_weights`` and ``ref_log_prob`` from the batch: the engine's
  ``rollout_log_probs`` never reach a policy loss. ``old_log_probs`` is, in verl's default
  ("decoupled") mode, the trainer's recomputation of the rollout before the update
  (``RayPPOTrainer._compute_old_log_prob``, ``verl/trainer/ppo/ray_trainer.py``): ``pi_old``. In
  bypass mode (``algorithm.rollout_correction.bypass_mode=true``) it is the engine's ``rollout_log_probs``: the
  v1 trainer (``trainer.use_v1=true``, ``verl/trainer/ppo/v1/trainer_base.py``) copies them there and
  keeps ``loss_mode``; the classic ``RayPPOTrainer`` (``rollout_corr_helper.apply_bypass_mode``) also
  sets ``policy_loss.loss_mode = "bypass_mode"``, verl's own loss, in the driver's config. So here, by
  default (``old_log_prob="pi_old"``): ``logp_old`` is ``old_log_prob``, and ``mu`` (``logp_behavior``)
  is a ``rollout_log_probs=`` keyword when a caller passes one (verl 0.9.1 does not), else
  ``old_log_prob`` too, with a :class:`MuFallbackWarning`: the objective then sees the policy's drift
  since the rollout, no training-inference mismatch. With ``old_log_prob="mu"`` (bypass mode, v1
  trainer) ``mu`` is ``old_log_prob`` and there is no ``pi_old``: an objective that reads it
  (:attr:`~drpo_sim.objectives.Objective.needs_old`) is refused at registration. A config whose
  ``policy_loss.rollout_correction.bypass_mode`` is true is refused at the call of a ``"pi_old"`` loss.
* **Rollout correction.** In decoupled mode with ``algorithm.rollout_correction.rollout_is`` set,
  verl passes ``rollout_is_weights`` (its truncated ``pi_old / mu``, token or sequence level, no
  gradient), which its own losses multiply into the per-token loss: so does this one, when ``mu`` is
  the ``old_log_prob`` fallback (the objective against ``pi_old``, verl's correction for the engine's
  gap, as ``get(name, correction="tis")`` does in drpo_sim). When ``mu`` is the engine's own, the
  objective already sees the gap and the weights are refused (they would correct it twice). verl's
  rejection sampling (``rollout_rs``) acts upstream, on ``response_mask``.
* **Normalisation.** Before each call ``ppo_loss`` fills ``config.global_batch_info`` with ``dp_size``
  (``D``), ``batch_num_tokens`` (``N``: the tokens of ``loss_mask``, which is ``response_mask``, in
  the mini-batch on all data-parallel ranks, ``all_reduce``-d by the engine's
  ``forward_backward_batch``, e.g. ``verl/workers/engine/fsdp/transformer_impl.py``),
  ``global_batch_size`` (``S``: ``ppo_mini_batch_size * rollout.n``, the mini-batch's sequences on
  all ranks, set by the trainer's ``_update_actor``) and
  ``loss_scale_factor`` (``actor.loss_scale_factor``, ``H``; ``None``: the micro-batch's padded length
  ``T``, which verl pads to the batch's longest response). ``agg_loss(loss_mat, mask, loss_agg_mode,
  **global_batch_info)`` reduces the per-token loss ``l = -J_t`` of the micro-batch; the engine calls
  ``backward`` on each micro-batch's loss as it is, and data parallelism averages the gradients over
  the ``D`` ranks. So, over a mini-batch:

  ========================== ===================================== ==================================
  ``loss_agg_mode``          verl's loss of one micro-batch        :func:`~drpo_sim.objectives.policy_loss`
                                                                   of the whole mini-batch
  ========================== ===================================== ==================================
  token-mean                 ``D sum m l / N``                     ``token-mean``
  seq-mean-token-sum         ``D sum_i (sum_t m l) / S``           ``seq-mean-token-sum``
  seq-mean-token-mean        ``D sum_i (sum_t m l / n_i) / S``     ``seq-mean-token-mean``
  seq-mean-token-sum-norm    ``D sum_i (sum_t m l) / (S H)``       ``seq-mean-token-sum-norm``
                                                                   (``horizon=H``)
  token-sum                  ``D sum m l``                         (none: ``N`` times ``token-mean``)
  ========================== ===================================== ==================================

  (``n_i``: the tokens of sequence ``i``, which verl divides by as ``n_i + 1e-8``.) Summed over the
  micro-batches and averaged over the ranks, each is the whole mini-batch's loss, on any number of
  ranks and micro-batches; without the global information (``D = 1``, ``N`` and ``S`` ``None``, as in a
  direct call) ``agg_loss`` takes the micro-batch's own counts, which is ``policy_loss`` on the
  micro-batch. One difference stays: ``S`` counts every sequence of the mini-batch, one left with no
  token in the loss (rejection sampling masks whole responses) included, where drpo_sim's means over
  sequences leave such a sequence out. This module never normalises by itself: it hands drpo_sim's
  per-token surrogate to verl's ``agg_loss``. Calling ``policy_loss`` on each micro-batch instead
  would weigh a rank's tokens by ``N / (D n_r)`` (``tests/integrations/test_verl.py``: 1.18 and 0.87
  for ranks of 248 and 335 tokens).
* **The per-token surrogate** is :meth:`~drpo_sim.objectives.Objective.surrogate` on the padded batch
  with the padding replaced by zeros (so that NaN or inf there reaches neither the loss nor the
  gradient, as in ``policy_loss``); a sequence-level objective (GSPO) reads each row as one sequence,
  its padding and any masked token left out of the sequence's ratio (``sample_id``). An objective that
  needs Top-K divergences (``topk_tv``, ``topk_kl``: verl does not pass the engine's Top-K) or a
  statistic of the whole batch (which padding and micro-batching would change) is refused.
* **Metrics** (floats, computed on detached tensors, never in the autograd graph): ``actor/ppo_kl``
  as verl's losses define it (the masked mean of ``old_log_prob - log_prob``, the log-ratio clamped
  to +-20); ``actor/pg_clipfrac``, the share of tokens whose gradient the objective cuts (``w = 0``,
  drpo_sim's ``masked_frac``), with ``metrics="full"``; and :func:`~drpo_sim.objectives.policy_loss`'s
  statistics of the micro-batch under ``drpo_sim/`` (``drpo_sim/masked_frac``,
  ``drpo_sim/attenuated_frac``, ``drpo_sim/ratio_max``, ...; ``pg_loss`` left to verl). verl averages
  each over micro-batches: ``drpo_sim/ratio_max`` is the mean of the micro-batches' maxima. They cost
  a second evaluation of the surrogate, without its gradient (``metrics=False``: none of them but
  ``actor/ppo_kl``).
"""

from __future__ import annotations

import warnings
from typing import Any

import torch

try:
    import verl
    from verl.trainer.ppo.core_algos import agg_loss, get_policy_loss_fn, register_policy_loss
except ImportError as _err:  # not installed (ModuleNotFoundError, kept as such), or not importable
    _why = " ".join(str(_err).split())  # one line
    raise type(_err)(f"drpo_sim.integrations.verl needs verl: pip install 'drpo_sim[verl]' ({_why})",
                     name=_err.name) from _err

from drpo_sim import objectives
from drpo_sim.objectives import Objective, policy_loss

__all__ = [
    "MuFallbackWarning",
    "OLD_LOG_PROB_ROLES",
    "PREFIX",
    "REGISTERED",
    "TESTED_VERL",
    "VerlPolicyLoss",
    "register",
    "register_all",
    "unsupported",
]

TESTED_VERL = "0.9"
"""The verl release line this module was written against (its ``ppo_loss`` and ``agg_loss`` change
between releases); another one gives a warning."""

if not verl.__version__.startswith(TESTED_VERL + "."):
    warnings.warn(f"drpo_sim.integrations.verl was written and tested against verl {TESTED_VERL}.x, found "
                  f"{verl.__version__}: check the loss against verl's (tests/integrations/test_verl.py)", stacklevel=2)

PREFIX = "drpo_sim/"
"""The prefix of the names :func:`register_all` registers (``drpo_sim/drpo``, ``drpo_sim/grpo``, ...)."""

OLD_LOG_PROB_ROLES = ("pi_old", "mu")
"""What verl's ``old_log_prob`` is: the trainer's recomputed ``pi_old`` (verl's default, decoupled
mode) or the engine's ``mu`` (bypass mode); the module docstring."""

_METRICS = (False, "default", "full")
_FALLBACK = "old_log_prob (pi_old)"  # mu_source when mu falls back to old_log_prob


class MuFallbackWarning(UserWarning):
    """verl hands the policy loss no inference-engine log-probs: ``mu`` is ``old_log_prob``, the
    trainer's recomputed ``pi_old``."""


def unsupported(objective: Objective, old_log_prob: str = "pi_old") -> str | None:
    """Why ``objective`` cannot be a verl policy loss when verl's ``old_log_prob`` is ``old_log_prob``
    (:data:`OLD_LOG_PROB_ROLES`), in one line; ``None`` when it can."""
    if old_log_prob not in OLD_LOG_PROB_ROLES:
        raise ValueError(f"old_log_prob must be one of {', '.join(OLD_LOG_PROB_ROLES)}, got {old_log_prob!r}")
    name = f"drpo_sim objective {objective}"
    missing = [c for c in objective.required_columns if c != "logp_old"]
    if missing:
        return (f"{name} needs {', '.join(missing)} ({objectives.EXTRA_COLUMNS[missing[0]]}), which verl "
                f"{TESTED_VERL} does not pass to a policy loss")
    if objective.uses_batch_statistic:
        return (f"{name} takes a statistic of the whole batch, which verl's padding and micro-batches would "
                "change: choose parameters that make it elementwise")
    if objective.needs_old and old_log_prob == "mu":
        return (f"{name} reads pi_old (logp_old), and in verl's bypass mode old_log_prob is the engine's mu, with "
                "no pi_old: use verl's decoupled mode (bypass_mode=false) or an objective that does not read pi_old")
    return None


def _get(config: Any, key: str) -> Any:
    """``config[key]`` for verl's configs (dataclasses with ``get``, omegaconf's ``DictConfig``), or ``None``."""
    if config is None:
        return None
    if hasattr(config, "get"):
        try:
            return config.get(key, None)
        except (AttributeError, KeyError):  # a structured DictConfig refusing an unknown key
            return None
    return getattr(config, key, None)


def _global_batch_info(config: Any) -> dict[str, Any]:
    """The keywords of ``agg_loss`` that ``ppo_loss`` put in ``config.global_batch_info`` (none in a
    direct call without a config)."""
    info = _get(config, "global_batch_info")
    return dict(info) if info else {}


def _bypass_mode(config: Any) -> bool:
    """Whether ``config.policy_loss.rollout_correction.bypass_mode`` is set (verl's bypass mode)."""
    return bool(_get(_get(_get(config, "policy_loss"), "rollout_correction"), "bypass_mode"))


class VerlPolicyLoss:
    """A drpo_sim objective as a verl policy loss: a callable with verl 0.9.1's signature and return.

    Built by :func:`register` and :func:`register_all`; verl's ``get_policy_loss_fn(name)`` returns it.
    ``old_log_prob`` says what verl's tensor of that name is (:data:`OLD_LOG_PROB_ROLES`), ``metrics``
    which statistics come back (``False``, ``"default"``, ``"full"``: those of
    :func:`~drpo_sim.objectives.policy_loss`). ``mu_source`` is what ``mu`` was at the last call. See the
    module docstring for the mapping and the normalisation.
    """

    def __init__(self, objective: Objective, *, name: str, old_log_prob: str = "pi_old",
                 metrics: bool | str = "full") -> None:
        why = unsupported(objective, old_log_prob)
        if why is not None:
            raise ValueError(why)
        if metrics is True:
            metrics = "default"
        if metrics not in _METRICS:
            raise ValueError(f"metrics must be one of False, True, 'default', 'full'; got {metrics!r}")
        self.objective, self.name, self.old_log_prob, self.metrics = objective, name, old_log_prob, metrics
        self.mu_source: str | None = None

    def __repr__(self) -> str:
        return f"VerlPolicyLoss({self.name!r}, {self.objective}, old_log_prob={self.old_log_prob!r})"

    def _three_policies(self, old_log_prob: torch.Tensor, rollout_log_probs: torch.Tensor | None
                        ) -> tuple[torch.Tensor, torch.Tensor | None, str]:
        """``(mu, logp_old, where mu came from)``."""
        if self.old_log_prob == "mu":
            if rollout_log_probs is not None:
                raise ValueError(f"{self.name}: registered with old_log_prob='mu' (verl's bypass mode), so "
                                 "old_log_prob is mu already; rollout_log_probs is not expected too")
            return old_log_prob, None, "old_log_prob (the engine's, bypass mode)"
        if rollout_log_probs is not None:
            return rollout_log_probs, old_log_prob, "rollout_log_probs"
        source = _FALLBACK
        if self.mu_source != source:
            warnings.warn(
                f"drpo_sim ({self.name}): verl {TESTED_VERL} passes a policy loss no inference-engine log-probs "
                "(its ppo_loss does not select rollout_log_probs), so mu (logp_behavior) is old_log_prob, the "
                "trainer's log-probs of the rollout recomputed before the update: the objective sees the policy's "
                "drift since the rollout, no training-inference mismatch", MuFallbackWarning, stacklevel=3)
        return old_log_prob, old_log_prob, source

    def __call__(
        self, old_log_prob: torch.Tensor, log_prob: torch.Tensor, advantages: torch.Tensor,
        response_mask: torch.Tensor, loss_agg_mode: str = "token-mean", config: Any = None,
        rollout_is_weights: torch.Tensor | None = None, *, rollout_log_probs: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """verl's policy loss of one micro-batch: ``(pg_loss, metrics)`` (the module docstring)."""
        if self.old_log_prob == "pi_old" and _bypass_mode(config):
            raise ValueError(f"{self.name}: the config sets policy_loss.rollout_correction.bypass_mode, so "
                             "old_log_prob is the engine's mu, not pi_old: register the loss with "
                             "old_log_prob='mu' (register_all(prefix, old_log_prob='mu'))")
        if log_prob.ndim != 2 or tuple(response_mask.shape) != tuple(log_prob.shape):
            raise ValueError(f"{self.name}: log_prob and response_mask must be [B, T] of one shape, got "
                             f"{tuple(log_prob.shape)} and {tuple(response_mask.shape)}")
        mu, logp_old, source = self._three_policies(old_log_prob, rollout_log_probs)
        self.mu_source = source
        if rollout_is_weights is not None and source != _FALLBACK:
            raise ValueError(f"{self.name}: mu is the engine's log-probs here, so the objective sees the engine's "
                             "gap already and verl's rollout_is_weights would correct it twice: set "
                             "algorithm.rollout_correction.rollout_is=null, or use a drpo_sim correction")
        valid = response_mask if response_mask.dtype == torch.bool else response_mask != 0
        if advantages.ndim == 1:
            advantages = advantages[:, None].expand_as(log_prob)
        obj = self.objective

        def padded_to_zero(x: torch.Tensor) -> torch.Tensor:
            return torch.where(valid, x, torch.zeros((), dtype=x.dtype, device=x.device))

        # each row one sequence; its padding (and any masked token) a sequence of its own, left out of
        # the row's ratio (sequence-level objectives only read sample_id)
        sample_id = None
        if obj.per_sequence:
            rows = torch.arange(log_prob.shape[0], device=log_prob.device)[:, None].expand_as(log_prob)
            sample_id = torch.where(valid, rows, rows + log_prob.shape[0])
        surrogate = obj.surrogate(
            padded_to_zero(log_prob), padded_to_zero(mu.detach()), padded_to_zero(advantages.detach()),
            logp_old=None if logp_old is None else padded_to_zero(logp_old.detach()), sample_id=sample_id)
        loss_mat = padded_to_zero(-surrogate)
        if rollout_is_weights is not None:
            loss_mat = loss_mat * padded_to_zero(rollout_is_weights)
        pg_loss = agg_loss(loss_mat=loss_mat, loss_mask=valid, loss_agg_mode=loss_agg_mode,
                           **_global_batch_info(config))
        return pg_loss, self._metrics(old_log_prob, log_prob, advantages, valid, mu, logp_old)

    def _metrics(self, old_log_prob: torch.Tensor, log_prob: torch.Tensor, advantages: torch.Tensor,
                 valid: torch.Tensor, mu: torch.Tensor, logp_old: torch.Tensor | None) -> dict[str, float]:
        """verl's ``actor/ppo_kl`` (and ``actor/pg_clipfrac``), and ``policy_loss``'s statistics under
        ``drpo_sim/``, on detached tensors."""
        with torch.no_grad():
            log_ratio = torch.clamp(log_prob.detach() - old_log_prob.detach(), min=-20.0, max=20.0)
            n = valid.sum().clamp(min=1)
            out = {"actor/ppo_kl": float(torch.where(valid, -log_ratio, 0.0).sum() / n)}
            if not self.metrics:
                return out
            _, stats = policy_loss(self.objective, log_prob.detach(), mu.detach(), advantages.detach(), valid,
                                   agg_mode="token-mean", metrics=self.metrics,
                                   logp_old=None if logp_old is None else logp_old.detach())
        if "actor/masked_frac" in stats:
            out["actor/pg_clipfrac"] = stats["actor/masked_frac"]
        out.update({f"drpo_sim/{k.removeprefix('actor/')}": v for k, v in stats.items() if k != "actor/pg_loss"})
        return out


class _Refused:
    """What :func:`register_all` registers for an objective verl cannot run: a loss that raises why."""

    def __init__(self, name: str, reason: str) -> None:
        self.name, self.reason = name, reason

    def __repr__(self) -> str:
        return f"_Refused({self.name!r}: {self.reason})"

    def __call__(self, *args: Any, **kwargs: Any) -> tuple[torch.Tensor, dict[str, float]]:
        raise ValueError(self.reason)


def _install(name: str, fn: VerlPolicyLoss | _Refused) -> None:
    """``fn`` under ``name`` in verl's registry; a name verl or someone else holds is refused."""
    if not isinstance(name, str) or not name:
        raise ValueError(f"a verl policy-loss name must be a non-empty string, got {name!r}")
    try:
        held = get_policy_loss_fn(name)
    except ValueError:  # verl's answer for a name it does not hold
        held = None
    if held is not None and not isinstance(held, (VerlPolicyLoss, _Refused)):
        raise ValueError(f"verl already has a policy loss {name!r} that is not drpo_sim's: choose another name")
    register_policy_loss(name)(fn)


def register(objective: str | Objective = "drpo", *, name: str | None = None, correction: str | None = None,
             old_log_prob: str = "pi_old", metrics: bool | str = "full", **params: Any) -> VerlPolicyLoss:
    """Register a drpo_sim objective as verl's policy loss ``name`` and return it.

    ``objective``: a name of :func:`drpo_sim.objectives.available` with its ``params`` and an optional
    ``correction`` (as :func:`drpo_sim.objectives.get` takes them: ``register("grpo", correction="tis",
    cap=2)``), or an :class:`~drpo_sim.objectives.Objective`. ``name`` defaults to
    ``drpo_sim/<objective>`` (``drpo_sim/<objective>+<correction>`` with one), replacing the loss of
    that name that :func:`register_all` put there; a name that verl's own loss holds is refused.
    ``old_log_prob``: ``"pi_old"`` (verl's decoupled mode, its default) or ``"mu"`` (bypass mode); see
    the module docstring. An objective verl cannot run (:func:`unsupported`) is a ``ValueError`` here.
    """
    if isinstance(objective, Objective):
        if params or correction is not None:
            raise ValueError("pass params and correction with an objective's name, not an Objective")
        obj = objective
    else:
        obj = objectives.get(objective, correction=correction, **params)
    if name is None:
        corrected = isinstance(obj, objectives.Corrected)
        name = PREFIX + (f"{obj.name}+{obj.correction.name}" if corrected else obj.name)
    loss = VerlPolicyLoss(obj, name=name, old_log_prob=old_log_prob, metrics=metrics)
    _install(name, loss)
    return loss


def register_all(prefix: str = PREFIX, *, old_log_prob: str = "pi_old", metrics: bool | str = "full") -> list[str]:
    """Register every objective of :func:`drpo_sim.objectives.available`, with its default parameters,
    as verl's policy loss ``prefix + name``; the names, in the registry's order.

    Calling it again registers the same losses again (idempotent). An objective verl cannot run
    (:func:`unsupported`: the Top-K modes, and those reading ``pi_old`` when ``old_log_prob="mu"``) is
    registered all the same, as a loss whose call raises the one-line reason, so that selecting it
    says why. Importing this module calls ``register_all()``.
    """
    names = []
    for objective_name in objectives.available():
        obj = objectives.get(objective_name)
        name = prefix + objective_name
        why = unsupported(obj, old_log_prob)
        fn = _Refused(name, why) if why else VerlPolicyLoss(obj, name=name, old_log_prob=old_log_prob,
                                                              metrics=metrics)
        _install(name, fn)
        names.append(name)
    return names


REGISTERED: list[str] = register_all()
"""The names this module registered when imported: ``drpo_sim/<name>`` for each objective."""
