"""Every number the explorer shows, computed by drpo_sim's own functions.

* Weight curves: ``Objective.weight`` of single tokens (:func:`drpo_sim.geometry.single_token_weight`,
  a sequence ratio at one token) over a ``pi`` grid (:func:`drpo_sim.geometry.pi_grid`, evenly
  spaced in logit, ``mu`` included) at a fixed ``mu`` and advantage, and for the objectives that
  read the trainer's ``pi_old`` (:attr:`Objective.needs_old`: those of three policies and the
  corrected ones) at the engine's gap ``b = pi_old / mu``: ``logp_old = log(b mu)``. Without a gap
  (``gap=None``) or at ``b = 1`` they are at ``pi_old = mu``, where every correction's factor is 1.
  A gap with ``b mu >= 1`` leaves no ``pi_old < 1``: such a curve is **not drawn** (empty; a plane
  column is :data:`NOT_DRAWN`), never clamped to another gap. Objectives that do not read
  ``pi_old`` are computed without it (``logp_old=None``), whatever the gap.
* Regions: :meth:`Objective.regions` (``masked`` ``w = 0``, ``attenuated`` ``0 < w < 1``,
  ``corrective`` ``w < 0``, ``amplified`` ``w > 1``), coded as small integers for images.
* Boundaries: the ``pi`` where an objective's region changes along the curve, located by
  bisection on the registry's weight (so the clip at ``r = 1 + eps``, the TV mask at
  ``pi - mu = delta``, DRPO's zero at ``pi = mu + sign(A) delta`` all come out of the objects, not
  out of a formula written again here).
* The ``(mu, pi)`` plane: region codes over a grid, evenly spaced in logit on both axes.

Everything is vectorised over cases (rows: one ``(mu, A)`` each) and grid points; the only
Python loops run over bisection iterations, the four regions and objectives, never over points.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from scipy.special import expit, logit

from drpo_sim import geometry, objectives

PI_MIN = 1e-4
"""The ``pi`` (and ``mu``) range shown: ``[PI_MIN, 1 - PI_MIN]``."""
N_PI = 400
"""Points of a weight curve (plus ``mu`` itself)."""
N_PLANE = 120
"""Cells per axis of a ``(mu, pi)`` region image."""
BISECT_ITERS = 48
"""Bisection steps in logit space: a grid interval (0.046 wide) shrinks to 1.6e-16."""

REGION_NAMES: tuple[str, ...] = ("w = 1", *objectives.Regions.NAMES)
"""Region codes: 0 ``w == 1`` (no region), then :data:`drpo_sim.objectives.Regions.NAMES` in order."""
REGION_HELP: tuple[str, ...] = ("w = 1 (plain IS gradient)", "masked (w = 0)", "attenuated (0 < w < 1)",
                                "corrective (w < 0)", "amplified (w > 1)")
"""Legend text of each region code."""
REGION_COLORS: tuple[str, ...] = ("#f4f4f4", "#4d4d4d", "#9ecae1", "#d62728", "#fdae6b")
"""Colours of the region codes: unchanged, masked, attenuated, corrective, amplified."""
NOT_DRAWN = len(REGION_NAMES)
"""The code of a plane cell where the gap leaves no ``pi_old < 1`` (``b mu >= 1``) for an objective reading it."""
NOT_DRAWN_HELP = "not drawn (b mu \u2265 1: no pi_old < 1)"
NOT_DRAWN_COLOR = "#c9b3e6"
PALETTE: tuple[str, ...] = (*REGION_COLORS, NOT_DRAWN_COLOR)
"""Colours of every plane code, :data:`REGION_COLORS` then :data:`NOT_DRAWN`."""
PI_TICKS: tuple[float, ...] = (0.0001, 0.001, 0.01, 0.1, 0.5, 0.9, 0.99, 0.999, 0.9999)


def to_logit(p: np.ndarray | float) -> np.ndarray:
    """The axis coordinate of a probability: the views draw ``pi`` and ``mu`` on a logit scale."""
    return logit(np.asarray(p, dtype=float))


@lru_cache(maxsize=64)
def pi_axis(mu: float, n: int = N_PI) -> np.ndarray:
    """The ``pi`` grid of a weight curve at ``mu`` (:func:`drpo_sim.geometry.pi_grid`)."""
    cfg = geometry.GeometryConfig(n_pi=n, pi_min=PI_MIN)
    out = geometry.pi_grid(cfg, float(mu))
    out.flags.writeable = False
    return out


def region_codes(w: np.ndarray) -> np.ndarray:
    """The region of each weight (:meth:`Regions.from_weight`) as a code 0..4 (:data:`REGION_NAMES`)."""
    return codes_of(objectives.Regions.from_weight(np.asarray(w)))


def codes_of(reg: objectives.Regions) -> np.ndarray:
    """:class:`drpo_sim.objectives.Regions` as one array of codes 0..4 (:data:`REGION_NAMES`)."""
    codes = np.zeros(np.shape(reg.masked), dtype=np.uint8)
    for code, name in enumerate(objectives.Regions.NAMES, start=1):
        codes[getattr(reg, name)] = code  # the regions are disjoint
    return codes


def reads_gap(obj: objectives.Objective, gap: np.ndarray | float | None) -> bool:
    """Whether ``obj``'s numbers depend on ``gap``: it reads ``pi_old`` and a gap is given."""
    return gap is not None and obj.needs_old


