"""Beyond the papers: the phase diagram. Collapse rate and final reward of five objectives over a
grid of engine noise x staleness, and each objective's stable region.

Figure: phase_diagram (data: phase_diagram.csv; resumable cell store under sweeps/).
"""

import sys

from drpo_sim import figures
from drpo_sim.reproduce import script_main

SPEC = {
    "methods": ("pg_is", "grpo", "spo", "dppo_tv", "drpo"),
    # Gaussian engine noise on the logits, no rounding: the corner (0, 0) is exactly on-policy
    "config": {**figures.TABULAR_TASK},
    "quick": {"steps": 120, "seeds": 6, "noise_std": [0.0, 0.3, 1.0], "staleness": [0, 8, 16]},
    "full": {"steps": 200, "seeds": 24, "noise_std": [0.0, 0.1, 0.3, 0.6, 1.0], "staleness": [0, 4, 8, 16, 32]},
}


def run(out, profile, formats):
    return figures.phase_figures(out, SPEC, profile, formats=formats)


if __name__ == "__main__":
    sys.exit(script_main(run, __doc__))
