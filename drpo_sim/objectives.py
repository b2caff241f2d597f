"""The registry of policy objectives: one definition of each surrogate and its gradient weight.

Every objective is a per-token surrogate ``J_t`` over sampled tokens, to be **maximised**
(``docs/reference.md``, "The objectives"). With ``mu`` the behaviour probability of the
sampled token, ``pi`` the trained policy's, ``r = pi / mu`` and ``A`` the advantage, each
objective's gradient is plain importance-weighted policy gradient times a method-specific
weight (the lens of Table 1 in Yao et al. 2026)::

    dJ_t / dlogp = A * r * w_t

Each objective below gives its surrogate (differentiable through ``logp`` in torch) and the
closed-form weight ``w_t``; the tests hold one against the other with torch autograd.

Usage::

    import drpo_sim as ds
    obj = ds.objectives.get("drpo", delta=12.5)
    obj.surrogate(logp, logp_behavior, advantage)   # NumPy in, NumPy out; torch in, torch out
    obj.weight(logp, logp_behavior, advantage)
    obj.regions(logp, logp_behavior, advantage).fractions(mask)
    ds.objectives.available()

Numerical guards (each documented where it acts):

* **Ratio cap.** ``log r`` is capped at ``LOG_RATIO_MAX = 20`` (``r <= 4.85e8``, the cap verl
  uses) by flooring the behaviour log-prob at ``logp - 20`` (a constant, no gradient). Every
  quantity of a call, ``r``, ``mu``, ``pi - mu``, uses the floored ``mu``, so the contract
  ``dJ/dlogp = A r w`` holds exactly with the capped ratio. The floor moves ``pi - mu`` by at
  most ``pi * exp(-20) = 2e-9 * pi``, so shift-based masks and weights are unaffected. Only the
  upper side needs a cap: as ``r -> 0`` nothing grows. With ``r <= e^20``, ``(r - 1)^2 <= 2.4e17``
  and every surrogate and gradient stays finite in float32 for ``abs(A) / threshold`` up to
  about ``1e19``.
* **Tangent continuation of log r.** The ``drpo_kl`` and ``drpo_k3`` ablations contain
  ``log r``, whose weight grows like ``1/r``. Below ``log r = -20`` the logarithm is continued by
  its tangent (``log r ~ r e^20 - 1 - 20``), so its gradient, and the weight, stay finite
  (``<= e^20 / delta``) for a ratio that underflows to 0.

* **Three policies and sequences.** The objectives anchored to the trainer's recomputed
  ``pi_old`` read ``b = pi_old / mu`` from the floored log-probs, so ``r = rho b`` exactly; a
  correction's factor is capped at ``e^40`` and at ``b e^40`` (:class:`Corrected`); a sequence's
  log-ratio sums are accumulated in float64, and GSPO floors each token's log-ratio at ``-20`` in
  the sequence mean (:class:`GSPO`).

Three policies (``docs/objectives/three_policies.md``): ``mu`` the engine's, ``pi_old`` the
trainer's recomputation of the rollout before the update (keyword ``logp_old``, needed only by the
objectives whose :attr:`Objective.needs_old` is true, and by every corrected objective,
``get(name, correction=...)``), ``pi`` the trained policy. The sequence-level objectives and
corrections read each token's sequence from ``sample_id`` (default: each row of the last axis).

Half-precision inputs (float16, bfloat16) are computed and returned in float32; integer inputs
in the namespace's default float. Log-probabilities are expected to be ``<= 0``: validating input
data is the loaders' job (:mod:`drpo_sim.logs`), not this hot path's.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from drpo_sim._xp import (
    Array,
    as_float_arrays,
    compute_dtype,
    device,
    is_torch,
    namespace,
    requires_grad,
    stop_gradient,
)

LOG_RATIO_MAX = 20.0
"""Cap on ``log(pi / mu)``; see the module docstring."""
BATCH_SCALE = "batch"
"""The ``adv_scale`` of :class:`DRPONoAbsAdv` that stands for the batch's mean ``abs(A)``."""

__all__ = [
    "AGG_MODES",
    "BATCH_SCALE",
    "Corrected",
    "Correction",
    "DEFAULT_METRICS",
    "FULL_METRICS",
    "LOG_RATIO_MAX",
    "METRIC_SETTINGS",
    "EXTRA_COLUMNS",
    "MissingColumn",
    "Objective",
    "Regions",
    "TokenTerms",
    "aggregate",
    "available",
    "binary_kl",
    "corrections",
    "topk_divergences",
    "get",
    "policy_loss",
]


# --------------------------------------------------------------------------------------------
# Per-token quantities shared by all objectives
# --------------------------------------------------------------------------------------------


class _memo:
    """``functools.cached_property`` without its lock: a value computed on first access and kept
    in the instance's ``__dict__`` (which then shadows this non-data descriptor).

    Python 3.11's ``cached_property`` takes an ``RLock`` on every first access, which
    ``torch.compile`` cannot trace; a :class:`TokenTerms` lives within one call, so no lock is needed,
    and the fused kernels (:mod:`drpo_sim.fused`) compile the registry's own formulas through it."""

    def __init__(self, fn: Callable[[Any], Any]) -> None:
        self.fn = fn
        self.__doc__ = fn.__doc__

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    def __get__(self, obj: Any, owner: type | None = None) -> Any:
        if obj is None:
            return self
        value = obj.__dict__[self.name] = self.fn(obj)
        return value



class TokenTerms:
    """The per-token quantities an objective is built from, each computed once, on demand.

    ``logp`` keeps its gradient (unless ``detach``); ``logp_behavior`` and ``advantage`` never
    carry one (``mu`` and ``A`` are constants of the surrogate). See the module docstring for the
    ratio cap applied to ``logp_behavior``.
    """

    def __init__(
        self, xp: Any, logp: Array, logp_behavior: Array, advantage: Array, shape: tuple[int, ...], *, detach: bool,
        columns: dict[str, Array] | None = None, sample_id: Array | None = None, valid: Array | None = None,
    ):
        self.xp = xp
        self.shape = shape
        self.logp = stop_gradient(logp) if detach else logp
        self._logp_behavior_given = stop_gradient(logp_behavior)
        self.advantage = stop_gradient(advantage)
        self._columns = {k: stop_gradient(v) for k, v in (columns or {}).items() if v is not None}
        self._sample_id = sample_id
        self._valid = valid

    @classmethod
    def of(
        cls, logp: Array, logp_behavior: Array, advantage: Array, *, detach: bool = False,
        sample_id: Array | None = None, **columns: Array | None,
    ) -> TokenTerms:
        """Convert the inputs (and any of :data:`EXTRA_COLUMNS`) to one float dtype (see
        :mod:`drpo_sim._xp`) and check they broadcast."""
        xp, shape, arrays, extra = _as_inputs(logp, logp_behavior, advantage, columns)
        return cls(xp, *arrays, shape, detach=detach, columns=extra, sample_id=_as_ids(xp, sample_id, shape))

    def column(self, name: str) -> Array:
        """The per-token input ``name`` of :data:`EXTRA_COLUMNS` (a constant); :class:`MissingColumn`
        when the call has none."""
        if name not in self._columns:
            raise MissingColumn(name, f"this objective needs {name}")
        return self._columns[name]

    def detached(self) -> TokenTerms:
        """The same terms with no gradient, reusing every quantity computed so far (detached, not
        recomputed); the others are computed on demand, as for ``detach=True``.

        Each reused value equals the one a fresh ``detach=True`` call would compute: the only
        quantity whose graph form differs, :attr:`ratio_minus_one`, is ``rm1 + (r - r)`` there.
        """
        out = TokenTerms(self.xp, self.logp, self._logp_behavior_given, self.advantage, self.shape, detach=True,
                         columns=self._columns, sample_id=self._sample_id, valid=self._valid)
        for name, value in vars(self).items():
            if isinstance(getattr(TokenTerms, name, None), _memo) and hasattr(value, "dtype"):
                out.__dict__[name] = stop_gradient(value)
        return out

    # the three policies ----------------------------------------------------------------------
    @_memo
    def old(self) -> TokenTerms:
        """The same tokens seen against the trainer's recomputed policy ``pi_old`` instead of ``mu``.

        Its ``ratio`` is ``pi / pi_old``, its ``shift`` ``pi - pi_old``, its ``mu`` is ``pi_old``
        (floored at ``logp - LOG_RATIO_MAX`` as ``mu`` is); ``logp`` keeps its gradient. Objectives
        whose trust region is anchored to ``pi_old`` (decoupled PPO, MiniRL, the recompute modes,
        the corrections) read it; ``ValueError`` when the call has no ``logp_old``.
        """
        return TokenTerms(self.xp, self.logp, self.column("logp_old"), self.advantage, self.shape, detach=False,
                          sample_id=self._sample_id, valid=self._valid)

    @_memo
    def log_behavior_ratio(self) -> Array:
        """``log b = log(pi_old / mu)``, the engine's gap at rollout time, a constant.

        Computed from ``pi_old`` and ``mu`` after their floors at ``logp - LOG_RATIO_MAX`` (module
        docstring), so that ``b = r / rho`` exactly with the capped ``r = pi/mu`` and
        ``rho = pi/pi_old``; the floors move ``b`` only where one of the ratios exceeds ``e^20``.
        """
        return self.old.logp_behavior - self.logp_behavior

    # sequences -------------------------------------------------------------------------------
    @_memo
    def _segments(self) -> tuple[Array, int]:
        """Each token's sequence as an index ``0..S-1`` (flat), and ``S``, from ``sample_id``."""
        ids = self.xp.reshape(self._sample_id, (-1,))
        if is_torch(self.xp):
            torch = sys.modules["torch"]
            _, inverse = torch.unique(ids, return_inverse=True)
        else:
            _, inverse = np.unique(ids, return_inverse=True)
        return inverse, int(inverse.max()) + 1 if inverse.shape[0] else 0

    def seq_sum(self, x: Array) -> Array:
        """The sum of ``x`` over each token's sequence, given back at every token of it.

        A sequence is the tokens that share a ``sample_id``; without one, each row of the last
        axis (``[..., B, T]``: one sample's tokens) is a sequence. Padded tokens (``valid`` false,
        as :func:`policy_loss` marks them) are left out. Differentiable through ``x``.
        """
        xp, x = self.xp, self.full(x)
        if self._valid is not None:
            x = xp.where(self._valid, x, xp.zeros_like(x))
        # accumulated in float64 (a float32 sum of large log-ratios could meet inf - inf), given back
        # in the call's dtype
        if self._sample_id is None:
            if x.ndim == 0:
                return x
            return self.full(xp.astype(xp.sum(xp.astype(x, xp.float64), axis=-1, keepdims=True), x.dtype))
        inverse, n = self._segments
        flat = xp.astype(xp.reshape(x, (-1,)), xp.float64)
        if is_torch(xp):
            sums = xp.zeros((n,), dtype=xp.float64, device=device(x)).index_add(0, inverse, flat)
        else:
            sums = np.bincount(inverse, weights=flat, minlength=n)
        return xp.astype(xp.reshape(sums[inverse], self.shape), x.dtype)

    @_memo
    def seq_length(self) -> Array:
        """The number of (valid) tokens in each token's sequence, at least 1, a constant."""
        count = self.seq_sum(self.ones())
        return self.xp.maximum(count, self.xp.ones_like(count))

    def seq_mean(self, x: Array) -> Array:
        """:meth:`seq_sum` divided by the sequence's length (its valid tokens)."""
        return self.seq_sum(x) / self.seq_length

    # ratios -------------------------------------------------------------------------------
    @_memo
    def logp_behavior(self) -> Array:
        """The behaviour log-prob floored at ``logp - LOG_RATIO_MAX`` (the ratio cap), a constant."""
        return self.xp.maximum(self._logp_behavior_given, stop_gradient(self.logp) - LOG_RATIO_MAX)

    @_memo
    def log_ratio(self) -> Array:
        """``log r = logp - logp_behavior``, at most ``LOG_RATIO_MAX``."""
        return self.logp - self.logp_behavior

    @_memo
    def ratio(self) -> Array:
        """``r = pi / mu``."""
        return self.xp.exp(self.log_ratio)

    @_memo
    def ratio_minus_one(self) -> Array:
        """``r - 1``, computed as ``expm1(log r)`` (exact for small shifts).

        Under autograd its derivative is taken as ``dr = r dlogp`` (``expm1(sg) + r - sg(r)``):
        torch differentiates ``expm1`` as ``expm1(x) + 1``, which loses all precision for ``r``
        near 0 (relative error 1e-8 at ``log r = -20``).
        """
        rm1 = self.xp.expm1(self.log_ratio)
        if requires_grad(self.logp):
            return stop_gradient(rm1) + (self.ratio - stop_gradient(self.ratio))
        return rm1

    @_memo
    def log_ratio_ext(self) -> Array:
        """``log r``, continued below ``-LOG_RATIO_MAX`` by its tangent ``r e^L - 1 - L``.

        Equal to ``log r`` wherever ``log r >= -20``; continuous with a continuous derivative
        (``min(1, r e^20)``), so ``d(log r)/dlogp / r`` is at most ``e^20`` instead of ``1/r``.
        """
        xp, lr, low = self.xp, self.log_ratio, -LOG_RATIO_MAX
        return xp.where(lr >= low, lr, self.ratio * math.exp(-low) - 1.0 + low)

    @_memo
    def inv_ratio_capped(self) -> Array:
        """``min(1/r, e^20)``: the derivative of :attr:`log_ratio_ext` with respect to ``logp``, over ``r``."""
        return self.xp.exp(-self.xp.maximum(self.log_ratio, -LOG_RATIO_MAX))

    # probabilities ------------------------------------------------------------------------
    @_memo
    def mu(self) -> Array:
        """``mu = exp(logp_behavior)`` (after the ratio cap), a constant."""
        return self.xp.exp(self.logp_behavior)

    @_memo
    def shift(self) -> Array:
        """The probability shift of the sampled token, signed: ``pi - mu``.

        Computed as ``mu (r - 1)`` with ``r - 1 = expm1(log r)``, free of the cancellation of
        ``exp(logp) - exp(logp_behavior)`` (which gives 0 for a shift of 1e-17 near ``mu = 1``).
        """
        return self.mu * self.ratio_minus_one

    # advantages ---------------------------------------------------------------------------
    @_memo
    def sign_adv(self) -> Array:
        """``sign(A)``, with ``sign(0) = 0``."""
        return self.xp.sign(self.advantage)

    @_memo
    def abs_adv(self) -> Array:
        """``abs(A)``."""
        return self.xp.abs(self.advantage)

    # output helpers -----------------------------------------------------------------------
    def full(self, x: Array) -> Array:
        """``x`` broadcast to the call's shape (a fresh array, never a read-only view)."""
        if tuple(x.shape) == self.shape:
            return x
        return x + self.xp.zeros(self.shape, dtype=x.dtype, device=device(x))

    def ones(self) -> Array:
        """An array of ones of the call's shape and dtype."""
        return self.xp.ones(self.shape, dtype=self.logp.dtype, device=device(self.logp))

    def as_weight(self, keep: Array) -> Array:
        """A boolean keep-mask as a 0/1 weight in the call's dtype."""
        return self.xp.astype(keep, self.logp.dtype)

    def unit(self) -> Array | float:
        """``exp(logp - sg(logp))``: the value 1 with derivative 1 with respect to ``logp``.

        Multiplying a stop-gradient coefficient ``sg(c)`` by it gives a surrogate whose value is
        ``c`` and whose gradient is ``c``: the form of the stop-gradient objectives (CISPO, DPPO).
        """
        if requires_grad(self.logp):
            return self.xp.exp(self.logp - stop_gradient(self.logp))
        return 1.0


