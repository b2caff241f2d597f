"""The twelve claims of the reference (``docs/reference.md``, "Claims the toolkit tests"), each put
to a test that returns its numbers and a verdict.

Every test here computes from the registry (:mod:`drpo_sim.objectives`) or from a result table
the toolkit wrote; none holds a number typed by hand. A :class:`ClaimResult` carries the claim's
statement, the measured numbers, a verdict (``supported``, ``not supported`` or ``inconclusive``)
and the reason, so that a report can quote them and a test can check that every quoted number is
in the result file (:func:`write_claims`).

The geometric claims (1, 2, 3) need no training; claim 5 is read off a replay
(:mod:`drpo_sim.analysis`) of a token log; the others off the summaries the analyses of
:mod:`drpo_sim.paper.analyses` write: the threshold-sensitivity sweep (7), the convergence figure
(12), the six settings (4, 6), the ablations (8, 9, 10) and the anchor comparison (4, 11). The
settings, variants and result files a claim reads are imported from those analyses' specs, never
retyped here. :func:`claims_from_results` runs them all on a results directory.

"Overlap" below is of 95% stratified-bootstrap intervals of an IQM over seeds
(:func:`drpo_sim.stats.summarize_runs`); non-overlapping intervals are a measured difference,
overlapping ones are not (at this number of seeds).
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from drpo_sim import objectives
from drpo_sim._io import write_text
from drpo_sim.config import VERDICTS
from drpo_sim.geometry import plane_axis
from drpo_sim.paper.analyses import (
    ablations,
    anchor,
    convergence,
    fixed_points,
    replay_sim,
    settings,
    thresholds,
    weight_table,
)
from drpo_sim.paper.manifest import required_json
from drpo_sim.paper.specs import param_suffix

__all__ = [
    "CLAIMS_FILE",
    "STATEMENTS",
    "ClaimResult",
    "claim_1",
    "claim_2",
    "claim_3",
    "claim_4",
    "claim_5",
    "claim_6",
    "claim_7",
    "claim_8",
    "claim_9",
    "claim_10",
    "claim_11",
    "claim_12",
    "claims_from_results",
    "load_claims",
    "write_claims",
]

CLAIMS_FILE = "claims.json"

#: The claims as the reference states them.
STATEMENTS: dict[int, str] = {
    1: "DRPO's weight stays bounded by 1 + 1/delta for every token; SPO's grows like 1 / mu_min.",
    2: "The chi-square and l2 identities hold exactly when enumerated over the vocabulary.",
    3: "With delta < 1, tokens pushed past abs(pi - mu) > delta in the diverging direction get w < 0 and are "
       "pulled back; with delta = 12.5 this never happens.",
    4: "Without a trust region (pg_is, cispo), the mismatch abs(pi - mu) grows until the reward collapses; masking "
       "only large-divergence updates on negative-advantage tokens is enough to stabilise it.",
    5: "Ratio clipping over-masks rare tokens (clip fraction concentrated at low mu) and under-constrains shifts "
       "of frequent tokens (0.99 to 0.80 is a ratio of 0.81, inside the clip).",
    6: "DRPO converges faster than DPPO at the same geometry (smooth weight against hard mask).",
    7: "DPPO's best delta grows with the noise level; DRPO is flat across delta in {2.5, 12.5}.",
    8: "Dropping abs(A) destabilises training when advantages vary widely in size.",
    9: "mask_drpo performs about as well as drpo.",
    10: "KL, TV and K3 regularisers of the sampled token do worse than DRPO's.",
    11: "Anchoring the ratio to a recomputed trainer policy lets the engine mismatch accumulate; anchoring to the "
        "rollout policy does not.",
    12: "At delta = 12.5, DRPO behaves measurably differently from pg_is (or it does not).",
}


@dataclasses.dataclass
class ClaimResult:
    """One claim's test: the numbers it measured, its verdict and why."""

    number: int
    verdict: str
    reason: str
    numbers: dict[str, float]
    sources: list[str] = dataclasses.field(default_factory=list)
    figures: list[str] = dataclasses.field(default_factory=list)

    def __post_init__(self) -> None:
        if self.verdict not in VERDICTS:
            raise ValueError(f"verdict {self.verdict!r}: valid verdicts are {VERDICTS}")
        self.numbers = {k: float(v) for k, v in self.numbers.items()}

    @property
    def statement(self) -> str:
        return STATEMENTS[self.number]


def _plane(n: int) -> tuple[np.ndarray, np.ndarray]:
    axis = plane_axis(n)
    mu, pi = np.meshgrid(axis, axis)
    return mu.ravel(), pi.ravel()


def _weights_by_sign(obj: objectives.Objective, pi: np.ndarray, mu: np.ndarray) -> dict[float, np.ndarray]:
    """The objective's weight at ``(mu, pi)`` for ``A = +1`` and ``A = -1``."""
    lp, lb = np.log(pi), np.log(mu)
    return {s: obj.weight(lp, lb, np.full_like(lp, s)) for s in (1.0, -1.0)}


