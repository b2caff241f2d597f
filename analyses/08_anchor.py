"""The anchor question (REFERENCE.md claim 11) and collapse without a trust region (claim 4):
the ratio's denominator is either the engine's rollout log-probs ("rollout", the DRPO paper's
choice) or the trainer's log-probs recomputed before the update phase ("recompute", which hides
the engine mismatch from the objective). DPPO-TV is also run masking only negative-advantage
tokens (delta_high = 1e9), claim 4's "masking only large-divergence updates on negative-advantage
tokens".

Figures: anchor_fp8, anchor_stress (data: anchor.csv, anchor_summary.csv).
"""

import sys

from drpo_sim import figures
from drpo_sim.reproduce import script_main

FP8_STALE = {"noise_std": 0.1, "precision": "fp8_e4m3", "staleness": 8}
STRESS = {"bias_std": 1.0, "noise_std": 0.3, "staleness": 16, "lr": 0.2}
VARIANTS = ["pg_is", "cispo", "grpo", "dppo_tv", "dppo_tv (A<0 only)", "drpo"]
SPEC = {
    "name": "anchor",
    "config": {**figures.TABULAR_TASK},
    "settings": {
        "fp8_stale_rollout": {"title": "fp8-like, 8 stale: rollout anchor", **FP8_STALE, "anchor": "rollout"},
        "fp8_stale_recompute": {"title": "fp8-like, 8 stale: recomputed anchor", **FP8_STALE, "anchor": "recompute"},
        "stress_rollout": {"title": "stress: rollout anchor", **STRESS, "anchor": "rollout"},
        "stress_recompute": {"title": "stress: recomputed anchor", **STRESS, "anchor": "recompute"},
    },
    "variants": {**{m: (m, {}) for m in VARIANTS if "(" not in m}, "dppo_tv (A<0 only)": ("dppo_tv", {"delta_high": 1e9})},
    "figures": {
        "anchor_fp8": {"title": "Ratio anchored to the rollout or to the recomputed trainer policy, fp8-like engine, 8 stale",
                       "variants": VARIANTS, "settings": ["fp8_stale_rollout", "fp8_stale_recompute"]},
        "anchor_stress": {"title": "The same under stress: engine bias 1, noise 0.3, 16 stale, lr 0.2",
                          "variants": VARIANTS, "settings": ["stress_rollout", "stress_recompute"]},
    },
    "quick": {"steps": 120, "seeds": 6},
    "full": {"steps": 200, "seeds": 32},
}


def run(out, profile, formats):
    return figures.panel_figures(out, SPEC, profile, formats=formats)


if __name__ == "__main__":
    sys.exit(script_main(run, __doc__))
