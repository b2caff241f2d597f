"""DRPO paper Figures 9 and 10: DPPO-TV's sensitivity to its threshold delta and DRPO's to its
delta, at two engine-noise levels (REFERENCE.md claim 7).

Figure: threshold_sensitivity (data: threshold_sensitivity.csv; resumable cell store under sweeps/).
"""

import sys

from drpo_sim import figures
from drpo_sim.reproduce import script_main

SPEC = {
    "config": {**figures.TABULAR_TASK, "staleness": 8},
    "noise_std": [0.1, 1.0],
    "dppo_tv.delta": [0.05, 0.1, 0.15, 0.3, 0.6],
    "drpo.delta": [12.5, 5.0, 2.5, 1.0, 0.5, 0.15],
    "quick": {"steps": 120, "seeds": 6},
    "full": {"steps": 200, "seeds": 32},
}


def run(out, profile, formats):
    return figures.sensitivity_figures(out, SPEC, profile, formats=formats)


if __name__ == "__main__":
    sys.exit(script_main(run, __doc__))
