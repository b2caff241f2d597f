"""The headline convergence figure: five objectives under an fp8-like engine with stale rollouts
(claim 12: is DRPO at delta = 12.5 measurably different from pg_is?).

Figure: convergence_fp8_stale (data: convergence_fp8_stale.csv, convergence_fp8_stale_summary.csv).
"""

from drpo_sim.config import PAPER_METHODS
from drpo_sim.paper import jobs
from drpo_sim.paper.specs import FP8_STALE, TABULAR_TASK, ConvergenceSpec, Profile

# the tabular task; fp8 e4m3 engine with logit noise 0.1 (the fp8 preset, calibrated against the
# published mismatch sizes); rollouts 8 optimiser updates stale
SPEC = ConvergenceSpec(
    name="convergence_fp8_stale",
    methods=PAPER_METHODS,
    config={**TABULAR_TASK, **FP8_STALE},
    quick=Profile(steps=150, seeds=16),
    full=Profile(steps=300, seeds=96),
)


def run(out, profile, formats, runner):
    return jobs.convergence_figures(out, SPEC, profile, runner, formats=formats)