def claim_1(deltas: Sequence[float] = (12.5, 2.5, 0.5), eps: float = 12.5, n_plane: int = 400,
            mus: Sequence[float] = (1e-1, 1e-2, 1e-3, 1e-4, 1e-5)) -> ClaimResult:
    """Claim 1, over the ``(mu, pi)`` grid of the geometry figures and both signs of ``A``.

    DRPO: the largest ``abs(w - 1) * delta`` found (``<= 1`` is the claim). SPO: the largest
    ``abs(w - 1)`` over ``pi`` in ``(0, 1]`` at each ``mu`` in ``mus``, and the slope of its
    logarithm against ``log mu`` (``-1`` is growth like ``1 / mu``).
    """
    mu, pi = _plane(n_plane)
    numbers: dict[str, float] = {}
    bounded = True
    for d in deltas:
        w = _weights_by_sign(objectives.get("drpo", delta=d), pi, mu)
        worst = max(float(np.max(np.abs(x - 1.0))) for x in w.values())
        numbers[f"drpo_delta{d:g}_max_abs_w_minus_1_times_delta"] = worst * d
        bounded &= worst * d <= 1.0 + 1e-12
    spo = objectives.get("spo", eps=eps)
    pis = np.geomspace(1e-9, 1.0, 2001)
    peaks = []
    for m in mus:
        w = _weights_by_sign(spo, pis, np.full_like(pis, m))
        peak = max(float(np.max(np.abs(x - 1.0))) for x in w.values())
        numbers[f"spo_mu{m:g}_max_abs_w_minus_1"] = peak
        peaks.append(peak)
    slope = float(np.polyfit(np.log(mus), np.log(peaks), 1)[0])
    numbers["spo_log_peak_vs_log_mu_slope"] = slope
    grows = abs(slope + 1.0) < 0.05
    verdict = "supported" if bounded and grows else "not supported"
    reason = (f"over a {n_plane}x{n_plane} (mu, pi) grid DRPO's abs(w - 1) * delta peaks at "
              f"{max(numbers[f'drpo_delta{d:g}_max_abs_w_minus_1_times_delta'] for d in deltas):.4g} (bound 1) for "
              f"delta in {list(deltas)}; SPO's largest abs(w - 1) grows with slope {slope:.3f} in log mu (1/mu is -1)")
    return ClaimResult(1, verdict, reason, numbers, ["drpo_sim.objectives"],
                       [weight_table.SPEC.delta_range_figure, weight_table.SPEC.weight_figure])


def claim_2(vocab_sizes: Sequence[int] = (8, 256, 65536), trials: int = 20, delta: float = 12.5, eps: float = 12.5,
            seed: int = 0) -> ClaimResult:
    """Claim 2: enumerate the vocabulary and compare both sides of each identity.

    Random ``mu`` (Dirichlet) and ``pi`` (``mu`` tilted by a standard-normal log-factor and
    renormalised, so every ratio stays below the registry's cap ``LOG_RATIO_MAX``, where the
    surrogates stop being the plain formulas) and per-token advantages. Chi-square (SPO): the
    expectation under ``mu`` of SPO's regulariser ``r A - J`` equals
    ``sum abs(A) (pi - mu)^2 / (2 eps mu)``; l2 (DRPO): of DRPO's, ``sum abs(A) (pi - mu)^2 / (2 delta)``.
    The regularisers come from the objectives' surrogates. Reported: the largest relative error.
    """
    rng = np.random.default_rng(seed)
    spo, drpo = objectives.get("spo", eps=eps), objectives.get("drpo", delta=delta)
    worst = {"chi2": 0.0, "l2": 0.0}
    for v in vocab_sizes:
        for _ in range(trials):
            mu = np.maximum(rng.dirichlet(np.full(v, 0.5)), 1e-300)
            pi = mu * np.exp(rng.normal(size=v))
            pi /= pi.sum()
            a = rng.normal(size=v)
            lp, lb = np.log(pi), np.log(mu)
            r = np.exp(lp - lb)
            for key, obj, exact in (("chi2", spo, np.sum(np.abs(a) * (pi - mu) ** 2 / (2 * eps * mu))),
                                    ("l2", drpo, np.sum(np.abs(a) * (pi - mu) ** 2 / (2 * delta)))):
                enumerated = float(np.sum(mu * (r * a - obj.surrogate(lp, lb, a))))
                worst[key] = max(worst[key], abs(enumerated - exact) / abs(exact))
    numbers = {"chi2_max_rel_error": worst["chi2"], "l2_max_rel_error": worst["l2"],
               "vocab_max": max(vocab_sizes), "trials": trials * len(vocab_sizes)}
    ok = max(worst.values()) < 1e-9
    reason = (f"{trials * len(vocab_sizes)} random (mu, pi, A) over V in {list(vocab_sizes)}: largest relative error "
              f"{worst['chi2']:.2g} (chi-square, SPO) and {worst['l2']:.2g} (l2, DRPO), rounding level")
    return ClaimResult(2, "supported" if ok else "not supported", reason, numbers, ["drpo_sim.objectives"])


