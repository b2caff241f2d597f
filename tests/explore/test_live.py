"""The explorer's live run (:mod:`drpo_sim.explore.live`): the simulator's own metrics, step by step."""

from __future__ import annotations

import numpy as np
import pytest

from drpo_sim import objectives, sim
from drpo_sim.explore.live import LiveRun, seed_mean


def test_live_run_reports_the_simulators_own_metrics_on_cpu():
    config = {"noise_std": 0.1, "precision": "bf16", "staleness": 2, "vocab_size": 64, "lr": 0.05}
    objs = {"drpo": objectives.get("drpo", delta=0.15), "grpo": objectives.get("grpo")}
    live = LiveRun(objs, config, n_seeds=3, max_steps=7)
    first = live.advance(4)
    rest = live.advance(10)  # capped at max_steps
    assert live.done and live.step == 7
    cfg = sim.SimConfig.from_flat({"env": "bandit", **config, "steps": 7})
    for name, obj in objs.items():
        steps = first[name]["step"] + rest[name]["step"]
        assert steps == [float(i) for i in range(1, 8)]
        table = sim.run(cfg, name, [0, 1, 2], params=obj.params)
        per_step = table.groupby("step")[["expected_reward", "shift_mean"]].mean()
        reward = first[name]["reward"] + rest[name]["reward"]
        np.testing.assert_allclose(reward, per_step["expected_reward"], rtol=1e-12)
        np.testing.assert_allclose(first[name]["shift"] + rest[name]["shift"], per_step["shift_mean"], rtol=1e-12)
    assert live.advance(3)["drpo"]["step"] == []
    with pytest.raises(ValueError, match="unknown field"):
        LiveRun(objs, {**config, "steps": 3})


def test_seed_mean_skips_dead_seeds_without_warning():
    assert seed_mean(np.array([1.0, np.nan, 3.0])) == 2.0
    assert np.isnan(seed_mean(np.array([np.nan, np.nan])))
