"""Hidden checks for the exercises of the tutorials (``tutorials/*.ipynb``).

Each notebook ends its exercises with a check cell::

    answer = None  # your answer
    ...
    print(tutorials.check("02.rare_token_clip", answer))

:func:`check` computes the expected answer **with the library** (the registry of
:mod:`drpo_sim.objectives`, the simulator, the replay), never from a number typed into this
module, compares it with the student's answer within a tolerance, and

* returns a one-line ``"correct: ..."`` message when it matches;
* raises ``AssertionError`` with a hint that points at the method, not at the number, when it
  does not (a few common slips, such as an inverted ratio, get a hint of their own);
* returns a "not attempted yet" message, without failing, when ``answer is None``, so that a
  notebook runs top to bottom as handed out.

The parameters of every exercise (the token's ``mu`` and ``pi``, the simulation's
configuration, ...) are in :data:`EXERCISES`; a notebook reads them with :func:`task`, so the
question a student answers and the one the check computes cannot drift apart.
"""

from __future__ import annotations

import copy
import functools
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy.optimize import brentq

from drpo_sim import analysis, objectives, offpolicy, sim, stats, tokens
from drpo_sim.config import PAPER_METHODS
from drpo_sim.envs.bandit import zipf_logits

__all__ = ["EXERCISES", "Exercise", "check", "exercises", "task"]


@dataclass(frozen=True)
class Exercise:
    """One exercise: its question, its parameters and how its answer is computed and compared.

    ``kind`` is ``"number"`` (one float), ``"pair"`` (two floats, in order) or ``"text"``
    (a string, compared case-insensitively after stripping). Numbers match when
    ``abs(answer - expected) <= atol + rtol * abs(expected)``. ``traps`` are ``(predicate,
    hint)`` pairs tried, in order, on a wrong answer: a predicate receives the parsed answer and
    the parameters and says whether the answer is that particular slip.
    """

    name: str
    notebook: str
    question: str
    params: dict[str, Any]
    solve: Callable[[dict[str, Any]], Any]
    hint: str
    kind: str = "number"
    rtol: float = 1e-3
    atol: float = 0.0
    traps: tuple[tuple[Callable[[Any, dict[str, Any]], bool], str], ...] = field(default_factory=tuple)

    def expected(self) -> Any:
        return self.solve(copy.deepcopy(self.params))


# ----------------------------------------------------------------------------------------------
# helpers: every expected answer is derived from the library


def _log(x: float) -> np.ndarray:
    return np.log(np.asarray(x, dtype=np.float64))


def _weight(name: str, params: dict, pi: float, mu: float, adv: float) -> float:
    """The registry's weight of one token."""
    return float(objectives.get(name, **params).weight(_log(pi), _log(mu), np.float64(adv)))


def _close(a: float, b: float, rtol: float, atol: float) -> bool:
    return bool(np.isfinite(a)) and abs(a - b) <= atol + rtol * abs(b)


def _boundary(keep: Callable[[float], bool], inside: float, outside: float, iters: int = 200) -> float:
    """The point between ``inside`` (where ``keep`` is true) and ``outside`` (where it is false)
    at which ``keep`` switches, by bisection (geometric when both ends are positive and far apart)."""
    if not keep(inside) or keep(outside):
        raise RuntimeError("boundary search: the end points do not bracket the switch")
    lo, hi = inside, outside
    for _ in range(iters):
        mid = math.sqrt(lo * hi) if lo > 0 and hi > 0 and max(lo, hi) / min(lo, hi) > 4 else 0.5 * (lo + hi)
        if mid in (lo, hi):
            break
        if keep(mid):
            lo = mid
        else:
            hi = mid
    return lo


# -- 01: policy gradient and importance sampling -----------------------------------------------


def _solve_is_gradient(p: dict) -> float:
    obj = objectives.get("pg_is")
    return float(obj.grad_logp(_log(p["pi"]), _log(p["mu"]), np.float64(p["advantage"])))