def claim_3(small_deltas: Sequence[float] = (0.15, 0.5), n_plane: int = 400) -> ClaimResult:
    """Claim 3 over the ``(mu, pi)`` grid: with ``delta < 1``, is ``w < 0`` exactly where
    ``sign(A) (pi - mu) > delta``? With ``delta = 12.5``, is any weight negative?

    Grid points on the boundary itself (``abs(sign(A)(pi - mu) - delta) < 1e-9``, where the
    weight is 0 up to rounding) are left out of the comparison and counted.
    """
    mu, pi = _plane(n_plane)
    numbers: dict[str, float] = {}
    exact = True
    for d in small_deltas:
        mismatched, corrective, boundary = 0, 0, 0
        for s, w in _weights_by_sign(objectives.get("drpo", delta=d), pi, mu).items():
            excess = s * (pi - mu) - d
            off = np.abs(excess) >= 1e-9
            mismatched += int(np.sum(((w < 0) != (excess > 0)) & off))
            corrective += int(np.sum(w < 0))
            boundary += int(np.sum(~off))
        numbers[f"delta{d:g}_corrective_fraction"] = corrective / (2 * len(mu))
        numbers[f"delta{d:g}_points_where_w_lt_0_disagrees"] = mismatched
        numbers[f"delta{d:g}_boundary_points_left_out"] = boundary
        exact &= mismatched == 0
    w125 = list(_weights_by_sign(objectives.get("drpo", delta=12.5), pi, mu).values())
    numbers["delta12.5_corrective_fraction"] = float(np.mean(np.concatenate(w125) < 0))
    numbers["delta12.5_min_weight"] = float(min(x.min() for x in w125))
    ok = exact and numbers["delta12.5_corrective_fraction"] == 0.0
    reason = (
        f"on {2 * len(mu):,} grid points (both signs of A) w < 0 exactly where sign(A)(pi - mu) > delta for delta "
        f"in {list(small_deltas)} (corrective on {numbers[f'delta{small_deltas[0]:g}_corrective_fraction']:.1%} of the "
        f"plane at delta = {small_deltas[0]:g}); at delta = 12.5 the smallest weight is "
        f"{numbers['delta12.5_min_weight']:.3f}, never negative"
    )
    return ClaimResult(3, "supported" if ok else "not supported", reason, numbers, ["drpo_sim.objectives"],
                       [weight_table.SPEC.plane_figure, fixed_points.SPEC.figure])


def claim_5(regions: pd.DataFrame | str | Path, *, clip: str = "grpo", rare: float = 0.01, frequent: float = 0.1,
            source: str | None = None) -> ClaimResult:
    """Claim 5, from a replay's ``regions_by_mu`` table (:attr:`drpo_sim.analysis.ReplayResult.regions`).

    Over-masking: the ratio clip's masked fraction on rare tokens (``mu <= rare``) against
    frequent ones (``mu > frequent``), with DPPO-TV's beside it. Under-constraining: at
    ``mu = 0.99, pi = 0.80`` with ``A < 0`` the clip's weight (1: inside) against DPPO-TV's
    (0: masked, the shift 0.19 exceeds its 0.15), from the registry.

    Verdict: supported when the clip masks rare tokens more than twice as often as frequent ones
    and the 0.99 -> 0.80 move stays inside the clip; inconclusive when the clip masks nothing in
    this log (no mismatch to judge by); not supported otherwise.
    """
    regions, name = _table(regions)
    source = source or name
    numbers: dict[str, float] = {}

    def masked(name: str, sel: pd.Series) -> float:
        d = regions[(regions["objective"] == name) & sel]
        return float((d["masked_frac"].fillna(0) * d["tokens"]).sum() / d["tokens"].sum())

    is_rare = regions["mu_high"] <= rare + 1e-15
    is_freq = regions["mu_low"] >= frequent
    for name in (clip, "dppo_tv"):
        numbers[f"{name}_masked_rare"] = masked(name, is_rare)
        numbers[f"{name}_masked_frequent"] = masked(name, is_freq)
    lp, lb, a = np.log([0.80]), np.log([0.99]), np.array([-1.0])
    numbers["ratio_099_to_080"] = float(np.exp(lp - lb)[0])
    numbers[f"{clip}_weight_099_to_080"] = float(objectives.get(clip).weight(lp, lb, a)[0])
    numbers["dppo_tv_weight_099_to_080"] = float(objectives.get("dppo_tv").weight(lp, lb, a)[0])
    over = numbers[f"{clip}_masked_rare"] > 2 * numbers[f"{clip}_masked_frequent"]
    under = numbers[f"{clip}_weight_099_to_080"] == 1.0 and numbers["dppo_tv_weight_099_to_080"] == 0.0
    clipped = numbers[f"{clip}_masked_rare"] + numbers[f"{clip}_masked_frequent"] > 0
    verdict = "supported" if over and under else ("inconclusive" if under and not clipped else "not supported")
    reason = (
        f"{clip} masks {numbers[f'{clip}_masked_rare']:.1%} of tokens with mu <= {rare:g} against "
        f"{numbers[f'{clip}_masked_frequent']:.1%} with mu > {frequent:g} (DPPO-TV: "
        f"{numbers['dppo_tv_masked_rare']:.1%} and {numbers['dppo_tv_masked_frequent']:.1%}); the move 0.99 -> 0.80 "
        f"(ratio {numbers['ratio_099_to_080']:.3f}) keeps weight {numbers[f'{clip}_weight_099_to_080']:g} under "
        f"{clip}, {numbers['dppo_tv_weight_099_to_080']:g} under DPPO-TV"
    )
    if not clipped:
        reason += "; the clip masks no token in this log, so it cannot show where it would"
    elif not over:
        reason += "; the clip's masking is not concentrated on rare tokens in this log"
    return ClaimResult(5, verdict, reason, numbers, [source or "regions table"],
                       [replay_sim.SPEC.file(f) for f in ("regions", "rare_tokens", "mismatch")])


