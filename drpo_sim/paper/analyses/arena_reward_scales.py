"""Claim 8 in the arena: DRPO with and without the ``abs(A)`` factor on its penalty, as the size of
the advantages is spread across the task's keys (DRPO paper Figure 4's question, in the world whose
mismatch follows the policy).

The same fair ablation as the simulator's (:mod:`~drpo_sim.paper.analyses.reward_scales`):
``drpo_no_abs_adv`` with ``adv_scale="batch"`` replaces each token's ``abs(A)`` by the mini-batch's
mean ``abs(A)`` (per run), so the penalty keeps its average strength and loses only how it is
shared between tokens. The mechanism: the learner sees the rewards of key ``k`` (of ``m``)
multiplied by ``10^(s (k / (m - 1) - 1/2))`` (``ArenaConfig.reward_scale_spread = s``), so the
advantages of different keys differ in size by up to ``10^s`` while the task, the held-out reward
and the engine stay the sanity test's. Unlike the simulator's tabular policy, the transformer
shares its parameters between keys, so the scales also decide which keys dominate each update.

Declared before any run: the spreads of the simulator's analysis (0, 1 and 2 decades), the bf16
engine and learning rate of the sanity test, DRPO at the paper's threshold (12.5) and at DPPO-TV's
(0.15, where the arena's drift makes the penalty act: the sanity test's ``DRPO (delta 0.15)``),
PG-IS as the reference without a penalty, the sanity test's seeds (8) and 400 steps, 16 times
the 25 steps the fastest contestant of the sanity test needs to reach 0.9 held-out reward.
(Measured afterwards: these runs first evaluate at 0.9 at a median of 50-75 steps, so 400 steps are
5 to 8 times that; their held-out reward plateaus from about step 250. ``docs/arena.md`` reports it.)

Figure: arena_reward_scales (data: arena_reward_scales_summary.csv, arena_reward_scales_seeds.csv).
"""

from drpo_sim.arena.train import Contestant
from drpo_sim.objectives import BATCH_SCALE
from drpo_sim.paper import jobs
from drpo_sim.paper.analyses import arena
from drpo_sim.paper.analyses.reward_scales import ABLATION, SPREADS
from drpo_sim.paper.specs import ARENA_REWARD_SCALES, ArenaComparisonSpec, ArenaProfile, ArenaSetting

#: DRPO's thresholds: the paper's, and DPPO-TV's (where the penalty acts in the arena)
DELTAS = (12.5, 0.15)
REFERENCE = "PG-IS"


def label(method: str, delta: float) -> str:
    """The contestant label of DRPO (``"drpo"``) or its fair ablation (:data:`ABLATION`) at ``delta``."""
    return f"DRPO (delta {delta:g}{', abs(A) -> batch mean' if method == ABLATION else ''})"


def contestant(method: str, delta: float) -> Contestant:
    params = {"delta": delta, **({"adv_scale": BATCH_SCALE} if method == ABLATION else {})}
    return Contestant.of(method, label=label(method, delta), **params)


def setting_name(spread: float) -> str:
    return f"spread_{spread:g}"


SPEC = ArenaComparisonSpec(
    name="arena_reward_scales",
    title="Claim 8 in the arena: DRPO against DRPO with abs(A) replaced by the batch's mean abs(A), as the "
          "learner's reward scales spread across keys",
    quick=ArenaProfile(steps=10, seeds=1, eval_every=5),
    full=ArenaProfile(steps=400, seeds=arena.SPEC.full.seeds, eval_every=arena.SPEC.full.eval_every),
    base=arena.SPEC.base,
    config=arena.SPEC.config,
    contestants=(Contestant.of("pg_is", label=REFERENCE),
                 *(contestant(m, d) for d in DELTAS for m in ("drpo", ABLATION))),
    settings=tuple(ArenaSetting(setting_name(s), f"bf16, reward scales over {s:g} decade{'' if s == 1 else 's'}",
                                controls=False, reward_scale_spread=s) for s in SPREADS),
    world=ARENA_REWARD_SCALES,
)


def run(out, profile, formats, runner):
    return jobs.arena_comparison_figures(out, SPEC, profile, runner, formats=formats)
