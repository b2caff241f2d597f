"""Summary tables of the experiments' result tables, built from :mod:`drpo_sim.stats`.

One function per kind of experiment, each returning one row per group with point estimates and
intervals over seeds: :func:`panel_summary` (settings x variants of the simulator),
:func:`stable_region` (a phase diagram's stable cells) and :func:`lab_summary` (the tiny
transformer lab). :mod:`drpo_sim.stats` holds the statistics themselves; this module only says
which statistic of which column each summary reports.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from drpo_sim import stats

#: A phase-diagram cell is in a method's stable region when nothing collapsed there and its
#: final-reward IQM keeps at least this share of the method's own on-policy value.
STABLE_FRACTION = 0.9

#: The lab's final reward of a seed: the mean held-out reward over its last this many steps.
LAB_SUMMARY_LAST = 10


def panel_summary(df: pd.DataFrame) -> pd.DataFrame:
    """Per setting and variant: :func:`drpo_sim.stats.summarize_runs` (final reward, AUC, collapse
    rate, with intervals); the mismatch ``mean abs(pi - mu)`` at the last step, IQM over seeds
    with its bootstrap interval (``shift_final_iqm, shift_final_low, shift_final_high``); and the
    seed means of the mismatch's peak (``shift_peak``), the reward's peak (``reward_peak``) and
    the final reward as a share of each seed's own peak (``kept_of_peak``)."""
    group = ["setting", "variant"]
    summary = stats.summarize_runs(df, group=group, nan_policy="omit")
    last = df[df["step"] == df["step"].max()].set_index([*group, "seed"])
    per_seed = df.groupby([*group, "seed"]).agg(
        shift_peak=("shift_mean", "max"), reward_peak=("expected_reward", "max")
    )
    per_seed["shift_final"] = last["shift_mean"]
    per_seed["kept_of_peak"] = last["expected_reward"] / per_seed["reward_peak"]
    rows = []
    for keys, d in per_seed.groupby(level=group, sort=True):
        x = d["shift_final"].to_numpy()
        x = x[np.isfinite(x)]
        point, low, high = stats.bootstrap_ci(x) if x.size else (np.nan, np.nan, np.nan)
        rows.append(
            {
                **dict(zip(group, keys)),
                "shift_final_iqm": point,
                "shift_final_low": low,
                "shift_final_high": high,
                **d[["shift_peak", "reward_peak", "kept_of_peak"]].mean().to_dict(),
            }
        )
    method = {v: m for v, m in df[["variant", "method"]].drop_duplicates().itertuples(index=False)}
    return summary.merge(pd.DataFrame(rows), on=group).assign(method=lambda d: d["variant"].map(method))


def stable_region(summary: pd.DataFrame) -> pd.DataFrame:
    """Per method and grid cell of a noise x staleness summary: ``stable`` when nothing collapsed
    and the final-reward IQM keeps at least :data:`STABLE_FRACTION` of the method's own value at
    zero noise and zero staleness."""
    ref = summary[(summary["noise_std"] == 0) & (summary["staleness"] == 0)].set_index("method")["final_iqm"]
    keep = summary["method"].map(ref) * STABLE_FRACTION
    stable = (summary["collapse_rate"] == 0) & (summary["final_iqm"] >= keep)
    return summary[["method", "noise_std", "staleness"]].assign(stable=stable.to_numpy())


def lab_summary(df: pd.DataFrame) -> pd.DataFrame:
    """The lab's table (:mod:`drpo_sim.run.lab`) per objective and precision: the final held-out
    reward (IQM over seeds of the mean of the last :data:`LAB_SUMMARY_LAST` steps) with its 95%
    bootstrap interval, the probability of improvement over ``pg_is``, the collapse rate, and
    the mismatch and masked-fraction statistics."""
    steps = int(df["step"].max())
    last_n = min(LAB_SUMMARY_LAST, steps)
    methods = df["method"].unique()
    summary = stats.summarize_runs(
        df, metric="eval_reward", group=("method", "precision"), last=last_n,
        reference="pg_is" if "pg_is" in methods and len(methods) > 1 else None, nan_policy="omit",
    )
    keys = ["method", "precision"]
    extra = df.groupby(keys).agg(
        initial_eval_reward=("initial_eval_reward", "first"),
        mismatch_mean=("mismatch_mean", "mean"),
        mismatch_max=("mismatch_max", "max"),
        log_ratio_mean=("log_ratio_mean", "mean"),
        shift_mean=("shift_mean", "mean"),
        masked_frac=("masked_frac", "mean"),
        nonfinite_steps=("nonfinite", "sum"),
    ).reset_index()
    last = df[df["step"] > steps - last_n]
    extra = extra.merge(last.groupby(keys)["reward"].mean().rename("final_sample_reward").reset_index(), on=keys)
    summary = summary.merge(extra, on=keys)
    summary.insert(2, "final", [f"{m:.3f} [{lo:.3f}, {hi:.3f}]" for m, lo, hi in
                                zip(summary["final_iqm"], summary["final_low"], summary["final_high"])])
    return summary