def broadcast_shape(*arrays: Array, names: tuple[str, ...] = ()) -> tuple[int, ...]:
    """The shape ``logp, logp_behavior, advantage`` (and the extra columns ``names``) broadcast to;
    ``ValueError`` naming their shapes if they do not."""
    try:
        return tuple(np.broadcast_shapes(*(tuple(a.shape) for a in arrays)))
    except ValueError:
        listed = ["logp", "logp_behavior", "advantage", *names]
        raise ValueError(
            f"{', '.join(listed[:-1])} and {listed[-1]} do not broadcast: shapes "
            f"{', '.join(str(tuple(a.shape)) for a in arrays)}"
        ) from None


EXTRA_COLUMNS = {
    "logp_old": "the trainer's log-probs of the rollout's tokens, recomputed before the update",
    "topk_tv": "the Top-K TV between the engine's and the trainer's next-token distributions (topk_divergences)",
    "topk_kl": "the Top-K KL(engine || trainer) of the next-token distributions (topk_divergences)",
}
"""Per-token inputs beyond ``logp, logp_behavior, advantage`` that some objectives read
(:attr:`Objective.required_columns`), by their token-log column names (``drpo_sim.tokens``)."""


class MissingColumn(ValueError):
    """An objective was called without a per-token input it needs (:data:`EXTRA_COLUMNS`)."""

    def __init__(self, column: str, message: str):
        super().__init__(message)
        self.column = column


def _missing(obj: Any, column: str) -> MissingColumn:
    return MissingColumn(column, f"{obj} needs {column}, {EXTRA_COLUMNS[column]} "
                                 f"(the token log's column '{column}'): pass {column}=...")


def _as_inputs(logp: Array, logp_behavior: Array, advantage: Array, columns: dict[str, Any]
               ) -> tuple[Any, tuple[int, ...], list[Array], dict[str, Array]]:
    """The three inputs and the given extra columns in one namespace and float dtype, and their
    broadcast shape; an unknown column name is a ``ValueError``."""
    given = {k: v for k, v in columns.items() if v is not None}
    unknown = sorted(set(given) - set(EXTRA_COLUMNS))
    if unknown:
        raise ValueError(f"unknown per-token input(s) {', '.join(unknown)}; valid: {', '.join(EXTRA_COLUMNS)}")
    xp, arrays = as_float_arrays(logp, logp_behavior, advantage, *given.values())
    shape = broadcast_shape(*arrays, names=tuple(given))
    return xp, shape, arrays[:3], dict(zip(given, arrays[3:]))


def _as_ids(xp: Any, sample_id: Any, shape: tuple[int, ...]) -> Array | None:
    """``sample_id`` as an integer array of the call's namespace, broadcast to ``shape`` (``None`` stays)."""
    if sample_id is None:
        return None
    if is_torch(xp):
        torch = sys.modules["torch"]
        ids = torch.as_tensor(sample_id)
        ok = not ids.is_floating_point() and not ids.is_complex() and ids.dtype != torch.bool
    else:
        ids = np.asarray(sample_id)
        ok = np.issubdtype(ids.dtype, np.integer)
    if not ok:
        raise ValueError(f"sample_id must hold integers (one id per sequence), got dtype {ids.dtype}")
    try:
        np.broadcast_shapes(tuple(ids.shape), shape)
    except ValueError:
        raise ValueError(f"sample_id has shape {tuple(ids.shape)}, which does not fit the tokens' {shape}") from None
    return xp.broadcast_to(ids, shape) if tuple(ids.shape) != shape else ids


def binary_kl(logp_mu: Array, logp_pi: Array) -> Array:
    """KL divergence between Bernoulli(mu) and Bernoulli(pi), from log-probabilities.

    ``D = mu log(mu/pi) + (1-mu) log((1-mu)/(1-pi))`` (Qi et al. 2026, DPPO, Binary-KL), with
    ``log(1-p)`` computed stably from ``log p`` and the second term taken as 0 when ``mu = 1``.
    Infinite when ``pi = 1 > mu`` (a true infinite divergence). No gradient is meant to flow
    through it: DPPO-KL uses it only as a mask.
    """
    xp, (logp_mu, logp_pi) = as_float_arrays(logp_mu, logp_pi)
    return _binary_kl(xp, logp_mu, logp_pi, xp.exp(logp_mu))


def _binary_kl(xp: Any, logp_mu: Array, logp_pi: Array, mu: Array) -> Array:
    """:func:`binary_kl` with ``mu = exp(logp_mu)`` already at hand.

    ``1 - mu`` is ``-expm1(logp_mu)`` and ``mu < 1`` is ``logp_mu < 0``, both exact: ``exp`` may
    round a ``mu`` within an ulp of 1 to 1 (NumPy's float32 ``exp`` does where torch's does not),
    which would flip ``D`` between about 0 and infinity when ``pi = 1``."""
    with _numpy_errors_ignored(xp):
        first = mu * (logp_mu - logp_pi)
        second = -xp.expm1(logp_mu) * (_log1mexp(xp, logp_mu) - _log1mexp(xp, logp_pi))
        return first + xp.where(logp_mu < 0.0, second, xp.zeros_like(second))


def _numpy_errors_ignored(xp: Any) -> Any:
    """NumPy's divide and invalid warnings off (where a formula's infinities are meant); nothing
    for torch, which never warns, so that ``torch.compile`` traces the formula whole."""
    return contextlib.nullcontext() if is_torch(xp) else np.errstate(divide="ignore", invalid="ignore")


def _log1mexp(xp: Any, x: Array) -> Array:
    """``log(1 - exp(x))`` for ``x <= 0`` without cancellation (Maechler 2012)."""
    return xp.where(x > -math.log(2.0), xp.log(-xp.expm1(x)), xp.log1p(-xp.exp(x)))


# --------------------------------------------------------------------------------------------
# Regions: which tokens an objective masks, attenuates, corrects or amplifies
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Regions:
    """How an objective treats each token, read off its weight ``w``.

    * ``masked``: ``w == 0``, the gradient is removed (a clip or a mask is active);
    * ``corrective``: ``w < 0``, the update is reversed: the token is pulled back towards ``mu``
      against its advantage;
    * ``attenuated``: ``0 < w < 1``;
    * ``amplified``: ``w > 1``.

    Tokens with ``w == 1`` are in none of them. Each field is a boolean array of the call's shape.
    """

    masked: Array
    attenuated: Array
    corrective: Array
    amplified: Array

    NAMES: ClassVar[tuple[str, ...]] = ("masked", "attenuated", "corrective", "amplified")

    @classmethod
    def from_weight(cls, w: Array) -> Regions:
        """Classify tokens by their weight."""
        return cls(masked=w == 0, attenuated=(w > 0) & (w < 1), corrective=w < 0, amplified=w > 1)

    def counts(self, mask: Array | None = None) -> dict[str, int]:
        """Number of tokens in each region, over the tokens where ``mask`` is true (all by default)."""
        xp = namespace(self.masked)
        valid = xp.ones_like(self.masked) if mask is None else (mask != 0)

        def count(flags: Array) -> int:
            return int(xp.sum(xp.astype(flags & valid, xp.int64)))

        return {"tokens": count(xp.ones_like(self.masked)), **{n: count(getattr(self, n)) for n in self.NAMES}}

    def fractions(self, mask: Array | None = None) -> dict[str, float]:
        """Fraction of tokens in each region; ``ValueError`` when no token is selected."""
        counts = self.counts(mask)
        total = counts.pop("tokens")
        if total == 0:
            raise ValueError("no valid tokens: the mask selects none, fractions are undefined")
        return {name: n / total for name, n in counts.items()}


# --------------------------------------------------------------------------------------------
# The objective base class and the registry
# --------------------------------------------------------------------------------------------

BLOCK_TOKENS = {"numpy": 16384, "torch": 65536}
"""Tokens per block when a call is evaluated blockwise (see :func:`_evaluate`)."""


def _evaluate(
    fn: Callable[[TokenTerms], Array], logp: Array, logp_behavior: Array, advantage: Array, *, detach: bool,
    blocks: bool = True, columns: dict[str, Array | None] | None = None, sample_id: Array | None = None,
) -> Array:
    """Evaluate a per-token function of :class:`TokenTerms` over a call's tokens.

    Calls that need no gradient and hold more than two blocks of tokens are evaluated block by
    block into one preallocated output (cache blocking): every intermediate of the formula then
    lives in cache instead of being a fresh array of the call's full size, which would cost a
    pass over memory and a round of page faults each (``benchmarks/bench_objectives.py``
    measures the difference). The loop runs over blocks of ``BLOCK_TOKENS`` tokens, never over
    tokens; the result is identical to the whole-array evaluation. ``blocks=False`` (an objective
    that is not elementwise) evaluates the whole array at once. ``columns`` (the extra per-token
    inputs, :data:`EXTRA_COLUMNS`) and ``sample_id`` are passed on to the terms.
    """
    xp, shape, arrays, extra = _as_inputs(logp, logp_behavior, advantage, columns or {})
    ids = _as_ids(xp, sample_id, shape)
    n = math.prod(shape)
    block = BLOCK_TOKENS["torch" if is_torch(xp) else "numpy"]
    if not blocks or ids is not None or n <= 2 * block or (not detach and requires_grad(arrays[0])):
        t = TokenTerms(xp, *arrays, shape, detach=detach, columns=extra, sample_id=ids)
        return t.full(fn(t))
    names = list(extra)
    flat = [xp.reshape(xp.broadcast_to(stop_gradient(a), shape), (-1,)) for a in [*arrays, *extra.values()]]
    out = xp.empty((n,), dtype=arrays[0].dtype, device=device(arrays[0]))
    for start in range(0, n, block):
        part = [a[start : start + block] for a in flat]
        t = TokenTerms(xp, *part[:3], tuple(part[0].shape), detach=True, columns=dict(zip(names, part[3:])))
        out[start : start + block] = t.full(fn(t))
    return xp.reshape(out, shape)


@dataclass(frozen=True)
class Formula:
    """An objective's math as text: the surrogate ``J`` and weight ``w`` it implements, its idea
    in a few words and its source. The report's and the reference page's tables and
    ``drpo-sim list`` are generated from these (the code below them is what the tests check)."""

    surrogate: str
    weight: str
    idea: str
    source: str


_REGISTRY: dict[str, type[Objective]] = {}


def _check_positive(owner: Any, label: str, names: tuple[str, ...]) -> None:
    """``ValueError`` (prefixed ``label``) unless each parameter ``names`` of ``owner`` is ``None`` or a
    finite number > 0: the one check of the objectives' and the corrections' parameters."""
    for n in names:
        v = getattr(owner, n)
        if v is not None and not (isinstance(v, (int, float)) and math.isfinite(v) and v > 0):
            raise ValueError(f"{label}: parameter {n} must be a finite number > 0, got {v!r}")


def register(cls: type[Objective]) -> type[Objective]:
    """Class decorator: add an objective to the registry under ``cls.name``."""
    if cls.name in _REGISTRY:
        raise ValueError(f"objective {cls.name!r} is registered twice")
    _REGISTRY[cls.name] = cls
    return cls


