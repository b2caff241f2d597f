"""Exact update dynamics with a frozen behaviour policy: where each objective comes to rest.

Setting. The behaviour policy is frozen (infinite staleness: every batch is sampled from the same
``mu``) and the update is the exact expected gradient, no sampling noise. Take one token of the
bandit with behaviour probability ``mu`` and advantage ``A``; the rest of the vocabulary carries no
advantage, so only this token's surrogate ``J(pi; mu, A)`` moves the policy. Parameterise the token
against the rest by its logit ``z`` (``pi = sigmoid(z)``, the rest's logit fixed at 0). The
expected update over ``a ~ mu`` (the token is sampled with probability ``mu``) is

    z  <-  F(z) = z + lr * v(z),     v(z) = mu * dJ/dlogp * (1 - pi) = mu A r w(pi) (1 - pi),

with ``dJ/dlogp`` the registry's closed form (:meth:`Objective.grad_logp`).

Rest points are the zeros of ``v`` in ``0 < pi < 1``, i.e. ``w(pi) = 0``. docs/reference.md
("Per-token maximisers") predicts: DRPO at ``pi = mu + sign(A) delta``; SPO at
``r = 1 + sign(A) eps``; PPO / GRPO and DPPO stop at their boundaries (the whole masked region
beyond is at rest); ``pg_is`` (and ``cispo``, whose weight never vanishes) has none: ``pi`` runs to
1 (``A > 0``) or 0 (``A < 0``). Where the predicted point falls outside ``(0, 1)`` the flow runs
to the edge as well.

Finding the rest points. Near the edges the flow slows down exponentially (``v`` carries a factor
``pi (1 - pi)``: ``mu r = pi``), so :func:`iterate` follows the same flow with its speed divided
by ``pi (1 - pi)``, ``z <- z + lr v(z) / (pi (1 - pi))`` (for ``dJ/dlogp = A r w`` that is just
``z <- z + lr A w(pi)``: the weight is the flow in logit space). A positive rescaling keeps the
rest points, their stability and the direction of the flow; it only removes the slow-down, so a
runaway reaches the edge in a few hundred steps instead of ``e**z``.

Local stability. ``F'(z*) = 1 + lr v'(z*)``; in one dimension the spectral radius of the
Jacobian is ``abs(F'(z*))``, and the rest point is stable iff it is below 1 (for small ``lr``:
iff the eigenvalue ``v'(z*) < 0``). ``v'`` is computed by a central difference of ``v`` (the
registry's gradient, not a formula written again here); for DRPO it equals the closed form
``-abs(A) pi**2 (1 - pi)**2 / delta`` (tested), for SPO ``-abs(A) pi r (1 - pi)**2 / eps``, which
is why SPO's flow is stiff where DRPO's is not. Inside a hard mask ``v = 0`` on a whole interval:
``F' = 1``, a continuum of neutrally stable rest points (spectral radius 1).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy.optimize import brentq
from scipy.special import expit, logit

from drpo_sim import objectives
from drpo_sim.objectives import binary_kl

RUNAWAY_EDGE = 1e-6  # pi within this of 0 or 1: the iterate has run off to the simplex's edge


@dataclass(frozen=True)
class FlowConfig:
    """How the map is iterated: step size, number of steps, convergence tolerance."""

    lr: float = 0.2
    max_steps: int = 20000
    tol: float = 1e-11
    fd_step: float = 1e-5


def velocity(obj: objectives.Objective, z: np.ndarray, mu: np.ndarray, adv: np.ndarray) -> np.ndarray:
    """``v(z) = mu dJ/dlogp (1 - pi)`` for the token with logit ``z`` (module docstring)."""
    log_pi = -np.logaddexp(0.0, -z)  # log sigmoid(z)
    log_rest = -np.logaddexp(0.0, z)  # log (1 - pi)
    return mu * obj.grad_logp(log_pi, np.log(mu), adv) * np.exp(log_rest)


def iterate(
    obj: objectives.Objective,
    mu: np.ndarray,
    adv: np.ndarray,
    cfg: FlowConfig = FlowConfig(),
    pi0: np.ndarray | None = None,
):
    """Iterate ``F`` from ``pi0`` (default: on-policy, ``pi0 = mu``) for every ``(mu, adv)`` at once.

    Returns ``(pi, pi_before, steps, converged)``: the final probability, the point before the
    last step that moved (a hard boundary lies between the two), the steps taken, and whether the step fell
    below ``tol`` away from the edges (a rest point) rather than the iterate running towards an
    edge until ``max_steps``.
    """
    mu, adv = np.broadcast_arrays(np.asarray(mu, float), np.asarray(adv, float))
    z = logit(mu if pi0 is None else np.broadcast_to(pi0, mu.shape)).copy()
    active = np.ones(mu.shape, dtype=bool)
    steps = np.zeros(mu.shape, dtype=np.int64)
    converged = np.zeros(mu.shape, dtype=bool)
    z_before = z.copy()
    for _ in range(cfg.max_steps):
        if not active.any():
            break
        za = z[active]
        pq = np.exp(-np.logaddexp(0.0, -za) - np.logaddexp(0.0, za))  # pi (1 - pi), no underflow to 0 here
        dz = cfg.lr * velocity(obj, za, mu[active], adv[active]) / pq
        z_before[active] = np.where(dz != 0, za, z_before[active])  # the last point of the flow before it stopped
        z[active] = za + dz
        steps[active] += 1
        pi = expit(z[active])
        rest = np.abs(dz) < cfg.tol
        edge = (pi < RUNAWAY_EDGE) | (pi > 1 - RUNAWAY_EDGE)
        idx = np.flatnonzero(active)
        converged[idx[rest & ~edge]] = True
        active[idx[rest | edge]] = False
    return expit(z), expit(z_before), steps, converged


def derivative(obj: objectives.Objective, z: np.ndarray, mu: np.ndarray, adv: np.ndarray, eps: float) -> np.ndarray:
    """Central difference ``v'(z)``."""
    return (velocity(obj, z + eps, mu, adv) - velocity(obj, z - eps, mu, adv)) / (2 * eps)


