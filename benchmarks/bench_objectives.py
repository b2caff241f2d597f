"""Throughput of every registered objective's ``weight`` against a bare memory pass.

What it measures
----------------
For each objective in :func:`drpo_sim.objectives.available` (default parameters), the wall
time of one call ``obj.weight(logp, logp_behavior, advantage)`` over ``N`` tokens, in NumPy
and in torch (CPU), in float32 and/or float64, and of its fused kernel (:mod:`drpo_sim.fused`,
backend ``fused``: the same formula compiled by ``torch.compile``), with that kernel's first call
(its compilation) and its largest difference from the eager weight, in units of
``eps * max(abs(w), 1)``: every objective compiled and checked. Each time is the best of ``K`` calls after one
warm-up call (``time.perf_counter``). The same input arrays serve every call; the torch
tensors are ``torch.from_numpy`` views of the NumPy arrays, so both backends read the very
same memory and no copy is timed.

Inputs are drawn once from a seeded generator, shaped like an RL batch: the behaviour
probability of the sampled token is long-tailed, ``mu ~ Beta(0.3, 1)`` clipped to
``[1e-8, 1]``; ``logp = log(mu) + N(0, 0.1^2)`` clipped to ``<= 0`` (a policy close to the
behaviour policy); ``advantage ~ N(0, 1)``.

The floor
---------
Every objective must at least read its two log-probability arrays and write one output of
the same length. At 10M tokens these arrays (40 or 80 MB each) are far larger than the
per-core caches, so that traffic goes to memory, and elementwise work this cheap is
memory-bandwidth bound. The floor is therefore one bare pass over the same arrays:
``add(logp, logp_behavior, out=out)`` into a *preallocated* output (so no page faults are
timed), for each backend and dtype. It moves ``3 * N * itemsize`` bytes; the table reports
the implied bandwidth in GB/s, and every objective's time as a ratio to the floor of the same
backend and dtype. A ratio of 20 means the objective costs as much as 20 such passes:
temporaries (each one a further pass over memory), transcendental calls (``exp``, ``expm1``,
``log``) and first-touch page faults of freshly allocated outputs.

The floor is re-timed before every objective and its best time kept, so that a slow spell
of the machine does not inflate every ratio of a block; the spread of those floor timings
(worst / best) is printed with it as a measure of the run's noise.

Threads and noise: NumPy's elementwise ufuncs run on one thread; torch's CPU kernels use
``torch.get_num_threads()`` threads (printed in the header). Thread settings and environment
variables (``OMP_NUM_THREADS``, ``OPENBLAS_NUM_THREADS``, ...) are taken as they are. Other
processes on the same cores distort the times, torch's multi-threaded kernels most (a
parallel region waits for its slowest thread): on Linux the script reports how much CPU time
other processes took during the run.

How to run
----------
::

    python benchmarks/bench_objectives.py                       # 10M tokens, both dtypes, all three backends
    python benchmarks/bench_objectives.py --dtype float32 --backend torch,fused
    python benchmarks/bench_objectives.py --tokens 1000000 --repeats 3 --csv bench.csv

Memory: the inputs take ``3 * N * 8`` bytes in float64 plus ``3 * N * 4`` in float32, and one
call holds at most about 9 temporaries of ``N * itemsize`` bytes at once (0.75 GB at the
default size in float64), so a default run stays under 1.5 GB resident.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

import drpo_sim as ds
from drpo_sim import fused
from drpo_sim._io import write_csv as write_frame

FLOOR = "(bare add)"
"""Name of the floor row in the table."""


@dataclass(frozen=True)
class Config:
    tokens: int = 10_000_000
    repeats: int = 5
    dtypes: tuple[str, ...] = ("float64", "float32")
    backends: tuple[str, ...] = ("numpy", "torch", "fused")
    seed: int = 0
    csv: Path | None = None


@dataclass(frozen=True)
class Row:
    backend: str
    dtype: str
    objective: str
    seconds: float
    ns_per_token: float
    ratio: float
    gb_per_s: float | None = None  # floor row only: implied memory bandwidth
    spread: float | None = None  # floor row only: worst / best of its timings
    first_call_s: float | None = None  # fused only: the first call, its compilation included
    ulps: float | None = None  # fused only: largest difference from the eager weight, in eps * max(|w|, 1)


# --------------------------------------------------------------------------------------------
# Inputs
# --------------------------------------------------------------------------------------------


def draw_inputs(n: int, seed: int) -> dict[str, np.ndarray]:
    """``logp``, ``logp_behavior``, ``advantage`` in float64, drawn once (see the module docstring)."""
    rng = np.random.default_rng(seed)
    mu = np.clip(rng.beta(0.3, 1.0, size=n), 1e-8, 1.0)
    logp_behavior = np.log(mu)
    del mu
    logp = np.minimum(logp_behavior + rng.normal(0.0, 0.1, size=n), 0.0)
    advantage = rng.standard_normal(n)
    return {"logp": logp, "logp_behavior": logp_behavior, "advantage": advantage}


def as_backend(arrays: dict[str, np.ndarray], backend: str) -> tuple[np.ndarray | torch.Tensor, ...]:
    """The three inputs, in order, as NumPy arrays or as torch tensors sharing their memory."""
    triple = (arrays["logp"], arrays["logp_behavior"], arrays["advantage"])
    if backend in ("torch", "fused"):
        return tuple(torch.from_numpy(a) for a in triple)
    return triple


# --------------------------------------------------------------------------------------------
# Timing
# --------------------------------------------------------------------------------------------


def best_time(fn: Callable[[], object], repeats: int) -> float:
    """Best wall time of ``repeats`` calls of ``fn``, after one untimed warm-up call."""
    fn()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - start)
        del result  # free the output before the next call, outside the timed region
    return best


def floor_pass(logp, logp_behavior, backend: str) -> Callable[[], object]:
    """One bare ``add`` pass over the two log-probability arrays into a preallocated output."""
    if backend in ("torch", "fused"):
        out = torch.empty_like(logp)
        return lambda: torch.add(logp, logp_behavior, out=out)
    out = np.empty_like(logp)
    return lambda: np.add(logp, logp_behavior, out=out)


def bench_one(arrays: dict[str, np.ndarray], backend: str, dtype: str, cfg: Config) -> list[Row]:
    """The floor row and one row per objective for one backend and dtype."""
    inputs = as_backend(arrays, backend)
    n = cfg.tokens
    floor_fn = floor_pass(inputs[0], inputs[1], backend)

    floors: list[float] = []
    times: dict[str, float] = {}
    first: dict[str, float] = {}
    ulps: dict[str, float] = {}
    # the extra per-token inputs some objectives read: pi_old at mu (no gap), Top-K divergences at 0.1
    extra = {"logp_old": inputs[1], "topk_tv": inputs[1] * 0 + 0.1, "topk_kl": inputs[1] * 0 + 0.1}
    for name in ds.objectives.available():
        floors.append(best_time(floor_fn, cfg.repeats))
        obj = ds.objectives.get(name)
        cols = {k: extra[k] for k in obj.required_columns}
        if backend == "fused":
            kernel = fused.kernel(obj, outputs=("weight",))
            start = time.perf_counter()
            w = kernel(*inputs, **cols)[name]["weight"]
            first[name] = time.perf_counter() - start
            eager = obj.weight(*inputs, **cols)
            err = (w - eager).abs() / torch.clamp(eager.abs(), min=1.0)
            err = torch.where(torch.isnan(w) & torch.isnan(eager), 0.0, err)
            ulps[name] = float(err.max()) / torch.finfo(w.dtype).eps
            del w, eager, err
            times[name] = best_time(lambda: kernel(*inputs, **cols), cfg.repeats)
            note = f", first call {first[name]:.1f} s, {ulps[name]:.1f} ulp from eager, {kernel.backend}"
        else:
            times[name] = best_time(lambda: obj.weight(*inputs, **cols), cfg.repeats)
            note = ""
        log(f"{backend:5s} {dtype}: {name:16s} {times[name] * 1e3:9.2f} ms   (floor {floors[-1] * 1e3:.2f} ms{note})")
    floors.append(best_time(floor_fn, cfg.repeats))

    floor = min(floors)
    moved = 3 * n * np.dtype(dtype).itemsize
    rows = [Row(backend, dtype, FLOOR, floor, floor / n * 1e9, 1.0, moved / floor / 1e9, max(floors) / floor)]
    rows += [Row(backend, dtype, name, t, t / n * 1e9, t / floor, first_call_s=first.get(name), ulps=ulps.get(name))
             for name, t in times.items()]
    return rows


def run(cfg: Config) -> list[Row]:
    base = draw_inputs(cfg.tokens, cfg.seed)
    rows: list[Row] = []
    for dtype in cfg.dtypes:
        arrays = base if dtype == "float64" else {k: v.astype(dtype) for k, v in base.items()}
        for backend in cfg.backends:
            rows.extend(bench_one(arrays, backend, dtype, cfg))
        del arrays
    return rows


def log(msg: str) -> None:
    print("  " + msg, file=sys.stderr, flush=True)


# --------------------------------------------------------------------------------------------
# Noise: CPU time taken by other processes
# --------------------------------------------------------------------------------------------


def busy_cpu_seconds() -> float | None:
    """CPU seconds spent busy on all cores since boot (Linux ``/proc/stat``), else ``None``."""
    try:
        with open("/proc/stat") as f:
            fields = f.readline().split()
    except OSError:
        return None
    ticks = [int(x) for x in fields[1:]]
    idle = ticks[3] + (ticks[4] if len(ticks) > 4 else 0)  # idle + iowait
    busy = sum(ticks[:8]) - idle  # user nice system idle iowait irq softirq steal (guest is in user)
    return busy / os.sysconf("SC_CLK_TCK")


def own_cpu_seconds() -> float:
    t = os.times()
    return t.user + t.system


def contention_report(busy0: float | None, own0: float, wall: float) -> str:
    """How much CPU other processes used while the benchmark ran."""
    busy1 = busy_cpu_seconds()
    if busy0 is None or busy1 is None:
        return "CPU time of other processes during the run: n/a (needs Linux /proc/stat)"
    other = max(0.0, (busy1 - busy0) - (own_cpu_seconds() - own0))
    cores = os.cpu_count() or 1
    distorted = other > max(0.5, 0.1 * wall)  # /proc/stat counts in ticks of 10 ms: ignore tiny runs
    return (
        f"CPU time of other processes during the run: {other:.1f} s over {wall:.1f} s wall on {cores} cores "
        f"({other / (wall * cores):.0%} of the machine){'  -- times are distorted' if distorted else ''}"
    )


# --------------------------------------------------------------------------------------------
# Output
# --------------------------------------------------------------------------------------------


def header(cfg: Config) -> str:
    return (
        f"drpo_sim objectives: weight() throughput, {cfg.tokens:,} tokens, best of {cfg.repeats} "
        f"(+1 warm-up)\n"
        f"python {platform.python_version()}, numpy {np.__version__}, torch {torch.__version__} "
        f"(torch.get_num_threads() = {torch.get_num_threads()}; NumPy ufuncs: 1 thread), "
        f"{platform.machine()}, {os.cpu_count()} cores\n"
        f"floor = one bare add(logp, logp_behavior, out=preallocated): 3 * N * itemsize bytes moved; "
        f"x floor = seconds / floor seconds (same backend and dtype)"
    )


def format_table(rows: list[Row]) -> str:
    lines = [f"{'backend':7s} {'dtype':7s} {'objective':16s} {'seconds':>9s} {'ns/token':>9s} {'x floor':>8s}"]
    for i, r in enumerate(rows):
        if i and (r.backend, r.dtype) != (rows[i - 1].backend, rows[i - 1].dtype):
            lines.append("")
        note = f"   ({r.gb_per_s:.1f} GB/s; spread of its timings {r.spread:.2f}x)" if r.gb_per_s else ""
        if r.first_call_s is not None:
            note = f"   (first call {r.first_call_s:.1f} s; {r.ulps:.1f} ulp from the eager weight)"
        lines.append(
            f"{r.backend:7s} {r.dtype:7s} {r.objective:16s} {r.seconds:9.5f} {r.ns_per_token:9.2f} {r.ratio:8.1f}{note}"
        )
    return "\n".join(lines)


CSV_COLUMNS = (
    "backend", "dtype", "objective", "seconds", "ns_per_token", "ratio_to_floor", "floor_gb_per_s", "floor_spread",
    "first_call_s", "ulps_from_eager",
)


def write_csv(rows: list[Row], path: Path) -> None:
    """The table as CSV, written atomically (a temporary file renamed into place)."""
    frame = pd.DataFrame(
        [
            (r.backend, r.dtype, r.objective, r.seconds, r.ns_per_token, r.ratio, r.gb_per_s, r.spread,
             r.first_call_s, r.ulps)
            for r in rows
        ],
        columns=CSV_COLUMNS,
    )
    write_frame(frame, path, float_format="%.6g")


# --------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> Config:
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    p.add_argument("--tokens", type=int, default=Config.tokens, help="tokens per call (default %(default)s)")
    p.add_argument("--repeats", type=int, default=Config.repeats, help="timed calls, best kept (default %(default)s)")
    p.add_argument("--dtype", choices=["float32", "float64", "both"], default="both")
    p.add_argument("--backend", default="numpy,torch,fused",
                   help="comma-separated: numpy, torch (the eager registry), fused (drpo_sim.fused's compiled kernels, "
                        "their first call and agreement reported); default all three")
    p.add_argument("--seed", type=int, default=Config.seed, help="input generator seed (default %(default)s)")
    p.add_argument("--csv", type=Path, default=None, help="also write the table to this CSV file")
    a = p.parse_args(argv)
    if a.tokens < 1 or a.repeats < 1:
        p.error("--tokens and --repeats must be >= 1")
    backends = tuple(b.strip() for b in a.backend.split(",") if b.strip())
    if not backends or set(backends) - set(Config.backends):
        p.error(f"--backend: expected some of {','.join(Config.backends)}, got {a.backend!r}")
    return Config(
        tokens=a.tokens,
        repeats=a.repeats,
        dtypes=Config.dtypes if a.dtype == "both" else (a.dtype,),
        backends=backends,
        seed=a.seed,
        csv=a.csv,
    )


def main(argv: list[str] | None = None) -> None:
    cfg = parse_args(argv)
    print(header(cfg), flush=True)
    busy0, own0, start = busy_cpu_seconds(), own_cpu_seconds(), time.perf_counter()
    rows = run(cfg)
    wall = time.perf_counter() - start
    print()
    print(format_table(rows))
    print()
    print(contention_report(busy0, own0, wall))
    if cfg.csv is not None:
        write_csv(rows, cfg.csv)
        print(f"wrote {cfg.csv}")


if __name__ == "__main__":
    main()
