"""Honest statistics over seeds: interquartile mean, bootstrap intervals, collapse detection.

Every simulation is repeated over seeds, and a method is summarised by robust aggregates with
confidence intervals rather than by a mean alone, following

    R. Agarwal, M. Schwarzer, P. S. Castro, A. Courville, M. G. Bellemare,
    "Deep Reinforcement Learning at the Edge of the Statistical Precipice", NeurIPS 2021
    (arXiv:2108.13264), hereafter *Agarwal et al. 2021*:

- the interquartile mean (IQM) as the point estimate (Sec. 4.3),
- percentile confidence intervals from a stratified bootstrap, runs resampled within each
  task (Sec. 4.1; Efron & Tibshirani, "An Introduction to the Bootstrap", 1993),
- the probability of improvement ``P(X > Y)`` between two methods (Sec. 4.3).

Reward curves are arrays of shape ``[n_seeds, n_steps]``. Per-seed summaries of a curve
(:func:`final_reward`, :func:`area_under_curve`, :func:`steps_to_threshold`) and the collapse
rule (:class:`CollapseRule`) are defined here once; :func:`summarize_runs` turns a tidy result
table (one row per method, seed and step) into one row per method.

Randomness comes only from the ``random_state`` argument (an ``int`` seed or a
``numpy.random.Generator``); the default seed is fixed so the same call gives the same numbers.
An ``int`` seeds a fresh generator in every call, so a method's interval does not depend on
which other methods are summarised with it.
"""

from __future__ import annotations

import inspect
import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import pandas as pd
import scipy.stats
from numpy.typing import ArrayLike

__all__ = [
    "iqm",
    "bootstrap_ci",
    "bootstrap_band",
    "curve_bands",
    "probability_of_improvement",
    "wilson_ci",
    "final_reward",
    "area_under_curve",
    "steps_to_threshold",
    "CollapseRule",
    "collapsed",
    "summarize_runs",
]

RandomState = int | np.random.Generator
Interval = tuple[float, float, float]
_METHODS = ("percentile", "basic", "bca")
# scipy >= 1.15 names the generator argument of `bootstrap` `rng`; older versions `random_state`
_RNG_KW = "rng" if "rng" in inspect.signature(scipy.stats.bootstrap).parameters else "random_state"


# --------------------------------------------------------------------------------------------
# validation helpers


def _check_confidence(confidence: float) -> float:
    if not isinstance(confidence, (int, float, np.floating)) or not 0.0 < float(confidence) < 1.0:
        raise ValueError(f"confidence must be a number in (0, 1), got {confidence!r}")
    return float(confidence)


def _check_n_resamples(n_resamples: int) -> int:
    if isinstance(n_resamples, bool) or not isinstance(n_resamples, (int, np.integer)) or n_resamples < 1:
        raise ValueError(f"n_resamples must be a positive integer, got {n_resamples!r}")
    return int(n_resamples)


def _rng(random_state: RandomState) -> np.random.Generator:
    """A generator from an explicit ``int`` seed (fresh each call) or a given ``Generator``."""
    if isinstance(random_state, np.random.Generator):
        return random_state
    if isinstance(random_state, bool) or not isinstance(random_state, (int, np.integer)) or random_state < 0:
        raise ValueError(f"random_state must be a non-negative int or numpy.random.Generator, got {random_state!r}")
    return np.random.default_rng(int(random_state))


def _sample(x: ArrayLike, name: str) -> np.ndarray:
    """A non-empty 1-D float array without NaN."""
    try:
        arr = np.asarray(x, dtype=float)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{name} must be a 1-D numeric array: {err}") from None
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {arr.shape}")
    if arr.size == 0:
        raise ValueError(f"{name} must be non-empty")
    if np.isnan(arr).any():
        raise ValueError(f"{name} contains NaN")
    return arr


