"""The twelve claims of the reference (``docs/reference.md``, "Claims the toolkit tests"), each put
to a test that returns its numbers and a verdict.

Every test here computes from the registry (:mod:`drpo_sim.objectives`) or from a result table
the toolkit wrote; none holds a number typed by hand. A :class:`ClaimResult` carries the claim's
statement, the measured numbers, a verdict (one of :data:`drpo_sim.config.VERDICTS`), the reason,
and how it was tested: the world and profile, the test, its margin and confidence level, the
seeds and cells, the corrected p-value. A report quotes them and a test checks that every quoted
number is in the result file (:func:`write_claims`).

The geometric claims (1, 2, 3) need no training; claim 5 is read off a replay
(:mod:`drpo_sim.analysis`) of a token log; the others off the per-seed tables the analyses of
:mod:`drpo_sim.paper.analyses` write (:func:`drpo_sim.summaries.seed_table`): the arena (4), the
six settings (6), the threshold-sensitivity sweep (7), the ablations and the tuning of each
penalty's delta (8, 9, 10), the anchor comparison (11) and the convergence figure (12). The
settings, variants and result files a claim reads are imported from those analyses' specs, never
retyped here. :func:`claims_from_results` runs them all on a results directory.

**The rules** (:mod:`drpo_sim.stats.compare`), declared here before any run that uses them:

- every comparison is paired on the shared seeds: per-seed differences, a sign-flip permutation
  test and a paired bootstrap interval; a claim's comparisons form a family, corrected by Holm's
  method at :data:`ALPHA`;
- "no difference" is only concluded from an equivalence test (TOST) within :data:`REWARD_MARGIN`;
  a difference not measured is "inconclusive", not equality;
- stability is judged on collapse: rates with exact intervals, the log-rank test of time to
  collapse, McNemar on shared seeds; never on a trimmed mean, which drops the collapsing seeds;
- a claim declares the mechanisms it needs (:data:`DESIGN`, names from
  :data:`drpo_sim.paper.specs.MECHANISMS`); tested in a world that lacks one, its verdict is
  "not testable here", with the reason, whatever the numbers (they are reported all the same).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from drpo_sim import objectives, stats
from drpo_sim._io import write_text
from drpo_sim.config import VERDICTS
from drpo_sim.geometry import plane_axis
from drpo_sim.paper.analyses import (
    ablations,
    anchor,
    arena,
    arena_reward_scales,
    convergence,
    divergence_tuning,
    fixed_points,
    replay_sim,
    reward_scales,
    settings,
    thresholds,
    weight_table,
)
from drpo_sim.paper.manifest import MANIFEST_FILE, read_json, required_json
from drpo_sim.paper.specs import REGISTRY
from drpo_sim.stats import compare

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

#: The family-wise error rate of every claim's tests (Holm over the claim's cells).
ALPHA = 0.05
#: The level of the paired bootstrap intervals reported beside the tests.
CONFIDENCE = 0.95
#: Resamples of the paired bootstrap, and of the permutation test beyond 16 seeds.
N_RESAMPLES = 10_000
#: The equivalence margin on a reward in [0, 1] (final reward, or its mean over training): two
#: methods whose mean per-seed difference is shown to lie within +-5% of the reward's range
#: count as equal. Declared with the rules, before the full run that uses them.
REWARD_MARGIN = 0.05
#: The saturated phase (claim 4): the best method's median peak held-out reward reaches 90% of
#: the task's maximum, 1. The published collapses happen there, long after it is reached.
SATURATION = 0.9

#: What each claim needs of the world it is tested in (:data:`drpo_sim.paper.specs.MECHANISMS`).
DESIGN: dict[int, tuple[str, ...]] = {
    1: (), 2: (), 3: (),
    4: ("mismatch", "policy_dependent_mismatch", "seeds"),
    5: ("mismatch",),
    6: ("mismatch", "seeds"),
    7: ("mismatch", "seeds"),
    8: ("mismatch", "advantage_spread", "seeds"),
    9: ("mismatch", "seeds"),
    10: ("mismatch", "seeds"),
    11: ("mismatch", "policy_dependent_mismatch", "seeds"),
    12: ("mismatch", "seeds"),
}

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
    world: str = REGISTRY.name
    """The world the verdict comes from (:class:`drpo_sim.paper.specs.World`)."""
    profile: str = ""
    """The run's profile (``quick`` or ``full``), set by :func:`claims_from_results`."""
    test: str = "exact evaluation"
    """The test and its correction, in words."""
    confidence: float | None = None
    margin: float | None = None
    """The declared equivalence margin, where the claim uses one."""
    n_seeds: int = 0
    n_cells: int = 0
    p_value: float | None = None
    """The decisive corrected p-value (Holm): the smallest of a directional family, the largest
    equivalence p-value of an equivalence claim; None where no test over seeds is made."""
    needs: list[str] = dataclasses.field(default_factory=list)

    def __post_init__(self) -> None:
        if self.verdict not in VERDICTS:
            raise ValueError(f"verdict {self.verdict!r}: valid verdicts are {VERDICTS}")
        self.numbers = {k: float(v) for k, v in self.numbers.items()}
        if self.p_value is not None:
            self.p_value = float(self.p_value)

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
                       [replay_sim.SPEC.file(f) for f in ("regions", "rare_tokens", "mismatch")],
                       world=replay_sim.SPEC.world.name, needs=list(DESIGN[5]),
                       test="the masked share of rare against frequent tokens in one replayed token log, and the "
                            "registry's weights at one point (a measurement, no test over seeds)")


def _table(data: pd.DataFrame | str | Path) -> tuple[pd.DataFrame, str | None]:
    if isinstance(data, pd.DataFrame):
        return data, None
    return pd.read_csv(data), Path(data).name


def _key(*parts: Any) -> str:
    """A number's name from variant and setting labels: ``"dppo_tv (A<0 only)", "stress"`` ->
    ``dppo_tv_neg_only_stress``; ``"drpo (delta 0.15)"`` -> ``drpo_delta0.15``."""
    clean = (str(p).replace("A<0 only", "neg only").replace("delta ", "delta") for p in parts)
    return "_".join(re.sub(r"[^\w.]+", "_", p).strip("_") for p in clean)


# ----------------------------------------------------------------------------------------------
# paired comparisons on shared seeds (the per-seed tables, drpo_sim.summaries.seed_table)


