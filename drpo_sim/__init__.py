"""drpo_sim: stability analysis of the policy objectives used to train LLMs with RL.

See ``README.md`` for the tour and ``docs/layout.md`` for the package's layers; the math lives in
:mod:`drpo_sim.objectives`. The other modules (``sim``, ``offpolicy``, ``stats``, ``run``,
``paper``, ...) are imported on first use (``ds.sim.simulate``), so ``import drpo_sim`` stays light
for code that only needs the objectives.
"""

import importlib

from drpo_sim import objectives

__version__ = "0.1.0"

_LAZY = ("advantages", "analysis", "config", "dynamics", "envs", "explore", "fused", "geometry", "integrations", "lm",
         "logs", "offpolicy", "paper", "plots", "policies", "provenance", "results", "run", "sim", "stats", "summaries",
         "tokens", "tutorials")

__all__ = ["objectives", "__version__", *_LAZY]


def __getattr__(name: str):
    if name in _LAZY:
        return importlib.import_module(f"drpo_sim.{name}")
    raise AttributeError(f"module 'drpo_sim' has no attribute {name!r}")