def _table(data: pd.DataFrame | str | Path) -> tuple[pd.DataFrame, str | None]:
    if isinstance(data, pd.DataFrame):
        return data, None
    return pd.read_csv(data), Path(data).name


def _overlap(a: pd.Series, b: pd.Series) -> bool:
    """Whether two rows' final-reward intervals overlap."""
    return _above(a, b, "final") == 0


def claim_7(
    sensitivity: pd.DataFrame | str | Path,
    *,
    dppo: str = "dppo_tv",
    drpo_deltas: Sequence[float] = (2.5, 12.5),
    source: str | None = None,
) -> ClaimResult:
    """Claim 7, from the threshold-sensitivity summary (``threshold_sensitivity.csv``: one row per
    method, ``delta`` and noise ``level``, with the final-reward IQM and its interval).

    DPPO: at each noise level, the smallest ``delta`` whose interval overlaps the best ``delta``'s
    (the threshold needed to do about as well as the best); the claim holds if it grows from the
    lowest noise level to the highest. DRPO: flat if the intervals at ``drpo_deltas`` overlap at
    every level.
    """
    table, name = _table(sensitivity)
    levels = list(dict.fromkeys(table.sort_values("noise_std")["level"]))
    numbers: dict[str, float] = {}
    needed = []
    for lev in levels:
        d = table[(table["method"] == dppo) & (table["level"] == lev)].sort_values("delta")
        best = d.loc[d["final_iqm"].idxmax()]
        near = d[[_overlap(r, best) for _, r in d.iterrows()]]
        numbers[f"{dppo}_best_delta_noise{best['noise_std']:g}"] = best["delta"]
        numbers[f"{dppo}_best_iqm_noise{best['noise_std']:g}"] = best["final_iqm"]
        numbers[f"{dppo}_smallest_near_best_delta_noise{best['noise_std']:g}"] = near["delta"].min()
        needed.append(near["delta"].min())
    flat = True
    for lev in levels:
        d = table[(table["method"] == "drpo") & (table["level"] == lev)].set_index("delta")
        rows = [d.loc[x] for x in drpo_deltas]
        noise = rows[0]["noise_std"]
        for x, r in zip(drpo_deltas, rows):
            numbers[f"drpo_delta{x:g}_iqm_noise{noise:g}"] = r["final_iqm"]
        flat &= all(_overlap(rows[0], r) for r in rows[1:])
    grows = needed[-1] > needed[0]
    verdict = "supported" if grows and flat else "not supported"
    reason = (
        f"DPPO-TV needs delta >= {needed[0]:g} to come within the best's interval at the lowest noise and "
        f">= {needed[-1]:g} at the highest ({'grows' if grows else 'does not grow'}); DRPO's intervals at delta "
        f"{' and '.join(f'{x:g}' for x in drpo_deltas)} {'overlap' if flat else 'do not overlap'} at every noise level"
    )
    return ClaimResult(7, verdict, reason, numbers, [source or name or "sensitivity table"],
                       [thresholds.SPEC.name])


def claim_12(summary: pd.DataFrame | str | Path, *, source: str | None = None) -> ClaimResult:
    """Claim 12, from a convergence summary with ``reference="pg_is"`` (one row per method: the
    final-reward IQM and interval, ``p_improve`` of the method over pg_is and its interval).

    Verdict "supported" (DRPO at delta = 12.5 is measurably different from pg_is) when the
    final-reward intervals do not overlap or the probability-of-improvement interval excludes
    0.5; "not supported" (no measurable difference at this scale) otherwise.
    """
    table, name = _table(summary)
    t = table.set_index("method")
    drpo, base = t.loc["drpo"], t.loc["pg_is"]
    numbers = {
        "drpo_final_iqm": drpo["final_iqm"],
        "drpo_final_low": drpo["final_low"],
        "drpo_final_high": drpo["final_high"],
        "pg_is_final_iqm": base["final_iqm"],
        "pg_is_final_low": base["final_low"],
        "pg_is_final_high": base["final_high"],
        "p_improve": drpo["p_improve"],
        "p_improve_low": drpo["p_improve_low"],
        "p_improve_high": drpo["p_improve_high"],
        "n_seeds": drpo["n_seeds"],
    }
    separate = not _overlap(drpo, base) or not (drpo["p_improve_low"] <= 0.5 <= drpo["p_improve_high"])
    reason = (
        f"final reward {drpo['final_iqm']:.3f} [{drpo['final_low']:.3f}, {drpo['final_high']:.3f}] for DRPO against "
        f"{base['final_iqm']:.3f} [{base['final_low']:.3f}, {base['final_high']:.3f}] for pg_is over "
        f"{int(drpo['n_seeds'])} "
        f"seeds; P(DRPO > pg_is) = {drpo['p_improve']:.2f} [{drpo['p_improve_low']:.2f}, "
        f"{drpo['p_improve_high']:.2f}]: "
        + ("a measurable difference" if separate else "no measurable difference at this scale")
    )
    return ClaimResult(12, "supported" if separate else "not supported", reason, numbers, [source or name or "summary"],
                       [convergence.SPEC.name])


