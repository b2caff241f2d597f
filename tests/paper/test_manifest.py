"""MANIFEST.json (drpo_sim.paper.manifest): what made each figure; one analysis rerun on its own
replaces its own entries and keeps the others; a malformed manifest is a one-line error."""

from __future__ import annotations

import dataclasses
import json
import platform
import re

import pytest

import drpo_sim
from drpo_sim.paper.manifest import (
    MANIFEST_FILE,
    FigureRecord,
    load_manifest,
    read_json,
    required_json,
    total_wall_time,
    write_manifest,
)


def _record(figure: str, job: str = "geometry.weight_curves", wall: float = 1.0, script: str | None = None):
    return FigureRecord(figure, [f"{figure}.png"], f"{figure}.csv", job, {"objectives": ["drpo"]}, wall, [0, 1],
                        script)


GEOMETRY = [_record(f, script="weight_table") for f in ("weight_vs_pi", "weight_vs_pi_ablations", "weight_plane",
                                                         "drpo_delta_range")]
FLOWS = [_record("fixed_point_flows", "dynamics.rest_point_table", 2.0, "fixed_points")]


def test_write_manifest_records_every_figure_and_the_provenance(tmp_path):
    path = write_manifest(tmp_path, GEOMETRY + FLOWS, profile="quick")
    assert path == tmp_path / MANIFEST_FILE
    manifest = json.loads(path.read_text())
    assert manifest["package"] == "drpo_sim" and manifest["version"] == drpo_sim.__version__
    assert manifest["profile"] == "quick" and manifest["python"] == platform.python_version()
    assert manifest["created_unix"] > 0 and "git_commit" in manifest
    assert isinstance(manifest["git_dirty"], bool)
    assert manifest["figures"] == [{**dataclasses.asdict(r), "git_commit": manifest["git_commit"],
                                    "git_dirty": manifest["git_dirty"]} for r in GEOMETRY + FLOWS]
    assert {r["figure"]: r["script"] for r in manifest["figures"]}["fixed_point_flows"] == "fixed_points"
    assert load_manifest(tmp_path) == manifest
    # a run records the commit it read when it started (reproduce passes it), not the HEAD at its end
    started = json.loads(write_manifest(tmp_path, FLOWS, profile="full", commit="0" * 40, dirty=True).read_text())
    assert started["git_commit"] == "0" * 40 and {f["git_commit"] for f in started["figures"]} == {"0" * 40}
    # and whether the package differed from that commit then: if so, the commit does not name the code
    assert started["git_dirty"] is True and {f["git_dirty"] for f in started["figures"]} == {True}
    assert not list(tmp_path.glob(".*.tmp"))


def test_a_rerun_of_one_analysis_replaces_its_own_entries_and_keeps_the_others(tmp_path):
    write_manifest(tmp_path, GEOMETRY, profile="quick", merge=True)  # merge into nothing: a new manifest
    write_manifest(tmp_path, FLOWS, profile="quick", merge=True)
    manifest = load_manifest(tmp_path)
    assert {r["figure"] for r in manifest["figures"]} == {
        "weight_vs_pi", "weight_vs_pi_ablations", "weight_plane", "drpo_delta_range", "fixed_point_flows"}
    assert manifest["profile"] == "quick"
    # a rerun of one analysis, in another profile, replaces its own entries and keeps the others
    records = [FigureRecord("fixed_point_flows", ["fixed_point_flows.png"], "rest_points.csv", "x", {}, 1.0)]
    write_manifest(tmp_path, records, profile="full", merge=True)
    manifest = load_manifest(tmp_path)
    assert manifest["profile"] == "mixed" and len(manifest["figures"]) == 5
    assert [r["job"] for r in manifest["figures"] if r["figure"] == "fixed_point_flows"] == ["x"]
    assert [r["figure"] for r in manifest["figures"]][:4] == [r.figure for r in GEOMETRY]
    assert {r["git_commit"] for r in manifest["figures"]} == {manifest["git_commit"]}
    # an entry kept from an older manifest without per-figure commits takes that manifest's commit
    old = load_manifest(tmp_path)
    old["git_commit"] = "0ld"
    for r in old["figures"]:
        del r["git_commit"]
    (tmp_path / MANIFEST_FILE).write_text(json.dumps(old))
    write_manifest(tmp_path, FLOWS, profile="full", merge=True)
    commits = {r["figure"]: r["git_commit"] for r in load_manifest(tmp_path)["figures"]}
    assert commits["weight_vs_pi"] == "0ld" and commits["fixed_point_flows"] != "0ld"
    # without merge, the manifest holds exactly the records given
    write_manifest(tmp_path, FLOWS, profile="full")
    manifest = load_manifest(tmp_path)
    assert manifest["profile"] == "full" and [r["figure"] for r in manifest["figures"]] == ["fixed_point_flows"]


@pytest.mark.parametrize("content, error, message", [
    ("{", ValueError, r"MANIFEST.json: not valid JSON \(Expecting property name enclosed in double quotes at line 1\)"),
    ("[]", ValueError, "MANIFEST.json: expected an object, got list"),
    ('{"version": "0.1.0"}', ValueError, "MANIFEST.json: 'figures' should be a list of figure records"),
    ('{"figures": {}}', ValueError, "MANIFEST.json: 'figures' should be a list of figure records"),
    ('{"figures": [{"figure": "a"}, {"files": []}]}', ValueError, r"MANIFEST.json: figures\[1\] has no 'figure' name"),
    ('{"figures": [{"figure": 3}]}', ValueError, r"MANIFEST.json: figures\[0\] has no 'figure' name"),
    ('{"figures": ["a"]}', ValueError, r"MANIFEST.json: figures\[0\] has no 'figure' name"),
])
def test_a_malformed_manifest_is_a_one_line_error_naming_the_file(tmp_path, content, error, message):
    (tmp_path / MANIFEST_FILE).write_text(content)
    with pytest.raises(error, match=message) as err:
        load_manifest(tmp_path)
    assert str(err.value).startswith(str(tmp_path / MANIFEST_FILE)) and "\n" not in str(err.value)


def test_a_missing_manifest_says_what_writes_it(tmp_path):
    with pytest.raises(FileNotFoundError, match=re.escape(
            f"{tmp_path / MANIFEST_FILE}: not found; `drpo-sim reproduce --out {tmp_path}` writes it")):
        load_manifest(tmp_path)
    with pytest.raises(FileNotFoundError, match="claims.json: not found"):
        required_json(tmp_path, "claims.json")
    (tmp_path / "x.json").write_text('{"a": [1, 2]}')
    assert read_json(tmp_path / "x.json") == {"a": [1, 2]} == required_json(tmp_path, "x.json")


def test_total_wall_time():
    figures = [{"figure": "a", "wall_time_s": 1.5}, {"figure": "b", "wall_time_s": 2.25},
               {"figure": "c", "wall_time_s": None}, {"figure": "d", "wall_time_s": True}, {"figure": "e"}, "junk"]
    assert total_wall_time({"figures": figures}) == 3.75  # each job's time, booked on its first figure
    assert total_wall_time({"figures": figures, "wall_time_s": 10}) == 10.0  # a recorded total wins
    assert total_wall_time({"figures": figures, "wall_time_s": "10"}) == 3.75
    assert total_wall_time({"figures": figures, "wall_time_s": False}) == 3.75
    assert total_wall_time({}) == 0.0
    assert isinstance(total_wall_time({"figures": [{"wall_time_s": 2}]}), float)
