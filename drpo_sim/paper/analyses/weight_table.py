"""DRPO paper Table 1 and Figure 1: every objective's gradient weight w against pi, and its
masked / attenuated / corrective regions over the (mu, pi) plane; DRPO's weight range per delta.

Figures: weight_vs_pi, weight_vs_pi_ablations, weight_plane, drpo_delta_range.
"""

from drpo_sim.geometry import GeometryConfig
from drpo_sim.paper import jobs
from drpo_sim.paper.specs import GeometrySpec

# The geometry is drawn at illustrative thresholds (DPPO-TV's BF16 delta 0.15, PPO's clip 0.2),
# where the regions are visible; at the DRPO paper's delta = 12.5 DRPO's weight is flat, which
# drpo_delta_range shows. The objectives and thresholds are GeometryConfig's fields.
SPEC = GeometrySpec(GeometryConfig(mus=(0.001, 0.01, 0.1, 0.5, 0.9), n_pi=401, n_plane=200))


def run(out, profile, formats, runner):
    return jobs.geometry_figures(out, SPEC, formats=formats)