def _aligned(seeds: pd.DataFrame, x: Mapping[str, Any], y: Mapping[str, Any], metric: str,
             where: str) -> tuple[np.ndarray, np.ndarray]:
    """``metric`` of the rows matching ``x`` and of those matching ``y``, aligned seed by seed.
    Both sides must hold the same seeds, once each."""
    def side(sel: Mapping[str, Any]) -> pd.Series:
        mask = np.ones(len(seeds), dtype=bool)
        for k, v in sel.items():
            mask &= np.asarray(np.isclose(seeds[k], v) if isinstance(v, float) else seeds[k] == v, dtype=bool)
        rows = seeds[mask]
        if rows.empty:
            raise ValueError(f"{where}: no seeds for {dict(sel)}")
        if rows["seed"].duplicated().any():
            raise ValueError(f"{where}: a seed appears twice for {dict(sel)}")
        return rows.set_index("seed")[metric]

    a, b = side(x), side(y)
    if set(a.index) != set(b.index):
        only = sorted(set(a.index) ^ set(b.index))[:5]
        raise ValueError(f"{where}: {dict(x)} and {dict(y)} ran on different seeds ({only} on one side only); "
                         "a paired test needs shared seeds")
    b = b.loc[a.index]
    return a.to_numpy(dtype=float), b.to_numpy(dtype=float)


@dataclasses.dataclass
class _Cell:
    """One comparison of a claim's family: X against Y on shared seeds, and its Holm-adjusted
    p-values (difference, and equivalence when a margin is declared)."""

    paired: compare.PairedComparison
    equivalence: compare.Equivalence | None = None
    p_holm: float = 1.0
    eq_holm: float | None = None

    @property
    def side(self) -> int:
        if self.p_holm >= ALPHA:
            return 0
        return 1 if self.paired.mean_diff > 0 else -1

    @property
    def equivalent(self) -> bool:
        return self.eq_holm is not None and self.eq_holm < ALPHA


def _family(pairs: Mapping[str, tuple[np.ndarray, np.ndarray]], margin: float | None = None) -> dict[str, _Cell]:
    """A claim's family of paired comparisons (:func:`drpo_sim.stats.compare.paired_comparison`,
    and :func:`~drpo_sim.stats.compare.equivalence_test` against ``margin``), with Holm's
    correction over the family (:func:`~drpo_sim.stats.compare.holm`)."""
    cells = {k: _Cell(compare.paired_comparison(x, y, confidence=CONFIDENCE, n_resamples=N_RESAMPLES),
                      compare.equivalence_test(x, y, margin, alpha=ALPHA) if margin is not None else None)
             for k, (x, y) in pairs.items()}
    if cells:
        for c, p in zip(cells.values(), compare.holm([c.paired.p_value for c in cells.values()])):
            c.p_holm = float(p)
        if margin is not None:
            for c, p in zip(cells.values(), compare.holm([c.equivalence.p_value for c in cells.values()])):
                c.eq_holm = float(p)
    return cells


def _record(numbers: dict[str, float], name: str, cell: _Cell) -> None:
    """The numbers of one comparison, under ``name``: mean difference, its interval, the
    Holm-adjusted p-values, the seeds compared."""
    p = cell.paired
    numbers[_key(name, "diff")] = p.mean_diff
    numbers[_key(name, "diff_low")] = p.low
    numbers[_key(name, "diff_high")] = p.high
    numbers[_key(name, "p_holm")] = cell.p_holm
    numbers[_key(name, "p_improve")] = p.p_improve
    if cell.eq_holm is not None:
        numbers[_key(name, "tost_p_holm")] = cell.eq_holm
    if p.n_dropped:
        numbers[_key(name, "seeds_dropped")] = p.n_dropped


def _split(cells: Mapping[str, _Cell]) -> tuple[list[str], list[str], list[str]]:
    """The cells measured above, below, and equivalent (within the margin)."""
    return ([k for k, c in cells.items() if c.side > 0], [k for k, c in cells.items() if c.side < 0],
            [k for k, c in cells.items() if c.equivalent])


def _directional(cells: Mapping[str, _Cell]) -> str:
    """The verdict on "X is above Y" over a family: supported when X is measured above (Holm) in
    at least half the cells and below in none; not supported when it is measured below somewhere
    and above nowhere, or equivalent to Y (TOST, Holm) in every cell; inconclusive otherwise
    (no difference measured is not evidence of none)."""
    above, below, same = _split(cells)
    if above and 2 * len(above) >= len(cells) and not below:
        return "supported"
    if (below and not above) or (cells and len(same) == len(cells)):
        return "not supported"
    return "inconclusive"


def _listing(names: Sequence[str]) -> str:
    return f" ({', '.join(names)})" if names else ""


def _min_p(cells: Mapping[str, _Cell]) -> float | None:
    return min((c.p_holm for c in cells.values()), default=None)


def _n_seeds(cells: Mapping[str, _Cell]) -> int:
    return min((c.paired.n for c in cells.values()), default=0)


def _paired_test(margin: float | None, metric: str) -> str:
    text = (f"paired per-seed differences of {metric} (sign-flip permutation test, paired bootstrap "
            f"{CONFIDENCE:.0%} interval), Holm over the claim's cells at alpha {ALPHA:g}")
    return text + (f"; equivalence by TOST within +-{margin:g}" if margin is not None else "")


def _arena_cell(seeds: pd.DataFrame, x: str, y: str, metric: str, margin: float | None,
                setting: str = arena.SANITY) -> _Cell:
    """Contestant ``x`` against ``y`` (labels) in one arena ``setting``, ``metric`` seed by seed:
    a family of one comparison (:func:`_family`)."""
    t = seeds[seeds["setting"] == setting]
    if t.empty:
        raise ValueError(f"arena seeds: no runs of setting {setting!r}")
    return _family({setting: _aligned(t, {"method": x}, {"method": y}, metric, "arena seeds")}, margin)[setting]


def _arena_world(cell: _Cell) -> str:
    return f"in the arena ({arena.SANITY} sanity test, {cell.paired.n} shared seeds)"


def _beside_simulator(arena_numbers: dict[str, float], sim_numbers: dict[str, float]) -> dict[str, float]:
    """A claim's numbers when its verdict comes from the arena: the arena's, then the
    simulator's reported beside them, each under ``sim_``."""
    return {**arena_numbers, **{f"sim_{k}": v for k, v in sim_numbers.items()}}


# ----------------------------------------------------------------------------------------------
# the claims read off per-seed tables


