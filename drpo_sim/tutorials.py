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
import dataclasses
import functools
import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy.optimize import brentq

from drpo_sim import analysis, objectives, offpolicy, sim, stats, summaries, tokens
from drpo_sim.config import PAPER_METHODS
from drpo_sim.envs.bandit import zipf_logits
from drpo_sim.envs.formats import FormatWorld
from drpo_sim.stats import compare

__all__ = ["EXERCISES", "SUSPECTS", "Exercise", "bug_batch", "check", "engine_logp", "exercises", "figures_dir",
           "simulate", "task", "trainer_logp"]


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


def _solve_cispo_gradient(p: dict) -> tuple[float, float]:
    """CISPO's ``dJ/dlogp`` of the exercise's two tokens, from the registry; GRPO masks both."""
    logp, logmu, adv = _log(p["pi"]), _log(p["mu"]), np.asarray(p["advantage"], dtype=np.float64)
    # the tokens are the ones GRPO masks: that is what the exercise is about
    assert np.all(objectives.get("grpo").weight(logp, logmu, adv) == 0.0)
    g = objectives.get(p["objective"]).grad_logp(logp, logmu, adv)
    return (float(g[0]), float(g[1]))


def _cispo_weights(p: dict) -> tuple[float, float]:
    w = objectives.get(p["objective"]).weight(_log(p["pi"]), _log(p["mu"]), np.asarray(p["advantage"], dtype=float))
    return (float(w[0]), float(w[1]))


def _pg_is_gradients(p: dict) -> tuple[float, float]:
    g = objectives.get("pg_is").grad_logp(_log(p["pi"]), _log(p["mu"]), np.asarray(p["advantage"], dtype=float))
    return (float(g[0]), float(g[1]))


def _near_pair(value_of: Callable[[dict], tuple[float, float]], atol: float = 1e-6) -> Callable[[Any, dict], bool]:
    def pred(answer: Any, p: dict) -> bool:
        return isinstance(answer, tuple) and all(_close(a, b, 1e-6, atol) for a, b in zip(answer, value_of(p)))

    return pred


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


def _largest_gain(name: str, params: dict, mu: float, adv: float) -> float:
    """The largest gain ``pi - mu`` (``pi <= 1``) of a token with ``A > 0`` before the registry's weight turns 0."""

    def keep(pi: float) -> bool:
        return _weight(name, params, pi, mu, adv) != 0.0

    return (1.0 if keep(1.0) else _boundary(keep, mu, 1.0)) - mu


def _grpo_minus_tv_gain(p: dict, mu: float) -> float:
    return (_largest_gain("grpo", {"eps_high": p["eps_high"]}, mu, p["advantage"])
            - _largest_gain("dppo_tv", {"delta": p["delta"]}, mu, p["advantage"]))


def _solve_grpo_wider(p: dict) -> float:
    """The smallest ``mu`` at which GRPO's largest gain reaches DPPO-TV's: the first sign change of their
    difference on a grid of ``mu``, refined by brentq. Above it GRPO's gain is never smaller (near ``mu = 1``
    both are capped at ``1 - mu`` and equal); at the crossing neither is capped."""
    grid = np.linspace(0.01, 0.99, 99)
    gap = np.array([_grpo_minus_tv_gain(p, m) for m in grid])
    i = int(np.argmax(gap >= 0.0))
    assert 0 < i and np.all(gap[i:] >= -1e-12), "GRPO's gain should overtake DPPO-TV's once, and stay at least as large"
    mu = brentq(lambda m: _grpo_minus_tv_gain(p, m), grid[i - 1], grid[i], xtol=1e-14, rtol=1e-13)
    assert _largest_gain("dppo_tv", {"delta": p["delta"]}, mu, p["advantage"]) < 1.0 - mu  # not the cap pi <= 1
    return float(mu)


# -- 04: SPO and DRPO ------------------------------------------------------------------------


def _solve_drpo_bounds(p: dict) -> tuple[float, float]:
    """DRPO's weight at the extreme shifts ``abs(pi - mu) -> 1`` (``mu -> 0, pi = 1``), both signs."""
    params = {"delta": p["delta"]}
    tiny = 1e-300  # the registry floors mu at pi * exp(-20) (its ratio cap): still a shift of 1 - 2e-9
    w_plus = _weight("drpo", params, 1.0, tiny, 1.0)
    w_minus = _weight("drpo", params, 1.0, tiny, -1.0)
    return (min(w_plus, w_minus), max(w_plus, w_minus))


def _token_inputs(p: dict) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(logp, logp_behavior, advantage)`` of the exercise's tokens."""
    return tuple(np.asarray(p[k], dtype=np.float64) for k in ("logp", "logp_behavior", "advantage"))


def _reported(p: dict, g: np.ndarray) -> tuple[float, float]:
    return (float(g[p["report"][0]]), float(g[p["report"][1]]))


def _solve_drpo_surrogate_torch(p: dict) -> tuple[float, float]:
    """DRPO's ``dJ/dlogp`` of the two reported tokens, from the registry (one of them is corrective)."""
    lp, lpb, a = _token_inputs(p)
    drpo = objectives.get("drpo", delta=p["delta"])
    assert np.any(drpo.weight(lp, lpb, a) < 0.0), "the exercise needs a token in DRPO's corrective region"
    return _reported(p, drpo.grad_logp(lp, lpb, a))


