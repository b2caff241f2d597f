"""The figure jobs (drpo_sim.paper.jobs) on tiny specs: a panel's variants side by side, the same
numbers whatever the number of processes, resumed from the cell store; a convergence figure and
a phase diagram."""

from __future__ import annotations

import dataclasses
import json

import pandas as pd
import pytest
from figure_checks import assert_real_image

from drpo_sim import gradients, summaries
from drpo_sim.arena.model import ArenaModel
from drpo_sim.arena.pretrain import BaseModelConfig
from drpo_sim.arena.task import WalkTask
from drpo_sim.arena.train import ArenaConfig, Contestant
from drpo_sim.paper import jobs
from drpo_sim.paper.analyses import ORDER
from drpo_sim.paper.specs import (
    TABULAR_TASK,
    ArenaProfile,
    ArenaSetting,
    ArenaSpec,
    ConvergenceSpec,
    GradientSpec,
    GradientWorldProfile,
    GridProfile,
    PanelFigure,
    PanelSpec,
    PhaseSpec,
    Profile,
    Setting,
    TuningSpec,
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
    # one row per setting, variant and seed: what the claims' paired tests read
    seeds = pd.read_csv(out / PANEL.seeds_file)
    assert len(seeds) == 2 * 2 * 3 and set(seeds["seed"]) == {0, 1, 2}
    pd.testing.assert_frame_equal(seeds, summaries.seed_table(panel, ["setting", "variant", "method"],
                                                              at_end=("shift_mean",)), check_dtype=False, rtol=1e-7)
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


def test_tuning_figures_run_every_delta_on_seeds_of_their_own(tmp_path):
    spec = TuningSpec(name="tiny_tuning", config=TINY, settings=PANEL.settings, methods=("drpo", "drpo_kl"),
                      deltas=(0.5, 12.5), quick=Profile(steps=4, seeds=2, first_seed=100),
                      full=Profile(steps=4, seeds=2, first_seed=100))
    assert [v.label for v in spec.variants] == ["drpo (delta 0.5)", "drpo (delta 12.5)", "drpo_kl (delta 0.5)",
                                                "drpo_kl (delta 12.5)"]
    assert jobs.planned_cells(spec, "quick", tmp_path) and all(c.spec["seeds"] == [100, 101]
                                                          for c in jobs.planned_cells(spec, "quick", tmp_path))
    records = jobs.tuning_figures(tmp_path, spec, "quick", Runner(n_jobs=1))
    assert [r.figure for r in records] == ["tiny_tuning"] and records[0].seeds == [100, 101]
    assert_real_image(tmp_path / "tiny_tuning.png")
    summary = pd.read_csv(tmp_path / spec.summary_file)
    assert len(summary) == 2 * 4 and set(summary["delta"]) == {0.5, 12.5}
    seeds = pd.read_csv(tmp_path / spec.seeds_file)
    assert set(seeds["seed"]) == {100, 101} and set(seeds["delta"]) == {0.5, 12.5}


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

    if not planned:  # the analyses that train nothing (the gradient sweep computes, in seconds to minutes)
        assert name in ("weight_table", "fixed_points", "gradient_diagnostics", "replay_sim")
        return
    with pytest.raises(Stop):
        ORDER[name].run(tmp_path, "quick", ("png",), Recording(store=CellStore(tmp_path / "c")))
    assert sorted(c.id for c in planned) == sorted(c.id for c in asked)
    costs = [jobs._sim_cost(c) for c in planned]
    assert costs == sorted(costs, reverse=True)


def test_one_arena_cell_per_base_model_goes_first_and_nothing_is_lost(tmp_path):
    """reproduce's prefetch order: the mixture's base, then the dense one, then every other cell
    in its order (the arena's bases are then trained side by side at the start)."""
    names = ("settings", "arena", "arena_reward_scales")
    cells = [c for n in names for c in jobs.planned_cells(ORDER[n].SPEC, "quick", tmp_path)]
    ordered = jobs.base_models_first(cells)
    assert sorted(c.id for c in ordered) == sorted(c.id for c in cells)
    bases = [c.spec["config"]["base"]["model"]["n_experts"] for c in ordered[:2]]
    assert bases[0] > 0 and bases[1] == 0 and all(c.kind == "arena" for c in ordered[:2])
    assert len({json.dumps(c.spec["config"]["base"], sort_keys=True) for c in cells if c.kind == "arena"}) == 2
    rest = [c for c in cells if c.id not in {ordered[0].id, ordered[1].id}]
    assert ordered[2:] == rest
    assert jobs.base_models_first(rest[:5]) == rest[:5]  # no arena cell: unchanged


# --------------------------------------------------------------------------------------------
# the arena


def _tiny_arena():
    task = WalkTask(vocab_size=16, n_classes=4, response_len=6)
    base = BaseModelConfig(model=ArenaModel(vocab_size=16, max_len=task.seq_len, d_model=16, n_heads=2, d_mlp=32),
                           task=task, steps=10)
    return ArenaSpec(
        quick=ArenaProfile(steps=4, seeds=2, eval_every=2, controls=("pg",)),
        full=ArenaProfile(steps=4, seeds=2, eval_every=2, control_seeds=1),
        base=base,
        config=ArenaConfig(base=base, prompts_per_step=2, group_size=4, updates_per_batch=2, n_eval=8),
        contestants=(Contestant.of("pg_is", label="pg"), Contestant.of("dppo_tv", label="tv"),
                     Contestant.of("ppo", anchor="recomputed", label="minirl")),
        controls=("pg", "tv"),
        settings=(ArenaSetting("bf16", "bf16", controls=False), ArenaSetting("fp32", "fp32", precision="fp32"),
                  ArenaSetting("fp16", "fp16", precision="fp16"), ArenaSetting("fp8", "fp8", precision="fp8"),
                  ArenaSetting("bf16_lr_low", "low lr", lr_scale=0.5),
                  ArenaSetting("bf16_lr_high", "high lr", lr_scale=2.0),
                  ArenaSetting("fp32_lr_high", "fp32, high lr", precision="fp32", lr_scale=2.0),
                  ArenaSetting("moe", "moe", moe=True), ArenaSetting("moe_replay", "replay", moe=True,
                                                                      routing_replay=True, only=("tv",))),
        n_experts=2,
    )


def test_arena_figures_on_a_tiny_spec(tmp_path):
    spec = _tiny_arena()
    cells = jobs.arena_cells(spec, "quick")
    assert [c.labels["setting"] for c in cells] == [s.name for s in spec.settings]
    assert [len(c.spec["contestants"]) for c in cells] == [3] + [1] * 8  # quick: the profile's controls
    full = jobs.arena_cells(spec, "full")
    assert [len(c.spec["contestants"]) for c in full][-2:] == [2, 1]  # only=("tv",)
    # the sanity test runs every seed, the controls the first control_seeds of them (the quick profile: all)
    assert [c.spec["seeds"] for c in full] == [[0, 1]] + [[0]] * 8
    assert all(c.spec["seeds"] == [0, 1] for c in cells)
    runner = Runner(store=CellStore(tmp_path / "cells"), n_jobs=1)
    records = jobs.arena_figures(tmp_path, spec, "quick", runner, formats=("png",))
    assert [r.figure for r in records] == list(spec.figures)
    for r in records:
        assert_real_image(tmp_path / r.files[0])
        assert r.seeds == [0, 1] and r.config["methods"] == ["pg", "tv", "minirl"]
    summary = pd.read_csv(tmp_path / spec.summary_file, keep_default_na=False)
    assert list(summary.columns) == list(summaries.ARENA_SUMMARY_COLUMNS)
    assert len(summary) == 3 + 8  # bf16: 3 contestants; each of the 8 control settings: pg (quick ignores only=)
    assert set(summary["variant"]) >= {"", "anchor=recomputed", "moe", "moe_replay"}
    assert summary.loc[summary["precision"] == "fp32", "mismatch_final"].eq(0).all()
    cal = json.loads((tmp_path / spec.calibration_file).read_text())
    assert cal["profile"] == "quick" and cal["grid"] is None and cal["measured"]["bf16"]["mismatch_mean"] > 0
    assert (tmp_path / spec.events_file).is_file() and (tmp_path / spec.data_file).is_file()
    # a rerun reads every cell from the store
    jobs.arena_figures(tmp_path, spec, "quick", runner, formats=("png",))
    assert runner.last.ran == 0 and runner.last.skipped == len(cells)


def test_arena_spec_refuses_what_it_cannot_run():
    spec = _tiny_arena()
    with pytest.raises(ValueError, match="control 'nope' is not a contestant"):
        dataclasses.replace(spec, controls=("nope",))
    with pytest.raises(ValueError, match="shows setting 'fp4', which is not declared"):
        dataclasses.replace(spec, control_figures=(("x", ("fp4",)),))
    with pytest.raises(ValueError, match="runs 'minirl', which is not a control"):
        dataclasses.replace(spec, settings=(ArenaSetting("bf16", "bf16", only=("minirl",)),), control_figures=())
    with pytest.raises(ValueError, match="unknown arena setting 'fp4'"):
        spec.setting("fp4")


def test_gradient_figures_on_a_tiny_spec(tmp_path):
    """Both worlds' sweeps, their equivalence verdicts and every objective in one cell, on the same
    engine and batches: the one-cell table's pg_is and DRPO rows are the sweep's own at that cell."""
    world = GradientWorldProfile(vocab=16, samples=4, batches=40, noise=(0.0, 0.3), staleness=(0, 1))
    spec = GradientSpec(quick={"bandit": world, "tabular": dataclasses.replace(world, vocab=8)},
                        full={"bandit": world}, table_at=(0.3, 1), name="tiny_grad")
    records = jobs.gradient_figures(tmp_path, spec, "quick", formats=("png",))
    assert [r.figure for r in records] == ["tiny_grad", "tiny_grad_tabular"]
    assert spec.figures("quick") == ("tiny_grad", "tiny_grad_tabular") and spec.figures("full") == ("tiny_grad",)
    for record in records:
        assert_real_image(tmp_path / f"{record.figure}.png")
        assert record.config["noise_std"] == [0.0, 0.3] and record.config["methods"] == list(gradients.SWEEP_OBJECTIVES)
        for name in (record.data, f"{record.figure}_equivalence.csv", f"{record.figure}_all_objectives.csv"):
            assert (tmp_path / name).is_file() and name in spec.data_files("quick")
        sweep = pd.read_csv(tmp_path / record.data)
        every = pd.read_csv(tmp_path / f"{record.figure}_all_objectives.csv")
        assert set(every["label"]) == set(spec.every_objective())
        # a cosine is undefined only for an objective whose every token was masked (no mean gradient:
        # geo_mis's 1.001 bound at this mismatch)
        assert (every["cosine"].notna() | (every["norm_ratio"] == 0)).all()
        cell = sweep[(sweep["noise_std"] == 0.3) & (sweep["staleness"] == 1)].set_index("label")
        mine = every.set_index("label")
        for label, same in (("pg_is", "pg_is"), (gradients.QUESTION, "drpo")):
            assert cell.loc[label, "cosine"] == pytest.approx(mine.loc[same, "cosine"], rel=1e-12)
            assert cell.loc[label, "variance"] == pytest.approx(mine.loc[same, "variance"], rel=1e-12)
        verdicts = pd.read_csv(tmp_path / f"{record.figure}_equivalence.csv")
        assert len(verdicts) == 4 and set(verdicts["verdict"]) <= {"equivalent", "different", "undecided"}