def claim_4(arena_seeds: pd.DataFrame | str | Path, *, setting: str = arena.SANITY, free: Sequence[str] = arena.FREE,
            trust_region: str = arena.TRUST_REGION) -> ClaimResult:
    """Claim 4 in the arena (the world whose mismatch depends on the policy), from its per-seed
    table (``arena_seeds.csv``): in the sanity-test ``setting``, the collapse of the methods
    without a trust region (``free``) against DPPO-Binary-TV (``trust_region``).

    It needs the saturated phase, where the published collapses happen: the best contestant's
    median (over seeds) peak held-out reward must reach :data:`SATURATION`; below it the verdict
    is "not testable here". Then, for each free method against ``trust_region``: collapse rates
    with exact (Clopper-Pearson) intervals, the log-rank test of time to collapse (censored at
    the run's end; Holm over the free methods) and the exact McNemar test on shared seeds.

    Verdict: supported when every free method collapses sooner than the trust region (log-rank,
    Holm) and more often; not supported when no seed of a free method collapses, or the trust
    region collapses as often; inconclusive otherwise. The arena has DPPO's two-sided mask, not
    the negative-advantage-only one the claim's second half names.
    """
    seeds, name = _table(arena_seeds)
    spec = arena.SPEC
    t = seeds[seeds["setting"] == setting]
    if t.empty:
        raise ValueError(f"{name or 'arena seeds'}: no runs of setting {setting!r}")
    numbers: dict[str, float] = {}
    peaks = t.groupby("method")["peak"].median()
    best = peaks.idxmax()
    numbers["best_median_peak_heldout"] = peaks.max()
    numbers["saturation_threshold"] = SATURATION
    n = int(t.groupby("method").size().max())
    result = functools.partial(ClaimResult, 4, sources=[name or "arena seeds"],
                               figures=[spec.sanity_figure, spec.events_figure], world=spec.world.name,
                               confidence=CONFIDENCE, n_seeds=n, n_cells=len(free), needs=list(DESIGN[4]))
    if peaks.max() < SATURATION:
        for m in (*free, trust_region):
            numbers[_key(m, "median_peak_heldout")] = peaks[m]
        return result(
            "not testable here",
            f"the arena has the policy-dependent mismatch, but its runs never reach the saturated phase where the "
            f"published collapses happen: the best median peak held-out reward ({best}) is {peaks.max():.3f}, below "
            f"{SATURATION:g}", numbers,
            test=f"first whether the runs reach the saturated phase (median peak held-out reward >= {SATURATION:g}); "
                 "only then collapse rates, log-rank and McNemar tests")
    ps = {}
    for m in (*free, trust_region):
        d = t[t["method"] == m]
        k = int(d["collapsed"].sum())
        rate, lo, hi = stats.clopper_pearson_ci(k, len(d), CONFIDENCE)
        numbers[_key(m, "collapse_rate")], numbers[_key(m, "collapse_low")], numbers[_key(m, "collapse_high")] = (
            rate, lo, hi)
    def time_to_collapse(d: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
        """Each seed's collapse step, or its last step (censored), and whether it collapsed."""
        return np.where(d["collapsed"], d["collapse_step"], d["end_step"]), d["collapsed"].to_numpy(bool)

    ref = time_to_collapse(t[t["method"] == trust_region])
    for m in free:
        ps[m] = compare.logrank_test(*time_to_collapse(t[t["method"] == m]), *ref)
        x, y = _aligned(t.assign(c=t["collapsed"].astype(float)), {"method": m}, {"method": trust_region}, "c",
                        "claim 4")
        b, c, p_mc = compare.mcnemar_test(x > 0, y > 0)
        numbers[_key(m, "only_it_collapsed")], numbers[_key(m, "only_trust_region_collapsed")] = b, c
        numbers[_key(m, "mcnemar_p")] = p_mc
    adjusted = dict(zip(ps, compare.holm(list(ps.values()))))
    for m, p in adjusted.items():
        numbers[_key(m, "logrank_p_holm")] = p
    rate = {m: numbers[_key(m, "collapse_rate")] for m in (*free, trust_region)}
    sooner = [m for m in free if adjusted[m] < ALPHA and rate[m] > rate[trust_region]]
    if all(rate[m] == 0 for m in free) or all(rate[m] <= rate[trust_region] for m in free):
        verdict = "not supported"
    else:
        verdict = "supported" if len(sooner) == len(free) else "inconclusive"
    reason = (", ".join(f"{m} collapses in {rate[m]:.0%} of seeds" for m in free)
              + f", {trust_region} in {rate[trust_region]:.0%}; sooner than {trust_region} (log-rank, Holm) for "
              f"{len(sooner)} of {len(free)}{_listing(sooner)}")
    return result(verdict, reason, numbers, test=f"collapse rates (Clopper-Pearson), log-rank of time to collapse "
                  f"(Holm over {len(free)}) and McNemar on shared seeds", p_value=min(adjusted.values()))


def claim_6(settings_seeds: pd.DataFrame | str | Path, arena_seeds: pd.DataFrame | str | Path | None = None, *,
            drpo_paper: str = settings.SPEC.label("drpo"), drpo_same: str = settings.DRPO_AT_DPPO_DELTA.label,
            dppo: str = settings.SPEC.label("dppo_tv"), margin: float = REWARD_MARGIN) -> ClaimResult:
    """Claim 6, from the six settings' per-seed table: speed is the area under the reward curve
    (AUC, the mean expected reward over training), compared seed by seed in every setting between
    DRPO and DPPO-TV at the papers' thresholds (DRPO ``delta = 12.5``, ``drpo_paper``; DPPO-TV
    0.15) and at equal delta (``drpo_same``, DRPO at 0.15, which attenuates inside DPPO's region
    and is slower by construction). Each is a family over the settings (Holm).

    Verdict (at the papers' thresholds; :func:`_directional`): supported when DRPO is measured
    faster in at least half the settings and slower in none; not supported when it is measured
    slower somewhere and faster nowhere, or equivalent (TOST within ``margin``) everywhere;
    inconclusive otherwise. The equal-delta family is reported beside it. A difference can be both
    measured and equivalent (real, but smaller than the margin).

    With ``arena_seeds`` the verdict comes from the arena instead (the same rule on its bf16
    sanity test: AUC of the held-out reward, DRPO at 12.5 and at 0.15 against DPPO-TV at 0.15, on
    its shared seeds), and the simulator's six settings are reported beside it.
    """
    seeds, name = _table(settings_seeds)
    names = list(dict.fromkeys(seeds["setting"]))
    fams = {}
    numbers: dict[str, float] = {"settings": len(names)}
    for label, drpo in (("paper", drpo_paper), ("same_delta", drpo_same)):
        fams[label] = _family({s: _aligned(seeds, {"setting": s, "variant": drpo}, {"setting": s, "variant": dppo},
                                           "auc", "claim 6") for s in names}, margin)
        for s, c in fams[label].items():
            _record(numbers, f"{label}_{s}_auc", c)
        above, below, same = _split(fams[label])
        numbers[f"{label}_faster"], numbers[f"{label}_slower"], numbers[f"{label}_equivalent"] = (
            len(above), len(below), len(same))
    verdict = _directional(fams["paper"])
    parts = []
    for label, drpo in (("paper", drpo_paper), ("same_delta", drpo_same)):
        above, below, same = _split(fams[label])
        which = "the papers' thresholds" if label == "paper" else "equal delta"
        parts.append(f"{drpo} against {dppo} ({which}): measured faster in {len(above)}{_listing(above)} and "
                     f"slower in {len(below)}{_listing(below)} of {len(names)} settings, equivalent within "
                     f"{margin:g} in {len(same)}")
    if arena_seeds is None:
        return ClaimResult(6, verdict, "; ".join(parts), numbers, [name or "settings seeds"], [settings.FIGURE.name],
                           world=settings.SPEC.world.name, test=_paired_test(margin, "AUC"),
                           confidence=CONFIDENCE, margin=margin, n_seeds=_n_seeds(fams["paper"]),
                           n_cells=len(names), p_value=_min_p(fams["paper"]), needs=list(DESIGN[6]))
    a_seeds, a_name = _table(arena_seeds)
    a_numbers: dict[str, float] = {}
    a_parts, a_fams = [], {}
    for label, drpo in (("paper", arena.DRPO_PAPER), ("same_delta", arena.DRPO_EQUAL)):
        cell = _arena_cell(a_seeds, drpo, arena.TRUST_REGION, "auc", margin)
        a_fams[label] = {arena.SANITY: cell}
        _record(a_numbers, f"arena_{label}_auc", cell)
        which = "the papers' thresholds" if label == "paper" else "equal delta"
        result = {1: "faster", -1: "slower", 0: "no difference measured"}[cell.side]
        a_parts.append(f"{drpo} against {arena.TRUST_REGION} ({which}): {result}, AUC difference "
                       f"{cell.paired.mean_diff:+.4f}" + (f", equivalent within {margin:g}" if cell.equivalent else ""))
    cell = a_fams["paper"][arena.SANITY]
    reason = (f"{_arena_world(cell)}: " + "; ".join(a_parts)
              + f". In the simulator (verdict there: {verdict}): " + "; ".join(parts))
    return ClaimResult(6, _directional(a_fams["paper"]), reason, _beside_simulator(a_numbers, numbers),
                       [a_name or "arena seeds", name or "settings seeds"],
                       [arena.SPEC.sanity_figure, settings.FIGURE.name], world=arena.SPEC.world.name,
                       test=_paired_test(margin, "the AUC of the held-out reward"), confidence=CONFIDENCE,
                       margin=margin, n_seeds=cell.paired.n, n_cells=1, p_value=cell.p_holm, needs=list(DESIGN[6]))


def claim_7(sensitivity_seeds: pd.DataFrame | str | Path, *, dppo: str = "dppo_tv",
            drpo_deltas: tuple[float, float] = (2.5, 12.5), margin: float = REWARD_MARGIN) -> ClaimResult:
    """Claim 7, from the threshold-sensitivity per-seed table (method, noise level, ``delta``).

    DPPO-TV at each noise level: the best ``delta`` (highest mean final reward), whether it is
    interior to the grid, and the smallest ``delta`` shown equivalent to the best (TOST within
    ``margin`` against the best, Holm over the level's deltas): the threshold needed to do as
    well. DRPO: equivalence of ``drpo_deltas`` at every level (TOST within ``margin``, Holm over
    levels), and their difference.

    Verdict: inconclusive when DPPO-TV's best delta sits at an end of the grid at some level (the
    grid cannot place the best threshold there; its upper end, 1, masks nothing); otherwise
    supported when the needed delta grows from the lowest noise to the highest and DRPO is
    equivalent across ``drpo_deltas`` at every level; not supported when it does not grow, or
    DRPO differs measurably; inconclusive otherwise.
    """
    seeds, name = _table(sensitivity_seeds)
    levels = sorted(seeds["noise_std"].unique())
    numbers: dict[str, float] = {}
    needed, edges, cells_total = [], [], 0
    for lev in levels:
        d = seeds[(seeds["method"] == dppo) & (seeds["noise_std"] == lev)]
        grid = sorted(d["delta"].unique())
        means = d.groupby("delta")["final"].mean()
        best = float(means.idxmax())
        fam = _family({f"{x:g}": _aligned(d, {"delta": x}, {"delta": best}, "final", "claim 7")
                       for x in grid if x != best}, margin)
        cells_total += len(fam)
        near = [best] + [float(k) for k, c in fam.items() if c.equivalent]
        numbers[_key(dppo, "best_delta_noise", f"{lev:g}")] = best
        numbers[_key(dppo, "best_mean_noise", f"{lev:g}")] = means.max()
        numbers[_key(dppo, "smallest_near_best_delta_noise", f"{lev:g}")] = min(near)
        needed.append(min(near))
        if best in (grid[0], grid[-1]):
            edges.append(f"delta {best:g} at noise {lev:g}")
    drpo = _family({f"noise {lev:g}": _aligned(seeds[seeds["noise_std"] == lev],
                                               {"method": "drpo", "delta": drpo_deltas[0]},
                                               {"method": "drpo", "delta": drpo_deltas[1]}, "final", "claim 7")
                    for lev in levels}, margin)
    for k, c in drpo.items():
        _record(numbers, f"drpo_{drpo_deltas[0]:g}_vs_{drpo_deltas[1]:g}_{k}", c)
    above, below, same = _split(drpo)
    different = [k for k in above + below if k not in same]
    flat = len(same) == len(levels)
    grows = needed[-1] > needed[0]
    if edges:
        verdict = "inconclusive"
    elif grows and flat:
        verdict = "supported"
    elif not grows or different:
        verdict = "not supported"
    else:
        verdict = "inconclusive"
    reason = (
        (f"DPPO-TV's best threshold is at an end of the grid ({'; '.join(edges)}), so the grid cannot place it; "
         if edges else "")
        + f"DPPO-TV needs delta >= {needed[0]:g} to do as well as its best at the lowest noise and "
        f">= {needed[-1]:g} at the highest ({'grows' if grows else 'does not grow'}); DRPO at delta "
        f"{drpo_deltas[0]:g} and {drpo_deltas[1]:g} is equivalent (within {margin:g}) at {len(same)} of "
        f"{len(levels)} noise levels and differs at {len(different)}"
    )
    return ClaimResult(7, verdict, reason, numbers, [name or "sensitivity seeds"], [thresholds.SPEC.name],
                       world=thresholds.SPEC.world.name, test=_paired_test(margin, "final reward"),
                       confidence=CONFIDENCE, margin=margin, n_seeds=_n_seeds(drpo), n_cells=cells_total + len(drpo),
                       p_value=max((c.eq_holm for c in drpo.values()), default=None), needs=list(DESIGN[7]))


def _ablation_label(method: str, delta: float) -> str:
    """The ablations' label of ``method`` at ``delta`` (the registry's default delta has no suffix)."""
    default = objectives.get(method).params.get("delta")
    return ablations.SPEC.label(method) if delta == default else ablations.SPEC.label(method, delta=delta)


def _ablation_pairs(seeds: pd.DataFrame, variant: str, base: str,
                    deltas: Sequence[float]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Final rewards of ``variant`` and ``base`` seed by seed, per cell (setting x delta)."""
    pairs = {}
    for setting in dict.fromkeys(seeds["setting"]):
        for d in deltas:
            pairs[f"{setting} delta {d:g}"] = _aligned(
                seeds, {"setting": setting, "variant": _ablation_label(variant, d)},
                {"setting": setting, "variant": _ablation_label(base, d)}, "final", "ablations")
    return pairs


def _ablation_family(seeds: pd.DataFrame, variant: str, base: str, deltas: Sequence[float],
                     margin: float) -> tuple[dict[str, _Cell], dict[str, float]]:
    """``variant`` against ``base`` on the ablations' seeds, per cell (:func:`_ablation_pairs`), as
    a family (:func:`_family`), and its numbers, named ``<variant>_vs_<base>_<cell>``."""
    cells = _family(_ablation_pairs(seeds, variant, base, deltas), margin)
    numbers: dict[str, float] = {}
    for k, c in cells.items():
        _record(numbers, f"{variant}_vs_{base}_{k}", c)
    return cells, numbers


def _reward_scale_pairs(seeds: pd.DataFrame, *, spread_wide: bool) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Final rewards of DRPO and of its fair ablation seed by seed, per cell (setting x delta) of
    :mod:`~drpo_sim.paper.analyses.reward_scales`: the settings with a spread of the reward scales
    (``spread_wide``) or the one without."""
    spec, pairs = reward_scales.SPEC, {}
    for setting, spread in zip(spec.settings, reward_scales.SPREADS):
        if (spread > 0) != spread_wide:
            continue
        for d in reward_scales.DELTAS:
            pairs[f"{setting.name} delta {d:g}"] = _aligned(
                seeds, {"setting": setting.name, "variant": reward_scales.variant("drpo", d).label},
                {"setting": setting.name, "variant": reward_scales.variant(reward_scales.ABLATION, d).label},
                "final", spec.name)
    return pairs


def _arena_reward_scale_pairs(seeds: pd.DataFrame, *, spread_wide: bool) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Final held-out rewards of DRPO and of its fair ablation seed by seed, per cell (setting x
    delta) of :mod:`~drpo_sim.paper.analyses.arena_reward_scales`, as :func:`_reward_scale_pairs`."""
    spec, pairs = arena_reward_scales.SPEC, {}
    for setting in spec.settings:
        if (setting.reward_scale_spread > 0) != spread_wide:
            continue
        for d in arena_reward_scales.DELTAS:
            pairs[f"{setting.name} delta {d:g}"] = _aligned(
                seeds, {"setting": setting.name, "method": arena_reward_scales.label("drpo", d)},
                {"setting": setting.name, "method": arena_reward_scales.label(reward_scales.ABLATION, d)},
                "final", spec.name)
    return pairs


def _reward_scale_verdict(pairs: dict, control: dict, margin: float, numbers: dict[str, float],
                          prefix: str = "") -> tuple[dict[str, _Cell], str]:
    """Claim 8's family (the cells with a spread) and its control (without), recorded in
    ``numbers`` under ``prefix``; the family and the sentence that reports both."""
    # drpo against the ablation: "above" is the ablation doing worse, the claim's direction
    cells, controls = _family(pairs, margin), _family(control, margin)
    for k, c in {**cells, **controls}.items():
        _record(numbers, f"{prefix}drpo_vs_batch_mean_{k}", c)
    worse, better, same = _split(cells)
    c_worse, c_better, c_same = _split(controls)
    reason = (f"with reward scales spread over decades, replacing abs(A) by the batch's mean abs(A) lowers the final "
              f"reward in {len(worse)}{_listing(worse)}, raises it in {len(better)}{_listing(better)} and is "
              f"equivalent in {len(same)}{_listing(same)} of {len(cells)} cells; without a spread (control) it "
              f"lowers it in {len(c_worse)}, raises it in {len(c_better)} and is equivalent in {len(c_same)} of "
              f"{len(controls)}")
    return cells, reason


def claim_8(reward_scale_seeds: pd.DataFrame | str | Path, arena_seeds: pd.DataFrame | str | Path | None = None, *,
            margin: float = REWARD_MARGIN) -> ClaimResult:
    """Claim 8 with the fair ablation, on the runs of
    :mod:`~drpo_sim.paper.analyses.reward_scales`: DRPO against ``drpo_no_abs_adv`` with
    ``abs(A)`` replaced by the batch's mean ``abs(A)``, final reward, paired on shared seeds, per
    cell (spread of the reward scales x delta), Holm over the family.

    The claim is conditional ("when advantages vary widely"), so its family is the cells with a
    spread of at least a decade, and the verdict is :func:`_directional` over them (DRPO measured
    above its ablation). The cells without a spread are the control, reported beside it: there the
    shared coefficient differs from each token's ``abs(A)`` only by the spread the task itself gives.

    With ``arena_seeds`` (the per-seed table of
    :mod:`~drpo_sim.paper.analyses.arena_reward_scales`) the verdict comes from the arena instead,
    by the same rule on the final held-out reward, the simulator's reported beside it.
    """
    seeds, name = _table(reward_scale_seeds)
    numbers: dict[str, float] = {}
    cells, reason = _reward_scale_verdict(_reward_scale_pairs(seeds, spread_wide=True),
                                          _reward_scale_pairs(seeds, spread_wide=False), margin, numbers)
    world = reward_scales.SPEC.world
    missing = world.lacks(DESIGN[8])
    if missing:
        reason = f"the {world.name} lacks {', '.join(missing)}; measured anyway, " + reason
    verdict = "not testable here" if missing else _directional(cells)
    if arena_seeds is None:
        return ClaimResult(8, verdict, reason, numbers, [name or "reward-scale seeds"], [reward_scales.FIGURE.name],
                           world=world.name, test=_paired_test(margin, "final reward"), confidence=CONFIDENCE,
                           margin=margin, n_seeds=_n_seeds(cells), n_cells=len(cells), p_value=_min_p(cells),
                           needs=list(DESIGN[8]))
    a_seeds, a_name = _table(arena_seeds)
    a_spec = arena_reward_scales.SPEC
    a_numbers: dict[str, float] = {}
    a_cells, a_reason = _reward_scale_verdict(_arena_reward_scale_pairs(a_seeds, spread_wide=True),
                                              _arena_reward_scale_pairs(a_seeds, spread_wide=False), margin, a_numbers,
                                              prefix="arena_")
    a_missing = a_spec.world.lacks(DESIGN[8])
    reason = (f"in the arena (bf16, {_n_seeds(a_cells)} shared seeds; final held-out reward): {a_reason}. "
              f"In the simulator (verdict there: {verdict}): {reason}")
    if a_missing:
        reason = f"the {a_spec.world.name} lacks {', '.join(a_missing)}; measured anyway, " + reason
    return ClaimResult(8, "not testable here" if a_missing else _directional(a_cells), reason,
                       _beside_simulator(a_numbers, numbers), [a_name or "arena reward-scale seeds",
                                                               name or "reward-scale seeds"],
                       [a_spec.name, reward_scales.FIGURE.name], world=a_spec.world.name,
                       test=_paired_test(margin, "final held-out reward"), confidence=CONFIDENCE, margin=margin,
                       n_seeds=_n_seeds(a_cells), n_cells=len(a_cells), p_value=_min_p(a_cells),
                       needs=list(DESIGN[8]))


def claim_9(ablation_seeds: pd.DataFrame | str | Path, *, deltas: Sequence[float] = (12.5, ablations.BINDING_DELTA),
            margin: float = REWARD_MARGIN) -> ClaimResult:
    """Claim 9 as an equivalence test: ``mask_drpo`` against ``drpo``, final reward, per cell
    (setting x delta), TOST within ``margin`` with Holm over the cells, and the paired test of a
    difference beside it.

    Verdict: supported when equivalent in every cell; not supported when a difference beyond the
    margin is measured somewhere (a measured difference in a cell that is not also equivalent);
    inconclusive otherwise (too few seeds to tell).
    """
    seeds, name = _table(ablation_seeds)
    cells, numbers = _ablation_family(seeds, "mask_drpo", "drpo", deltas, margin)
    above, below, same = _split(cells)
    beyond = [k for k in above + below if k not in same]
    verdict = "supported" if len(same) == len(cells) else ("not supported" if beyond else "inconclusive")
    reason = (f"mask_drpo is equivalent to DRPO (within {margin:g} of final reward) in {len(same)} of {len(cells)} "
              f"cells{_listing(same)}; a difference beyond the margin is measured in {len(beyond)}{_listing(beyond)}")
    return ClaimResult(9, verdict, reason, numbers, [name or "ablation seeds"], [ablations.MASK_FIGURE.name],
                       world=ablations.SPEC.world.name, test=_paired_test(margin, "final reward"),
                       confidence=CONFIDENCE, margin=margin, n_seeds=_n_seeds(cells), n_cells=len(cells),
                       p_value=max((c.eq_holm for c in cells.values()), default=None), needs=list(DESIGN[9]))


def claim_10(tuning_summary: pd.DataFrame | str | Path, ablation_seeds: pd.DataFrame | str | Path, *,
             others: Sequence[str] = ablations.DIVERGENCES[1:], margin: float = REWARD_MARGIN) -> ClaimResult:
    """Claim 10 with every penalty at its own best delta: per setting, each divergence's delta is
    the one with the highest final-reward IQM in the tuning run (the same grid,
    :data:`~drpo_sim.paper.analyses.ablations.TUNING_DELTAS`, on seeds of its own), and the
    comparison with DRPO at its tuned delta is made on the ablations' seeds (paired, Holm over
    divergences x settings).

    Verdict: supported when each of KL, TV and K3 is measured below DRPO in some setting and above
    in none; not supported when they are measured above somewhere and below nowhere, or
    equivalent (within ``margin``) everywhere; inconclusive otherwise. A tuned delta at an end of
    the grid is named in the reason.
    """
    tuning, t_name = _table(tuning_summary)
    seeds, s_name = _table(ablation_seeds)
    grid = sorted(tuning["delta"].unique())
    numbers: dict[str, float] = {}
    chosen: dict[tuple[str, str], float] = {}
    edges = []
    for (setting, method), d in tuning.groupby(["setting", "method"], sort=False):
        best = float(d.loc[d["final_iqm"].idxmax(), "delta"])
        chosen[(setting, method)] = best
        numbers[_key(method, setting, "tuned_delta")] = best
        if best in (grid[0], grid[-1]):
            edges.append(f"{method} {best:g} in {setting}")
    pairs = {}
    for setting in dict.fromkeys(tuning["setting"]):
        base = _ablation_label("drpo", chosen[(setting, "drpo")])
        for o in others:
            pairs[f"{o} {setting}"] = _aligned(
                seeds, {"setting": setting, "variant": _ablation_label(o, chosen[(setting, o)])},
                {"setting": setting, "variant": base}, "final", "claim 10")
    cells = _family(pairs, margin)
    for k, c in cells.items():
        _record(numbers, f"{k}_vs_drpo", c)
    above, below, same = _split(cells)
    each_below = all(any(k.startswith(o + " ") for k in below) for o in others)
    if each_below and not above:
        verdict = "supported"
    elif (above and not below) or len(same) == len(cells):
        verdict = "not supported"
    else:
        verdict = "inconclusive"
    reason = (f"each penalty at the delta its own tuning run chose, against DRPO at its own, on "
              f"{_n_seeds(cells)} shared seeds: below DRPO in {len(below)}{_listing(below)}, above in "
              f"{len(above)}{_listing(above)}, equivalent in {len(same)} of {len(cells)}"
              + (f"; tuned at an end of the grid: {', '.join(edges)}" if edges else ""))
    return ClaimResult(10, verdict, reason, numbers, [t_name or "tuning summary", s_name or "ablation seeds"],
                       [divergence_tuning.SPEC.name, ablations.DIVERGENCES_FIGURE.name],
                       world=ablations.SPEC.world.name, test=_paired_test(margin, "final reward"),
                       confidence=CONFIDENCE, margin=margin, n_seeds=_n_seeds(cells), n_cells=len(cells),
                       p_value=_min_p(cells), needs=list(DESIGN[10]))


def claim_11(anchor_seeds: pd.DataFrame | str | Path, arena_seeds: pd.DataFrame | str | Path | None = None, *,
             margin: float = REWARD_MARGIN) -> ClaimResult:
    """Claim 11 is about a mismatch that accumulates as training moves the parameters
    (``policy_dependent_mismatch``); a world without it gets "not testable here". What the
    anchor analysis measures is reported all the same: the final mismatch (mean abs(pi - mu) at
    the last step) under the recomputed anchor against the rollout anchor, paired per (method,
    condition), Holm over the pairs, and the final reward beside it.

    With ``arena_seeds`` (a world with the mechanism) the verdict is :func:`_directional` on the
    final mismatch in the arena's bf16 sanity test: MiniRL (PPO, ratio anchored to the recomputed
    trainer policy) above PPO with the rollout anchor, seed by seed, with the final held-out reward
    beside it; the simulator's pairs are reported after it.
    """
    seeds, name = _table(anchor_seeds)
    shift, reward = {}, {}
    for base, rollout, recompute in sorted(anchor.PAIRS, key=lambda p: p[0]):
        for v in dict.fromkeys(seeds.loc[seeds["setting"] == rollout.name, "variant"]):
            shift[f"{v} {base}"] = _aligned(seeds, {"setting": recompute.name, "variant": v},
                                            {"setting": rollout.name, "variant": v}, "shift_mean_final", "claim 11")
            reward[f"{v} {base}"] = _aligned(seeds, {"setting": recompute.name, "variant": v},
                                             {"setting": rollout.name, "variant": v}, "final", "claim 11")
    s_cells, r_cells = _family(shift), _family(reward, margin)
    numbers: dict[str, float] = {}
    for k, c in s_cells.items():
        _record(numbers, f"{k}_shift_recompute_minus_rollout", c)
    for k, c in r_cells.items():
        _record(numbers, f"{k}_reward_recompute_minus_rollout", c)
    more, less, _ = _split(s_cells)
    up, down, _ = _split(r_cells)
    world = anchor.SPEC.world
    missing = world.lacks(DESIGN[11])
    reason = ((f"the {world.name} lacks {', '.join(missing)}: its engine error does not follow the parameters, so "
               "nothing can accumulate. Measured anyway, " if missing else "")
              + f"with the recomputed anchor the final mismatch is higher in {len(more)} and lower in "
              f"{len(less)}{_listing(less)} of {len(s_cells)} (method, condition) pairs; the final reward higher in "
              f"{len(up)} and lower in {len(down)}")
    if arena_seeds is None:
        return ClaimResult(11, "not testable here" if missing else _directional(s_cells), reason, numbers,
                           [name or "anchor seeds"], [anchor.FP8_FIGURE.name, anchor.STRESS_FIGURE.name],
                           world=world.name, test=_paired_test(None, "the final mismatch"), confidence=CONFIDENCE,
                           n_seeds=_n_seeds(s_cells), n_cells=len(s_cells), p_value=_min_p(s_cells),
                           needs=list(DESIGN[11]))
    a_seeds, a_name = _table(arena_seeds)
    a_world = arena.SPEC.world
    shift_cell = _arena_cell(a_seeds, arena.MINIRL, arena.PPO_ROLLOUT, "mismatch_mean_final", None)
    reward_cell = _arena_cell(a_seeds, arena.MINIRL, arena.PPO_ROLLOUT, "final", margin)
    a_numbers: dict[str, float] = {}
    _record(a_numbers, "arena_shift_recompute_minus_rollout", shift_cell)
    _record(a_numbers, "arena_reward_recompute_minus_rollout", reward_cell)
    verb = {1: "higher", -1: "lower", 0: "not measurably different"}
    a_reason = (f"{_arena_world(shift_cell)}: with the recomputed anchor ({arena.MINIRL}) the final mean "
                f"abs(pi - mu) is {verb[shift_cell.side]} than with the rollout anchor ({arena.PPO_ROLLOUT}), "
                f"{shift_cell.paired.mean_diff:+.3g}; the final held-out reward {verb[reward_cell.side]}, "
                f"{reward_cell.paired.mean_diff:+.4f}" + (f" (equivalent within {margin:g})" if reward_cell.equivalent
                                                           else ""))
    a_missing = a_world.lacks(DESIGN[11])
    cells = {arena.SANITY: shift_cell}
    return ClaimResult(11, "not testable here" if a_missing else _directional(cells),
                       a_reason + ". In the simulator: " + reason, _beside_simulator(a_numbers, numbers),
                       [a_name or "arena seeds", name or "anchor seeds"],
                       [arena.SPEC.sanity_figure, anchor.FP8_FIGURE.name, anchor.STRESS_FIGURE.name],
                       world=a_world.name, test=_paired_test(None, "the final mismatch"), confidence=CONFIDENCE,
                       n_seeds=shift_cell.paired.n, n_cells=1, p_value=shift_cell.p_holm, needs=list(DESIGN[11]))


_DIFFERENCE_WORDS = {"not supported": "equivalent within the margin", "supported": "a measurable difference",
                     "inconclusive": "neither a difference nor equivalence is shown"}


def _difference_verdict(c: _Cell) -> str:
    """Claim 12's rule: not supported when equivalent within the margin, supported when a
    difference is measured (and equivalence is not), inconclusive otherwise."""
    if c.equivalent:
        return "not supported"
    return "supported" if c.side != 0 else "inconclusive"


def claim_12(convergence_seeds: pd.DataFrame | str | Path, arena_seeds: pd.DataFrame | str | Path | None = None, *,
             margin: float = REWARD_MARGIN) -> ClaimResult:
    """Claim 12 as a pair of tests on the convergence run's per-seed table: DRPO (delta 12.5)
    against pg_is, final reward, seed by seed: the paired test of a difference and the
    equivalence test (TOST within ``margin``).

    Verdict: not supported (no difference worth the name) when equivalent within the margin;
    supported (measurably different) when a difference is measured and equivalence is not;
    inconclusive when neither is shown.

    With ``arena_seeds`` the verdict comes from the arena's bf16 sanity test instead (DRPO at 12.5
    against PG-IS, final held-out reward, the same rule), the simulator's beside it.
    """
    seeds, name = _table(convergence_seeds)
    cells = _family({"drpo vs pg_is": _aligned(seeds, {"method": "drpo"}, {"method": "pg_is"}, "final", "claim 12")},
                    margin)
    c = cells["drpo vs pg_is"]
    numbers: dict[str, float] = {"n_seeds": c.paired.n}
    _record(numbers, "drpo_minus_pg_is_final", c)
    for m in ("drpo", "pg_is"):
        numbers[_key(m, "final_mean")] = float(seeds.loc[seeds["method"] == m, "final"].mean())
    verdict = _difference_verdict(c)
    p = c.paired
    reason = (f"DRPO minus pg_is, final reward over {p.n} shared seeds: {p.mean_diff:+.4f} [{p.low:+.4f}, "
              f"{p.high:+.4f}], permutation p = {c.p_holm:.3g}, TOST p = {c.eq_holm:.3g} within +-{margin:g}; "
              f"P(DRPO > pg_is) on shared seeds = {p.p_improve:.2f}: " + _DIFFERENCE_WORDS[verdict])
    if arena_seeds is None:
        return ClaimResult(12, verdict, reason, numbers, [name or "convergence seeds"], [convergence.SPEC.name],
                           world=convergence.SPEC.world.name, test=_paired_test(margin, "final reward"),
                           confidence=CONFIDENCE, margin=margin, n_seeds=p.n, n_cells=1,
                           p_value=c.eq_holm if verdict == "not supported" else c.p_holm, needs=list(DESIGN[12]))
    a_seeds, a_name = _table(arena_seeds)
    a = _arena_cell(a_seeds, arena.DRPO_PAPER, "PG-IS", "final", margin)
    a_numbers: dict[str, float] = {}
    _record(a_numbers, "arena_drpo_minus_pg_is_final", a)
    a_verdict = _difference_verdict(a)
    q = a.paired
    a_reason = (f"{_arena_world(a)}: {arena.DRPO_PAPER} minus PG-IS, final held-out reward: {q.mean_diff:+.4f} "
                f"[{q.low:+.4f}, {q.high:+.4f}], permutation p = {a.p_holm:.3g}, TOST p = {a.eq_holm:.3g} within "
                f"+-{margin:g}: {_DIFFERENCE_WORDS[a_verdict]}")
    return ClaimResult(12, a_verdict, a_reason + f". In the simulator (verdict there: {verdict}): " + reason,
                       _beside_simulator(a_numbers, numbers),
                       [a_name or "arena seeds", name or "convergence seeds"],
                       [arena.SPEC.sanity_figure, convergence.SPEC.name], world=arena.SPEC.world.name,
                       test=_paired_test(margin, "final held-out reward"), confidence=CONFIDENCE, margin=margin,
                       n_seeds=q.n, n_cells=1, p_value=a.eq_holm if a_verdict == "not supported" else a.p_holm,
                       needs=list(DESIGN[12]))


#: The result files each claim reads, relative to the results directory, from the specs of the
#: analyses that write them.
CLAIM_FILES = {
    4: (arena.SPEC.seeds_file,),
    5: (replay_sim.SPEC.file("regions_by_mu.csv"),),
    6: (settings.SPEC.seeds_file, arena.SPEC.seeds_file),
    7: (thresholds.SPEC.seeds_file,),
    8: (reward_scales.SPEC.seeds_file, arena_reward_scales.SPEC.seeds_file),
    9: (ablations.SPEC.seeds_file,),
    10: (divergence_tuning.SPEC.summary_file, ablations.SPEC.seeds_file),
    11: (anchor.SPEC.seeds_file, arena.SPEC.seeds_file),
    12: (convergence.SPEC.seeds_file, arena.SPEC.seeds_file),
}


def claims_from_results(results: str | Path) -> list[ClaimResult]:
    """Every claim, in order: the geometric ones from the registry, the others from the result
    files of :data:`CLAIM_FILES` in ``results`` (a missing file is an error naming it). Each
    result records the profile of the run (from ``MANIFEST.json``; ``unknown`` without one)."""
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
    profile = _profile(results)
    for r in out:
        r.profile = profile
    return out


def _profile(results: Path) -> str:
    try:
        return str(read_json(results / MANIFEST_FILE).get("profile") or "unknown")
    except (OSError, ValueError, AttributeError):
        return "unknown"



def write_claims(results: Sequence[ClaimResult], path: str | Path) -> Path:
    """Write the results as JSON (atomically): one object per claim with its statement."""
    doc: list[dict[str, Any]] = [{**dataclasses.asdict(r), "statement": r.statement} for r in results]
    return write_text(json.dumps(doc, indent=2) + "\n", path)


def load_claims(results: Path | str) -> list[dict]:
    """``results/claims.json``, validated: a list of claims, each with an integer ``number``
    (unique), a ``verdict`` among :data:`VERDICTS`, a ``reason`` and a ``statement`` (strings),
    ``numbers`` (name to number), ``sources`` (names) and optionally ``figures`` (figure names)
    and how it was tested (:data:`TESTED_FIELDS`: absent in files written before they existed,
    which load with those fields missing). Missing file: :class:`FileNotFoundError`; anything
    malformed: :class:`ValueError`, one line naming the file and the claim."""
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
        for key, kinds in TESTED_FIELDS.items():
            if key in claim and (isinstance(claim[key], bool) or not isinstance(claim[key], kinds)):
                raise ValueError(f"{where}: {key!r} has the wrong type ({type(claim[key]).__name__})")
    return data


#: The fields that say how a claim was tested, with the types ``claims.json`` may hold.
TESTED_FIELDS: dict[str, tuple[type, ...]] = {
    "world": (str,), "profile": (str,), "test": (str,), "confidence": (int, float, type(None)),
    "margin": (int, float, type(None)), "n_seeds": (int,), "n_cells": (int,), "p_value": (int, float, type(None)),
    "needs": (list,),
}


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
