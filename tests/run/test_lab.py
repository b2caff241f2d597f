"""drpo_sim.run.lab: the lab's comparison (objectives x precisions x seeds) as cells of a Runner with a
cell store: its table and token logs, a rerun served from the store, and its checks of the input."""

from __future__ import annotations

import dataclasses
import shutil

import pandas as pd
import pytest

from drpo_sim.results import read_results
from drpo_sim.run import lab
from drpo_sim.run.executor import Runner
from drpo_sim.run.lab import CACHE_DIR, RESULTS_FILE, TOKENS_DIR, compare, token_log_name
from drpo_sim.run.store import CellStore
from drpo_sim.tokens import load_token_log, read_token_log_metadata

OBJECTIVES, PRECISIONS, SEEDS, STEPS = ("pg_is", "drpo"), ("fp32", "bf16"), 2, 3
N_CELLS = len(OBJECTIVES) * len(PRECISIONS) * SEEDS


def _compare(out, runner, ckpt, **kwargs):
    return compare(OBJECTIVES, PRECISIONS, SEEDS, STEPS, out, runner=runner, cache_dir=ckpt.path.parent, **kwargs)


def test_compare_end_to_end_and_a_rerun_is_read_from_the_store(tmp_path, lm_checkpoint):
    out = tmp_path / "out"
    runner = Runner(store=CellStore(tmp_path / "cells"), n_jobs=1)
    comparison = _compare(out, runner, lm_checkpoint)
    assert runner.last.ran == N_CELLS and runner.last.skipped == 0 and runner.last.total == N_CELLS

    df, meta = read_results(out / RESULTS_FILE)
    pd.testing.assert_frame_equal(df, comparison.table)
    assert len(df) == 2 * 2 * 2 * 3
    assert {"method", "precision", "seed", "step", "eval_reward", "mismatch_mean"} <= set(df.columns)
    assert list(df.columns[:4]) == ["method", "precision", "seed", "step"]
    assert df.equals(df.sort_values(["method", "precision", "seed", "step"], ignore_index=True))
    assert (df.loc[df.precision == "fp32", "mismatch_mean"] == 0).all()
    assert (df.loc[df.precision == "bf16", "mismatch_mean"] > 0).all()
    assert meta["objectives"] == ["pg_is", "drpo"] and meta["seeds"] == [0, 1]
    assert meta["precisions"] == ["fp32", "bf16"] and meta["results"] == RESULTS_FILE
    assert meta["pretrain"] == dataclasses.asdict(lm_checkpoint.config)
    assert meta["lab"]["steps"] == STEPS and "objective" not in meta["lab"]
    assert comparison.seeds == [0, 1] and comparison.checkpoint.path == lm_checkpoint.path
    assert not (out / CACHE_DIR).exists()  # the checkpoint came from cache_dir

    # token logs of the first seed of every objective, copied out of the store into out/lm_tokens/
    logs = sorted(p.name for p in (out / TOKENS_DIR).iterdir())
    assert logs == ["drpo_bf16_seed0.parquet", "drpo_fp32_seed0.parquet", "pg_is_bf16_seed0.parquet",
                    "pg_is_fp32_seed0.parquet"]
    assert comparison.token_logs == [f"{TOKENS_DIR}/{name}" for name in logs] == meta["token_logs"]
    assert token_log_name("drpo", "bf16", 0) == "drpo_bf16_seed0.parquet"
    tokens = load_token_log(out / TOKENS_DIR / "drpo_bf16_seed0.parquet")
    assert len(tokens) > 0 and set(tokens.seed.tolist()) == {0} and sorted(set(tokens.step.tolist())) == [1, 2, 3]
    assert read_token_log_metadata(out / TOKENS_DIR / "drpo_bf16_seed0.parquet")["config"]["precision"] == "bf16"

    # the same arguments again, with a new runner on the same store: every cell is read, none is run
    again = Runner(store=CellStore(tmp_path / "cells"), n_jobs=1)
    second = _compare(out, again, lm_checkpoint)
    assert again.last.skipped == N_CELLS and again.last.ran == 0
    pd.testing.assert_frame_equal(second.table, comparison.table)
    assert second.token_logs == comparison.token_logs
    # and a comparison over part of it is served from the store too
    part = Runner(store=CellStore(tmp_path / "cells"), n_jobs=1)
    sub = compare(["drpo"], ["bf16"], [1], STEPS, tmp_path / "part", runner=part, cache_dir=lm_checkpoint.path.parent,
                  token_log_objectives=())
    assert part.last.skipped == 1 and part.last.ran == 0 and not sub.token_logs
    expect = comparison.table.query("method == 'drpo' and precision == 'bf16' and seed == 1").reset_index(drop=True)
    pd.testing.assert_frame_equal(sub.table, expect)