def available() -> list[str]:
    """Names of every registered objective, in registration order."""
    return list(_REGISTRY)


def get(name: str, correction: str | Correction | None = None, **params: Any) -> Objective:
    """The objective ``name`` with ``params`` (unknown names or parameters: ``ValueError``).

    ``correction`` (a name from :func:`corrections`, or a :class:`Correction`) anchors the objective
    to ``pi_old`` and corrects it for the engine's gap (:class:`Corrected`); the correction's own
    parameters are passed among ``params``: ``get("grpo", correction="tis", cap=2)``.
    """
    if correction is not None:
        if isinstance(correction, str):
            if correction not in _CORRECTIONS:
                raise ValueError(f"unknown correction {correction!r}; available: {', '.join(corrections())}")
            corr_cls = _CORRECTIONS[correction]
            own = {f.name for f in dataclasses.fields(corr_cls)}
            base_fields = {f.name for f in dataclasses.fields(_REGISTRY[name])} if name in _REGISTRY else set()
            taken = {k: v for k, v in params.items() if k in own and k not in base_fields}
            correction = corr_cls(**taken)
            params = {k: v for k, v in params.items() if k not in taken}
        return Corrected(get(name, **params), correction)
    if name not in _REGISTRY:
        raise ValueError(f"unknown objective {name!r}; available: {', '.join(available())}")
    cls = _REGISTRY[name]
    valid = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(params) - set(valid))
    if unknown:
        raise ValueError(
            f"objective {name!r} has no parameter {', '.join(map(repr, unknown))}; "
            f"valid parameters: {', '.join(valid) if valid else 'none'}"
        )
    return cls(**params)


@dataclass(frozen=True)
class Objective:
    """Base class: a per-token surrogate ``J_t`` and its closed-form gradient weight ``w_t``.

    Subclasses implement ``_surrogate(t)`` and ``_weight(t)`` on a :class:`TokenTerms`; the
    public methods take ``(logp, logp_behavior, advantage)`` as NumPy arrays or torch tensors
    of any float dtype and broadcastable shapes, and return the same kind of array.
    """

    name: ClassVar[str] = ""
    formula: ClassVar[Formula]

    # public API --------------------------------------------------------------------------
    # Every method takes the three arrays of the two-policy objectives, and optional keywords:
    # ``logp_old``, the trainer's recomputed log-probs of the rollout (the objectives anchored to
    # pi_old, :attr:`needs_old`); ``topk_tv`` / ``topk_kl``, DPPO's Top-K divergences at each
    # token's position (:func:`topk_divergences`); ``sample_id``, which sequence each token belongs
    # to (the sequence-level objectives, :attr:`per_sequence`; without it each row of the last axis
    # is one sequence). An objective ignores those it does not read (:attr:`required_columns`).
    def surrogate(self, logp: Array, logp_behavior: Array, advantage: Array, *, logp_old: Array | None = None,
                  sample_id: Array | None = None, topk_tv: Array | None = None, topk_kl: Array | None = None) -> Array:
        """Per-token ``J_t`` to maximise; differentiable through ``logp`` for torch tensors."""
        extra = {"logp_old": logp_old, "topk_tv": topk_tv, "topk_kl": topk_kl}
        return self._call(self._surrogate, logp, logp_behavior, advantage, extra, sample_id, detach=False)

    def weight(self, logp: Array, logp_behavior: Array, advantage: Array, *, logp_old: Array | None = None,
               sample_id: Array | None = None, topk_tv: Array | None = None, topk_kl: Array | None = None) -> Array:
        """Per-token ``w_t`` with ``dJ_t/dlogp = advantage * r * w_t`` (no gradient attached)."""
        extra = {"logp_old": logp_old, "topk_tv": topk_tv, "topk_kl": topk_kl}
        return self._call(self._weight, logp, logp_behavior, advantage, extra, sample_id, detach=True)

    def grad_logp(self, logp: Array, logp_behavior: Array, advantage: Array, *, logp_old: Array | None = None,
                  sample_id: Array | None = None, topk_tv: Array | None = None, topk_kl: Array | None = None) -> Array:
        """Closed-form ``dJ_t/dlogp`` (``A r w`` for every objective whose weight is defined)."""
        extra = {"logp_old": logp_old, "topk_tv": topk_tv, "topk_kl": topk_kl}
        return self._call(self._grad_logp, logp, logp_behavior, advantage, extra, sample_id, detach=True)

    def regions(self, logp: Array, logp_behavior: Array, advantage: Array, **inputs: Array | None) -> Regions:
        """Which tokens this objective masks, attenuates, turns corrective or amplifies (the keywords
        of :meth:`weight`)."""
        return Regions.from_weight(self.weight(logp, logp_behavior, advantage, **inputs))

    def _call(self, fn, logp, logp_behavior, advantage, extra, sample_id, *, detach):
        return _evaluate(fn, logp, logp_behavior, advantage, detach=detach, blocks=self.elementwise,
                         columns=self.columns_of(extra), sample_id=sample_id if self.per_sequence else None)

    def columns_of(self, given: dict[str, Array | None]) -> dict[str, Array]:
        """The extra per-token inputs this objective reads, out of those ``given`` (the others are
        dropped); :class:`MissingColumn` naming the first one missing."""
        for name in self.required_columns:
            if given.get(name) is None:
                raise _missing(self, name)
        return {name: given[name] for name in self.required_columns}

    @property
    def required_columns(self) -> tuple[str, ...]:
        """The per-token inputs beyond ``logp, logp_behavior, advantage`` it reads (:data:`EXTRA_COLUMNS`)."""
        return ("logp_old",) if self.needs_old else ()

    @property
    def needs_old(self) -> bool:
        """Whether the objective reads ``pi_old``, the trainer's recomputed policy at rollout time
        (``logp_old``), besides the engine's ``mu`` (``logp_behavior``) and the current ``pi``."""
        return False

    @property
    def per_sequence(self) -> bool:
        """Whether a token's value depends on the other tokens of its sequence (a sequence ratio)."""
        return False

    @property
    def cross_token(self) -> bool:
        """Whether a token's value depends on the other tokens' ``logp`` (not only on their constants):
        then ``dJ_t/dlogp`` is not the whole story, and :meth:`weight` is the gradient each token
        receives from the aggregated loss when the advantage is one value per sequence (GSPO)."""
        return False

    @property
    def elementwise(self) -> bool:
        """Whether each token's value depends on that token's inputs only (every objective but one
        that takes a statistic of the whole batch, such as ``drpo_no_abs_adv`` with
        ``adv_scale="batch"``, or of the token's sequence, :attr:`per_sequence`); only elementwise
        objectives may be evaluated block by block."""
        return not self.per_sequence and not self.uses_batch_statistic

    @property
    def uses_batch_statistic(self) -> bool:
        """Whether every token of the call enters each token's value (a statistic of the whole
        batch): such an objective cannot be evaluated on a padded batch."""
        return False

    @property
    def params(self) -> dict[str, Any]:
        """The objective's parameters, as given to :func:`get`."""
        return dataclasses.asdict(self)

    def __str__(self) -> str:
        args = ", ".join(f"{k}={v}" for k, v in self.params.items() if v is not None)
        return f"{self.name}({args})"

    # implementation hooks ----------------------------------------------------------------
    def _surrogate(self, t: TokenTerms) -> Array:
        raise NotImplementedError

    def _weight(self, t: TokenTerms) -> Array:
        raise NotImplementedError

    def _grad_logp(self, t: TokenTerms) -> Array:
        return t.advantage * t.ratio * self._weight(t)

    def _check_positive(self, *names: str) -> None:
        _check_positive(self, self.name, names)


# --------------------------------------------------------------------------------------------
# Shared pieces of math (each written once)
# --------------------------------------------------------------------------------------------


def _ratio_clip_keep(t: TokenTerms, eps_low: float, eps_high: float) -> Array:
    """PPO's clip is inactive: not (``A>0, r>1+eps_high``) and not (``A<0, r<1-eps_low``)."""
    a, r = t.advantage, t.ratio
    return ~(((a > 0) & (r > 1.0 + eps_high)) | ((a < 0) & (r < 1.0 - eps_low)))


def _tv_keep(t: TokenTerms, delta_low: float, delta_high: float) -> Array:
    """DPPO Binary-TV trust region: not (``A>0, pi-mu > delta_high``) and not (``A<0, pi-mu < -delta_low``)."""
    a, s = t.advantage, t.shift
    return ~(((a > 0) & (s > delta_high)) | ((a < 0) & (s < -delta_low)))


def _drpo_regulariser(t: TokenTerms, delta: float) -> Array:
    """DRPO's quadratic penalty without its advantage factor: ``mu (r-1)^2 / (2 delta)``.

    Its expectation under ``mu`` is ``sum_a (pi(a) - mu(a))^2 / (2 delta)``, a squared l2
    distance (Yao et al. 2026, Eq. 8). Its gradient over ``r`` is ``(pi - mu) / delta``.
    """
    return t.mu * t.ratio_minus_one**2 / (2.0 * delta)


def _drpo_weight(t: TokenTerms, delta: float) -> Array:
    """DRPO's weight ``1 - sign(A) (pi - mu) / delta`` (Yao et al. 2026, Table 1)."""
    return 1.0 - t.sign_adv * t.shift / delta


class _DeltaPair:
    """Mixin for thresholds given as one ``delta`` or as ``delta_low`` / ``delta_high``."""

    delta: float
    delta_low: float | None
    delta_high: float | None

    @property
    def lo(self) -> float:
        return self.delta if self.delta_low is None else self.delta_low

    @property
    def hi(self) -> float:
        return self.delta if self.delta_high is None else self.delta_high


# --------------------------------------------------------------------------------------------
# The objectives
# --------------------------------------------------------------------------------------------


@register
@dataclass(frozen=True)
class PgIS(Objective):
    """Unregularised importance-sampled policy gradient (the reference every weight is relative to).

    ``J = r A``;  ``w = 1``. No trust region: nothing stops ``pi`` drifting from ``mu``.
    """

    name: ClassVar[str] = "pg_is"
    formula: ClassVar[Formula] = Formula(
        "r*A",
        "1",
        "plain importance-sampled policy gradient, no trust region",
        "the unregularised importance-sampled policy gradient",
    )

    def _surrogate(self, t):
        return t.ratio * t.advantage

    def _weight(self, t):
        return t.ones()


@register
@dataclass(frozen=True)
class PPO(Objective):
    """PPO's clipped surrogate (Schulman et al. 2017), with asymmetric clip and optional dual clip.

    ``J = min(r A, clip(r, 1-eps_low, 1+eps_high) A)``; with dual clip ``c > 1`` (Ye et al. 2020),
    for ``A < 0`` the result is ``max(J, c A)``.

    ``w = 0`` where the clip is active (``A>0, r>1+eps_high`` or ``A<0, r<1-eps_low``; dual
    clip: ``A<0, r>c``), else ``w = 1``.
    """

    name: ClassVar[str] = "ppo"
    formula: ClassVar[Formula] = Formula(
        "min(r*A, clip(r, 1-eps_low, 1+eps_high)*A)",
        "0 if the clip is active else 1",
        "ratio clipping",
        "Schulman et al. 2017 (arXiv:1707.06347); dual clip: Ye et al. 2020 (arXiv:1912.09729)",
    )
    eps_low: float = 0.2
    eps_high: float = 0.2
    dual_clip: float | None = None

    def __post_init__(self):
        self._check_positive("eps_low", "eps_high")
        if self.dual_clip is not None and not (math.isfinite(self.dual_clip) and self.dual_clip > 1.0):
            raise ValueError(f"{self.name}: dual_clip must be a finite number > 1, got {self.dual_clip!r}")

    def _surrogate(self, t):
        xp, r, a = t.xp, t.ratio, t.advantage
        j = xp.minimum(r * a, xp.clip(r, 1.0 - self.eps_low, 1.0 + self.eps_high) * a)
        if self.dual_clip is not None:
            j = xp.where(a < 0, xp.maximum(j, self.dual_clip * a), j)
        return j

    def _weight(self, t):
        keep = _ratio_clip_keep(t, self.eps_low, self.eps_high)
        if self.dual_clip is not None:
            keep = keep & ~((t.advantage < 0) & (t.ratio > self.dual_clip))
        return t.as_weight(keep)


@register
@dataclass(frozen=True)
class GRPO(PPO):
    """GRPO's token objective: PPO with clip-higher, ``eps_low = 0.2``, ``eps_high = 0.28``.

    DeepSeekMath (Shao et al. 2024) for the group-relative advantages (an input here, computed
    by whoever builds the batch); DAPO (Yu et al. 2025) for the asymmetric clip.
    Same surrogate and weight as :class:`PPO`.
    """

    name: ClassVar[str] = "grpo"
    formula: ClassVar[Formula] = Formula(
        "min(r*A, clip(r, 1-eps_low, 1+eps_high)*A)",
        "0 if the clip is active else 1",
        "ratio clipping with clip-higher, group-relative advantages",
        "Shao et al. 2024, DeepSeekMath (arXiv:2402.03300); Yu et al. 2025, DAPO (arXiv:2503.14476)",
    )
    eps_low: float = 0.2
    eps_high: float = 0.28
    dual_clip: float | None = None