def drawable(obj: objectives.Objective, mu: np.ndarray | float, gap: np.ndarray | float | None = None) -> np.ndarray:
    """Per case (``mu`` and ``gap`` broadcast): ``False`` where ``obj`` reads ``pi_old`` and ``b mu >= 1``."""
    mu = np.asarray(mu, float)
    if not reads_gap(obj, gap):
        return np.ones(mu.shape, dtype=bool)
    return np.asarray(gap, float) * mu < 1.0


def old_logp(obj: objectives.Objective, mu: np.ndarray | float, gap: np.ndarray | float | None) -> np.ndarray | None:
    """``logp_old = log(b mu)`` per case, or ``None`` (``pi_old = mu``) when ``obj`` does not read the gap.

    Where ``b mu >= 1`` (:func:`drawable` false) it holds ``log(mu)`` as a placeholder whose
    numbers are discarded, so no NaN enters the registry.
    """
    if not reads_gap(obj, gap):
        return None
    mu = np.asarray(mu, float)
    old = np.broadcast_to(np.asarray(gap, float), mu.shape) * mu
    return np.log(np.where(old < 1.0, old, mu))


def weights(obj: objectives.Objective, pi: np.ndarray, mu: np.ndarray, adv: np.ndarray,
            gap: np.ndarray | float | None = None) -> np.ndarray:
    """``obj.weight`` at probabilities ``pi [C, P]`` for cases ``mu [C]``, ``adv [C]`` and engine gaps
    ``gap`` (``[C]`` or one value; ``None``: ``pi_old = mu``); NaN rows where not :func:`drawable`."""
    pi = np.atleast_2d(pi)
    mu = np.asarray(mu, float)
    lo = old_logp(obj, mu, gap)
    w = geometry.single_token_weight(obj, np.log(pi), np.log(mu)[:, None], np.asarray(adv, float)[:, None],
                                     logp_old=None if lo is None else lo[:, None])
    ok = drawable(obj, mu, gap)
    if not ok.all():
        w = np.where(ok[:, None], w, np.nan)
    return w


def _log_expit(x: np.ndarray) -> np.ndarray:
    return -np.logaddexp(0.0, -x)


@dataclass(frozen=True)
class Boundaries:
    """Where regions change along weight curves: one entry per boundary.

    ``case``: the row of the curve it belongs to; ``pi``: the boundary; ``inner`` / ``outer``: the
    region codes on the side of ``mu`` and on the far side.
    """

    case: np.ndarray
    pi: np.ndarray
    inner: np.ndarray
    outer: np.ndarray

    def of(self, case: int) -> Boundaries:
        """The boundaries of one curve."""
        sel = self.case == case
        return Boundaries(self.case[sel], self.pi[sel], self.inner[sel], self.outer[sel])

    def descriptions(self) -> list[str]:
        """One line per boundary, e.g. ``pi = 0.16, attenuated -> corrective``."""
        return [f"pi = {p:.4g}, {REGION_NAMES[i]} \u2192 {REGION_NAMES[o]}"
                for p, i, o in zip(self.pi, self.inner, self.outer)]

    def labels(self, name: str) -> list[str]:
        """:meth:`descriptions` prefixed with the objective's name: ``drpo: pi = 0.16, ...``."""
        return [f"{name}: {d}" for d in self.descriptions()]


