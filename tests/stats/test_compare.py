"""drpo_sim.stats.compare: paired comparisons, equivalence, Holm, survival and collapse tests."""

import numpy as np
import pytest
import scipy.stats

from drpo_sim import stats
from drpo_sim.stats import compare


def _shared_seeds(n=16, shift=0.03, spread=0.2, noise=0.01, seed=1):
    """Runs of two methods on the same seeds: a large seed-to-seed spread both share, and a small,
    consistent improvement of X."""
    rng = np.random.default_rng(seed)
    base = rng.normal(0.5, spread, n)
    return base + shift + rng.normal(0.0, noise, n), base


def test_the_paired_test_detects_a_difference_the_unpaired_intervals_miss_on_cpu():
    x, y = _shared_seeds()
    _, xl, xh = stats.bootstrap_ci(x)
    _, yl, yh = stats.bootstrap_ci(y)
    assert xl < yh and yl < xh  # the unpaired IQM intervals overlap: no difference read
    p_unpaired = stats.probability_of_improvement(x, y)
    assert p_unpaired[1] < 0.5 < p_unpaired[2]  # nor from the unpaired probability of improvement
    res = compare.paired_comparison(x, y)
    assert res.low > 0 and res.p_value < 1e-3 and res.p_improve == 1.0
    assert res.side == 1 and res.n == 16 and res.n_dropped == 0
    np.testing.assert_allclose(res.mean_diff, np.mean(x - y))


def test_the_permutation_test_is_exact_up_to_sixteen_seeds_on_cpu():
    # five positive differences: of the 2^5 sign patterns, two are as extreme (all + and all -)
    res = compare.paired_comparison([1.0, 2.0, 3.0, 4.0, 5.0], [0.0, 0.0, 0.0, 0.0, 0.0])
    assert res.p_value == pytest.approx(2 / 32)
    # mixed signs of equal size: nothing to see
    assert compare.paired_comparison([1.0, -1.0, 1.0, -1.0], [0.0] * 4).p_value == pytest.approx(1.0)


def test_paired_comparison_degenerate_and_bad_inputs_on_cpu():
    same = compare.paired_comparison([0.3, 0.5], [0.3, 0.5])
    assert (same.mean_diff, same.low, same.high, same.p_value, same.p_improve) == (0, 0, 0, 1.0, 0.5)
    const = compare.paired_comparison([1.0, 1.0, 1.0], [0.0, 0.0, 0.0])
    assert const.low == const.high == 1.0 and const.p_value == pytest.approx(2 / 8)
    dropped = compare.paired_comparison([1.0, np.nan, 3.0, 2.0], [0.0, 0.0, np.inf, 0.5])
    assert dropped.n == 2 and dropped.n_dropped == 2
    with pytest.raises(ValueError, match="same seeds"):
        compare.paired_comparison([1.0, 2.0], [1.0])
    with pytest.raises(ValueError, match="no seed has a finite value"):
        compare.paired_comparison([np.nan], [1.0])
    with pytest.raises(ValueError, match="1-D"):
        compare.paired_comparison([[1.0]], [[1.0]])
    # explicit random state: the same call gives the same interval
    x, y = _shared_seeds(n=30)
    assert compare.paired_comparison(x, y, random_state=3) == compare.paired_comparison(x, y, random_state=3)


def test_equivalence_flips_with_the_margin_on_cpu():
    x, y = _shared_seeds(shift=0.01, noise=0.01, n=32)
    inside = compare.equivalence_test(x, y, margin=0.05)
    assert inside.equivalent and inside.p_value < 1e-6
    assert -0.05 < inside.low < inside.high < 0.05
    outside = compare.equivalence_test(x, y, margin=0.01)  # the true difference sits at the margin
    assert not outside.equivalent
    # the two one-sided tests by hand
    d = x - y
    lower = scipy.stats.ttest_1samp(d, -0.05, alternative="greater").pvalue
    upper = scipy.stats.ttest_1samp(d, 0.05, alternative="less").pvalue
    assert inside.p_value == pytest.approx(max(lower, upper))
    # too noisy to tell: neither equivalent nor (necessarily) different
    noisy_x, noisy_y = _shared_seeds(shift=0.0, noise=0.3, n=6)
    assert not compare.equivalence_test(noisy_x, noisy_y, margin=0.05).equivalent