def _drpo_surrogate_slip(p: dict, slip: str) -> tuple[float, float]:
    """The gradient a common slip in writing DRPO's surrogate gives (``J = r A - abs(A) mu (r-1)^2 / (2 delta)``)."""
    lp, lpb, a = _token_inputs(p)
    delta = p["delta"]
    mu, pi = np.exp(lpb), np.exp(lp)
    r = pi / mu
    g = {
        "loss": lambda: -objectives.get("drpo", delta=delta).grad_logp(lp, lpb, a),  # backpropagated -J
        "no_mu": lambda: objectives.get("spo", eps=delta).grad_logp(lp, lpb, a),     # abs(A) (r-1)^2 / (2 delta)
        "signed_adv": lambda: a * r - a * (pi - mu) * r / delta,                      # A, not abs(A), on the penalty
        "l2": lambda: a * r - np.abs(a) * (pi - mu) * pi / delta,                     # abs(A) (pi - mu)^2 / (2 delta)
        "no_penalty_grad": lambda: objectives.get("pg_is").grad_logp(lp, lpb, a),    # the penalty detached
        "weight": lambda: objectives.get("drpo", delta=delta).weight(lp, lpb, a),
    }[slip]()
    return _reported(p, np.asarray(g))


# -- 05: the bandit under noise and staleness, a 2 x 2 design --------------------------------


def figures_dir() -> Path:
    """The repository's committed ``figures/`` directory (the results of ``make reproduce`` that
    are under version control), found beside the package, so a notebook reads it from any
    working directory."""
    path = Path(__file__).resolve().parents[1] / "figures"
    if not (path / "MANIFEST.json").is_file():
        raise FileNotFoundError(f"no committed figures/ directory at {path}: the notebooks read the results of a "
                                "clone of the repository (an installed wheel does not carry them)")
    return path



@functools.lru_cache(maxsize=16)
def _simulate_cached(key: str) -> pd.DataFrame:
    config, methods, seeds, method_params = json.loads(key)
    return sim.simulate(sim.SimConfig.from_flat(config), methods, seeds, method_params=method_params)


def simulate(config: dict[str, Any], methods: list[str], seeds: list[int],
             method_params: dict[str, dict[str, Any]] | None = None) -> pd.DataFrame:
    """:func:`drpo_sim.sim.simulate` of the flat ``config`` (:meth:`drpo_sim.sim.SimConfig.from_flat`),
    remembered for the kernel's life: a notebook's runs and the checks of its exercises that ask
    about the same runs share one simulation. Returns a copy, so changing it changes nothing here."""
    key = json.dumps([config, list(methods), [int(s) for s in seeds], method_params or {}], sort_keys=True)
    return _simulate_cached(key).copy()


def _design_runs(p: dict) -> pd.DataFrame:
    """Every cell of notebook 05's design, one table with a ``cell`` column (as the notebook builds it)."""
    return pd.concat([simulate({**p["base"], **cell}, p["methods"], p["seeds"], p["method_params"]).assign(cell=name)
                      for name, cell in p["cells"].items()], ignore_index=True)


def _design_outcomes(p: dict) -> pd.DataFrame:
    """One row per method, cell and seed: :func:`drpo_sim.summaries.seed_table` under the design's
    collapse rule (with its ``min_peak``), and ``never_learned``: the peak stayed below ``min_peak``."""
    rule = stats.CollapseRule(**p["collapse"])
    runs = _design_runs(p).drop(columns="collapsed")  # the simulator's own flags use min_peak = 0
    out = summaries.seed_table(runs, ["method", "cell"], rule=rule)
    return out.assign(never_learned=out["peak"] < rule.min_peak)


def _solve_lowest_cell(p: dict) -> str:
    out = _design_outcomes(p)
    means = out[out["method"] == p["method"]].groupby("cell")["final"].mean()
    return str(means.idxmin())


def _spo_outcome_counts(p: dict, rule: dict) -> tuple[float, float]:
    out = _design_outcomes({**p, "collapse": rule})
    d = out[out["method"] == p["method"]]
    return (float(d["collapsed"].sum()), float(d["never_learned"].sum()))


def _solve_collapsed_or_never(p: dict) -> tuple[float, float]:
    return _spo_outcome_counts(p, p["collapse"])


def _tost_by_cell(p: dict) -> pd.DataFrame:
    """Per cell: TOST of ``x - y`` on the shared seeds' final rewards, and its Holm-adjusted p-value."""
    out = _design_outcomes(p)
    rows = []
    for cell in p["cells"]:
        d = out[out["cell"] == cell]
        x = d[d["method"] == p["x"]].set_index("seed")["final"]
        y = d[d["method"] == p["y"]].set_index("seed")["final"].loc[x.index]
        rows.append({"cell": cell, "p": compare.equivalence_test(x, y, margin=p["margin"], alpha=p["alpha"]).p_value})
    table = pd.DataFrame(rows)
    return table.assign(p_holm=compare.holm(table["p"].to_numpy()))


def _solve_equivalent_cells(p: dict) -> float:
    return float((_tost_by_cell(p)["p_holm"] < p["alpha"]).sum())


def _equivalent_cells_unadjusted(p: dict) -> float:
    return float((_tost_by_cell(p)["p"] < p["alpha"]).sum())


# -- 06: replaying a token log --------------------------------------------------------------


@functools.lru_cache(maxsize=2)
def _log_tokens(key: str) -> tokens.TokenBatch:
    """Notebook 06's token log, rebuilt in memory (the same simulation), as one batch."""

    p = _SETTINGS[key]
    batches = []
    sim.simulate(
        sim.SimConfig.from_flat(p["config"]), p["methods"], p["seeds"], token_sink_for=lambda m: batches.append
    )
    return tokens.concat(batches)


@functools.lru_cache(maxsize=2)
def _replayed_log(key: str):
    """Notebook 06's token log (:func:`_log_tokens`), replayed."""
    # one batch: the replay's cost is per batch as much as per token
    return analysis.replay([_log_tokens(key)])


