"""``drpo-sim simulate``, ``summarize`` and ``sweep``: the simulator from the command line."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
from pathlib import Path

import pandas as pd

from drpo_sim import objectives, plots, stats
from drpo_sim._io import write_csv
from drpo_sim.config import NOISE_PRESETS, PAPER_METHODS, parse_formats, parse_names, parse_params, resolve
from drpo_sim.results import read_results, write_results
from drpo_sim.run import sweep
from drpo_sim.sim import SimConfig, read_experiment, simulate
from drpo_sim.tokens import TokenLogWriter

DEFAULT_SEEDS = 8


def _add_config_flags(p: argparse.ArgumentParser) -> None:
    """One flag per configuration field (``--vocab-size``, ``--noise-std``, ...), default: unset."""
    base = SimConfig()
    for sec in SimConfig.SECTIONS:
        group = p.add_argument_group(f"{sec} configuration")
        for f in dataclasses.fields(getattr(base, sec)):
            default = getattr(getattr(base, sec), f.name)
            flag = "--" + f.name.replace("_", "-")
            if isinstance(default, bool):
                group.add_argument(flag, dest=f"cfg_{f.name}", action=argparse.BooleanOptionalAction, default=None,
                                   help=f"(default {default})")
            else:
                group.add_argument(flag, dest=f"cfg_{f.name}", type=type(default), default=None,
                                   help=f"(default {default})")


def configure_simulate(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", help="result file (Parquet)")
    p.add_argument("--methods", help=f"comma-separated objectives (default {','.join(PAPER_METHODS)})")
    p.add_argument("--seeds", type=int, help=f"number of seeds (default {DEFAULT_SEEDS})")
    p.add_argument("--seed-start", type=int, help="first seed (default 0)")
    p.add_argument("--config", help="experiment TOML file (fields, methods, seeds, [params.METHOD])")
    p.add_argument("--preset", help=f"engine-noise preset: {' or '.join(NOISE_PRESETS)} (noise_std and precision)")
    p.add_argument("--param", action="append", metavar="METHOD.NAME=VALUE",
                   help="objective parameter, e.g. drpo.delta=2.5 (repeatable)")
    p.add_argument("--save-tokens", metavar="DIR", help="write each method's token log to DIR/METHOD.parquet")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    _add_config_flags(p)
    p.set_defaults(func=run_simulate)


def _experiment(args: argparse.Namespace):
    """Configuration, methods, seeds and objective parameters, resolved by :func:`drpo_sim.config.resolve`."""
    spec = read_experiment(args.config) if args.config else {"config": {}}
    preset = args.preset or spec.get("preset")
    flags = {k[4:]: v for k, v in vars(args).items() if k.startswith("cfg_")}
    cfg = SimConfig.from_flat(resolve(spec["config"], preset, flags))
    methods = parse_names(args.methods or spec.get("methods") or PAPER_METHODS)
    n_seeds = args.seeds if args.seeds is not None else spec.get("seeds", DEFAULT_SEEDS)
    start = args.seed_start if args.seed_start is not None else spec.get("seed_start", 0)
    if not (isinstance(n_seeds, int) and n_seeds >= 1):
        raise ValueError(f"--seeds must be a positive number of seeds, got {n_seeds!r}")
    params = {m: dict(v) for m, v in spec.get("params", {}).items()}
    for method, given in parse_params(args.param).items():
        params.setdefault(method, {}).update(given)
    return cfg, methods, list(range(start, start + n_seeds)), params, preset


def run_simulate(args: argparse.Namespace) -> int:
    cfg, methods, seeds, params, preset = _experiment(args)
    out = args.out
    if out is None:
        raise ValueError("--out FILE.parquet is required")
    meta = {
        "config": cfg.flat(),
        "methods": methods,
        "method_params": {m: objectives.get(m, **params.get(m, {})).params for m in methods
                          if m in objectives.available()},
        "seeds": seeds,
        "preset": preset,
    }
    with contextlib.ExitStack() as stack:
        writers = {}
        if args.save_tokens:
            if cfg.train.mode != "sampled":
                raise ValueError("--save-tokens needs sampled mode: exact mode samples no tokens")
            for m in methods:
                path = Path(args.save_tokens) / f"{m}.parquet"
                writers[m] = stack.enter_context(TokenLogWriter(path, metadata={**meta, "method": m}))
        df = simulate(
            cfg, methods, seeds, method_params=params,
            token_sink_for=(lambda m: writers[m].write) if writers else None,
            progress=not args.no_progress,
        )
        write_results(df, out, meta)
    summary = stats.summarize_runs(df, nan_policy="omit")
    print(_format_summary(summary))
    print(f"{len(df)} rows ({len(methods)} methods x {len(seeds)} seeds x {cfg.train.steps} steps) -> {out}"
          + (f"; token logs in {args.save_tokens}" if args.save_tokens else ""))
    return 0


def _format_summary(summary: pd.DataFrame) -> str:
    cols = [c for c in summary.columns if c not in ("final_mean",)]
    return summary[cols].to_string(index=False, float_format=lambda x: f"{x:.4g}")


def configure_summarize(p: argparse.ArgumentParser) -> None:
    p.add_argument("file", help="result file written by drpo-sim simulate")
    p.add_argument("--metric", default="expected_reward", help="metric to summarise (default expected_reward)")
    p.add_argument("--threshold", type=float, help="report the steps each seed needs to reach this value")
    p.add_argument("--reference", help="method to compute the probability of improvement against")
    p.add_argument("--plot", help="draw the curves with 95%% bootstrap bands to this image file")
    p.add_argument("--csv", help="also write the table as CSV")
    p.set_defaults(func=run_summarize)


def run_summarize(args: argparse.Namespace) -> int:
    df, meta = read_results(args.file)
    if args.metric not in df.columns:
        raise ValueError(f"{args.file}: no column {args.metric!r}")
    summary = stats.summarize_runs(
        df, metric=args.metric, threshold=args.threshold, reference=args.reference, nan_policy="omit"
    )
    print(_format_summary(summary))
    if args.csv:
        write_csv(summary, args.csv)
    if args.plot:
        plot = Path(args.plot)
        stem, fmt = plot.with_suffix(""), (plot.suffix.lstrip(".").lower() or "png")
        panels = [(args.metric, stats.curve_bands(df, args.metric))]
        if "shift_mean" in df.columns and args.metric != "shift_mean":
            panels.append(("mean abs(pi - mu), sampled tokens", stats.curve_bands(df, "shift_mean")))
        cfg = meta.get("config", {})
        title = (f"{cfg.get('env', '?')} V={cfg.get('vocab_size', '?')}"
                 + (f", preset {meta['preset']}" if meta.get("preset") else ""))
        files = plots.curves_figure(panels, stem, title=title, formats=parse_formats(fmt), logy=[False, True])
        print(f"plot: {', '.join(str(f) for f in files)}")
    return 0


def configure_sweep(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", help="sweep TOML file: an experiment file plus a [grid] table of lists")
    p.add_argument("--out", required=True, help="sweep directory (cells/, results.parquet, sweep.json); rerun: resume")
    p.add_argument("--jobs", type=int, help="local worker processes (default: the number of CPUs)")
    p.add_argument("--scheduler", metavar="ADDRESS", help="run on the Dask cluster at ADDRESS (e.g. tcp://host:8786)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run_sweep)


def run_sweep(args: argparse.Namespace) -> int:
    if args.jobs is not None and args.jobs < 1:
        raise ValueError(f"--jobs must be a number of processes >= 1, got {args.jobs}")
    if args.jobs is not None and args.scheduler:
        raise ValueError("--jobs and --scheduler exclude each other: a Dask cluster has its own workers")
    spec = sweep.load_sweep(args.config)
    df = sweep.run_sweep(spec, args.out, n_jobs=args.jobs, scheduler=args.scheduler, progress=not args.no_progress)
    run = sweep.read_index(args.out)["last_run"]
    print(f"sweep: {run['ran']} cells run, {run['skipped']} skipped, {run['total']} in all ({len(df)} rows; "
          f"{run['executor']}) in {run['wall_s']:.1f} s -> {Path(args.out) / sweep.RESULTS_FILE}")
    return 0
