"""DRPO paper Figure 3: convergence of pg_is, grpo, spo, dppo_tv and drpo in six simulated
settings mirroring the paper's six (REFERENCE.md claims 4 and 6).

Figure: convergence_settings (data: settings.csv, settings_summary.csv).
"""

import sys

from drpo_sim import figures
from drpo_sim.reproduce import script_main

BF16 = {"noise_std": 0.05, "precision": "bf16"}   # offpolicy.NOISE_PRESETS["bf16"]
FP8 = {"noise_std": 0.1, "precision": "fp8_e4m3"}  # offpolicy.NOISE_PRESETS["fp8"]
SPEC = {
    "name": "settings",
    # the tabular task, 4 mini-batch updates per batch, ratio anchored to the rollout log-probs
    "config": {**figures.TABULAR_TASK},
    "settings": {
        "bf16": {"title": "mild noise (bf16-like rollouts)", **BF16},
        "fp8_rollout": {"title": "fp8-like rollouts", **FP8},
        "fp8_both": {"title": "fp8-like rollouts and trainer", **FP8, "trainer_precision": "fp8_e4m3"},
        "stale": {"title": "bf16-like, 16 updates stale", **BF16, "staleness": 16},
        "vocab_large": {"title": "bf16-like, V = 2048", **BF16, "vocab_size": 2048},
        "vocab_small": {"title": "bf16-like, V = 32", **BF16, "vocab_size": 32},
    },
    # DRPO at the paper's delta and at DPPO-TV's (the same geometry: claim 6)
    "variants": {**{m: (m, {}) for m in ("pg_is", "grpo", "spo", "dppo_tv", "drpo")},
                 "drpo (delta 0.15)": ("drpo", {"delta": 0.15})},
    "figures": {"convergence_settings": {
        "title": "Six settings mirroring DRPO paper Figure 3 (tabular task, 8 prompts x 4 tokens, prefix reward)",
        "variants": ["pg_is", "grpo", "spo", "dppo_tv", "drpo", "drpo (delta 0.15)"]}},
    "quick": {"steps": 120, "seeds": 6},
    "full": {"steps": 250, "seeds": 32},
}


def run(out, profile, formats):
    return figures.panel_figures(out, SPEC, profile, formats=formats)


if __name__ == "__main__":
    sys.exit(script_main(run, __doc__))
