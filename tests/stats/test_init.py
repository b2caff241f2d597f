"""drpo_sim.stats against values computed by hand on small arrays."""

import math

import numpy as np
import pandas as pd
import pytest
import scipy.stats

from drpo_sim import stats as S

# any warning (RuntimeWarning, scipy's DegenerateDataWarning, ...) fails these tests
pytestmark = pytest.mark.filterwarnings("error")

NR = 400  # resamples: enough for the properties tested, fast


# ----------------------------------------------------------------------------- iqm


def test_iqm_by_hand_on_cpu():
    # n = 8: cut floor(8/4) = 2 from each end -> mean(3, 4, 5, 6)
    assert S.iqm(np.arange(1, 9)) == pytest.approx(4.5)
    # n = 5: cut 1 from each end of [1, 2, 3, 4, 100] -> mean(2, 3, 4); robust to the outlier
    assert S.iqm([100.0, 3.0, 1.0, 4.0, 2.0]) == pytest.approx(3.0)
    # n = 3: nothing cut -> plain mean
    assert S.iqm([0.0, 0.3, 0.9]) == pytest.approx(0.4)


def test_iqm_axis_on_cpu():
    x = np.array([np.arange(1, 9), np.arange(2, 10)], dtype=float)
    np.testing.assert_allclose(S.iqm(x, axis=1), [4.5, 5.5])
    # axis=None pools all 16 values: cut 4 from each end of [1,2,2,3,3,...,8,8,9]
    assert S.iqm(x) == pytest.approx(np.mean(np.sort(x.ravel())[4:12]))


@pytest.mark.parametrize("bad, match", [([], "x must be non-empty"), ([1.0, np.nan], "x contains NaN")])
def test_iqm_errors(bad, match):
    with pytest.raises(ValueError, match=match):
        S.iqm(bad)


# ----------------------------------------------------------------------------- bootstrap_ci


def test_bootstrap_ci_matches_scipy_for_one_sample_on_cpu():
    x = np.random.default_rng(1).normal(size=25)
    point, low, high = S.bootstrap_ci(x, n_resamples=NR, random_state=3)
    ref = scipy.stats.bootstrap(
        (x,),
        lambda s, axis: scipy.stats.trim_mean(s, 0.25, axis=axis),
        vectorized=True,
        n_resamples=NR,
        method="percentile",
        **{S._RNG_KW: np.random.default_rng(3)},  # `rng` in scipy >= 1.15
    )
    assert point == pytest.approx(scipy.stats.trim_mean(x, 0.25))
    assert (low, high) == pytest.approx((ref.confidence_interval.low, ref.confidence_interval.high))


@pytest.mark.parametrize("method", ["percentile", "basic", "BCa"])
def test_bootstrap_ci_contains_point_on_cpu(method):
    x = np.random.default_rng(2).uniform(size=30)
    point, low, high = S.bootstrap_ci(x, n_resamples=NR, method=method)
    assert low <= point <= high
    assert low < high


def test_bootstrap_ci_narrows_with_more_data_on_cpu():
    rng = np.random.default_rng(4)
    _, lo_small, hi_small = S.bootstrap_ci(rng.normal(size=10), n_resamples=NR)
    _, lo_big, hi_big = S.bootstrap_ci(rng.normal(size=1000), n_resamples=NR)
    assert hi_big - lo_big < 0.5 * (hi_small - lo_small)


def test_bootstrap_ci_reproducible():
    x = np.random.default_rng(5).normal(size=20)
    a = S.bootstrap_ci(x, n_resamples=NR, random_state=7)
    assert S.bootstrap_ci(x, n_resamples=NR, random_state=7) == a
    assert S.bootstrap_ci(x, n_resamples=NR) == S.bootstrap_ci(x, n_resamples=NR)  # default seed is fixed
    assert S.bootstrap_ci(x, n_resamples=NR, random_state=np.random.default_rng(7)) == a
    assert S.bootstrap_ci(x, n_resamples=NR, random_state=8) != a


