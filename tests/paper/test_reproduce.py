"""``drpo-sim reproduce`` as a library function (drpo_sim.paper.reproduce): the stages it runs, the
two cheap analyses run one at a time into one manifest, and the errors before anything runs.
The whole quick run is in tests/e2e/test_reproduce_quick.py."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

from drpo_sim.paper import jobs
from drpo_sim.paper import reproduce as rp
from drpo_sim.paper.analyses import ORDER
from drpo_sim.paper.manifest import FigureRecord, write_manifest
from drpo_sim.paper.specs import (
    BF16,
    TABULAR_TASK,
    ConvergenceSpec,
    PanelFigure,
    PanelSpec,
    Profile,
    Setting,
    Variant,
)

GEOMETRY_FIGURES = ("weight_vs_pi", "weight_vs_pi_ablations", "weight_vs_pi_more", "weight_plane", "drpo_delta_range",
                    "weight_vs_gap")


def test_the_stages_are_the_analyses_then_the_claims_and_the_report():
    assert rp.STAGES == (*ORDER, "claims", "report")
    assert rp.select(None) == rp.select([]) == list(rp.STAGES)
    # in the pipeline's order, whatever the order given
    assert rp.select(["report", "fixed_points", "weight_table"]) == ["weight_table", "fixed_points", "report"]


def test_an_unknown_stage_is_an_error_listing_the_stages():
    with pytest.raises(ValueError) as err:
        rp.select(["weight_table", "claimz", "figures"])
    text = str(err.value)
    assert text.startswith("--only claimz, figures: unknown; the stages are ") and "\n" not in text
    assert text.endswith(", ".join(rp.STAGES))


def test_bad_profile_and_stage_fail_before_anything_is_written(tmp_path):
    with pytest.raises(ValueError, match="unknown profile 'huge'; valid: quick, full"):
        rp.reproduce(tmp_path / "out", "huge", progress=False)
    with pytest.raises(ValueError, match="--only nope: unknown"):
        rp.reproduce(tmp_path / "out", only=["nope"], progress=False)
    assert not (tmp_path / "out").exists()


def test_the_cheap_analyses_run_one_at_a_time_and_merge_into_the_manifest(tmp_path):
    out = tmp_path / "figures"
    first = rp.reproduce(out, "quick", ("png",), only=["weight_table"], progress=False)
    assert [r.figure for r in first["records"]] == list(GEOMETRY_FIGURES)
    assert first["manifest"] == out / "MANIFEST.json" and first["claims"] is None and first["report"] is None
    assert first["wall_time_s"] > 0
    second = rp.reproduce(out, "quick", ("png",), only=["fixed_points"], progress=False)
    assert [r.figure for r in second["records"]] == ["fixed_point_flows"]
    for fig in (*GEOMETRY_FIGURES, "fixed_point_flows"):
        assert (out / f"{fig}.png").is_file(), fig
    manifest = json.loads((out / "MANIFEST.json").read_text())
    assert {r["figure"] for r in manifest["figures"]} == {*GEOMETRY_FIGURES, "fixed_point_flows"}
    assert manifest["profile"] == "quick"
    # each record names the analysis that ran it
    scripts = {r["figure"]: r["script"] for r in manifest["figures"]}
    assert scripts == {**{f: "weight_table" for f in GEOMETRY_FIGURES}, "fixed_point_flows": "fixed_points"}
    for rec in manifest["figures"]:
        assert (out / rec["data"]).is_file() and rec["files"] == [f"{rec['figure']}.png"]
    assert not (out.parent / "paper").exists()  # no report unless asked
    # a rerun of one analysis replaces its own entries and keeps the others
    records = [FigureRecord("fixed_point_flows", ["fixed_point_flows.png"], "rest_points.csv", "x", {}, 1.0)]
    write_manifest(out, records, profile="full", merge=True)
    manifest = json.loads((out / "MANIFEST.json").read_text())
    assert manifest["profile"] == "mixed" and len(manifest["figures"]) == len(GEOMETRY_FIGURES) + 1
    assert [r["job"] for r in manifest["figures"] if r["figure"] == "fixed_point_flows"] == ["x"]


def test_a_run_from_uncommitted_changes_warns_and_says_so_in_the_manifest(tmp_path, monkeypatch):
    """The commit and whether the package differed from it are read when the run starts; a dirty
    checkout is recorded (the commit alone would not name the code) and warned about."""
    monkeypatch.setattr(rp, "git_commit", lambda: "1" * 40)
    monkeypatch.setattr(rp, "git_dirty", lambda: True)
    with pytest.warns(UserWarning, match="git_dirty = true"):
        rp.reproduce(tmp_path, "quick", ("png",), only=["fixed_points"], progress=False)
    manifest = json.loads((tmp_path / "MANIFEST.json").read_text())
    assert manifest["git_commit"] == "1" * 40 and manifest["git_dirty"] is True
    assert {(r["git_commit"], r["git_dirty"]) for r in manifest["figures"]} == {("1" * 40, True)}


def test_the_claims_on_an_empty_directory_name_the_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"claim 4 reads .*arena_seeds\.csv.*which does not exist"):
        rp.reproduce(tmp_path, only=["claims"], progress=False)
    assert not (tmp_path / "claims.json").exists() and not (tmp_path / "MANIFEST.json").exists()


def _tiny_order():
    """Two small training analyses in the shape of drpo_sim.paper.analyses' modules."""
    task = {**TABULAR_TASK, **BF16, "vocab_size": 16, "updates_per_batch": 1}  # engine noise: a shift to plot
    panel = PanelSpec(name="tiny_panel", config=task,
                      settings=(Setting("a", "clean"), Setting("b", "noisy", {"noise_std": 0.5})),
                      variants=(Variant("drpo"), Variant("grpo")),
                      figures=(PanelFigure("tiny_panel", "t", ("drpo", "grpo")),),
                      quick=Profile(steps=5, seeds=2), full=Profile(steps=5, seeds=2))
    conv = ConvergenceSpec(name="tiny_conv", config=task, methods=("pg_is", "drpo"),
                           quick=Profile(steps=5, seeds=2), full=Profile(steps=5, seeds=2))
    return {
        "panel": SimpleNamespace(SPEC=panel, run=lambda out, p, f, r: jobs.panel_figures(out, panel, p, r, formats=f)),
        "conv": SimpleNamespace(SPEC=conv, run=lambda out, p, f, r: jobs.convergence_figures(out, conv, p, r,
                                                                                           formats=f)),
    }


