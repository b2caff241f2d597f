"""Summary tables of the experiments' result tables, built from :mod:`drpo_sim.stats`.

One function per kind of experiment, each returning one row per group with point estimates and
intervals over seeds: :func:`panel_summary` (settings x variants of the simulator),
:func:`stable_region` (a phase diagram's stable cells), :func:`lab_summary` (the tiny
transformer lab), :func:`arena_summary` and :func:`gradient_shares` (the arena); and
:func:`seed_table`, one row per group and seed, the per-seed outcomes that paired comparisons and survival curves need
(:mod:`drpo_sim.stats.compare`). :mod:`drpo_sim.stats` holds the statistics themselves; this module only says
which statistic of which column each summary reports.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from drpo_sim import stats
from drpo_sim.arena.train import COLLAPSE, GRAD_SHARES

#: A phase-diagram cell is in a method's stable region when nothing collapsed there and its
#: final-reward IQM keeps at least this share of the method's own on-policy value.
STABLE_FRACTION = 0.9

#: The lab's final reward of a seed: the mean held-out reward over its last this many steps.
LAB_SUMMARY_LAST = 10


SEED_TABLE_COLUMNS = ("seed", "final", "auc", "peak", "collapsed", "collapse_step", "end_step")


def seed_table(df: pd.DataFrame, group: Sequence[str], *, metric: str = "expected_reward", last: int = 1,
               rule: stats.CollapseRule = stats.CollapseRule(), at_end: Sequence[str] = ()) -> pd.DataFrame:
    """One row per group and seed of a tidy result table (one row per group, seed and step): the
    ``group`` columns, then :data:`SEED_TABLE_COLUMNS`:

    * ``final``: :func:`drpo_sim.stats.final_reward` of ``metric`` (mean of the ``last`` steps);
      ``auc``: :func:`drpo_sim.stats.area_under_curve`; ``peak``: its highest value. In a table
      with its own ``collapsed`` column, rows where ``metric`` is NaN (the arena's held-out reward
      between evaluations) are left out first; elsewhere a NaN makes the seed's curve not finite;
    * ``collapsed``: the table's ``collapsed`` column at any step where it has one, otherwise
      ``rule`` (:class:`drpo_sim.stats.CollapseRule`) on the curve and the ``nonfinite`` column;
      ``collapse_step``: the first step counted collapsed (NaN if none), ``end_step``: the last
      step of the run, where a run that did not collapse is censored (survival curves);
    * each column of ``at_end`` at the last step (e.g. the mismatch ``shift_mean``), suffixed
      ``_final``.

    A seed whose curve is not finite keeps NaN ``final`` and ``auc`` and counts as collapsed.
    """
    group = list(group)
    rows = []
    for keys, g in df.groupby(group, sort=True):
        keys = keys if isinstance(keys, tuple) else (keys,)
        own_flags = "collapsed" in g.columns
        curves = stats._pivot(g.dropna(subset=[metric]) if own_flags else g, metric)
        values = curves.to_numpy(dtype=float)
        if own_flags:
            table = stats._pivot(g, "collapsed")
            flags, flag_steps = table.to_numpy(dtype=bool), table.columns.to_numpy(dtype=float)
        else:
            nonfinite = stats._pivot(g, "nonfinite").to_numpy(dtype=bool) if "nonfinite" in g.columns else None
            flags, flag_steps = rule.detect(values, nonfinite), curves.columns.to_numpy(dtype=float)
        finite = np.isfinite(values).all(axis=1)
        hit = flags.any(axis=1)
        last_rows = g[g["step"] == g.groupby("seed")["step"].transform("max")].set_index("seed").sort_index()
        block = pd.DataFrame({
            "seed": curves.index.to_numpy(),
            "final": np.where(finite, stats.final_reward(values, last), np.nan),
            "auc": np.where(finite, stats.area_under_curve(values), np.nan),
            "peak": np.fmax.reduce(values, axis=1),
            "collapsed": hit | ~finite,
            "collapse_step": np.where(hit, flag_steps[np.argmax(flags, axis=1)], np.nan),
            "end_step": last_rows["step"].to_numpy(dtype=float),
        })
        for col in at_end:
            block[f"{col}_final"] = last_rows[col].to_numpy(dtype=float)
        for k, v in zip(reversed(group), reversed(keys)):
            block.insert(0, k, v)
        rows.append(block)
    return pd.concat(rows, ignore_index=True)


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


ARENA_SUMMARY_COLUMNS = (
    "objective", "variant", "precision", "lr", "seeds", "steps", "collapse_rate", "collapse_lo", "collapse_hi",
    "median_collapse_step", "peak_train_reward", "final_train_reward", "final_heldout_reward", "mismatch_step0",
    "mismatch_peak", "mismatch_final", "max_abs_shift_final",
)
ARENA_WINDOW = 10
"""Steps in the moving averages of the arena's summary (training reward and mismatch per step)."""


