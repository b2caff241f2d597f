"""The claims of ``../shared/REFERENCE.md`` ("Claims the toolkit must be able to test"), each put
to a test that returns its numbers and a verdict.

Every test here computes from the registry (:mod:`drpo_sim.objectives`) or from a result table
the toolkit wrote; none holds a number typed by hand. A :class:`ClaimResult` carries the claim's
statement, the measured numbers, a verdict (``supported``, ``not supported`` or ``inconclusive``)
and the reason, so that a report can quote them and a test can check that every quoted number is
in the result file (:func:`write_claims`).

Implemented so far: the geometric claims (1, 2, 3), which need no training; claim 5, read off a
replay (:mod:`drpo_sim.analysis`) of a token log; claims 7 and 12, read off the summaries of the
threshold-sensitivity sweep and the convergence figure. Claims 4, 6 and 8-11 need the dedicated
simulation analyses of issue 6 and come with them.

"Overlap" below is of 95% stratified-bootstrap intervals of the final-reward IQM
(:func:`drpo_sim.stats.summarize_runs`); non-overlapping intervals are a measured difference.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from drpo_sim import objectives
from drpo_sim._io import write_text
from drpo_sim.geometry import plane_axis

__all__ = ["STATEMENTS", "VERDICTS", "ClaimResult", "claim_1", "claim_2", "claim_3", "claim_5", "claim_7", "claim_12",
           "write_claims"]

VERDICTS = ("supported", "not supported", "inconclusive")

#: The claims as REFERENCE.md states them.
STATEMENTS: dict[int, str] = {
    1: "DRPO's weight stays bounded by 1 + 1/delta for every token; SPO's grows like 1 / mu_min.",
    2: "The chi-square and l2 identities hold exactly when enumerated over the vocabulary.",
    3: "With delta < 1, tokens pushed past abs(pi - mu) > delta in the diverging direction get w < 0 and are "
       "pulled back; with delta = 12.5 this never happens.",
    5: "Ratio clipping over-masks rare tokens (clip fraction concentrated at low mu) and under-constrains shifts "
       "of frequent tokens (0.99 to 0.80 is a ratio of 0.81, inside the clip).",
    7: "DPPO's best delta grows with the noise level; DRPO is flat across delta in {2.5, 12.5}.",
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
    return ClaimResult(1, verdict, reason, numbers, ["drpo_sim.objectives"])


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
    reason = (f"on {2 * len(mu):,} grid points (both signs of A) w < 0 exactly where sign(A)(pi - mu) > delta for delta "
              f"in {list(small_deltas)} (corrective on {numbers[f'delta{small_deltas[0]:g}_corrective_fraction']:.1%} of the "
              f"plane at delta = {small_deltas[0]:g}); at delta = 12.5 the smallest weight is "
              f"{numbers['delta12.5_min_weight']:.3f}, never negative")
    return ClaimResult(3, "supported" if ok else "not supported", reason, numbers, ["drpo_sim.objectives"])


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
    reason = (f"{clip} masks {numbers[f'{clip}_masked_rare']:.1%} of tokens with mu <= {rare:g} against "
              f"{numbers[f'{clip}_masked_frequent']:.1%} with mu > {frequent:g} (DPPO-TV: "
              f"{numbers['dppo_tv_masked_rare']:.1%} and {numbers['dppo_tv_masked_frequent']:.1%}); the move 0.99 -> 0.80 "
              f"(ratio {numbers['ratio_099_to_080']:.3f}) keeps weight {numbers[f'{clip}_weight_099_to_080']:g} under "
              f"{clip}, {numbers['dppo_tv_weight_099_to_080']:g} under DPPO-TV")
    if not clipped:
        reason += "; the clip masks no token in this log, so it cannot show where it would"
    elif not over:
        reason += "; the clip's masking is not concentrated on rare tokens in this log"
    return ClaimResult(5, verdict, reason, numbers, [source or "regions table"])


def _table(data: pd.DataFrame | str | Path) -> tuple[pd.DataFrame, str | None]:
    if isinstance(data, pd.DataFrame):
        return data, None
    return pd.read_csv(data), Path(data).name


def _overlap(a: pd.Series, b: pd.Series) -> bool:
    return bool(a["final_low"] <= b["final_high"] and b["final_low"] <= a["final_high"])


def claim_7(sensitivity: pd.DataFrame | str | Path, *, dppo: str = "dppo_tv", drpo_deltas: Sequence[float] = (2.5, 12.5),
            source: str | None = None) -> ClaimResult:
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
    reason = (f"DPPO-TV needs delta >= {needed[0]:g} to come within the best's interval at the lowest noise and "
              f">= {needed[-1]:g} at the highest ({'grows' if grows else 'does not grow'}); DRPO's intervals at delta "
              f"{' and '.join(f'{x:g}' for x in drpo_deltas)} {'overlap' if flat else 'do not overlap'} at every noise level")
    return ClaimResult(7, verdict, reason, numbers, [source or name or "sensitivity table"])


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
    numbers = {"drpo_final_iqm": drpo["final_iqm"], "drpo_final_low": drpo["final_low"], "drpo_final_high": drpo["final_high"],
               "pg_is_final_iqm": base["final_iqm"], "pg_is_final_low": base["final_low"], "pg_is_final_high": base["final_high"],
               "p_improve": drpo["p_improve"], "p_improve_low": drpo["p_improve_low"], "p_improve_high": drpo["p_improve_high"],
               "n_seeds": drpo["n_seeds"]}
    separate = not _overlap(drpo, base) or not (drpo["p_improve_low"] <= 0.5 <= drpo["p_improve_high"])
    reason = (f"final reward {drpo['final_iqm']:.3f} [{drpo['final_low']:.3f}, {drpo['final_high']:.3f}] for DRPO against "
              f"{base['final_iqm']:.3f} [{base['final_low']:.3f}, {base['final_high']:.3f}] for pg_is over {int(drpo['n_seeds'])} "
              f"seeds; P(DRPO > pg_is) = {drpo['p_improve']:.2f} [{drpo['p_improve_low']:.2f}, {drpo['p_improve_high']:.2f}]: "
              + ("a measurable difference" if separate else "no measurable difference at this scale"))
    return ClaimResult(12, "supported" if separate else "not supported", reason, numbers, [source or name or "summary"])


def write_claims(results: Sequence[ClaimResult], path: str | Path) -> Path:
    """Write the results as JSON (atomically): one object per claim with its statement."""
    doc: list[dict[str, Any]] = [{**dataclasses.asdict(r), "statement": r.statement} for r in results]
    return write_text(json.dumps(doc, indent=2) + "\n", path)
