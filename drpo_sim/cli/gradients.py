"""``drpo-sim gradients``: each objective's sampled gradient against the exact gradient of the
expected reward (:mod:`drpo_sim.gradients`), in the long-tail bandit or the tabular task, with an
engine off by Gaussian logit noise and a trainer some updates past the rollout.

One setting prints the table (``--csv`` writes it); ``--sweep --out DIR`` runs the grid of
mismatch size and staleness and writes ``DIR/gradient_diagnostics.csv``, the figure
``DIR/gradient_diagnostics.png`` and ``DIR/gradient_diagnostics_equivalence.csv``, the
pre-registered test of DRPO at ``delta = 12.5`` against ``pg_is``
(:func:`drpo_sim.gradients.equivalence`); with ``--env tabular`` the names end in ``_tabular``.
``--quick`` (the default) takes a few seconds; ``--full`` is the committed figures' setting
(``figures/gradient_diagnostics*``: about a minute of sweep for each world on two cores). The
profiles are the reproduce stage's (:data:`drpo_sim.paper.analyses.gradient_diagnostics.SPEC`).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import pandas as pd

from drpo_sim import analysis, gradients, plots
from drpo_sim._io import write_csv
from drpo_sim.config import REPLAY_OBJECTIVES, parse_formats, parse_names, parse_params
from drpo_sim.envs.bandit import LongTailBandit
from drpo_sim.envs.tabular import TabularSequence
from drpo_sim.paper.analyses.gradient_diagnostics import SPEC

#: One setting's defaults per world (without ``--sweep``).
SINGLE: dict[str, dict[str, int]] = {"bandit": {"vocab": 1024, "samples": 64, "batches": 2000},
                                     "tabular": {"vocab": 64, "samples": 8, "batches": 500}}
#: The per-update KL of the trainer's steps since the rollout (:func:`drpo_sim.gradients.after_updates`):
#: the sweep's (the reproduce stage ``gradient_diagnostics``).
STEP_KL = SPEC.step_kl

def configure_gradients(p: argparse.ArgumentParser) -> None:
    p.add_argument("--env", choices=("bandit", "tabular"), default="bandit",
                   help="the world: the long-tail bandit or the tabular task (default %(default)s)")
    p.add_argument("--objectives", default=None,
                   help=f"comma-separated objectives (default {','.join(REPLAY_OBJECTIVES)}; with --sweep: "
                   f"{', '.join(gradients.SWEEP_OBJECTIVES)})")
    p.add_argument("--param", action="append", metavar="OBJ.NAME=VALUE",
                   help="an objective's parameter, e.g. drpo.delta=0.15 (repeatable)")
    p.add_argument("--vocab", type=int, default=None, help="the vocabulary (default: 1024 bandit, 64 tabular; "
                   "--sweep: the profile's)")
    p.add_argument("--zipf", type=float, default=LongTailBandit.zipf_exponent,
                   help="Zipf exponent of the initial policy (default %(default)s)")
    p.add_argument("--prompts", type=int, default=TabularSequence.n_prompts,
                   help="the tabular task's prompts (default %(default)s)")
    p.add_argument("--horizon", type=int, default=TabularSequence.horizon,
                   help="the tabular task's response length (default %(default)s)")
    p.add_argument("--engine-noise", type=float, default=0.3, metavar="STD",
                   help="std of the Gaussian noise on the engine's logits; 0: a bit-exact engine (default %(default)s)")
    p.add_argument("--staleness", type=int, default=0, metavar="K",
                   help="updates the trainer made since the rollout (pi_old -> pi; default %(default)s)")
    p.add_argument("--step-kl", type=float, default=STEP_KL,
                   help="KL(pi_before || pi_after) per token of each update (default %(default)s)")
    p.add_argument("--samples", type=int, default=None,
                   help="tokens per batch in the bandit, responses per prompt in the tabular task "
                   "(default: 64 bandit, 8 tabular; --sweep: the profile's)")
    p.add_argument("--batches", type=int, default=None,
                   help="independent batches (default: 2000 bandit, 500 tabular; --sweep: the profile's)")
    p.add_argument("--seed", type=int, default=0, help="seed of the engine's noise and of the batches")
    p.add_argument("--csv", help="also write the table here")
    sweep = p.add_argument_group("the sweep over mismatch size and staleness")
    sweep.add_argument("--sweep", action="store_true", help="run the grid and write the CSV and the figure to --out")
    sweep.add_argument("--out", help="the sweep's output directory")
    profile = sweep.add_mutually_exclusive_group()
    profile.add_argument("--quick", dest="profile", action="store_const", const="quick",
                         help="a few seconds: a small vocabulary, few batches, a 2 x 2 grid (default)")
    profile.add_argument("--full", dest="profile", action="store_const", const="full",
                         help="the committed figures' setting (about a minute per world on two cores)")
    sweep.add_argument("--noise-grid", help="comma-separated engine noise stds (default: the profile's)")
    sweep.add_argument("--staleness-grid", help="comma-separated staleness values (default: the profile's)")
    sweep.add_argument("--formats", default="png", help="the figure's image formats: png, pdf, svg (default png)")
    p.set_defaults(func=run_gradients, profile=None)


def _world(args: argparse.Namespace, vocab: int):
    """``(pi_old's logits, rewards or the task)`` of the chosen world."""
    return gradients.world(args.env, vocab, zipf_exponent=args.zipf, n_prompts=args.prompts, horizon=args.horizon)


def _methods(args: argparse.Namespace, default):
    if args.objectives is None and args.param is None and default is not None:
        return default
    names = parse_names(args.objectives if args.objectives is not None else ",".join(REPLAY_OBJECTIVES))
    return analysis.objective_specs(names, parse_params(args.param))


def _grid(text: str | None, default, cast, flag: str) -> list:
    if text is None:
        return list(default)
    try:
        values = [cast(v) for v in parse_names(text)]
    except ValueError:
        raise ValueError(f"{flag}: not a comma-separated list of numbers: {text!r}") from None
    if not values:
        raise ValueError(f"{flag}: empty list")
    return values


def run_gradients(args: argparse.Namespace) -> int:
    if not (np.isfinite(args.engine_noise) and args.engine_noise >= 0):
        raise ValueError(f"--engine-noise must be a finite number >= 0, got {args.engine_noise}")
    if args.staleness < 0:
        raise ValueError(f"--staleness must be >= 0, got {args.staleness}")
    if not (np.isfinite(args.step_kl) and args.step_kl > 0):
        raise ValueError(f"--step-kl must be a finite number > 0, got {args.step_kl}")
    if args.sweep:
        return _run_sweep(args)
    if args.out is not None or args.noise_grid is not None or args.staleness_grid is not None or args.profile:
        raise ValueError("--out, --quick, --full, --noise-grid and --staleness-grid belong to --sweep")
    d = SINGLE[args.env]
    vocab, samples, batches = (v if v is not None else d[k] for k, v in
                               (("vocab", args.vocab), ("samples", args.samples), ("batches", args.batches)))
    objs = _methods(args, None)
    old, rewards = _world(args, vocab)
    rng = np.random.default_rng(args.seed)
    engine = old + rng.normal(0.0, args.engine_noise, old.shape)
    logits = gradients.after_updates(old, rewards, updates=args.staleness, step_kl=args.step_kl)
    table = gradients.gradient_diagnostics(list(objs.values()), logits, engine, rewards, n_samples=samples,
                                           n_batches=batches, rng=rng, old_logits=old)
    where = (f"the long-tail bandit, V={vocab}" if args.env == "bandit"
             else f"the tabular task, V={vocab}, {args.prompts} prompts x {args.horizon} positions")
    print(f"# {where}, engine logit noise {args.engine_noise:g}, {args.staleness} updates since the rollout "
          f"(KL {args.step_kl:g} each); {batches} batches of {samples} "
          f"{'tokens' if args.env == 'bandit' else 'responses per prompt'}; ||grad J|| = "
          f"{np.linalg.norm(gradients.exact_gradient(logits, rewards)):.4g}")
    with pd.option_context("display.width", 200, "display.max_columns", 50):
        print(table[["objective", *gradients.DIAGNOSTICS]].to_string(index=False, float_format=lambda x: f"{x:.4g}"))
    if args.csv:
        print(f"wrote {write_csv(table, args.csv)}")
    return 0


def _run_sweep(args: argparse.Namespace) -> int:
    if args.out is None:
        raise ValueError("--sweep needs --out DIR")
    if args.csv is not None:
        raise ValueError("--csv is for one setting; --sweep writes DIR/gradient_diagnostics.csv")
    prof = SPEC.profile(args.profile or "quick")[args.env]
    formats = parse_formats(args.formats)
    noise = _grid(args.noise_grid, prof.noise, float, "--noise-grid")
    stale = _grid(args.staleness_grid, prof.staleness, int, "--staleness-grid")
    if any(k < 0 for k in stale):
        raise ValueError(f"--staleness-grid: values must be >= 0, got {stale}")
    vocab, samples, batches = (v if v is not None else getattr(prof, k) for k, v in
                               (("vocab", args.vocab), ("samples", args.samples), ("batches", args.batches)))
    methods = _methods(args, gradients.SWEEP_OBJECTIVES)
    reference = "pg_is" if "pg_is" in methods else None
    old, rewards = _world(args, vocab)
    start = time.perf_counter()
    table = gradients.gradient_sweep(old, rewards, methods=methods, noise_stds=noise, staleness=stale,
                                     step_kl=args.step_kl, n_samples=samples, n_batches=batches,
                                     rng=np.random.default_rng(args.seed), reference=reference)
    elapsed = time.perf_counter() - start
    out, stem = Path(args.out), SPEC.stem(args.env)
    table.insert(0, "env", args.env)
    print(f"# {args.env}, V={vocab}, {batches} batches of {samples}, noise {noise}, staleness {stale} "
          f"(KL {args.step_kl:g} per update): {elapsed:.1f} s")
    print(f"wrote {write_csv(table, out / f'{stem}.csv')}")
    for path in plots.gradient_sweep_figure(table, out / stem, question=gradients.QUESTION, formats=formats):
        print(f"wrote {path}")
    if reference is not None and gradients.QUESTION in set(table["label"]):
        verdict = gradients.equivalence(table, gradients.QUESTION)
        print(f"# {gradients.QUESTION} against pg_is, paired: ||E[g - g_pg_is]|| / ||grad J|| against the margin "
              f"{gradients.EQUIVALENCE_MARGIN:g}")
        print(verdict.to_string(index=False, float_format=lambda x: f"{x:.3g}"))
        print(f"wrote {write_csv(verdict, out / f'{stem}_equivalence.csv')}")
    return 0
