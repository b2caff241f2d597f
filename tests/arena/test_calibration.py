"""drpo_sim.arena.calibration: the rule, the record, and the committed calibration the arena's
experiments use."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import pytest

from drpo_sim.arena import calibration
from drpo_sim.arena.model import ArenaModel
from drpo_sim.arena.pretrain import BaseModelConfig
from drpo_sim.arena.task import WalkTask
from drpo_sim.lm.mismatch import PUBLISHED
from drpo_sim.paper.analyses import arena

ROOT = Path(__file__).resolve().parents[2]
COMMITTED = ROOT / "figures" / calibration.CALIBRATION_FILE


def _stats(bf16, fp16, rare, reward=0.5):
    return {"bf16": {"mismatch_mean": bf16, "rare_share": rare, "reward": reward},
            "fp16": {"mismatch_mean": fp16}}


def test_score_by_hand_on_cpu():
    assert calibration.score(_stats(0.004, 0.0005, 0.078)) == pytest.approx(0.0)
    assert calibration.score(_stats(0.002, 0.0001, 0.039)) == pytest.approx(2 * math.log(2))
    assert calibration.score(_stats(0.004, 0.002, 0.078)) == math.inf  # fp16 not well below bf16
    assert calibration.score(_stats(0.004, 0.0005, 0.078, reward=0.95)) == math.inf  # nothing left to learn
    assert calibration.TARGETS["mismatch_mean"] == PUBLISHED["bf16"]["mismatch_mean"]
    assert calibration.TARGETS["rare_share"] == PUBLISHED["bf16"]["rare_share"]


def test_init_statistics_of_a_tiny_base_model_on_cpu():
    task = WalkTask(vocab_size=16, n_classes=4, response_len=6)
    base = BaseModelConfig(model=ArenaModel(vocab_size=16, max_len=task.seq_len, d_model=16, n_heads=2, d_mlp=32),
                           task=task, steps=10)
    st = calibration.init_statistics(base, ("bf16", "fp16"), n_prompts=16)
    assert st["tokens"] == 16 * 6
    assert 0 < st["fp16"]["mismatch_mean"] < st["bf16"]["mismatch_mean"]
    assert 0 <= st["bf16"]["rare_share"] <= 1 and 0 <= st["bf16"]["reward"] <= 1


def test_write_and_load_round_trip_on_cpu(tmp_path):
    base = calibration.base_model(d_model=32, steps=100, zipf=2.0)
    path = calibration.write({"base": dataclasses.asdict(base), "knobs": {}, "grid": [{"score": math.inf}]}, tmp_path)
    assert json.loads(path.read_text())["grid"] == [{"score": None}]  # strict JSON
    assert calibration.load(path) == base
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(ValueError, match=r"bad\.json: not an arena calibration file .*drpo-sim arena calibrate"):
        calibration.load(tmp_path / "bad.json")


def test_the_committed_calibration_is_the_one_the_arena_uses():
    record = json.loads(COMMITTED.read_text())
    assert calibration.load(COMMITTED) == arena.SPEC.base
    assert record["targets"] == calibration.TARGETS and record["rule"] == calibration.RULE
    # the chosen knobs are the best-scoring point of the grid it measured, and the grid is the declared one
    grid = record["grid"]
    assert len(grid) == math.prod(len(v) for v in calibration.GRID.values())
    best = min(grid, key=lambda p: math.inf if p["score"] is None else p["score"])
    assert {k: best[k] for k in calibration.GRID} == {k: record["knobs"][k] for k in calibration.GRID}
    for point in grid:
        assert (point["score"] if point["score"] is not None else math.inf) == pytest.approx(calibration.score(point))
    assert record["measured"]["bf16"] == best["bf16"]
