"""``drpo-sim explore``: serve the interactive trust-region explorer, or export its geometry views.

    drpo-sim explore                       serve on localhost:5006 and open a browser
    drpo-sim explore --port 0 --no-browser serve on a free port; print the address only
    drpo-sim explore --export FILE.html    write one self-contained page (no server needed)

Bad input (an unknown objective, a bad port, an unwritable export path) prints one line and exits
with status 2.
"""

from __future__ import annotations

import argparse

from drpo_sim.config import PAPER_METHODS, parse_names
from drpo_sim.explore import controls as ctl
from drpo_sim.explore.app import serve
from drpo_sim.explore.export import export_page


def parse_port(text: str) -> int:
    """``--port``: an integer in 0..65535 (0: a free port); ``ValueError`` otherwise."""
    try:
        port = int(text)
    except ValueError:
        raise ValueError(f"--port must be an integer in 0..65535 (0: a free port), got {text!r}") from None
    if not 0 <= port <= 65535:
        raise ValueError(f"--port must be an integer in 0..65535 (0: a free port), got {port}")
    return port


def configure_explore(p: argparse.ArgumentParser) -> None:
    p.add_argument("--port", default="5006", help="port on localhost (default 5006; 0: a free port)")
    p.add_argument("--no-browser", action="store_true", help="do not open a browser; only print the address")
    p.add_argument("--export", metavar="FILE.html", help="write the geometry views as one self-contained page and exit")
    p.add_argument(
        "--objectives", help=f"comma-separated objectives shown at first (default {','.join(PAPER_METHODS)})"
    )
    p.set_defaults(func=run_explore)


def run_explore(args: argparse.Namespace) -> int:
    """Export the page or serve the app; returns the exit code."""
    selected = list(PAPER_METHODS)
    if args.objectives is not None:
        selected = ctl.check_objectives(parse_names(args.objectives))
    if args.export:
        path, size = export_page(args.export, selected)
        print(f"drpo-sim explore: wrote {path} ({size / 1e6:.1f} MB); open it from disk in any browser")
        return 0
    port = parse_port(str(args.port))
    return serve(port, open_browser=not args.no_browser, selected=selected,
                 announce=lambda line: print(line, flush=True))
