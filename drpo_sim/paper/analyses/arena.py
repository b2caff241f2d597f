"""DPPO's sanity test in the arena, where the engine is a reduced-precision pass over the trainer's
own parameters, so the mismatch depends on where training takes them (:mod:`drpo_sim.arena`).

Settings (one cell each): the sanity test under bf16 with every contestant; and, for the control
contestants, the precision split (fp32, where the engine reports the trainer's own log-probs and
nothing may collapse; fp16; fp8), the learning rate three times lower and three times higher
(the higher one under bf16 and fp32, so that a collapse it causes can be told from one the
mismatch causes), and a top-1 mixture of four experts with and without routing replay. The base
model is the calibrated one (``arena_calibration.json``, fixed from statistics at initialisation
before any comparison).

The learning rate, 3e-4, was fixed before any comparison, with the fp32 engine only (no
mismatch): the largest of 1e-3, 3e-4 at which fp32 PG-IS learns the task (0.9 held-out) and does
not collapse. At 1e-3 it peaked at 0.63-0.66 and collapsed on both seeds tried, with no mismatch
at all; at 3e-4 it reached 0.9 within 30 steps and stayed.

Figures: sanity_test, arena_precision, arena_lr, arena_moe, arena_grad_share, arena_order_of_events (data:
sanity_summary.csv, arena.parquet, arena_order_of_events.csv, arena_calibration.json).
"""

from drpo_sim.arena.calibration import MISREAD
from drpo_sim.arena.model import ArenaModel
from drpo_sim.arena.pretrain import BaseModelConfig
from drpo_sim.arena.task import WalkTask
from drpo_sim.arena.train import ArenaConfig, Contestant
from drpo_sim.paper import jobs
from drpo_sim.paper.specs import ArenaProfile, ArenaSetting, ArenaSpec

MINIRL = "MiniRL"
#: PPO with the ratio anchored to the rollout (the engine's mu): claim 11's other side of MiniRL
PPO_ROLLOUT = "PPO (rollout anchor)"
#: DRPO at DPPO-TV's own threshold: claim 6 at equal delta
DRPO_EQUAL = "DRPO (delta 0.15)"
DRPO_PAPER = "DRPO (delta 12.5)"
SANITY = "bf16"
#: the contestants of the costlier control settings (MoE, the higher learning rate)
CORE_CONTROLS = ("PG-IS", "CISPO", "DPPO-Binary-TV", DRPO_PAPER)
#: claim 4: the contestants without a trust region, and the trust region they are held against
FREE = ("PG-IS", "CISPO")
TRUST_REGION = "DPPO-Binary-TV"

SPEC = ArenaSpec(
    quick=ArenaProfile(steps=20, seeds=1, eval_every=5, controls=("PG-IS", "DPPO-Binary-TV")),
    # about 16 times the ~50 steps the contestants need to reach 0.9 held-out; 8 seeds for the
    # sanity test (a paired test on 4 seeds cannot reach p < 0.05), 4 for each control
    full=ArenaProfile(steps=800, seeds=8, eval_every=10, control_seeds=4),
    # the calibrated knobs (drpo_sim.arena.calibration, figures/arena_calibration.json; the full
    # profile reruns the calibration and stops if it would choose others)
    base=BaseModelConfig(model=ArenaModel(d_model=32, d_mlp=128), task=WalkTask(zipf=2.5, misread=MISREAD),
                         steps=1500),
    config=ArenaConfig(lr=3e-4),
    contestants=(
        Contestant.of("pg_is", label="PG-IS"),
        Contestant.of("cispo", label="CISPO"),
        Contestant.of("ppo", anchor="recomputed", label=MINIRL),
        Contestant.of("ppo", label=PPO_ROLLOUT),
        Contestant.of("grpo", label="GRPO-ClipHigher"),
        Contestant.of("dppo_tv", label="DPPO-Binary-TV"),
        Contestant.of("dppo_kl", label="DPPO-Binary-KL"),
        Contestant.of("spo", label="SPO"),
        Contestant.of("drpo", delta=12.5, label=DRPO_PAPER),
        Contestant.of("drpo", delta=2.5, label="DRPO (delta 2.5)"),
        Contestant.of("drpo", delta=0.15, label=DRPO_EQUAL),
    ),
    controls=("PG-IS", "CISPO", MINIRL, "GRPO-ClipHigher", "DPPO-Binary-TV", DRPO_PAPER),
    settings=(
        ArenaSetting(SANITY, "bf16 engine (the sanity test)", controls=False),
        ArenaSetting("fp32", "fp32 engine (no mismatch)", precision="fp32"),
        ArenaSetting("fp16", "fp16 engine", precision="fp16"),
        ArenaSetting("fp8", "fp8 engine (W8A16)", precision="fp8"),
        ArenaSetting("bf16_lr_low", "bf16 engine, learning rate / 3", lr_scale=1 / 3),
        ArenaSetting("bf16_lr_high", "bf16 engine, learning rate x 3", lr_scale=3.0, only=CORE_CONTROLS),
        ArenaSetting("fp32_lr_high", "fp32 engine, learning rate x 3", precision="fp32", lr_scale=3.0,
                     only=CORE_CONTROLS),
        # the mixture costs about three times as much per run: four of the controls
        ArenaSetting("moe", "bf16 engine, 4 experts (top-1)", moe=True, only=CORE_CONTROLS),
        ArenaSetting("moe_replay", "bf16 engine, 4 experts, routing replay", moe=True, routing_replay=True,
                     only=CORE_CONTROLS),
    ),
)


def run(out, profile, formats, runner):
    return jobs.arena_figures(out, SPEC, profile, runner, formats=formats)
