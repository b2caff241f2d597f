"""Replay throughput on a large token log, against a bare read of the same columns, and peak memory.

What it measures
----------------
A synthetic token log in the toolkit's schema (:mod:`drpo_sim.tokens`), ``--tokens`` rows
(default 100 million; about 2.3 GB of Parquet), is written once and cached at ``--path``. Then,
each in a fresh Python process so that its peak resident memory is its own:

* **bare read**: ``pyarrow.parquet.ParquetFile.iter_batches`` over the columns the replay reads,
  touching nothing (the I/O and decompression floor: no validation, no analysis);
* **read + validate**: the same through ``drpo_sim.logs.open_log`` (``--format tokens``), which
  builds a validated :class:`~drpo_sim.tokens.TokenBatch` per batch (casts, finiteness and
  sign checks on every token);
* **replay**: ``drpo-sim replay``'s code path, ``open_log`` then :func:`drpo_sim.analysis.replay`
  with the default objectives (8 of them): every objective's weight on every token, the region
  counts, the weight histograms and the mismatch histograms.

Tokens per second for each, the replay's time over the bare read's, and the peak RSS of each
process (``resource.getrusage``: the replay's bound is the batch size, ``--batch-size``, not the
file). The file is read from the page cache after the first pass, so the bare read measures
decoding, not the disk; run with a cold cache to include the disk.

Why the replay costs more than the read
---------------------------------------
The read decodes about 8 bytes per column per token. The replay evaluates, per token and per
objective, the objective's weight (a handful to a few dozen floating-point operations: ratios,
exponentials, the binary KL of DPPO-KL), then classifies and bins it; each step is a pass of a
torch kernel over the batch. Eight objectives make it compute-bound, so the ratio to the bare
read grows with the number of objectives (``--objectives`` to vary it) and shrinks with the
threads torch may use (``--threads``).

How to run
----------
::

    python benchmarks/bench_replay.py                              # 100M tokens (writes the file once)
    python benchmarks/bench_replay.py --tokens 2000000 --csv r.csv  # a quick look
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

READ_COLUMNS = ["logp", "logp_behavior", "advantage", "mask", "sample_id", "group_id", "position", "step"]
SEQ_LEN = 256  # tokens per response in the synthetic log
GROUP = 16  # responses per prompt group
STEP_TOKENS = 1 << 20  # tokens per training step
#: The replay's stages: (kernels, batches read ahead): the registry read in line (as before issue
#: 18's prefetching reader), the registry with the reader, and the fused kernels with the reader.
STAGES = {"bare": None, "validate": None, "replay-eager-inline": ("eager", 0), "replay-eager": ("eager", 2),
          "replay-fused": ("fused", 2)}
GOAL = 3.0  # issue 18: the replay with 8 objectives within 3 times the bare read


def write_log(path: Path, n_tokens: int, seed: int = 0) -> None:
    """A synthetic log: ``mu`` a mixture of confident tokens and a log-uniform tail down to 1e-6
    (about 8% below 0.01, as REFERENCE.md's published runs), ``pi`` = ``mu`` times a log-normal
    engine mismatch of 0.03 nats (capped at probability 1), one advantage per response."""
    from drpo_sim.tokens import TokenBatch, TokenLogWriter

    rng = np.random.default_rng(seed)
    chunk = STEP_TOKENS
    with TokenLogWriter(path, metadata={"synthetic": True, "tokens": n_tokens, "seed": seed}) as w:
        for start in range(0, n_tokens, chunk):
            n = min(chunk, n_tokens - start)
            idx = np.arange(start, start + n)
            tail = rng.random(n) < 0.25
            logp_b = np.where(tail, rng.uniform(np.log(1e-6), 0.0, n), np.log1p(-rng.beta(0.5, 20.0, n)))
            logp = np.minimum(logp_b + rng.normal(0.0, 0.03, n), 0.0)
            sample = idx // SEQ_LEN
            adv = rng.normal(size=sample[-1] - sample[0] + 1)[sample - sample[0]]
            w.write(TokenBatch.from_arrays(
                logp=logp, logp_behavior=logp_b, advantage=adv, mask=np.ones(n, bool), sample_id=sample,
                group_id=sample // GROUP, position=(idx % SEQ_LEN).astype(np.int32), step=idx // STEP_TOKENS))


def _stage(stage: str, path: str, batch_size: int, objectives: str | None, threads: int) -> dict:
    """Run one stage in this process and return its tokens, seconds and peak RSS."""
    import torch

    torch.set_num_threads(threads)
    compile_s = 0.0
    t0 = time.perf_counter()
    if stage == "bare":
        import pyarrow.parquet as pq

        n = 0
        with pq.ParquetFile(path, pre_buffer=False) as pf:  # as the loaders read: bounded memory
            for rb in pf.iter_batches(batch_size=batch_size, columns=READ_COLUMNS):
                n += rb.num_rows
    elif stage == "validate":
        from drpo_sim.logs import open_log

        n = sum(len(b) for b in open_log(path, fmt="tokens", batch_size=batch_size))
    elif STAGES.get(stage) is not None:
        from drpo_sim import analysis
        from drpo_sim.logs import open_log

        names = objectives.split(",") if objectives else None
        kernels, prefetch = STAGES[stage]
        acc_objectives = analysis.objective_specs(names)
        result = analysis.replay(open_log(path, fmt="tokens", batch_size=batch_size), acc_objectives,
                                 kernels=kernels, prefetch=prefetch)
        n = result.totals["tokens"]
        if kernels == "fused":
            from drpo_sim import fused

            elementwise = {label: o for label, o in acc_objectives.items() if o.elementwise}
            compile_s = sum(fused.kernel(elementwise, outputs=("weight",)).first_call_seconds.values())
    else:
        raise ValueError(stage)
    seconds = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: kilobytes
    return {"stage": stage, "tokens": n, "seconds": seconds, "peak_rss_bytes": peak, "first_call_s": compile_s}


def run_stage(stage: str, args: argparse.Namespace) -> dict:
    cmd = [sys.executable, __file__, "--stage", stage, "--path", str(args.path), "--batch-size", str(args.batch_size),
           "--threads", str(args.threads)]
    if args.objectives:
        cmd += ["--objectives", args.objectives]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--tokens", type=int, default=100_000_000, help="rows in the synthetic log (default 1e8)")
    p.add_argument("--path", type=Path, help="where to cache the log (default: the temp dir, named by size)")
    p.add_argument("--batch-size", type=int, default=1 << 20, help="tokens per batch (default 1048576)")
    p.add_argument("--objectives", help="comma-separated objectives (default: drpo_sim.config.REPLAY_OBJECTIVES)")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="torch threads (default: all cores)")
    p.add_argument("--repeats", type=int, default=1, help="runs of each stage; the fastest is kept")
    p.add_argument("--csv", type=Path, help="also write the table as CSV")
    p.add_argument("--stage", help=argparse.SUPPRESS)
    p.add_argument("--stages", help=f"comma-separated stages to run (default all: {', '.join(STAGES)}; bare always)")
    args = p.parse_args()

    if args.path is None:
        import tempfile

        args.path = Path(tempfile.gettempdir()) / f"drpo_sim_bench_replay_{args.tokens}.parquet"
    if args.stage:
        print(json.dumps(_stage(args.stage, str(args.path), args.batch_size, args.objectives, args.threads)))
        return

    from drpo_sim.tokens import read_token_log_metadata

    fresh = not args.path.exists() or read_token_log_metadata(args.path).get("tokens") != args.tokens
    if fresh:
        t = time.perf_counter()
        write_log(args.path, args.tokens)
        print(f"wrote {args.tokens:,} tokens to {args.path} ({args.path.stat().st_size / 1e9:.2f} GB) "
              f"in {time.perf_counter() - t:.0f} s")
    rows = []
    chosen = ["bare", *[x.strip() for x in args.stages.split(",") if x.strip() != "bare"]] if args.stages else STAGES
    for stage in chosen:
        runs = [run_stage(stage, args) for _ in range(max(1, args.repeats))]
        rows.append(min(runs, key=lambda r: r["seconds"]))
    table = pd.DataFrame(rows)
    table["tokens_per_s"] = table["tokens"] / table["seconds"]
    table["x_bare_read"] = table["seconds"] / table.loc[table["stage"] == "bare", "seconds"].iloc[0]
    bare = table.loc[table["stage"] == "bare", "seconds"].iloc[0]
    table["x_bare_without_first_calls"] = (table["seconds"] - table["first_call_s"]) / bare
    table["goal"] = np.where(table["stage"].str.startswith("replay"), GOAL, np.nan)
    table["peak_rss_mb"] = table["peak_rss_bytes"] / 1e6
    table["threads"] = args.threads
    table["batch_size"] = args.batch_size
    print(f"# {platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch threads {args.threads}, "
          f"file {args.path.stat().st_size / 1e9:.2f} GB")
    print(table[["stage", "tokens", "seconds", "tokens_per_s", "x_bare_read", "first_call_s",
                 "x_bare_without_first_calls", "goal", "peak_rss_mb"]].to_string(
        index=False, float_format=lambda v: f"{v:,.3g}"))
    if args.csv:
        table.to_csv(args.csv, index=False)


if __name__ == "__main__":
    main()
