"""The trust-region map's other objectives in the arena: the objectives of three policies, the
mismatch corrections, the sequence-level ratio and DPPO's Top-K modes, in the sanity test's setting
(the bf16 engine over the trainer's own parameters), beside the sanity test's PG-IS, GRPO-ClipHigher,
DPPO-Binary-TV and DRPO at the paper's threshold as references.

Declared before any run, from the sources' own defaults (``docs/objectives/three_policies.md``,
``gspo.md``, ``dppo.md``), none tuned here: MiniRL as DPPO's code runs it (the clip on
``pi / pi_old``, importance weight to ``mu`` capped at 10); decoupled PPO (Hilton et al. 2022);
GRPO anchored to ``pi_old`` with token TIS (cap 2), IcePop (0.5 / 5), sequence MIS (cap 2) and the
geometric MIS (1.001); GSPO (3e-4 / 4e-4); DPPO's Top-K TV (0.15) and KL (0.05) with the engine's 20
most likely tokens. The base model, engine, learning rate, seeds and length (800 steps, 16 times the
~50 steps the sanity test's contestants need to reach 0.9 held-out reward) are the sanity test's,
so its contestants and these are read on one time axis.

Figure: arena_three_policies (data: arena_three_policies_summary.csv, arena_three_policies_seeds.csv).
"""

from drpo_sim.arena.train import Contestant
from drpo_sim.paper import jobs
from drpo_sim.paper.analyses import arena
from drpo_sim.paper.specs import ArenaComparisonSpec, ArenaProfile, ArenaSetting

REFERENCE = "PG-IS"

SPEC = ArenaComparisonSpec(
    name="arena_three_policies",
    title="The objectives of three policies, the corrections, GSPO and DPPO's Top-K modes in the sanity test's "
          "setting (bf16 engine)",
    quick=ArenaProfile(steps=10, seeds=1, eval_every=5),
    full=ArenaProfile(steps=arena.SPEC.full.steps, seeds=arena.SPEC.full.seeds, eval_every=arena.SPEC.full.eval_every),
    base=arena.SPEC.base,
    config=arena.SPEC.config,
    contestants=(
        Contestant.of("pg_is", label=REFERENCE),
        Contestant.of("grpo", label="GRPO-ClipHigher"),
        Contestant.of("minirl", label="MiniRL (IS to mu, cap 10)"),
        Contestant.of("decoupled_ppo", label="Decoupled PPO"),
        Contestant.of("grpo", correction="tis", cap=2.0, label="GRPO + TIS (cap 2)"),
        Contestant.of("grpo", correction="icepop", label="GRPO + IcePop"),
        Contestant.of("grpo", correction="seq_mis", cap=2.0, label="GRPO + seq-MIS (cap 2)"),
        Contestant.of("grpo", correction="geo_mis", label="GRPO + geo-MIS"),
        Contestant.of("gspo", label="GSPO"),
        Contestant.of("dppo_tv", label="DPPO-Binary-TV"),
        Contestant.of("dppo_topk_tv", label="DPPO-TopK-TV"),
        Contestant.of("dppo_topk_kl", label="DPPO-TopK-KL"),
        Contestant.of("drpo", delta=12.5, label=arena.DRPO_PAPER),
    ),
    settings=(ArenaSetting(arena.SANITY, "bf16 engine (the sanity test)", controls=False),),
)


def run(out, profile, formats, runner):
    return jobs.arena_comparison_figures(out, SPEC, profile, runner, formats=formats)