def test_bootstrap_ci_strata_pooled_statistic_on_cpu():
    a, b = np.array([0.1, 0.2, 0.3]), np.array([0.5, 0.7])
    point, low, high = S.bootstrap_ci([a, b], np.mean, n_resamples=NR)
    assert point == pytest.approx(0.36)  # (0.1+0.2+0.3+0.5+0.7) / 5, runs of all tasks pooled
    assert low <= point <= high


@pytest.mark.parametrize("method", ["percentile", "basic", "BCa"])
def test_stratified_resampling_keeps_strata_sizes_on_cpu(method):
    a = np.array([0.1, 0.4, 0.2])  # stratum A: values below 5
    b = np.array([10.0, 10.5, 10.2, 10.9, 10.1, 10.3, 10.7])  # stratum B: values above 5

    def count_a(z, axis):
        return np.sum(z < 5, axis=axis).astype(float)

    def count_all(z, axis):
        return np.full(np.delete(z.shape, axis), float(z.shape[axis]))

    # a pooled resample would vary the number of A-runs; a stratified one always has 3 of 10
    assert S.bootstrap_ci([a, b], count_a, n_resamples=NR, method=method) == (3.0, 3.0, 3.0)
    assert S.bootstrap_ci([a, b], count_all, n_resamples=NR, method=method) == (10.0, 10.0, 10.0)


def test_bootstrap_ci_degenerate_on_cpu():
    assert S.bootstrap_ci([0.7]) == (0.7, 0.7, 0.7)
    assert S.bootstrap_ci(np.full(5, 0.25), method="BCa") == (0.25, 0.25, 0.25)
    assert S.bootstrap_ci([[1.0], [2.0]], np.mean) == (1.5, 1.5, 1.5)  # every stratum one run
    assert S.bootstrap_ci([[1.0, 1.0], [3.0]], np.mean) == pytest.approx((5 / 3, 5 / 3, 5 / 3))


def test_bootstrap_ci_single_run_stratum_held_fixed_on_cpu():
    x = np.random.default_rng(6).uniform(size=12)
    point, low, high = S.bootstrap_ci([x, [100.0]], np.max, n_resamples=NR)
    assert (point, low, high) == (100.0, 100.0, 100.0)  # the single run is in every resample
    point, low, high = S.bootstrap_ci([x, [0.5]], np.mean, n_resamples=NR, method="BCa")
    assert point == pytest.approx((x.sum() + 0.5) / 13)
    assert low <= point <= high


@pytest.mark.parametrize(
    "samples, kwargs, match",
    [
        ([], {}, "samples must be non-empty"),
        (np.array([]), {}, "samples must be non-empty"),
        ([np.array([0.1, 0.2]), np.array([])], {}, r"samples\[1\] must be non-empty"),
        ([0.1, np.nan], {}, "samples contains NaN"),
        ([[0.1, 0.2], [0.3, np.nan]], {}, r"samples\[1\] contains NaN"),
        (np.ones((2, 3)), {}, "samples must be a 1-D array or a sequence"),
        ([np.ones((2, 2))], {}, r"samples\[0\] must be 1-D"),
        ("abc", {}, "samples must be a 1-D array"),
        ([0.1, 0.2], {"confidence": 0.0}, "confidence must be"),
        ([0.1, 0.2], {"confidence": 1.0}, "confidence must be"),
        ([0.1, 0.2], {"confidence": 95}, "confidence must be"),
        ([0.1, 0.2], {"n_resamples": 0}, "n_resamples must be"),
        ([0.1, 0.2], {"n_resamples": 10.5}, "n_resamples must be"),
        ([0.1, 0.2], {"method": "normal"}, "method must be one of"),
        ([0.1, 0.2], {"random_state": -1}, "random_state must be"),
        ([0.1, 0.2], {"random_state": None}, "random_state must be"),
        ([0.1, 0.2], {"random_state": "0"}, "random_state must be"),
        ([0.1, 0.2], {"statistic": "iqm"}, "statistic must be callable"),
    ],
)
def test_bootstrap_ci_errors(samples, kwargs, match):
    kwargs = dict(kwargs)
    statistic = kwargs.pop("statistic", S.iqm)
    with pytest.raises(ValueError, match=match):
        S.bootstrap_ci(samples, statistic, n_resamples=kwargs.pop("n_resamples", NR), **kwargs)