def _solve_rare_share(p: dict) -> float:
    return float(_replayed_log(p["_key"]).totals["rare_share"])


def _solve_rare_masked(p: dict) -> float:
    t = _replayed_log(p["_key"]).objectives.set_index("objective")
    return float(t.loc[p["objective"], "rare_masked_frac"])


def _kept_tokens(p: dict) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(logp, logp_behavior, advantage)`` of the log's tokens in the loss (``mask``) whose advantage has the
    exercise's sign, as the replay reads them."""
    b = _log_tokens(p["_key"])
    keep = b.mask & (np.sign(b.advantage) == p["advantage_sign"])
    return b.logp[keep], b.logp_behavior[keep], b.advantage[keep]


def _solve_largest_corrective_delta(p: dict) -> float:
    """The supremum of the ``delta`` at which DRPO's weight is negative for some of the tokens: the largest
    ``sign(A) (pi - mu)``, read off the registry's weight at ``delta = 1`` (``w = 1 - sign(A) (pi - mu)``), and
    checked on either side with the weight at that ``delta``."""
    lp, lpb, a = _kept_tokens(p)
    delta = float(np.max(1.0 - objectives.get("drpo", delta=1.0).weight(lp, lpb, a)))
    assert delta > 0.0
    assert np.any(objectives.get("drpo", delta=delta * (1 - 1e-9)).weight(lp, lpb, a) < 0.0)
    assert not np.any(objectives.get("drpo", delta=delta * (1 + 1e-9)).weight(lp, lpb, a) < 0.0)
    return delta


def _largest_abs_shift(p: dict) -> float:
    """The largest ``abs(pi - mu)`` of the same tokens, in either direction."""
    lp, lpb, _ = _kept_tokens(p)
    return float(np.max(np.abs(np.exp(lp) - np.exp(lpb))))


# -- 07: three policies and sequence ratios -------------------------------------------------


def _three_policy_weight(name: str, params: dict, pi, pi_old, mu, adv) -> np.ndarray:
    """The registry's weight of tokens given ``pi``, ``pi_old`` and ``mu`` (``correction`` among ``params``)."""
    lp, lpo, lpb = _log(pi), _log(pi_old), _log(mu)
    return np.asarray(objectives.get(name, **params).weight(lp, lpb, np.asarray(adv, dtype=np.float64), logp_old=lpo))


def _solve_decoupled_weight(p: dict) -> tuple[float, float]:
    w = _three_policy_weight(p["objective"], p["objective_params"], p["pi"], p["pi_old"], p["mu"], p["advantage"])
    return (float(w[0]), float(w[1]))


def _rollout_clip_weights(p: dict) -> tuple[float, float]:
    """PPO's clip (decoupled PPO's epsilons) on ``r = pi / mu``: the rollout anchor's weights."""
    eps = {k: p["objective_params"][k] for k in ("eps_low", "eps_high")}
    w = _three_policy_weight("ppo", eps, p["pi"], p["pi_old"], p["mu"], p["advantage"])
    return (float(w[0]), float(w[1]))


def _decoupled_factor_only(p: dict) -> tuple[float, float]:
    """``M c`` with ``c = min(b, cap)`` not divided by ``b``: decoupled PPO's gradient over ``A rho``."""
    w = _solve_decoupled_weight(p)
    b = np.asarray(p["pi_old"]) / np.asarray(p["mu"])
    return (float(w[0] * b[0]), float(w[1] * b[1]))


def _decoupled_uncapped(p: dict) -> tuple[float, float]:
    params = {k: v for k, v in p["objective_params"].items() if k != "is_cap"}
    w = _three_policy_weight(p["objective"], params, p["pi"], p["pi_old"], p["mu"], p["advantage"])
    return (float(w[0]), float(w[1]))


def _anchor_agreement(p: dict, rho: float) -> tuple[float, float]:
    """The interval of gaps ``b`` over which the rollout-anchored objective and its corrected version give a token
    at ``pi = rho pi_old`` the same weight, both ends by bisection on the registry's weights."""
    pi_old = p["pi_old"]

    def agree(b: float) -> bool:
        mu = pi_old / b
        w_rollout = _weight(p["objective"], {}, rho * pi_old, mu, p["advantage"])
        w_recompute = _three_policy_weight(p["objective"], {"correction": p["correction"], "cap": p["cap"]},
                                           rho * pi_old, pi_old, mu, p["advantage"])
        return abs(w_rollout - float(w_recompute)) <= 1e-12

    # b = pi_old / mu >= pi_old (mu <= 1)
    return (_boundary(agree, 1.0, pi_old * (1 + 1e-6)), _boundary(agree, 1.0, 1e3))


def _solve_anchor_agreement(p: dict) -> tuple[float, float]:
    return _anchor_agreement(p, p["rho"])


def _solve_product_variance(p: dict) -> float:
    """``Var_mu[prod_t r_t]`` over ``length`` independent tokens: ``E_mu[r^2]^T - 1`` (``E_mu[prod r] = 1``),
    with ``E_mu[r^2]`` by enumeration of the exercise's engine and trainer."""
    logmu, logpi = _engine_and_trainer(p)
    second_moment = float(np.sum(np.exp(logmu) * np.exp(logpi - logmu) ** 2))
    return float(np.expm1(p["length"] * np.log(second_moment)))


def _product_variance_terms(p: dict) -> tuple[float, float]:
    """``(E_mu[r^2], Var_mu[log r])`` of one token of the exercise."""
    logmu, logpi = _engine_and_trainer(p)
    mu, log_r = np.exp(logmu), logpi - logmu
    return float(np.sum(mu * np.exp(log_r) ** 2)), float(np.sum(mu * log_r**2) - np.sum(mu * log_r) ** 2)


