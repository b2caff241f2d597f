"""DPPO paper Figure 2 from injected engine noise, and the rare-token analysis: a DRPO run of the
simulator saved as a token log and replayed like a real one (ratio and abs(pi - mu) against mu;
where each objective masks, attenuates or corrects; tokens with mu <= 0.01). REFERENCE.md claim 5.

Figures: replay_sim_mismatch, _regions, _weights, _rare_tokens, _by_step (data: replay_sim_*.csv,
replay_sim_replay.json; the log in token_logs/).
"""

import sys

from drpo_sim import figures
from drpo_sim.reproduce import script_main

SPEC = {
    "method": "drpo",
    # the convergence figure's setting: fp8-like engine, rollouts 8 updates stale
    "config": {**figures.TABULAR_TASK, "noise_std": 0.1, "precision": "fp8_e4m3", "staleness": 8},
    "quick": {"steps": 100, "seeds": 4},
    "full": {"steps": 300, "seeds": 16},
}


def run(out, profile, formats):
    return figures.replay_sim_figures(out, SPEC, profile, formats=formats)


if __name__ == "__main__":
    sys.exit(script_main(run, __doc__))