def _engine_and_trainer(p: dict) -> tuple[np.ndarray, np.ndarray]:
    """``(log mu, log pi)`` of the exercise: a Zipf trainer and a noisy engine (drpo_sim.offpolicy)."""

    z = zipf_logits(p["vocab_size"], p["zipf_exponent"])[None, :]
    logpi = offpolicy.trainer_logp(z, offpolicy.OffPolicyConfig())
    noise = np.random.default_rng(p["noise_seed"]).standard_normal(z.shape)
    logmu = offpolicy.engine_logp(z, offpolicy.OffPolicyConfig(noise_std=p["noise_std"]), noise)
    return logmu[0], logpi[0]


def _solve_ratio_variance(p: dict) -> float:
    logmu, logpi = _engine_and_trainer(p)
    mu, r = np.exp(logmu), np.exp(logpi - logmu)
    mean = float(np.sum(mu * r))
    return float(np.sum(mu * r**2) - mean**2)


# -- 02: PPO / GRPO --------------------------------------------------------------------------


def _solve_rare_token_clip(p: dict) -> float:
    """The largest ``pi - mu`` with a nonzero weight, searched on the registry's weight."""
    mu = p["mu"]

    def keep(pi: float) -> bool:
        return _weight(p["objective"], {}, pi, mu, p["advantage"]) != 0.0

    return _boundary(keep, mu, 1.0 - 1e-12) - mu


def _solve_token_weight(p: dict) -> float:
    return _weight(p["objective"], p.get("objective_params", {}), p["pi"], p["mu"], p["advantage"])


# -- 03: DPPO --------------------------------------------------------------------------------


def _solve_tv_boundary(p: dict) -> float:
    """The lowest ``pi`` a token with ``A < 0`` reaches before DPPO-TV's mask, from the weight."""
    mu, params = p["mu"], {"delta": p["delta"]}

    def keep(pi: float) -> bool:
        return _weight("dppo_tv", params, pi, mu, p["advantage"]) != 0.0

    return _boundary(keep, mu, 1e-12)


def _solve_kl_boundary(p: dict) -> float:
    """The ``pi`` above ``mu`` where ``binary_kl(mu, pi)`` reaches ``delta`` (DPPO-KL's mask)."""

    mu = p["mu"]

    def f(pi: float) -> float:
        return float(objectives.binary_kl(_log(mu), _log(pi))) - p["delta"]

    pi = brentq(f, mu, 1.0 - 1e-12, xtol=1e-15, rtol=1e-13)
    # the registry's mask switches there too
    assert _weight("dppo_kl", {"delta": p["delta"]}, pi * (1 - 1e-6), mu, p["advantage"]) == 1.0
    assert _weight("dppo_kl", {"delta": p["delta"]}, pi * (1 + 1e-6), mu, p["advantage"]) == 0.0
    return pi


# -- 04: SPO and DRPO ------------------------------------------------------------------------


def _solve_drpo_bounds(p: dict) -> tuple[float, float]:
    """DRPO's weight at the extreme shifts ``abs(pi - mu) -> 1`` (``mu -> 0, pi = 1``), both signs."""
    params = {"delta": p["delta"]}
    tiny = 1e-300  # the registry floors mu at pi * exp(-20) (its ratio cap): still a shift of 1 - 2e-9
    w_plus = _weight("drpo", params, 1.0, tiny, 1.0)
    w_minus = _weight("drpo", params, 1.0, tiny, -1.0)
    return (min(w_plus, w_minus), max(w_plus, w_minus))


# -- 05: the bandit under noise and staleness -------------------------------------------------


@functools.lru_cache(maxsize=4)
def _bandit_runs(key: str):
    """The simulation of an exercise of notebook 05 (cached for the kernel's life)."""

    p = _SETTINGS[key]
    cfg = sim.SimConfig.from_flat(p["config"])
    return sim.simulate(cfg, p["methods"], p["seeds"], method_params=p["method_params"])


