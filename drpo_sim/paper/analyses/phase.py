"""Beyond the papers: the phase diagram. Collapse rate and final reward of five objectives over a
grid of engine noise x staleness, and each objective's stable region.

Figure: phase_diagram (data: phase_diagram.csv).
"""

from drpo_sim.config import PAPER_METHODS
from drpo_sim.paper import jobs
from drpo_sim.paper.specs import TABULAR_TASK, GridProfile, PhaseSpec

SPEC = PhaseSpec(
    methods=PAPER_METHODS,
    # Gaussian engine noise on the logits, no rounding: the corner (0, 0) is exactly on-policy
    config=TABULAR_TASK,
    quick=GridProfile(steps=80, seeds=4, noise_std=(0.0, 0.3, 1.0), staleness=(0, 8, 16)),
    full=GridProfile(steps=200, seeds=24, noise_std=(0.0, 0.1, 0.3, 0.6, 1.0), staleness=(0, 4, 8, 16, 32)),
)


def run(out, profile, formats, runner):
    return jobs.phase_figures(out, SPEC, profile, runner, formats=formats)
