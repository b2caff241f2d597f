"""The analyses: one module per figure or group of figures of the papers, in the order they run.

Each module states its configuration at the top, as one spec of :mod:`drpo_sim.paper.specs`
(with the named settings and variants other code refers to), and defines
``run(out, profile, formats, runner) -> list[FigureRecord]``, which calls one job of
:mod:`drpo_sim.paper.jobs`. ``drpo-sim reproduce`` runs them in :data:`ORDER`, then the claims
(:mod:`drpo_sim.paper.claims`, which import the specs) and the report; ``drpo-sim reproduce
--only NAME`` runs one.

They are package modules, so a non-editable install reproduces as well as a checkout.
"""

from types import ModuleType

from drpo_sim.paper.analyses import (
    ablations,
    anchor,
    arena,
    arena_reward_scales,
    arena_three_policies,
    convergence,
    divergence_tuning,
    fixed_points,
    gradient_diagnostics,
    phase,
    replay_sim,
    reward_scales,
    settings,
    thresholds,
    tiny_lm,
    weight_table,
)

#: The analyses in the order they run, by name.
ORDER: dict[str, ModuleType] = {
    "weight_table": weight_table,
    "fixed_points": fixed_points,
    "gradient_diagnostics": gradient_diagnostics,
    "convergence": convergence,
    "settings": settings,
    "phase": phase,
    "thresholds": thresholds,
    "divergence_tuning": divergence_tuning,
    "ablations": ablations,
    "reward_scales": reward_scales,
    "anchor": anchor,
    "replay_sim": replay_sim,
    "tiny_lm": tiny_lm,
    "arena": arena,
    "arena_reward_scales": arena_reward_scales,
    "arena_three_policies": arena_three_policies,
}