# ----------------------------------------------------------------------------------------------
# claims read off the panel summaries (drpo_sim.summaries.panel_summary: one row per setting and variant)


def _panel(data: pd.DataFrame | str | Path) -> tuple[pd.DataFrame, str | None]:
    table, name = _table(data)
    return table.set_index(["setting", "variant"]).sort_index(), name


def _above(x: pd.Series, y: pd.Series, metric: str) -> int:
    """+1 if row ``x``'s ``metric`` interval (``<metric>_low``, ``<metric>_high``) lies above row
    ``y``'s, -1 below, 0 if they overlap."""
    if x[f"{metric}_low"] > y[f"{metric}_high"]:
        return 1
    if x[f"{metric}_high"] < y[f"{metric}_low"]:
        return -1
    return 0


def _side(t: pd.DataFrame, setting: str, a: str, b: str, metric: str) -> int:
    """:func:`_above` for variants ``a`` and ``b`` of one setting."""
    return _above(t.loc[(setting, a)], t.loc[(setting, b)], metric)


def _majority(for_: list[str], against: list[str], total: int) -> str:
    """Supported when the claim's direction is measured in at least half the ``total`` cells and
    the opposite in none; not supported when it is measured in none; inconclusive otherwise."""
    if len(for_) * 2 >= total and not against:
        return "supported"
    return "not supported" if not for_ else "inconclusive"


def _tally(sides: dict[str, int]) -> tuple[list[str], list[str]]:
    return [k for k, v in sides.items() if v > 0], [k for k, v in sides.items() if v < 0]


def _key(*parts: str) -> str:
    """A number's name from variant and setting labels: ``"dppo_tv (A<0 only)", "stress"`` ->
    ``dppo_tv_neg_only_stress``; ``"drpo (delta 0.15)"`` -> ``drpo_delta0.15``."""
    clean = (p.replace("A<0 only", "neg only").replace("delta ", "delta") for p in parts)
    return "_".join(re.sub(r"[^\w.]+", "_", p).strip("_") for p in clean)


def claim_4(settings_table: pd.DataFrame | str | Path, anchor_table: pd.DataFrame | str | Path, *,
            free: Sequence[str] = anchor.FREE, neg_only: str = anchor.NEG_ONLY.label,
            stress: str = anchor.STRESS_PAIR[0].name) -> ClaimResult:
    """Claim 4, from the six-setting summary (:mod:`~drpo_sim.paper.analyses.settings`) and the
    anchor summary (:mod:`~drpo_sim.paper.analyses.anchor`; its rollout-anchored settings, the
    claim's setting).

    For the methods without a trust region (``free``) in every rollout-anchored setting: the
    collapse rate (:class:`drpo_sim.stats.CollapseRule`) and whether the mismatch grows (its
    final value against its peak). In ``stress``: the final reward of each free method and of
    DPPO-TV masking only negative-advantage tokens (``neg_only``).

    Verdict: supported when a free method collapses somewhere (a seed lost more than half its
    best reward) and the negative-only mask collapses less there; not supported when no free
    method collapses in any setting (nothing to stabilise at this scale); inconclusive otherwise.
    """
    s, s_name = _panel(settings_table)
    a, a_name = _panel(anchor_table)
    rollout = {r.name for _, r, _ in anchor.PAIRS}
    cells = [("settings", s, k) for k in s.index.get_level_values(0).unique()]
    cells += [("anchor", a, k) for k in a.index.get_level_values(0).unique() if k in rollout]
    numbers: dict[str, float] = {}
    worst, growth, where = 0.0, 0.0, ""
    for _, t, setting in cells:
        for m in free:
            if (setting, m) not in t.index:
                continue
            r = t.loc[(setting, m)]
            numbers[_key(m, setting, "collapse_rate")] = r["collapse_rate"]
            ratio = r["shift_final_iqm"] / r["shift_peak"]
            numbers[_key(m, setting, "shift_final_over_peak")] = ratio
            if r["collapse_rate"] > worst:
                worst, where = r["collapse_rate"], setting
            growth = max(growth, ratio)
    numbers["free_collapse_rate_max"] = worst
    numbers["free_shift_final_over_peak_max"] = growth
    numbers["settings_examined"] = len(cells)
    for m in (*free, neg_only):
        r = a.loc[(stress, m)]
        numbers[_key(m, stress, "final_iqm")] = r["final_iqm"]
        numbers[_key(m, stress, "final_low")] = r["final_low"]
        numbers[_key(m, stress, "final_high")] = r["final_high"]
    neg = a.loc[(stress, neg_only)] if where == stress else None
    if worst == 0:
        verdict = "not supported"
        reason = (
            f"no seed of {', '.join(free)} collapsed in any of {len(cells)} rollout-anchored settings; the "
            f"mismatch at the last step is at most {growth:.2f} of its peak (it falls as the policy sharpens, "
            f"it does not grow). Under stress {free[0]} ends at {numbers[_key(free[0], stress, 'final_iqm')]:.3f} "
            f"and the negative-only mask at {numbers[_key(neg_only, stress, 'final_iqm')]:.3f}: nothing to "
            "stabilise at this scale"
        )
    else:
        better = neg is not None and neg["collapse_rate"] < worst
        verdict = "supported" if better else "inconclusive"
        reason = (f"{worst:.0%} of seeds of a method without trust region collapsed (in {where}); "
                  + ("the negative-only mask collapsed less there" if better else
                     "the negative-only mask was not measured to collapse less in that setting"))
    return ClaimResult(4, verdict, reason, numbers, [s_name or "settings summary", a_name or "anchor summary"],
                       [settings.FIGURE.name, anchor.STRESS_FIGURE.name])


