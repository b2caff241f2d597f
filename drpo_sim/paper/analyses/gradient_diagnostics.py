"""Every objective's sampled gradient against the exact gradient of the expected reward (issue 16,
item 5): cosine, bias, variance and the ratios' effective sample size over a grid of mismatch size
(the engine's Gaussian logit noise) and staleness (updates since the rollout), in the two worlds
whose expected gradient is known in closed form, the long-tail bandit and the tabular task, and in
a small arena (8 tokens, responses of 3: every response enumerated, the expected reward's gradient
by autograd, the engine a real bf16 / fp16 / fp8 pass over the same parameters); and
the pre-registered test of whether DRPO at ``delta = 12.5`` produces a different gradient from
``pg_is`` (margin :data:`drpo_sim.gradients.EQUIVALENCE_MARGIN`, fixed before the full sweep ran).

Figures: gradient_diagnostics (bandit), gradient_diagnostics_tabular, gradient_diagnostics_arena (data:
the same names .csv, *_equivalence.csv, and *_all_objectives.csv: every objective in one cell).
How to read them: the README, "Gradients against the truth".
"""

from drpo_sim.paper import jobs
from drpo_sim.paper.specs import GradientArenaProfile, GradientSpec, GradientWorldProfile

GRID_NOISE = (0.0, 0.05, 0.1, 0.3, 0.6, 1.0)
GRID_STALENESS = (0, 2, 8)

SPEC = GradientSpec(
    quick={"bandit": GradientWorldProfile(vocab=64, samples=16, batches=200, noise=(0.0, 0.3), staleness=(0, 2)),
           "tabular": GradientWorldProfile(vocab=16, samples=4, batches=100, noise=(0.0, 0.3), staleness=(0, 2)),
           "arena": GradientArenaProfile(samples=8, batches=100, precisions=("fp32", "bf16"), staleness=(0, 1))},
    full={"bandit": GradientWorldProfile(vocab=1024, samples=64, batches=20000, noise=GRID_NOISE,
                                         staleness=GRID_STALENESS),
          "tabular": GradientWorldProfile(vocab=64, samples=8, batches=2000, noise=GRID_NOISE,
                                          staleness=GRID_STALENESS),
          "arena": GradientArenaProfile(samples=8, batches=3000, precisions=("fp32", "bf16", "fp16", "fp8"),
                                        staleness=(0, 1, 4))},
    step_kl=1e-3,
    seed=0,
)


def run(out, profile, formats, runner):
    return jobs.gradient_figures(out, SPEC, profile, formats=formats)
