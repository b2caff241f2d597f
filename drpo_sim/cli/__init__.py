"""The ``drpo-sim`` command line.

Subcommands::

    drpo-sim list                         the registered objectives: surrogate, weight, source
    drpo-sim geometry --out DIR           the trust-region geometry figures (PNG + CSV)
    drpo-sim simulate --out FILE.parquet  train objectives in the bandit / tabular environments
    drpo-sim summarize FILE.parquet       per-method statistics of a result file (and --plot)
    drpo-sim sweep CONFIG.toml --out DIR  a grid of simulations, resumable, locally or on a Dask cluster
    drpo-sim replay LOG... --out DIR      per-token analysis of token logs (real, simulated or from the LM lab)
    drpo-sim gradients                    each objective's sampled gradient against the exact one (bandit, tabular)
    drpo-sim lm pretrain|train|compare    the tiny transformer lab
    drpo-sim arena calibrate|run          the arena: the engine a reduced-precision pass over the trainer's weights
    drpo-sim reproduce [--quick|--full]   every analysis: figures, MANIFEST.json, claims.json, the report
    drpo-sim report                       regenerate the report from the result files and check its numbers
    drpo-sim explore [--port N]           the interactive trust-region explorer in the browser (--export FILE.html)

Each subcommand lives in one module of this package (:data:`COMMANDS`), which imports what it
needs at its top and defines ``configure_<name>(parser)``. The dispatcher imports only the
module of the command given: importing every command's dependencies (torch, Bokeh, Dask,
seaborn, scipy) takes about 7 s on two cores, which ``drpo-sim --help`` and ``drpo-sim list``
would otherwise pay. Errors in the input (a bad option value, an unknown objective) print one
line and exit with 2.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from drpo_sim import __version__

#: Each subcommand: the module that configures and runs it, and its one-line help.
COMMANDS: dict[str, tuple[str, str]] = {
    "list": ("drpo_sim.cli.objectives", "list the registered objectives: surrogate, weight, source"),
    "geometry": ("drpo_sim.cli.paper", "draw the trust-region geometry figures"),
    "simulate": ("drpo_sim.cli.simulate", "train objectives in a simulated environment; write a tidy Parquet table"),
    "summarize": ("drpo_sim.cli.simulate", "per-method statistics of a result file"),
    "sweep": ("drpo_sim.cli.simulate", "run a grid of simulations into a resumable result store"),
    "replay": (
        "drpo_sim.cli.replay",
        "per-token analysis of token logs: mismatch, masks and weights of every objective",
    ),
    "gradients": ("drpo_sim.cli.gradients",
                  "each objective's sampled gradient against the exact gradient of the expected reward"),
    "lm": ("drpo_sim.cli.lab", "the tiny transformer lab: RL from real reduced-precision rollouts"),
    "arena": ("drpo_sim.cli.arena", "the arena: RL where the mismatch comes from the policy's own parameters"),
    "reproduce": ("drpo_sim.cli.paper", "run every analysis: figures, MANIFEST.json, claims.json, the report"),
    "report": ("drpo_sim.cli.paper", "regenerate the report from the result files and check its numbers"),
    "explore": ("drpo_sim.cli.explore", "interactive trust-region explorer in the browser (or --export a page)"),
}


def build_parser(commands: Sequence[str] | None = None) -> argparse.ArgumentParser:
    """The parser, with the full arguments of ``commands`` (default: all) and the others listed."""
    parser = argparse.ArgumentParser(prog="drpo-sim", description="Stability analysis of LLM RL policy objectives.")
    parser.add_argument("--version", action="version", version=f"drpo_sim {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    wanted = COMMANDS if commands is None else commands
    for name, (module, help_) in COMMANDS.items():
        p = sub.add_parser(name, help=help_, description=help_)
        if name in wanted:
            getattr(importlib.import_module(module), f"configure_{name.replace('-', '_')}")(p)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    command = next((a for a in argv if not a.startswith("-")), None)
    args = build_parser([command] if command in COMMANDS else ()).parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, TypeError, OSError) as err:
        print(f"drpo-sim {args.command}: error: {err}", file=sys.stderr)
        return 2
    except RuntimeError as err:  # a failure while running (a lost Dask worker), not bad input
        print(f"drpo-sim {args.command}: failed: {err}", file=sys.stderr)
        return 1