# -- 08: loss aggregation and length bias ----------------------------------------------------


def _format_world(p: dict, **changes: Any) -> FormatWorld:
    return FormatWorld(**{**p["world"], **changes})


def _first_step_gradient(p: dict, **changes: Any) -> np.ndarray:
    world = _format_world(p, **changes)
    return world.expected_gradient(np.zeros(world.k), p["mode"])


def _solve_longest_favoured(p: dict) -> float:
    """The longest length of the careful format at which the exact expected gradient of the first step
    (``theta = 0``) under ``mode`` still raises it at least as much as the short format, by scanning
    every length the horizon allows."""
    lengths = list(p["world"]["lengths"])
    short, careful = p["short"], p["careful"]
    best = 0
    for n in range(1, p["world"]["horizon"] + 1):
        lengths[careful] = n
        g = _first_step_gradient(p, lengths=tuple(lengths))
        if g[careful] >= g[short]:
            best = n
    return float(best)


def _longest_favoured_unbiased(p: dict) -> float:
    """The same scan under a constant normaliser (a slip: it never prefers the short format)."""
    return _solve_longest_favoured({**p, "mode": "seq-mean-token-sum-norm"})


def _torch():
    import torch  # the checks' only use of torch (08.silent_bug): imported when it runs

    return torch


def _bug_batch(p: dict) -> dict:
    """08.silent_bug's batch: trainer logits ``[B, T, V]`` (float64), sampled tokens, a mask of
    random lengths, one advantage per sequence. The engine is a float8 (e4m3) pass over the same
    logits: the first update after a weight sync, with a mismatch large enough to reach the clip."""
    torch = _torch()
    gen = torch.Generator().manual_seed(p["seed"])
    b, t, v = p["batch"], p["length"], p["vocab"]
    logits = p["logit_scale"] * torch.randn(b, t, v, generator=gen, dtype=torch.float64)
    tokens = torch.multinomial(torch.softmax(logits, -1).reshape(-1, v), 1, generator=gen).reshape(b, t)
    lengths = torch.randint(1, t + 1, (b,), generator=gen)
    mask = torch.arange(t)[None, :] < lengths[:, None]
    tokens = torch.where(mask, tokens, 0)  # padding holds token 0
    advantage = torch.randn(b, generator=gen, dtype=torch.float64)
    return {"logits": logits, "tokens": tokens, "mask": mask, "advantage": advantage}


def engine_logp(logits, tokens):
    """The engine's log-probs of ``tokens``: the same logits rounded to float8 (e4m3)."""
    torch = _torch()
    return torch.log_softmax(logits.to(torch.float8_e4m3fn).double(), -1).gather(-1, tokens[..., None])[..., 0]


def trainer_logp(logits, tokens):
    """The trainer's log-probs of ``tokens`` from its own (float64) logits."""
    torch = _torch()
    return torch.log_softmax(logits, -1).gather(-1, tokens[..., None])[..., 0]


# Five implementations of GRPO's loss (clip 0.2 / 0.28, token-mean) a learner might meet. Each takes
# the trainer's logits and the batch and computes its own log-probs, the engine's included.


def suspect_a(logits, batch):
    mu = engine_logp(logits, batch["tokens"])
    ratio = (trainer_logp(logits, batch["tokens"]) - mu).exp()
    adv = batch["advantage"][:, None]
    J = (ratio * adv).minimum(ratio.clamp(1 - 0.2, 1 + 0.28) * adv)
    m = batch["mask"].double()
    return -(J * m).sum() / m.sum()


def suspect_b(logits, batch):
    torch = _torch()
    with torch.no_grad():
        mu = engine_logp(logits, batch["tokens"])
    ratio = (trainer_logp(logits, batch["tokens"]) - mu).exp()
    adv = batch["advantage"][:, None]
    J = torch.minimum(ratio * adv, ratio.clamp(1 - 0.2, 1 + 0.28) * adv)
    m = batch["mask"].double()
    return -(J * m).sum() / m.sum()


def suspect_c(logits, batch):
    torch = _torch()
    with torch.no_grad():
        mu = engine_logp(logits, batch["tokens"])
    ratio = (trainer_logp(logits, batch["tokens"]) - mu).exp()
    adv = batch["advantage"][:, None]
    J = torch.minimum(ratio * adv, ratio.clamp(1 - 0.2, 1 + 0.28) * adv)
    return -J.mean()


def suspect_d(logits, batch):
    torch = _torch()
    mu = engine_logp(logits, batch["tokens"]).detach()
    ratio = (trainer_logp(logits, batch["tokens"]) - mu).exp()
    adv = batch["advantage"][:, None]
    clipped = ((adv > 0) & (ratio > 1 + 0.28)) | ((adv < 0) & (ratio < 1 - 0.2))
    J = torch.where(clipped, ratio.detach() * adv, ratio * adv)
    return -J[batch["mask"]].mean()


def suspect_e(logits, batch):
    torch = _torch()
    with torch.no_grad():
        mu = engine_logp(logits, batch["tokens"])
    ratio = (mu - trainer_logp(logits, batch["tokens"])).exp()
    adv = batch["advantage"][:, None]
    J = torch.minimum(ratio * adv, ratio.clamp(1 - 0.2, 1 + 0.28) * adv)
    m = batch["mask"].double()
    return -(J * m).sum() / m.sum()


SUSPECTS = {"a": suspect_a, "b": suspect_b, "c": suspect_c, "d": suspect_d, "e": suspect_e}
"""08.silent_bug's implementations, by letter."""


def _leaf_batch(p: dict) -> dict:
    """:func:`_bug_batch` with its logits a leaf tensor that requires a gradient."""
    batch = _bug_batch(p)
    batch["logits"].requires_grad_(True)
    return batch


