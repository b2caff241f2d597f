"""The figure jobs (drpo_sim.paper.jobs) on tiny specs: a panel's variants side by side, the same
numbers whatever the number of processes, resumed from the cell store; a convergence figure and
a phase diagram."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from drpo_sim import summaries
from drpo_sim.paper import jobs
from drpo_sim.paper.analyses import ORDER
from drpo_sim.paper.specs import (
    TABULAR_TASK,
    ConvergenceSpec,
    GridProfile,
    PanelFigure,
    PanelSpec,
    PhaseSpec,
    Profile,
    Setting,
    Variant,
)
from drpo_sim.run import lab
from drpo_sim.run.executor import Runner
from drpo_sim.run.store import CellStore

TINY = {**TABULAR_TASK, "vocab_size": 16, "updates_per_batch": 1}

PANEL = PanelSpec(
    name="tiny",
    config=TINY,
    settings=(Setting("a", "clean"), Setting("b", "noisy", {"noise_std": 0.5})),
    variants=(Variant("drpo"), Variant("drpo", {"delta": 0.15})),
    figures=(PanelFigure("tiny_fig", "t", ("drpo", "drpo (delta 0.15)"), ("b",)),),
    quick=Profile(steps=6, seeds=3),
    full=Profile(steps=6, seeds=3),
)


@pytest.fixture(scope="module")
def panel() -> pd.DataFrame:
    return jobs.panel_table(PANEL, "quick", Runner(n_jobs=1))


def test_panel_cells_are_one_per_setting_and_variant():
    cells = jobs.panel_cells(PANEL, "quick")
    assert [(c.labels["setting"], c.labels["variant"]) for c in cells] == [
        ("a", "drpo"), ("a", "drpo (delta 0.15)"), ("b", "drpo"), ("b", "drpo (delta 0.15)")]
    assert all(c.spec["seeds"] == [0, 1, 2] and c.spec["config"]["steps"] == 6 for c in cells)
    assert [c.spec["config"]["noise_std"] for c in cells] == [0.0, 0.0, 0.5, 0.5]
    assert [c.spec["params"] for c in cells[:2]] == [{"delta": 12.5}, {"delta": 0.15}]
    assert len({c.id for c in cells}) == 4


def test_panel_table_runs_variants_of_one_objective_side_by_side_on_cpu(panel):
    df = panel
    assert set(df["variant"]) == {"drpo", "drpo (delta 0.15)"} and set(df["setting"]) == {"a", "b"}
    assert len(df) == 2 * 2 * 3 * 6
    params = {v: json.loads(p)["delta"] for v, p in df[["variant", "method_params"]].drop_duplicates().itertuples(
        index=False)}
    assert params == {"drpo": 12.5, "drpo (delta 0.15)": 0.15}
    # setting a is exactly on-policy: both deltas give the same run (weight 1 at r = 1)
    a = df[df["setting"] == "a"].pivot_table(index=["seed", "step"], columns="variant", values="expected_reward")
    assert (a["drpo"] == a["drpo (delta 0.15)"]).all()
    summary = summaries.panel_summary(df)
    assert len(summary) == 4 and (summary["shift_final_low"] <= summary["shift_final_high"]).all()
    assert (summary.loc[summary["setting"] == "a", "shift_final_iqm"] == 0).all()


def test_panel_table_is_the_same_whatever_the_number_of_processes(panel):
    again = jobs.panel_table(PANEL, "quick", Runner(n_jobs=2))
    pd.testing.assert_frame_equal(panel, again)


def test_panel_figures_draw_write_their_tables_and_resume_from_the_store(panel, tmp_path):
    out = tmp_path / "out"
    runner = Runner(store=CellStore(out / "cells"), n_jobs=1)
    records = jobs.panel_figures(out, PANEL, "quick", runner)
    assert [r.figure for r in records] == ["tiny_fig"] and (out / "tiny_fig.png").is_file()
    assert records[0].files == ["tiny_fig.png"] and records[0].data == "tiny.csv"
    assert records[0].job == "paper.jobs.panel_table" and records[0].seeds == [0, 1, 2]
    assert records[0].config["shown"] == ["drpo", "drpo (delta 0.15)"] and records[0].wall_time_s > 0
    assert (out / "tiny.csv").is_file() and (out / "tiny_summary.csv").is_file()
    assert (runner.last.ran, runner.last.skipped) == (4, 0)
    # the summary of exactly the panel's table (written to 8 significant digits)
    pd.testing.assert_frame_equal(pd.read_csv(out / "tiny_summary.csv"), summaries.panel_summary(panel),
                                  check_dtype=False, rtol=1e-7)
    bands = pd.read_csv(out / "tiny.csv")
    assert set(bands["metric"]) == {"expected_reward", "shift_mean"} and set(bands["setting"]) == {"a", "b"}

    # a second run with the same store computes nothing and writes the same tables
    before = {f: (out / f).read_bytes() for f in ("tiny.csv", "tiny_summary.csv")}
    rerun = Runner(store=CellStore(out / "cells"), n_jobs=1)
    jobs.panel_figures(out, PANEL, "quick", rerun)
    assert (rerun.last.ran, rerun.last.skipped, rerun.last.total) == (0, 4, 4)
    assert {f: (out / f).read_bytes() for f in before} == before


def test_convergence_figures_on_a_tiny_spec(tmp_path):
    spec = ConvergenceSpec(name="tiny_conv", methods=("pg_is", "drpo"), config={**TINY, "noise_std": 0.3},
                           quick=Profile(steps=6, seeds=3), full=Profile(steps=6, seeds=3))
    runner = Runner(n_jobs=1)
    records = jobs.convergence_figures(tmp_path, spec, "quick", runner, formats=("png",))
    assert [r.figure for r in records] == ["tiny_conv"] and records[0].files == ["tiny_conv.png"]
    assert records[0].data == "tiny_conv.csv" and records[0].seeds == [0, 1, 2] and records[0].job == "sim.simulate"
    assert records[0].config["methods"] == ["pg_is", "drpo"] and records[0].config["noise_std"] == 0.3
    assert (tmp_path / "tiny_conv.png").is_file() and runner.last.ran == 2
    bands = pd.read_csv(tmp_path / spec.data_file)
    assert set(bands["method"]) == {"pg_is", "drpo"}
    assert set(bands["metric"]) == {"expected_reward", "shift_mean", "masked_frac"}
    assert (bands["low"] <= bands["iqm"] + 1e-12).all() and (bands["iqm"] <= bands["high"] + 1e-12).all()
    summary = pd.read_csv(tmp_path / spec.summary_file)
    assert set(summary["method"]) == {"pg_is", "drpo"} and (summary["n_seeds"] == 3).all()
    assert {"p_improve", "p_improve_low", "p_improve_high"} <= set(summary.columns)


def test_phase_figures_on_a_tiny_spec(tmp_path):
    grid = GridProfile(steps=6, seeds=2, noise_std=(0.0, 0.5), staleness=(0, 2))
    spec = PhaseSpec(methods=("pg_is", "drpo"), config=TINY, quick=grid, full=grid, name="tiny_phase")
    runner = Runner(store=CellStore(tmp_path / "cells"), n_jobs=1)
    records = jobs.phase_figures(tmp_path, spec, "quick", runner, formats=("png",))
    assert [r.figure for r in records] == ["tiny_phase"] and (tmp_path / "tiny_phase.png").is_file()
    assert records[0].job == "sweep.run_sweep" and records[0].seeds == [0, 1]
    assert runner.last.ran == 2 * 2 * 2
    phase = pd.read_csv(tmp_path / spec.data_file)
    assert set(phase["method"]) == {"pg_is", "drpo"} and phase["stable"].dtype == bool
    assert len(phase) == 2 * 2 * 2
    assert sorted(phase["noise_std"].unique()) == [0.0, 0.5] and sorted(phase["staleness"].unique()) == [0, 2]


# --------------------------------------------------------------------------------------------
# the cells of a spec, before its job runs


@pytest.mark.parametrize("name", list(ORDER))
def test_planned_cells_are_the_cells_the_job_asks_for(name, tmp_path, monkeypatch):
    """reproduce hands planned_cells to the runner early; the job must then ask for exactly
    those cells (no more, or it would wait for the whole prefetch; no fewer, or work is wasted)."""
    monkeypatch.setattr(lab, "pretrain", lambda cfg, cache, progress=False: "checkpoint")  # not hashed into ids
    planned = jobs.planned_cells(ORDER[name].SPEC, "quick", tmp_path)
    asked = []

    class Stop(Exception):
        pass

    class Recording(Runner):
        def run(self, cells, **kwargs):
            asked.extend(cells)
            raise Stop

    if not planned:  # the analyses that train nothing
        assert name in ("weight_table", "fixed_points", "replay_sim")
        return
    with pytest.raises(Stop):
        ORDER[name].run(tmp_path, "quick", ("png",), Recording(store=CellStore(tmp_path / "c")))
    assert sorted(c.id for c in planned) == sorted(c.id for c in asked)
    costs = [jobs._sim_cost(c) for c in planned]
    assert costs == sorted(costs, reverse=True)
