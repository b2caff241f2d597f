"""The live bandit run behind the explorer's third view: the selected objectives, trained step by step.

One :class:`drpo_sim.sim.Simulation` per objective on the long-tailed bandit (``env = bandit``),
every one vectorised over the same seeds (common random numbers), advanced a few steps at a time
by the app's periodic callback. The curves are the simulator's own metrics
(:data:`drpo_sim.sim.METRICS`): ``expected_reward`` (exact expected reward of ``pi``) and
``shift_mean`` (mean ``abs(pi - mu)`` over the sampled tokens), averaged over the seeds that are
still finite.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from drpo_sim import objectives
from drpo_sim.sim import SimConfig, Simulation

N_SEEDS = 4
MAX_STEPS = 1000
"""The run stops by itself after this many steps."""
LIVE_FIELDS = ("noise_std", "precision", "staleness", "vocab_size", "lr")
"""The :class:`SimConfig` fields the explorer's live controls set."""


def seed_mean(x: np.ndarray) -> float:
    """Mean over the finite entries (NaN when none is: every seed went non-finite)."""
    x = np.asarray(x, dtype=float)
    ok = np.isfinite(x)
    return float(x[ok].mean()) if ok.any() else float("nan")


@dataclass
class LiveRun:
    """The selected objectives training side by side on one bandit configuration."""

    objs: Mapping[str, objectives.Objective]
    config: Mapping[str, Any]
    n_seeds: int = N_SEEDS
    max_steps: int = MAX_STEPS
    step: int = field(default=0, init=False)
    seconds: float = field(default=0.0, init=False)

    def __post_init__(self) -> None:
        unknown = sorted(set(self.config) - set(LIVE_FIELDS))
        if unknown:
            raise ValueError(f"live run: unknown field(s) {', '.join(unknown)}; valid: {', '.join(LIVE_FIELDS)}")
        self.cfg = SimConfig.from_flat({"env": "bandit", **self.config})
        seeds = list(range(self.n_seeds))
        self.sims = {name: Simulation(self.cfg, obj, seeds, None) for name, obj in self.objs.items()}

    @property
    def done(self) -> bool:
        return self.step >= self.max_steps

    def advance(self, k: int) -> dict[str, dict[str, list[float]]]:
        """Run up to ``k`` more steps of every objective; the new points of each curve.

        Returns ``{objective: {"step": [...], "reward": [...], "shift": [...]}}`` (seed means).
        """
        k = max(0, min(int(k), self.max_steps - self.step))
        out: dict[str, dict[str, list[float]]] = {n: {"step": [], "reward": [], "shift": []} for n in self.sims}
        t0 = time.perf_counter()
        for i in range(self.step + 1, self.step + k + 1):
            for name, sim in self.sims.items():
                row = sim.step(i)
                out[name]["step"].append(float(i))
                out[name]["reward"].append(seed_mean(row["expected_reward"]))
                out[name]["shift"].append(seed_mean(row["shift_mean"]))
        self.step += k
        self.seconds += time.perf_counter() - t0
        return out

    def describe(self) -> str:
        """One line: the configuration and where the run stands."""
        c = self.config
        return (f"bandit, V = {c.get('vocab_size')}, engine noise {c.get('noise_std')}, {c.get('precision')}, "
                f"{c.get('staleness')} updates stale, lr {c.get('lr')}, {self.n_seeds} seeds; step {self.step} "
                f"of at most {self.max_steps}")