def boundaries(obj: objectives.Objective, pi: np.ndarray, mu: np.ndarray, adv: np.ndarray,
               w: np.ndarray | None = None, iters: int = BISECT_ITERS,
               gap: np.ndarray | float | None = None) -> Boundaries:
    """The boundaries of ``obj``'s regions along the curves ``pi [C, P]`` (ascending, ``mu`` included).

    Every grid interval whose end points lie in different regions is bisected in logit space
    against ``obj.weight`` (at ``logp_old = log(b mu)`` for an objective that reads the ``gap``)
    until it is ``~1e-16`` wide; the change of region at ``pi = mu`` itself (the on-policy point,
    where ``w = 1`` for every objective but the ablations) is left out. A region narrower than the
    grid spacing (about 5% in ``pi / (1 - pi)``) can be missed. A curve that is not
    :func:`drawable` has none.
    """
    pi = np.atleast_2d(pi)
    mu, adv = np.asarray(mu, float), np.asarray(adv, float)
    if w is None:
        w = weights(obj, pi, mu, adv, gap)
    ok = drawable(obj, mu, gap)
    codes = region_codes(np.where(ok[:, None], w, 1.0))
    case, k = np.nonzero(codes[:, 1:] != codes[:, :-1])
    lo, hi = to_logit(pi[case, k]), to_logit(pi[case, k + 1])
    code_lo = codes[case, k]
    lb, a = np.log(mu[case]), adv[case]
    old = old_logp(obj, mu, gap)
    lold = None if old is None else old[case]
    for _ in range(iters):
        mid = 0.5 * (lo + hi)
        same = region_codes(geometry.single_token_weight(obj, _log_expit(mid), lb, a, logp_old=lold)) == code_lo
        lo, hi = np.where(same, mid, lo), np.where(same, hi, mid)
    x = 0.5 * (lo + hi)
    at_mu = np.abs(x - to_logit(mu[case])) < 1e-9
    case, x, code_lo, code_hi = case[~at_mu], x[~at_mu], code_lo[~at_mu], codes[case, k + 1][~at_mu]
    p = expit(x)
    above = p > mu[case]
    inner, outer = np.where(above, code_lo, code_hi), np.where(above, code_hi, code_lo)
    return Boundaries(case=case, pi=p, inner=inner, outer=outer)


@lru_cache(maxsize=4)
def plane_axis(n: int = N_PLANE) -> np.ndarray:
    """Cell centres, evenly spaced in logit over ``[PI_MIN, 1 - PI_MIN]``, as probabilities."""
    edge = float(to_logit(PI_MIN))
    step = -2.0 * edge / n
    out = expit(edge + step * (np.arange(n) + 0.5))
    out.flags.writeable = False
    return out


def plane_extent() -> tuple[float, float]:
    """``(start, width)`` of the plane images in logit coordinates, on both axes."""
    edge = float(to_logit(PI_MIN))
    return edge, -2.0 * edge


def plane_codes(obj: objectives.Objective, adv: np.ndarray, n: int = N_PLANE,
                gap: np.ndarray | float | None = None) -> np.ndarray:
    """Region codes over the ``(mu, pi)`` plane, ``[len(adv), n, n]`` (rows: ``pi``, columns: ``mu``).

    ``gap``: the engine's ``b = pi_old / mu``, one value or one per entry of ``adv`` (``None``:
    ``pi_old = mu``); for an objective that reads it, the columns with ``b mu >= 1`` are :data:`NOT_DRAWN`.
    """
    axis = plane_axis(n)
    lp = np.log(axis)[None, :, None]
    lb = np.log(axis)[None, None, :]
    a = np.asarray(adv, float)[:, None, None]
    if not reads_gap(obj, gap):
        return region_codes(geometry.single_token_weight(obj, lp, lb, a))
    g = np.broadcast_to(np.asarray(gap, float), a.shape[:1])[:, None, None]
    mu = np.broadcast_to(axis[None, None, :], g.shape[:2] + (n,))
    codes = region_codes(geometry.single_token_weight(obj, lp, lb, a, logp_old=old_logp(obj, mu, g)))
    codes[np.broadcast_to(~drawable(obj, mu, g), codes.shape)] = NOT_DRAWN
    return codes


@dataclass(frozen=True)
class Curve:
    """One objective's weight against ``pi`` at one ``(mu, A)``, with its boundaries."""

    name: str
    label: str
    pi: np.ndarray
    w: np.ndarray
    bounds: Boundaries


def curve(obj: objectives.Objective, mu: float, adv: float, gap: float | None = None) -> Curve:
    """:class:`Curve` of ``obj`` at ``mu``, advantage ``adv`` and engine gap ``gap`` (``None``:
    ``pi_old = mu``); empty (no point, no boundary) where not :func:`drawable`."""
    pi = pi_axis(float(mu))[None, :]
    m, a = np.array([mu], float), np.array([adv], float)
    if not drawable(obj, m, gap)[0]:
        none = np.empty(0)
        return Curve(obj.name, str(obj), none, none, Boundaries(none.astype(int), none, none.astype(np.uint8),
                                                                 none.astype(np.uint8)))
    w = weights(obj, pi, m, a, gap)
    return Curve(obj.name, str(obj), pi[0], w[0], boundaries(obj, pi, m, a, w=w, gap=gap))