def bug_batch(exercise: str = "08.silent_bug") -> dict:
    """A fresh copy of the exercise's batch (the logits are a leaf tensor that requires a gradient)."""
    return _leaf_batch(_get(exercise).params)


def _gradient(loss_fn: Callable, p: dict):
    batch = _leaf_batch(p)
    loss_fn(batch["logits"], batch).backward()
    return batch["logits"].grad


def _reference_gradient(p: dict):
    """The registry's GRPO loss (``objectives.policy_loss``, token-mean) on the batch, the engine's
    log-probs taken as data (no gradient), backpropagated into the logits."""
    torch = _torch()

    def loss(logits, batch):
        with torch.no_grad():
            mu = engine_logp(logits, batch["tokens"])
        value, _ = objectives.policy_loss(p["objective"], trainer_logp(logits, batch["tokens"]), mu,
                                          batch["advantage"], batch["mask"], agg_mode=p["agg_mode"], metrics=False)
        return value

    return _gradient(loss, p)


def _buggy_letters(p: dict) -> list[str]:
    torch = _torch()
    want = _reference_gradient(p)
    return [k for k, fn in SUSPECTS.items()
            if not torch.allclose(_gradient(fn, p), want, rtol=1e-9, atol=1e-12)]


def _solve_silent_bug(p: dict) -> str:
    return "".join(_buggy_letters(p))


def _is_letters_out_of_order(a: Any, p: dict) -> bool:
    return isinstance(a, str) and sorted(a.replace(" ", "").replace(",", "")) == _buggy_letters(p)


# ----------------------------------------------------------------------------------------------
# the exercises

# Notebook 05's experiment, declared before any of its runs. The setting is the one the notebook
# used before (a bandit of 256 tokens, 100 steps of 16 samples, each batch used for 4 mini-batch
# updates, Adam at lr 0.05, engine noise 1 and staleness 16 updates), taken apart channel by
# channel; each cell keeps the batch reuse, so every cell makes 400 optimiser steps.
_DESIGN_05 = {
    "base": {"env": "bandit", "vocab_size": 256, "steps": 100, "group_size": 16, "updates_per_batch": 4,
             "lr": 0.05},
    "cells": {
        "none": {"noise_std": 0.0, "staleness": 0},        # batch reuse only: mini-batches 2-4 lag by 1-3 updates
        "noise": {"noise_std": 1.0, "staleness": 0},       # + the engine's logit noise (fresh every step)
        "staleness": {"noise_std": 0.0, "staleness": 16},  # + rollouts from the parameters 16 updates ago
        "both": {"noise_std": 1.0, "staleness": 16},
    },
    # on-policy (mu = pi exactly), with the cells' 400 optimiser steps and learning rate; every
    # objective is the same algorithm there, so one of them stands for all
    "references": {
        "on-policy, 400 batches of 16": {"noise_std": 0.0, "staleness": 0, "updates_per_batch": 1, "steps": 400},
        "on-policy, 400 batches of 4": {"noise_std": 0.0, "staleness": 0, "updates_per_batch": 1, "steps": 400,
                                        "group_size": 4},
    },
    "reference_method": "pg_is",
    "methods": list(PAPER_METHODS),
    # SPO at Xie et al.'s eps = 0.2; DRPO at the registry's delta = 12.5, the DRPO paper's
    "method_params": {"spo": {"eps": 0.2}},
    # 16 seeds: the exact sign-flip test of a paired difference cannot go below 2^(1 - n), 0.008
    # with 8 seeds, too coarse for a Holm correction over the notebook's 15 paired comparisons
    "seeds": list(range(16)),
    # a seed has learned once its expected reward reached half the smallest reward of a rewarded
    # token (0.5 / 2); it has collapsed if it then lost half of its best
    "collapse": {"drop": 0.5, "min_peak": 0.25},
    # DRPO (delta 12.5) against pg_is: equivalent if the mean paired difference of final reward
    # lies within +-0.05 (TOST at alpha 0.05, Holm over the four cells)
    "margin": 0.05,
    "alpha": 0.05,
}

_LOG_06 = {
    "config": {"env": "tabular", "vocab_size": 256, "n_prompts": 8, "horizon": 4, "group_size": 8,
               "noise_std": 0.1, "precision": "fp8_e4m3", "staleness": 8, "updates_per_batch": 4, "steps": 30},
    "methods": ["grpo"],
    "seeds": [0, 1],
}

# the settings several exercises share (their simulations are cached under these keys)
_SETTINGS = {"06": _LOG_06}

