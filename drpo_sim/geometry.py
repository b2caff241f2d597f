"""Trust-region geometry: each objective's gradient weight over ``(mu, pi)``, as tidy tables.

These are the data behind the geometry figures (:mod:`drpo_sim.plots`): the DRPO paper's
Table 1 drawn out as weight-against-``pi`` curves, its Figure 1 as weight maps over the
``(mu, pi)`` plane with the ratio-clip and TV masks as regions, DRPO's weight range
against ``delta``, and the objectives of three policies and the corrections against the engine's
gap ``b = pi_old / mu`` (:func:`gap_curves`). Every number comes from :mod:`drpo_sim.objectives`;
nothing here restates a formula.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from scipy.special import expit, logit

from drpo_sim import objectives

ADV_SIGNS = (1.0, -1.0)


@dataclass(frozen=True)
class GeometryConfig:
    """The objectives and grids the geometry figures are drawn with.

    Thresholds are illustrative rather than the papers' training settings: at the DRPO
    paper's ``delta = 12.5`` DRPO's weight is flat (see :func:`drpo_weight_range`), so the
    maps use ``delta = 0.15``, the geometry of DPPO-TV's BF16 setting, and SPO's original
    ``eps = 0.2``, PPO's clip width.
    """

    mus: tuple[float, ...] = (0.001, 0.01, 0.1, 0.5, 0.9)
    n_pi: int = 401
    pi_min: float = 1e-4
    # the one objective whose weight depends on the size of A, not only its sign, is also
    # drawn at these |A| (every other curve is at |A| = 1)
    abs_adv_objective: str = "drpo_no_abs_adv"
    abs_adv_extra: tuple[float, ...] = (0.25, 4.0)
    n_plane: int = 200
    objectives: tuple[tuple[str, dict], ...] = (
        ("pg_is", {}),
        ("ppo", {"eps_low": 0.2, "eps_high": 0.2}),
        ("grpo", {"eps_low": 0.2, "eps_high": 0.28}),
        ("cispo", {"eps_high": 0.28}),
        ("spo", {"eps": 0.2}),
        ("dppo_tv", {"delta": 0.15}),
        ("dppo_kl", {"delta": 0.05}),
        ("drpo", {"delta": 0.15}),
        ("mask_drpo", {"delta": 0.15, "delta_low": 0.15, "delta_high": 0.15}),
        ("drpo_no_abs_adv", {"delta": 0.15}),
        ("drpo_kl", {"delta": 0.15}),
        ("drpo_tv", {"delta": 0.15}),
        ("drpo_k3", {"delta": 0.15}),
        ("ppo_rare_exempt", {}),
        ("minirl", {}),
        ("decoupled_ppo", {}),
        ("gspo", {}),
        ("dppo_topk_tv", {"delta": 0.15}),
    )
    plane_weights: tuple[str, ...] = ("spo", "drpo")
    plane_masks: tuple[str, ...] = ("ppo", "grpo", "dppo_tv")
    deltas: tuple[float, ...] = (12.5, 2.5, 1.0, 0.5, 0.15)
    ablations: frozenset[str] = field(
        default_factory=lambda: frozenset({"drpo_no_abs_adv", "drpo_kl", "drpo_tv", "drpo_k3"})
    )
    # drawn in a figure of their own beside GRPO's and DPPO-TV's curves: the objectives that read
    # more than one token's (pi, mu), at the single token's plainest case (single_token_weight)
    more: frozenset[str] = field(
        default_factory=lambda: frozenset({"ppo_rare_exempt", "minirl", "decoupled_ppo", "gspo", "dppo_topk_tv"})
    )

    def build(self) -> dict[str, objectives.Objective]:
        """The configured objectives, by name."""
        return {name: objectives.get(name, **params) for name, params in self.objectives}


def pi_grid(cfg: GeometryConfig, mu: float) -> np.ndarray:
    """``pi`` evenly spaced in logit from ``pi_min`` to ``1 - pi_min``, with ``mu`` itself included.

    The logit spacing resolves both the rare-token end (``pi -> 0``) and the frequent-token end
    (``pi -> 1``), where the trust regions of tokens with ``mu = 0.9`` live.
    """
    edge = logit(cfg.pi_min)
    return np.unique(np.concatenate([expit(np.linspace(edge, -edge, cfg.n_pi)), [mu]]))


def weight_curves(cfg: GeometryConfig) -> pd.DataFrame:
    """Each objective's weight against ``pi`` at fixed ``mu`` and advantage sign (one row per point).

    Columns: ``objective`` (its string with parameters), ``name``, ``ablation``, ``mu``,
    ``adv_sign``, ``abs_adv``, ``pi``, ``ratio``, ``shift`` (``pi - mu``), ``weight``.
    """
    frames = []
    for name, obj in cfg.build().items():
        sizes = (1.0, *cfg.abs_adv_extra) if name == cfg.abs_adv_objective else (1.0,)
        for mu in cfg.mus:
            pi = pi_grid(cfg, mu)
            lp, lb = np.log(pi), np.full_like(pi, np.log(mu))
            for sign in ADV_SIGNS:
                for size in sizes:
                    frames.append(
                        pd.DataFrame(
                            {
                                "objective": str(obj),
                                "name": name,
                                "ablation": name in cfg.ablations,
                                "mu": mu,
                                "adv_sign": sign,
                                "abs_adv": size,
                                "pi": pi,
                                "ratio": pi / mu,
                                "shift": pi - mu,
                                "weight": single_token_weight(obj, lp, lb, np.full_like(pi, sign * size)),
                            }
                        )
                    )
    return pd.concat(frames, ignore_index=True)


def single_token_weight(obj: objectives.Objective, logp, logp_behavior, advantage, logp_old=None) -> np.ndarray:
    """``obj.weight`` of tokens seen one at a time, as the geometry views and the explorer draw them.

    A single token has no sequence and no distribution of its own, so the objectives that read them
    are drawn at the plainest case: each token its own sequence (a sequence ratio is the token's
    ratio); DPPO's Top-K divergence with ``K = 1`` and the token as the engine's top one (the binary
    TV ``abs(pi - mu)`` and KL, :func:`drpo_sim.objectives.topk_divergences`). The trainer's
    recomputation ``logp_old`` defaults to ``mu`` (no gap between the engine and the trainer at
    rollout time: a recompute anchor is the rollout's, every correction's factor is 1);
    :func:`gap_curves` draws the gap. Every other objective is unaffected: it reads none of them.
    """
    lp, lb, a = np.broadcast_arrays(*(np.asarray(x, dtype=float) for x in (logp, logp_behavior, advantage)))
    ids = np.arange(lp.size).reshape(lp.shape) if obj.per_sequence else None
    columns = {"logp_old": lb if logp_old is None else np.broadcast_to(np.asarray(logp_old, dtype=float), lp.shape)}
    if {"topk_tv", "topk_kl"} & set(obj.required_columns):
        columns["topk_tv"] = np.abs(np.exp(lp) - np.exp(lb))
        columns["topk_kl"] = objectives.binary_kl(lb, lp)
    return obj.weight(lp, lb, a, sample_id=ids, **columns)


def plane_axis(n: int) -> np.ndarray:
    """Cell centres of an ``n``-cell grid over (0, 1)."""
    return (np.arange(n) + 0.5) / n


def weight_plane(cfg: GeometryConfig) -> pd.DataFrame:
    """Weights and masks over the ``(mu, pi)`` plane, one row per grid point and advantage sign.

    Columns: ``mu``, ``pi``, ``adv_sign``, ``weight_<name>`` for ``cfg.plane_weights`` and
    ``masked_<name>`` (the objective's ``masked`` region) for ``cfg.plane_masks``.
    """
    objs = cfg.build()
    axis = plane_axis(cfg.n_plane)
    mu, pi = np.meshgrid(axis, axis)  # rows: pi, columns: mu
    mu, pi = mu.ravel(), pi.ravel()
    lp, lb = np.log(pi), np.log(mu)
    frames = []
    for sign in ADV_SIGNS:
        adv = np.full_like(mu, sign)
        cols: dict[str, np.ndarray | float] = {"mu": mu, "pi": pi, "adv_sign": sign}
        for name in cfg.plane_weights:
            cols[f"weight_{name}"] = single_token_weight(objs[name], lp, lb, adv)
        for name in cfg.plane_masks:
            cols[f"masked_{name}"] = single_token_weight(objs[name], lp, lb, adv) == 0
        frames.append(pd.DataFrame(cols))
    return pd.concat(frames, ignore_index=True)


def drpo_weight_range(cfg: GeometryConfig) -> tuple[pd.DataFrame, pd.DataFrame]:
    """DRPO's weight range for each ``delta``, measured over the whole plane, and its weight against the shift.

    Returns ``(ranges, curves)``. ``ranges``: one row per ``delta`` with the minimum and maximum
    weight found over the ``(mu, pi)`` grid and both advantage signs, the fraction of the plane
    where the weight is corrective (negative), and the bounds ``1 -+ 1/delta`` for comparison.
    ``curves``: weight against ``pi - mu`` at ``mu = 0.5`` for ``A > 0`` and ``A < 0``.
    """
    axis = plane_axis(cfg.n_plane)
    mu, pi = (a.ravel() for a in np.meshgrid(axis, axis))
    rows, curves = [], []
    mu_c = 0.5
    pi_c = np.linspace(1e-6, 1.0, 401)
    for delta in cfg.deltas:
        drpo = objectives.get("drpo", delta=delta)
        w = np.concatenate([drpo.weight(np.log(pi), np.log(mu), s) for s in ADV_SIGNS])
        rows.append(
            {
                "delta": delta,
                "weight_min": float(w.min()),
                "weight_max": float(w.max()),
                "corrective_fraction": float(np.mean(w < 0)),
                "bound_low": 1.0 - 1.0 / delta,
                "bound_high": 1.0 + 1.0 / delta,
            }
        )
        for s in ADV_SIGNS:
            curves.append(
                pd.DataFrame(
                    {"delta": delta, "adv_sign": s, "mu": mu_c, "pi": pi_c, "shift": pi_c - mu_c,
                     "weight": drpo.weight(np.log(pi_c), np.log(mu_c), s)}
                )
            )
    return pd.DataFrame(rows), pd.concat(curves, ignore_index=True)


@dataclass(frozen=True)
class GapConfig:
    """The objectives of three policies and the corrections drawn against the engine's gap.

    ``b = pi_old / mu`` is how much more (``b > 1``) or less likely the trainer finds a token than
    the engine that sampled it, before any update. Curves are at ``pi = pi_old`` (the first update
    of a batch: ``rho = pi / pi_old = 1``, ``r = pi / mu = b``) for a token of engine probability
    ``mu``, one token per sequence (a sequence correction is its token's). ``objectives`` are
    ``(name, params)`` pairs, ``corrections`` the corrections drawn on ``correction_base``.
    """

    mu: float = 0.02
    b_min: float = 0.05
    b_max: float = 40.0
    n_b: int = 401
    objectives: tuple[tuple[str, dict], ...] = (
        ("pg_is", {}),
        ("grpo", {}),
        ("dppo_tv", {"delta": 0.15}),
        ("drpo", {"delta": 0.15}),
        ("decoupled_ppo", {}),
        ("decoupled_ppo", {"is_cap": 2.0}),
        ("minirl", {}),
        ("dppo_tv_recompute", {"delta": 0.15}),
    )
    correction_base: str = "grpo"
    corrections: tuple[tuple[str, dict], ...] = (
        ("is", {}),
        ("tis", {"cap": 2.0}),
        ("seq_mis", {"cap": 2.0}),
        ("geo_mis", {}),
        ("icepop", {}),
    )

    def gaps(self) -> np.ndarray:
        """``b``, evenly spaced in log from ``b_min`` to ``b_max`` with ``b = 1`` included."""
        return np.unique(np.concatenate([np.geomspace(self.b_min, self.b_max, self.n_b), [1.0]]))

    def build(self) -> dict[str, tuple[str, objectives.Objective]]:
        """``{label: (panel, objective)}``: panel ``"objectives"`` or ``"corrections"``."""
        out: dict[str, tuple[str, objectives.Objective]] = {}
        for name, params in self.objectives:
            obj = objectives.get(name, **params)
            out[str(obj)] = ("objectives", obj)
        for name, params in self.corrections:
            obj = objectives.get(self.correction_base, correction=name, **params)
            out[str(obj)] = ("corrections", obj)
        return out


def gap_curves(cfg: GapConfig | None = None) -> pd.DataFrame:
    """Each objective's weight against the engine's gap ``b = pi_old / mu`` at ``pi = pi_old``.

    Columns: ``objective`` (its string with parameters), ``name`` (registry name), ``correction``
    (its name, or ``"none"``), ``panel``, ``mu``, ``adv_sign``, ``b``, ``pi_old`` (``= pi``), ``ratio``
    (``r = pi / mu = b``), ``weight`` (``w``, with ``dJ/dlogp = A r w``: ``w = 1`` keeps the full
    importance weight ``r`` to the engine, the unbiased gradient of the trainer's expected reward;
    ``w = 1 / b`` drops it, as if ``pi_old`` had sampled the token; ``w = 0`` masks it). Gaps that
    would put ``pi_old`` above 1 are left out.
    """
    cfg = cfg or GapConfig()
    b = cfg.gaps()
    b = b[b * cfg.mu < 1.0]
    pi_old = b * cfg.mu
    lp = np.log(pi_old)
    lb = np.full_like(lp, np.log(cfg.mu))
    frames = []
    for label, (panel, obj) in cfg.build().items():
        correction = getattr(obj, "params", {}).get("correction", "none")
        for sign in ADV_SIGNS:
            w = single_token_weight(obj, lp, lb, np.full_like(lp, sign), logp_old=lp)
            frames.append(pd.DataFrame({"objective": label, "name": obj.name, "correction": correction,
                                        "panel": panel, "mu": cfg.mu, "adv_sign": sign, "b": b,
                                        "pi_old": pi_old, "ratio": b, "weight": w}))
    return pd.concat(frames, ignore_index=True)
