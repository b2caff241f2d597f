"""``drpo-sim gradients``: each objective's sampled gradient against the exact gradient of the
expected reward, in the long-tail bandit with an engine off by Gaussian logit noise
(:mod:`drpo_sim.gradients`)."""

from __future__ import annotations

import argparse

import numpy as np
import pandas as pd

from drpo_sim import analysis, gradients
from drpo_sim._io import write_csv
from drpo_sim.config import REPLAY_OBJECTIVES, parse_names, parse_params
from drpo_sim.envs.bandit import LongTailBandit


def configure_gradients(p: argparse.ArgumentParser) -> None:
    p.add_argument("--objectives", default=",".join(REPLAY_OBJECTIVES),
                   help="comma-separated objectives (default %(default)s)")
    p.add_argument("--param", action="append", metavar="OBJ.NAME=VALUE",
                   help="an objective's parameter, e.g. drpo.delta=0.15 (repeatable)")
    p.add_argument("--vocab", type=int, default=1024, help="the bandit's vocabulary (default %(default)s)")
    p.add_argument("--zipf", type=float, default=LongTailBandit.zipf_exponent,
                   help="Zipf exponent of the policy's logits (default %(default)s)")
    p.add_argument("--engine-noise", type=float, default=0.3, metavar="STD",
                   help="std of the Gaussian noise on the engine's logits; 0: on-policy (default %(default)s)")
    p.add_argument("--samples", type=int, default=64, help="tokens per batch (default %(default)s)")
    p.add_argument("--batches", type=int, default=2000, help="independent batches (default %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="seed of the engine's noise and of the batches")
    p.add_argument("--csv", help="also write the table here")
    p.set_defaults(func=run_gradients)


def run_gradients(args: argparse.Namespace) -> int:
    if not (np.isfinite(args.engine_noise) and args.engine_noise >= 0):
        raise ValueError(f"--engine-noise must be a finite number >= 0, got {args.engine_noise}")
    objs = analysis.objective_specs(parse_names(args.objectives), parse_params(args.param))
    env = LongTailBandit(vocab_size=args.vocab, zipf_exponent=args.zipf)
    rng = np.random.default_rng(args.seed)
    logits = env.initial_logits()[0]
    engine = logits + rng.normal(0.0, args.engine_noise, logits.shape)
    table = gradients.gradient_diagnostics(list(objs.values()), logits, engine, env.token_rewards(),
                                           n_samples=args.samples, n_batches=args.batches, rng=rng)
    print(f"# the long-tail bandit, V={args.vocab}, engine logit noise {args.engine_noise:g}; "
          f"{args.batches} batches of {args.samples} tokens; ||grad J|| = "
          f"{np.linalg.norm(gradients.exact_gradient(logits, env.token_rewards())):.4g}")
    with pd.option_context("display.width", 200, "display.max_columns", 50):
        print(table[["objective", *gradients.DIAGNOSTICS]].to_string(index=False, float_format=lambda x: f"{x:.4g}"))
    if args.csv:
        print(f"wrote {write_csv(table, args.csv)}")
    return 0