def _strata(samples: ArrayLike | Sequence[ArrayLike], name: str) -> list[np.ndarray]:
    """One 1-D sample -> ``[sample]``; a sequence of 1-D samples (one per stratum) -> a list."""
    if isinstance(samples, np.ndarray):
        if samples.ndim != 1:
            raise ValueError(f"{name} must be a 1-D array or a sequence of 1-D arrays, got shape {samples.shape}")
        return [_sample(samples, name)]
    if not isinstance(samples, Sequence) or isinstance(samples, (str, bytes)):
        raise ValueError(f"{name} must be a 1-D array or a sequence of 1-D arrays")
    if len(samples) == 0:
        raise ValueError(f"{name} must be non-empty")
    if all(np.ndim(s) == 0 for s in samples):
        return [_sample(samples, name)]
    return [_sample(s, f"{name}[{i}]") for i, s in enumerate(samples)]


def _curves(curves: ArrayLike, name: str = "curves") -> np.ndarray:
    """A float array ``[n_seeds, n_steps]`` with both sizes positive (NaN and inf allowed)."""
    try:
        arr = np.asarray(curves, dtype=float)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{name} must be a numeric array [n_seeds, n_steps]: {err}") from None
    if arr.ndim != 2:
        raise ValueError(f"{name} must have shape [n_seeds, n_steps], got shape {arr.shape}")
    if arr.size == 0:
        raise ValueError(f"{name} must be non-empty, got shape {arr.shape}")
    return arr


# --------------------------------------------------------------------------------------------
# point estimates and intervals


def iqm(x: ArrayLike, axis: int | None = None) -> np.ndarray | float:
    """Interquartile mean: the mean of the middle 50% of the values.

    ``IQM(x) = mean(x_(k+1), ..., x_(n-k))`` over the sorted values ``x_(1) <= ... <= x_(n)``
    with ``k = floor(n / 4)`` cut from each end, i.e. ``scipy.stats.trim_mean(x, 0.25, axis)``
    (Agarwal et al. 2021, Sec. 4.3: robust to outlier runs, more efficient than the median).
    ``axis=None`` pools all values. E.g. ``iqm([1, ..., 8]) = mean(3, 4, 5, 6) = 4.5``.
    """
    arr = np.asarray(x, dtype=float)
    if arr.size == 0:
        raise ValueError("x must be non-empty")
    if np.isnan(arr).any():
        raise ValueError("x contains NaN")
    return scipy.stats.trim_mean(arr, 0.25, axis=axis)


def _concat(parts: Sequence[np.ndarray]) -> np.ndarray:
    """Concatenate along the last axis, broadcasting the leading (resample) axes."""
    lead = np.broadcast_shapes(*(p.shape[:-1] for p in parts))
    return np.concatenate([np.broadcast_to(p, lead + p.shape[-1:]) for p in parts], axis=-1)


def _stratified_bootstrap(
    strata: list[np.ndarray],
    stat: Callable[[list[np.ndarray]], np.ndarray],
    confidence: float,
    n_resamples: int,
    method: str,
    random_state: RandomState,
) -> Interval:
    """Point estimate and interval of ``stat(strata)``, resampling runs within each stratum.

    Each stratum is resampled with replacement to its own size, independently of the others
    (``scipy.stats.bootstrap`` with several samples, ``paired=False``): the stratified
    bootstrap of Agarwal et al. 2021, Sec. 4.1. ``stat`` maps a list of arrays ``[..., n_i]``
    (the strata, with shared leading resample axes) to an array ``[...]``.

    A stratum with one run resamples to itself, so it is held fixed rather than passed to
    scipy (which needs two runs per sample). When every stratum is constant every resample
    equals the data and the interval is ``(point, point, point)``; scipy is not called
    (it would warn, and BCa would be undefined).
    """
    confidence = _check_confidence(confidence)
    n_resamples = _check_n_resamples(n_resamples)
    if not isinstance(method, str) or method.lower() not in _METHODS:
        raise ValueError(f"method must be one of {_METHODS}, got {method!r}")
    rng = _rng(random_state)
    point = float(stat(strata))
    if all(np.all(s == s[0]) for s in strata):
        return point, point, point
    free = [i for i, s in enumerate(strata) if s.size > 1]

    def vectorised(*resampled: np.ndarray, axis: int = -1) -> np.ndarray:
        parts = list(strata)
        for i, r in zip(free, resampled):
            parts[i] = np.moveaxis(r, axis, -1)
        lead = np.broadcast_shapes(*(p.shape[:-1] for p in parts))
        return stat([np.broadcast_to(p, lead + p.shape[-1:]) for p in parts])

    with warnings.catch_warnings(), np.errstate(all="ignore"):
        # a degenerate bootstrap distribution (e.g. a statistic that ignores the resampling)
        # makes BCa's acceleration 0/0; that case is resolved below, not warned about
        warnings.simplefilter("ignore", scipy.stats.DegenerateDataWarning)
        res = scipy.stats.bootstrap(
            tuple(strata[i] for i in free),
            vectorised,
            n_resamples=n_resamples,
            vectorized=True,
            paired=False,
            axis=-1,
            confidence_level=confidence,
            method=method,
            **{_RNG_KW: rng},
        )
    low, high = float(res.confidence_interval.low), float(res.confidence_interval.high)
    if math.isnan(low) or math.isnan(high):
        dist = res.bootstrap_distribution
        if np.all(dist == dist[..., :1]):
            return point, point, point
        raise ValueError(f"method={method!r} gives no interval for these samples; use method='percentile'")
    return point, low, high


