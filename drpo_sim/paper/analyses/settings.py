"""DRPO paper Figure 3: convergence of pg_is, grpo, spo, dppo_tv and drpo in six simulated
settings mirroring the paper's six (claims 4 and 6).

Figure: convergence_settings (data: settings.csv, settings_summary.csv).
"""

from drpo_sim.config import PAPER_METHODS
from drpo_sim.paper import jobs
from drpo_sim.paper.specs import BF16, FP8, TABULAR_TASK, PanelFigure, PanelSpec, Profile, Setting, Variant

#: DRPO at DPPO-TV's threshold: the same geometry as DPPO-TV (claim 6)
DRPO_AT_DPPO_DELTA = Variant("drpo", {"delta": 0.15})

FIGURE = PanelFigure("convergence_settings",
                     "Six settings mirroring DRPO paper Figure 3 (tabular task, 8 prompts x 4 tokens, prefix reward)",
                     (*PAPER_METHODS, DRPO_AT_DPPO_DELTA.label))

SPEC = PanelSpec(
    name="settings",
    # the tabular task, 4 mini-batch updates per batch, ratio anchored to the rollout log-probs
    config=TABULAR_TASK,
    settings=(
        Setting("bf16", "mild noise (bf16-like rollouts)", BF16),
        Setting("fp8_rollout", "fp8-like rollouts", FP8),
        Setting("fp8_both", "fp8-like rollouts and trainer", {**FP8, "trainer_precision": "fp8_e4m3"}),
        Setting("stale", "bf16-like, 16 updates stale", {**BF16, "staleness": 16}),
        Setting("vocab_large", "bf16-like, V = 2048", {**BF16, "vocab_size": 2048}),
        Setting("vocab_small", "bf16-like, V = 32", {**BF16, "vocab_size": 32}),
    ),
    # DRPO at the paper's delta and at DPPO-TV's
    variants=(*(Variant(m) for m in PAPER_METHODS), DRPO_AT_DPPO_DELTA),
    figures=(FIGURE,),
    quick=Profile(steps=80, seeds=4),
    full=Profile(steps=250, seeds=32),
)


def run(out, profile, formats, runner):
    return jobs.panel_figures(out, SPEC, profile, runner, formats=formats)