@register
@dataclass(frozen=True)
class CISPO(Objective):
    """CISPO (MiniMax-M1, 2025): clip the importance weight, never the gradient.

    ``J = sg(min(r, c) A) * u`` with ``u = exp(logp - sg(logp))`` (value 1, derivative 1) and the
    cap ``c = 1 + eps_high``; ``w = min(r, c) / r``. The paper writes ``sg(min(r, 1+eps_high)) A logp``:
    same gradient; our form changes the value only by a term without gradient, so it reads as the
    truncated importance-weighted advantage and stays finite as ``logp -> -inf``. MiniMax-M1 tunes
    ``eps_high`` and sets no lower bound; the default 0.28 is GRPO's upper clip.

    ``cap`` sets ``c`` directly instead (``eps_high`` is then unused): DPPO's own CISPO
    (sail-sg/Stable-RL ``core_algos.py``, ``loss_mode = "pg_no_mask"``, the sanity test's
    "CISPO (PG-TIS)") caps the detached ratio at ``clip_ratio_c``, 10 by default, not at
    ``1 + eps_high``: ``get("cispo", cap=10)``.
    """

    name: ClassVar[str] = "cispo"
    formula: ClassVar[Formula] = Formula(
        "sg(min(r, 1+eps_high)) * A * log pi",
        "min(r, 1+eps_high) / r",
        "clipped, stop-gradient importance weight",
        "MiniMax 2025, MiniMax-M1 (arXiv:2506.13585)",
    )
    eps_high: float = 0.28
    cap: float | None = None

    def __post_init__(self):
        self._check_positive("eps_high", "cap")

    @property
    def ratio_cap(self) -> float:
        """The cap ``c`` on the detached ratio: ``cap``, or ``1 + eps_high``."""
        return 1.0 + self.eps_high if self.cap is None else float(self.cap)

    def _surrogate(self, t):
        c = t.xp.minimum(t.ratio, self.ratio_cap)
        return stop_gradient(c * t.advantage) * t.unit()

    def _weight(self, t):
        cap = self.ratio_cap
        return cap / t.xp.maximum(t.ratio, cap)


@register
@dataclass(frozen=True)
class SPO(Objective):
    """Simple Policy Optimization (Xie et al. 2024): a quadratic penalty on the ratio.

    ``J = r A - abs(A) (r-1)^2 / (2 eps)``;  ``w = 1 - sign(A) (r-1) / eps``.
    Per-token maximiser ``r* = 1 + sign(A) eps``. The weight is unbounded: for a rare token
    (``mu -> 0``) any fixed shift ``pi - mu`` makes ``r`` and so ``abs(w)`` grow like ``1/mu``.
    Default ``eps = 12.5``, the DRPO paper's setting for SPO (Xie et al. use 0.2).
    """

    name: ClassVar[str] = "spo"
    formula: ClassVar[Formula] = Formula(
        "r*A - abs(A) * (r-1)^2 / (2*eps)",
        "1 - sign(A)(r-1)/eps",
        "quadratic penalty on the ratio",
        "Xie et al. 2024, Simple Policy Optimization (arXiv:2401.16025)",
    )
    eps: float = 12.5

    def __post_init__(self):
        self._check_positive("eps")

    def _surrogate(self, t):
        return t.ratio * t.advantage - t.abs_adv * t.ratio_minus_one**2 / (2.0 * self.eps)

    def _weight(self, t):
        return 1.0 - t.sign_adv * t.ratio_minus_one / self.eps


@register
@dataclass(frozen=True)
class DPPOTV(_DeltaPair, Objective):
    """DPPO with the Binary-TV trust region (Qi et al. 2026): mask by absolute probability shift.

    ``M = 0`` where ``A>0 and pi-mu > delta_high`` or ``A<0 and pi-mu < -delta_low``, else 1;
    ``J = sg(r M A) * u`` (``u`` as in :class:`CISPO`; the paper's ``sg(r) M A logp`` has the same
    gradient); ``w = M``. ``delta`` sets both thresholds unless ``delta_low`` / ``delta_high``
    are given. Default 0.15, the DRPO paper's BF16 setting (0.6 for FP8 end to end).
    """

    name: ClassVar[str] = "dppo_tv"
    formula: ClassVar[Formula] = Formula(
        "sg(r) * M * A * log pi",
        "M = 0 if sign(A)(pi - mu) > delta else 1",
        "hard mask on the absolute shift",
        "Qi et al. 2026, DPPO (Binary-TV)",
    )
    delta: float = 0.15
    delta_low: float | None = None
    delta_high: float | None = None

    def __post_init__(self):
        self._check_positive("delta", "delta_low", "delta_high")

    def _keep(self, t):
        return _tv_keep(t, self.lo, self.hi)

    def _surrogate(self, t):
        return stop_gradient(t.ratio * t.as_weight(self._keep(t)) * t.advantage) * t.unit()

    def _weight(self, t):
        return t.as_weight(self._keep(t))


@register
@dataclass(frozen=True)
class DPPOKL(DPPOTV):
    """DPPO with the Binary-KL trust region (Qi et al. 2026).

    ``D = mu log(mu/pi) + (1-mu) log((1-mu)/(1-pi))`` (:func:`binary_kl`); ``M = 0`` where
    ``A>0, pi>mu, D > delta_high`` or ``A<0, pi<mu, D > delta_low``; surrogate and weight as
    :class:`DPPOTV`. Default ``delta = 0.05``, the DRPO paper's setting.
    """

    name: ClassVar[str] = "dppo_kl"
    formula: ClassVar[Formula] = Formula(
        "sg(r) * M * A * log pi",
        "M = 0 if sign(A)(pi - mu) > 0 and D(mu, pi) > delta else 1",
        "hard mask on the binary KL",
        "Qi et al. 2026, DPPO (Binary-KL)",
    )
    delta: float = 0.05
    delta_low: float | None = None
    delta_high: float | None = None

    def _keep(self, t):
        d = _binary_kl(t.xp, t.logp_behavior, stop_gradient(t.logp), t.mu)
        a, s = t.advantage, t.shift
        return ~(((a > 0) & (s > 0) & (d > self.hi)) | ((a < 0) & (s < 0) & (d > self.lo)))


@register
@dataclass(frozen=True)
class DRPO(Objective):
    """Divergence Regularized Policy Optimization (Yao et al. 2026, Eq. 8 and Table 1).

    ``J = r A - abs(A) mu (r-1)^2 / (2 delta)``;  ``w = 1 - sign(A) (pi - mu) / delta``.

    The penalty's expectation under ``mu`` is ``sum_a abs(A) (pi - mu)^2 / (2 delta)``: a
    squared l2 distance, the same Binary-TV geometry as DPPO but smooth. The weight always lies
    in ``[1 - 1/delta, 1 + 1/delta]``; it reaches 0 at ``abs(pi - mu) = delta`` in the direction
    of the advantage and turns negative (corrective) beyond; the per-token maximiser is
    ``pi* = mu + sign(A) delta``. Default ``delta = 12.5``, the paper's setting, where the weight
    stays in ``[0.92, 1.08]``.
    """

    name: ClassVar[str] = "drpo"
    formula: ClassVar[Formula] = Formula(
        "r*A - abs(A) * mu * (r-1)^2 / (2*delta)",
        "1 - sign(A)(pi - mu)/delta",
        "quadratic penalty on the absolute shift",
        "Yao et al. 2026, DRPO (Eq. 8 and Table 1)",
    )
    delta: float = 12.5

    def __post_init__(self):
        self._check_positive("delta")

    def _surrogate(self, t):
        return t.ratio * t.advantage - t.abs_adv * _drpo_regulariser(t, self.delta)

    def _weight(self, t):
        return _drpo_weight(t, self.delta)


@register
@dataclass(frozen=True)
class MaskDRPO(_DeltaPair, Objective):
    """Ablation of Yao et al. 2026: DRPO's penalty only on tokens DPPO-TV would mask.

    With ``M`` the :class:`DPPOTV` keep-mask at thresholds ``delta_low`` / ``delta_high``:
    ``J = r A - (1-M) abs(A) mu (r-1)^2 / (2 delta)``; ``w = 1`` inside the region and DRPO's
    weight outside it. Defaults are the two parents' (chosen form): ``delta = 12.5`` for the
    penalty as in :class:`DRPO`, region thresholds 0.15 as in :class:`DPPOTV`.
    """

    name: ClassVar[str] = "mask_drpo"
    formula: ClassVar[Formula] = Formula(
        "r*A - (1-M) * abs(A) * mu * (r-1)^2 / (2*delta)",
        "1 if M else 1 - sign(A)(pi - mu)/delta",
        "DRPO's penalty only where DPPO-TV masks",
        "Yao et al. 2026, ablation (form chosen here)",
    )
    delta: float = 12.5
    delta_low: float | None = 0.15
    delta_high: float | None = 0.15

    def __post_init__(self):
        self._check_positive("delta", "delta_low", "delta_high")

    def _surrogate(self, t):
        outside = 1.0 - t.as_weight(_tv_keep(t, self.lo, self.hi))
        return t.ratio * t.advantage - outside * t.abs_adv * _drpo_regulariser(t, self.delta)

    def _weight(self, t):
        return t.xp.where(_tv_keep(t, self.lo, self.hi), t.ones(), t.full(_drpo_weight(t, self.delta)))


@register
@dataclass(frozen=True)
class DRPONoAbsAdv(Objective):
    """Ablation of Yao et al. 2026: DRPO without the ``abs(A)`` factor on the penalty (chosen form).

    ``J = r A - c mu (r-1)^2 / (2 delta)``: a plain divergence penalty with one coefficient ``c``
    for every token, whose strength no longer follows the size of each token's advantage. ``c`` is
    ``adv_scale``: a number, or ``"batch"`` (:data:`BATCH_SCALE`), the batch's mean ``abs(A)``
    over its tokens. The batch mean is the fair ablation: the penalty keeps DRPO's average strength
    and loses only its distribution over tokens, whereas ``c = 1`` with ``abs(A) <= 1`` is also a
    stronger penalty. With ``"batch"`` the batch is the last two axes of the call (samples x
    tokens), one batch per index of any leading axes (independent runs, as the simulator and the
    arena stack them); a 1-D call is one batch. Every token of the call enters the mean, so
    :func:`policy_loss` refuses it on a padded batch.

    Its gradient, ``A r - c r (pi - mu) / delta``, is not zero at ``A = 0``, so the weight
    ``w = 1 - c (pi - mu) / (A delta)`` has no finite value there: :meth:`weight` evaluates it with
    ``abs(A)`` floored at ``adv_floor`` (sign of 0 taken as +), and :meth:`grad_logp` gives the exact
    gradient everywhere.
    """

    name: ClassVar[str] = "drpo_no_abs_adv"
    formula: ClassVar[Formula] = Formula(
        "r*A - c * mu * (r-1)^2 / (2*delta)",
        "1 - c (pi - mu) / (A delta)",
        "DRPO without the abs(A) factor on its penalty (c: adv_scale, or the batch's mean abs(A))",
        "Yao et al. 2026, ablation (form chosen here)",
    )
    delta: float = 12.5
    adv_scale: float | str = 1.0
    adv_floor: float = 1e-6

    def __post_init__(self):
        self._check_positive("delta", "adv_floor")
        if self.adv_scale != BATCH_SCALE:
            if isinstance(self.adv_scale, str):
                raise ValueError(f"{self.name}: adv_scale must be a finite number > 0 or {BATCH_SCALE!r}, "
                                 f"got {self.adv_scale!r}")
            self._check_positive("adv_scale")

    @property
    def uses_batch_statistic(self) -> bool:
        return self.adv_scale == BATCH_SCALE

    def _scale(self, t):
        """``c``: ``adv_scale``, or the batch's mean ``abs(A)`` (class docstring), a constant."""
        if not self.uses_batch_statistic:
            return self.adv_scale
        xp, abs_adv = t.xp, stop_gradient(t.full(t.abs_adv))
        axes = tuple(range(max(abs_adv.ndim - 2, 0), abs_adv.ndim))
        # summed in float64, so NumPy and torch (whose float32 sums differ in order) agree
        return xp.astype(xp.mean(xp.astype(abs_adv, xp.float64), axis=axes, keepdims=True), abs_adv.dtype)

    def _surrogate(self, t):
        return t.ratio * t.advantage - self._scale(t) * _drpo_regulariser(t, self.delta)

    def _weight(self, t):
        xp, a = t.xp, t.advantage
        sign_nonzero = xp.where(a < 0, -xp.ones_like(a), xp.ones_like(a))
        a_safe = sign_nonzero * xp.maximum(xp.abs(a), xp.full_like(a, self.adv_floor))
        return 1.0 - self._scale(t) * t.shift / (a_safe * self.delta)

    def _grad_logp(self, t):
        return t.ratio * (t.advantage - self._scale(t) * t.shift / self.delta)


