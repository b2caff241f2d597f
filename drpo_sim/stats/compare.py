"""Tests between methods run on the same seeds: the statistics behind the claims' verdicts.

:mod:`drpo_sim.stats` summarises one method over seeds (IQM, bootstrap intervals, the collapse
rule). This module compares two methods, and it is built for the questions a stability claim
asks, where a trimmed mean would drop exactly the seeds that matter:

- **paired comparisons** (:func:`paired_comparison`): every method runs on the same seeds with
  common random numbers, so the per-seed differences ``d_i = x_i - y_i`` carry the comparison.
  Their mean with a paired bootstrap interval (``scipy.stats.bootstrap``, percentile method), an
  exact sign-flip permutation test of ``mean(d) = 0`` (``scipy.stats.permutation_test``,
  ``permutation_type="samples"``: under the null each difference is as likely to have either
  sign), and the probability of improvement on shared seeds, ``P(d > 0) + P(d = 0) / 2``;
- **equivalence** (:func:`equivalence_test`): two one-sided t-tests of the mean paired difference
  against a margin declared before the run (TOST; D. J. Schuirmann, "A comparison of the two
  one-sided tests procedure and the power approach for assessing the equivalence of average
  bioavailability", J. Pharmacokinet. Biopharm. 15, 1987). "No difference" is only ever claimed
  this way: overlapping intervals are not evidence of equality;
- **multiplicity** (:func:`holm`): S. Holm, "A simple sequentially rejective multiple test
  procedure", Scand. J. Statist. 6, 1979; adjusted p-values over a claim's family of cells;
- **stability** over seeds: collapse rates with exact intervals
  (:func:`drpo_sim.stats.clopper_pearson_ci`), Kaplan-Meier survival of time to collapse with
  censoring at the run's end (:func:`survival_curve`, ``scipy.stats.ecdf`` on
  ``scipy.stats.CensoredData``), the log-rank test between two methods (:func:`logrank_test`,
  ``scipy.stats.logrank``) and the exact McNemar test of collapse on shared seeds
  (:func:`mcnemar_test`: a binomial test on the discordant seeds).

Randomness comes only from ``random_state`` (as in :mod:`drpo_sim.stats`). Pairs with a NaN on
either side are left out and counted (``n_dropped``), never silently.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd
import scipy.stats
from numpy.typing import ArrayLike

from drpo_sim.stats import _RNG_KW, RandomState, _check_confidence, _check_n_resamples, _rng

__all__ = [
    "PairedComparison",
    "Equivalence",
    "paired_comparison",
    "equivalence_test",
    "holm",
    "survival_curve",
    "logrank_test",
    "mcnemar_test",
]

#: Up to this many seeds the sign-flip test enumerates all ``2^n`` sign patterns (exact).
EXACT_PERMUTATION_MAX_SEEDS = 16


def _pairs(x: ArrayLike, y: ArrayLike) -> tuple[np.ndarray, int]:
    """The per-seed differences ``x - y`` over the seeds where both are finite, and how many
    seeds were left out. ``x`` and ``y`` are 1-D and aligned seed by seed."""
    try:
        a, b = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    except (TypeError, ValueError) as err:
        raise ValueError(f"x and y must be 1-D numeric arrays: {err}") from None
    if a.ndim != 1 or b.ndim != 1:
        raise ValueError(f"x and y must be 1-D, got shapes {a.shape} and {b.shape}")
    if a.shape != b.shape:
        raise ValueError(f"x and y must hold the same seeds, got {a.size} and {b.size} values")
    keep = np.isfinite(a) & np.isfinite(b)
    if not keep.any():
        raise ValueError(f"no seed has a finite value on both sides (of {a.size})")
    return a[keep] - b[keep], int((~keep).sum())


@dataclass(frozen=True)
class PairedComparison:
    """Method X against method Y on shared seeds (:func:`paired_comparison`)."""

    n: int
    """Seeds compared."""
    n_dropped: int
    """Seeds left out because one side was NaN or infinite."""
    mean_diff: float
    """Mean of ``x_i - y_i``."""
    low: float
    high: float
    """Paired-bootstrap interval of the mean difference at ``confidence``."""
    p_value: float
    """Two-sided sign-flip permutation test of ``mean(x - y) = 0``."""
    p_improve: float
    """Share of seeds where X beats Y, ties counted half."""
    confidence: float

    @property
    def side(self) -> int:
        """+1 if X is above Y (the interval excludes 0 from above), -1 below, 0 otherwise. The
        claims use Holm-adjusted p-values instead (:func:`holm`); this is the uncorrected read."""
        return 1 if self.low > 0 else (-1 if self.high < 0 else 0)


def paired_comparison(x: ArrayLike, y: ArrayLike, *, confidence: float = 0.95, n_resamples: int = 2000,
                      random_state: RandomState = 0) -> PairedComparison:
    """Compare X with Y seed by seed (module docstring): the mean difference with its paired
    bootstrap interval (percentile; the seeds are resampled, each keeping its pair), the exact
    sign-flip permutation p-value (all ``2^n`` signs up to :data:`EXACT_PERMUTATION_MAX_SEEDS`
    seeds, ``n_resamples`` random ones beyond) and the probability of improvement.

    With every difference equal (one seed, or identical runs) there is nothing to resample: the
    interval is that difference on both ends and the p-value is 1 when it is 0 (and the exact
    ``2^(1-n)`` of a constant sign otherwise).
    """
    confidence = _check_confidence(confidence)
    n_resamples = _check_n_resamples(n_resamples)
    d, dropped = _pairs(x, y)
    rng = _rng(random_state)
    n = d.size
    mean = float(d.mean())
    p_improve = float(np.mean((d > 0) + 0.5 * (d == 0)))
    if np.all(d == d[0]):
        p = 1.0 if d[0] == 0 else min(1.0, 2.0 ** (1 - n))
        return PairedComparison(n, dropped, mean, mean, mean, p, p_improve, confidence)
    boot = scipy.stats.bootstrap((d,), np.mean, confidence_level=confidence, n_resamples=n_resamples,
                                 method="percentile", **{_RNG_KW: rng})
    exact = n <= EXACT_PERMUTATION_MAX_SEEDS
    test = scipy.stats.permutation_test((d,), np.mean, permutation_type="samples", vectorized=True,
                                        n_resamples=np.inf if exact else n_resamples, alternative="two-sided",
                                        **{_RNG_KW: rng})
    low, high = float(boot.confidence_interval.low), float(boot.confidence_interval.high)
    return PairedComparison(n, dropped, mean, low, high, float(min(1.0, test.pvalue)), p_improve, confidence)


@dataclass(frozen=True)
class Equivalence:
    """A TOST equivalence test of X and Y on shared seeds (:func:`equivalence_test`)."""

    n: int
    n_dropped: int
    mean_diff: float
    low: float
    high: float
    """The ``1 - 2 alpha`` t interval of the mean difference: equivalence at level ``alpha`` is
    this interval lying inside ``(-margin, margin)``."""
    margin: float
    p_value: float
    """The larger of the two one-sided p-values."""
    alpha: float

    @property
    def equivalent(self) -> bool:
        return self.p_value < self.alpha


def equivalence_test(x: ArrayLike, y: ArrayLike, margin: float, *, alpha: float = 0.05) -> Equivalence:
    """Two one-sided tests (Schuirmann 1987) that the mean paired difference ``x - y`` lies within
    ``(-margin, margin)``: ``H0: mean <= -margin`` and ``H0: mean >= margin``, each a one-sided
    one-sample t-test of the differences (``scipy.stats.ttest_1samp``); the p-value is the larger
    of the two. ``margin`` must come from the claim's declaration, fixed before the run.

    With every difference equal the t statistic is undefined: the p-value is 0 when that
    difference lies strictly inside the margin and 1 otherwise (a degenerate but exact answer).
    """
    if isinstance(margin, bool) or not isinstance(margin, (int, float)) or not math.isfinite(margin) or margin <= 0:
        raise ValueError(f"margin must be a finite number > 0, got {margin!r}")
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0 < alpha < 0.5:
        raise ValueError(f"alpha must be in (0, 0.5), got {alpha!r}")
    d, dropped = _pairs(x, y)
    mean = float(d.mean())
    if d.size < 2 or np.all(d == d[0]):
        inside = abs(mean) < margin and np.all(d == d[0])
        return Equivalence(d.size, dropped, mean, mean, mean, float(margin), 0.0 if inside else 1.0, float(alpha))
    lower = scipy.stats.ttest_1samp(d, -margin, alternative="greater")
    upper = scipy.stats.ttest_1samp(d, margin, alternative="less")
    ci = scipy.stats.ttest_1samp(d, 0.0).confidence_interval(confidence_level=1 - 2 * alpha)
    return Equivalence(d.size, dropped, mean, float(ci.low), float(ci.high), float(margin),
                       float(max(lower.pvalue, upper.pvalue)), float(alpha))


def holm(p_values: ArrayLike) -> np.ndarray:
    """Holm's (1979) step-down adjusted p-values, in the order given: with ``p_(1) <= ... <= p_(m)``,
    ``adj_(k) = max_{j <= k} min(1, (m - j + 1) p_(j))``. Rejecting where ``adj < alpha`` keeps the
    family-wise error rate at ``alpha`` under any dependence between the tests. NaN is not allowed
    (a test that could not run is left out of the family by the caller, and said so)."""
    p = np.asarray(p_values, dtype=float)
    if p.ndim != 1:
        raise ValueError(f"p_values must be 1-D, got shape {p.shape}")
    if p.size and (np.isnan(p).any() or (p < 0).any() or (p > 1).any()):
        raise ValueError(f"p_values must lie in [0, 1], got {p.tolist()}")
    m = p.size
    order = np.argsort(p, kind="stable")
    stepped = np.minimum(1.0, np.maximum.accumulate((m - np.arange(m)) * p[order]))
    out = np.empty(m)
    out[order] = stepped
    return out


def _times(time: ArrayLike, event: ArrayLike, name: str) -> tuple[np.ndarray, np.ndarray]:
    t = np.asarray(time, dtype=float)
    e = np.asarray(event)
    if t.ndim != 1 or t.shape != e.shape:
        raise ValueError(f"{name}: time and event must be 1-D of one length, got {t.shape} and {e.shape}")
    if t.size == 0:
        raise ValueError(f"{name}: no runs")
    if e.dtype != bool:
        raise ValueError(f"{name}: event must be bool (True: collapsed at that time), got dtype {e.dtype}")
    if not np.isfinite(t).all() or (t < 0).any():
        raise ValueError(f"{name}: times must be finite and >= 0 (a run that did not collapse is censored at its "
                         "last step)")
    return t, e


def _censored(t: np.ndarray, e: np.ndarray) -> scipy.stats.CensoredData:
    return scipy.stats.CensoredData(uncensored=t[e], right=t[~e])


def survival_curve(time: ArrayLike, event: ArrayLike, *, confidence: float = 0.95) -> pd.DataFrame:
    """Kaplan-Meier estimate of the share of runs not yet collapsed, over seeds.

    ``time``: per run, the step it collapsed at (``event`` True) or its last step (``event``
    False: censored, it survived at least that long). Returns one row per distinct time with
    ``step``, ``survival`` and its pointwise interval (``low``, ``high``; Greenwood's variance on
    the log-log scale, ``scipy.stats.ecdf(...).sf.confidence_interval(method="log-log")``), plus
    ``at_risk`` and ``events``. With no collapse at all the curve is 1 throughout and the interval
    is [1, 1] (a Kaplan-Meier interval says nothing there: state the Clopper-Pearson bound of the
    collapse rate beside it).
    """
    confidence = _check_confidence(confidence)
    t, e = _times(time, event, "survival_curve")
    steps = np.unique(t)
    at_risk = np.array([(t >= s).sum() for s in steps])
    events = np.array([(e & (t == s)).sum() for s in steps])
    if not e.any():
        ones = np.ones(steps.size)
        return pd.DataFrame({"step": steps, "survival": ones, "low": ones, "high": ones, "at_risk": at_risk,
                             "events": events})
    sf = scipy.stats.ecdf(_censored(t, e)).sf
    ci = sf.confidence_interval(confidence_level=confidence, method="log-log")
    surv = sf.evaluate(steps)
    low, high = ci.low.evaluate(steps), ci.high.evaluate(steps)
    # before the first collapse the estimate is 1 and log-log is undefined there: [1, 1]
    low, high = np.where(np.isnan(low) & (surv == 1), 1.0, low), np.where(np.isnan(high) & (surv == 1), 1.0, high)
    return pd.DataFrame({"step": steps, "survival": surv, "low": low, "high": high, "at_risk": at_risk,
                         "events": events})


def logrank_test(time_x: ArrayLike, event_x: ArrayLike, time_y: ArrayLike, event_y: ArrayLike) -> float:
    """Two-sided log-rank p-value that runs of X and of Y collapse at the same rate over time
    (``scipy.stats.logrank``; censoring as in :func:`survival_curve`). With no collapse on either
    side there is no evidence of a difference: 1.0."""
    tx, ex = _times(time_x, event_x, "logrank_test (x)")
    ty, ey = _times(time_y, event_y, "logrank_test (y)")
    if not ex.any() and not ey.any():
        return 1.0
    return float(scipy.stats.logrank(_censored(tx, ex), _censored(ty, ey)).pvalue)


def mcnemar_test(collapsed_x: ArrayLike, collapsed_y: ArrayLike) -> tuple[int, int, float]:
    """Exact McNemar test of collapse on shared seeds: ``(b, c, p)`` with ``b`` the seeds where
    only X collapsed, ``c`` where only Y did, and ``p`` the two-sided binomial p-value of ``b``
    out of ``b + c`` at 1/2 (1.0 when no seed is discordant)."""
    x, y = np.asarray(collapsed_x), np.asarray(collapsed_y)
    if x.dtype != bool or y.dtype != bool or x.ndim != 1 or x.shape != y.shape:
        raise ValueError(f"collapsed_x and collapsed_y must be 1-D bool arrays over the same seeds, got "
                         f"{x.dtype} {x.shape} and {y.dtype} {y.shape}")
    b, c = int((x & ~y).sum()), int((~x & y).sum())
    p = 1.0 if b + c == 0 else float(scipy.stats.binomtest(b, b + c, 0.5).pvalue)
    return b, c, p
