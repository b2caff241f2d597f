"""Off-policy channels: how the behaviour policy ``mu`` comes to differ from the trained ``pi``.

In LLM RL the tokens are sampled by an inference engine, not by the trainer, and one batch of
rollouts serves several updates. Each channel below reproduces one cause, is configured by one or
two fields of :class:`OffPolicyConfig`, draws its randomness from the run's seeded streams, and
composes with the others in this order (the order of an RL system's data path):

1. **staleness** (``staleness = k``): rollouts are generated from the parameters of ``k``
   optimiser steps ago (asynchronous RL; the simulator keeps the parameter history);
2. **engine noise** (``noise_std``, ``noise_dist``): the engine's logits differ from the
   trainer's by i.i.d. noise, Gaussian or Student-t (heavy tails, ``noise_df`` degrees of
   freedom), scaled so that its standard deviation is ``noise_std`` (for Student-t with
   ``df <= 2``, whose variance is infinite, ``noise_std`` is the scale: over a large vocabulary
   one extreme draw then dominates the softmax, and even a scale of 0.05 gives a mean
   ``abs(pi - mu)`` of 0.1 or more at ``V >= 1024``, far beyond published mismatch sizes);
   **engine bias** (``bias_std``): a fixed offset per (state, token) added to the engine's logits,
   drawn once per seed, Gaussian with standard deviation ``bias_std``: a systematic kernel or
   routing difference that, unlike fresh noise, does not average out across steps;
3. **precision** (``precision``): the engine's logits are rounded to bf16, fp16, fp8 e4m3 or fp8
   e5m2, using torch's implementations of these formats (round to nearest even, through float32;
   values beyond the format's range saturate at its largest finite value, as scaled fp8 kernels
   do); the softmax is then taken in high precision, as engines do. ``trainer_precision`` rounds
   the trainer's own logits the same way ("low precision on both sides"), with a straight-through
   gradient;
4. **truncation** (``top_k``, ``top_p``): the engine samples from the top-k / nucleus truncated,
   renormalised distribution and reports its log-probs, while the trainer scores the full one;
5. **several updates per batch** (``updates_per_batch = m``): the batch is split into ``m``
   mini-batches, one optimiser step each, so every mini-batch after the first is scored by a
   policy that has moved; the importance ratio's denominator is the **anchor**: ``"rollout"``,
   the engine's reported log-probs (the DRPO paper's choice), or ``"recompute"``, the trainer's
   log-probs recomputed at the start of the update phase, which hide the engine mismatch and the
   staleness from the objective (claim 11 of ``docs/reference.md``). The objectives that read
   three policies (``needs_old``: decoupled PPO, MiniRL, the recompute modes, any corrected
   objective) receive those recomputed log-probs as ``logp_old`` whatever the anchor; with the
   ``"recompute"`` anchor their ``mu`` is ``pi_old`` too, and the gap they correct is 1.

With every channel at its default (``noise_std = bias_std = 0``, ``precision = trainer_precision = "fp64"``,
``top_k = 0``, ``top_p = 1``, ``staleness = 0``, ``updates_per_batch = 1``) the engine computes
exactly what the trainer computes, bit for bit, and every ratio is exactly 1.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from drpo_sim.config import NOISE_PRESETS
from drpo_sim.envs.bandit import zipf_logits
from drpo_sim.policies import log_softmax

PRECISIONS: dict[str, torch.dtype | None] = {
    "fp64": None,
    "fp32": torch.float32,
    "bf16": torch.bfloat16,
    "fp16": torch.float16,
    "fp8_e4m3": torch.float8_e4m3fn,
    "fp8_e5m2": torch.float8_e5m2,
}
NOISE_DISTS = ("gaussian", "student_t")
ANCHORS = ("rollout", "recompute")

@dataclass(frozen=True)
class OffPolicyConfig:
    """The off-policy channels (module docstring). Defaults: exactly on-policy."""

    noise_std: float = 0.0
    noise_dist: str = "gaussian"
    noise_df: float = 3.0
    bias_std: float = 0.0
    precision: str = "fp64"
    trainer_precision: str = "fp64"
    top_k: int = 0
    top_p: float = 1.0
    staleness: int = 0
    updates_per_batch: int = 1
    anchor: str = "rollout"

    def __post_init__(self) -> None:
        if not (np.isfinite(self.noise_std) and self.noise_std >= 0):
            raise ValueError(f"noise_std must be finite and >= 0, got {self.noise_std}")
        if self.noise_dist not in NOISE_DISTS:
            raise ValueError(f"unknown noise_dist {self.noise_dist!r}; valid: {', '.join(NOISE_DISTS)}")
        if not (np.isfinite(self.bias_std) and self.bias_std >= 0):
            raise ValueError(f"bias_std must be finite and >= 0, got {self.bias_std}")
        if not self.noise_df > 0:
            raise ValueError(f"noise_df must be > 0, got {self.noise_df}")
        for field in ("precision", "trainer_precision"):
            if getattr(self, field) not in PRECISIONS:
                raise ValueError(f"unknown {field} {getattr(self, field)!r}; valid: {', '.join(PRECISIONS)}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0 (0: off), got {self.top_k}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1] (1: off), got {self.top_p}")
        if self.staleness < 0:
            raise ValueError(f"staleness must be >= 0, got {self.staleness}")
        if self.updates_per_batch < 1:
            raise ValueError(f"updates_per_batch must be >= 1, got {self.updates_per_batch}")
        if self.anchor not in ANCHORS:
            raise ValueError(f"unknown anchor {self.anchor!r}; valid: {', '.join(ANCHORS)}")

    @property
    def on_policy(self) -> bool:
        """True when every channel is off: the engine computes exactly what the trainer computes
        (no noise, the same precision on both sides, no truncation, fresh parameters, one update)."""
        return (
            self.noise_std == 0
            and self.bias_std == 0
            and self.precision == self.trainer_precision
            and self.top_k == 0
            and self.top_p == 1
            and self.staleness == 0
            and self.updates_per_batch == 1
        )

    @property
    def needs_noise(self) -> bool:
        return self.noise_std > 0


# --------------------------------------------------------------------------------------------
# Precision
# --------------------------------------------------------------------------------------------


def unit_roundoff(fmt: str) -> float:
    """Half the machine epsilon of ``fmt``: the largest relative error of rounding a normal number."""
    dtype = _dtype(fmt)
    return 0.5 * (np.finfo(np.float64).eps if dtype is None else torch.finfo(dtype).eps)


def round_to_format(x: np.ndarray, fmt: str) -> np.ndarray:
    """Round a float64 array to ``fmt`` and back (see the module docstring; ``fp64`` is the identity)."""
    dtype = _dtype(fmt)
    if dtype is None:
        return x
    x32 = np.asarray(x, dtype=np.float32)
    if dtype is torch.float32:
        return x32.astype(np.float64)
    big = np.float32(torch.finfo(dtype).max)
    return round_float32(np.clip(x32, -big, big, out=x32 if x32 is not x else None), dtype).astype(np.float64)


def round_float32(x32: np.ndarray, dtype: torch.dtype) -> np.ndarray:
    """Float32 values within ``dtype``'s finite range (or NaN) rounded to the nearest value of
    ``dtype`` (a float format narrower than float32: bf16, fp16, fp8), ties to even, as float32.

    Bit for bit torch's conversion ``x.to(dtype)`` (tested on every rounding boundary), written
    in NumPy because torch converts to fp8 one element at a time, 30 times slower than the rest
    of a step's pass over a table: normal numbers round their float32 bit pattern (add half an
    ulp of the format, plus the kept last bit for ties to even, and drop the bits below it);
    numbers below the smallest normal round on the subnormals' fixed grid. A NaN stays NaN (its
    top mantissa bit, set in every NaN that arithmetic makes, is kept).
    """
    fi = torch.finfo(dtype)
    mant, emin = round(-np.log2(fi.eps)), round(np.log2(fi.tiny))  # mantissa bits, smallest normal exponent
    shift = np.uint32(23 - mant)
    bits = x32.view(np.uint32)
    out = np.right_shift(bits, shift)
    out &= np.uint32(1)  # the last kept bit: ties go to even
    out += bits
    out += np.uint32((1 << (23 - mant - 1)) - 1)
    out &= ~np.uint32((1 << (23 - mant)) - 1)
    out = out.view(np.float32)
    small = np.abs(x32) < np.float32(2.0**emin)
    if np.any(small):
        q = np.float32(2.0 ** (emin - mant))  # the subnormals' spacing
        out[small] = np.rint(x32[small] / q) * q
    return out


def _dtype(fmt: str) -> torch.dtype | None:
    if fmt not in PRECISIONS:
        raise ValueError(f"unknown precision {fmt!r}; valid: {', '.join(PRECISIONS)}")
    return PRECISIONS[fmt]


# --------------------------------------------------------------------------------------------
# Noise and truncation
# --------------------------------------------------------------------------------------------


def noise_scale(cfg: OffPolicyConfig) -> float:
    """Multiplier turning a standard draw of ``cfg.noise_dist`` into noise of std ``noise_std``."""
    if cfg.noise_dist == "student_t" and cfg.noise_df > 2:
        return cfg.noise_std * float(np.sqrt((cfg.noise_df - 2) / cfg.noise_df))
    return cfg.noise_std


def truncate(logp: np.ndarray, top_k: int = 0, top_p: float = 1.0) -> np.ndarray:
    """Top-k and nucleus (top-p) truncation of log-probs ``[..., V]``, renormalised.

    Keeps the ``top_k`` most likely tokens (0: all), then the smallest set of most likely tokens
    whose probability reaches ``top_p`` (the token that crosses ``top_p`` is kept, as in
    Holtzman et al. 2020 and vLLM). Tokens tied with the last kept one are kept too. Dropped
    tokens get ``-inf``; the kept ones are renormalised.
    """
    v = logp.shape[-1]
    keep_from = np.full(logp.shape[:-1] + (1,), -np.inf)
    if 0 < top_k < v:
        keep_from = np.maximum(keep_from, np.partition(logp, v - top_k, axis=-1)[..., v - top_k : v - top_k + 1])
    if top_p < 1:
        restricted = np.where(logp >= keep_from, logp, -np.inf)
        desc = -np.sort(-restricted, axis=-1)
        p = np.exp(desc - np.max(desc, axis=-1, keepdims=True))
        p /= p.sum(axis=-1, keepdims=True)
        before = np.cumsum(p, axis=-1) - p  # mass of the strictly more likely tokens
        n_keep = np.sum(before < top_p, axis=-1, keepdims=True)
        keep_from = np.maximum(keep_from, np.take_along_axis(desc, n_keep - 1, axis=-1))
    if np.all(np.isneginf(keep_from)):
        return logp
    return log_softmax(np.where(logp >= keep_from, logp, -np.inf))


# --------------------------------------------------------------------------------------------
# The engine and the trainer
# --------------------------------------------------------------------------------------------


def engine_logp(
    logits: np.ndarray, cfg: OffPolicyConfig, noise: np.ndarray | None = None, bias: np.ndarray | None = None
) -> np.ndarray:
    """The engine's log-probs ``[..., V]`` from the rollout parameters' logits.

    ``noise``: standard draws of ``cfg.noise_dist`` with the logits' shape (needed when
    ``noise_std > 0``); ``bias``: the persistent standard-normal offsets (needed when
    ``bias_std > 0``), broadcastable to the logits. Noise and bias, then rounding to
    ``cfg.precision``, then a float64 log-softmax, then truncation.
    """
    z = logits
    if cfg.needs_noise:
        if noise is None or noise.shape != logits.shape:
            raise ValueError(f"engine noise needs standard draws of shape {logits.shape}")
        z = z + noise_scale(cfg) * noise
    if cfg.bias_std > 0:
        if bias is None:
            raise ValueError("engine bias needs its standard-normal offsets (bias_std > 0)")
        z = z + cfg.bias_std * bias
    z = round_to_format(z, cfg.precision)
    return truncate(log_softmax(z), cfg.top_k, cfg.top_p)


def trainer_logp(logits: np.ndarray, cfg: OffPolicyConfig, out: np.ndarray | None = None) -> np.ndarray:
    """The trainer's log-probs: logits rounded to ``cfg.trainer_precision``, float64 log-softmax
    (written into ``out`` when given, see :func:`drpo_sim.policies.log_softmax`)."""
    return log_softmax(round_to_format(logits, cfg.trainer_precision), out=out)


# --------------------------------------------------------------------------------------------
# Measuring the mismatch
# --------------------------------------------------------------------------------------------


def mismatch_stats(logp_pi: np.ndarray, logp_mu: np.ndarray, *, rare: float = 0.01) -> dict[str, float]:
    """Exact mismatch statistics of two full distributions ``[..., V]``, expectations under ``mu``.

    The quantities ``docs/reference.md`` quotes from real runs: mean and max of ``abs(pi - mu)`` over
    sampled tokens, the share of sampled tokens with ``mu <= rare``, the spread of the ratio for
    tokens with ``mu < 0.2`` (mu-weighted 5% and 95% quantiles), the mean log-ratio drift
    ``E_mu[log pi - log mu]`` (= -KL(mu || pi)), and the total variation ``0.5 sum abs(pi - mu)``,
    each averaged over the leading axes (states, seeds).
    """
    mu, pi = np.exp(logp_mu), np.exp(logp_pi)
    support = mu > 0
    rows = int(np.prod(mu.shape[:-1]))
    shift = np.abs(pi - mu)
    log_ratio = np.where(support, logp_pi - np.where(support, logp_mu, 0.0), 0.0)
    low = support & (mu < 0.2)
    r = np.exp(log_ratio[low])
    w = mu[low]
    order = np.argsort(r)
    cw = np.cumsum(w[order]) / max(w.sum(), 1e-300)
    q05, q95 = (
        float(r[order][min(np.searchsorted(cw, q), r.size - 1)]) if r.size else float("nan") for q in (0.05, 0.95)
    )
    return {
        "shift_mean": float(np.sum(mu * shift) / rows),
        "shift_max": float(np.max(np.where(support, shift, 0.0))),
        "rare_frac": float(np.sum(np.where(mu <= rare, mu, 0.0)) / rows),
        "ratio_q05_mu_lt_0.2": q05,
        "ratio_q95_mu_lt_0.2": q95,
        "logratio_drift": float(np.sum(mu * log_ratio) / rows),
        "tv": float(0.5 * np.sum(shift) / rows),
    }


def calibration(
    vocab_size: int = 32768, zipf_exponent: float = 1.1, *, presets: dict | None = None, seed: int = 0, n_draws: int = 8
) -> dict[str, dict[str, float]]:
    """Mismatch statistics of each noise preset (:data:`drpo_sim.config.NOISE_PRESETS`) on a Zipf
    policy (the bandit's initial policy); ``tests/test_offpolicy.py`` holds them to the published sizes.

    The trainer computes in float64; the engine applies the preset's noise and precision.
    """
    z = np.broadcast_to(zipf_logits(vocab_size, zipf_exponent), (n_draws, vocab_size))
    rng = np.random.default_rng(seed)
    out = {}
    for name, fields in (presets or NOISE_PRESETS).items():
        cfg = OffPolicyConfig(**fields)
        noise = rng.standard_normal(z.shape) if cfg.noise_dist == "gaussian" else rng.standard_t(cfg.noise_df, z.shape)
        bias = rng.standard_normal(z.shape)
        out[name] = mismatch_stats(log_softmax(z), engine_logp(z, cfg, noise if cfg.needs_noise else None, bias))
    return out