def expected_rest_point(name: str, params: dict, mu: float, sign: float) -> tuple[str, float]:
    """The prediction of docs/reference.md for a start at ``pi = mu``: ``(kind, pi*)``.

    ``kind`` is ``"interior"`` (a zero of the weight), ``"boundary"`` (the flow stops where a clip
    or mask switches on) or ``"runaway"`` (no rest point: ``pi*`` is 1 or 0).
    """
    edge = 1.0 if sign > 0 else 0.0
    if name == "drpo":
        p = mu + sign * params["delta"]
        return ("interior", p) if 0 < p < 1 else ("runaway", edge)
    if name == "spo":
        p = mu * (1 + sign * params["eps"])
        return ("interior", p) if 0 < p < 1 else ("runaway", edge)
    if name in ("ppo", "grpo"):
        p = mu * (1 + params["eps_high"]) if sign > 0 else mu * (1 - params["eps_low"])
        return ("boundary", p) if 0 < p < 1 else ("runaway", edge)
    if name == "dppo_tv":
        hi = params["delta_high"] if params.get("delta_high") is not None else params["delta"]
        lo = params["delta_low"] if params.get("delta_low") is not None else params["delta"]
        p = mu + hi if sign > 0 else mu - lo
        return ("boundary", p) if 0 < p < 1 else ("runaway", edge)
    if name == "dppo_kl":
        hi = params["delta_high"] if params.get("delta_high") is not None else params["delta"]
        lo = params["delta_low"] if params.get("delta_low") is not None else params["delta"]
        d = hi if sign > 0 else lo
        far = 1 - 1e-15 if sign > 0 else 1e-15
        f = lambda p: float(binary_kl(np.log(mu), np.log(p))) - d  # noqa: E731
        return ("boundary", brentq(f, mu, far)) if f(far) > 0 else ("runaway", edge)
    if name in ("pg_is", "cispo"):
        return ("runaway", edge)
    raise ValueError(f"docs/reference.md states no rest point for {name!r}")


REFERENCE_OBJECTIVES: tuple[tuple[str, dict], ...] = (
    ("pg_is", {}),
    ("cispo", {}),
    ("ppo", {}),
    ("grpo", {}),
    ("spo", {"eps": 0.2}),
    ("spo", {}),
    ("dppo_tv", {}),
    ("dppo_kl", {}),
    ("drpo", {"delta": 0.15}),
    ("drpo", {"delta": 0.5}),
    ("drpo", {}),
)