@register
@dataclass(frozen=True)
class DRPOKL(Objective):
    """Ablation of Yao et al. 2026: the penalty built from the sampled token's KL estimate (chosen form).

    ``J = r A - abs(A) log(mu/pi) / delta``, the k1 estimate of ``KL(mu || pi)`` in place of DRPO's
    quadratic; ``w = 1 + sign(A) / (r delta)`` (with ``1/r`` capped at ``e^20`` by the tangent
    continuation of ``log r``, module docstring). Per token ``log(mu/pi)`` is not a divergence
    (it can be negative): for ``A > 0`` it only amplifies, for ``A < 0`` it acts as a log
    barrier that turns corrective once ``r < 1/delta``. Even on-policy its weight is
    ``1 + sign(A)/delta``, not 1: the k1 penalty's gradient vanishes at ``pi = mu`` only in
    expectation over ``a ~ mu``, never token by token.
    """

    name: ClassVar[str] = "drpo_kl"
    formula: ClassVar[Formula] = Formula(
        "r*A - abs(A) * log(mu/pi) / delta",
        "1 + sign(A) / (r delta)",
        "the sampled token's k1 KL estimate as penalty",
        "Yao et al. 2026, ablation (form chosen here)",
    )
    delta: float = 12.5

    def __post_init__(self):
        self._check_positive("delta")

    def _surrogate(self, t):
        return t.ratio * t.advantage + t.abs_adv * t.log_ratio_ext / self.delta

    def _weight(self, t):
        return 1.0 + t.sign_adv * t.inv_ratio_capped / self.delta


@register
@dataclass(frozen=True)
class DRPOTV(Objective):
    """Ablation of Yao et al. 2026: the penalty built from the sampled token's TV (chosen form).

    ``J = r A - abs(A) abs(pi - mu) / delta``, the unsquared shift; ``w = 1 - sign(A) sign(pi - mu) mu / delta``.
    Bounded like DRPO's, but not continuous at ``pi = mu`` and not zero at a boundary.
    """

    name: ClassVar[str] = "drpo_tv"
    formula: ClassVar[Formula] = Formula(
        "r*A - abs(A) * abs(pi - mu) / delta",
        "1 - sign(A) sign(pi - mu) mu / delta",
        "the sampled token's TV as penalty",
        "Yao et al. 2026, ablation (form chosen here)",
    )
    delta: float = 12.5

    def __post_init__(self):
        self._check_positive("delta")

    def _surrogate(self, t):
        return t.ratio * t.advantage - t.abs_adv * t.xp.abs(t.shift) / self.delta

    def _weight(self, t):
        return 1.0 - t.sign_adv * t.xp.sign(t.shift) * t.mu / self.delta


@register
@dataclass(frozen=True)
class DRPOK3(Objective):
    """Ablation of Yao et al. 2026: the penalty built from the sampled token's K3 estimate (chosen form).

    ``J = r A - abs(A) ((r-1) - log r) / delta`` (Schulman's k3 estimate of ``KL(mu || pi)``,
    non-negative per token); ``w = 1 - sign(A) (1 - 1/r) / delta`` (``1/r`` capped at ``e^20``).
    Near ``r = 1`` it equals SPO's penalty with ``eps = delta``.
    """

    name: ClassVar[str] = "drpo_k3"
    formula: ClassVar[Formula] = Formula(
        "r*A - abs(A) * ((r-1) - log r) / delta",
        "1 - sign(A) (1 - 1/r) / delta",
        "the sampled token's k3 KL estimate as penalty",
        'Yao et al. 2026, ablation (form chosen here); k3: Schulman 2020, "Approximating KL divergence"',
    )
    delta: float = 12.5

    def __post_init__(self):
        self._check_positive("delta")

    def _surrogate(self, t):
        k3 = t.ratio_minus_one - t.log_ratio_ext
        return t.ratio * t.advantage - t.abs_adv * k3 / self.delta

    def _weight(self, t):
        return 1.0 - t.sign_adv * (1.0 - t.inv_ratio_capped) / self.delta


@register
@dataclass(frozen=True)
class PPORareExempt(Objective):
    """DPPO's low-``mu`` clip ablation: GRPO's ratio clip, from which rare tokens are exempt.

    The clip is active as in :class:`GRPO` (``A>0, r>1+eps_high`` or ``A<0, r<1-eps_low``) but
    only on tokens the engine found likely enough: ``mu >= mu_high`` on the ``A>0`` side and
    ``mu >= mu_low`` on the ``A<0`` side; a rarer token keeps its gradient whatever its ratio.
    ``J = clip(r, 1-eps_low, 1+eps_high) A`` where the clip is active, else ``r A``; ``w = 0``
    where it is active, else 1. A threshold of 0 exempts nothing on its side.

    Source: sail-sg/Stable-RL ``core_algos.py``, ``loss_mode`` ``ppo_ablation_positive``
    (``mu_low = 0``), ``ppo_ablation_negative`` (``mu_high = 0``) and ``ppo_ablation_both``,
    the ablations of the ratio clip in DPPO's code (Qi et al. 2026). There the
    ratio clips are fixed at 0.2 and 0.28 and the ``mu`` thresholds are the config's
    ``clip_ratio_low`` / ``clip_ratio_high``; the defaults here are the values those take in
    GRPO's default config (0.2, 0.28). Stable-RL writes every masked loss as
    ``sg(min(r, 10)) M A log pi``; the gradient is the same except where ``r > 10``.
    """

    name: ClassVar[str] = "ppo_rare_exempt"
    formula: ClassVar[Formula] = Formula(
        "clip(r, 1-eps_low, 1+eps_high)*A if C else r*A",
        "0 if C else 1; C: the clip is active and mu >= mu_high (A>0) or mu_low (A<0)",
        "ratio clipping that exempts rare tokens",
        "Qi et al. 2026, DPPO ablation (sail-sg/Stable-RL ppo_ablation_*)",
    )
    eps_low: float = 0.2
    eps_high: float = 0.28
    mu_low: float = 0.2
    mu_high: float = 0.28

    def __post_init__(self):
        self._check_positive("eps_low", "eps_high")
        for n in ("mu_low", "mu_high"):
            v = getattr(self, n)
            if not (isinstance(v, (int, float)) and 0.0 <= v <= 1.0):
                raise ValueError(f"{self.name}: parameter {n} must be a probability in [0, 1], got {v!r}")

    def _clipped(self, t):
        a, r, mu = t.advantage, t.ratio, t.mu
        return (((a > 0) & (r > 1.0 + self.eps_high) & (mu >= self.mu_high))
                | ((a < 0) & (r < 1.0 - self.eps_low) & (mu >= self.mu_low)))

    def _surrogate(self, t):
        xp, r, a = t.xp, t.ratio, t.advantage
        return xp.where(self._clipped(t), xp.clip(r, 1.0 - self.eps_low, 1.0 + self.eps_high) * a, r * a)

    def _weight(self, t):
        return t.as_weight(~self._clipped(t))


# --------------------------------------------------------------------------------------------
# Three policies: objectives anchored to the trainer's recomputed policy pi_old
# --------------------------------------------------------------------------------------------
#
# The engine samples with mu; before the update the trainer recomputes the rollout's log-probs,
# pi_old (the same parameters, its own numerics); the update moves pi. Every weight below stays
# relative to r = pi / mu, the ratio of the data's true sampling policy, so the lens
# dJ/dlogp = A r w is the same for every objective; rho = pi / pi_old is the ratio a trust region
# anchored to pi_old reads, and b = pi_old / mu the engine's gap at rollout time (r = rho b).


def _truncated_is(t: TokenTerms, cap: float) -> Array:
    """``min(r, c) / r = c / max(r, c)``: the weight of a detached importance ratio truncated at ``c``."""
    return cap / t.xp.maximum(t.ratio, cap)


@register
@dataclass(frozen=True)
class MiniRL(Objective):
    """MiniRL as DPPO's code runs it: PPO's clip anchored to ``pi_old``, importance-weighted to ``mu``.

    ``M = 0`` where the clip on ``rho = pi / pi_old`` is active (``A>0, rho>1+eps_high`` or
    ``A<0, rho<1-eps_low``), else 1; ``J = sg(min(r, cap) M A) * u`` (``u`` as in :class:`CISPO`),
    ``w = M min(r, cap) / r``. The trust region moves with the recomputed anchor, so it never sees
    the engine's gap ``pi_old / mu``; the importance weight corrects it, truncated at ``cap``.

    Source: sail-sg/Stable-RL ``core_algos.py``, ``loss_mode = "ppo_recompute"``, labelled MiniRL in
    DPPO's sanity test (Qi et al. 2026): the mask from ``old_ratio``, the detached ratio to the
    rollout policy clamped at ``clip_ratio_c`` (10); clip ranges 0.2 / 0.28 as its GRPO.
    """

    name: ClassVar[str] = "minirl"
    formula: ClassVar[Formula] = Formula(
        "sg(min(r, cap)) * M(pi/pi_old) * A * log pi",
        "M * min(r, cap) / r; M = 0 if the clip on pi/pi_old is active else 1",
        "ratio clipping anchored to the recomputed trainer policy, truncated IS to the engine",
        "Qi et al. 2026, DPPO's sanity test (sail-sg/Stable-RL ppo_recompute)",
    )
    eps_low: float = 0.2
    eps_high: float = 0.28
    cap: float = 10.0

    def __post_init__(self):
        self._check_positive("eps_low", "eps_high", "cap")

    @property
    def needs_old(self) -> bool:
        return True

    def _keep(self, t):
        return t.as_weight(_ratio_clip_keep(t.old, self.eps_low, self.eps_high))

    def _surrogate(self, t):
        return stop_gradient(t.xp.minimum(t.ratio, self.cap) * self._keep(t) * t.advantage) * t.unit()

    def _weight(self, t):
        return self._keep(t) * _truncated_is(t, self.cap)


@register
@dataclass(frozen=True)
class DPPOTVRecompute(DPPOTV):
    """DPPO-TV's recompute mode: the Binary-TV mask on ``pi - pi_old`` instead of ``pi - mu``.

    ``M = 0`` where ``A>0, pi-pi_old > delta_high`` or ``A<0, pi-pi_old < -delta_low``;
    ``J = sg(r M A) * u`` and ``w = M`` with ``r = pi / mu``, as :class:`DPPOTV`. Source:
    sail-sg/Stable-RL ``core_algos.py``, ``dppo_binary_tv_recompute`` (Qi et al. 2026), which also
    clamps the detached ratio at ``clip_ratio_c = 10``; the gradient is the same where ``r <= 10``.
    """

    name: ClassVar[str] = "dppo_tv_recompute"
    formula: ClassVar[Formula] = Formula(
        "sg(r) * M * A * log pi",
        "M = 0 if sign(A)(pi - pi_old) > delta else 1",
        "hard mask on the absolute shift from the recomputed trainer policy",
        "Qi et al. 2026, DPPO (sail-sg/Stable-RL dppo_binary_tv_recompute)",
    )

    @property
    def needs_old(self) -> bool:
        return True

    def _keep(self, t):
        return _tv_keep(t.old, self.lo, self.hi)


@register
@dataclass(frozen=True)
class DPPOKLRecompute(DPPOKL):
    """DPPO-KL's recompute mode: the Binary-KL mask between ``pi_old`` and ``pi`` instead of ``mu``
    and ``pi``; otherwise :class:`DPPOKL`. Source: sail-sg/Stable-RL ``dppo_binary_kl_recompute``."""

    name: ClassVar[str] = "dppo_kl_recompute"
    formula: ClassVar[Formula] = Formula(
        "sg(r) * M * A * log pi",
        "M = 0 if sign(A)(pi - pi_old) > 0 and D(pi_old, pi) > delta else 1",
        "hard mask on the binary KL from the recomputed trainer policy",
        "Qi et al. 2026, DPPO (sail-sg/Stable-RL dppo_binary_kl_recompute)",
    )

    @property
    def needs_old(self) -> bool:
        return True

    def _keep(self, t):
        return super()._keep(t.old)


# --------------------------------------------------------------------------------------------
# DPPO's Top-K divergence: the trust region measured over whole distributions
# --------------------------------------------------------------------------------------------


def topk_divergences(logp_trainer: Array, topk_ids: Array, topk_logp_engine: Array) -> tuple[Array, Array]:
    """DPPO's Top-K approximation of the divergence between the engine's and the trainer's next-token
    distributions at each position: ``(tv, kl)``, each of shape ``[...]``.

    ``logp_trainer [..., V]`` is the trainer's log-softmax at each position; ``topk_ids [..., K]``
    and ``topk_logp_engine [..., K]`` are the engine's ``K`` most likely tokens there and their
    log-probs (what an inference engine returns with ``logprobs=K``). The two distributions are
    compared over ``K + 1`` buckets: the engine's top ``K`` tokens and the rest of the vocabulary as
    one, so with ``P`` the engine's and ``Q`` the trainer's::

        tv = (sum_k abs(p_k - q_k) + abs(p_rest - q_rest)) / 2
        kl = sum_k p_k log(p_k / q_k) + p_rest log(p_rest / q_rest)       (KL(P || Q))

    Source: sail-sg/Stable-RL ``verl/workers/actor/utils.py``, ``compute_topk_kl`` (Qi et al. 2026),
    written here from its formula; theirs floors the bucket masses at 1e-12, here ``0 log 0 = 0`` and
    a bucket the engine fills where the trainer has no mass gives an infinite KL (a true infinity,
    above any threshold). The rest masses are ``1 - sum_k`` computed as ``-expm1(logsumexp)``.
    A constant of the update (no gradient): it only masks.
    """
    xp, (lq, lp_k) = as_float_arrays(logp_trainer, topk_logp_engine)
    lq, lp_k = stop_gradient(lq), stop_gradient(lp_k)
    if is_torch(xp):
        torch = sys.modules["torch"]
        lq_k = torch.gather(lq, -1, torch.as_tensor(topk_ids, device=lq.device, dtype=torch.int64))
        lp_mass, lq_mass = torch.logsumexp(lp_k, dim=-1), torch.logsumexp(lq_k, dim=-1)
    else:
        lq_k = np.take_along_axis(lq, np.asarray(topk_ids, dtype=np.int64), axis=-1)
        lp_mass, lq_mass = np.logaddexp.reduce(lp_k, axis=-1), np.logaddexp.reduce(lq_k, axis=-1)
    p_k, q_k = xp.exp(lp_k), xp.exp(lq_k)
    # the rest's mass, 1 - sum_k, without cancellation (and never below 0 where rounding says > 1)
    p_rest = -xp.expm1(xp.minimum(lp_mass, xp.zeros_like(lp_mass)))
    q_rest = -xp.expm1(xp.minimum(lq_mass, xp.zeros_like(lq_mass)))
    tv = (xp.sum(xp.abs(p_k - q_k), axis=-1) + xp.abs(p_rest - q_rest)) / 2.0
    with _numpy_errors_ignored(xp):
        top = xp.sum(xp.where(p_k > 0, p_k * (lp_k - lq_k), xp.zeros_like(p_k)), axis=-1)
        rest = xp.where(p_rest > 0, p_rest * (xp.log(p_rest) - xp.log(q_rest)), xp.zeros_like(p_rest))
    return tv, top + rest


