"""DRPO paper Figures 4, 5 and 11: DRPO against its ablations, at the paper's delta = 12.5 and
at delta = 0.5, where the regulariser binds (REFERENCE.md claims 8, 9, 10):
no abs(A) factor on the penalty (Figure 4), the penalty built from the sampled token's KL, TV or
K3 divergence (Figure 5), and DRPO's penalty only outside DPPO-TV's trust region (Figure 11).

Figures: ablation_abs_adv, ablation_divergences, ablation_mask (data: ablations.csv, ablations_summary.csv).
"""

import sys

from drpo_sim import figures
from drpo_sim.reproduce import script_main

ABLATIONS = ("drpo", "drpo_no_abs_adv", "drpo_kl", "drpo_tv", "drpo_k3", "mask_drpo")
BINDING_DELTA = 0.5
SPEC = {
    "name": "ablations",
    "config": {**figures.TABULAR_TASK},
    "settings": {
        # the convergence figure's setting
        "fp8_stale": {"title": "fp8-like engine, 8 updates stale", "noise_std": 0.1, "precision": "fp8_e4m3", "staleness": 8},
        # a systematic engine bias (fixed per state and token), noise, stale rollouts and a large
        # step: the setting where the probes found the largest reward losses without a trust region
        "stress": {"title": "engine bias 1, noise 0.3, 16 stale, lr 0.2",
                   "bias_std": 1.0, "noise_std": 0.3, "staleness": 16, "lr": 0.2},
    },
    "variants": {
        **{m: (m, {}) for m in ABLATIONS},
        **{f"{m} (delta {BINDING_DELTA:g})": (m, {"delta": BINDING_DELTA}) for m in ABLATIONS},
        "dppo_tv": ("dppo_tv", {}),
        "pg_is": ("pg_is", {}),
    },
    "figures": {
        "ablation_abs_adv": {"title": "DRPO without the abs(A) factor on its penalty (DRPO paper Figure 4)",
                             "variants": ["drpo", "drpo_no_abs_adv", f"drpo (delta {BINDING_DELTA:g})",
                                          f"drpo_no_abs_adv (delta {BINDING_DELTA:g})", "pg_is"]},
        "ablation_divergences": {"title": "DRPO's l2 penalty against KL, TV and K3 penalties of the sampled token (Figure 5)",
                                 "variants": ["drpo", "drpo_kl", "drpo_tv", "drpo_k3",
                                              *(f"{m} (delta {BINDING_DELTA:g})" for m in ("drpo", "drpo_kl", "drpo_tv", "drpo_k3"))]},
        "ablation_mask": {"title": "mask_drpo: DRPO's penalty only outside DPPO-TV's region (Figure 11)",
                          "variants": ["drpo", "mask_drpo", f"drpo (delta {BINDING_DELTA:g})",
                                       f"mask_drpo (delta {BINDING_DELTA:g})", "dppo_tv"]},
    },
    "quick": {"steps": 120, "seeds": 6},
    "full": {"steps": 200, "seeds": 32},
}


def run(out, profile, formats):
    return figures.panel_figures(out, SPEC, profile, formats=formats)


if __name__ == "__main__":
    sys.exit(script_main(run, __doc__))
