"""``drpo-sim list``: the registered objectives with their parameters, surrogate, weight and source."""

from __future__ import annotations

import argparse

from drpo_sim import objectives


def configure_list(p: argparse.ArgumentParser) -> None:
    p.set_defaults(func=run_list)


def run_list(args: argparse.Namespace) -> int:
    for name in objectives.available():
        obj = objectives.get(name)
        f = obj.formula
        print(f"{obj}\n    J = {f.surrogate}\n    w = {f.weight}\n    {f.idea}; {f.source}")
    return 0