def bootstrap_ci(
    samples: ArrayLike | Sequence[ArrayLike],
    statistic: Callable[..., ArrayLike] = iqm,
    *,
    confidence: float = 0.95,
    n_resamples: int = 2000,
    method: str = "percentile",
    random_state: RandomState = 0,
) -> Interval:
    """Statistic of the runs with a (stratified) bootstrap confidence interval.

    ``samples`` is one 1-D array (the runs of one task) or a sequence of 1-D arrays, one per
    task (stratum). The statistic of several strata is ``statistic(concat(strata))``, computed
    on all runs of all tasks pooled (the aggregate IQM of Agarwal et al. 2021, Sec. 4.3). The
    interval comes from ``scipy.stats.bootstrap``: each stratum is resampled with replacement
    within itself, keeping its size (stratified bootstrap, Agarwal et al. 2021, Sec. 4.1), and
    the ``confidence`` interval of the ``n_resamples`` bootstrap statistics is taken by
    ``method`` (``"percentile"``, ``"basic"`` or ``"BCa"``).

    ``statistic(x, axis)`` must reduce ``x`` along ``axis`` (like :func:`iqm` or ``np.mean``).
    Returns ``(point, low, high)``; ``(point, point, point)`` when every stratum is constant
    (a single run included), since then every resample equals the data.
    """
    strata = _strata(samples, "samples")
    if not callable(statistic):
        raise ValueError("statistic must be callable as statistic(x, axis)")
    return _stratified_bootstrap(
        strata,
        lambda parts: np.asarray(statistic(_concat(parts), axis=-1), dtype=float),
        confidence,
        n_resamples,
        method,
        random_state,
    )


