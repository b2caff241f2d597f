"""The ``drpo-sim`` command line.

Subcommands::

    drpo-sim list                         the registered objectives, their parameters and sources
    drpo-sim geometry --out DIR           the trust-region geometry figures (PNG + CSV)
    drpo-sim simulate --out FILE.parquet  train objectives in the bandit / tabular environments
    drpo-sim summarize FILE.parquet       per-method statistics of a result file (and --plot)
    drpo-sim sweep CONFIG.toml --out DIR  a grid of simulations, resumable, locally or on a Dask cluster
    drpo-sim replay LOG... --out DIR      per-token analysis of token logs (real, simulated or from the LM lab)
    drpo-sim lm pretrain|train|compare    the tiny transformer lab (drpo_sim.lm.cli)
    drpo-sim reproduce [--quick|--full]   every analysis of analyses/: figures, MANIFEST.json, claims.json, paper/
    drpo-sim report                       regenerate paper/ from the result files and check its numbers
    drpo-sim explore [--port N]           the interactive trust-region explorer in the browser (--export FILE.html)

Errors in the input (a bad option value, an unknown objective) print one line and exit with 2.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from drpo_sim import __version__, objectives


def _cmd_list(args: argparse.Namespace) -> int:
    for name in objectives.available():
        obj = objectives.get(name)
        doc = (type(obj).__doc__ or "").strip().splitlines()[0]
        print(f"{str(obj):<60} {doc}")
    return 0


def parse_formats(text: str) -> tuple[str, ...]:
    """``--formats png,pdf`` -> ``("png", "pdf")``; ``ValueError`` for anything but png, pdf, svg."""
    fmts = tuple(f.strip().lower() for f in text.split(",") if f.strip())
    bad = [f for f in fmts if f not in ("png", "pdf", "svg")]
    if bad or not fmts:
        raise ValueError(f"--formats: unsupported {', '.join(bad) or 'empty list'}; choose from png, pdf, svg")
    return fmts


def _cmd_geometry(args: argparse.Namespace) -> int:
    from drpo_sim import figures, geometry

    cfg = geometry.GeometryConfig()
    if args.n_plane is not None:
        if args.n_plane < 10:
            raise ValueError(f"--n-plane must be at least 10, got {args.n_plane}")
        cfg = dataclasses.replace(cfg, n_plane=args.n_plane)
    records = figures.geometry_figures(args.out, cfg, formats=parse_formats(args.formats))
    for r in records:
        print(f"{r.figure:<26} {', '.join(r.files)}  (data: {r.data}, {r.wall_time_s:.1f} s)")
    return 0


def _cmd_reproduce(args: argparse.Namespace) -> int:
    from drpo_sim.reproduce import reproduce

    only = [s for s in (args.only or "").split(",") if s]
    res = reproduce(args.out, args.profile, parse_formats(args.formats), paper=args.paper, only=only)
    claims = json.loads((Path(args.out) / "claims.json").read_text())
    print("claims: " + ", ".join(f"{c['number']} {c['verdict']}" for c in claims))
    print(f"{len(res['records'])} figures in {args.out} ({res['wall_time_s']:.1f} s); manifest: {res['manifest']}; "
          f"report: {res['report']}")
    return 0


def _cmd_report(args: argparse.Namespace) -> int:
    """Regenerate the report; :func:`drpo_sim.report.write_report` refuses (exit 2, nothing
    written) if a number it quotes is not in the result files it reads."""
    from drpo_sim import report

    path = report.write_report(args.results, args.paper)
    print(f"report: {path} (every number checked against {', '.join(report.report_inputs(args.results))})")
    return 0


# ----------------------------------------------------------------------------------------------
# simulate / summarize
# ----------------------------------------------------------------------------------------------

DEFAULT_METHODS = "pg_is,grpo,spo,dppo_tv,drpo"


def _add_config_flags(p: argparse.ArgumentParser) -> None:
    """One flag per configuration field (``--vocab-size``, ``--noise-std``, ...), default: unset."""
    from drpo_sim.sim import SimConfig

    base = SimConfig()
    for sec in SimConfig.SECTIONS:
        group = p.add_argument_group(f"{sec} configuration")
        for f in dataclasses.fields(getattr(base, sec)):
            default = getattr(getattr(base, sec), f.name)
            flag = "--" + f.name.replace("_", "-")
            if isinstance(default, bool):
                group.add_argument(flag, dest=f"cfg_{f.name}", action=argparse.BooleanOptionalAction, default=None, help=f"(default {default})")
            else:
                group.add_argument(flag, dest=f"cfg_{f.name}", type=type(default), default=None, help=f"(default {default})")


def _experiment(args: argparse.Namespace):
    """Configuration, methods, seeds and objective parameters: defaults < --config < --preset < flags."""
    from drpo_sim.offpolicy import NOISE_PRESETS
    from drpo_sim.sim import SimConfig, parse_params

    spec = {"config": {}}
    if args.config:
        from drpo_sim.sim import read_experiment

        spec = read_experiment(args.config)
    preset = args.preset or spec.get("preset")
    overrides = dict(spec["config"])
    if preset:
        if preset not in NOISE_PRESETS:
            raise ValueError(f"--preset {preset!r}: valid presets are {', '.join(NOISE_PRESETS)}")
        overrides.update(NOISE_PRESETS[preset])
    overrides.update({k[4:]: v for k, v in vars(args).items() if k.startswith("cfg_") and v is not None})
    cfg = SimConfig.from_flat(overrides)
    methods = args.methods or spec.get("methods") or DEFAULT_METHODS
    methods = [m.strip() for m in methods.split(",")] if isinstance(methods, str) else list(methods)
    methods = [m for m in methods if m]
    n_seeds = args.seeds if args.seeds is not None else spec.get("seeds", 8)
    start = args.seed_start if args.seed_start is not None else spec.get("seed_start", 0)
    if not (isinstance(n_seeds, int) and n_seeds >= 1):
        raise ValueError(f"--seeds must be a positive number of seeds, got {n_seeds!r}")
    params = {m: dict(v) for m, v in spec.get("params", {}).items()}
    for method, given in parse_params(args.param).items():
        params.setdefault(method, {}).update(given)
    return cfg, methods, list(range(start, start + n_seeds)), params, preset


def _cmd_simulate(args: argparse.Namespace) -> int:
    import contextlib

    from drpo_sim import objectives, stats
    from drpo_sim.results import write_results
    from drpo_sim.sim import simulate
    from drpo_sim.tokens import TokenLogWriter

    cfg, methods, seeds, params, preset = _experiment(args)
    out = args.out
    if out is None:
        raise ValueError("--out FILE.parquet is required")
    meta = {
        "config": cfg.flat(),
        "methods": methods,
        "method_params": {m: objectives.get(m, **params.get(m, {})).params for m in methods if m in objectives.available()},
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


def _format_summary(summary) -> str:
    cols = [c for c in summary.columns if c not in ("final_mean",)]
    return summary[cols].to_string(index=False, float_format=lambda x: f"{x:.4g}")


def _cmd_summarize(args: argparse.Namespace) -> int:
    from drpo_sim import stats
    from drpo_sim.results import read_results

    df, meta = read_results(args.file)
    if args.metric not in df.columns:
        raise ValueError(f"{args.file}: no column {args.metric!r}")
    summary = stats.summarize_runs(
        df, metric=args.metric, threshold=args.threshold, reference=args.reference, nan_policy="omit"
    )
    print(_format_summary(summary))
    if args.csv:
        from drpo_sim._io import write_csv

        write_csv(summary, args.csv)
    if args.plot:
        from drpo_sim import plots

        plot = Path(args.plot)
        stem, fmt = plot.with_suffix(""), (plot.suffix.lstrip(".").lower() or "png")
        panels = [(args.metric, stats.curve_bands(df, args.metric))]
        if "shift_mean" in df.columns and args.metric != "shift_mean":
            panels.append(("mean abs(pi - mu), sampled tokens", stats.curve_bands(df, "shift_mean")))
        cfg = meta.get("config", {})
        title = f"{cfg.get('env', '?')} V={cfg.get('vocab_size', '?')}" + (f", preset {meta['preset']}" if meta.get("preset") else "")
        files = plots.curves_figure(panels, stem, title=title, formats=parse_formats(fmt), logy=[False, True])
        print(f"plot: {', '.join(str(f) for f in files)}")
    return 0


def _cmd_sweep(args: argparse.Namespace) -> int:
    from drpo_sim import sweep

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


# ----------------------------------------------------------------------------------------------
# replay
# ----------------------------------------------------------------------------------------------


def _cmd_replay(args: argparse.Namespace) -> int:
    from drpo_sim import analysis, figures, logs
    from drpo_sim.sim import parse_params

    names = [n.strip() for n in args.objectives.split(",") if n.strip()] if args.objectives else None
    objs = analysis.objective_specs(names, parse_params(args.param))
    mapping = logs.parse_mapping(args.map) if args.map else None
    if args.batch_size < 1:
        raise ValueError(f"--batch-size must be >= 1, got {args.batch_size}")
    src = logs.open_log(args.logs, fmt=args.format, mapping=mapping, on_invalid=args.on_invalid,
                        batch_size=args.batch_size, group_size=1 if args.group_size is None else args.group_size)
    t0 = time.perf_counter()
    updates = None
    if args.updates is not None:
        try:
            updates = [int(u) for u in args.updates.split(",") if u.strip()]
        except ValueError:
            raise ValueError(f"--updates {args.updates!r}: expected comma-separated update indices, e.g. 0") from None
    result = analysis.replay_log(src, objs, device=args.device, progress=not args.no_progress, updates=updates)
    report = src.report
    label = args.label or ", ".join(Path(p).name for p in args.logs)
    records = figures.replay_figures(result, args.out, label=label, formats=parse_formats(args.formats),
                                     wall_time_s=time.perf_counter() - t0)
    t = result.totals
    print(f"{t['tokens']:,} tokens replayed ({t['excluded_tokens']:,} with mask false"
          + (f", {t['filtered_tokens']:,} outside --updates" if t["filtered_tokens"] else "") + "), "
          f"{t['rare_share']:.1%} with mu <= {t['rare_threshold']:g}; mean |pi-mu| {t['abs_shift_mean']:.3g}, "
          f"max {t['abs_shift_max']:.3g}")
    if report.total:
        print(f"dropped (--on-invalid drop): {report}")
    cols = ["objective", "masked_frac", "attenuated_frac", "corrective_frac", "grad_mass_share", "rare_masked_frac",
            "rare_weight_min", "rare_weight_max"]
    print(result.objectives[cols].to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    print(f"{len(records)} figures and their tables in {args.out}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="drpo-sim", description="Stability analysis of LLM RL policy objectives.")
    parser.add_argument("--version", action="version", version=f"drpo_sim {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("list", help="list the registered objectives")
    p.set_defaults(func=_cmd_list)

    p = sub.add_parser("geometry", help="draw the trust-region geometry figures")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--formats", default="png", help="comma-separated image formats: png, pdf, svg (default png)")
    p.add_argument("--n-plane", type=int, default=None, help="grid cells per axis of the (mu, pi) maps (default 200)")
    p.set_defaults(func=_cmd_geometry)

    p = sub.add_parser("simulate", help="train objectives in a simulated environment; write a tidy Parquet table")
    p.add_argument("--out", help="result file (Parquet)")
    p.add_argument("--methods", help=f"comma-separated objectives (default {DEFAULT_METHODS})")
    p.add_argument("--seeds", type=int, help="number of seeds (default 8)")
    p.add_argument("--seed-start", type=int, help="first seed (default 0)")
    p.add_argument("--config", help="experiment TOML file (fields, methods, seeds, [params.METHOD])")
    p.add_argument("--preset", help="engine-noise preset: bf16 or fp8 (noise_std and precision)")
    p.add_argument("--param", action="append", metavar="METHOD.NAME=VALUE", help="objective parameter, e.g. drpo.delta=2.5 (repeatable)")
    p.add_argument("--save-tokens", metavar="DIR", help="write each method's token log to DIR/METHOD.parquet")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    _add_config_flags(p)
    p.set_defaults(func=_cmd_simulate)

    p = sub.add_parser("summarize", help="per-method statistics of a result file")
    p.add_argument("file", help="result file written by drpo-sim simulate")
    p.add_argument("--metric", default="expected_reward", help="metric to summarise (default expected_reward)")
    p.add_argument("--threshold", type=float, help="report the steps each seed needs to reach this value")
    p.add_argument("--reference", help="method to compute the probability of improvement against")
    p.add_argument("--plot", help="draw the curves with 95%% bootstrap bands to this image file")
    p.add_argument("--csv", help="also write the table as CSV")
    p.set_defaults(func=_cmd_summarize)

    p = sub.add_parser("sweep", help="run a grid of simulations into a resumable result store")
    p.add_argument("config", help="sweep TOML file: an experiment file plus a [grid] table of lists")
    p.add_argument("--out", required=True, help="sweep directory (cells/, results.parquet, sweep.json); rerun: resume")
    p.add_argument("--jobs", type=int, help="local worker processes (default: the number of CPUs)")
    p.add_argument("--scheduler", metavar="ADDRESS", help="run on the Dask cluster at ADDRESS (e.g. tcp://host:8786)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_sweep)

    p = sub.add_parser("replay", help="per-token analysis of token logs: mismatch, masks and weights of every objective")
    p.add_argument("logs", nargs="+", metavar="LOG", help="token log files or directories (see --format)")
    p.add_argument("--out", required=True, help="output directory for the tables (CSV, JSON) and figures")
    p.add_argument("--format", default="auto", help="log format: auto (default), tokens, nemo_rl, slime, generic, trainer_dump")
    p.add_argument("--map", metavar="OURS=THEIRS,...", help="column mapping for --format generic, e.g. logp=lp,logp_behavior=engine_lp")
    p.add_argument("--group-size", type=int, help="samples per prompt group where the format does not record groups")
    p.add_argument("--on-invalid", choices=("raise", "drop"), default="raise",
                   help="bad rows: stop with an error naming them (default), or drop them and report how many and why")
    p.add_argument("--objectives", help="comma-separated objectives (default: the papers' methods, "
                   "drpo_sim.analysis.DEFAULT_OBJECTIVES)")
    p.add_argument("--param", action="append", metavar="METHOD.NAME=VALUE", help="objective parameter, e.g. drpo.delta=2.5 (repeatable)")
    p.add_argument("--updates", metavar="K,...", help="keep only these mini-batch updates of each step (the update "
                   "column); 0 isolates the training-inference mismatch from the policy's drift within a step")
    p.add_argument("--batch-size", type=int, default=1 << 20, help="tokens per batch; bounds the memory (default 1048576)")
    p.add_argument("--device", default="cpu", help="torch device: cpu (default) or cuda")
    p.add_argument("--formats", default="png", help="comma-separated image formats (default png)")
    p.add_argument("--label", help="name of the log in the figure titles (default: the file names)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_replay)

    from drpo_sim.explore.cli import add_parser as add_explore_parser
    from drpo_sim.lm.cli import add_parser as add_lm_parser

    add_lm_parser(sub)
    add_explore_parser(sub)

    p = sub.add_parser("reproduce", help="run every analysis of analyses/: figures, MANIFEST.json, claims.json, the report")
    p.add_argument("--out", default="figures", help="output directory (default figures/)")
    group = p.add_mutually_exclusive_group()
    group.add_argument("--quick", dest="profile", action="store_const", const="quick",
                       help="the fast profile the tests run (default; under 10 minutes on 2 cores)")
    group.add_argument("--full", dest="profile", action="store_const", const="full",
                       help="the full profile: enough seeds to separate the methods (about an hour on 2 cores)")
    p.add_argument("--formats", default="png,pdf", help="comma-separated image formats (default png,pdf)")
    p.add_argument("--paper", help="where the report goes (default: paper/ beside --out)")
    p.add_argument("--only", help="comma-separated parts of analysis script names to run (default: all)")
    p.set_defaults(func=_cmd_reproduce, profile="quick")

    p = sub.add_parser("report", help="regenerate the report from the result files and check its numbers")
    p.add_argument("--results", default="figures", help="directory of the result files (default figures/)")
    p.add_argument("--paper", default="paper", help="where the report goes (default paper/)")
    p.set_defaults(func=_cmd_report)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, TypeError, OSError) as err:
        print(f"drpo-sim {args.command}: error: {err}", file=sys.stderr)
        return 2
    except RuntimeError as err:  # a failure while running (a lost Dask worker), not bad input
        print(f"drpo-sim {args.command}: failed: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