# ----------------------------------------------------------------------------- probability of improvement


def test_probability_of_improvement_by_hand_on_cpu():
    # x = [0, 1, 2, 3] vs y = [1.5, 2.5]: 2 and 3 beat 1.5, 3 beats 2.5 -> 3 of 8 pairs
    assert S.probability_of_improvement([0.0, 1.0, 2.0, 3.0], [1.5, 2.5], n_resamples=NR)[0] == pytest.approx(3 / 8)
    # ties count one half: x = [1, 2, 3] vs y = [2, 2] -> (0 + 0 + .5 + .5 + 1 + 1) / 6
    assert S.probability_of_improvement([1.0, 2.0, 3.0], [2.0, 2.0], n_resamples=NR)[0] == pytest.approx(0.5)


def test_probability_of_improvement_separated_and_identical_on_cpu():
    x = np.random.default_rng(7).uniform(size=8)
    assert S.probability_of_improvement(x + 1.0, x, n_resamples=NR) == (1.0, 1.0, 1.0)
    assert S.probability_of_improvement(x, x + 1.0, n_resamples=NR) == (0.0, 0.0, 0.0)
    point, low, high = S.probability_of_improvement(x, x, n_resamples=NR)
    assert point == 0.5
    assert low < 0.5 < high
    assert S.probability_of_improvement([0.3, 0.3], [0.3], n_resamples=NR) == (0.5, 0.5, 0.5)


def test_probability_of_improvement_complementary_on_cpu():
    rng = np.random.default_rng(8)
    x, y = rng.integers(0, 4, size=9).astype(float), rng.integers(0, 4, size=6).astype(float)  # with ties
    pxy = S.probability_of_improvement(x, y, n_resamples=NR)[0]
    pyx = S.probability_of_improvement(y, x, n_resamples=NR)[0]
    assert pxy + pyx == pytest.approx(1.0)


def test_probability_of_improvement_averages_tasks_on_cpu():
    # task 1: X always better (1.0); task 2: X always worse (0.0) -> mean 0.5
    x = [np.array([1.0, 2.0]), np.array([0.0, 0.1, 0.2])]
    y = [np.array([0.0]), np.array([1.0, 2.0])]
    assert S.probability_of_improvement(x, y, n_resamples=NR) == (0.5, 0.5, 0.5)
    # task 2 overlapping: x=[0, 1.5, 3] vs y=[1, 2]: 1.5>1, 3>1, 3>2 -> 3/6
    x = [np.array([1.0, 2.0]), np.array([0.0, 1.5, 3.0])]
    point, low, high = S.probability_of_improvement(x, y, n_resamples=NR, random_state=1)
    assert point == pytest.approx((1.0 + 0.5) / 2)
    assert low <= point <= high and low < high
    assert S.probability_of_improvement(x, y, n_resamples=NR, random_state=1) == (point, low, high)


@pytest.mark.parametrize(
    "x, y, kwargs, match",
    [
        ([[0.1], [0.2]], [[0.3]], {}, "same number of tasks"),
        ([0.1, np.nan], [0.2], {}, "x contains NaN"),
        ([0.1], [], {}, "y must be non-empty"),
        ([0.1], [0.2], {"confidence": 1.5}, "confidence must be"),
        ([0.1], [0.2], {"n_resamples": -5}, "n_resamples must be"),
        ([0.1], [0.2], {"random_state": 1.5}, "random_state must be"),
    ],
)
def test_probability_of_improvement_errors(x, y, kwargs, match):
    with pytest.raises(ValueError, match=match):
        S.probability_of_improvement(x, y, **kwargs)


