"""``drpo-sim list``: the registered objectives with their parameters, surrogate, weight and source,
then the corrections that compose with any of them (``objectives.get(name, correction=...)``)."""

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
    print("\ncorrections (objective anchored to pi_old, times c; needs logp_old): "
          "objectives.get(name, correction=..., **params)")
    for name in objectives.corrections():
        corr = objectives.get("pg_is", correction=name).correction
        print(f"{corr} [{corr.level}]\n    {corr.formula}\n    {corr.source}")
    return 0
