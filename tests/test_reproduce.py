"""The analyses of ``analyses/`` and how ``drpo-sim reproduce`` runs them (drpo_sim.reproduce)."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from drpo_sim import figures, reproduce

ROOT = Path(__file__).resolve().parent.parent


def test_every_analysis_script_states_its_configuration_and_defines_run():
    found = reproduce.scripts()
    assert [p.name for p in found][:2] == ["01_weight_table.py", "02_fixed_points.py"]
    assert found[-1].name.endswith("_claims.py")  # the claims read what the others wrote: last
    for path in found:
        tree = ast.parse(path.read_text())
        assert ast.get_docstring(tree), f"{path.name}: says what it reproduces"
        names = [n.name for n in tree.body if isinstance(n, ast.FunctionDef)]
        assert names == ["run"], f"{path.name}: one function, run(out, profile, formats)"
        assert callable(reproduce.load(path).run)
        assert 'if __name__ == "__main__"' in path.read_text(), f"{path.name}: runnable on its own"


def test_an_analysis_script_runs_on_its_own_and_merges_into_the_manifest(tmp_path):
    for script in ("01_weight_table.py", "02_fixed_points.py"):
        res = subprocess.run([sys.executable, str(ROOT / "analyses" / script), "--quick", "--out", str(tmp_path),
                              "--formats", "png"], capture_output=True, text=True, cwd=tmp_path)
        assert res.returncode == 0, res.stderr
    manifest = json.loads((tmp_path / "MANIFEST.json").read_text())
    assert {r["figure"] for r in manifest["figures"]} == {
        "weight_vs_pi", "weight_vs_pi_ablations", "weight_plane", "drpo_delta_range", "fixed_point_flows"}
    assert manifest["profile"] == "quick"
    assert {r["figure"]: r["script"] for r in manifest["figures"]}["fixed_point_flows"] == "02_fixed_points.py"
    # a rerun of one script replaces its own entries and keeps the others
    records = [figures.FigureRecord("fixed_point_flows", ["fixed_point_flows.png"], "rest_points.csv", "x", {}, 1.0)]
    figures.write_manifest(tmp_path, records, profile="full", merge=True)
    manifest = json.loads((tmp_path / "MANIFEST.json").read_text())
    assert manifest["profile"] == "mixed" and len(manifest["figures"]) == 5
    assert [r["job"] for r in manifest["figures"] if r["figure"] == "fixed_point_flows"] == ["x"]


def test_bad_profile_and_missing_analyses_are_one_line_errors(tmp_path, monkeypatch):
    with pytest.raises(ValueError, match="unknown profile 'huge'; valid: quick, full"):
        figures.panel_experiment({"quick": {}, "full": {}}, "huge")
    monkeypatch.setenv("DRPO_SIM_ANALYSES", str(tmp_path / "nowhere"))
    with pytest.raises(FileNotFoundError, match="no analyses directory"):
        reproduce.scripts()
    res = subprocess.run([sys.executable, "-m", "drpo_sim.cli", "reproduce", "--out", str(tmp_path)],
                         capture_output=True, text=True, env={**__import__("os").environ, "DRPO_SIM_ANALYSES": str(tmp_path / "nowhere")})
    assert res.returncode == 2 and res.stderr.count("\n") == 1 and "no analyses directory" in res.stderr


def test_panel_experiment_runs_variants_of_one_objective_side_by_side_on_cpu(tmp_path):
    spec = {
        "name": "tiny", "config": {**figures.TABULAR_TASK, "vocab_size": 16, "updates_per_batch": 1},
        "settings": {"a": {"title": "clean"}, "b": {"title": "noisy", "noise_std": 0.5}},
        "variants": {"drpo": ("drpo", {}), "drpo (delta 0.15)": ("drpo", {"delta": 0.15})},
        "figures": {"tiny_fig": {"title": "t", "variants": ["drpo", "drpo (delta 0.15)"], "settings": ["b"]}},
        "quick": {"steps": 6, "seeds": 3}, "full": {"steps": 6, "seeds": 3},
    }
    df = figures.panel_experiment(spec, "quick", n_jobs=1)
    assert set(df["variant"]) == {"drpo", "drpo (delta 0.15)"} and set(df["setting"]) == {"a", "b"}
    assert len(df) == 2 * 2 * 3 * 6
    params = {v: json.loads(p)["delta"] for v, p in df[["variant", "method_params"]].drop_duplicates().itertuples(index=False)}
    assert params == {"drpo": 12.5, "drpo (delta 0.15)": 0.15}
    # setting a is exactly on-policy: both deltas give the same run (weight 1 at r = 1)
    a = df[df["setting"] == "a"].pivot_table(index=["seed", "step"], columns="variant", values="expected_reward")
    assert (a["drpo"] == a["drpo (delta 0.15)"]).all()
    # the same seeds give the same numbers, whatever the number of processes
    again = figures.panel_experiment(spec, "quick", n_jobs=2)
    pd.testing.assert_frame_equal(df, again)
    summary = figures.panel_summary(df)
    assert len(summary) == 4 and (summary["shift_final_low"] <= summary["shift_final_high"]).all()
    assert (summary.loc[summary["setting"] == "a", "shift_final_iqm"] == 0).all()
    records = figures.panel_figures(tmp_path, spec, "quick", n_jobs=1)
    assert [r.figure for r in records] == ["tiny_fig"] and (tmp_path / "tiny_fig.png").is_file()
    assert (tmp_path / "tiny.csv").is_file() and (tmp_path / "tiny_summary.csv").is_file()


def test_report_command_regenerates_the_committed_report_and_names_a_missing_file(tmp_path, capsys):
    from drpo_sim import cli

    assert cli.main(["report", "--results", str(ROOT / "figures"), "--paper", str(tmp_path / "paper")]) == 0
    assert (tmp_path / "paper" / "README.md").read_text().startswith("<!-- Generated by drpo_sim.report")
    assert cli.main(["report", "--results", str(tmp_path / "none"), "--paper", str(tmp_path / "p2")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "claims.json" in err[0] and not (tmp_path / "p2").exists()
