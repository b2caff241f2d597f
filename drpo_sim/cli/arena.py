"""``drpo-sim arena``: the arena from the command line.

::

    drpo-sim arena calibrate --out DIR
        measure the calibration grid at initialisation; DIR/arena_calibration.json
    drpo-sim arena run --out FILE.parquet [--objectives pg_is,cispo,ppo@recomputed,drpo] \\
        [--param drpo.delta=2.5] [--precision bf16] [--moe] [--routing-replay] [--seeds 4] \\
        [--steps 800] [--lr 3e-4] [--reward-scale-spread 0] [--response-len 64 --max-len 66] \\
        [--calibration FILE] [--device cpu|cuda]
        every objective x seed in one batch; the table, and the summary on stdout

The defaults are the arena analysis's (:data:`drpo_sim.paper.analyses.arena.SPEC`): its
calibrated base model and its settings, so ``drpo-sim arena run`` with no option trains what the
sanity test trains. ``NAME@recomputed`` anchors an objective to the trainer's recomputed
log-probs (``ppo@recomputed`` is MiniRL). An impossible configuration (an unknown precision,
routing replay without MoE, a response longer than the model's context) is a one-line error and
exit status 2.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

import pandas as pd

from drpo_sim.arena import calibration
from drpo_sim.arena.train import ArenaConfig, Contestant, train
from drpo_sim.config import parse_names, parse_params
from drpo_sim.paper.analyses.arena import SPEC
from drpo_sim.results import write_results
from drpo_sim.summaries import arena_summary


def configure_arena(parser: argparse.ArgumentParser) -> None:
    """``arena`` with ``calibrate`` and ``run``."""
    sub = parser.add_subparsers(dest="arena_command", required=True)
    p = sub.add_parser("calibrate", help="measure the calibration grid at initialisation and choose the knobs")
    p.add_argument("--out", required=True, help="directory for arena_calibration.json")
    p.set_defaults(func=run_calibrate)

    cfg = SPEC.config
    p = sub.add_parser("run", help="train objectives x seeds in the arena; write a result table")
    p.add_argument("--out", required=True, help="result table (.parquet)")
    p.add_argument("--objectives", default="pg_is,cispo,ppo@recomputed,grpo,dppo_tv,drpo",
                   help="comma-separated objectives; NAME@recomputed anchors to the trainer's recomputed "
                        "log-probs (default: %(default)s)")
    p.add_argument("--param", action="append", default=[], metavar="OBJ.NAME=VALUE",
                   help="an objective parameter, e.g. drpo.delta=2.5 (repeatable)")
    p.add_argument("--precision", default=cfg.precision, help="the engine: fp32, bf16, fp16 or fp8 (default bf16)")
    p.add_argument("--moe", action="store_true", help=f"a top-1 mixture of {SPEC.n_experts} experts")
    p.add_argument("--routing-replay", action="store_true", help="the trainer replays the engine's routes (R3)")
    p.add_argument("--seeds", type=int, default=SPEC.full.seeds, help="seeds 0..N-1 (default %(default)s)")
    p.add_argument("--steps", type=int, default=SPEC.full.steps, help="RL steps (default %(default)s)")
    p.add_argument("--lr", type=float, default=cfg.lr, help="AdamW learning rate (default %(default)s)")
    p.add_argument("--reward-scale-spread", type=float, default=cfg.reward_scale_spread, metavar="DECADES",
                   help="spread the learner's reward scales across the task's keys over this many decades "
                        "(0 to 6; default %(default)s)")
    p.add_argument("--eval-every", type=int, default=SPEC.full.eval_every, help="held-out evaluation period")
    p.add_argument("--response-len", type=int, default=None, help="response length H (default: the calibrated 64)")
    p.add_argument("--max-len", type=int, default=None, help="the model's context (default: the calibrated model's)")
    p.add_argument("--calibration", default=None, help="an arena_calibration.json to take the base model from")
    p.add_argument("--device", default="cpu", help="torch device (cpu or cuda)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run_arena)


def run_calibrate(args: argparse.Namespace) -> int:
    result = calibration.calibrate(progress=True)
    path = calibration.write({**result, "profile": "cli"}, args.out)
    print(f"chose {json.dumps(result['knobs'])}; wrote {path}")
    return 0


def contestants_from(names: str, params: list[str]) -> list[Contestant]:
    """``--objectives`` and ``--param`` as contestants (module docstring)."""
    by_objective = parse_params(params)
    out = []
    for entry in parse_names(names):
        name, _, anchor = entry.partition("@")
        out.append(Contestant.of(name, anchor=anchor or "rollout", **by_objective.get(name, {})))
    unused = set(by_objective) - {c.objective for c in out}
    if unused:
        raise ValueError(f"--param names {', '.join(sorted(unused))}, which is not among --objectives")
    if not out:
        raise ValueError("--objectives is empty")
    return out


def config_from(args: argparse.Namespace) -> ArenaConfig:
    base = calibration.load(args.calibration) if args.calibration else SPEC.base
    if args.moe:
        base = dataclasses.replace(base, model=dataclasses.replace(base.model, n_experts=SPEC.n_experts))
    if args.response_len is not None:
        base = dataclasses.replace(base, task=dataclasses.replace(base.task, response_len=args.response_len))
    if args.max_len is not None:
        base = dataclasses.replace(base, model=dataclasses.replace(base.model, max_len=args.max_len))
    return dataclasses.replace(SPEC.config, base=base, precision=args.precision, routing_replay=args.routing_replay,
                               steps=args.steps, lr=args.lr, eval_every=args.eval_every,
                               reward_scale_spread=args.reward_scale_spread)


def run_arena(args: argparse.Namespace) -> int:
    if args.seeds < 1:
        raise ValueError(f"--seeds must be at least 1, got {args.seeds}")
    out = Path(args.out)
    if out.suffix != ".parquet":
        raise ValueError(f"--out {out}: the result table is a .parquet file")
    config = config_from(args)
    contestants = contestants_from(args.objectives, args.param)
    df = train(config, contestants, list(range(args.seeds)), device=args.device, progress=not args.no_progress)
    write_results(df, out, {"arena": config.flat(), "contestants": [c.spec() for c in contestants],
                            "device": str(args.device)})
    with pd.option_context("display.width", 200, "display.max_columns", 30):
        print(arena_summary(df).to_string(index=False))
    print(f"wrote {out}")
    return 0