@register
@dataclass(frozen=True)
class DPPOTopKTV(DPPOTV):
    """DPPO's Top-K TV mode: the trust region on the TV between the engine's and the trainer's whole
    next-token distributions (Top-K approximation, :func:`topk_divergences`), not on the sampled
    token's own shift.

    ``M = 0`` where ``A>0, pi>mu, D > delta_high`` or ``A<0, pi<mu, D > delta_low`` with ``D`` the
    position's ``topk_tv`` (a per-token input); ``J = sg(r M A) * u``, ``w = M`` as :class:`DPPOTV`.
    Source: sail-sg/Stable-RL ``core_algos.py``, ``dppo_topk_tv`` (which clamps the detached ratio
    at 10; the gradient is the same where ``r <= 10``). Default ``delta`` 0.15, DPPO-TV's.
    """

    name: ClassVar[str] = "dppo_topk_tv"
    formula: ClassVar[Formula] = Formula(
        "sg(r) * M * A * log pi",
        "M = 0 if sign(A)(pi - mu) > 0 and TV_topK(mu, pi) > delta else 1",
        "hard mask on the Top-K TV of the whole next-token distributions",
        "Qi et al. 2026, DPPO (sail-sg/Stable-RL dppo_topk_tv)",
    )
    column: ClassVar[str] = "topk_tv"

    @property
    def required_columns(self) -> tuple[str, ...]:
        return (self.column,)

    def _keep(self, t):
        d, a, s = t.column(self.column), t.advantage, t.shift
        return ~(((a > 0) & (s > 0) & (d > self.hi)) | ((a < 0) & (s < 0) & (d > self.lo)))


@register
@dataclass(frozen=True)
class DPPOTopKKL(DPPOTopKTV):
    """DPPO's Top-K KL mode: :class:`DPPOTopKTV` with the position's ``topk_kl``, ``KL(mu || pi)``
    over the Top-K buckets (:func:`topk_divergences`). Source: sail-sg/Stable-RL ``dppo_topk_kl``.
    Default ``delta`` 0.05, DPPO-KL's."""

    name: ClassVar[str] = "dppo_topk_kl"
    formula: ClassVar[Formula] = Formula(
        "sg(r) * M * A * log pi",
        "M = 0 if sign(A)(pi - mu) > 0 and KL_topK(mu || pi) > delta else 1",
        "hard mask on the Top-K KL of the whole next-token distributions",
        "Qi et al. 2026, DPPO (sail-sg/Stable-RL dppo_topk_kl)",
    )
    column: ClassVar[str] = "topk_kl"
    delta: float = 0.05


