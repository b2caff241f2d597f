"""``drpo-sim lm``: the tiny transformer lab from the command line.

::

    drpo-sim lm pretrain --out DIR                     pretrain (or find in DIR) the checkpoint
    drpo-sim lm train --objective drpo --param drpo.delta=2.5 --precision bf16 --seed 0 \\
                      --steps 150 --out DIR [--save-tokens]          one RL run
    drpo-sim lm compare [--quick|--full] --out DIR [--objectives pg_is,drpo] [--precisions bf16,fp8] \\
                      [--seeds N] [--jobs N]           objectives x precisions x seeds, figures

:func:`add_parser` adds the ``lm`` subcommand to the main parser's subparsers; each handler
returns an exit code and raises ``ValueError`` for bad input (the main CLI prints it in one line
and exits with 2).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

CACHE = "lm_cache"


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``lm`` (with ``pretrain``, ``train``, ``compare``) to ``subparsers``; return its parser."""
    lm = subparsers.add_parser("lm", help="the tiny transformer lab: RL from real reduced-precision rollouts",
                               description=__doc__.split("\n\n")[0])
    sub = lm.add_subparsers(dest="lm_command", required=True)

    p = sub.add_parser("pretrain", help="supervised pretraining on the sorting task (cached by configuration)")
    p.add_argument("--out", required=True, help="checkpoint directory (the file is named by a hash of the configuration)")
    _pretrain_flags(p)
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_pretrain)

    p = sub.add_parser("train", help="one RL run from a reduced-precision engine; writes a result table")
    p.add_argument("--objective", default="drpo", help="objective from the registry (default drpo; see drpo-sim list)")
    p.add_argument("--param", action="append", metavar="METHOD.NAME=VALUE", help="objective parameter, e.g. drpo.delta=2.5 (repeatable)")
    p.add_argument("--precision", default="bf16", help="engine precision: fp32, bf16, fp16, fp8 (default bf16)")
    p.add_argument("--seed", type=int, default=0, help="RL seed (default 0)")
    p.add_argument("--steps", type=int, default=None, help="RL steps (default 150)")
    p.add_argument("--lr", type=float, default=None, help="AdamW learning rate (default 3e-4)")
    p.add_argument("--out", required=True, help="output directory: the result table, the token log, the checkpoint cache")
    p.add_argument("--checkpoint", help="pretrained checkpoint (.pt from `drpo-sim lm pretrain`; default: pretrain into OUT/lm_cache)")
    p.add_argument("--save-tokens", action="store_true", help="also write the token log (one TokenBatch per update)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("compare", help="objectives x engine precisions x seeds: result table, figures, summary, token logs")
    group = p.add_mutually_exclusive_group()
    group.add_argument("--quick", dest="profile", action="store_const", const="quick", help="the fast profile (default)")
    group.add_argument("--full", dest="profile", action="store_const", const="full", help="the full profile (8 seeds x 150 steps)")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--objectives", help="comma-separated objectives (default pg_is,grpo,dppo_tv,drpo)")
    p.add_argument("--precisions", help="comma-separated engine precisions (default fp32,bf16,fp8)")
    p.add_argument("--seeds", type=int, help="number of seeds (default: the profile's)")
    p.add_argument("--steps", type=int, help="RL steps (default: the profile's)")
    p.add_argument("--jobs", type=int, help="worker processes (default: the number of CPUs)")
    p.add_argument("--param", action="append", metavar="METHOD.NAME=VALUE", help="objective parameter, e.g. drpo.delta=2.5 (repeatable)")
    p.add_argument("--formats", default="png", help="comma-separated image formats: png, pdf, svg (default png)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_compare, profile="quick")
    return lm


def _pretrain_flags(p: argparse.ArgumentParser) -> None:
    from drpo_sim.lm.pretrain import PretrainConfig

    d = PretrainConfig()
    p.add_argument("--n-digits", type=int, default=d.n_digits, help=f"digits to sort (default {d.n_digits})")
    p.add_argument("--steps", type=int, default=d.steps, help=f"supervised steps (default {d.steps})")
    p.add_argument("--batch-size", type=int, default=d.batch_size, help=f"sequences per step (default {d.batch_size})")
    p.add_argument("--lr", type=float, default=d.lr, help=f"peak AdamW learning rate (default {d.lr:g})")
    p.add_argument("--seed", type=int, default=d.seed, help=f"seed (default {d.seed})")


def cmd_pretrain(args: argparse.Namespace) -> int:
    from drpo_sim.lm.model import num_parameters
    from drpo_sim.lm.pretrain import PretrainConfig, checkpoint_path, pretrain

    cfg = PretrainConfig(n_digits=args.n_digits, steps=args.steps, batch_size=args.batch_size, lr=args.lr, seed=args.seed)
    cached = checkpoint_path(cfg, args.out).exists()
    ckpt = pretrain(cfg, args.out, progress=not args.no_progress)
    m = ckpt.metrics
    print(f"{ckpt.path} ({'cached' if cached else 'trained'}; {num_parameters(ckpt.model()):,} parameters): "
          f"held-out reward {m['eval_reward']:.3f} (sampled), {m['eval_greedy']:.3f} (greedy), exact {m['eval_exact']:.3f}")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    import contextlib
    import dataclasses

    from drpo_sim.lm.pretrain import PretrainConfig, load_checkpoint, pretrain
    from drpo_sim.lm.rl import LabConfig, train
    from drpo_sim.results import write_results
    from drpo_sim.tokens import TokenLogWriter

    from drpo_sim.sim import parse_params

    params = parse_params(args.param)
    other = sorted(set(params) - {args.objective})
    if other:
        raise ValueError(f"--param names {', '.join(other)}, but the objective is {args.objective!r}")
    fields: dict[str, Any] = {}
    if args.steps is not None:
        fields["steps"] = args.steps
    if args.lr is not None:
        fields["lr"] = args.lr
    cfg = LabConfig(objective=args.objective, params=params.get(args.objective, {}), precision=args.precision,
                    seed=args.seed, **fields)
    out = Path(args.out)
    ckpt = load_checkpoint(args.checkpoint) if args.checkpoint else pretrain(PretrainConfig(), out / CACHE, progress=not args.no_progress)
    stem = f"lm_{cfg.objective}_{cfg.precision}_seed{cfg.seed}"
    tokens = out / f"{stem}_tokens.parquet" if args.save_tokens else None
    with contextlib.ExitStack() as stack:
        writer = None
        if tokens is not None:
            meta = {"source": "drpo_sim.lm", "config": cfg.flat(), "checkpoint": ckpt.path.name if ckpt.path else None}
            writer = stack.enter_context(TokenLogWriter(tokens, metadata=meta))
        df = train(cfg, ckpt, writer, progress=not args.no_progress)
    path = write_results(df, out / f"{stem}.parquet", {"lab": cfg.flat(), "pretrain": dataclasses.asdict(ckpt.config), "pretrain_metrics": ckpt.metrics})
    last = df.tail(min(10, len(df)))
    print(f"{cfg.build_objective()} on a {cfg.precision} engine, seed {cfg.seed}, {cfg.steps} steps: held-out reward "
          f"{df['initial_eval_reward'].iloc[0]:.3f} -> {last['eval_reward'].mean():.3f} (mean of the last {len(last)} steps); "
          f"mean abs(pi - mu) at rollout {df['mismatch_mean'].mean():.2e}; non-finite steps {int(df['nonfinite'].sum())}")
    print(f"results: {path}" + (f"; token log: {tokens}" if tokens else ""))
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from drpo_sim.cli import parse_formats
    from drpo_sim.lm import experiment
    from drpo_sim.sim import parse_params

    fmts = parse_formats(args.formats)
    if args.seeds is not None and args.seeds < 1:
        raise ValueError(f"--seeds must be a positive number of seeds, got {args.seeds}")
    if args.steps is not None and args.steps < 1:
        raise ValueError(f"--steps must be a positive number of steps, got {args.steps}")
    records = experiment.compare(
        objectives=args.objectives or experiment.DEFAULT_OBJECTIVES,
        precisions=args.precisions or experiment.DEFAULT_PRECISIONS,
        seeds=args.seeds,
        profile=args.profile,
        out=args.out,
        jobs=args.jobs,
        params=parse_params(args.param),
        steps=args.steps,
        formats=fmts,
        progress=not args.no_progress,
    )
    import pandas as pd

    summary = pd.read_csv(Path(args.out) / "lm_summary.csv")
    cols = ["method", "precision", "final", "collapse_rate", "mismatch_mean", "masked_frac"]
    print(summary[cols].to_string(index=False, float_format=lambda x: f"{x:.3g}"))
    for r in records:
        print(f"{r.figure:<12} {', '.join(r.files)}  (data: {r.data}, {r.wall_time_s:.1f} s)")
    print(f"results: {Path(args.out) / experiment.RESULTS_FILE}; token logs: {Path(args.out) / 'lm_tokens'}")
    return 0
