"""Cells per minute of a sweep: one process, local processes, and a Dask cluster on the same grid.

What it measures
----------------
One grid of ``--cells`` cells (default 12: the bandit with V = 1,024 tokens, 4 seeds, 16 samples
per step, 200 steps, engine noise 0.1; methods ``grpo`` and ``drpo`` times ``staleness`` 0, 1,
..., ``cells / 2 - 1``), run by :func:`drpo_sim.run.sweep.run_sweep` into an empty directory three
ways:

- ``single``: ``n_jobs=1``, the cells one after another in the driver's process;
- ``local``: ``n_jobs=--workers`` joblib (loky) processes, the default of ``drpo-sim sweep``;
- ``dask``: a ``dask.distributed.LocalCluster`` of ``--workers`` worker processes (one thread
  each) on loopback, through ``scheduler=ADDRESS`` as ``drpo-sim sweep --scheduler`` does.

A time is the wall time of one ``run_sweep`` call: scheduling, the cells, the driver writing
every cell file and ``results.parquet``. Each mode first makes one untimed warm-up run, in which
the worker processes start and import ``drpo_sim`` (loky keeps its workers between calls; the
cluster's workers live as long as the cluster), then ``--repeats`` timed runs, each into a fresh
directory; the table gives their median. The warm-up's time is reported as ``cold_seconds``: what
a fresh ``drpo-sim sweep`` command pays for starting its processes (``single`` pays the import
of ``drpo_sim`` before the clock starts, so its cold time is its warm one). The cluster's own
start is reported apart: a cluster is normally started once and serves many sweeps.

Derived numbers: cells per minute (``cells / seconds * 60``), the speed-up over ``single``,
and the overhead of the Dask path over the local one, ``dask seconds / local seconds - 1``, on
the same grid with the same number of workers: what the scheduler, its round trips and the
shipping of every result table back to the driver cost. The ceiling of the speed-up is the
number of workers (and of free cores: on a 2-core machine the driver, writing files, shares
them with the workers).

How to run
----------
::

    python benchmarks/bench_sweep.py                 # the default grid, 3 timed runs per mode
    python benchmarks/bench_sweep.py --cells 16 --steps 100 --repeats 5 --csv sweep.csv

Other processes on the cores distort the times.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from drpo_sim.run import sweep  # noqa: E402


def grid(cells: int, steps: int, seeds: int, vocab: int) -> sweep.SweepSpec:
    """The benchmark's grid: grpo and drpo times ``cells / 2`` staleness values."""
    if cells < 2 or cells % 2:
        raise SystemExit(f"--cells must be an even number >= 2, got {cells}")
    doc = {
        "methods": ["grpo", "drpo"],
        "seeds": seeds,
        "env": {"env": "bandit", "vocab_size": vocab},
        "offpolicy": {"noise_std": 0.1},
        "train": {"steps": steps, "group_size": 16},
        "grid": {"staleness": list(range(cells // 2))},
    }
    return sweep.parse_sweep(doc, source="bench_sweep")


def time_mode(spec: sweep.SweepSpec, root: Path, name: str, repeats: int, **kwargs) -> tuple[float, float]:
    """``(cold seconds, median warm seconds)`` of ``run_sweep(spec, ..., **kwargs)``, each run into a new directory."""

    def once(k: int) -> float:
        out = root / f"{name}-{k}"
        t0 = time.perf_counter()
        sweep.run_sweep(spec, out, progress=False, **kwargs)
        seconds = time.perf_counter() - t0
        shutil.rmtree(out)
        return seconds

    cold = once(0)
    return cold, statistics.median(once(k + 1) for k in range(repeats))


def _timed(fn: Callable[[], object]) -> tuple[object, float]:
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cells", type=int, default=12, help="cells in the grid, even (default 12)")
    ap.add_argument("--steps", type=int, default=200, help="training steps per cell (default 200)")
    ap.add_argument("--seeds", type=int, default=4, help="seeds per cell (default 4)")
    ap.add_argument("--vocab", type=int, default=1024, help="bandit vocabulary (default 1024)")
    ap.add_argument("--workers", type=int, default=2, help="local processes and Dask workers (default 2)")
    ap.add_argument("--repeats", type=int, default=3, help="timed runs per mode after the warm-up (default 3)")
    ap.add_argument("--csv", help="write the table here")
    args = ap.parse_args(argv)
    from dask.distributed import LocalCluster

    spec = grid(args.cells, args.steps, args.seeds, args.vocab)
    n = len(spec.cells())
    print(f"# drpo_sim sweep benchmark: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs; "
          f"{n} cells (bandit V={args.vocab}, {args.seeds} seeds, {args.steps} steps), median of {args.repeats} runs")
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench_sweep_") as tmp:
        root = Path(tmp)
        modes = [("single", 1, {"n_jobs": 1}), ("local", args.workers, {"n_jobs": args.workers})]
        for name, workers, kwargs in modes:
            cold, warm = time_mode(spec, root, name, args.repeats, **kwargs)
            rows.append({"mode": name, "workers": workers, "cold_seconds": cold, "seconds": warm})
        cluster, start = _timed(lambda: LocalCluster(
            n_workers=args.workers, threads_per_worker=1, processes=True, host="127.0.0.1", dashboard_address=None
        ))
        with cluster:
            cold, warm = time_mode(spec, root, "dask", args.repeats, scheduler=cluster.scheduler_address)
        rows.append({"mode": "dask", "workers": args.workers, "cold_seconds": cold, "seconds": warm})
    table = pd.DataFrame(rows)
    table.insert(1, "cells", n)
    table["cells_per_min"] = n / table["seconds"] * 60
    table["speedup_vs_single"] = table.loc[0, "seconds"] / table["seconds"]
    print(table.to_string(index=False, float_format=lambda x: f"{x:.3g}"))
    local, dask = table.set_index("mode").loc[["local", "dask"], "seconds"]
    print(f"Dask overhead over local processes: {dask / local - 1:+.1%} ({dask - local:+.2f} s on {n} cells, "
          f"{(dask - local) / n * 1e3:+.0f} ms per cell); cluster start {start:.1f} s, not counted")
    if args.csv:
        table.assign(cluster_start_seconds=start).to_csv(args.csv, index=False, float_format="%.6g")
    return 0


if __name__ == "__main__":
    sys.exit(main())
