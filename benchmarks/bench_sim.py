"""Steps per second of the simulator, against the bytes a step must touch and a per-seed loop.

What it measures
----------------
For each setting (the bandit with V = 32,768 tokens, 64 seeds and 16 samples per step; the same
with V = 1,024; the tabular environment with 8 prompts, a horizon of 8 tokens, V = 256 and 64
seeds, 16 samples per prompt), with and without the off-policy channels (the ``fp8`` noise preset plus a
staleness of 2), the wall time of one training step of :class:`drpo_sim.sim.Simulation`
(sampled mode, Adam, DRPO), as the median of ``--steps`` timed steps after one warm-up step.

The floor
---------
A step works on ``[N, S, V]`` float64 tables (parameters, logits, log-probs, gradients, Adam
moments), each of ``B = N * S * V * 8`` bytes. Whatever the implementation, one step must at
least make these passes over such a table: compute the log-probs from the parameters (read 1,
write 1); form the logits' gradient, which needs ``pi`` (read 1, write 1); and the Adam update
(read parameters, gradient and both moments, write parameters and both moments: 7). That is
``11 B`` bytes. The floor is the time of moving them at the machine's memory bandwidth, measured
on the spot as the best of several bare ``np.copyto`` passes over a table-sized array (2 B
bytes each). A ratio of 5 means the step costs five times that minimal traffic: the sampling
(a cumulative sum per row), the exponentials and logarithms, temporaries, and, for the
channels, the noise draws and the rounding.

The per-seed loop
-----------------
The same simulator run one seed at a time in a Python loop (64 ``Simulation`` objects of one
seed each, stepped in turn): what a straightforward implementation that loops over seeds costs.
The speed-up is the loop's time per step over the vectorised one. It is large where one seed's
arrays are small (the loop then pays Python's per-call overhead 64 times) and smaller where they
are large: at V = 32,768 one seed's table (256 KB) stays in cache during a step, as the vectorised
step's blocks of seeds do (:data:`drpo_sim.sim.SEED_BLOCK_BYTES`), so what the loop loses there
is the per-call overhead on the token arrays and the work the vectorised step shares across seeds.

How to run
----------
::

    python benchmarks/bench_sim.py                  # every setting, 20 timed steps each
    python benchmarks/bench_sim.py --steps 5 --seeds 8 --vocab 4096 --csv sim.csv
    OPENBLAS_NUM_THREADS=1 python benchmarks/bench_sim.py --clock cpu   # on a busy machine

NumPy runs its elementwise work on one thread; other processes on the cores distort the times.
``--clock cpu`` times the process's CPU time instead of the wall time (the bandwidth too), which
other jobs on the cores disturb less. Each line prints the step's time as a multiple of the floor
beside the goal of 5 (issue 18, item 4).
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from drpo_sim import objectives  # noqa: E402
from drpo_sim.sim import SimConfig, Simulation  # noqa: E402

CHANNELS = {"off": {}, "fp8+stale2": {"noise_std": 0.1, "precision": "fp8_e4m3", "staleness": 2}}
TABLE_PASSES = 11
GOAL = 5.0
"""The issue's goal for a step's time, as a multiple of the floor (issue 18, item 4)."""
CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}
"""``wall``: elapsed time; ``cpu``: the process's own CPU time, steadier when other jobs share the
cores (NumPy's elementwise work runs on one thread; run with ``OPENBLAS_NUM_THREADS=1``)."""


def settings(vocab: int, small_vocab: int, tab_vocab: int) -> dict[str, dict]:
    return {
        "bandit": {"env": "bandit", "vocab_size": vocab, "group_size": 16},
        "bandit-small": {"env": "bandit", "vocab_size": small_vocab, "group_size": 16},
        "tabular": {"env": "tabular", "vocab_size": tab_vocab, "n_prompts": 8, "horizon": 8, "group_size": 16},
    }


def time_steps(sims: list[Simulation], steps: int, clock: str = "wall") -> float:
    """Median seconds per step on ``clock``, stepping every simulation once per step."""
    now = CLOCKS[clock]
    for s in sims:
        s.step(1)
    times = []
    for k in range(steps):
        t0 = now()
        for s in sims:
            s.step(k + 2)
        times.append(now() - t0)
    return statistics.median(times)


def bandwidth(nbytes: int, repeats: int = 7, clock: str = "wall") -> float:
    """Bytes per second of a bare copy (read + write) of an array of ``nbytes`` bytes."""
    src = np.random.default_rng(0).random(max(nbytes // 8, 1))
    dst = np.empty_like(src)
    np.copyto(dst, src)
    best = min(_timed(lambda: np.copyto(dst, src), CLOCKS[clock]) for _ in range(repeats))
    return 2 * src.nbytes / best


def _timed(fn, now=time.perf_counter) -> float:
    t0 = now()
    fn()
    return now() - t0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=20, help="timed steps per setting (default 20)")
    ap.add_argument("--seeds", type=int, default=64, help="seeds per run (default 64)")
    ap.add_argument("--vocab", type=int, default=32768, help="bandit vocabulary (default 32768)")
    ap.add_argument("--small-vocab", type=int, default=1024, help="vocabulary of the small bandit (default 1024)")
    ap.add_argument("--tabular-vocab", type=int, default=256, help="tabular vocabulary (default 256)")
    ap.add_argument("--loop-steps", type=int, default=None, help="timed steps of the per-seed loop (default: --steps)")
    ap.add_argument("--clock", choices=sorted(CLOCKS), default="wall",
                    help="wall time, or the process's CPU time (steadier on a busy machine; default wall)")
    ap.add_argument("--csv", help="write the table here")
    args = ap.parse_args(argv)
    obj = objectives.get("drpo")
    seeds = list(range(args.seeds))
    print(f"# drpo_sim simulator benchmark: {platform.processor() or platform.machine()}, numpy {np.__version__}, "
          f"{args.seeds} seeds, Adam, DRPO, sampled mode, {args.clock} clock, goal {GOAL:g} x floor")
    rows = []
    for env, flat in settings(args.vocab, args.small_vocab, args.tabular_vocab).items():
        for ch_name, ch in CHANNELS.items():
            cfg = SimConfig.from_flat({**flat, **ch})
            env_obj = cfg.env.make()
            table_bytes = args.seeds * env_obj.n_states * env_obj.vocab_size * 8
            vec = time_steps([Simulation(cfg, obj, seeds, None)], args.steps, args.clock)
            loop = time_steps(
                [Simulation(cfg, obj, [s], None) for s in seeds], args.loop_steps or args.steps, args.clock
            )
            bw = bandwidth(table_bytes, clock=args.clock)
            floor = TABLE_PASSES * table_bytes / bw
            prompts = cfg.train.prompts_per_step or env_obj.n_prompts
            tokens = args.seeds * prompts * cfg.train.group_size * env_obj.horizon
            rows.append({
                "env": env, "channels": ch_name, "seeds": args.seeds, "vocab": env_obj.vocab_size,
                "states": env_obj.n_states,
                "tokens_per_step": tokens, "table_MB": table_bytes / 1e6, "bandwidth_GBps": bw / 1e9,
                "ms_per_step": vec * 1e3, "steps_per_s": 1 / vec, "floor_ms": floor * 1e3, "x_floor": vec / floor,
                "x_goal": vec / floor / GOAL, "clock": args.clock,
                "loop_ms_per_step": loop * 1e3, "loop_speedup": loop / vec,
            })
            r = rows[-1]
            print(f"{env:12s} {ch_name:11s} {r['ms_per_step']:8.2f} ms/step ({r['steps_per_s']:6.1f} steps/s)  "
                  f"floor {r['floor_ms']:6.2f} ms ({TABLE_PASSES} passes over {r['table_MB']:.1f} MB "
                  f"at {r['bandwidth_GBps']:.1f} GB/s)  {r['x_floor']:5.1f} x floor (goal {GOAL:g}: "
                  f"{'met' if r['x_floor'] <= GOAL else 'not met'})   "
                  f"per-seed loop {r['loop_ms_per_step']:8.2f} ms/step = {r['loop_speedup']:5.1f} x slower")
    if args.csv:
        pd.DataFrame(rows).to_csv(args.csv, index=False, float_format="%.6g")
    return 0


if __name__ == "__main__":
    sys.exit(main())