def test_equivalence_degenerate_and_bad_inputs_on_cpu():
    assert compare.equivalence_test([0.5, 0.5], [0.5, 0.5], 0.05).equivalent
    assert not compare.equivalence_test([0.6, 0.6], [0.5, 0.5], 0.05).equivalent
    for margin in (0, -1, float("nan"), True):
        with pytest.raises(ValueError, match="margin"):
            compare.equivalence_test([1.0, 2.0], [1.0, 2.0], margin)
    with pytest.raises(ValueError, match="alpha"):
        compare.equivalence_test([1.0, 2.0], [1.0, 2.0], 0.1, alpha=0.6)


def test_holm_step_down_on_cpu():
    p = np.array([0.01, 0.04, 0.03, 0.5])
    # sorted 0.01, 0.03, 0.04, 0.5 -> 4*0.01, max(.04, 3*.03), max(.09, 2*.04), max(.09, .5)
    np.testing.assert_allclose(compare.holm(p), [0.04, 0.09, 0.09, 0.5])
    # one test: unchanged; capped at 1; never below the raw p-value; at least Bonferroni's power
    assert compare.holm([0.2]).tolist() == [0.2]
    assert compare.holm([0.6, 0.7]).max() == 1.0
    rng = np.random.default_rng(0)
    raw = rng.uniform(size=20)
    adj = compare.holm(raw)
    assert (adj >= raw).all() and (adj <= np.minimum(1, raw * 20) + 1e-15).all()
    # the rule flips: 0.03 alone is significant at 0.05, beside a second test (0.04) it is not
    assert compare.holm([0.03])[0] < 0.05 <= compare.holm([0.03, 0.04])[0]
    assert compare.holm([]).size == 0
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        compare.holm([0.1, np.nan])


def test_kaplan_meier_by_hand_on_cpu():
    # 5 runs: collapses at 100 and 200, censored at 300 and (twice) at the run's end, 600
    time = np.array([100.0, 200.0, 300.0, 600.0, 600.0])
    event = np.array([True, True, False, False, False])
    km = compare.survival_curve(time, event)
    np.testing.assert_allclose(km["survival"], [4 / 5, 4 / 5 * 3 / 4, 0.6, 0.6])
    assert km["at_risk"].tolist() == [5, 4, 3, 2] and km["events"].tolist() == [1, 1, 0, 0]
    assert (km["low"] <= km["survival"]).all() and (km["survival"] <= km["high"]).all()
    none = compare.survival_curve(np.full(4, 600.0), np.zeros(4, bool))
    assert none["survival"].tolist() == [1.0] and none["low"].tolist() == [1.0]
    with pytest.raises(ValueError, match="bool"):
        compare.survival_curve(time, event.astype(int))
    with pytest.raises(ValueError, match="censored"):
        compare.survival_curve([np.nan], [False])


def test_logrank_and_mcnemar_flip_on_cpu():
    end = np.full(8, 600.0)
    never = np.zeros(8, bool)
    early = np.array([50, 80, 100, 120, 150, 200, 250, 300.0])
    assert compare.logrank_test(end, never, end, never) == 1.0
    assert compare.logrank_test(early, ~never, end, never) < 0.01
    one = np.where(np.arange(8) == 0, 300.0, 600.0)
    assert compare.logrank_test(one, np.arange(8) == 0, end, never) > 0.05
    # McNemar: 5 seeds where only X collapsed, none where only Y did: 2 * 2^-5
    x = np.array([True] * 5 + [False] * 3)
    b, c, p = compare.mcnemar_test(x, never)
    assert (b, c) == (5, 0) and p == pytest.approx(2 / 32)
    assert compare.mcnemar_test(never, never) == (0, 0, 1.0)
    with pytest.raises(ValueError, match="bool"):
        compare.mcnemar_test(x.astype(int), never)
