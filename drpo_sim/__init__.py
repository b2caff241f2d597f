"""drpo_sim: stability analysis of the policy objectives used to train LLMs with RL.

See ``README.md`` for the tour; the math lives in :mod:`drpo_sim.objectives`. The other modules
(``sim``, ``offpolicy``, ``envs``, ``stats``, ``tokens``, ...) are imported on first use
(``ds.sim.simulate``), so ``import drpo_sim`` stays light for code that only needs the objectives.
"""

import importlib

from drpo_sim import objectives

__version__ = "0.1.0"

_LAZY = ("advantages", "analysis", "claims", "dynamics", "envs", "figures", "geometry", "lm", "logs", "offpolicy", "plots",
         "policies", "report", "reproduce", "results", "sim", "stats", "sweep", "tokens", "tutorials")

__all__ = ["objectives", "__version__", *_LAZY]


def __getattr__(name: str):
    if name in _LAZY:
        return importlib.import_module(f"drpo_sim.{name}")
    raise AttributeError(f"module 'drpo_sim' has no attribute {name!r}")