def _solve_collapse_step(p: dict) -> float:
    df = _bandit_runs(p["_key"])
    d = df[(df["method"] == p["method"]) & df["collapsed"]]
    first = d.groupby("seed")["step"].min()
    if first.empty:
        raise RuntimeError(f"no seed of {p['method']} collapses in this setting")
    return float(np.median(first.to_numpy()))


def _solve_best_method(p: dict) -> str:
    s = stats.summarize_runs(_bandit_runs(p["_key"]), n_resamples=200)
    return str(s.loc[s["final_iqm"].idxmax(), "method"])


# -- 06: replaying a token log --------------------------------------------------------------


@functools.lru_cache(maxsize=2)
def _replayed_log(key: str):
    """Rebuild notebook 06's token log in memory (the same simulation) and replay it."""

    p = _SETTINGS[key]
    batches = []
    sim.simulate(
        sim.SimConfig.from_flat(p["config"]), p["methods"], p["seeds"], token_sink_for=lambda m: batches.append
    )
    # one batch: the replay's cost is per batch as much as per token
    return analysis.replay([tokens.concat(batches)])


def _solve_rare_share(p: dict) -> float:
    return float(_replayed_log(p["_key"]).totals["rare_share"])


def _solve_rare_masked(p: dict) -> float:
    t = _replayed_log(p["_key"]).objectives.set_index("objective")
    return float(t.loc[p["objective"], "rare_masked_frac"])


# ----------------------------------------------------------------------------------------------
# the exercises

_BANDIT_05 = {
    "config": {"env": "bandit", "vocab_size": 256, "steps": 100, "group_size": 16, "updates_per_batch": 4,
               "noise_std": 1.0, "staleness": 16, "lr": 0.05},
    "methods": list(PAPER_METHODS),
    "method_params": {"spo": {"eps": 0.2}, "drpo": {"delta": 0.15}},
    "seeds": list(range(8)),
}

_LOG_06 = {
    "config": {"env": "tabular", "vocab_size": 256, "n_prompts": 8, "horizon": 4, "group_size": 8,
               "noise_std": 0.1, "precision": "fp8_e4m3", "staleness": 8, "updates_per_batch": 4, "steps": 30},
    "methods": ["grpo"],
    "seeds": [0, 1],
}

# the settings several exercises share (their simulations are cached under these keys)
_SETTINGS = {"05": _BANDIT_05, "06": _LOG_06}


def _near(value_of: Callable[[dict], float], rtol: float = 1e-3) -> Callable[[Any, dict], bool]:
    def pred(answer: Any, p: dict) -> bool:
        return isinstance(answer, float) and _close(answer, value_of(p), rtol, 1e-12)

    return pred