def rest_point_table(
    specs: tuple[tuple[str, dict], ...] = REFERENCE_OBJECTIVES,
    mus: tuple[float, ...] = (0.001, 0.01, 0.1, 0.3, 0.5, 0.7, 0.9),
    signs: tuple[float, ...] = (1.0, -1.0),
    cfg: FlowConfig = FlowConfig(),
) -> pd.DataFrame:
    """One row per objective, ``mu`` and sign of ``A``: where the iteration from ``pi = mu`` comes to
    rest, the reference's prediction (docs/reference.md), and the local stability there.

    Columns: ``objective`` (with parameters), ``name``, ``mu``, ``adv_sign``, ``pi_rest``,
    ``pi_before`` (the iterate before the last: a boundary lies between the two), ``kind``
    (``interior``, ``boundary``, ``runaway``), ``steps``, ``expected_kind``,
    ``expected_pi``, ``abs_error``, ``weight_at_rest``, ``eigenvalue`` (``v'`` at the rest point),
    ``jacobian`` (``1 + lr v'``, the map ``F`` of the module docstring), ``spectral_radius``,
    ``stability`` (``stable`` / ``unstable`` for an interior rest point; ``neutral`` at a hard
    boundary, where ``v = 0`` on the masked side, so ``F' = 1``: reached from the flow side in
    finite steps, but not pulled back after a push further into the mask; ``none`` for a runaway)
    and ``stable``.
    """
    rows = []
    for name, params in specs:
        obj = objectives.get(name, **params)
        mu = np.repeat(np.asarray(mus, float), len(signs))
        adv = np.tile(np.asarray(signs, float), len(mus))
        pi, pi_before, steps, converged = iterate(obj, mu, adv, cfg)
        z = logit(np.clip(pi, 1e-300, 1 - 1e-16))
        w = obj.weight(np.log(pi), np.log(mu), adv)
        masked = w == 0
        h1 = derivative(obj, z, mu, adv, cfg.fd_step)
        for i in range(mu.size):
            exp_kind, exp_pi = expected_rest_point(name, obj.params, mu[i], adv[i])
            kind = "runaway" if not converged[i] else ("boundary" if masked[i] else "interior")
            eig = h1[i] if kind != "runaway" else np.nan
            jac = 1 + cfg.lr * eig
            if kind == "runaway":
                stability = "none"
            elif kind == "boundary":
                stability = "neutral"
            else:
                stability = "stable" if abs(jac) < 1 else "unstable"
            rows.append({
                "objective": str(obj), "name": name, "mu": mu[i], "adv_sign": adv[i], "pi_rest": pi[i],
                "pi_before": pi_before[i], "kind": kind,
                "steps": int(steps[i]), "expected_kind": exp_kind, "expected_pi": exp_pi,
                "abs_error": abs(pi[i] - exp_pi), "weight_at_rest": w[i], "eigenvalue": eig, "jacobian": jac,
                "spectral_radius": abs(jac), "stability": stability, "stable": stability == "stable",
            })
    return pd.DataFrame(rows)


def flow_field(
    specs: tuple[tuple[str, dict], ...],
    n: int = 121,
    signs: tuple[float, ...] = (1.0, -1.0),
    cfg: FlowConfig = FlowConfig(),
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The flow over the ``(mu, pi)`` plane and the rest curve, for each objective and sign.

    Returns ``(field, rest)``: ``field`` has one row per grid point (``mu``, ``pi`` on a logit
    grid from 1e-3 to 1 - 1e-3) with ``dpi = pi (1 - pi) h`` (the rate of change of ``pi`` per unit
    step); ``rest`` has, for the same grid of ``mu``, where the iteration from ``pi = mu`` ends,
    whether it came to rest there, and the prediction of docs/reference.md (``expected_pi``, NaN where it
    makes none).
    """
    grid = expit(np.linspace(logit(1e-3), logit(1 - 1e-3), n))
    mu_g, pi_g = np.meshgrid(grid, grid)
    fields, rests = [], []
    for name, params in specs:
        obj = objectives.get(name, **params)
        for s in signs:
            adv = np.full(mu_g.shape, s)
            h = velocity(obj, logit(pi_g), mu_g, adv)
            fields.append(pd.DataFrame({"objective": str(obj), "name": name, "adv_sign": s, "mu": mu_g.ravel(),
                                        "pi": pi_g.ravel(), "dpi": (pi_g * (1 - pi_g) * h).ravel()}))
            pi_rest, _, _, conv = iterate(obj, grid, np.full(grid.shape, s), cfg)
            try:
                expected = [expected_rest_point(name, obj.params, m, s)[1] for m in grid]
            except ValueError:  # no prediction in docs/reference.md for this objective
                expected = np.full(grid.shape, np.nan)
            rests.append(pd.DataFrame({"objective": str(obj), "name": name, "adv_sign": s, "mu": grid,
                                       "pi_rest": pi_rest, "converged": conv, "expected_pi": expected}))
    return pd.concat(fields, ignore_index=True), pd.concat(rests, ignore_index=True)
