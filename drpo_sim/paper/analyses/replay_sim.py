"""DPPO paper Figure 2 from injected engine noise, and the rare-token analysis: a DRPO run of the
simulator saved as a token log and replayed like a real one (ratio and abs(pi - mu) against mu;
where each objective masks, attenuates or corrects; tokens with mu <= 0.01). Claim 5.

Figures: replay_sim_mismatch, _regions, _weights, _rare_tokens, _by_step (data: replay_sim_*.csv,
replay_sim_replay.json; the log in token_logs/).
"""

from drpo_sim.paper import jobs
from drpo_sim.paper.specs import FP8_STALE, TABULAR_TASK, Profile, ReplaySpec

# the convergence figure's setting: fp8-like engine, rollouts 8 updates stale
SPEC = ReplaySpec(
    method="drpo",
    config={**TABULAR_TASK, **FP8_STALE},
    quick=Profile(steps=100, seeds=4),
    full=Profile(steps=300, seeds=16),
)


def run(out, profile, formats, runner):
    return jobs.replay_sim_figures(out, SPEC, profile, formats=formats)