def claim_6(settings_table: pd.DataFrame | str | Path, *,
            drpo: Sequence[str] = (settings.DRPO_AT_DPPO_DELTA.label, settings.SPEC.label("drpo")),
            dppo: str = settings.SPEC.label("dppo_tv")) -> ClaimResult:
    """Claim 6, from the six-setting summary: speed is the area under the reward curve (AUC, the
    mean expected reward over training), compared setting by setting between DPPO-TV and DRPO at
    the same threshold (``drpo[0]``: DRPO with DPPO-TV's delta, the same geometry) and at the
    paper's delta (``drpo[1]``).

    Verdict (on the same-geometry comparison): supported when DRPO's AUC interval lies above
    DPPO-TV's in at least half the settings and below in none; not supported when it lies above
    in none; inconclusive otherwise.
    """
    t, name = _panel(settings_table)
    settings_ = list(t.index.get_level_values(0).unique())
    numbers: dict[str, float] = {}
    sides: dict[str, dict[str, int]] = {d: {} for d in drpo}
    for setting in settings_:
        numbers[_key(dppo, setting, "auc_iqm")] = t.loc[(setting, dppo), "auc_iqm"]
        for d in drpo:
            numbers[_key(d, setting, "auc_iqm")] = t.loc[(setting, d), "auc_iqm"]
            sides[d][setting] = _side(t, setting, d, dppo, "auc")
    same = sides[drpo[0]]
    faster, slower = _tally(same)
    numbers["settings"] = len(settings_)
    numbers["same_geometry_faster"], numbers["same_geometry_slower"] = len(faster), len(slower)
    f2, s2 = _tally(sides[drpo[1]])
    numbers["paper_delta_faster"], numbers["paper_delta_slower"] = len(f2), len(s2)
    verdict = _majority(faster, slower, len(settings_))
    reason = (f"{drpo[0]} learns faster than {dppo} (AUC interval above) in {len(faster)} of {len(settings_)} settings"
              + (f" ({', '.join(faster)})" if faster else "") + f" and slower in {len(slower)}"
              + (f" ({', '.join(slower)})" if slower else "")
              + f"; at the paper's delta, {drpo[1]} is faster in {len(f2)} and slower in {len(s2)}")
    return ClaimResult(6, verdict, reason, numbers, [name or "settings summary"], [settings.FIGURE.name])


def _ablation_sides(t: pd.DataFrame, variant: str, base: str,
                    delta: float) -> tuple[dict[str, int], dict[str, float], list[str]]:
    """Final-reward sides of the ablation ``variant`` against ``base`` in every cell (setting x
    threshold: the paper's, and ``delta``), the numbers quoted, and the cells where ``variant``
    collapses more often than ``base``. Labels come from the ablations' spec."""
    spec = ablations.SPEC
    sides, numbers, collapses_more = {}, {}, []
    for setting in t.index.get_level_values(0).unique():
        for params in ({}, {"delta": delta}):
            v, b = spec.label(variant, **params), spec.label(base, **params)
            cell = f"{setting}{param_suffix(params)}"
            sides[cell] = _side(t, setting, v, b, "final")
            numbers[_key(v, setting, "final_iqm")] = t.loc[(setting, v), "final_iqm"]
            numbers[_key(b, setting, "final_iqm")] = t.loc[(setting, b), "final_iqm"]
            numbers[_key(v, setting, "collapse_rate")] = t.loc[(setting, v), "collapse_rate"]
            if t.loc[(setting, v), "collapse_rate"] > t.loc[(setting, b), "collapse_rate"]:
                collapses_more.append(cell)
    return sides, numbers, collapses_more


def claim_8(ablation_table: pd.DataFrame | str | Path, *, delta: float = ablations.BINDING_DELTA) -> ClaimResult:
    """Claim 8, from the ablation summary (:mod:`~drpo_sim.paper.analyses.ablations`):
    ``drpo_no_abs_adv`` against ``drpo`` at the paper's delta and at ``delta``, in every setting
    (final reward).

    Verdict: supported when dropping abs(A) is worse (interval below, or more collapses) in some
    cell and better in none; not supported when it is worse in none; inconclusive otherwise.
    """
    t, name = _panel(ablation_table)
    sides, numbers, collapses_more = _ablation_sides(t, "drpo_no_abs_adv", "drpo", delta)
    better, worse = _tally(sides)
    worse = sorted(set(worse) | set(collapses_more))
    numbers["cells"], numbers["worse"], numbers["better"] = len(sides), len(worse), len(better)
    verdict = "supported" if worse and not better else ("not supported" if not worse else "inconclusive")
    reason = (f"without abs(A), final reward is below DRPO's in {len(worse)} of {len(sides)} cells (settings x delta)"
              + (f" ({', '.join(worse)})" if worse else "") + f" and above in {len(better)}"
              + (f" ({', '.join(better)})" if better else ""))
    return ClaimResult(8, verdict, reason, numbers, [name or "ablation summary"], [ablations.ABS_ADV_FIGURE.name])


