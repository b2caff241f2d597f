"""DPPO's sanity test in the arena, where the engine is a reduced-precision pass over the trainer's
own parameters, so the mismatch depends on where training takes them (:mod:`drpo_sim.arena`).

Settings (one cell each): the sanity test under bf16 with every contestant; and, for the control
contestants, the precision split (fp32, where the engine reports the trainer's own log-probs and
nothing may collapse; fp16; fp8), a learning rate three times lower, and a top-1 mixture of four
experts with and without routing replay. The base model is the calibrated one
(``arena_calibration.json``, fixed from statistics at initialisation before any comparison).

Figures: sanity_test, arena_precision, arena_lr, arena_moe, arena_grad_share, arena_order_of_events (data:
sanity_summary.csv, arena.parquet, arena_order_of_events.csv, arena_calibration.json).
"""

from drpo_sim.arena.model import ArenaModel
from drpo_sim.arena.pretrain import BaseModelConfig
from drpo_sim.arena.task import WalkTask
from drpo_sim.arena.train import ArenaConfig, Contestant
from drpo_sim.paper import jobs
from drpo_sim.paper.specs import ArenaProfile, ArenaSetting, ArenaSpec

MINIRL = "MiniRL"
SANITY = "bf16"
MOE_CONTROLS = ("PG-IS", "CISPO", "DPPO-Binary-TV", "DRPO (delta 12.5)")
#: claim 4: the contestants without a trust region, and the trust region they are held against
FREE = ("PG-IS", "CISPO")
TRUST_REGION = "DPPO-Binary-TV"

SPEC = ArenaSpec(
    quick=ArenaProfile(steps=20, seeds=1, eval_every=5, controls=("PG-IS", "DPPO-Binary-TV")),
    full=ArenaProfile(steps=600, seeds=4, eval_every=10),
    # the calibrated knobs (drpo_sim.arena.calibration, figures/arena_calibration.json; the full
    # profile reruns the calibration and stops if it would choose others)
    base=BaseModelConfig(model=ArenaModel(d_model=32, d_mlp=128), task=WalkTask(zipf=2.5), steps=200),
    config=ArenaConfig(lr=1e-3),
    contestants=(
        Contestant.of("pg_is", label="PG-IS"),
        Contestant.of("cispo", label="CISPO"),
        Contestant.of("ppo", anchor="recomputed", label=MINIRL),
        Contestant.of("grpo", label="GRPO-ClipHigher"),
        Contestant.of("dppo_tv", label="DPPO-Binary-TV"),
        Contestant.of("dppo_kl", label="DPPO-Binary-KL"),
        Contestant.of("spo", label="SPO"),
        Contestant.of("drpo", delta=12.5, label="DRPO (delta 12.5)"),
        Contestant.of("drpo", delta=2.5, label="DRPO (delta 2.5)"),
    ),
    controls=("PG-IS", "CISPO", MINIRL, "GRPO-ClipHigher", "DPPO-Binary-TV", "DRPO (delta 12.5)"),
    settings=(
        ArenaSetting(SANITY, "bf16 engine (the sanity test)", controls=False),
        ArenaSetting("fp32", "fp32 engine (no mismatch)", precision="fp32"),
        ArenaSetting("fp16", "fp16 engine", precision="fp16"),
        ArenaSetting("fp8", "fp8 engine (W8A16)", precision="fp8"),
        ArenaSetting("bf16_lr_low", "bf16 engine, learning rate / 3", lr_scale=1 / 3),
        # the mixture costs about three times as much per run: four of the controls
        ArenaSetting("moe", "bf16 engine, 4 experts (top-1)", moe=True, only=MOE_CONTROLS),
        ArenaSetting("moe_replay", "bf16 engine, 4 experts, routing replay", moe=True, routing_replay=True,
                     only=MOE_CONTROLS),
    ),
)


def run(out, profile, formats, runner):
    return jobs.arena_figures(out, SPEC, profile, runner, formats=formats)
