"""DRPO paper Figures 4, 5 and 11: DRPO against its ablations, at the paper's delta = 12.5 and
at delta = 0.5, where the regulariser binds (claims 8, 9, 10): no abs(A) factor on the penalty
(Figure 4), the penalty built from the sampled token's KL, TV or K3 divergence (Figure 5), and
DRPO's penalty only outside DPPO-TV's trust region (Figure 11).

Every divergence also runs at every delta of :data:`TUNING_DELTAS`, so that claim 10 can compare
each at the delta its own tuning run chose (:mod:`~drpo_sim.paper.analyses.divergence_tuning`,
on other seeds) on these seeds.

Figures: ablation_abs_adv, ablation_divergences, ablation_mask (data: ablations.csv, ablations_summary.csv).
"""

from drpo_sim.paper import jobs
from drpo_sim.paper.specs import FP8_STALE, STRESS, TABULAR_TASK, PanelFigure, PanelSpec, Profile, Setting, Variant

ABLATIONS = ("drpo", "drpo_no_abs_adv", "drpo_kl", "drpo_tv", "drpo_k3", "mask_drpo")
#: the second threshold, where the regulariser binds
BINDING_DELTA = 0.5
DIVERGENCES = ("drpo", "drpo_kl", "drpo_tv", "drpo_k3")
#: the thresholds each divergence is tuned over (claim 10): the same grid, so the same budget, for each
TUNING_DELTAS = (0.15, BINDING_DELTA, 2.5, 12.5, 50.0)
#: the ablation settings (shared with the tuning run)
SETTINGS = (
    Setting("fp8_stale", "fp8-like engine, 8 updates stale", FP8_STALE),
    Setting("stress", "engine bias 1, noise 0.3, 16 stale, lr 0.2", STRESS),
)


def _at(method: str) -> str:
    return Variant(method, {"delta": BINDING_DELTA}).label


ABS_ADV_FIGURE = PanelFigure("ablation_abs_adv", "DRPO without the abs(A) factor on its penalty (DRPO paper Figure 4)",
                             ("drpo", "drpo_no_abs_adv", _at("drpo"), _at("drpo_no_abs_adv"), "pg_is"))
DIVERGENCES_FIGURE = PanelFigure("ablation_divergences",
                                 "DRPO's l2 penalty against KL, TV and K3 penalties of the sampled token (Figure 5)",
                                 (*DIVERGENCES, *map(_at, DIVERGENCES)))
MASK_FIGURE = PanelFigure("ablation_mask", "mask_drpo: DRPO's penalty only outside DPPO-TV's region (Figure 11)",
                          ("drpo", "mask_drpo", _at("drpo"), _at("mask_drpo"), "dppo_tv"))

SPEC = PanelSpec(
    name="ablations",
    config=TABULAR_TASK,
    settings=SETTINGS,
    variants=(
        *(Variant(m) for m in ABLATIONS),
        *(Variant(m, {"delta": BINDING_DELTA}) for m in ABLATIONS),
        *(Variant(m, {"delta": d}) for m in DIVERGENCES for d in TUNING_DELTAS if d not in (12.5, BINDING_DELTA)),
        Variant("dppo_tv"),
        Variant("pg_is"),
    ),
    figures=(ABS_ADV_FIGURE, DIVERGENCES_FIGURE, MASK_FIGURE),
    quick=Profile(steps=80, seeds=4),
    full=Profile(steps=200, seeds=32),
)


def run(out, profile, formats, runner):
    return jobs.panel_figures(out, SPEC, profile, runner, formats=formats)