# ----------------------------------------------------------------------------- wilson


def test_wilson_k_zero_by_hand_on_cpu():
    z = scipy.stats.norm.ppf(0.975)
    p, low, high = S.wilson_ci(0, 10)
    assert (p, low) == (0.0, 0.0)
    assert high == pytest.approx(z**2 / (10 + z**2))  # = 0.27753...
    assert high == pytest.approx(0.27753, abs=1e-5)


def test_wilson_formula_by_hand_on_cpu():
    z, n, k = scipy.stats.norm.ppf(0.95), 10, 3  # 90% interval
    p = k / n
    centre = (p + z**2 / (2 * n)) / (1 + z**2 / n)
    half = z * math.sqrt(p * (1 - p) / n + z**2 / (4 * n**2)) / (1 + z**2 / n)
    assert S.wilson_ci(k, n, 0.90) == pytest.approx((0.3, centre - half, centre + half))
    _, low, high = S.wilson_ci(10, 10)
    assert high == pytest.approx(1.0)
    assert low == pytest.approx(10 / (10 + scipy.stats.norm.ppf(0.975) ** 2))


@pytest.mark.parametrize(
    "k, n, conf, match",
    [(0, 0, 0.95, "n must be"), (4, 3, 0.95, "k must be"), (-1, 3, 0.95, "k must be"), (1, 3, 1.0, "confidence")],
)
def test_wilson_errors(k, n, conf, match):
    with pytest.raises(ValueError, match=match):
        S.wilson_ci(k, n, conf)


# ----------------------------------------------------------------------------- clopper-pearson


def test_clopper_pearson_by_hand_on_cpu():
    # k = 0: the upper bound solves (1 - p)^n = alpha / 2
    p, low, high = S.clopper_pearson_ci(0, 4)
    assert (p, low) == (0.0, 0.0)
    assert high == pytest.approx(1 - 0.025 ** (1 / 4))  # 0.6024
    # in general the bounds are beta quantiles
    k, n = 3, 8
    _, low, high = S.clopper_pearson_ci(k, n, 0.90)
    assert low == pytest.approx(scipy.stats.beta.ppf(0.05, k, n - k + 1))
    assert high == pytest.approx(scipy.stats.beta.ppf(0.95, k + 1, n - k))
    _, low, high = S.clopper_pearson_ci(4, 4)
    assert (low, high) == (pytest.approx(0.025 ** (1 / 4)), 1.0)
    # never narrower than Wilson's at the extremes
    assert S.clopper_pearson_ci(0, 10)[2] > S.wilson_ci(0, 10)[2]


@pytest.mark.parametrize("k, n, match", [(0, 0, "n must be"), (5, 4, "k must be"), (True, 4, "k must be")])
def test_clopper_pearson_errors(k, n, match):
    with pytest.raises(ValueError, match=match):
        S.clopper_pearson_ci(k, n)


# ----------------------------------------------------------------------------- per-seed curve summaries

CURVES = np.array([[0.0, 1.0, 2.0, 3.0], [4.0, 5.0, 6.0, 7.0]])


def test_final_reward_and_auc_by_hand_on_cpu():
    np.testing.assert_allclose(S.final_reward(CURVES), [3.0, 7.0])
    np.testing.assert_allclose(S.final_reward(CURVES, last=2), [2.5, 6.5])
    np.testing.assert_allclose(S.final_reward(CURVES, last=4), [1.5, 5.5])
    np.testing.assert_allclose(S.area_under_curve(CURVES), [1.5, 5.5])
    np.testing.assert_allclose(S.area_under_curve([[0.0, 1.0], [np.nan, 1.0]]), [0.5, np.nan])