_LIST = [
    Exercise(
        name="01.is_gradient",
        notebook="01_policy_gradient_and_importance_sampling",
        question="dJ/dlogp of the importance-sampled policy gradient (pg_is) for one sampled token",
        params={"mu": 0.002, "pi": 0.005, "advantage": 1.0},
        solve=_solve_is_gradient,
        hint="dJ/dlogp = A * r * w, with w = 1 for pg_is and r = pi / mu "
             "(objectives.get('pg_is').grad_logp computes it)",
        rtol=1e-6,
        traps=(
            (
                _near(lambda p: p["advantage"] * p["mu"] / p["pi"]),
                "the ratio is pi / mu (trainer over behaviour), not mu / pi",
            ),
            (
                _near(lambda p: p["advantage"]),
                "on-policy the gradient weight would be A; off-policy the sample carries the ratio r = pi / mu",
            ),
        ),
    ),
    Exercise(
        name="01.ratio_variance",
        notebook="01_policy_gradient_and_importance_sampling",
        question="Var_{a ~ mu}[r(a)] of the exercise's Zipf trainer and noisy engine, exactly, by enumeration",
        params={"vocab_size": 64, "zipf_exponent": 1.1, "noise_std": 0.3, "noise_seed": 0},
        solve=_solve_ratio_variance,
        hint="enumerate the vocabulary: E_mu[f] = sum_a mu(a) f(a); the variance is E_mu[r^2] - (E_mu[r])^2, and "
             "E_mu[r] = 1",
        rtol=1e-4,
        traps=(
            (
                _near(lambda p: _solve_ratio_variance(p) + 1.0, 1e-4),
                "that is the second moment E_mu[r^2]; subtract (E_mu[r])^2 = 1",
            ),
        ),
    ),
    Exercise(
        name="02.rare_token_clip",
        notebook="02_ppo_grpo_ratio_clipping",
        question="the largest upward shift pi - mu a rare token (mu = 0.001, A > 0) can make before GRPO's weight "
                 "drops to 0",
        params={"objective": "grpo", "mu": 0.001, "advantage": 1.0},
        solve=_solve_rare_token_clip,
        hint="GRPO clips the ratio r = pi / mu at 1 + eps_high for A > 0; turn that ratio bound into a bound on pi, "
             "then subtract mu "
        "(or search pi where objectives.get('grpo').weight turns 0)",
        traps=(
            (
                _near(lambda p: objectives.get(p["objective"]).eps_high),
                "that is the margin on the ratio r; the question asks for a probability shift pi - mu",
            ),
            (
                _near(lambda p: p["mu"] + _solve_rare_token_clip(p)),
                "that is the largest pi; the question asks for the shift pi - mu",
            ),
        ),
    ),
    Exercise(
        name="02.frequent_token",
        notebook="02_ppo_grpo_ratio_clipping",
        question="GRPO's weight w for a frequent token pushed from mu = 0.99 down to pi = 0.80 with A < 0",
        params={"objective": "grpo", "mu": 0.99, "pi": 0.80, "advantage": -1.0},
        solve=_solve_token_weight,
        hint="for A < 0 the clip is active only when r = pi / mu < 1 - eps_low; compute r for this token (or call "
             "the weight)",
        atol=1e-9,
    ),
    Exercise(
        name="03.tv_boundary",
        notebook="03_dppo_divergence_trust_region",
        question="the lowest pi a frequent token (mu = 0.99, A < 0) can be pushed to before DPPO-TV (delta = 0.15) "
                 "masks it",
        params={"mu": 0.99, "delta": 0.15, "advantage": -1.0},
        solve=_solve_tv_boundary,
        hint="DPPO-TV masks a token with A < 0 once its shift pi - mu falls below -delta_low: a bound on the "
             "absolute shift, not on the ratio",
        traps=(
            (
                _near(lambda p: p["mu"] * (1 - objectives.get("grpo").eps_low)),
                "that is where GRPO's ratio clip would act (r = 1 - eps_low); DPPO-TV bounds pi - mu",
            ),
        ),
    ),
    Exercise(
        name="03.kl_boundary_rare",
        notebook="03_dppo_divergence_trust_region",
        question="the largest pi a rare token (mu = 0.001, A > 0) can reach before DPPO-KL (delta = 0.05) masks it",
        params={"mu": 0.001, "delta": 0.05, "advantage": 1.0},
        solve=_solve_kl_boundary,
        hint="DPPO-KL masks a token with A > 0 once pi > mu and the binary KL D(mu, pi) exceeds delta: solve "
        "objectives.binary_kl(log mu, log pi) = delta for pi > mu (scipy.optimize.brentq, or bisection on the weight)",
        rtol=1e-3,
        traps=(
            (
                _near(lambda p: p["mu"] + 0.15),
                "that is DPPO-TV's boundary mu + delta_high; DPPO-KL bounds the binary KL divergence",
            ),
            (
                _near(lambda p: p["mu"] * (1 + objectives.get("grpo").eps_high)),
                "that is GRPO's ratio clip; DPPO-KL bounds the binary KL divergence",
            ),
        ),
    ),
    Exercise(
        name="04.drpo_bounds",
        notebook="04_spo_drpo_bounded_weights",
        question="the smallest and largest weight DRPO gives any token at delta = 12.5, as a pair (low, high)",
        params={"delta": 12.5},
        solve=_solve_drpo_bounds,
        hint="evaluate objectives.get('drpo', delta=12.5).weight over a dense (mu, pi) grid, for A > 0 and A < 0; "
        "the extremes sit where abs(pi - mu) is largest",
        kind="pair",
        rtol=0.0,
        atol=1e-3,
        traps=(
            (
                lambda a, p: isinstance(a, tuple) and _close(a[0], _solve_drpo_bounds(p)[1], 0, 1e-3),
                "give the pair in order: (low, high)",
            ),
        ),
    ),
    Exercise(
        name="04.spo_rare_weight",
        notebook="04_spo_drpo_bounded_weights",
        question="SPO's weight (eps = 0.2) for a rare token with A > 0 pushed from mu = 0.001 to pi = 0.003",
        params={"objective": "spo", "objective_params": {"eps": 0.2}, "mu": 0.001, "pi": 0.003, "advantage": 1.0},
        solve=_solve_token_weight,
        hint="SPO's weight is 1 - sign(A) (r - 1) / eps with r = pi / mu: it is written in the ratio, not in the "
             "shift pi - mu",
        rtol=1e-6,
        traps=(
            (
                _near(
                    lambda p: _weight(
                        "drpo", {"delta": p["objective_params"]["eps"]}, p["pi"], p["mu"], p["advantage"]
                    ),
                    1e-6,
                ),
                "that is DRPO's weight (written in the shift pi - mu); SPO's is written in the ratio r = pi / mu",
            ),
        ),
    ),
    Exercise(
        name="05.collapse_step",
        notebook="05_noise_staleness_convergence",
        question="the median, over SPO's collapsed seeds, of the first step at which a seed counts as collapsed",
        params={**_BANDIT_05, "method": "spo", "_key": "05"},
        solve=_solve_collapse_step,
        hint="in the result table, keep SPO's rows with collapsed == True, take the smallest step of each seed, then "
             "the median over seeds",
        rtol=0.0,
        atol=0.5,
    ),
    Exercise(
        name="05.best_method",
        notebook="05_noise_staleness_convergence",
        question="the method with the highest IQM of final expected reward (stats.summarize_runs) in the noisy, "
                 "stale setting",
        params={**_BANDIT_05, "_key": "05"},
        solve=_solve_best_method,
        hint="stats.summarize_runs(df) gives one row per method; compare the final_iqm column (a method name as a "
             "string)",
        kind="text",
    ),
    Exercise(
        name="06.rare_share",
        notebook="06_reading_a_token_log",
        question="the share of the log's tokens that are rare (mu <= 0.01)",
        params={"log": _LOG_06, "_key": "06"},
        solve=_solve_rare_share,
        hint="the replay reports it: replay.json (or result.totals) has rare_share; or count mu = exp(logp_behavior) "
             "<= 0.01 over the masked-in tokens",
        rtol=1e-6,
    ),
    Exercise(
        name="06.grpo_rare_masked",
        notebook="06_reading_a_token_log",
        question="the fraction of rare tokens (mu <= 0.01) whose gradient GRPO masks (w = 0) in the log",
        params={"log": _LOG_06, "objective": "grpo", "_key": "06"},
        solve=_solve_rare_masked,
        hint="objectives.csv has one row per objective, with the rare tokens' statistics in the columns starting rare_",
        rtol=1e-6,
        atol=1e-12,
        traps=(
            (
                lambda a, p: (
                    isinstance(a, float)
                    and _close(
                        a,
                        float(
                            _replayed_log(p["_key"])
                            .objectives.set_index("objective")
                            .loc[p["objective"], "masked_frac"]
                        ),
                        1e-6,
                        1e-12,
                    )
                ),
                "that is GRPO's masked fraction over all tokens; the question asks about the rare ones",
            ),
        ),
    ),
]