def claim_9(ablation_table: pd.DataFrame | str | Path, *, delta: float = ablations.BINDING_DELTA) -> ClaimResult:
    """Claim 9, from the ablation summary: ``mask_drpo`` against ``drpo`` (final reward).

    Verdict: supported when the intervals overlap in every cell (settings x delta); not
    supported otherwise.
    """
    t, name = _panel(ablation_table)
    sides, numbers, _ = _ablation_sides(t, "mask_drpo", "drpo", delta)
    better, worse = _tally(sides)
    numbers["cells"], numbers["worse"], numbers["better"] = len(sides), len(worse), len(better)
    same = not better and not worse
    reason = (f"mask_drpo's final-reward interval overlaps DRPO's in {len(sides) - len(better) - len(worse)} of "
              f"{len(sides)} cells (settings x delta)" + (f"; below in {', '.join(worse)}" if worse else "")
              + (f"; above in {', '.join(better)}" if better else ""))
    return ClaimResult(9, "supported" if same else "not supported", reason, numbers, [name or "ablation summary"],
                       [ablations.MASK_FIGURE.name])


def claim_10(ablation_table: pd.DataFrame | str | Path, *, delta: float = ablations.BINDING_DELTA,
             others: Sequence[str] = ablations.DIVERGENCES[1:]) -> ClaimResult:
    """Claim 10, from the ablation summary: each of the KL, TV and K3 penalties against DRPO's.

    Verdict: supported when each is below DRPO (final-reward interval) in some cell and above in
    none; not supported when none is below anywhere; inconclusive otherwise.
    """
    t, name = _panel(ablation_table)
    numbers: dict[str, float] = {}
    parts, below_any, above_any, all_below = [], False, False, True
    for o in others:
        sides, nums, _ = _ablation_sides(t, o, "drpo", delta)
        numbers.update(nums)
        better, worse = _tally(sides)
        numbers[_key(o, "worse")], numbers[_key(o, "better")] = len(worse), len(better)
        below_any |= bool(worse)
        above_any |= bool(better)
        all_below &= bool(worse)
        parts.append(f"{o} below in {len(worse)}, above in {len(better)}")
    numbers["cells"] = len(sides)
    verdict = "supported" if all_below and not above_any else ("not supported" if not below_any else "inconclusive")
    reason = f"against DRPO over {len(sides)} cells (settings x delta), final reward: " + "; ".join(parts)
    return ClaimResult(10, verdict, reason, numbers, [name or "ablation summary"], [ablations.DIVERGENCES_FIGURE.name])


def claim_11(anchor_table: pd.DataFrame | str | Path) -> ClaimResult:
    """Claim 11, from the anchor summary (:mod:`~drpo_sim.paper.analyses.anchor`: each condition of
    ``anchor.PAIRS`` under the rollout and the recomputed anchor): the mismatch at the last step
    (IQM of mean abs(pi - mu) over seeds, with its interval) under the recomputed anchor against
    the rollout anchor, per method and condition; the final reward beside it.

    Verdict: supported when the recomputed anchor ends with more mismatch (interval above) in at
    least half the pairs and less in none; not supported when more in none; inconclusive otherwise.
    """
    t, name = _panel(anchor_table)
    numbers: dict[str, float] = {}
    sides: dict[str, int] = {}
    reward: dict[str, int] = {}
    for base, rollout, recompute in sorted(anchor.PAIRS, key=lambda p: p[0]):
        for v in t.loc[rollout.name].index:
            x, y = t.loc[(recompute.name, v)], t.loc[(rollout.name, v)]
            pair = f"{v} {base}"
            sides[pair] = _above(x, y, "shift_final")
            reward[pair] = _above(x, y, "final")
            for anchor_, r in (("recompute", x), ("rollout", y)):
                numbers[_key(v, base, anchor_, "shift_final")] = r["shift_final_iqm"]
                numbers[_key(v, base, anchor_, "final_iqm")] = r["final_iqm"]
    more, less = _tally(sides)
    up, down = _tally(reward)
    numbers["pairs"], numbers["more_mismatch"], numbers["less_mismatch"] = len(sides), len(more), len(less)
    numbers["higher_reward"], numbers["lower_reward"] = len(up), len(down)
    verdict = _majority(more, less, len(sides))
    reason = (
        f"with the recomputed anchor the final mismatch is higher in {len(more)} of {len(sides)} (method, setting) "
        f"pairs and lower in {len(less)}"
        + (f" ({', '.join(less)})" if less else "")
        + f"; its final reward is higher in {len(up)} and lower in {len(down)}"
        + (f" (higher: {', '.join(up)})" if up else "")
    )
    return ClaimResult(11, verdict, reason, numbers, [name or "anchor summary"],
                       [anchor.FP8_FIGURE.name, anchor.STRESS_FIGURE.name])


