"""DRPO paper Figures 9 and 10: DPPO-TV's sensitivity to its threshold delta and DRPO's to its
delta, at three engine-noise levels (claim 7).

DPPO-TV's grid ends at delta = 1, where its mask never acts (``abs(pi - mu) <= 1``): it is pg_is
there, the loosest threshold there is. A best delta at an end of the grid is reported as such
(claim 7 cannot then place the best threshold).

Figure: threshold_sensitivity (data: threshold_sensitivity.csv).
"""

from drpo_sim.paper import jobs
from drpo_sim.paper.specs import TABULAR_TASK, Profile, SensitivitySpec

SPEC = SensitivitySpec(
    config={**TABULAR_TASK, "staleness": 8},
    noise_std=(0.1, 0.3, 1.0),
    deltas={"dppo_tv": (0.05, 0.1, 0.15, 0.3, 0.6, 1.0), "drpo": (12.5, 5.0, 2.5, 1.0, 0.5, 0.15)},
    quick=Profile(steps=80, seeds=4),
    full=Profile(steps=200, seeds=32),
)


def run(out, profile, formats, runner):
    return jobs.sensitivity_figures(out, SPEC, profile, runner, formats=formats)
