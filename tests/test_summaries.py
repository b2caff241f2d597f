"""drpo_sim.summaries: the experiments' summary tables, on small tables checked by hand."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from drpo_sim import stats
from drpo_sim.arena.train import COLLAPSE, GRAD_SHARES
from drpo_sim.summaries import (
    ARENA_CLIMB,
    ARENA_FALL,
    ARENA_SUMMARY_COLUMNS,
    ARENA_WINDOW,
    LAB_SUMMARY_LAST,
    STABLE_FRACTION,
    arena_summary,
    gradient_shares,
    lab_summary,
    order_of_events,
    panel_summary,
    seed_table,
    stable_region,
)

# ---------------------------------------------------------------------------------------------
# panel_summary

# (variant, method) -> seed -> (expected_reward over steps 1..3, shift_mean over steps 1..3)
PANEL = {
    ("drpo (delta 0.5)", "drpo"): {
        0: ([0.2, 0.6, 0.4], [0.01, 0.03, 0.02]),
        1: ([0.1, 0.5, 0.5], [0.02, 0.02, 0.04]),
        2: ([0.3, 0.8, 0.2], [0.05, 0.01, 0.03]),  # falls to a quarter of its peak: collapsed
        3: ([0.2, 0.4, 0.4], [0.10, 0.70, 0.50]),  # an outlying shift, which the IQM leaves out
    },
    ("grpo", "grpo"): {
        0: ([0.5, 0.5, 0.6], [0.02, 0.02, 0.02]),
        1: ([0.4, 0.8, 0.8], [0.01, 0.06, 0.05]),
        2: ([0.3, 0.6, np.nan], [0.01, 0.02, np.nan]),  # non-finite at the last step
    },
}


def panel_table(settings=("fp8",)) -> pd.DataFrame:
    rows = [
        {"setting": setting, "variant": variant, "method": method, "seed": seed, "step": step,
         "expected_reward": reward[step - 1], "shift_mean": shift[step - 1],
         "nonfinite": bool(np.isnan(reward[step - 1]))}
        for setting in settings
        for (variant, method), seeds in PANEL.items()
        for seed, (reward, shift) in seeds.items()
        for step in (1, 2, 3)
    ]
    return pd.DataFrame(rows).sample(frac=1.0, random_state=0).reset_index(drop=True)  # order must not matter


def test_panel_summary_by_hand_on_cpu():
    out = panel_summary(panel_table())
    assert list(out[["setting", "variant"]].itertuples(index=False, name=None)) == [
        ("fp8", "drpo (delta 0.5)"), ("fp8", "grpo")]
    assert list(out["method"]) == ["drpo", "grpo"]
    drpo, grpo = out.iloc[0], out.iloc[1]
    # drpo: final shifts [0.02, 0.04, 0.03, 0.50]: the IQM of four cuts one from each end -> mean(0.03, 0.04)
    assert drpo["shift_final_iqm"] == pytest.approx(0.035)
    assert drpo["shift_final_low"] <= drpo["shift_final_iqm"] <= drpo["shift_final_high"]
    assert drpo["shift_peak"] == pytest.approx((0.03 + 0.04 + 0.05 + 0.70) / 4)
    assert drpo["reward_peak"] == pytest.approx((0.6 + 0.5 + 0.8 + 0.4) / 4)
    assert drpo["kept_of_peak"] == pytest.approx((0.4 / 0.6 + 0.5 / 0.5 + 0.2 / 0.8 + 0.4 / 0.4) / 4)
    # and the reward statistics of stats.summarize_runs: final rewards [0.4, 0.5, 0.2, 0.4] -> IQM 0.4
    assert drpo["final_iqm"] == pytest.approx(0.4) and drpo["n_seeds"] == 4 and drpo["n_finite"] == 4
    assert drpo["collapse_rate"] == pytest.approx(1 / 4)  # seed 2: 0.2 < half its peak 0.8
    # grpo: seed 2 ends non-finite; it is left out of the final shift and the final reward, and collapsed
    assert grpo["shift_final_iqm"] == pytest.approx((0.02 + 0.05) / 2)
    assert grpo["shift_peak"] == pytest.approx((0.02 + 0.06 + 0.02) / 3)
    assert grpo["reward_peak"] == pytest.approx((0.6 + 0.8 + 0.6) / 3)
    assert grpo["kept_of_peak"] == pytest.approx((0.6 / 0.6 + 0.8 / 0.8) / 2)
    assert grpo["final_iqm"] == pytest.approx(0.7) and grpo["n_seeds"] == 3 and grpo["n_finite"] == 2
    assert grpo["collapse_rate"] == pytest.approx(1 / 3)
    # the summary is stats.summarize_runs's, with the mismatch columns beside it
    ref = stats.summarize_runs(panel_table(), group=["setting", "variant"], nan_policy="omit")
    pd.testing.assert_frame_equal(out[ref.columns], ref)


def test_seed_table_by_hand_on_cpu():
    t = seed_table(panel_table(), ["setting", "variant", "method"], at_end=("shift_mean",))
    assert list(t.columns[:3]) == ["setting", "variant", "method"] and len(t) == 7
    row = t[(t["variant"] == "drpo (delta 0.5)") & (t["seed"] == 2)].iloc[0]
    # 0.3, 0.8, 0.2: collapsed at step 3 (below half of 0.8), final 0.2, AUC the mean, censoring at step 3
    assert (row["final"], row["peak"], row["collapsed"], row["collapse_step"], row["end_step"]) == (
        0.2, 0.8, True, 3, 3)
    assert row["auc"] == pytest.approx((0.3 + 0.8 + 0.2) / 3) and row["shift_mean_final"] == 0.03
    alive = t[(t["variant"] == "drpo (delta 0.5)") & (t["seed"] == 0)].iloc[0]
    assert not alive["collapsed"] and np.isnan(alive["collapse_step"]) and alive["end_step"] == 3
    # the non-finite seed: no final reward, counted as collapsed (never dropped)
    bad = t[(t["variant"] == "grpo") & (t["seed"] == 2)].iloc[0]
    assert np.isnan(bad["final"]) and bad["collapsed"] and bad["collapse_step"] == 3
    # the same collapse as summarize_runs counts
    summary = panel_summary(panel_table())
    rates = t.groupby("variant")["collapsed"].mean()
    assert summary.set_index("variant")["collapse_rate"].to_dict() == pytest.approx(rates.to_dict())
    # a table's own collapsed column is used as given, and NaN rows (between evaluations) left out
    arena_like = pd.DataFrame({"method": "m", "seed": 0, "step": [1, 2, 3, 4],
                               "heldout_reward": [0.5, np.nan, 0.9, np.nan], "collapsed": [False, False, True, True]})
    row = seed_table(arena_like, ["method"], metric="heldout_reward").iloc[0]
    assert (row["final"], row["peak"], row["collapsed"]) == (0.9, 0.9, True)
    assert (row["collapse_step"], row["end_step"]) == (3, 4)


def test_panel_summary_keeps_settings_apart():
    out = panel_summary(panel_table(settings=("bf16", "fp8")))
    assert list(out["setting"]) == ["bf16", "bf16", "fp8", "fp8"]
    num = ["shift_final_iqm", "shift_peak", "reward_peak", "kept_of_peak", "final_iqm"]
    np.testing.assert_allclose(out[num].iloc[:2].to_numpy(float), out[num].iloc[2:].to_numpy(float))


# ---------------------------------------------------------------------------------------------
# stable_region


def test_stable_region_by_hand():
    rows = [
        # method, noise_std, staleness, final_iqm, collapse_rate, stable?
        ("a", 0.0, 0, 1.0, 0.0, True),  # the reference cell itself
        ("a", 0.1, 0, 0.95, 0.0, True),
        ("a", 0.0, 2, 0.9, 0.0, True),  # exactly STABLE_FRACTION of its own on-policy value
        ("a", 0.2, 0, 0.85, 0.0, False),  # below it
        ("a", 0.1, 2, 0.99, 0.25, False),  # a collapse, however good the rest
        ("b", 0.0, 0, 0.4, 0.0, True),
        ("b", 0.1, 0, 0.37, 0.0, True),  # below a's values, but stable against its own 0.4
        ("b", 0.2, 0, 0.35, 0.0, False),
        ("b", 0.0, 2, 0.5, 0.1, False),
    ]
    summary = pd.DataFrame(rows, columns=["method", "noise_std", "staleness", "final_iqm", "collapse_rate", "want"])
    assert STABLE_FRACTION == 0.9
    out = stable_region(summary.drop(columns="want"))
    assert list(out.columns) == ["method", "noise_std", "staleness", "stable"]
    assert out["stable"].dtype == bool
    assert out["stable"].tolist() == summary["want"].tolist()
    pd.testing.assert_frame_equal(out[["method", "noise_std", "staleness"]],
                                  summary[["method", "noise_std", "staleness"]])


# ---------------------------------------------------------------------------------------------
# lab_summary

STEPS = 12  # more than LAB_SUMMARY_LAST, so the final reward is a mean over the last 10 steps only


def lab_table(methods=("pg_is", "drpo"), precisions=("fp32", "bf16"), seeds=(0, 1, 2)) -> pd.DataFrame:
    """A lab-like table: eval_reward rises linearly per seed; drpo is better than pg_is on every seed;
    bf16 has a mismatch, fp32 none; pg_is/bf16 seed 2 is non-finite at step 5 and collapsed from there."""
    rows = []
    for m, method in enumerate(methods):
        for p, precision in enumerate(precisions):
            for seed in seeds:
                for step in range(1, STEPS + 1):
                    bad = (method, precision, seed) == ("pg_is", "bf16", 2) and step >= 5
                    rows.append({
                        "method": method, "precision": precision, "seed": seed, "step": step,
                        "eval_reward": 0.3 + 0.2 * m + 0.01 * seed + 0.02 * step,
                        "initial_eval_reward": 0.3,
                        "reward": 0.25 + 0.2 * m + 0.01 * step,
                        "mismatch_mean": 0.001 * p * (1 + step / 10),
                        "mismatch_max": 0.01 * p * step,
                        "log_ratio_mean": -0.0005 * p,
                        "shift_mean": 0.002 + 0.001 * p,
                        "masked_frac": 0.1 * m * p,
                        "nonfinite": bad and step == 5,
                        "collapsed": bad,
                    })
    return pd.DataFrame(rows)


def test_lab_summary_by_hand_on_cpu():
    df = lab_table()
    out = lab_summary(df)
    assert LAB_SUMMARY_LAST == 10
    assert list(out[["method", "precision"]].itertuples(index=False, name=None)) == [
        ("drpo", "bf16"), ("drpo", "fp32"), ("pg_is", "bf16"), ("pg_is", "fp32")]
    assert list(out.columns[:3]) == ["method", "precision", "final"]
    by = out.set_index(["method", "precision"])
    last = np.arange(STEPS - LAB_SUMMARY_LAST + 1, STEPS + 1)  # steps 3..12
    for (method, precision), row in by.iterrows():
        m = 1 if method == "drpo" else 0
        p = 1 if precision == "bf16" else 0
        finals = [0.3 + 0.2 * m + 0.01 * s + 0.02 * last.mean() for s in (0, 1, 2)]
        assert row["final_iqm"] == pytest.approx(np.mean(finals))  # IQM of three seeds: their mean
        assert row["final"] == f"{row['final_iqm']:.3f} [{row['final_low']:.3f}, {row['final_high']:.3f}]"
        assert row["initial_eval_reward"] == 0.3
        assert row["mismatch_mean"] == pytest.approx(0.001 * p * (1 + np.arange(1, STEPS + 1).mean() / 10))
        assert row["mismatch_max"] == pytest.approx(0.01 * p * STEPS)
        assert row["log_ratio_mean"] == pytest.approx(-0.0005 * p)
        assert row["shift_mean"] == pytest.approx(0.002 + 0.001 * p)
        assert row["masked_frac"] == pytest.approx(0.1 * m * p)
        assert row["final_sample_reward"] == pytest.approx(0.25 + 0.2 * m + 0.01 * last.mean())
        broken = (method, precision) == ("pg_is", "bf16")
        assert row["nonfinite_steps"] == (1 if broken else 0)
        assert row["collapse_rate"] == pytest.approx(1 / 3 if broken else 0.0)  # the collapsed column as given
        # drpo beats pg_is on every seed at the same precision; pg_is is the reference
        if method == "drpo":
            assert (row["p_improve"], row["p_improve_low"], row["p_improve_high"]) == (1.0, 1.0, 1.0)
        else:
            assert np.isnan(row[["p_improve", "p_improve_low", "p_improve_high"]].astype(float)).all()
    # the reward statistics are stats.summarize_runs's on eval_reward over the last 10 steps
    ref = stats.summarize_runs(df, metric="eval_reward", group=("method", "precision"), last=LAB_SUMMARY_LAST,
                               reference="pg_is", nan_policy="omit")
    pd.testing.assert_frame_equal(out[ref.columns], ref)


def test_lab_summary_short_runs_and_no_reference():
    # fewer steps than LAB_SUMMARY_LAST: the final reward is the mean over every step
    short = lab_table()
    short = short[short["step"] <= 4]
    row = lab_summary(short).set_index(["method", "precision"]).loc[("drpo", "fp32")]
    assert row["final_iqm"] == pytest.approx(np.mean([0.5 + 0.01 * s + 0.02 * 2.5 for s in (0, 1, 2)]))
    assert row["final_sample_reward"] == pytest.approx(0.45 + 0.01 * 2.5)
    # without pg_is, or with pg_is alone, there is no probability of improvement
    for methods in (("drpo",), ("pg_is",)):
        out = lab_summary(lab_table(methods=methods))
        assert "p_improve" not in out.columns and set(out["method"]) == set(methods)


# ----------------------------------------------------------------------------- the arena


def _arena_table(curves: dict[tuple[str, int], list[float]], mismatch: dict[tuple[str, int], list[float]]):
    rows = []
    for (method, seed), reward in curves.items():
        collapsed = stats.collapsed(np.array([reward]), rule=COLLAPSE)[0]
        for i, r in enumerate(reward):
            rows.append({"objective": method, "variant": "", "precision": "bf16", "lr": 1e-3, "method": method,
                         "seed": seed, "step": i + 1, "reward": r, "heldout_reward": r if i % 2 else np.nan,
                         "mismatch_mean": mismatch[(method, seed)][i], "mismatch_max": 10 * mismatch[(method, seed)][i],
                         "collapsed": bool(collapsed[i])})
    return pd.DataFrame(rows)


def test_arena_summary_and_order_of_events_by_hand_on_cpu():
    n = 30
    rise = list(np.linspace(0.2, 0.9, 10)) + [0.9] * (n - 10)
    crash = list(np.linspace(0.2, 0.9, 10)) + [0.9] * 8 + [0.9 - 0.1 * k for k in range(1, 13)]  # 0.9 -> -0.3
    flat_mm = [0.002] * n
    climbing = [0.002] * 12 + [0.002 * 1.5 ** k for k in range(1, n - 11)]
    df = _arena_table({("a", 0): rise, ("a", 1): rise, ("b", 0): crash, ("b", 1): rise},
                      {("a", 0): flat_mm, ("a", 1): flat_mm, ("b", 0): climbing, ("b", 1): flat_mm})
    s = arena_summary(df).set_index("objective")
    assert list(arena_summary(df).columns) == list(ARENA_SUMMARY_COLUMNS)
    assert s.loc["a", "collapse_rate"] == 0 and s.loc["b", "collapse_rate"] == 0.5
    exact = stats.clopper_pearson_ci(1, 2)
    assert s.loc["b", ["collapse_lo", "collapse_hi"]].tolist() == pytest.approx(list(exact[1:]))
    first = 1 + next(i for i, r in enumerate(crash) if i > 10 and r < 0.45)  # below half the peak 0.9
    assert first == 23
    assert s.loc["b", "median_collapse_step"] == first
    assert s.loc["a", "final_train_reward"] == pytest.approx(0.9)
    assert s.loc["a", "final_heldout_reward"] == pytest.approx(0.9)
    assert s.loc["a", "mismatch_step0"] == pytest.approx(0.002)
    assert s.loc["a", "max_abs_shift_final"] == pytest.approx(0.02)
    assert s.loc["b", "mismatch_peak"] > s.loc["b", "mismatch_step0"]
    assert (s["seeds"] == 2).all() and (s["steps"] == n).all()
    ev = order_of_events(df)
    assert len(ev) == 1 and ev.iloc[0]["method"] == "b" and ev.iloc[0]["seed"] == 0
    # the moving average of the mismatch passes 1.5 x its minimum before the reward's drops below 0.9 x its best
    assert ev.iloc[0]["climb_step"] < ev.iloc[0]["fall_step"] <= ev.iloc[0]["collapse_step"] == first
    assert bool(ev.iloc[0]["mismatch_first"])
    assert ARENA_CLIMB > 1 and 0 < ARENA_FALL < 1 and ARENA_WINDOW >= 1


def test_arena_summary_keeps_the_groups_it_is_told_apart_on_cpu():
    n = 12
    curve, mm = [0.5] * n, [0.002] * n
    one = _arena_table({("a", 0): curve, ("a", 1): curve}, {("a", 0): mm, ("a", 1): mm})
    two = pd.concat([one.assign(setting="x"), one.assign(setting="y", reward=one["reward"] + 0.1)], ignore_index=True)
    merged, apart = arena_summary(two), arena_summary(two, by=["setting"])
    assert len(merged) == 1 and merged.loc[0, "seeds"] == 2  # the two settings' seeds pooled
    assert list(apart.columns) == ["setting", *ARENA_SUMMARY_COLUMNS] and list(apart["setting"]) == ["x", "y"]
    assert apart["final_train_reward"].tolist() == pytest.approx([0.5, 0.6])


def test_gradient_shares_normalise_each_step_before_the_mean_on_cpu():
    first, second = GRAD_SHARES[0], GRAD_SHARES[1]
    # a's step 1: half its updates had a gradient, all of it in the first column (sum 0.5);
    # step 2: every update had one (sum 1); step 3: none did (all 0), so it is left out
    rows = {("a", 1): {first: 0.5}, ("a", 2): {first: 0.25, second: 0.75}, ("a", 3): {},
            ("b", 1): {first: 0.2, second: 0.2}}
    df = pd.DataFrame([{"method": m, "step": t, **dict.fromkeys(GRAD_SHARES, 0.0), **v}
                       for (m, t), v in rows.items()])
    out = gradient_shares(df, by="method")
    assert list(out.index) == ["a", "b"]
    assert out.loc["a", first] == pytest.approx((1.0 + 0.25) / 2)  # not (0.5 + 0.25) / 2, nor / 3
    assert out.loc["a", second] == pytest.approx(0.75 / 2)
    assert out.loc["b", [first, second]].tolist() == pytest.approx([0.5, 0.5])
    assert out[list(GRAD_SHARES)].sum(axis=1).tolist() == pytest.approx([1.0, 1.0])
    assert out["steps"].tolist() == [3, 1] and out["steps_with_gradient"].tolist() == [2, 1]
