"""Beyond the papers: where each objective's update brings pi to rest when mu is frozen (the
per-token maximisers of docs/reference.md: DRPO pi* = mu + sign(A) delta, SPO r* = 1 + sign(A) eps).

Figure: fixed_point_flows (data: rest_points.csv, fixed_point_rest_curves.csv).
"""

from drpo_sim.paper import jobs
from drpo_sim.paper.specs import FlowSpec, Variant

# the objectives drawn, with their thresholds
SPEC = FlowSpec(
    objectives=(
        Variant("pg_is"),
        Variant("grpo"),
        Variant("dppo_tv"),
        Variant("spo", {"eps": 0.2}),
        Variant("drpo", {"delta": 0.15}),
        Variant("drpo"),
    )
)


def run(out, profile, formats, runner):
    return jobs.flow_figures(out, SPEC, formats=formats)