# --------------------------------------------------------------------------------------------
# Corrections of the engine's gap b = pi_old / mu, composable with any objective
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Correction:
    """A correction of the training-inference gap: a constant factor ``c`` per token, a function of
    ``b = pi_old / mu`` (of one token, or of its whole sequence).

    :class:`Corrected` evaluates an objective anchored to ``pi_old`` and multiplies it by ``sg(c)``.
    Subclasses give ``log c`` (``-inf`` for a masked token or sequence) from the terms.
    """

    name: ClassVar[str] = ""
    level: ClassVar[str] = "token"
    formula: ClassVar[str] = ""
    source: ClassVar[str] = ""

    def log_factor(self, t: TokenTerms) -> Array:
        raise NotImplementedError

    @property
    def params(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def __str__(self) -> str:
        args = ", ".join(f"{k}={v}" for k, v in self.params.items() if v is not None)
        return f"{self.name}({args})"

    def _check_positive(self, *names: str) -> None:
        _check_positive(self, f"correction {self.name}", names)


_CORRECTIONS: dict[str, type[Correction]] = {}


def _register_correction(cls: type[Correction]) -> type[Correction]:
    _CORRECTIONS[cls.name] = cls
    return cls


def corrections() -> list[str]:
    """Names of every correction :func:`get` composes with an objective (``correction=``)."""
    return list(_CORRECTIONS)


def _log_keep(xp: Any, keep: Array, log_c: Array) -> Array:
    """``log c`` where ``keep``, ``-inf`` (``c = 0``) elsewhere."""
    return xp.where(keep, log_c, xp.full_like(log_c, -math.inf))


@dataclass(frozen=True)
class _CappedCorrection(Correction):
    """A correction with one cap on the gap (default 2, verl's example threshold)."""

    cap: float = 2.0

    def __post_init__(self):
        self._check_positive("cap")


@_register_correction
@dataclass(frozen=True)
class PlainIS(Correction):
    """Plain importance sampling of the gap: ``c = b``. With PPO's clip this is decoupled PPO
    (Hilton et al. 2022, "Batch size-invariance for policy optimization", arXiv:2110.00641)."""

    name: ClassVar[str] = "is"
    formula: ClassVar[str] = "c = pi_old/mu"
    source: ClassVar[str] = "Hilton et al. 2022 (arXiv:2110.00641), decoupled PPO"

    def log_factor(self, t):
        return t.log_behavior_ratio


@_register_correction
@dataclass(frozen=True)
class TokenTIS(_CappedCorrection):
    """Token-level truncated importance sampling: ``c = min(b, cap)``.

    Yao, Liu et al. 2025, "Your efficient RL framework secretly brings you off-policy RL training"
    (the TIS blog, fengyao.notion.site/off-policy-rl); verl's ``rollout_is = "token"`` (its
    ``docs/algo/rollout_corr_math.md``, decoupled mode). Default cap 2, verl's example threshold.
    """

    name: ClassVar[str] = "tis"
    formula: ClassVar[str] = "c = min(pi_old/mu, cap)"
    source: ClassVar[str] = "Yao, Liu et al. 2025 (TIS blog); verl rollout_is='token'"
    def log_factor(self, t):
        return t.xp.minimum(t.log_behavior_ratio, math.log(self.cap))


@_register_correction
@dataclass(frozen=True)
class SequenceTIS(_CappedCorrection):
    """Sequence-level truncated importance sampling: ``c = min(prod_t b_t, cap)`` for every token
    of the sequence (verl's ``rollout_is = "sequence"``; Liu, Li et al. 2025, "When speed kills
    stability", richardli.xyz/rl-collapse). Default cap 2."""

    name: ClassVar[str] = "seq_tis"
    level: ClassVar[str] = "sequence"
    formula: ClassVar[str] = "c = min(prod_t pi_old/mu, cap)"
    source: ClassVar[str] = "Liu, Li et al. 2025 (When speed kills stability); verl rollout_is='sequence'"
    def log_factor(self, t):
        return t.xp.minimum(t.seq_sum(t.log_behavior_ratio), math.log(self.cap))


@_register_correction
@dataclass(frozen=True)
class SequenceMIS(_CappedCorrection):
    """Sequence-level masked importance sampling: ``c = B`` if ``B <= cap`` else 0, with
    ``B = prod_t b_t``: a sequence whose gap is too large is dropped rather than truncated
    (Liu, Li et al. 2025, "When speed kills stability", MIS; verl's sequence-level rejection
    sampling with IS weights). Default cap 2."""

    name: ClassVar[str] = "seq_mis"
    level: ClassVar[str] = "sequence"
    formula: ClassVar[str] = "c = B if B <= cap else 0; B = prod_t pi_old/mu"
    source: ClassVar[str] = "Liu, Li et al. 2025 (When speed kills stability), MIS"
    def log_factor(self, t):
        log_b = t.seq_sum(t.log_behavior_ratio)
        return _log_keep(t.xp, log_b <= math.log(self.cap), log_b)


@_register_correction
@dataclass(frozen=True)
class GeometricMIS(Correction):
    """The geometric-mean variant of sequence masking: keep a sequence (``c = 1``) only if the
    geometric mean of its ``b_t``, ``exp(mean_t log b_t)``, lies in ``[lower, upper]``; drop it
    (``c = 0``) otherwise. Length-normalised, so long sequences are not dropped for their length.
    verl's ``rollout_rs = "geometric"`` (rejection only, no IS weight; its documentation gives
    thresholds of 1.0001 to 1.001). Default ``upper = 1.001``, ``lower = 1 / upper``.
    """

    name: ClassVar[str] = "geo_mis"
    level: ClassVar[str] = "sequence"
    formula: ClassVar[str] = "c = 1 if lower <= exp(mean_t log(pi_old/mu)) <= upper else 0"
    source: ClassVar[str] = "Liu, Li et al. 2025 (When speed kills stability); verl rollout_rs='geometric'"
    upper: float = 1.001
    lower: float | None = None

    def __post_init__(self):
        self._check_positive("upper", "lower")
        if not self.upper > 1.0 or not self.lo < 1.0:
            raise ValueError(f"correction {self.name}: need lower < 1 < upper, got lower={self.lo}, upper={self.upper}")

    @property
    def lo(self) -> float:
        return 1.0 / self.upper if self.lower is None else self.lower

    def log_factor(self, t):
        g = t.seq_mean(t.log_behavior_ratio)
        keep = (g >= math.log(self.lo)) & (g <= math.log(self.upper))
        return _log_keep(t.xp, keep, t.xp.zeros_like(g))


@_register_correction
@dataclass(frozen=True)
class IcePop(Correction):
    """IcePop: a two-sided token mask on the gap, ``c = b`` if ``alpha <= b <= beta`` else 0.

    Ling Team 2025, Ring-1T (arXiv:2510.18855) and the blog "Small leak can sink a great ship:
    boost RL training on MoE with IcePop"; defaults ``alpha = 0.5``, ``beta = 5``, the values
    reported with IcePop (PrimeIntellect's prime-rl uses ``alpha = 0.2``).
    """

    name: ClassVar[str] = "icepop"
    formula: ClassVar[str] = "c = pi_old/mu if alpha <= pi_old/mu <= beta else 0"
    source: ClassVar[str] = "Ling Team 2025, Ring-1T (arXiv:2510.18855), IcePop"
    alpha: float = 0.5
    beta: float = 5.0

    def __post_init__(self):
        self._check_positive("alpha", "beta")
        if not self.alpha < 1.0 < self.beta:
            raise ValueError(f"correction {self.name}: need alpha < 1 < beta, got alpha={self.alpha}, beta={self.beta}")

    def log_factor(self, t):
        log_b = t.log_behavior_ratio
        return _log_keep(t.xp, (log_b >= math.log(self.alpha)) & (log_b <= math.log(self.beta)), log_b)


@dataclass(frozen=True)
class Corrected(Objective):
    """An objective anchored to ``pi_old`` and corrected for the engine's gap: ``J = sg(c) J_base(pi, pi_old)``.

    The base objective sees ``pi_old`` where it would see ``mu`` (its ratio is ``rho = pi / pi_old``,
    its shift ``pi - pi_old``); the correction's factor ``c`` (:class:`Correction`) re-weights it
    towards the data's sampling policy ``mu``. Its gradient is ``c A rho w_base``, so relative to
    ``r = pi / mu``: ``w = w_base c / b`` with ``b = pi_old / mu`` (``rho / r`` after the caps).
    Built by :func:`get`, e.g. ``get("grpo", correction="tis", cap=2)``; its ``name`` and
    ``params`` are the base's plus the correction's, so ``get(o.name, **o.params)`` rebuilds it.
    """

    base: Objective
    correction: Correction

    def __post_init__(self):
        if self.base.needs_old:
            raise ValueError(f"{self.base.name} is already anchored to pi_old; a correction composes with an "
                             f"objective anchored to mu, which it re-anchors")
        both = sorted(set(self.base.params) & set(self.correction.params))
        if both:
            raise ValueError(f"{self.base.name} and correction {self.correction.name} both have parameter(s) "
                             f"{', '.join(both)}: one call cannot set them apart")
        if self.base.cross_token and self.correction.level == "token":
            raise ValueError(f"{self.base.name} shares one gradient across each sequence, so a token correction has "
                             f"no per-token meaning for it: use a sequence correction "
                             f"({', '.join(n for n, c in _CORRECTIONS.items() if c.level == 'sequence')}) "
                             f"or gspo_token")

    @property
    def name(self) -> str:  # type: ignore[override]
        return self.base.name

    @property
    def formula(self) -> Formula:  # type: ignore[override]
        f = self.base.formula
        return Formula(f"sg(c) * [{f.surrogate}] at pi_old; {self.correction.formula}",
                       f"c (pi_old/mu)^-1 * [{f.weight}] at pi_old", f"{f.idea}, {self.correction.name} correction",
                       f"{f.source}; {self.correction.source}")

    @property
    def params(self) -> dict[str, Any]:
        return {**self.base.params, "correction": self.correction.name, **self.correction.params}

    def __str__(self) -> str:
        return f"{self.base}+{self.correction}"

    @property
    def needs_old(self) -> bool:
        return True

    @property
    def per_sequence(self) -> bool:
        return self.base.per_sequence or self.correction.level == "sequence"

    @property
    def uses_batch_statistic(self) -> bool:
        return self.base.uses_batch_statistic

    @property
    def cross_token(self) -> bool:
        return self.base.cross_token

    def _log_factor(self, t):
        """``log c``, capped at ``2 LOG_RATIO_MAX`` and at ``log b + 2 LOG_RATIO_MAX`` token by token.

        So ``c <= e^40`` (``c J_base`` stays finite) and ``c / b``, the factor that turns a weight
        relative to ``rho`` into one relative to ``r``, stays below ``e^40``. The caps act only at
        gaps no engine shows: plain IS at ``b > e^40``; a sequence correction on a token whose own
        gap is below ``e^-40 c`` (its ratio ``r = pi/mu`` would otherwise give it an infinite weight).
        """
        xp, log_b = t.xp, t.log_behavior_ratio
        cap = xp.minimum(log_b + 2.0 * LOG_RATIO_MAX, xp.full_like(log_b, 2.0 * LOG_RATIO_MAX))
        return xp.minimum(self.correction.log_factor(t), cap)

    def _surrogate(self, t):
        c = t.xp.exp(self._log_factor(t))
        return stop_gradient(c) * t.full(self.base._surrogate(t.old))

    def _weight(self, t):
        return self.base._weight(t.old) * t.xp.exp(self._log_factor(t) - t.log_behavior_ratio)

    def _grad_logp(self, t):
        return self.base._grad_logp(t.old) * t.xp.exp(self._log_factor(t))


@register
@dataclass(frozen=True)
class DecoupledPPO(PPO):
    """Decoupled PPO (Hilton et al. 2022, arXiv:2110.00641): PPO's clip on ``rho = pi / pi_old``,
    importance-weighted by ``b = pi_old / mu``.

    ``J = b min(rho A, clip(rho, 1-eps_low, 1+eps_high) A)``; ``w = 0`` where the clip on ``rho`` is
    active, else 1 (relative to ``r = rho b``). ``is_cap`` truncates ``b`` at that value (verl's
    decoupled mode with token-level TIS): ``w`` is then ``min(b, cap) / b`` where the clip is
    inactive. The same as ``get("ppo", correction="is")`` (or ``"tis"``): one formula.
    """

    name: ClassVar[str] = "decoupled_ppo"
    formula: ClassVar[Formula] = Formula(
        "(pi_old/mu) * min(rho*A, clip(rho, 1-eps_low, 1+eps_high)*A), rho = pi/pi_old",
        "0 if the clip on rho is active else 1 (times min(b, is_cap)/b with a cap)",
        "PPO's clip anchored to the recomputed policy, importance-weighted to the engine",
        "Hilton et al. 2022, Batch size-invariance for policy optimization (arXiv:2110.00641)",
    )
    is_cap: float | None = None

    def __post_init__(self):
        super().__post_init__()
        self._check_positive("is_cap")
        base = PPO(eps_low=self.eps_low, eps_high=self.eps_high, dual_clip=self.dual_clip)
        # built once (not a field: params and equality stay those of the parameters), so that a
        # formula evaluation constructs nothing (torch.compile traces it, drpo_sim.fused)
        factor = PlainIS() if self.is_cap is None else TokenTIS(cap=self.is_cap)
        object.__setattr__(self, "_inner", Corrected(base, factor))

    @property
    def needs_old(self) -> bool:
        return True

    def _surrogate(self, t):
        return self._inner._surrogate(t)

    def _weight(self, t):
        return self._inner._weight(t)

    def _grad_logp(self, t):
        return self._inner._grad_logp(t)


# --------------------------------------------------------------------------------------------
# Sequence-level ratios (GSPO)
# --------------------------------------------------------------------------------------------


@register
@dataclass(frozen=True)
class GSPO(Objective):
    """Group Sequence Policy Optimization (Zheng et al. 2025, arXiv:2507.18071): the clip on the
    sequence's length-normalised ratio.

    ``s = exp(mean_t log r_t)`` over the sequence's tokens (the geometric mean of its ratios);
    ``J_t = min(s A, clip(s, 1-eps_low, 1+eps_high) A)`` at every token of the sequence, so any of
    the four loss aggregations gives each sequence its one clipped term. ``M = 0`` where the clip
    on ``s`` is active; ``w_t = M s / r_t``. ``J_t`` depends on every ``logp`` of the sequence: the
    weight is the gradient each token receives from the aggregated loss when the advantage is one
    value per sequence (GSPO's), for any aggregation whose coefficient is one value per sequence
    (all four). Defaults 3e-4 / 4e-4, the paper's. The ratio is to ``mu``, the sampling policy.
    """

    name: ClassVar[str] = "gspo"
    formula: ClassVar[Formula] = Formula(
        "min(s*A, clip(s, 1-eps_low, 1+eps_high)*A), s = exp(mean_t log r_t)",
        "M s / r; M = 0 if the clip on s is active else 1",
        "ratio clipping on the sequence's geometric-mean ratio",
        "Zheng et al. 2025, GSPO (arXiv:2507.18071)",
    )
    eps_low: float = 3e-4
    eps_high: float = 4e-4

    def __post_init__(self):
        self._check_positive("eps_low", "eps_high")

    @property
    def per_sequence(self) -> bool:
        return True

    @property
    def cross_token(self) -> bool:
        return self.name == "gspo"  # not its token variant, whose s is detached

    @staticmethod
    def _counted(t):
        """Tokens whose ratio enters ``s`` with its gradient: ``log r >= -LOG_RATIO_MAX``."""
        return t.log_ratio >= -LOG_RATIO_MAX

    def _log_s(self, t):
        """``log s``, the mean of the sequence's log-ratios, each floored at ``-LOG_RATIO_MAX`` (a token
        with ``pi < e^-20 mu`` counts as ``e^-20`` and gets no gradient through ``s``; so
        ``abs(log s - log r) <= 40`` wherever a weight is not 0), with the gradient of ``logp``."""
        xp, lr = t.xp, t.log_ratio
        floored = xp.where(self._counted(t), lr, xp.full_like(stop_gradient(lr), -LOG_RATIO_MAX))
        return t.seq_mean(floored)

    def _keep(self, t, s):
        a = t.advantage
        return ~(((a > 0) & (s > 1.0 + self.eps_high)) | ((a < 0) & (s < 1.0 - self.eps_low)))

    def _surrogate(self, t):
        xp, a = t.xp, t.advantage
        s = xp.exp(self._log_s(t))
        return xp.minimum(s * a, xp.clip(s, 1.0 - self.eps_low, 1.0 + self.eps_high) * a)

    def _weight(self, t):
        xp, log_s = t.xp, stop_gradient(self._log_s(t))
        keep = self._keep(t, xp.exp(log_s)) & self._counted(t)
        return xp.where(keep, xp.exp(xp.where(keep, log_s - t.log_ratio, xp.zeros_like(log_s))), xp.zeros_like(log_s))


@register
@dataclass(frozen=True)
class GSPOToken(GSPO):
    """GSPO-token (Zheng et al. 2025, arXiv:2507.18071, Eq. 13): the sequence ratio as each token's
    value, the token's own gradient.

    ``s_t = sg(s) pi_t / sg(pi_t)`` (value ``s``, derivative ``s`` in ``logp_t``);
    ``J_t = min(s_t A_t, clip(s_t, 1-eps_low, 1+eps_high) A_t)``: each token's gradient comes from
    its own log-prob alone, so the advantage may vary along the sequence; with one advantage per
    sequence it equals :class:`GSPO`'s. ``w_t = M_t s / r_t``, ``M_t`` the clip on ``s`` with the
    sign of ``A_t``.
    """

    name: ClassVar[str] = "gspo_token"
    formula: ClassVar[Formula] = Formula(
        "min(s_t*A, clip(s_t, 1-eps_low, 1+eps_high)*A), s_t = sg(s) pi/sg(pi)",
        "M s / r; M = 0 if the clip on s is active else 1",
        "GSPO's sequence ratio with each token's own gradient",
        "Zheng et al. 2025, GSPO-token (arXiv:2507.18071)",
    )

    def _surrogate(self, t):
        xp, a = t.xp, t.advantage
        s = xp.exp(stop_gradient(self._log_s(t)))
        keep = self._keep(t, s)
        clipped = xp.clip(s, 1.0 - self.eps_low, 1.0 + self.eps_high) * a
        # s_t's derivative is s on the tokens that count in s (see _log_s), 0 on the others
        unit = xp.where(self._counted(t), t.unit(), xp.ones_like(s)) if requires_grad(t.logp) else 1.0
        return xp.where(keep, s * unit * a, clipped)


# --------------------------------------------------------------------------------------------
# Loss aggregation and the trainer-facing loss
# --------------------------------------------------------------------------------------------

AGG_MODES = ("token-mean", "seq-mean-token-sum", "seq-mean-token-mean", "seq-mean-token-sum-norm")
"""Loss aggregation modes used in practice (verl's ``loss_agg_mode`` names)."""


def aggregation_weights(
    mask: Array, mode: str = "token-mean", *, horizon: int | None = None, dtype: Any = None
) -> Array:
    """Per-token coefficients ``c`` with ``aggregate(v, mask, mode) = sum(c * v)``.

    The loss aggregation is linear in the per-token values, so a trainer's gradient is
    ``sum_t c_t dJ_t``; the simulator uses these coefficients directly. ``mask`` has shape
    ``[..., B, T]``: leading axes (seeds, for example) are independent batches, each normalised on
    its own. ``token-mean`` also accepts a 1-D mask. Invalid tokens get ``c = 0``. See
    :func:`aggregate` for the four modes.
    """
    if mode not in AGG_MODES:
        raise ValueError(f"unknown loss aggregation mode {mode!r}; valid: {', '.join(AGG_MODES)}")
    xp = namespace(mask)
    valid = _as_valid(xp, mask)
    if dtype is None:
        dtype = compute_dtype(xp, [mask])
    m = xp.astype(valid, dtype)
    if mode == "token-mean":
        axes = tuple(range(max(m.ndim - 2, 0), m.ndim))
        n = xp.sum(m, axis=axes, keepdims=True)
        return m / xp.maximum(n, xp.ones_like(n))
    if m.ndim < 2:
        raise ValueError(f"mode {mode!r} needs per-token values of shape [B, T], got {tuple(m.shape)}")
    tokens = xp.sum(m, axis=-1, keepdims=True)
    has_tokens = xp.astype(tokens > 0, dtype)
    n_seq = xp.sum(has_tokens, axis=-2, keepdims=True)
    n_seq = xp.maximum(n_seq, xp.ones_like(n_seq))
    if mode == "seq-mean-token-sum":
        return m / n_seq
    if mode == "seq-mean-token-mean":
        return m / (xp.maximum(tokens, xp.ones_like(tokens)) * n_seq)
    h = m.shape[-1] if horizon is None else horizon
    if not (isinstance(h, int) and not isinstance(h, bool) and h > 0):
        raise ValueError(f"horizon must be a positive integer, got {horizon!r}")
    return m / (float(h) * n_seq)


def aggregate(
    values: Array, mask: Array | None = None, mode: str = "token-mean", *, horizon: int | None = None
) -> Array:
    """Reduce per-token values of shape ``[B, T]`` to a scalar, over the tokens where ``mask`` is true.

    * ``token-mean``: ``sum_{i,t} m v / sum_{i,t} m`` (DAPO);
    * ``seq-mean-token-sum``: mean over sequences of ``sum_t m v``;
    * ``seq-mean-token-mean``: mean over sequences of ``sum_t m v / sum_t m`` (GRPO);
    * ``seq-mean-token-sum-norm``: mean over sequences of ``sum_t m v / H`` with a fixed horizon
      ``H`` (default ``T``, the padded length): Dr. GRPO's constant normaliser and the DRPO
      paper's setting. (verl's mode of that name omits the mean over sequences, a constant factor.)

    Sequences with no valid token are left out of every mean over sequences; a batch with no
    valid token gives 0 (still attached to the graph). Masked positions are never read, so
    padding may hold anything, including NaN. The coefficients come from
    :func:`aggregation_weights`, the one definition of the four modes.
    """
    if mode not in AGG_MODES:
        raise ValueError(f"unknown loss aggregation mode {mode!r}; valid: {', '.join(AGG_MODES)}")
    xp, (values,) = as_float_arrays(values)
    if mask is None:
        mask = xp.ones(values.shape, dtype=xp.bool, device=device(values))
    if tuple(mask.shape) != tuple(values.shape):
        raise ValueError(f"mask has shape {tuple(mask.shape)} but the values have shape {tuple(values.shape)}")
    if mode != "token-mean" and values.ndim != 2:
        raise ValueError(f"mode {mode!r} needs per-token values of shape [B, T], got {tuple(values.shape)}")
    return _aggregate(xp, values, _as_valid(xp, mask), mode, horizon, padded=True)


def _as_valid(xp: Any, mask: Array) -> Array:
    """``mask != 0`` as a boolean array (``mask`` itself when it is one already)."""
    return mask if mask.dtype == xp.bool else mask != 0


def _aggregate(xp: Any, values: Array, valid: Array, mode: str, horizon: int | None, *, padded: bool) -> Array:
    """:func:`aggregate` on checked inputs: ``sum(c * v)`` with ``v`` zeroed where ``valid`` is false
    (a step left out when nothing is ``padded``: the values are then all valid, zeroing keeps them)."""
    c = aggregation_weights(valid, mode, horizon=horizon, dtype=values.dtype)
    v = xp.where(valid, values, 0.0) if padded else values
    return xp.sum(c * v)


METRIC_SETTINGS = (False, "default", "full")
"""The settings of :func:`policy_loss`'s ``metrics`` (``True`` is ``"default"``)."""
DEFAULT_METRICS = (
    "actor/pg_loss", "actor/valid_tokens", "actor/ratio_mean", "actor/ratio_max",
)
"""The keys :func:`policy_loss` returns with ``metrics="default"``: the ones read off quantities the
loss has already computed (its value, the mask, the ratio), at a few reductions' cost."""
FULL_METRICS = (
    "actor/valid_tokens",
    *(f"actor/{name}_frac" for name in Regions.NAMES),
    "actor/weight_mean", "actor/weight_max", "actor/weight_min",
    "actor/ratio_mean", "actor/ratio_max",
    "actor/abs_shift_mean", "actor/abs_shift_max",
    "actor/pg_loss",
)
"""The keys :func:`policy_loss` returns with ``metrics="full"``, in order (a superset of the default)."""


def _metric_setting(metrics: Any) -> str | None:
    """``metrics`` as ``None`` (off), ``"default"`` or ``"full"``; ``ValueError`` listing the valid ones."""
    if metrics is False:
        return None
    if metrics is True:
        return "default"
    if isinstance(metrics, str) and metrics in METRIC_SETTINGS:
        return metrics
    raise ValueError(f"metrics must be one of False, True (the same as 'default'), 'default', 'full'; got {metrics!r}")


def policy_loss(
    objective: str | Objective,
    logp: Array,
    logp_behavior: Array,
    advantage: Array,
    mask: Array | None = None,
    *,
    agg_mode: str = "token-mean",
    horizon: int | None = None,
    metrics: bool | str = "default",
    logp_old: Array | None = None,
    sample_id: Array | None = None,
    topk_tv: Array | None = None,
    topk_kl: Array | None = None,
) -> tuple[Array, dict[str, float]]:
    """The scalar loss a trainer calls ``.backward()`` on, and namespaced metrics.

    ``loss = -aggregate(J_t)`` over a batch of shape ``[B, T]`` (``advantage`` may be ``[B]``, one
    value per sequence, broadcast over its tokens). Padded positions (``mask`` false) may hold
    anything, NaN and inf included: they are replaced before the surrogate, so they reach neither
    the loss nor the gradient. An empty batch (no element at all) is a ``ValueError``.

    ``logp_old`` (``[B, T]``, the trainer's recomputed log-probs of the rollout) is required by the
    objectives anchored to it (``Objective.needs_old``), ``topk_tv`` / ``topk_kl`` by DPPO's Top-K
    modes (``Objective.required_columns``); the others ignore them. Each row is one sequence for
    the sequence-level objectives, unless ``sample_id`` (``[B, T]`` or ``[B]``) says otherwise;
    padded tokens never enter a sequence's ratio.

    ``metrics`` chooses the statistics returned beside the loss, as Python floats over the valid
    tokens; they never enter the autograd graph (computed on detached tensors, from the ratio and
    the other per-token terms the surrogate has already computed) and never change the loss or
    its gradient:

    * ``False``: none, an empty dict: no pass over the tokens beyond the loss, and no read of a
      value back from the device (``actor/pg_loss`` is ``float(loss)``, which the caller can take);
    * ``"default"`` (or ``True``): :data:`DEFAULT_METRICS`: ``actor/pg_loss``,
      ``actor/valid_tokens``, ``actor/ratio_{mean,max}``;
    * ``"full"``: :data:`FULL_METRICS`, which adds what the objective's weight ``w`` says about the
      tokens: ``actor/{masked,attenuated,corrective,amplified}_frac`` (:class:`Regions`),
      ``actor/weight_{mean,min,max}`` and ``actor/abs_shift_{mean,max}`` (``abs(pi - mu)``). It
      costs the weight and about a dozen more passes over the batch.

    The keys the two sets share have the same values. With no valid token the statistics are NaN
    and ``valid_tokens`` is 0. All values come back from the device in one transfer. Any other
    ``metrics`` is a ``ValueError``. ``benchmarks/bench_policy_loss.py`` times the three settings
    beside UniRL's and verl's losses.
    """
    setting = _metric_setting(metrics)
    obj = get(objective) if isinstance(objective, str) else objective
    extra = obj.columns_of({"logp_old": logp_old, "topk_tv": topk_tv, "topk_kl": topk_kl})
    xp, (logp_f, lpb_f, adv_f, *extra_f) = as_float_arrays(logp, logp_behavior, advantage, *extra.values())
    if logp_f.ndim != 2:
        raise ValueError(f"policy_loss needs logp of shape [B, T], got {tuple(logp_f.shape)}")
    if math.prod(logp_f.shape) == 0:
        raise ValueError(f"empty batch: logp has shape {tuple(logp_f.shape)}")
    if adv_f.ndim == 1 and adv_f.shape[0] == logp_f.shape[0]:
        adv_f = xp.reshape(adv_f, (adv_f.shape[0], 1))
    ids = None
    if sample_id is not None and obj.per_sequence:
        ids = sample_id if hasattr(sample_id, "shape") else np.asarray(sample_id)
        if len(ids.shape) == 1 and logp_f.ndim == 2 and ids.shape[0] == logp_f.shape[0]:
            ids = ids.reshape(-1, 1)  # one id per sequence, as an advantage of shape [B]
        ids = _as_ids(xp, ids, tuple(logp_f.shape))
    for label, arr in (("logp_behavior", lpb_f), ("advantage", adv_f), *zip(extra, extra_f)):
        try:
            fits = np.broadcast_shapes(tuple(arr.shape), tuple(logp_f.shape)) == tuple(logp_f.shape)
        except ValueError:
            fits = False
        if not fits:
            raise ValueError(f"{label} has shape {tuple(arr.shape)}, which does not fit logp's {tuple(logp_f.shape)}")
    padded = mask is not None
    if padded:
        if tuple(mask.shape) != tuple(logp_f.shape):
            raise ValueError(f"mask has shape {tuple(mask.shape)} but logp has shape {tuple(logp_f.shape)}")
        valid = _as_valid(xp, mask)
    else:
        valid = xp.ones(logp_f.shape, dtype=xp.bool, device=device(logp_f))

    if padded and obj.uses_batch_statistic and not bool(xp.all(valid)):
        raise ValueError(f"{obj} takes a statistic of the whole batch, which its padded tokens would enter: "
                         "pass an unpadded batch, or parameters that make it elementwise")
    if padded:
        # padding may hold anything (NaN, inf): replaced before the surrogate, so that it reaches neither
        # the loss nor, through the chain rule (NaN x 0 = NaN), the gradient of logp and the model's
        logp_f = xp.where(valid, logp_f, 0.0)
        lpb_f = xp.where(valid, lpb_f, 0.0)
        adv_f = xp.where(valid, adv_f, 0.0)
        extra_f = [xp.where(valid, a, 0.0) for a in extra_f]
    # the surrogate over the whole batch at once (what Objective.surrogate evaluates for a call that
    # needs a gradient; its blocks give the same bits otherwise)
    terms = TokenTerms(xp, logp_f, lpb_f, adv_f, tuple(logp_f.shape), detach=False,
                       columns=dict(zip(extra, extra_f)), sample_id=ids, valid=valid if padded else None)
    surrogate = terms.full(obj._surrogate(terms))
    # the metrics' reductions, from the terms the surrogate has computed, detached
    stats = None if setting is None else _metric_reductions(obj, terms.detached(), valid if padded else None, setting)
    # from here on only what the graph saved for the backward pass need stay alive
    del terms, logp_f, lpb_f, adv_f, extra_f
    # -aggregate(surrogate, valid): the same formula, each temporary released as soon as it is used
    c = aggregation_weights(valid, agg_mode, horizon=horizon, dtype=surrogate.dtype)
    if padded:
        surrogate = xp.where(valid, surrogate, 0.0)
    terms_sum = c * surrogate
    del surrogate, c
    loss = -xp.sum(terms_sum)
    del terms_sum
    if stats is None:
        return loss, {}
    return loss, _metric_values(xp, stats, stop_gradient(loss), float(math.prod(logp.shape)), setting)


def _metric_reductions(obj: Objective, t: TokenTerms, valid: Array | None, setting: str) -> dict[str, Array]:
    """The reductions behind :func:`policy_loss`'s metrics, as 0-d arrays, from detached terms ``t``
    (``valid`` is ``None`` when every token is valid): each statistic is one reduction over the
    batch with the padding replaced by a value that cannot change it (sums in the batch's dtype, as
    the loss's; means still to be divided by the count of valid tokens); ``below_one`` counts ``w < 1``."""
    xp = t.xp

    def over_valid(x: Array, fill: float) -> Array:
        return x if valid is None else xp.where(valid, x, fill)

    out: dict[str, Array] = {}
    if valid is not None:
        out["actor/valid_tokens"] = xp.count_nonzero(valid)
    ratio = over_valid(t.full(t.ratio), 0.0)  # r >= 0: zeros cannot raise the max of a non-empty batch
    out["actor/ratio_mean"], out["actor/ratio_max"] = xp.sum(ratio), xp.max(ratio)
    del ratio
    if setting == "full":
        w = t.full(obj._weight(t))
        neutral = over_valid(w, 1.0)  # w = 1 is in no region
        out["corrective"] = xp.count_nonzero(neutral < 0.0)
        out["masked"] = xp.count_nonzero(neutral == 0.0)
        out["amplified"] = xp.count_nonzero(neutral > 1.0)
        out["below_one"] = xp.count_nonzero(neutral < 1.0)
        del neutral
        out["actor/weight_mean"] = xp.sum(over_valid(w, 0.0))
        out["actor/weight_max"] = xp.max(over_valid(w, -math.inf))
        out["actor/weight_min"] = xp.min(over_valid(w, math.inf))
        del w
        shift = over_valid(t.full(xp.abs(t.shift)), 0.0)  # >= 0, as the ratio
        out["actor/abs_shift_mean"], out["actor/abs_shift_max"] = xp.sum(shift), xp.max(shift)
    return out


def _metric_values(xp: Any, reductions: dict[str, Array], loss: Array, tokens: float, setting: str) -> dict[str, float]:
    """The metrics from :func:`_metric_reductions` and the loss, all read back at once; ``tokens``
    is the batch's size, the count of valid tokens when none is padded."""
    got = dict(zip(["actor/pg_loss", *reductions], _read_back(xp, [loss, *reductions.values()])))
    n = got.pop("actor/valid_tokens", tokens)
    out = {"actor/pg_loss": got.pop("actor/pg_loss"), "actor/valid_tokens": n}
    nan = math.nan
    if setting == "full":
        below_one = got.pop("below_one")
        fracs = {name: got.pop(name) for name in ("masked", "corrective", "amplified")}
        fracs["attenuated"] = below_one - fracs["masked"] - fracs["corrective"]  # 0 < w < 1
        for name in Regions.NAMES:
            out[f"actor/{name}_frac"] = fracs[name] / n if n else nan
    for key, value in got.items():
        out[key] = (value / n if key.endswith("_mean") else value) if n else nan
    return {k: out[k] for k in (FULL_METRICS if setting == "full" else DEFAULT_METRICS)}


def _read_back(xp: Any, values: list[Array]) -> list[float]:
    """0-d arrays as Python floats, in one transfer from the device for torch."""
    if is_torch(xp):
        return xp.stack([xp.astype(v, xp.float64) for v in values]).tolist()
    return [float(v) for v in values]


def token_metrics(obj: Objective, logp: Array, logp_behavior: Array, advantage: Array, mask: Array, *,
                  sample_id: Array | None = None, **columns: Array | None) -> dict[str, float]:
    """:func:`policy_loss`'s full metrics but ``actor/pg_loss``, for the valid tokens of ``mask``
    (``columns``: the extra per-token inputs, as :meth:`Objective.weight` takes them)."""
    t = TokenTerms.of(logp, logp_behavior, advantage, detach=True, sample_id=sample_id if obj.per_sequence else None,
                      **obj.columns_of(columns))
    valid = t.xp.broadcast_to(_as_valid(t.xp, mask), t.shape)
    zero = t.xp.zeros((), dtype=t.logp.dtype, device=device(t.logp))
    out = _metric_values(t.xp, _metric_reductions(obj, t, valid, "full"), zero, float(math.prod(t.shape)), "full")
    del out["actor/pg_loss"]
    return out
