"""Shared test inputs of tests/run/: a small simulator configuration and a small sweep file."""

from __future__ import annotations

from pathlib import Path

from drpo_sim.run import sweep
from drpo_sim.sim import SimConfig

#: A small, fast configuration (the full flat dict a cell holds).
CONFIG = SimConfig.from_flat({"vocab_size": 64, "steps": 5, "group_size": 8}).flat()

#: A sweep file without a grid: two methods, two seeds, the small configuration.
HEAD = """
methods = ["grpo", "drpo"]
seeds = 2
[env]
vocab_size = 64
[train]
steps = 5
group_size = 8
"""

#: HEAD with a grid: 2 noise levels x 2 staleness x (grpo + drpo at 2 deltas) = 12 cells.
GRID = HEAD + """
[grid]
noise_std = [0, 0.1]
staleness = [0, 2]
"drpo.delta" = [12.5, 0.15]
"""


def toml(tmp_path: Path, text: str, name: str = "sweep.toml") -> Path:
    """Write a sweep file into ``tmp_path``; return its path."""
    path = tmp_path / name
    path.write_text(text)
    return path


def run_grid(root: Path, n_jobs: int):
    """The GRID sweep run once into ``root/out`` on ``n_jobs`` local processes: (spec, its directory, its table)."""
    spec = sweep.load_sweep(toml(root, GRID))
    return spec, root / "out", sweep.run_sweep(spec, root / "out", n_jobs=n_jobs, progress=False)