def bootstrap_band(
    curves: ArrayLike,
    statistic: Callable[..., ArrayLike] = iqm,
    *,
    confidence: float = 0.95,
    n_resamples: int = 2000,
    random_state: RandomState = 0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-step statistic of ``curves [n_seeds, n_steps]`` over seeds, with a percentile band.

    One ``scipy.stats.bootstrap`` call resamples whole seeds (the same resampled seeds for every
    step, so the band is that of a curve, not of independent steps) and reduces along the seed
    axis. Returns ``(point, low, high)``, each ``[n_steps]``; steps where every seed agrees get
    ``low = high = point``. NaN (a frozen non-finite seed) is not allowed: drop such seeds or
    summarise them separately.
    """
    x = np.asarray(curves, dtype=float)
    if x.ndim != 2 or x.shape[0] == 0 or x.shape[1] == 0:
        raise ValueError(f"curves must have shape [n_seeds, n_steps] with both > 0, got {x.shape}")
    if not np.all(np.isfinite(x)):
        raise ValueError("curves: non-finite values; bootstrap bands need finite curves")
    confidence = _check_confidence(confidence)
    n_resamples = _check_n_resamples(n_resamples)
    point = np.asarray(statistic(x, axis=0), dtype=float)
    constant = np.all(x == x[:1], axis=0)
    if x.shape[0] < 2 or np.all(constant):
        return point, point.copy(), point.copy()
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore", scipy.stats.DegenerateDataWarning)
        res = scipy.stats.bootstrap(
            (x,),
            statistic,
            n_resamples=n_resamples,
            vectorized=True,
            axis=0,
            confidence_level=confidence,
            method="percentile",
            **{_RNG_KW: _rng(random_state)},
        )
    low = np.where(constant, point, res.confidence_interval.low)
    high = np.where(constant, point, res.confidence_interval.high)
    return point, low, high


def curve_bands(
    df: pd.DataFrame,
    metric: str = "expected_reward",
    *,
    group: Sequence[str] = ("method",),
    confidence: float = 0.95,
    n_resamples: int = 2000,
    random_state: RandomState = 0,
) -> pd.DataFrame:
    """Per group and step: IQM of ``metric`` over seeds with a bootstrap band (:func:`bootstrap_band`).

    Returns a tidy table with the group columns, ``step``, ``iqm``, ``low``, ``high``,
    ``n_seeds`` and ``n_dropped``: seeds whose curve holds a non-finite value (a run frozen by a
    non-finite parameter) cannot enter a band and are counted there instead of vanishing.
    """
    group = list(group)
    missing = [c for c in [*group, "seed", "step", metric] if c not in df.columns]
    if missing:
        raise ValueError(f"curve_bands: missing column(s) {', '.join(missing)}")
    out = []
    for keys, frame in df.groupby(group, sort=False):
        keys = keys if isinstance(keys, tuple) else (keys,)
        _check_grid(frame, _label(keys, tuple(group)))
        curves = _pivot(frame, metric)
        finite = np.all(np.isfinite(curves.to_numpy(dtype=float)), axis=1)
        kept = curves.to_numpy(dtype=float)[finite]
        steps = curves.columns.to_numpy()
        if kept.shape[0] == 0:
            point = low = high = np.full(steps.shape, np.nan)
        else:
            point, low, high = bootstrap_band(
                kept, confidence=confidence, n_resamples=n_resamples, random_state=random_state
            )
        block = pd.DataFrame({"step": steps, "iqm": point, "low": low, "high": high})
        block["n_seeds"] = int(finite.sum())
        block["n_dropped"] = int((~finite).sum())
        for k, v in zip(group, keys):
            block.insert(0, k, v)
        out.append(block)
    return pd.concat(out, ignore_index=True)


def probability_of_improvement(
    x: ArrayLike | Sequence[ArrayLike],
    y: ArrayLike | Sequence[ArrayLike],
    *,
    confidence: float = 0.95,
    n_resamples: int = 2000,
    random_state: RandomState = 0,
) -> Interval:
    """Probability that a run of X beats a run of Y, with a stratified bootstrap interval.

    For independent runs ``x_1..x_n`` and ``y_1..y_m`` of one task,
    ``P(X > Y) = 1/(n m) sum_i sum_j [ 1{x_i > y_j} + 1/2 1{x_i = y_j} ]``, the Mann-Whitney
    ``U`` statistic of ``x`` divided by ``n m`` (``scipy.stats.mannwhitneyu``). With one array
    per task (``x`` and ``y`` sequences of equal length) the per-task probabilities are
    averaged over tasks (Agarwal et al. 2021, Sec. 4.3). The interval resamples the runs of
    ``x`` and of ``y`` independently within each task (``scipy.stats.bootstrap``,
    ``paired=False``; percentile method). Returns ``(point, low, high)``.
    """
    xs, ys = _strata(x, "x"), _strata(y, "y")
    if len(xs) != len(ys):
        raise ValueError(f"x and y must have the same number of tasks, got {len(xs)} and {len(ys)}")
    k = len(xs)
    sizes = [a.size * b.size for a, b in zip(xs, ys)]

    def stat(parts: list[np.ndarray]) -> np.ndarray:
        per_task = [
            scipy.stats.mannwhitneyu(parts[t], parts[k + t], axis=-1, method="asymptotic").statistic / sizes[t]
            for t in range(k)
        ]
        return np.mean(per_task, axis=0)

    return _stratified_bootstrap(xs + ys, stat, confidence, n_resamples, "percentile", random_state)


def wilson_ci(k: int, n: int, confidence: float = 0.95) -> Interval:
    """Proportion ``k / n`` with its Wilson score interval (Wilson 1927).

    ``(p + z^2/2n -+ z sqrt(p(1-p)/n + z^2/4n^2)) / (1 + z^2/n)`` with ``p = k/n`` and ``z``
    the two-sided normal quantile, via ``scipy.stats.binomtest(k, n).proportion_ci(method=
    "wilson")``. Unlike the normal interval it stays inside [0, 1] and is not empty at
    ``k = 0`` (upper bound ``z^2 / (n + z^2)``). Returns ``(k/n, low, high)``.
    """
    confidence = _check_confidence(confidence)
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"n must be a positive integer, got {n!r}")
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 0 <= k <= n:
        raise ValueError(f"k must be an integer in [0, n={n}], got {k!r}")
    ci = scipy.stats.binomtest(int(k), int(n)).proportion_ci(confidence_level=confidence, method="wilson")
    return k / n, float(ci.low), float(ci.high)


def clopper_pearson_ci(k: int, n: int, confidence: float = 0.95) -> Interval:
    """Proportion ``k / n`` with its exact (Clopper-Pearson 1934) interval, the one to state for a
    collapse rate over few seeds: it never undercovers, and at ``k = 0`` its upper bound is
    ``1 - (alpha/2)^(1/n)``. Via ``scipy.stats.binomtest(k, n).proportion_ci(method="exact")``.
    Returns ``(k/n, low, high)``."""
    confidence = _check_confidence(confidence)
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"n must be a positive integer, got {n!r}")
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 0 <= k <= n:
        raise ValueError(f"k must be an integer in [0, n={n}], got {k!r}")
    ci = scipy.stats.binomtest(int(k), int(n)).proportion_ci(confidence_level=confidence, method="exact")
    return k / n, float(ci.low), float(ci.high)


# --------------------------------------------------------------------------------------------
# per-seed summaries of reward curves


def final_reward(curves: ArrayLike, last: int = 1) -> np.ndarray:
    """Final reward per seed: ``mean(R[:, -last:], axis=1)``, shape ``[n_seeds]``.

    Averaging the last few steps reduces the step-to-step noise of a sampled curve. A NaN in
    those steps gives NaN for that seed.
    """
    arr = _curves(curves)
    if isinstance(last, bool) or not isinstance(last, (int, np.integer)) or not 1 <= last <= arr.shape[1]:
        raise ValueError(f"last must be an integer in [1, n_steps={arr.shape[1]}], got {last!r}")
    return arr[:, -int(last) :].mean(axis=1)


def area_under_curve(curves: ArrayLike) -> np.ndarray:
    """Normalised area under each seed's curve: ``mean_t R[:, t]``, shape ``[n_seeds]``.

    This is the plain (trapezoid-free) mean of the per-step values, i.e. the area of the step
    function through the curve divided by the number of steps, so it lies on the reward's
    scale and rewards fast as well as high learning. A NaN anywhere gives NaN for that seed.
    """
    return _curves(curves).mean(axis=1)


def steps_to_threshold(curves: ArrayLike, threshold: float, steps: ArrayLike | None = None) -> np.ndarray:
    """First step at which each seed's curve reaches ``threshold``, shape ``[n_seeds]``.

    ``min { t : R[:, t] >= threshold }``, reported as the index ``t`` or, if ``steps`` (the
    step labels, shape ``[n_steps]``) is given, as ``steps[t]``. A seed that never reaches the
    threshold gets NaN (a NaN reward never counts as reaching it). Float output.
    """
    arr = _curves(curves)
    if not isinstance(threshold, (int, float, np.integer, np.floating)) or not math.isfinite(threshold):
        raise ValueError(f"threshold must be a finite number, got {threshold!r}")
    if steps is None:
        labels = np.arange(arr.shape[1], dtype=float)
    else:
        labels = np.asarray(steps, dtype=float)
        if labels.shape != (arr.shape[1],):
            raise ValueError(f"steps must have shape [n_steps]=({arr.shape[1]},), got {labels.shape}")
        if not np.isfinite(labels).all():
            raise ValueError("steps must be finite")
    reached = arr >= threshold
    first = np.argmax(reached, axis=1)
    return np.where(reached.any(axis=1), labels[first], np.nan)


# --------------------------------------------------------------------------------------------
# collapse


@dataclass(frozen=True)
class CollapseRule:
    """When a run counts as collapsed.

    A run has collapsed at step ``t`` if

    (a) a non-finite value appeared at or before ``t``: ``nonfinite[:, s]`` (the simulator saw a
        NaN/inf at step ``s``) or ``R[:, s]`` itself is NaN or inf, for some ``s <= t``; or
    (b) its expected reward fell below ``(1 - drop) * peak_t`` where ``peak_t = max_{s<=t} R_s``
        is the best reward so far, counted only when ``peak_t >= min_peak``. For rewards
        ``>= 0`` this means it lost more than a fraction ``drop`` of its best reward; ``min_peak``
        keeps runs that never learned (noise around a tiny peak) from counting.

    Collapse is sticky: once collapsed, a run stays collapsed at every later step.
    ``0 < drop <= 1``; ``drop = 1`` leaves only rule (a) for non-negative rewards.
    """

    drop: float = 0.5
    min_peak: float = 0.0

    def __post_init__(self) -> None:
        if not isinstance(self.drop, (int, float, np.integer, np.floating)) or not 0.0 < self.drop <= 1.0:
            raise ValueError(f"drop must be in (0, 1], got {self.drop!r}")
        if not isinstance(self.min_peak, (int, float, np.integer, np.floating)) or not math.isfinite(self.min_peak):
            raise ValueError(f"min_peak must be a finite number, got {self.min_peak!r}")

    def detect(self, curves: ArrayLike, nonfinite: ArrayLike | None = None) -> np.ndarray:
        """Boolean array ``[n_seeds, n_steps]``: collapsed at or before each step (see class doc)."""
        arr = _curves(curves)
        bad = ~np.isfinite(arr)
        if nonfinite is not None:
            flags = np.asarray(nonfinite)
            if flags.dtype != bool:
                raise ValueError(f"nonfinite must be a bool array, got dtype {flags.dtype}")
            if flags.shape != arr.shape:
                raise ValueError(f"nonfinite must have the shape of curves {arr.shape}, got {flags.shape}")
            bad = bad | flags
        values = np.where(bad, np.nan, arr)
        peak = np.fmax.accumulate(values, axis=1)  # NaN-ignoring running max; NaN before any finite value
        dropped = (values < (1.0 - self.drop) * peak) & (peak >= self.min_peak)  # NaN compares False
        return np.logical_or.accumulate(bad | dropped, axis=1)


def collapsed(curves: ArrayLike, nonfinite: ArrayLike | None = None, rule: CollapseRule = CollapseRule()) -> np.ndarray:
    """``rule.detect(curves, nonfinite)``: boolean ``[n_seeds, n_steps]``, see :class:`CollapseRule`."""
    if not isinstance(rule, CollapseRule):
        raise ValueError(f"rule must be a CollapseRule, got {type(rule).__name__}")
    return rule.detect(curves, nonfinite)


# --------------------------------------------------------------------------------------------
# tidy results -> one row per method


def _py(value: object) -> object:
    """A NumPy scalar as the Python scalar it holds (for readable error messages)."""
    return value.item() if isinstance(value, np.generic) else value


def _label(keys: tuple, group: tuple[str, ...]) -> str:
    return ", ".join(f"{g}={_py(k)!r}" for g, k in zip(group, keys))


def _pivot(frame: pd.DataFrame, column: str) -> pd.DataFrame:
    """``[seed, step]`` table of one column, seeds and steps sorted ascending."""
    return frame.pivot(index="seed", columns="step", values=column).sort_index(axis=0).sort_index(axis=1)


def _check_grid(frame: pd.DataFrame, where: str) -> None:
    """Every seed has every step exactly once."""
    dup = frame.duplicated(["seed", "step"])
    if dup.any():
        row = frame[dup].iloc[0]
        raise ValueError(f"{where}: seed {_py(row['seed'])!r} has step {_py(row['step'])!r} more than once")
    counts = frame.groupby("seed").size()
    n_steps = frame["step"].nunique()
    ragged = counts[counts != n_steps]
    if len(ragged):
        seeds = ragged.index.tolist()
        raise ValueError(
            f"{where}: seed {seeds[0]!r} has {ragged.iloc[0]} of the {n_steps} steps (ragged seeds: {seeds})"
        )


def _summarize_group(
    frame: pd.DataFrame,
    where: str,
    metric: str,
    threshold: float | None,
    last: int,
    rule: CollapseRule,
    nan_policy: str,
    boot: dict,
) -> tuple[dict, np.ndarray]:
    """One summary row and the per-seed final rewards (finite seeds) of one group."""
    _check_grid(frame, where)
    table = _pivot(frame, metric)
    curves = table.to_numpy(dtype=float)
    finite = np.isfinite(curves).all(axis=1)
    if nan_policy == "raise" and not finite.all():
        seeds = table.index[~finite].tolist()
        raise ValueError(
            f"{where}: column {metric!r} is not finite for seeds {seeds}; pass nan_policy='omit' to leave "
            "them out of the reward statistics (they still count as collapsed)"
        )
    row: dict = {"n_seeds": curves.shape[0], "n_finite": int(finite.sum())}
    final = final_reward(curves, last)[finite]
    auc = area_under_curve(curves)[finite]
    nan3 = (np.nan, np.nan, np.nan)
    row["final_iqm"], row["final_low"], row["final_high"] = bootstrap_ci(final, iqm, **boot) if final.size else nan3
    row["final_mean"] = float(final.mean()) if final.size else np.nan
    row["auc_iqm"], row["auc_low"], row["auc_high"] = bootstrap_ci(auc, iqm, **boot) if auc.size else nan3

    if "collapsed" in frame.columns:
        is_collapsed = _pivot(frame, "collapsed").to_numpy(dtype=bool).any(axis=1)
    else:
        flags = _pivot(frame, "nonfinite").to_numpy(dtype=bool) if "nonfinite" in frame.columns else None
        is_collapsed = rule.detect(curves, flags)[:, -1]
    row["collapse_rate"], row["collapse_low"], row["collapse_high"] = wilson_ci(
        int(is_collapsed.sum()), len(is_collapsed), boot["confidence"]
    )

    if threshold is not None:
        labels = table.columns.to_numpy(dtype=float)
        hit = steps_to_threshold(curves, threshold, steps=labels)
        reached = ~np.isnan(hit)
        row["steps_to_threshold_median"] = float(np.median(hit[reached])) if reached.any() else np.nan
        row["reached_frac"] = float(reached.mean())
    return row, final


def summarize_runs(
    df: pd.DataFrame,
    *,
    metric: str = "expected_reward",
    threshold: float | None = None,
    reference: str | None = None,
    confidence: float = 0.95,
    n_resamples: int = 2000,
    random_state: RandomState = 0,
    group: Sequence[str] = ("method",),
    last: int = 1,
    rule: CollapseRule = CollapseRule(),
    nan_policy: Literal["raise", "omit"] = "raise",
) -> pd.DataFrame:
    """One row per method (per ``group``) summarising its seeds, from a tidy result table.

    ``df`` has one row per (method, seed, step) with columns ``method`` (the ``group``
    columns), ``seed``, ``step``, ``metric`` and optionally ``collapsed`` and ``nonfinite``
    (bool). Each group is pivoted to curves ``R[seed, step]`` (seeds, then steps, ascending);
    every seed must have every step once. Columns of the result:

    - the ``group`` columns, ``n_seeds``, and ``n_finite`` (seeds whose curve is finite);
    - ``final_iqm, final_low, final_high``: IQM over seeds of :func:`final_reward` (mean of the
      ``last`` steps) with its bootstrap interval (:func:`bootstrap_ci`); ``final_mean``;
    - ``auc_iqm, auc_low, auc_high``: the same for :func:`area_under_curve`;
    - ``collapse_rate, collapse_low, collapse_high``: fraction of seeds collapsed by their last
      step with its Wilson interval (:func:`wilson_ci`). A ``collapsed`` column is used as
      given (a seed flagged at any step counts); otherwise ``rule`` (:class:`CollapseRule`) is
      applied to the curves and the ``nonfinite`` column;
    - if ``threshold`` is given: ``steps_to_threshold_median`` (median step label at which a
      seed first reaches it, over the seeds that do; NaN if none) and ``reached_frac``;
    - if ``reference`` names a method: ``p_improve, p_improve_low, p_improve_high``, the
      :func:`probability_of_improvement` of final reward over that method's (within the same
      values of the other ``group`` columns); NaN on the reference's own rows.

    A non-finite ``metric`` value raises by default; with ``nan_policy="omit"`` such seeds are
    left out of the reward statistics (final, AUC, p_improve) but still count in ``n_seeds``
    and as collapsed. ``random_state`` seeds every interval (an ``int`` seeds each afresh).
    """
    if not isinstance(df, pd.DataFrame):
        raise ValueError(f"df must be a pandas DataFrame, got {type(df).__name__}")
    group = (group,) if isinstance(group, str) else tuple(group)
    if not group:
        raise ValueError("group must name at least one column")
    needed = [*group, "seed", "step", metric]
    missing = [c for c in needed if c not in df.columns]
    if missing:
        raise ValueError(f"df lacks columns {missing} (has {list(df.columns)})")
    if df.empty:
        raise ValueError("df has no rows")
    for col in [*group, "seed", "step"]:
        if df[col].isna().any():
            raise ValueError(f"df column {col!r} has missing values in rows {list(df.index[df[col].isna()][:5])}")
    if not pd.api.types.is_numeric_dtype(df["step"]):
        raise ValueError(f"df column 'step' must be numeric, got dtype {df['step'].dtype}")
    if not pd.api.types.is_numeric_dtype(df[metric]) or pd.api.types.is_bool_dtype(df[metric]):
        raise ValueError(f"df column {metric!r} must be numeric, got dtype {df[metric].dtype}")
    for col in ("collapsed", "nonfinite"):
        if col in df.columns and not pd.api.types.is_bool_dtype(df[col]):
            raise ValueError(f"df column {col!r} must be bool, got dtype {df[col].dtype}")
    if threshold is not None and (
        not isinstance(threshold, (int, float, np.integer, np.floating)) or not math.isfinite(threshold)
    ):
        raise ValueError(f"threshold must be a finite number or None, got {threshold!r}")
    if nan_policy not in ("raise", "omit"):
        raise ValueError(f"nan_policy must be 'raise' or 'omit', got {nan_policy!r}")
    if not isinstance(rule, CollapseRule):
        raise ValueError(f"rule must be a CollapseRule, got {type(rule).__name__}")
    boot = {
        "confidence": _check_confidence(confidence),
        "n_resamples": _check_n_resamples(n_resamples),
        "random_state": random_state,
    }
    _rng(random_state)  # validate once, before any work

    rows, finals = [], {}
    for keys, frame in df.groupby(list(group), sort=True):
        keys = keys if isinstance(keys, tuple) else (keys,)
        row, final = _summarize_group(frame, _label(keys, group), metric, threshold, last, rule, nan_policy, boot)
        rows.append({**dict(zip(group, keys)), **row})
        finals[keys] = final

    if reference is not None:
        if "method" not in group:
            raise ValueError(f"reference needs 'method' among the group columns, got group={group}")
        m = group.index("method")
        methods = sorted({k[m] for k in finals})
        if reference not in methods:
            raise ValueError(f"reference {reference!r} is not a method in df; methods: {methods}")
        for row, keys in zip(rows, finals):
            ref_keys = keys[:m] + (reference,) + keys[m + 1 :]
            if ref_keys not in finals:
                raise ValueError(f"reference {reference!r} has no runs for {_label(ref_keys, group)}")
            x, y = finals[keys], finals[ref_keys]
            if keys == ref_keys or not x.size or not y.size:
                pi = (np.nan, np.nan, np.nan)
            else:
                pi = probability_of_improvement(x, y, **boot)
            row["p_improve"], row["p_improve_low"], row["p_improve_high"] = pi
    return pd.DataFrame(rows)