def test_handing_the_cells_over_early_changes_no_result_file(tmp_path, monkeypatch):
    """With two processes reproduce prefetches every analysis's cells; with one it runs them
    analysis by analysis. The files must be the same byte for byte."""
    monkeypatch.setattr(rp, "ORDER", _tiny_order())
    monkeypatch.setattr(rp, "STAGES", (*rp.ORDER,))
    serial = rp.reproduce(tmp_path / "serial", "quick", ("png",), n_jobs=1, progress=False)
    early = rp.reproduce(tmp_path / "early", "quick", ("png",), n_jobs=2, progress=False)
    assert [r.figure for r in serial["records"]] == [r.figure for r in early["records"]] == ["tiny_panel", "tiny_conv"]
    csvs = sorted(p.name for p in (tmp_path / "serial").glob("*.csv"))
    assert csvs and csvs == sorted(p.name for p in (tmp_path / "early").glob("*.csv"))
    for name in csvs:
        assert (tmp_path / "serial" / name).read_bytes() == (tmp_path / "early" / name).read_bytes(), name
    cells = {run: sorted(p.name for p in (tmp_path / run / rp.CELLS_DIR).glob("*.parquet"))
             for run in ("serial", "early")}
    # 2 x 2 panel cells and 2 convergence cells, one shared: drpo in the clean setting, stored once
    assert len(cells["early"]) == 5 and cells["early"] == cells["serial"]