# Notebook 08's world: the four answer formats of drpo_sim.envs.formats, as a JSON-friendly dict
_WORLD_08 = {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(FormatWorld()).items()}


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
        name="02.cispo_gradient",
        notebook="02_ppo_grpo_ratio_clipping",
        question="CISPO's dJ/dlogp for two tokens GRPO masks (a rare token pushed up with A > 0, a frequent one "
                 "pushed down with A < 0), as a pair in the order of the tokens",
        params={"objective": "cispo", "mu": [0.001, 0.99], "pi": [0.003, 0.70], "advantage": [1.0, -1.0]},
        solve=_solve_cispo_gradient,
        hint="CISPO keeps every token's gradient and caps only the detached ratio: dJ/dlogp = A * min(r, 1 + eps_high) "
             "with r = pi / mu, and no lower bound on r (objectives.get('cispo').grad_logp computes both at once)",
        kind="pair",
        rtol=1e-6,
        atol=1e-9,
        traps=(
            (
                _near_pair(lambda p: (0.0, 0.0)),
                "that is GRPO's gradient for these tokens (its clip masks both); CISPO never sets a weight to 0",
            ),
            (
                _near_pair(_cispo_weights),
                "those are CISPO's weights w; the question asks for the gradient dJ/dlogp = A * r * w",
            ),
            (
                _near_pair(_pg_is_gradients),
                "that is the uncapped importance-sampled gradient A * r (pg_is); CISPO caps the ratio it multiplies by",
            ),
            (
                _near_pair(lambda p: _solve_cispo_gradient(p)[::-1]),
                "give the pair in the order of the tokens in t (the rare token first)",
            ),
        ),
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
        name="03.grpo_wider",
        notebook="03_dppo_divergence_trust_region",
        question="the smallest mu at which GRPO (eps_high = 0.28) lets a token with A > 0 gain at least as much "
                 "probability pi - mu (pi <= 1) as DPPO-TV (delta = 0.15) before its weight drops to 0",
        params={"eps_high": 0.28, "delta": 0.15, "advantage": 1.0},
        solve=_solve_grpo_wider,
        hint="at a given mu, find each objective's largest pi with a nonzero weight (switch_point on "
             "objectives.get('grpo', eps_high=...).weight and on DPPO-TV's, pi <= 1), subtract mu, and solve for the "
             "mu where the two gains meet (brentq on their difference): GRPO's gain grows with mu, DPPO-TV's does not",
        rtol=1e-3,
        traps=(
            (
                _near(lambda p: p["delta"]),
                "that is DPPO-TV's largest gain delta itself, the same for every mu; the question asks for the mu at "
                "which GRPO's gain catches up with it",
            ),
            (
                _near(lambda p: p["eps_high"]),
                "that is GRPO's margin on the ratio r; its largest gain in probability depends on mu",
            ),
            (
                _near(lambda p: p["delta"] / (1 + p["eps_high"])),
                "that compares GRPO's largest pi, (1 + eps_high) mu, with DPPO-TV's largest gain; compare gains "
                "pi - mu with gains",
            ),
            (
                _near(lambda p: 1 / (1 + p["eps_high"])),
                "that is where GRPO's clip reaches pi = 1 (above it the cap pi <= 1 limits its gain); the two gains "
                "meet at a smaller mu",
            ),
            (
                _near(lambda p: 1 - p["delta"]),
                "that is where DPPO-TV's gain reaches the cap 1 - mu (above it both gains are 1 - mu, equal); GRPO's "
                "gain catches up at a smaller mu",
            ),
            (
                _near(lambda p: _solve_grpo_wider(p) + p["delta"]),
                "that is the pi the token reaches where the gains meet; the question asks for mu",
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
        name="04.drpo_surrogate_torch",
        notebook="04_spo_drpo_bounded_weights",
        question="dJ/dlogp of DRPO's surrogate (delta = 0.05), written in torch and backpropagated, for the two "
                 "tokens at the positions t['report'], as a pair in that order",
        # (mu, pi, A): attenuated, corrective (pi - mu = 0.1 > delta), attenuated with A < 0, amplified, rare
        params={"logp": [math.log(x) for x in (0.32, 0.50, 0.17, 0.03, 0.002)],
                "logp_behavior": [math.log(x) for x in (0.30, 0.40, 0.20, 0.02, 0.001)],
                "advantage": [1.0, 1.0, -0.5, -1.0, 0.5], "delta": 0.05, "report": [1, 2]},
        solve=_solve_drpo_surrogate_torch,
        hint="J = r A - abs(A) mu (r - 1)^2 / (2 delta) per token, with r = exp(logp - logp_behavior) carrying the "
             "gradient in both terms and mu = exp(logp_behavior) a constant; backpropagate J.sum() itself (not a "
             "loss -J) and read logp.grad at the two positions",
        kind="pair",
        rtol=1e-6,
        atol=1e-9,
        traps=(
            (
                _near_pair(lambda p: _drpo_surrogate_slip(p, "loss")),
                "that is the gradient of the loss -J (what an optimiser minimises); the question asks for dJ/dlogp",
            ),
            (
                _near_pair(lambda p: _drpo_surrogate_slip(p, "weight")),
                "those are DRPO's weights w; the question asks for the gradient dJ/dlogp = A r w",
            ),
            (
                _near_pair(lambda p: _drpo_surrogate_slip(p, "no_mu")),
                "that is SPO's gradient: its penalty abs(A) (r - 1)^2 / (2 delta) lacks DRPO's factor mu",
            ),
            (
                _near_pair(lambda p: _drpo_surrogate_slip(p, "signed_adv")),
                "the penalty carries abs(A), not A: with A the token with A < 0 is pushed away from mu instead of "
                "being held near it",
            ),
            (
                _near_pair(lambda p: _drpo_surrogate_slip(p, "l2")),
                "that penalises (pi - mu)^2, the term of the penalty's expectation over the vocabulary; a sampled "
                "token carries mu (r - 1)^2 = (pi - mu)^2 / mu (sampling it already weights it by mu)",
            ),
            (
                _near_pair(lambda p: _drpo_surrogate_slip(p, "no_penalty_grad")),
                "that is pg_is's gradient A r: the penalty gave logp no gradient (a detached ratio in it?); only mu "
                "is a constant",
            ),
            (
                _near_pair(lambda p: _solve_drpo_surrogate_torch(p)[::-1]),
                "give the pair in the order of t['report']",
            ),
        ),
    ),
    Exercise(
        name="05.grpo_lowest_cell",
        notebook="05_noise_staleness_convergence",
        question="the cell of the 2 x 2 design (none, noise, staleness or both) where GRPO's mean final expected "
                 "reward over the seeds is lowest",
        params={**_DESIGN_05, "method": "grpo"},
        solve=_solve_lowest_cell,
        hint="keep GRPO's runs, take each seed's final expected reward (the last step, or summaries.seed_table), "
             "average over the seeds of each cell and give the name of the cell with the smallest mean, as a string",
        kind="text",
        traps=(
            (
                lambda a, p: a == str(
                    _design_outcomes(p).query("method == @p['method']").groupby("cell")["final"].mean().idxmax()
                ),
                "that is the cell where GRPO ends highest; the question asks for the lowest",
            ),
        ),
    ),
    Exercise(
        name="05.spo_outcomes",
        notebook="05_noise_staleness_convergence",
        question="the numbers of SPO's runs of the design (4 cells x its seeds) that rose and then collapsed and "
                 "that never learned, under the design's collapse rule, as a pair (collapsed, never learned)",
        params={**_DESIGN_05, "method": "spo"},
        solve=_solve_collapsed_or_never,
        hint="drop the simulator's own collapsed column (it uses min_peak = 0), rebuild the per-seed table with "
             "summaries.seed_table(..., rule=stats.CollapseRule(**design['collapse'])), then count SPO's seeds with "
             "collapsed True, and those whose peak stayed below min_peak",
        kind="pair",
        rtol=0.0,
        atol=1e-9,
        traps=(
            (
                lambda a, p: isinstance(a, tuple) and a[0] == _spo_outcome_counts(p, {"drop": 0.5, "min_peak": 0.0})[0]
                and a[0] != _solve_collapsed_or_never(p)[0],
                "that first count uses CollapseRule()'s default min_peak = 0, under which a run that never rose "
                "above its start counts as collapsed; use the design's rule",
            ),
            (
                lambda a, p: isinstance(a, tuple) and a == _solve_collapsed_or_never(p)[::-1],
                "give the pair in order: (collapsed, never learned)",
            ),
        ),
    ),
    Exercise(
        name="05.drpo_equivalent_cells",
        notebook="05_noise_staleness_convergence",
        question="the number of the design's 4 cells in which DRPO (delta 12.5) and pg_is are shown equivalent "
                 "within the declared margin (TOST of the paired final rewards, Holm-adjusted over the 4 cells, at "
                 "alpha)",
        params={**_DESIGN_05, "x": "drpo", "y": "pg_is"},
        solve=_solve_equivalent_cells,
        hint="per cell, pair the two objectives' final rewards seed by seed, run "
             "compare.equivalence_test(x, y, margin=design['margin']), adjust the four p-values with compare.holm, "
             "and count those below alpha",
        rtol=0.0,
        atol=1e-9,
        traps=(
            (
                lambda a, p: isinstance(a, float) and a == _equivalent_cells_unadjusted(p)
                and a != _solve_equivalent_cells(p),
                "that counts the unadjusted p-values; four tests need Holm's correction (compare.holm)",
            ),
        ),
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
    Exercise(
        name="06.largest_corrective_delta",
        notebook="06_reading_a_token_log",
        question="the largest delta at which DRPO would give at least one token of the log with A < 0 a corrective "
                 "(negative) weight",
        params={"log": _LOG_06, "advantage_sign": -1.0, "_key": "06"},
        solve=_solve_largest_corrective_delta,
        hint="DRPO's weight 1 - sign(A) (pi - mu) / delta is negative where sign(A) (pi - mu) > delta: over the "
             "log's tokens in the loss (mask) with A < 0, take the largest sign(A) (pi - mu), with pi = exp(logp) and "
             "mu = exp(logp_behavior) (tokens.load_token_log), or search delta with objectives.get('drpo', "
             "delta=...).weight",
        rtol=1e-6,
        traps=(
            (
                _near(lambda p: float(_replayed_log(p["_key"]).totals["abs_shift_max"]), 1e-6),
                "that is the log's largest abs(pi - mu) over every token, whatever its advantage; the question asks "
                "about the tokens with A < 0, and DRPO corrects only those pushed down (sign(A) (pi - mu) > delta)",
            ),
            (
                _near(_largest_abs_shift, 1e-6),
                "that counts tokens with A < 0 that moved up, against their advantage: DRPO amplifies those (w > 1); "
                "it corrects only a token pushed down by more than delta",
            ),
        ),
    ),
    Exercise(
        name="07.decoupled_weight",
        notebook="07_three_policies_and_sequence_ratios",
        question="decoupled PPO's weight (token TIS, is_cap = 2) for the exercise's two tokens, as a pair in their "
                 "order",
        params={"objective": "decoupled_ppo", "objective_params": {"eps_low": 0.2, "eps_high": 0.2, "is_cap": 2.0},
                "mu": [0.01, 0.04], "pi_old": [0.03, 0.02], "pi": [0.033, 0.017], "advantage": [1.0, -1.0]},
        solve=_solve_decoupled_weight,
        hint="w = 1[the clip on rho = pi / pi_old is inactive] * min(b, is_cap) / b with b = pi_old / mu: the clip "
             "reads rho, the importance weight to the engine is the (truncated) gap b, and w is relative to r = rho b",
        kind="pair",
        rtol=1e-9,
        atol=1e-12,
        traps=(
            (
                _near_pair(_rollout_clip_weights),
                "those are the rollout anchor's weights: PPO's clip on r = pi / mu; decoupled PPO clips "
                "rho = pi / pi_old",
            ),
            (
                _near_pair(_decoupled_factor_only),
                "that is the factor min(b, is_cap) itself; the weight is relative to r = rho b, so divide by b",
            ),
            (
                _near_pair(_decoupled_uncapped),
                "that is decoupled PPO without truncation (w = 1 where the clip is inactive); t caps b at is_cap",
            ),
            (
                _near_pair(lambda p: _solve_decoupled_weight(p)[::-1]),
                "give the pair in the order of the tokens in t",
            ),
        ),
    ),
    Exercise(
        name="07.anchor_agreement",
        notebook="07_three_policies_and_sequence_ratios",
        question="the interval (low, high) of engine gaps b over which GRPO anchored to mu and GRPO+TIS (cap 2) "
                 "anchored to pi_old give a token with A < 0 at rho = 0.9 the same weight",
        params={"objective": "grpo", "correction": "tis", "cap": 2.0, "pi_old": 0.02, "rho": 0.9, "advantage": -1.0},
        solve=_solve_anchor_agreement,
        hint="at pi = rho pi_old and mu = pi_old / b, GRPO reads r = rho b and masks a token with A < 0 once "
             "r < 1 - eps_low; GRPO+TIS reads rho (inside its clip here) and weights it min(b, cap) / b. They agree "
             "where both weights are 1 (or search b with the two objects' weight, logp_old = log pi_old)",
        kind="pair",
        rtol=1e-4,
        atol=0.0,
        traps=(
            (
                _near_pair(lambda p: _anchor_agreement(p, 1.0), 1e-4),
                "that is the interval at the first update (rho = 1); this token has already moved to rho",
            ),
            (
                lambda a, p: isinstance(a, tuple) and _close(a[0], (1.0 - objectives.get(p["objective"]).eps_low)
                                                            * p["rho"], 1e-4, 0.0),
                "the lower end: GRPO clips r = rho b, so its clip on r puts a bound on b = r / rho",
            ),
            (
                _near_pair(lambda p: _solve_anchor_agreement(p)[::-1], 1e-4),
                "give the interval in order: (low, high)",
            ),
        ),
    ),
    Exercise(
        name="07.product_variance",
        notebook="07_three_policies_and_sequence_ratios",
        question="Var_mu[prod_t r_t] over a sequence of 1,024 independent tokens of the exercise's engine and "
                 "trainer, exactly",
        params={"vocab_size": 256, "zipf_exponent": 1.1, "noise_std": 0.1, "noise_seed": 0, "length": 1024},
        solve=_solve_product_variance,
        hint="for independent tokens E[prod_t r_t^2] = prod_t E[r_t^2], and E_mu[prod_t r_t] = 1: the variance is "
             "(E_mu[r^2])^T - 1, with E_mu[r^2] = sum_a mu(a) r(a)^2 by enumeration of the vocabulary",
        rtol=1e-4,
        traps=(
            (
                _near(lambda p: _product_variance_terms(p)[0] - 1.0, 1e-3),
                "that is one token's variance Var_mu[r]; the question asks about the product over the sequence",
            ),
            (
                _near(lambda p: p["length"] * (_product_variance_terms(p)[0] - 1.0), 1e-3),
                "variances add for a sum of independent terms, not for a product: compute E[prod r^2] - 1",
            ),
            (
                _near(lambda p: _solve_product_variance(p) + 1.0, 1e-4),
                "that is the second moment E[prod r^2]; subtract (E_mu[prod r])^2 = 1",
            ),
            (
                _near(lambda p: p["length"] * _product_variance_terms(p)[1], 1e-3),
                "that is the variance of log prod r = sum_t log r_t, which does add up; the question asks about the "
                "product itself",
            ),
            (
                lambda a, p: isinstance(a, float) and 0.2 * _solve_product_variance(p) <= a
                < (1 - 1e-4) * _solve_product_variance(p),
                "a sampled estimate? At this length the product is heavy-tailed and sampling underestimates its "
                "variance; compute it exactly from E_mu[r^2]",
            ),
        ),
    ),
    Exercise(
        name="08.longest_favoured",
        notebook="08_loss_aggregation_and_length_bias",
        question="the longest the careful format may be, in tokens, for GRPO's aggregation (seq-mean-token-mean) to "
                 "raise its probability at least as much as the 8-token short format's in the first step",
        params={"world": _WORLD_08, "mode": "seq-mean-token-mean", "short": 0, "careful": 1},
        solve=_solve_longest_favoured,
        hint="scan the careful format's length (dataclasses.replace(world, lengths=...)) and compare the two "
             "components of world.expected_gradient(np.zeros(world.k), mode) at theta = 0; or derive it from the "
             "first token's coefficient under this mode, 1 / (G L)",
        rtol=0.0,
        atol=1e-9,
        traps=(
            (
                _near(_longest_favoured_unbiased, 1e-9),
                "that is what a constant normaliser (or the true gradient) allows; the question is about GRPO's "
                "seq-mean-token-mean",
            ),
            (
                lambda a, p: float(a) != round(float(a)) and math.floor(float(a)) == _solve_longest_favoured(p),
                "a length is a whole number of tokens: give the largest integer that still qualifies",
            ),
        ),
    ),
    Exercise(
        name="08.silent_bug",
        notebook="08_loss_aggregation_and_length_bias",
        question="the implementations of GRPO's token-mean loss whose gradient differs from the registry's "
                 "(objectives.policy_loss), as their letters in alphabetical order",
        params={"objective": "grpo", "agg_mode": "token-mean", "seed": 8, "batch": 8, "length": 16, "vocab": 16,
                "logit_scale": 4.0},
        solve=_solve_silent_bug,
        hint="backpropagate each suspect's loss into a fresh tutorials.bug_batch()['logits'] and compare the "
             "gradient with the one of objectives.policy_loss(..., agg_mode='token-mean') on the same batch, the "
             "engine's log-probs computed without a gradient (torch.allclose); every suspect runs without an "
             "error, so only the gradients tell",
        kind="text",
        traps=((_is_letters_out_of_order, "the right letters, but give them in alphabetical order, no separator"),),
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
                f"{ex.name}: the answer should be a string (a name), got {type(answer).__name__}"
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
