"""Claim 8 with a fair ablation: DRPO with and without the ``abs(A)`` factor on its penalty, as the
size of the advantages is spread across prompts (DRPO paper Figure 4's question).

The ablation replaces each token's ``abs(A)`` by one coefficient for the whole batch, the batch's
mean ``abs(A)`` (``drpo_no_abs_adv`` with ``adv_scale="batch"``): the penalty keeps DRPO's average
strength and loses only how it is shared between tokens. The spread is the mechanism: each
prompt's rewards, as the learner sees them, are scaled by ``10^(s (u_p - 1/2))`` across the
prompts (``reward_scale_spread``, :class:`drpo_sim.sim.TrainConfig`), so advantages of different
prompts differ in size by up to ``10^s``. At ``s = 0`` the two objectives differ only by the
spread the task's own rewards give; as ``s`` grows, the shared coefficient over-penalises the
prompts with small advantages and under-penalises those with large ones. (The tabular policy gives
each prompt logits of their own, whose Adam steps do not depend on the size of their gradients: the
scales reach the runs only through how a penalty's strength is set across prompts, which is the
question, and leave plain policy gradient, the reference ``pg_is``, nearly unchanged.)

Declared before any run: the spreads 0, 1 and 2 decades on the ablations' fp8-like stale setting,
DRPO's two thresholds of the ablations (12.5 and 0.5), and the ablations' seeds and budget.

Figure: reward_scales (data: reward_scales_summary.csv, reward_scales_seeds.csv).
"""

from drpo_sim.objectives import BATCH_SCALE
from drpo_sim.paper import jobs
from drpo_sim.paper.analyses.ablations import BINDING_DELTA
from drpo_sim.paper.specs import (
    FP8_STALE,
    SIMULATOR_REWARD_SCALES,
    TABULAR_TASK,
    PanelFigure,
    PanelSpec,
    Profile,
    Setting,
    Variant,
)

#: the spreads of the reward scales across prompts, in decades
SPREADS = (0.0, 1.0, 2.0)
DELTAS = (12.5, BINDING_DELTA)
ABLATION = "drpo_no_abs_adv"


def _label(method: str, delta: float) -> str:
    scale = ", abs(A) -> batch mean" if method == ABLATION else ""
    return f"{method} (delta {delta:g}{scale})"


def variant(method: str, delta: float) -> Variant:
    """DRPO (``"drpo"``) or its fair ablation (:data:`ABLATION`) at ``delta``."""
    params = {"delta": delta, **({"adv_scale": BATCH_SCALE} if method == ABLATION else {})}
    return Variant(method, params, _label(method, delta))


SETTINGS = tuple(Setting(f"spread_{s:g}", f"reward scales over {s:g} decades (fp8-like, 8 stale)",
                         {**FP8_STALE, "reward_scale_spread": s}) for s in SPREADS)
VARIANTS = (*(variant(m, d) for d in DELTAS for m in ("drpo", ABLATION)), Variant("pg_is"))

FIGURE = PanelFigure("reward_scales", "DRPO against DRPO with abs(A) replaced by the batch's mean abs(A), "
                     "as reward scales spread across prompts (claim 8)", tuple(v.label for v in VARIANTS))

SPEC = PanelSpec(
    name="reward_scales",
    config=TABULAR_TASK,
    settings=SETTINGS,
    variants=VARIANTS,
    figures=(FIGURE,),
    quick=Profile(steps=80, seeds=6),
    full=Profile(steps=200, seeds=32),
    world=SIMULATOR_REWARD_SCALES,
)


def run(out, profile, formats, runner):
    return jobs.panel_figures(out, SPEC, profile, runner, formats=formats)
