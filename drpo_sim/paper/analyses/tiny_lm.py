"""DPPO paper Figure 2 from real reduced-precision rollouts: a 2-layer transformer trained with RL
on a sorting task, rollouts computed in bf16 or fp8 (float8_e4m3fn weights) against an fp32
trainer; four objectives compared, and the DRPO logs replayed at rollout time.

Figures: lm_reward, lm_mismatch, replay_lm_bf16_*, replay_lm_fp8_* (data: lm_summary.csv,
lm_compare.parquet, replay_lm_*; token logs in lm_tokens/).
"""

from drpo_sim.paper import jobs
from drpo_sim.paper.specs import LabProfile, LabSpec

# the objectives and precisions are the lab's defaults (drpo_sim.config.LAB_OBJECTIVES, LAB_PRECISIONS)
SPEC = LabSpec(
    quick=LabProfile(steps=15, seeds=2, token_log_objectives=("pg_is", "drpo")),
    full=LabProfile(steps=100, seeds=8, token_log_objectives=None),
)


def run(out, profile, formats, runner):
    return jobs.lab_experiment_figures(out, SPEC, profile, runner, formats=formats)
