"""``drpo-sim explore``: serve the interactive trust-region explorer, or export its geometry views.

    drpo-sim explore                       serve on localhost:5006 and open a browser
    drpo-sim explore --port 0 --no-browser serve on a free port; print the address only
    drpo-sim explore --export FILE.html    write one self-contained page (no server needed)

``add_parser(subparsers)`` adds the subcommand to ``drpo-sim``; ``python -m drpo_sim.explore.cli``
runs it on its own. Bad input (an unknown objective, a bad port, an unwritable export path) prints
one line and exits with status 2.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any

from drpo_sim.explore import controls as ctl


def parse_port(text: str) -> int:
    """``--port``: an integer in 0..65535 (0: a free port); ``ValueError`` otherwise."""
    try:
        port = int(text)
    except ValueError:
        raise ValueError(f"--port must be an integer in 0..65535 (0: a free port), got {text!r}") from None
    if not 0 <= port <= 65535:
        raise ValueError(f"--port must be an integer in 0..65535 (0: a free port), got {port}")
    return port


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``explore`` to ``subparsers``; return its parser (its handler is ``func``)."""
    p = subparsers.add_parser("explore", help="interactive trust-region explorer in the browser (or --export a page)",
                              description=__doc__.split("\n\n")[0])
    p.add_argument("--port", default="5006", help="port on localhost (default 5006; 0: a free port)")
    p.add_argument("--no-browser", action="store_true", help="do not open a browser; only print the address")
    p.add_argument("--export", metavar="FILE.html", help="write the geometry views as one self-contained page and exit")
    p.add_argument("--objectives",
                   help=f"comma-separated objectives shown at first (default {','.join(ctl.DEFAULT_OBJECTIVES)})")
    p.set_defaults(func=cmd_explore)
    return p


def cmd_explore(args: argparse.Namespace) -> int:
    """Handler of ``explore``: export the page or serve the app; returns the exit code."""
    selected = list(ctl.DEFAULT_OBJECTIVES)
    if args.objectives is not None:
        selected = ctl.check_objectives([s.strip() for s in args.objectives.split(",") if s.strip()])
    if args.export:
        from drpo_sim.explore.export import export_page

        path, size = export_page(args.export, selected)
        print(f"drpo-sim explore: wrote {path} ({size / 1e6:.1f} MB); open it from disk in any browser")
        return 0
    port = parse_port(str(args.port))
    from drpo_sim.explore.app import serve

    return serve(port, open_browser=not args.no_browser, selected=selected,
                 announce=lambda line: print(line, flush=True))


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``explore`` on its own (``python -m drpo_sim.explore.cli``)."""
    parser = argparse.ArgumentParser(prog="drpo-sim")
    add_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["explore", *(sys.argv[1:] if argv is None else argv)])
    try:
        return args.func(args)
    except (ValueError, TypeError, OSError) as err:
        print(f"drpo-sim explore: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
