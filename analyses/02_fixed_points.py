"""Beyond the papers: where each objective's update brings pi to rest when mu is frozen
(REFERENCE.md's per-token maximisers: DRPO pi* = mu + sign(A) delta, SPO r* = 1 + sign(A) eps).

Figure: fixed_point_flows (data: rest_points.csv, fixed_point_rest_curves.csv).
"""

import sys

from drpo_sim import figures
from drpo_sim.reproduce import script_main

# the objectives drawn, with their thresholds
OBJECTIVES = (
    ("pg_is", {}), ("grpo", {}), ("dppo_tv", {}), ("spo", {"eps": 0.2}), ("drpo", {"delta": 0.15}), ("drpo", {}),
)


def run(out, profile, formats):
    return figures.dynamics_figures(out, OBJECTIVES, formats=formats)


if __name__ == "__main__":
    sys.exit(script_main(run, __doc__))
