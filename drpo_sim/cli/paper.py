"""``drpo-sim geometry``, ``reproduce`` and ``report``: the paper's figures, claims and report."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

from drpo_sim.config import parse_formats, parse_names
from drpo_sim.geometry import GeometryConfig
from drpo_sim.paper import claims, report
from drpo_sim.paper.jobs import geometry_figures
from drpo_sim.paper.reproduce import STAGES, reproduce
from drpo_sim.paper.specs import GeometrySpec

#: Where each profile writes by default: the full run regenerates the committed ``figures/`` and
#: ``paper/``; the quick one writes to a folder of its own, beside them.
DEFAULT_OUT = {"full": "figures", "quick": "results/quick/figures"}
#: The image formats each profile writes by default: the quick run, a first look, only PNG (the
#: report embeds PNG); the full run PDF too.
DEFAULT_FORMATS = {"full": "png,pdf", "quick": "png"}
#: The committed full run, whose verdicts a quick run is shown beside.
COMMITTED = "figures"


def configure_geometry(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--formats", default="png", help="comma-separated image formats: png, pdf, svg (default png)")
    p.add_argument("--n-plane", type=int, default=None,
                   help=f"grid cells per axis of the (mu, pi) maps (default {GeometryConfig().n_plane})")
    p.set_defaults(func=run_geometry)


def run_geometry(args: argparse.Namespace) -> int:
    cfg = GeometryConfig()
    if args.n_plane is not None:
        if args.n_plane < 10:
            raise ValueError(f"--n-plane must be at least 10, got {args.n_plane}")
        cfg = dataclasses.replace(cfg, n_plane=args.n_plane)
    for r in geometry_figures(args.out, GeometrySpec(cfg), formats=parse_formats(args.formats)):
        print(f"{r.figure:<26} {', '.join(r.files)}  (data: {r.data}, {r.wall_time_s:.1f} s)")
    return 0


def configure_reproduce(p: argparse.ArgumentParser) -> None:
    group = p.add_mutually_exclusive_group()
    group.add_argument("--quick", dest="profile", action="store_const", const="quick",
                       help="the fast profile (default): minutes on 2 cores, into its own folder")
    group.add_argument("--full", dest="profile", action="store_const", const="full",
                       help="the full profile: enough seeds to separate the methods (about 2.5 hours on 2 cores); "
                       "regenerates the committed figures/ and paper/")
    p.add_argument("--out", help=f"output directory (default: {DEFAULT_OUT['quick']} for --quick, "
                   f"{DEFAULT_OUT['full']} for --full)")
    p.add_argument("--formats", help=f"comma-separated image formats (default: {DEFAULT_FORMATS['quick']} for "
                   f"--quick, {DEFAULT_FORMATS['full']} for --full)")
    p.add_argument("--paper", help="where the report goes (default: paper/ beside --out)")
    p.add_argument("--only", help=f"comma-separated stages to run (default all): {', '.join(STAGES)}")
    p.add_argument("--compare", metavar="DIR", help=f"show the verdicts beside those of the run in DIR (default: "
                   f"{COMMITTED}/, the committed full run, when it is not --out; 'none': no comparison)")
    p.add_argument("--jobs", type=int, help="local worker processes (default: the number of CPUs)")
    p.add_argument("--scheduler", metavar="ADDRESS", help="run the cells on the Dask cluster at ADDRESS")
    p.set_defaults(func=run_reproduce, profile="quick")


def _reference(args: argparse.Namespace, out: Path) -> Path | None:
    """The results directory whose verdicts are shown beside this run's, if any."""
    if args.compare == "none":
        return None
    ref = Path(args.compare or COMMITTED)
    if args.compare is None and (not (ref / claims.CLAIMS_FILE).is_file() or ref.resolve() == out.resolve()):
        return None
    return ref


def run_reproduce(args: argparse.Namespace) -> int:
    out = Path(args.out or DEFAULT_OUT[args.profile])
    ref = _reference(args, out)
    reference = claims.load_claims(ref) if ref is not None else None  # a bad --compare fails before the run
    formats = parse_formats(args.formats or DEFAULT_FORMATS[args.profile])
    res = reproduce(out, args.profile, formats, paper=args.paper,
                    only=parse_names(args.only) if args.only else None, n_jobs=args.jobs, scheduler=args.scheduler)
    print(f"{len(res['records'])} figures in {out} ({res['wall_time_s']:.1f} s)"
          + (f"; manifest: {res['manifest']}" if res["manifest"] else "")
          + (f"; report: {res['report']}" if res["report"] else ""))
    if res["claims"] is not None:
        ours = claims.load_claims(out)
        if ref is not None:
            print(f"verdicts of this {args.profile} run ({out}) beside those of {ref}:")
        theirs = "committed" if ref == Path(COMMITTED) else str(ref)
        print(claims.verdict_table(ours, reference, labels=(args.profile, theirs)))
    return 0


def configure_report(p: argparse.ArgumentParser) -> None:
    p.add_argument("--results", default="figures", help="directory of the result files (default figures/)")
    p.add_argument("--paper", default="paper", help="where the report goes (default paper/)")
    p.set_defaults(func=run_report)


def run_report(args: argparse.Namespace) -> int:
    """Regenerate the report; :func:`drpo_sim.paper.report.write_report` refuses (exit 2, nothing
    written) if a number it quotes is not in the result files it reads."""
    path = report.write_report(args.results, args.paper)
    print(f"report: {path} (every number checked against {', '.join(report.report_inputs(args.results))})")
    return 0
