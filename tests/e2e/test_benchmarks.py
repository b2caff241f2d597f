"""The benchmark scripts of benchmarks/ run end to end (at a toy size: timings are never asserted)."""

import subprocess
import sys
from pathlib import Path

import pandas as pd

import drpo_sim as ds

ROOT = Path(__file__).resolve().parents[2]


def test_benchmark_script_writes_its_table(tmp_path):
    out = tmp_path / "bench.csv"
    res = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "bench_objectives.py"), "--tokens", "5000", "--repeats", "1",
         "--csv", str(out), "--backend", "numpy,torch"],  # fused compiles every objective: minutes
        capture_output=True, text=True, check=True,
    )
    assert "x floor" in res.stdout
    table = pd.read_csv(out)
    expected = set(ds.objectives.available()) | {"(bare add)"}
    for (backend, dtype), rows in table.groupby(["backend", "dtype"]):
        assert set(rows["objective"]) == expected, (backend, dtype)
    assert (table["seconds"] > 0).all() and len(table) == 4 * len(expected)


def test_policy_loss_benchmark_writes_its_table(tmp_path):
    out = tmp_path / "loss.csv"
    res = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "bench_policy_loss.py"), "--batch", "4", "--tokens", "64",
         "--repeats", "1", "--csv", str(out)],
        capture_output=True, text=True, check=True,
    )
    assert "goals (issue 18)" in res.stdout and "metrics off/default/full: bit for bit" in res.stdout
    table = pd.read_csv(out)
    assert list(table["objective"].unique()) == ["drpo", "ppo", "grpo"] and len(table) == 15
    for _, rows in table.groupby("objective"):
        assert list(rows["variant"]) == ["off", "default", "full", "peer", "peer, loss only"]
    assert (table[["ms", "peak_mib", "time_x_peer", "mem_x_peer"]] > 0).all().all()


def test_simulator_benchmark_writes_its_table(tmp_path):
    out = tmp_path / "sim.csv"
    res = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "bench_sim.py"), "--steps", "1", "--seeds", "2", "--vocab", "256",
         "--small-vocab", "16", "--tabular-vocab", "8", "--csv", str(out)],
        capture_output=True, text=True, check=True,
    )
    assert "x floor" in res.stdout and "per-seed loop" in res.stdout
    table = pd.read_csv(out)
    assert set(table["env"]) == {"bandit", "bandit-small", "tabular"} and len(table) == 6
    assert (table[["ms_per_step", "floor_ms", "loop_ms_per_step"]] > 0).all().all()


def test_sweep_benchmark_writes_its_table(tmp_path):
    out = tmp_path / "sweep.csv"
    res = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "bench_sweep.py"), "--cells", "4", "--steps", "2", "--seeds", "2",
         "--vocab", "64", "--repeats", "1", "--csv", str(out)],
        capture_output=True, text=True, check=True,
    )
    assert "Dask overhead over local processes" in res.stdout
    table = pd.read_csv(out)
    assert list(table["mode"]) == ["single", "local", "dask"] and (table["cells"] == 4).all()
    assert (table[["seconds", "cold_seconds", "cells_per_min", "cluster_start_seconds"]] > 0).all().all()


def test_replay_benchmark_writes_its_table(tmp_path):
    out = tmp_path / "replay.csv"
    res = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "bench_replay.py"), "--tokens", "20000", "--batch-size", "8192",
         "--path", str(tmp_path / "log.parquet"), "--threads", "1", "--csv", str(out), "--objectives", "pg_is,drpo"],
        capture_output=True, text=True, check=True,
    )
    assert "x_bare_read" in res.stdout
    table = pd.read_csv(out)
    assert list(table["stage"]) == ["bare", "validate", "replay-eager-inline", "replay-eager", "replay-fused"]
    assert (table["tokens"] == 20000).all() and (table["seconds"] > 0).all() and (table["peak_rss_mb"] > 0).all()
    fused_row = table[table["stage"] == "replay-fused"].iloc[0]
    assert 0 < fused_row["first_call_s"] < fused_row["seconds"]  # the two kernels' compilation, reported
    assert (table.loc[table["stage"].str.startswith("replay"), "goal"] == 3).all()


def test_arena_benchmark_writes_its_table(tmp_path):
    out = tmp_path / "arena.csv"
    res = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "bench_arena.py"), "--runs", "2", "--repeats", "1",
         "--precisions", "bf16", "--csv", str(out)],
        capture_output=True, text=True, check=True,
    )
    assert "time per token of the bare torch forward+backward" in res.stdout
    table = pd.read_csv(out)
    # bf16 is one of the precisions drpo_sim.arena.reduced computes, so its rollout is also timed with torch's kernels
    assert list(table["phase"]) == ["rollout", "rollout, torch's kernels", "update", "bare forward",
                                    "bare forward+backward"]
    assert (table["tokens_per_s"] > 0).all() and (table["tokens"] == 2 * 32 * 64).all()
