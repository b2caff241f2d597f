"""The headline convergence figure: five objectives under an fp8-like engine with stale rollouts
(REFERENCE.md claim 12: is DRPO at delta = 12.5 measurably different from pg_is?).

Figure: convergence_fp8_stale (data: convergence_fp8_stale.csv, convergence_fp8_stale_summary.csv).
"""

import sys

from drpo_sim import figures
from drpo_sim.reproduce import script_main

SPEC = {
    "name": "convergence_fp8_stale",
    "methods": ("pg_is", "grpo", "spo", "dppo_tv", "drpo"),
    # the tabular task; fp8 e4m3 engine with logit noise 0.1 (offpolicy.NOISE_PRESETS["fp8"],
    # calibrated against the published mismatch sizes); rollouts 8 optimiser updates stale
    "config": {**figures.TABULAR_TASK, "noise_std": 0.1, "precision": "fp8_e4m3", "staleness": 8},
    "quick": {"steps": 150, "seeds": 16},
    "full": {"steps": 300, "seeds": 96},
}


def run(out, profile, formats):
    return figures.convergence_figures(out, SPEC, profile, formats=formats)


if __name__ == "__main__":
    sys.exit(script_main(run, __doc__))
