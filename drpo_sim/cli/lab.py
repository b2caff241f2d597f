"""``drpo-sim lm``: the tiny transformer lab from the command line.

::

    drpo-sim lm pretrain --out DIR                     pretrain (or find in DIR) the checkpoint
    drpo-sim lm train --objective drpo --param drpo.delta=2.5 --precision bf16 --seed 0 \\
                      --steps 150 --out DIR [--save-tokens]          one RL run
    drpo-sim lm compare [--quick|--full] --out DIR [--objectives pg_is,drpo] [--precisions bf16,fp8] \\
                      [--seeds N] [--jobs N]           objectives x precisions x seeds, figures

    drpo-sim lm mismatch --out DIR [--precisions bf16,fp16] [--prompts 512] [--csv FILE]
                      the engines' mismatch at initialisation beside the published sizes

``compare``'s profiles are the lab analysis's (:data:`drpo_sim.paper.analyses.tiny_lm.SPEC`), so
``drpo-sim lm compare --quick`` runs what ``drpo-sim reproduce --quick`` runs for the lab.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import time
from pathlib import Path
from typing import Any

import pandas as pd

from drpo_sim._io import write_csv
from drpo_sim.config import LAB_OBJECTIVES, LAB_PRECISIONS, PROFILES, parse_formats, parse_names, parse_params
from drpo_sim.lm.mismatch import PUBLISHED, engine_statistics
from drpo_sim.lm.model import num_parameters
from drpo_sim.lm.precision import PRECISIONS
from drpo_sim.lm.pretrain import PretrainConfig, checkpoint_path, load_checkpoint, pretrain
from drpo_sim.lm.rl import LabConfig, train
from drpo_sim.paper.analyses.tiny_lm import SPEC
from drpo_sim.paper.jobs import lab_figures
from drpo_sim.results import write_results
from drpo_sim.run import lab
from drpo_sim.run.executor import Runner
from drpo_sim.run.store import CellStore
from drpo_sim.tokens import TokenLogWriter


def configure_lm(lm: argparse.ArgumentParser) -> None:
    """``lm`` with ``pretrain``, ``train``, ``compare``, ``mismatch``."""
    sub = lm.add_subparsers(dest="lm_command", required=True)

    p = sub.add_parser("pretrain", help="supervised pretraining on the sorting task (cached by configuration)")
    p.add_argument(
        "--out", required=True, help="checkpoint directory (the file is named by a hash of the configuration)"
    )
    _pretrain_flags(p)
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run_pretrain)

    defaults = LabConfig()
    p = sub.add_parser("train", help="one RL run from a reduced-precision engine; writes a result table")
    p.add_argument("--objective", default=defaults.objective,
                   help=f"objective from the registry (default {defaults.objective}; see drpo-sim list)")
    p.add_argument("--param", action="append", metavar="METHOD.NAME=VALUE",
                   help="objective parameter, e.g. drpo.delta=2.5 (repeatable)")
    p.add_argument("--precision", default=defaults.precision,
                   help=f"engine precision: fp32, bf16, fp16, fp8 (default {defaults.precision})")
    p.add_argument("--seed", type=int, default=0, help="RL seed (default 0)")
    p.add_argument("--steps", type=int, default=None, help=f"RL steps (default {defaults.steps})")
    p.add_argument("--lr", type=float, default=None, help=f"AdamW learning rate (default {defaults.lr:g})")
    p.add_argument(
        "--out", required=True, help="output directory: the result table, the token log, the checkpoint cache"
    )
    p.add_argument("--checkpoint",
                   help="pretrained checkpoint (.pt from `drpo-sim lm pretrain`; default: pretrain into OUT/lm_cache)")
    p.add_argument("--save-tokens", action="store_true", help="also write the token log (one TokenBatch per update)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run_train)

    p = sub.add_parser(
        "compare", help="objectives x engine precisions x seeds: result table, figures, summary, token logs"
    )
    group = p.add_mutually_exclusive_group()
    for name in PROFILES:
        prof = SPEC.profile(name)
        group.add_argument(f"--{name}", dest="profile", action="store_const", const=name,
                           help=f"the {name} profile ({prof.seeds} seeds x {prof.steps} steps)"
                           + (" (default)" if name == "quick" else ""))
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--objectives", help=f"comma-separated objectives (default {','.join(LAB_OBJECTIVES)})")
    p.add_argument("--precisions", help=f"comma-separated engine precisions (default {','.join(LAB_PRECISIONS)})")
    p.add_argument("--seeds", type=int, help="number of seeds (default: the profile's)")
    p.add_argument("--steps", type=int, help="RL steps (default: the profile's)")
    p.add_argument("--jobs", type=int, help="worker processes (default: the number of CPUs)")
    p.add_argument("--param", action="append", metavar="METHOD.NAME=VALUE",
                   help="objective parameter, e.g. drpo.delta=2.5 (repeatable)")
    p.add_argument("--formats", default="png", help="comma-separated image formats: png, pdf, svg (default png)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run_compare, profile="quick")

    p = sub.add_parser("mismatch", help="the engines' mismatch with the trainer at initialisation, beside the "
                                        "published sizes (the statistics a calibration fixes its knobs against)")
    p.add_argument("--out", required=True, help="checkpoint cache directory (pretrains into OUT/lm_cache if needed)")
    p.add_argument("--checkpoint", help="pretrained checkpoint (.pt from `drpo-sim lm pretrain`)")
    p.add_argument("--precisions", default=",".join(PRECISIONS),
                   help=f"comma-separated engine precisions (default {','.join(PRECISIONS)})")
    p.add_argument("--prompts", type=int, default=512, help="responses sampled per precision (default 512)")
    p.add_argument("--seed", type=int, default=0, help="sampling seed (default 0)")
    p.add_argument("--csv", help="also write the table to this CSV file")
    p.add_argument("--no-progress", action="store_true", help="no progress bar while pretraining")
    p.set_defaults(func=run_mismatch)


def _pretrain_flags(p: argparse.ArgumentParser) -> None:
    d = PretrainConfig()
    p.add_argument("--n-digits", type=int, default=d.n_digits, help=f"digits to sort (default {d.n_digits})")
    p.add_argument("--steps", type=int, default=d.steps, help=f"supervised steps (default {d.steps})")
    p.add_argument("--batch-size", type=int, default=d.batch_size, help=f"sequences per step (default {d.batch_size})")
    p.add_argument("--lr", type=float, default=d.lr, help=f"peak AdamW learning rate (default {d.lr:g})")
    p.add_argument("--seed", type=int, default=d.seed, help=f"seed (default {d.seed})")


def run_pretrain(args: argparse.Namespace) -> int:
    cfg = PretrainConfig(
        n_digits=args.n_digits, steps=args.steps, batch_size=args.batch_size, lr=args.lr, seed=args.seed
    )
    cached = checkpoint_path(cfg, args.out).exists()
    ckpt = pretrain(cfg, args.out, progress=not args.no_progress)
    m = ckpt.metrics
    print(
        f"{ckpt.path} ({'cached' if cached else 'trained'}; {num_parameters(ckpt.model()):,} parameters): "
        f"held-out reward {m['eval_reward']:.3f} (sampled), {m['eval_greedy']:.3f} (greedy), exact "
        f"{m['eval_exact']:.3f}"
    )
    return 0


def run_train(args: argparse.Namespace) -> int:
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
    ckpt = (load_checkpoint(args.checkpoint) if args.checkpoint
            else pretrain(PretrainConfig(), out / lab.CACHE_DIR, progress=not args.no_progress))
    stem = f"lm_{cfg.objective}_{cfg.precision}_seed{cfg.seed}"
    tokens = out / f"{stem}_tokens.parquet" if args.save_tokens else None
    with contextlib.ExitStack() as stack:
        writer = None
        if tokens is not None:
            meta = {"source": "drpo_sim.lm", "config": cfg.flat(), "checkpoint": ckpt.path.name if ckpt.path else None}
            writer = stack.enter_context(TokenLogWriter(tokens, metadata=meta))
        df = train(cfg, ckpt, writer, progress=not args.no_progress)
    path = write_results(
        df,
        out / f"{stem}.parquet",
        {"lab": cfg.flat(), "pretrain": dataclasses.asdict(ckpt.config), "pretrain_metrics": ckpt.metrics},
    )
    last = df.tail(min(10, len(df)))
    print(f"{cfg.build_objective()} on a {cfg.precision} engine, seed {cfg.seed}, {cfg.steps} steps: held-out reward "
          f"{df['initial_eval_reward'].iloc[0]:.3f} -> {last['eval_reward'].mean():.3f} (mean of the last {len(last)} "
          f"steps); mean abs(pi - mu) at rollout {df['mismatch_mean'].mean():.2e}; non-finite steps "
          f"{int(df['nonfinite'].sum())}")
    print(f"results: {path}" + (f"; token log: {tokens}" if tokens else ""))
    return 0


def run_compare(args: argparse.Namespace) -> int:
    fmts = parse_formats(args.formats)
    for flag in ("seeds", "steps"):
        value = getattr(args, flag)
        if value is not None and value < 1:
            raise ValueError(f"--{flag} must be a positive number of {flag}, got {value}")
    prof = SPEC.profile(args.profile)
    out = Path(args.out)
    runner = Runner(store=CellStore(out / "cells"), n_jobs=args.jobs, progress=not args.no_progress)
    t0 = time.perf_counter()
    comparison = lab.compare(
        args.objectives or LAB_OBJECTIVES,
        args.precisions or LAB_PRECISIONS,
        seeds=args.seeds or prof.seeds,
        steps=args.steps or prof.steps,
        out=out,
        runner=runner,
        params=parse_params(args.param),
        token_log_objectives=prof.token_log_objectives,
        progress=not args.no_progress,
    )
    comparison.config["profile"] = args.profile
    records = lab_figures(out, comparison, fmts, wall_time_s=time.perf_counter() - t0, summary_file=SPEC.summary_file)
    summary = pd.read_csv(out / SPEC.summary_file)  # what lab_figures wrote
    cols = ["method", "precision", "final", "collapse_rate", "mismatch_mean", "masked_frac"]
    print(summary[cols].to_string(index=False, float_format=lambda x: f"{x:.3g}"))
    for r in records:
        print(f"{r.figure:<12} {', '.join(r.files)}  (data: {r.data}, {r.wall_time_s:.1f} s)")
    print(f"results: {out / lab.RESULTS_FILE}; token logs: {out / lab.TOKENS_DIR}")
    return 0


def run_mismatch(args: argparse.Namespace) -> int:
    precisions = parse_names(args.precisions)
    bad = [p for p in precisions if p not in PRECISIONS]
    if bad or not precisions:
        raise ValueError(f"--precisions {args.precisions!r}: unknown {', '.join(bad) or '(none given)'}; "
                         f"valid: {', '.join(PRECISIONS)}")
    if args.prompts < 1:
        raise ValueError(f"--prompts must be a positive number of responses, got {args.prompts}")
    ckpt = (load_checkpoint(args.checkpoint) if args.checkpoint
            else pretrain(PretrainConfig(), Path(args.out) / lab.CACHE_DIR, progress=not args.no_progress))
    table = pd.DataFrame({p: engine_statistics(ckpt, p, n_prompts=args.prompts, seed=args.seed) for p in precisions})
    for p, targets in PUBLISHED.items():
        table[f"published {p}"] = pd.Series(targets)
    print(f"trainer (float32) against each engine at initialisation, {args.prompts} responses each; "
          f"published: docs/reference.md")
    print(table.to_string(float_format=lambda x: f"{x:.3g}", na_rep=""))
    if args.csv:
        path = write_csv(table.rename_axis("statistic").reset_index(), args.csv)
        print(f"table: {path}")
    return 0