def arena_summary(df: pd.DataFrame, *, by: Sequence[str] = ()) -> pd.DataFrame:
    """The arena's table (:mod:`drpo_sim.arena.train`) per (objective, variant, precision, lr),
    within each group of the ``by`` columns (first, e.g. ``setting``), one row each with
    :data:`ARENA_SUMMARY_COLUMNS`, means over seeds unless stated:

    * ``collapse_rate`` with its exact 95% interval (:func:`drpo_sim.stats.clopper_pearson_ci`),
      the share of seeds collapsed by the last step; ``median_collapse_step``, over the collapsed
      seeds, of the first collapsed step (NaN if none collapsed);
    * ``peak_train_reward``: the best :data:`ARENA_WINDOW`-step moving average of the training
      reward; ``final_train_reward``: the mean of the last :data:`ARENA_WINDOW` steps;
      ``final_heldout_reward``: the last evaluation;
    * ``mismatch_step0``: mean ``abs(pi - mu)`` of the first rollout; ``mismatch_peak``: its
      highest moving average; ``mismatch_final``: its mean over the last window;
      ``max_abs_shift_final``: the largest ``abs(pi - mu)`` over the last window.
    """
    keys = [*by, "objective", "variant", "precision", "lr"]
    rows = []
    for key, g in df.groupby(keys, sort=False):
        g = g.sort_values(["seed", "step"])
        by_seed = g.groupby("seed", sort=True)
        n = by_seed.ngroups
        steps = int(g["step"].max())
        win = min(ARENA_WINDOW, steps)

        def rolling(col: str):
            return by_seed[col].transform(lambda x: x.rolling(win, min_periods=1).mean())

        last = g[g["step"] > steps - win]
        collapsed = by_seed["collapsed"].any()
        first = g[g["collapsed"]].groupby("seed")["step"].min()
        rate, lo, hi = stats.clopper_pearson_ci(int(collapsed.sum()), n)
        held = g.dropna(subset=["heldout_reward"])
        rows.append({
            **dict(zip(keys, key)), "seeds": n, "steps": steps,
            "collapse_rate": rate, "collapse_lo": lo, "collapse_hi": hi,
            "median_collapse_step": float(first.median()) if len(first) else np.nan,
            "peak_train_reward": g.assign(_r=rolling("reward")).groupby("seed")["_r"].max().mean(),
            "final_train_reward": last.groupby("seed")["reward"].mean().mean(),
            "final_heldout_reward": held.groupby("seed")["heldout_reward"].last().mean(),
            "mismatch_step0": g[g["step"] == g["step"].min()]["mismatch_mean"].mean(),
            "mismatch_peak": g.assign(_m=rolling("mismatch_mean")).groupby("seed")["_m"].max().mean(),
            "mismatch_final": last.groupby("seed")["mismatch_mean"].mean().mean(),
            "max_abs_shift_final": last.groupby("seed")["mismatch_max"].max().mean(),
        })
    return pd.DataFrame(rows, columns=[*by, *ARENA_SUMMARY_COLUMNS])


ARENA_CLIMB = 1.5
"""The mismatch has started to climb once its moving average exceeds this multiple of its lowest so far."""
ARENA_FALL = 0.9
"""The training reward has started to fall once its moving average drops below this share of its best so far."""


def order_of_events(df: pd.DataFrame) -> pd.DataFrame:
    """For each collapsed run of the arena's table: the step at which its mismatch started to
    climb (the :data:`ARENA_WINDOW`-step moving average of mean ``abs(pi - mu)`` first exceeds
    :data:`ARENA_CLIMB` times its lowest value so far), the step at which its training reward
    started to fall (its moving average first drops below :data:`ARENA_FALL` times its best so
    far, after the best reached the collapse rule's ``min_peak``), the step it counts as
    collapsed, and whether the climb came first. Thresholds declared before any run."""
    keys = ["objective", "variant", "precision", "lr", "method", "seed"]
    rows = []
    for key, g in df[df.groupby(keys[:-1] + ["seed"])["collapsed"].transform("any")].groupby(keys, sort=False):
        g = g.sort_values("step")
        steps = g["step"].to_numpy()
        win = min(ARENA_WINDOW, len(g))
        mm = g["mismatch_mean"].rolling(win, min_periods=1).mean().to_numpy()
        rw = g["reward"].rolling(win, min_periods=1).mean().to_numpy()
        climb = mm > ARENA_CLIMB * np.minimum.accumulate(mm)
        best = np.maximum.accumulate(rw)
        fall = (rw < ARENA_FALL * best) & (best >= COLLAPSE.min_peak)
        first = {name: (float(steps[np.argmax(flags)]) if flags.any() else np.nan)
                 for name, flags in (("climb_step", climb), ("fall_step", fall))}
        collapse = float(steps[np.argmax(g["collapsed"].to_numpy())])
        rows.append({**dict(zip(keys, key)), **first, "collapse_step": collapse,
                     "mismatch_first": bool(first["climb_step"] < first["fall_step"])
                     if np.isfinite(first["climb_step"]) and np.isfinite(first["fall_step"]) else False})
    return pd.DataFrame(rows, columns=[*keys, "climb_step", "fall_step", "collapse_step", "mismatch_first"])


def gradient_shares(df: pd.DataFrame, *, by: str = "method") -> pd.DataFrame:
    """Where each group's gradient goes: per group of ``by``, the mean over its steps with a
    gradient of each step's :data:`~drpo_sim.arena.train.GRAD_SHARES`, normalised per step.

    A step's shares in the arena's table average its updates, and an update in which every
    advantage is 0 adds 0 (it has no gradient to share out), so a step's shares sum to the share
    of its updates that had a gradient, not to 1. Each step's shares are divided by their sum
    before the mean, so that every step with a gradient weighs the same and each row sums to 1.
    Steps whose shares sum to 0 have no gradient at all and are left out; ``steps`` counts the
    steps in the group and ``steps_with_gradient`` those kept.
    """
    cols = list(GRAD_SHARES)
    total = df[cols].sum(axis=1)
    kept = total > 0
    normalised = df.loc[kept, cols].div(total[kept], axis=0)
    out = normalised.groupby(df.loc[kept, by], sort=False).mean()
    out["steps"] = df.groupby(by, sort=False).size()
    out["steps_with_gradient"] = kept.groupby(df[by], sort=False).sum().reindex(out.index)
    return out
