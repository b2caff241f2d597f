"""The ``drpo-sim`` command line.

Subcommands::

    drpo-sim list                         the registered objectives, their parameters and sources
    drpo-sim geometry --out DIR           the trust-region geometry figures (PNG + CSV)
    drpo-sim reproduce [--out DIR]        every figure from the built-in defaults, and MANIFEST.json

Errors in the input (a bad option value, an unknown objective) print one line and exit with 2.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from collections.abc import Sequence

from drpo_sim import __version__, objectives


def _cmd_list(args: argparse.Namespace) -> int:
    for name in objectives.available():
        obj = objectives.get(name)
        doc = (type(obj).__doc__ or "").strip().splitlines()[0]
        print(f"{str(obj):<60} {doc}")
    return 0


def _formats(text: str) -> tuple[str, ...]:
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
    records = figures.geometry_figures(args.out, cfg, formats=_formats(args.formats))
    for r in records:
        print(f"{r.figure:<26} {', '.join(r.files)}  (data: {r.data}, {r.wall_time_s:.1f} s)")
    return 0


def _cmd_reproduce(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from drpo_sim import figures

    t0 = time.perf_counter()
    jobs = [("geometry", lambda: figures.geometry_figures(args.out, formats=_formats(args.formats)))]
    records = []
    for name, job in tqdm(jobs, desc="reproduce", unit="job", disable=None):
        records.extend(job())
    path = figures.write_manifest(args.out, records, profile=args.profile)
    print(f"{len(records)} figures in {args.out} ({time.perf_counter() - t0:.1f} s); manifest: {path}")
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

    p = sub.add_parser("reproduce", help="regenerate every figure from the built-in defaults")
    p.add_argument("--out", default="figures", help="output directory (default figures/)")
    group = p.add_mutually_exclusive_group()
    group.add_argument("--quick", dest="profile", action="store_const", const="quick", help="the fast profile the tests run")
    group.add_argument("--full", dest="profile", action="store_const", const="full", help="the full profile")
    p.add_argument("--formats", default="png,pdf", help="comma-separated image formats (default png,pdf)")
    p.set_defaults(func=_cmd_reproduce, profile="quick")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, TypeError, OSError) as err:
        print(f"drpo-sim {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
