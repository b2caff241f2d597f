"""drpo_sim: stability analysis of the policy objectives used to train LLMs with RL.

See ``README.md`` for the tour; the math lives in :mod:`drpo_sim.objectives`.
"""

from drpo_sim import objectives

__version__ = "0.1.0"

__all__ = ["objectives", "__version__"]