def test_compare_defaults_keep_cells_and_checkpoint_under_out(tmp_path, lm_checkpoint):
    """Without a runner the cells go to ``out/cells``; without a cache directory the checkpoint to
    ``out/lm_cache`` (seeded here with the shared checkpoint, so nothing is pretrained again)."""
    out = tmp_path / "out"
    (out / CACHE_DIR).mkdir(parents=True)
    shutil.copy(lm_checkpoint.path, out / CACHE_DIR / lm_checkpoint.path.name)
    comparison = compare("drpo", "fp32", [3], 2, out, lab={"group_size": 4, "prompts_per_step": 2,
                                                           "updates_per_batch": 2, "n_eval": 16},
                         params={"drpo": {"delta": 2.5}}, token_log_objectives=[])
    assert comparison.checkpoint.path == out / CACHE_DIR / lm_checkpoint.path.name
    assert len(list((out / "cells").glob("*.parquet"))) == 1 and not (out / TOKENS_DIR).exists()
    df = comparison.table
    assert list(df["step"]) == [1, 2] and set(df["seed"]) == {3} and (df["group_size"] == 4).all()
    assert comparison.config["method_params"] == {"drpo": {"delta": 2.5}}
    assert comparison.config["lab"]["group_size"] == 4


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"precisions": ("fp4",)}, "unknown precision"),
        ({"objectives": ("nope",)}, "unknown objective"),
        ({"objectives": ""}, "objectives: give at least one"),
        ({"objectives": "drpo,drpo"}, "objectives: drpo listed twice"),
        ({"seeds": 0}, "seeds must be >= 1"),
        ({"seeds": [1, 1]}, "seeds must be distinct non-negative integers"),
        ({"seeds": True}, "seeds must be a number of seeds"),
        ({"params": {"spo": {"eps": 1.0}}}, "parameters given for spo, which is not among the objectives"),
        ({"params": {"drpo": {"eps": 1.0}}}, "no parameter 'eps'"),
        ({"lab": {"seed": 3}}, r"lab fields \['seed'\] are set by compare itself"),
        ({"lab": {"lr": -1.0}}, "lr must be a finite number > 0"),
        ({"runner": Runner(n_jobs=1)}, "give the runner a cell store"),
    ],
)
def test_compare_rejects_bad_input_before_any_work(tmp_path, kwargs, match):
    args = {"objectives": ("pg_is", "drpo"), "precisions": ("fp32",), "seeds": 1, "steps": 1, **kwargs}
    out = tmp_path / "out"
    with pytest.raises(ValueError, match=match):
        compare(args.pop("objectives"), args.pop("precisions"), args.pop("seeds"), args.pop("steps"), out, **args)
    assert not out.exists()  # checked before anything is written or trained


def test_file_names():
    assert (lab.RESULTS_FILE, lab.TOKENS_DIR, lab.CACHE_DIR) == ("lm_compare.parquet", "lm_tokens", "lm_cache")
    assert token_log_name("pg_is", "fp8", 12) == "pg_is_fp8_seed12.parquet"
