"""The explorer's controls: which values each one offers, and how they become objective parameters.

Every control is a discrete list of values (a slider moves over its index), so that the server
app and the exported page offer the same choices and the export can precompute every one of
them. The export offers a subset of each list (:func:`export_controls`) to keep the page small.

The thresholds are the objectives' own parameters; :data:`PARAM_CONTROLS` says which control
sets which parameter of which objective. The engine's gap ``b = pi_old / mu`` (control ``gap``) is
no parameter: it is the trainer's recomputation ``pi_old = b mu`` the curves are drawn at, read only
by the objectives whose :attr:`~drpo_sim.objectives.Objective.needs_old` is true (:func:`reads_gap`).
Besides the registry's objectives the explorer offers GRPO with each correction of
:func:`drpo_sim.objectives.corrections` (:data:`CORRECTED`, ``"grpo+tis"``, ...; the correction at
its default parameters, GRPO's clip from ``eps_low`` / ``eps_high``): :func:`entries`.

Defaults are illustrative geometry rather than the papers' training settings (as in
:class:`drpo_sim.geometry.GeometryConfig`): at the DRPO paper's ``delta = 12.5`` DRPO's weight is
flat, so DRPO starts at ``delta = 0.15`` (the DPPO-TV BF16 threshold) and SPO at Xie et al.'s
``eps = 0.2``; both lists include 12.5.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from drpo_sim import objectives
from drpo_sim.offpolicy import PRECISIONS


@dataclass(frozen=True)
class Choice:
    """One control: its name (the Bokeh model's name), title, offered values and default."""

    name: str
    title: str
    values: tuple[Any, ...]
    default: Any

    def __post_init__(self) -> None:
        if self.default not in self.values:
            raise ValueError(f"control {self.name!r}: default {self.default!r} is not among its values {self.values}")

    @property
    def default_index(self) -> int:
        return self.values.index(self.default)

    def labels(self) -> list[str]:
        """The values as the widget shows them."""
        return [f"{v:g}" if isinstance(v, float) else str(v) for v in self.values]

    def subset(self, values: tuple[Any, ...]) -> Choice:
        """The same control offering only ``values`` (the default must stay among them)."""
        missing = [v for v in values if v not in self.values]
        if missing:
            raise ValueError(f"control {self.name!r}: {missing} are not among its values")
        return dataclasses.replace(self, values=tuple(v for v in self.values if v in values))


GAP_VALUES: tuple[float, ...] = (0.1, 0.125, 0.16, 0.2, 0.25, 0.32, 0.4, 0.5, 0.63, 0.8, 1.0,
                                  1.25, 1.6, 2.0, 2.5, 3.2, 4.0, 5.0, 6.3, 8.0, 10.0)
"""The engine gaps ``b = pi_old / mu`` offered: ``log10 b`` from -1 to 1 in steps of about 0.1 (Renard's
R10 series and its reciprocals, so that 2, 4, 5, 10 and 0.5, the corrections' thresholds, are exact)."""

GEOMETRY_CONTROLS: tuple[Choice, ...] = (
    Choice("mu", "mu (behaviour probability of the token)",
           (1e-4, 1e-3, 0.01, 0.05, 0.1, 0.2, 0.3, 0.5, 0.7, 0.9, 0.99), 0.01),
    Choice("adv_size", "|A| (size of the advantage)", (0.25, 0.5, 1.0, 2.0, 4.0), 1.0),
    Choice("gap", "b = pi_old / mu (engine gap; log scale)", GAP_VALUES, 1.0),
    Choice("eps_low", "eps_low (PPO / GRPO clip below)", (0.05, 0.1, 0.2, 0.28, 0.4), 0.2),
    Choice("eps_high", "eps_high (PPO / GRPO / CISPO clip above)", (0.05, 0.1, 0.2, 0.28, 0.4), 0.28),
    Choice("spo_eps", "SPO eps", (0.05, 0.1, 0.2, 0.5, 1.0, 2.5, 12.5), 0.2),
    Choice("delta_low", "DPPO-TV delta_low", (0.02, 0.05, 0.1, 0.15, 0.3, 0.6), 0.15),
    Choice("delta_high", "DPPO-TV delta_high", (0.02, 0.05, 0.1, 0.15, 0.3, 0.6), 0.15),
    Choice("kl_delta", "DPPO-KL delta (both sides)", (0.005, 0.01, 0.02, 0.05, 0.1, 0.2), 0.05),
    Choice("drpo_delta", "DRPO delta (and its ablations)", (0.05, 0.1, 0.15, 0.3, 0.5, 1.0, 2.5, 12.5), 0.15),
)
"""Controls of the geometry views (the sign of ``A`` is a two-way toggle, :data:`ADV_SIGNS`)."""

LIVE_CONTROLS: tuple[Choice, ...] = (
    Choice("noise_std", "engine noise (noise_std)", (0.0, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 1.0), 0.1),
    Choice("precision", "engine precision", tuple(PRECISIONS), "fp8_e4m3"),
    Choice("staleness", "staleness (updates)", (0, 1, 2, 4, 8, 16, 32), 8),
    Choice("vocab_size", "vocabulary size", (64, 256, 1024, 4096, 16384), 1024),
    Choice("lr", "learning rate (Adam)", (0.005, 0.01, 0.02, 0.05, 0.1, 0.2), 0.05),
)
"""Controls of the live bandit run (fields of :class:`drpo_sim.sim.SimConfig`)."""

ADV_SIGNS: tuple[float, ...] = (1.0, -1.0)
SIGN_LABELS: tuple[str, ...] = ("A > 0", "A < 0")

# which control sets which parameter of which objective (objectives not listed keep their defaults)
_CLIP = {"eps_low": "eps_low", "eps_high": "eps_high"}
_DRPO = {"delta": "drpo_delta"}
PARAM_CONTROLS: dict[str, dict[str, str]] = {
    "ppo": _CLIP,
    "grpo": _CLIP,
    "cispo": {"eps_high": "eps_high"},
    "spo": {"eps": "spo_eps"},
    "dppo_tv": {"delta_low": "delta_low", "delta_high": "delta_high"},
    "dppo_kl": {"delta": "kl_delta"},
    "drpo": _DRPO,
    "mask_drpo": {"delta": "drpo_delta", "delta_low": "delta_low", "delta_high": "delta_high"},
    "drpo_no_abs_adv": _DRPO,
    "drpo_kl": _DRPO,
    "drpo_tv": _DRPO,
    "drpo_k3": _DRPO,
}

EXPORT_VALUES: dict[str, tuple[Any, ...]] = {
    "mu": (1e-4, 1e-3, 0.01, 0.1, 0.3, 0.5, 0.9, 0.99),
    "adv_size": (0.25, 1.0, 4.0),
    "gap": (0.1, 0.2, 0.25, 0.5, 0.8, 1.0, 1.25, 2.0, 4.0, 5.0, 10.0),
    "eps_low": (0.1, 0.2, 0.28, 0.4),
    "eps_high": (0.1, 0.2, 0.28, 0.4),
    "spo_eps": (0.1, 0.2, 1.0, 2.5, 12.5),
    "delta_low": (0.05, 0.15, 0.3, 0.6),
    "delta_high": (0.05, 0.15, 0.3, 0.6),
    "kl_delta": (0.01, 0.05, 0.2),
    "drpo_delta": (0.05, 0.15, 0.5, 1.0, 2.5, 12.5),
}
"""The values the exported page precomputes (a subset of each geometry control's)."""


CORRECTION_BASE = "grpo"
"""The objective the explorer corrects (its clip follows ``eps_low`` / ``eps_high``)."""
CORRECTED: tuple[str, ...] = tuple(f"{CORRECTION_BASE}+{c}" for c in objectives.corrections())
"""The corrected entries: ``"grpo+is"``, ``"grpo+tis"``, ... (``objectives.get("grpo", correction=...)``)."""


def entries() -> list[str]:
    """Every curve the explorer offers: the registry's objectives, then :data:`CORRECTED`."""
    return [*objectives.available(), *CORRECTED]


def split(name: str) -> tuple[str, str | None]:
    """``(objective, correction)`` of an entry: ``"grpo+tis"`` -> ``("grpo", "tis")``, ``"drpo"`` -> ``("drpo",
    None)``."""
    base, _, correction = name.partition("+")
    return base, correction or None


def reads_gap(name: str) -> bool:
    """Whether entry ``name`` reads ``pi_old`` (:attr:`Objective.needs_old`), so the gap moves its curve."""
    return build_objective(name, default_values(GEOMETRY_CONTROLS)).needs_old


def by_name(choices: tuple[Choice, ...]) -> dict[str, Choice]:
    return {c.name: c for c in choices}


def export_controls() -> tuple[Choice, ...]:
    """The geometry controls restricted to :data:`EXPORT_VALUES`."""
    return tuple(c.subset(EXPORT_VALUES[c.name]) for c in GEOMETRY_CONTROLS)


def controls_of(name: str) -> tuple[str, ...]:
    """The geometry controls that set parameters of entry ``name`` (a corrected entry: its objective's),
    in a fixed order, once each."""
    return tuple(dict.fromkeys(PARAM_CONTROLS.get(split(name)[0], {}).values()))


def check_objectives(names: list[str] | tuple[str, ...]) -> list[str]:
    """``names`` if every one is an entry (:func:`entries`); ``ValueError`` naming the unknown ones and the
    valid ones."""
    valid = entries()
    unknown = [n for n in names if n not in valid]
    if unknown:
        raise ValueError(f"unknown objective(s) {', '.join(unknown)}; available: {', '.join(valid)}")
    if not names:
        raise ValueError(f"no objective given; available: {', '.join(valid)}")
    return list(names)


def build_objective(name: str, values: dict[str, Any]) -> objectives.Objective:
    """Entry ``name`` with the parameters its controls set (``values``: control name -> value); a
    corrected entry ``"grpo+tis"`` is ``objectives.get("grpo", correction="tis", ...)``."""
    base, correction = split(name)
    params = {p: values[c] for p, c in PARAM_CONTROLS.get(base, {}).items()}
    return objectives.get(base, correction=correction, **params)


def default_values(choices: tuple[Choice, ...] = GEOMETRY_CONTROLS + LIVE_CONTROLS) -> dict[str, Any]:
    """Control name -> default value."""
    return {c.name: c.default for c in choices}
