"""Each of DRPO's divergence penalties (l2, KL, TV, K3) tuned over the same grid of thresholds, on
seeds the comparison never uses (claim 10: "KL, TV and K3 regularisers of the sampled token do
worse than DRPO's" is only fair if each gets its best delta).

The grid and the settings are the ablations' (:data:`~drpo_sim.paper.analyses.ablations.TUNING_DELTAS`,
:data:`~drpo_sim.paper.analyses.ablations.SETTINGS`): five thresholds per divergence, the same
budget for each. Claim 10 takes, per divergence and setting, the delta with the highest
final-reward IQM here, and compares the divergences at their chosen deltas on the ablations'
seeds, which run every divergence at every delta of the grid.

Figure: divergence_tuning (data: divergence_tuning_summary.csv, divergence_tuning_seeds.csv).
"""

from drpo_sim.paper import jobs
from drpo_sim.paper.analyses.ablations import DIVERGENCES, SETTINGS, TUNING_DELTAS
from drpo_sim.paper.specs import TABULAR_TASK, Profile, TuningSpec

#: the tuning runs' seeds start here, far from the evaluation seeds (0, 1, ...)
FIRST_SEED = 1000

SPEC = TuningSpec(
    name="divergence_tuning",
    config=TABULAR_TASK,
    settings=SETTINGS,
    methods=DIVERGENCES,
    deltas=TUNING_DELTAS,
    quick=Profile(steps=80, seeds=3, first_seed=FIRST_SEED),
    full=Profile(steps=200, seeds=8, first_seed=FIRST_SEED),
)


def run(out, profile, formats, runner):
    return jobs.tuning_figures(out, SPEC, profile, runner, formats=formats)