def test_steps_to_threshold_by_hand_on_cpu():
    curves = np.array(
        [
            [0.0, 0.2, 0.6, 0.9],  # first >= 0.5 at index 2
            [0.0, 0.0, 0.0, 0.1],  # never
            [0.7, 0.1, 0.1, 0.1],  # at once, then drops
            [np.nan, 0.5, 0.5, 0.5],  # NaN does not count; exactly 0.5 does
        ]
    )
    np.testing.assert_array_equal(S.steps_to_threshold(curves, 0.5), [2.0, np.nan, 0.0, 1.0])
    np.testing.assert_array_equal(S.steps_to_threshold(curves, 0.5, steps=[10, 20, 30, 40]), [30.0, np.nan, 10.0, 20.0])
    assert np.isnan(S.steps_to_threshold(curves, 2.0)).all()


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: S.final_reward([1.0, 2.0]), "curves must have shape"),
        (lambda: S.final_reward(np.empty((0, 3))), "curves must be non-empty"),
        (lambda: S.final_reward(CURVES, last=0), "last must be"),
        (lambda: S.final_reward(CURVES, last=5), "last must be"),
        (lambda: S.area_under_curve(np.ones((2, 2, 2))), "curves must have shape"),
        (lambda: S.area_under_curve([["a", "b"]]), "curves must be a numeric array"),
        (lambda: S.steps_to_threshold(CURVES, np.nan), "threshold must be"),
        (lambda: S.steps_to_threshold(CURVES, 0.5, steps=[1, 2, 3]), "steps must have shape"),
        (lambda: S.steps_to_threshold(CURVES, 0.5, steps=[1, 2, 3, np.nan]), "steps must be finite"),
    ],
)
def test_curve_summary_errors(call, match):
    with pytest.raises(ValueError, match=match):
        call()


# ----------------------------------------------------------------------------- collapse


def test_collapse_by_hand_on_cpu():
    nan, inf = np.nan, np.inf
    curves = np.array(
        [
            [0.1, 0.8, 0.5, 0.3, 0.9],  # peak 0.8; 0.5 >= 0.4 fine, 0.3 < 0.4 collapses; recovery does not undo it
            [0.1, 0.04, 0.02, 0.0, 0.0],  # lost 100% but its peak 0.1 < min_peak: not counted
            [0.5, 0.6, nan, 0.6, 0.6],  # NaN at step 2
            [0.5, 0.5, 0.5, 0.5, 0.5],  # the simulator flagged a non-finite value at step 1
            [0.5, 0.25, 0.3, 0.2, 0.6],  # exactly half the peak is not a collapse; 0.2 < 0.25 is
            [0.4, inf, 0.4, 0.4, 0.4],  # inf counts as non-finite
            [nan, 0.5, 0.5, 0.5, 0.5],  # leading NaN
        ]
    )
    nonfinite = np.zeros(curves.shape, dtype=bool)
    nonfinite[3, 1] = True
    F, T = False, True
    expected = np.array(
        [
            [F, F, F, T, T],
            [F, F, F, F, F],
            [F, F, T, T, T],
            [F, T, T, T, T],
            [F, F, F, T, T],
            [F, T, T, T, T],
            [T, T, T, T, T],
        ]
    )
    rule = S.CollapseRule(drop=0.5, min_peak=0.2)
    np.testing.assert_array_equal(rule.detect(curves, nonfinite), expected)
    np.testing.assert_array_equal(S.collapsed(curves, nonfinite, rule=rule), expected)

    # default rule (min_peak = 0): seed 1 now counts, from 0.04 < 0.05 at step 1
    default = S.collapsed(curves, nonfinite)
    np.testing.assert_array_equal(default[1], [F, T, T, T, T])
    np.testing.assert_array_equal(np.delete(default, 1, axis=0), np.delete(expected, 1, axis=0))

    # without the simulator's flags seed 3 never collapses
    assert not S.collapsed(curves, rule=rule)[3].any()


