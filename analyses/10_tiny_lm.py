"""DPPO paper Figure 2 from real reduced-precision rollouts: a 2-layer transformer trained with RL
on a sorting task, rollouts computed in bf16 or fp8 (float8_e4m3fn weights) against an fp32
trainer; four objectives compared, and the DRPO logs replayed at rollout time.

Figures: lm_reward, lm_mismatch, replay_lm_bf16_*, replay_lm_fp8_* (data: lm_summary.csv,
lm_compare.parquet, replay_lm_*; token logs in lm_tokens/).
"""

import sys

from drpo_sim import figures
from drpo_sim.reproduce import script_main

SPEC = {
    "objectives": ("pg_is", "grpo", "dppo_tv", "drpo"),
    "precisions": ("fp32", "bf16", "fp8"),
    "replay_objective": "drpo",
    "replay_precisions": ("bf16", "fp8"),
    "quick": {"seeds": 2, "steps": 30},
    "full": {"seeds": 8, "steps": 100},
}


def run(out, profile, formats):
    return figures.lm_figures(out, SPEC, profile, formats=formats)


if __name__ == "__main__":
    sys.exit(script_main(run, __doc__))