EXERCISES: dict[str, Exercise] = {e.name: e for e in _LIST}
"""Every exercise, by name (``"NN.short_name"``, NN the notebook's number)."""


def exercises(notebook: str | None = None) -> list[str]:
    """Names of the exercises, all or those of one notebook (its file stem or its number ``"02"``)."""
    return [
        n for n, e in EXERCISES.items() if notebook is None or e.notebook == notebook or n.split(".")[0] == notebook
    ]


def _get(exercise: str) -> Exercise:
    if exercise not in EXERCISES:
        raise KeyError(f"unknown exercise {exercise!r}; known: {', '.join(EXERCISES)}")
    return EXERCISES[exercise]


def task(exercise: str) -> dict[str, Any]:
    """The parameters of an exercise (a copy: changing it does not change the check)."""
    return {k: v for k, v in copy.deepcopy(_get(exercise).params).items() if not k.startswith("_")}


# ----------------------------------------------------------------------------------------------
# parsing and comparing answers


def _as_float(x: Any, what: str = "the answer") -> float:
    if isinstance(x, (bool, np.bool_)):
        raise AssertionError(f"{what} should be a number, got {x!r}")  # noqa: TRY004 (a wrong answer, not a bug)
    if hasattr(x, "detach"):  # a torch tensor
        x = x.detach().cpu().numpy()
    a = np.asarray(x)
    if a.size != 1 or not (np.issubdtype(a.dtype, np.number)):
        raise AssertionError(f"{what} should be one number, got {type(x).__name__} {np.shape(a)}")
    return float(a.reshape(()))