def test_collapse_drop_one_only_nonfinite_on_cpu():
    curves = np.array([[1.0, 0.0, 0.0], [1.0, 0.5, np.nan]])
    np.testing.assert_array_equal(S.CollapseRule(drop=1.0).detect(curves), [[False] * 3, [False, False, True]])
    np.testing.assert_array_equal(S.CollapseRule(drop=0.9).detect(curves), [[False, True, True], [False, False, True]])


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: S.CollapseRule(drop=0.0), "drop must be in"),
        (lambda: S.CollapseRule(drop=1.5), "drop must be in"),
        (lambda: S.CollapseRule(drop=np.nan), "drop must be in"),
        (lambda: S.CollapseRule(min_peak=np.nan), "min_peak must be"),
        (lambda: S.CollapseRule().detect(CURVES, np.zeros((2, 3), dtype=bool)), "nonfinite must have the shape"),
        (lambda: S.CollapseRule().detect(CURVES, np.zeros(CURVES.shape)), "nonfinite must be a bool array"),
        (lambda: S.CollapseRule().detect([0.1, 0.2]), "curves must have shape"),
        (lambda: S.collapsed(CURVES, rule=0.5), "rule must be a CollapseRule"),
    ],
)
def test_collapse_errors(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_collapse_rule_frozen():
    with pytest.raises(AttributeError):
        S.CollapseRule().drop = 0.1


# ----------------------------------------------------------------------------- summarize_runs

RUNS = {
    # method a: seed 7 learns; seed 3 learns slower; seed 5 peaks at 0.6 then falls to 0.1 < 0.3 (collapse)
    ("a", 3): [0.0, 0.4, 0.8],
    ("a", 5): [0.2, 0.6, 0.1],
    ("a", 7): [0.0, 0.5, 1.0],
    # method b: slow, never reaches 0.5, never collapses
    ("b", 3): [0.0, 0.1, 0.3],
    ("b", 5): [0.1, 0.1, 0.1],
    ("b", 7): [0.0, 0.1, 0.2],
}
STEPS = [0, 10, 20]


def _runs_df(runs=RUNS, **extra_columns) -> pd.DataFrame:
    rows = [
        {"method": m, "seed": s, "step": step, "expected_reward": r}
        for (m, s), curve in runs.items()
        for step, r in zip(STEPS, curve)
    ]
    df = pd.DataFrame(rows)
    for name, values in extra_columns.items():
        df[name] = values
    return df.sample(frac=1.0, random_state=0).reset_index(drop=True)  # order must not matter


def test_summarize_runs_by_hand_on_cpu():
    out = S.summarize_runs(_runs_df(), threshold=0.5, reference="b", n_resamples=NR)
    assert list(out.columns) == [
        "method",
        "n_seeds",
        "n_finite",
        "final_iqm",
        "final_low",
        "final_high",
        "final_mean",
        "auc_iqm",
        "auc_low",
        "auc_high",
        "collapse_rate",
        "collapse_low",
        "collapse_high",
        "steps_to_threshold_median",
        "reached_frac",
        "p_improve",
        "p_improve_low",
        "p_improve_high",
    ]
    a, b = out.set_index("method").loc["a"], out.set_index("method").loc["b"]
    assert list(out["method"]) == ["a", "b"]
    assert a["n_seeds"] == 3 and a["n_finite"] == 3
    # final rewards a = [0.8, 0.1, 1.0] (seeds 3, 5, 7); IQM of 3 values cuts none -> mean
    assert a["final_iqm"] == pytest.approx(1.9 / 3)
    assert a["final_mean"] == pytest.approx(1.9 / 3)
    assert a["final_low"] <= a["final_iqm"] <= a["final_high"]
    assert b["final_iqm"] == pytest.approx(0.2)  # [0.3, 0.1, 0.2]
    # AUC a = [0.4, 0.3, 0.5] -> 0.4; b = [0.4/3, 0.1, 0.1] -> (0.4/3 + 0.2) / 3
    assert a["auc_iqm"] == pytest.approx(0.4)
    assert b["auc_iqm"] == pytest.approx((0.4 / 3 + 0.2) / 3)
    # collapse: one of three seeds of a, none of b
    assert a["collapse_rate"] == pytest.approx(1 / 3)
    assert (a["collapse_low"], a["collapse_high"]) == pytest.approx(S.wilson_ci(1, 3)[1:])
    assert (b["collapse_rate"], b["collapse_low"]) == (0.0, 0.0)
    assert b["collapse_high"] == pytest.approx(S.wilson_ci(0, 3)[2])
    # threshold 0.5: a reaches it at steps [20, 10, 10] -> median 10; b never
    assert a["steps_to_threshold_median"] == 10.0 and a["reached_frac"] == 1.0
    assert np.isnan(b["steps_to_threshold_median"]) and b["reached_frac"] == 0.0
    # P(a > b) on final rewards: 0.8 and 1.0 beat all three; 0.1 ties with 0.1 -> (3 + 3 + 0.5) / 9
    assert a["p_improve"] == pytest.approx(6.5 / 9)
    assert a["p_improve_low"] <= a["p_improve"] <= a["p_improve_high"]
    assert np.isnan(b[["p_improve", "p_improve_low", "p_improve_high"]].astype(float)).all()


def test_summarize_runs_optional_columns_absent():
    out = S.summarize_runs(_runs_df(), n_resamples=NR)
    assert "steps_to_threshold_median" not in out and "reached_frac" not in out and "p_improve" not in out
    assert len(out) == 2


def test_summarize_runs_reproducible():
    df = _runs_df()
    pd.testing.assert_frame_equal(
        S.summarize_runs(df, reference="b", n_resamples=NR, random_state=3),
        S.summarize_runs(df, reference="b", n_resamples=NR, random_state=3),
    )


def test_summarize_runs_collapsed_and_nonfinite_columns_on_cpu():
    df = _runs_df()
    # a `collapsed` column is used as given: flag only b's seed 3 at its middle step
    flag = (df["method"] == "b") & (df["seed"] == 3) & (df["step"] == 10)
    out = S.summarize_runs(df.assign(collapsed=flag), n_resamples=NR).set_index("method")
    assert out.loc["a", "collapse_rate"] == 0.0 and out.loc["b", "collapse_rate"] == pytest.approx(1 / 3)
    # a `nonfinite` column feeds the collapse rule: b's seed 7 saw a NaN at step 10
    nonfinite = (df["method"] == "b") & (df["seed"] == 7) & (df["step"] == 10)
    out = S.summarize_runs(df.assign(nonfinite=nonfinite), n_resamples=NR).set_index("method")
    np.testing.assert_allclose(out["collapse_rate"].to_numpy(), [1 / 3, 1 / 3])


def test_summarize_runs_nan_policy_on_cpu():
    runs = dict(RUNS)
    runs[("b", 5)] = [0.1, np.nan, 0.1]
    df = _runs_df(runs)
    with pytest.raises(ValueError, match=r"method='b'.*not finite for seeds \[5\]"):
        S.summarize_runs(df, n_resamples=NR)
    out = S.summarize_runs(df, nan_policy="omit", reference="a", n_resamples=NR).set_index("method")
    b = out.loc["b"]
    assert b["n_seeds"] == 3 and b["n_finite"] == 2
    assert b["final_iqm"] == pytest.approx(0.25)  # [0.3, 0.2]
    assert b["collapse_rate"] == pytest.approx(1 / 3)  # the NaN seed counts as collapsed
    # P(b > a) over finite finals b = [0.3, 0.2] vs a = [0.8, 0.1, 1.0]: each beats only 0.1 -> 2/6
    assert b["p_improve"] == pytest.approx(2 / 6)


def test_summarize_runs_two_group_columns_on_cpu():
    df = pd.concat([_runs_df().assign(env="bandit"), _runs_df().assign(env="tabular")], ignore_index=True)
    out = S.summarize_runs(df, group=("env", "method"), reference="b", n_resamples=NR)
    assert list(out[["env", "method"]].itertuples(index=False, name=None)) == [
        ("bandit", "a"),
        ("bandit", "b"),
        ("tabular", "a"),
        ("tabular", "b"),
    ]
    np.testing.assert_allclose(out["p_improve"].to_numpy(), [6.5 / 9, np.nan, 6.5 / 9, np.nan])
    with pytest.raises(ValueError, match="reference 'b' has no runs for env='solo', method='b'"):
        S.summarize_runs(
            pd.concat([df, _runs_df().query("method == 'a'").assign(env="solo")]),
            group=("env", "method"),
            reference="b",
            n_resamples=NR,
        )


def test_summarize_runs_single_seed_degenerate_on_cpu():
    df = _runs_df().query("seed == 7")
    out = S.summarize_runs(df, reference="b", n_resamples=NR).set_index("method")
    assert out.loc["a", "final_iqm"] == out.loc["a", "final_low"] == out.loc["a", "final_high"] == 1.0
    assert out.loc["a", "p_improve"] == 1.0


@pytest.mark.parametrize(
    "mutate, kwargs, match",
    [
        (lambda df: df.drop(columns="seed"), {}, r"df lacks columns \['seed'\]"),
        (lambda df: df.iloc[:0], {}, "df has no rows"),
        (lambda df: df.drop(index=df.index[(df.method == "a") & (df.seed == 5) & (df.step == 10)]), {},
         r"method='a': seed 5 has 2 of the 3 steps"),
        (lambda df: pd.concat([df, df.iloc[:1]]), {}, "more than once"),
        (lambda df: df.assign(seed=df.seed.where(df.index != 0)), {}, "column 'seed' has missing values"),
        (lambda df: df.assign(step=df.step.astype(str)), {}, "column 'step' must be numeric"),
        (lambda df: df.assign(expected_reward="x"), {}, "column 'expected_reward' must be numeric"),
        (lambda df: df.assign(collapsed=0), {}, "column 'collapsed' must be bool"),
        (lambda df: df.assign(nonfinite=1.0), {}, "column 'nonfinite' must be bool"),
        (lambda df: df, {"metric": "reward"}, r"df lacks columns \['reward'\]"),
        (lambda df: df, {"reference": "c"}, r"reference 'c' is not a method in df; methods: \['a', 'b'\]"),
        (lambda df: df.assign(algo=df.method), {"group": ("algo",), "reference": "a"}, "reference needs 'method'"),
        (lambda df: df, {"group": ()}, "group must name"),
        (lambda df: df, {"threshold": np.nan}, "threshold must be"),
        (lambda df: df, {"nan_policy": "drop"}, "nan_policy must be"),
        (lambda df: df, {"confidence": 0.0}, "confidence must be"),
        (lambda df: df, {"n_resamples": 0}, "n_resamples must be"),
        (lambda df: df, {"random_state": None}, "random_state must be"),
        (lambda df: df, {"rule": "strict"}, "rule must be a CollapseRule"),
        (lambda df: df, {"last": 4}, "last must be"),
    ],
)
def test_summarize_runs_errors(mutate, kwargs, match):
    kwargs = {"n_resamples": NR, **kwargs}
    with pytest.raises(ValueError, match=match):
        S.summarize_runs(mutate(_runs_df()), **kwargs)


def test_summarize_runs_not_a_dataframe():
    with pytest.raises(ValueError, match="df must be a pandas DataFrame"):
        S.summarize_runs({"method": ["a"]})