#: The result files each claim reads, relative to the results directory, from the specs of the
#: analyses that write them.
CLAIM_FILES = {
    4: (settings.SPEC.summary_file, anchor.SPEC.summary_file),
    5: (replay_sim.SPEC.file("regions_by_mu.csv"),),
    6: (settings.SPEC.summary_file,),
    7: (thresholds.SPEC.data_file,),
    8: (ablations.SPEC.summary_file,),
    9: (ablations.SPEC.summary_file,),
    10: (ablations.SPEC.summary_file,),
    11: (anchor.SPEC.summary_file,),
    12: (convergence.SPEC.summary_file,),
}


def claims_from_results(results: str | Path) -> list[ClaimResult]:
    """Every claim, in order: the geometric ones from the registry, the others from the result
    files of :data:`CLAIM_FILES` in ``results`` (a missing file is an error naming it)."""
    results = Path(results)
    tests = {4: claim_4, 5: claim_5, 6: claim_6, 7: claim_7, 8: claim_8, 9: claim_9, 10: claim_10, 11: claim_11,
             12: claim_12}
    for number, names in sorted(CLAIM_FILES.items()):
        missing = [str(results / f) for f in names if not (results / f).is_file()]
        if missing:
            raise FileNotFoundError(f"claim {number} reads {', '.join(missing)}, which does not exist; "
                                    "run its analysis first")
    out = [claim_1(), claim_2(), claim_3()]
    out += [test(*(results / f for f in CLAIM_FILES[number])) for number, test in sorted(tests.items())]
    return out


def write_claims(results: Sequence[ClaimResult], path: str | Path) -> Path:
    """Write the results as JSON (atomically): one object per claim with its statement."""
    doc: list[dict[str, Any]] = [{**dataclasses.asdict(r), "statement": r.statement} for r in results]
    return write_text(json.dumps(doc, indent=2) + "\n", path)


def load_claims(results: Path | str) -> list[dict]:
    """``results/claims.json``, validated: a list of claims, each with an integer ``number``
    (unique), a ``verdict`` among :data:`VERDICTS`, a ``reason`` and a ``statement`` (strings),
    ``numbers`` (name to number), ``sources`` (names) and optionally ``figures`` (figure names).
    Missing file: :class:`FileNotFoundError`; anything malformed: :class:`ValueError`, one line
    naming the file and the claim."""
    results = Path(results)
    path = results / CLAIMS_FILE
    data = required_json(results, CLAIMS_FILE)
    if not isinstance(data, list):
        raise ValueError(f"{path}: expected a list of claims, got {type(data).__name__}")
    seen: set[int] = set()
    for i, claim in enumerate(data):
        where = f"{path}: entry {i}"
        if not isinstance(claim, dict):
            raise ValueError(f"{where}: expected an object, got {type(claim).__name__}")
        for key, kind in (("number", int), ("verdict", str), ("reason", str), ("statement", str),
                          ("numbers", dict), ("sources", list)):
            if key not in claim:
                raise ValueError(f"{where}: missing {key!r}")
            if not isinstance(claim[key], kind) or isinstance(claim[key], bool):
                raise ValueError(f"{where}: {key!r} should be {kind.__name__}, got {type(claim[key]).__name__}")
        where = f"{path}: claim {claim['number']}"
        if claim["number"] in seen:
            raise ValueError(f"{where}: appears twice")
        seen.add(claim["number"])
        if claim["verdict"] not in VERDICTS:
            raise ValueError(f"{where}: verdict {claim['verdict']!r} is not one of {VERDICTS}")
        bad = [k for k, v in claim["numbers"].items() if isinstance(v, bool) or not isinstance(v, (int, float))]
        if bad:
            raise ValueError(f"{where}: numbers {bad} are not numbers")
        figures = claim.get("figures", [])
        if not isinstance(figures, list) or not all(isinstance(f, str) for f in figures):
            raise ValueError(f"{where}: 'figures' should be a list of figure names")
    return data


def verdict_table(ours: Sequence[Mapping[str, Any]], reference: Sequence[Mapping[str, Any]] | None = None, *,
                  labels: tuple[str, str] = ("this run", "reference")) -> str:
    """The claims' verdicts as a text table, one line per claim; with ``reference`` (another
    run's claims, e.g. the committed full run's), side by side with a last column saying where
    they differ. Both are lists of claims as :func:`load_claims` returns them."""
    theirs = {c["number"]: c["verdict"] for c in reference or []}
    width = max(len(labels[0]), *(len(v) for v in VERDICTS))
    other_width = max(len(labels[1]), len("not tested"), *(len(v) for v in VERDICTS))
    head = f"{'claim':>5}  {labels[0]:<{width}}"
    if reference is not None:
        head += f"  {labels[1]:<{other_width}}  agree"
    lines = [head]
    for c in sorted(ours, key=lambda c: c["number"]):
        line = f"{c['number']:>5}  {c['verdict']:<{width}}"
        if reference is not None:
            other = theirs.get(c["number"], "not tested")
            line += f"  {other:<{other_width}}  {'yes' if other == c['verdict'] else 'NO'}"
        lines.append(line)
    if reference is not None:
        same = sum(theirs.get(c["number"]) == c["verdict"] for c in ours)
        lines.append(f"{same} of {len(ours)} verdicts agree")
    return "\n".join(lines)
