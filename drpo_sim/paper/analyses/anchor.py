"""The anchor question (claim 11) and collapse without a trust region (claim 4): the ratio's
denominator is either the engine's rollout log-probs ("rollout", the DRPO paper's choice) or the
trainer's log-probs recomputed before the update phase ("recompute", which hides the engine
mismatch from the objective). DPPO-TV is also run masking only negative-advantage tokens
(delta_high = 1e9), claim 4's "masking only large-divergence updates on negative-advantage tokens".

Figures: anchor_fp8, anchor_stress (data: anchor.csv, anchor_summary.csv).
"""

from drpo_sim.paper import jobs
from drpo_sim.paper.specs import FP8_STALE, STRESS, TABULAR_TASK, PanelFigure, PanelSpec, Profile, Setting, Variant

#: DPPO-TV masking only tokens with A < 0 (claim 4)
NEG_ONLY = Variant("dppo_tv", {"delta_high": 1e9}, label="dppo_tv (A<0 only)")
#: the methods without a trust region (claim 4)
FREE = ("pg_is", "cispo")
VARIANTS = (*(Variant(m) for m in (*FREE, "grpo", "dppo_tv", "drpo")), NEG_ONLY)
#: the order of the figures' legends
SHOWN = ("pg_is", "cispo", "grpo", "dppo_tv", NEG_ONLY.label, "drpo")


def _pair(base: str, title: str, fields: dict) -> tuple[Setting, Setting]:
    return (Setting(f"{base}_rollout", f"{title}: rollout anchor", {**fields, "anchor": "rollout"}),
            Setting(f"{base}_recompute", f"{title}: recomputed anchor", {**fields, "anchor": "recompute"}))


#: each condition under both anchors: (base name, rollout-anchored setting, recompute-anchored setting)
FP8_STALE_PAIR = _pair("fp8_stale", "fp8-like, 8 stale", FP8_STALE)
STRESS_PAIR = _pair("stress", "stress", STRESS)
PAIRS = (("fp8_stale", *FP8_STALE_PAIR), ("stress", *STRESS_PAIR))

FP8_FIGURE = PanelFigure("anchor_fp8", "Ratio anchored to the rollout or to the recomputed trainer policy, fp8-like "
                         "engine, 8 stale", SHOWN, tuple(s.name for s in FP8_STALE_PAIR))
STRESS_FIGURE = PanelFigure("anchor_stress", "The same under stress: engine bias 1, noise 0.3, 16 stale, lr 0.2",
                            SHOWN, tuple(s.name for s in STRESS_PAIR))

SPEC = PanelSpec(
    name="anchor",
    config=TABULAR_TASK,
    settings=(*FP8_STALE_PAIR, *STRESS_PAIR),
    variants=VARIANTS,
    figures=(FP8_FIGURE, STRESS_FIGURE),
    quick=Profile(steps=80, seeds=6),
    full=Profile(steps=200, seeds=32),
)


def run(out, profile, formats, runner):
    return jobs.panel_figures(out, SPEC, profile, runner, formats=formats)