def _parse(ex: Exercise, answer: Any) -> Any:
    if ex.kind == "text":
        if not isinstance(answer, str):
            raise AssertionError(
                f"{ex.name}: the answer should be a string (a method name), got {type(answer).__name__}"
            )
        return answer.strip().lower()
    if ex.kind == "pair":
        try:
            parts = list(answer)
        except TypeError:
            raise AssertionError(
                f"{ex.name}: the answer should be a pair (low, high), got {type(answer).__name__}"
            ) from None
        if len(parts) != 2:
            raise AssertionError(f"{ex.name}: the answer should be a pair (low, high), got {len(parts)} values")
        return tuple(_as_float(v, "each value of the pair") for v in parts)
    return _as_float(answer)


def _matches(ex: Exercise, got: Any, want: Any) -> bool:
    if ex.kind == "text":
        return got == str(want).strip().lower()
    if ex.kind == "pair":
        return all(_close(g, w, ex.rtol, ex.atol) for g, w in zip(got, want))
    return _close(got, want, ex.rtol, ex.atol)


def _show(ex: Exercise, value: Any) -> str:
    if ex.kind == "text":
        return str(value)
    if ex.kind == "pair":
        return "(" + ", ".join(f"{v:.6g}" for v in value) + ")"
    return f"{value:.6g}"


def check(exercise: str, answer: Any) -> str:
    """Check an answer; see the module docstring.

    Returns ``"correct: ..."`` or a "not attempted yet" message (``answer is None``); raises
    ``AssertionError`` with a hint for a wrong answer and ``KeyError`` for an unknown exercise.
    """
    ex = _get(exercise)
    if answer is None:
        return f"{ex.name}: not attempted yet: set `answer` in the cell above and run both cells again"
    got = _parse(ex, answer)
    want = ex.expected()
    if _matches(ex, got, want):
        return f"correct: {ex.question} is {_show(ex, want)}"
    params = ex.params
    for pred, trap_hint in ex.traps:
        try:
            hit = pred(got, params)
        except (TypeError, ValueError, IndexError, KeyError):  # a trap that does not apply to this kind of answer
            hit = False
        if hit:
            raise AssertionError(f"{ex.name}: not yet. Looks like a slip: {trap_hint}.")
    raise AssertionError(f"{ex.name}: not yet ({_show(ex, got)} does not match). Hint: {ex.hint}.")
