"""The geometry figures and the ``drpo-sim`` command line, run as a user would."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from matplotlib import image

from drpo_sim import cli, geometry, report, reproduce

FIGURES = ("weight_vs_pi", "weight_vs_pi_ablations", "weight_plane", "drpo_delta_range")
DATA = ("weight_vs_pi.csv", "weight_plane.csv", "drpo_delta_range.csv", "drpo_delta_curves.csv")


def assert_real_image(path: Path) -> None:
    """A readable PNG of a sensible size that is not one flat colour."""
    assert path.exists() and path.stat().st_size > 10_000, path
    pixels = image.imread(path)
    assert pixels.shape[0] > 400 and pixels.shape[1] > 600
    rgb = pixels[..., :3]
    assert rgb.std() > 0.05, f"{path} looks blank"
    assert len(np.unique((rgb * 255).astype(np.uint8).reshape(-1, 3), axis=0)) > 50


@pytest.fixture(scope="module")
def geometry_out(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("geometry")
    subprocess.run(
        [sys.executable, "-m", "drpo_sim.cli", "geometry", "--out", str(out), "--n-plane", "120"],
        check=True, capture_output=True, text=True,
    )
    return out


def test_geometry_command_writes_every_figure_and_its_data(geometry_out):
    for fig in FIGURES:
        assert_real_image(geometry_out / f"{fig}.png")
    for data in DATA:
        frame = pd.read_csv(geometry_out / data)
        assert len(frame) > 0 and not frame.isna().any().any(), data
    assert not list(geometry_out.glob(".*.tmp")), "a temporary file was left behind"


def test_weight_curves_cover_every_objective_mu_and_sign(geometry_out):
    curves = pd.read_csv(geometry_out / "weight_vs_pi.csv")
    cfg = geometry.GeometryConfig()
    assert set(curves["name"]) == {n for n, _ in cfg.objectives}
    assert sorted(curves["mu"].unique()) == sorted(cfg.mus)
    assert set(curves["adv_sign"]) == {1.0, -1.0}
    at_mu = curves[np.isclose(curves["pi"], curves["mu"], rtol=0, atol=1e-12) & (curves["abs_adv"] == 1.0)]
    k1 = at_mu["name"] == "drpo_kl"
    np.testing.assert_allclose(at_mu[~k1]["weight"], 1.0, atol=1e-7)  # on-policy, every objective is plain PG
    # except the k1 KL penalty, whose gradient vanishes on-policy only in expectation over a ~ mu
    np.testing.assert_allclose(at_mu[k1]["weight"], 1.0 + at_mu[k1]["adv_sign"] / 0.15, rtol=1e-7)
    drpo = curves[curves["name"] == "drpo"]
    assert drpo["weight"].between(1 - 1 / 0.15 - 1e-6, 1 + 1 / 0.15 + 1e-6).all()


def test_plane_masks_and_delta_ranges_match_the_math(geometry_out):
    plane = pd.read_csv(geometry_out / "weight_plane.csv")
    up = plane[plane["adv_sign"] == 1.0]
    # DPPO-TV masks exactly where the shift passes delta in the advantage's direction, and DRPO's
    # weight is negative exactly there: the same geometry (points on the boundary itself, where
    # the CSV's 8 digits cannot decide, are left out)
    off_boundary = np.abs(up["pi"] - up["mu"] - 0.15) > 1e-6
    up = up[off_boundary]
    np.testing.assert_array_equal(up["masked_dppo_tv"], (up["pi"] - up["mu"]) > 0.15)
    np.testing.assert_array_equal(up["weight_drpo"] < 0, up["masked_dppo_tv"])
    ranges = pd.read_csv(geometry_out / "drpo_delta_range.csv").set_index("delta")
    np.testing.assert_allclose(ranges.loc[12.5, ["weight_min", "weight_max"]], [0.92, 1.08], atol=0.005)
    assert ranges.loc[12.5, "corrective_fraction"] == 0.0
    assert ranges.loc[0.15, "corrective_fraction"] > 0.3
    assert (ranges["weight_min"] >= ranges["bound_low"] - 1e-12).all()
    assert (ranges["weight_max"] <= ranges["bound_high"] + 1e-12).all()


@pytest.mark.slow
def test_reproduce_quick_runs_every_analysis_and_writes_the_report(tmp_path):
    out = tmp_path / "figures"
    assert cli.main(["reproduce", "--quick", "--out", str(out), "--formats", "png"]) == 0
    manifest = json.loads((out / "MANIFEST.json").read_text())
    assert manifest["package"] == "drpo_sim" and manifest["profile"] == "quick"
    named = {f for rec in manifest["figures"] for f in rec["files"]}
    replay = ("mismatch", "regions", "weights", "rare_tokens", "by_step")
    extra = ("fixed_point_flows", "convergence_fp8_stale", "convergence_settings", "phase_diagram", "threshold_sensitivity",
             "ablation_abs_adv", "ablation_divergences", "ablation_mask", "anchor_fp8", "anchor_stress",
             "lm_reward", "lm_mismatch",
             *(f"{prefix}_{name}" for prefix in ("replay_sim", "replay_lm_bf16", "replay_lm_fp8") for name in replay))
    assert named == {f"{fig}.png" for fig in FIGURES + extra}
    assert set(p.name for p in out.glob("*.png")) == named  # every image is in the manifest
    for rec in manifest["figures"]:
        assert (rec["config"].get("objectives") or rec["config"].get("methods")) and rec["wall_time_s"] > 0
        assert (Path(reproduce.__file__).parent.parent / "analyses" / rec["script"]).is_file()
        assert (out / rec["data"]).is_file()
        for f in rec["files"]:
            assert_real_image(out / f)
    conv = next(r for r in manifest["figures"] if r["figure"] == "convergence_fp8_stale")
    assert conv["seeds"] and conv["config"]["precision"] == "fp8_e4m3" and conv["config"]["staleness"] > 0
    phase = pd.read_csv(out / "phase_diagram.csv")
    assert set(phase["method"]) == {"pg_is", "grpo", "spo", "dppo_tv", "drpo"} and phase["stable"].dtype == bool
    assert len(phase) == 5 * phase["noise_std"].nunique() * phase["staleness"].nunique()
    assert (out / "sweeps").is_dir()  # the cell stores, so a second run resumes
    sens = pd.read_csv(out / "threshold_sensitivity.csv")
    assert sorted(sens.loc[sens["method"] == "drpo", "delta"].unique()) == [0.15, 0.5, 1.0, 2.5, 5.0, 12.5]
    bands = pd.read_csv(out / "convergence_fp8_stale.csv")
    assert set(bands["method"]) == {"pg_is", "grpo", "spo", "dppo_tv", "drpo"}
    assert (bands["low"] <= bands["iqm"] + 1e-12).all() and (bands["iqm"] <= bands["high"] + 1e-12).all()
    # six settings x six variants, each with its interval; the ablations and anchors likewise
    settings = pd.read_csv(out / "settings_summary.csv")
    assert settings["setting"].nunique() == 6 and len(settings) == 36
    assert (settings["final_low"] <= settings["final_iqm"]).all() and (settings["auc_iqm"] <= settings["auc_high"]).all()
    ablations = pd.read_csv(out / "ablations_summary.csv")
    assert {"drpo_no_abs_adv", "drpo_kl", "drpo_tv", "drpo_k3", "mask_drpo (delta 0.5)"} <= set(ablations["variant"])
    anchor = pd.read_csv(out / "anchor_summary.csv")
    assert {"fp8_stale_rollout", "fp8_stale_recompute", "stress_rollout", "stress_recompute"} == set(anchor["setting"])
    assert (anchor["shift_final_low"] <= anchor["shift_final_high"]).all()
    # the token-log replays: a simulator log and the lab's real bf16 / fp8 rollouts, one code path
    sim = json.loads((out / "replay_sim_replay.json").read_text())
    assert sim["source"]["format"] == "tokens" and sim["tokens"] > 0 and sim["abs_shift_mean"] > 0
    lm = {p: json.loads((out / f"replay_lm_{p}_replay.json").read_text()) for p in ("bf16", "fp8")}
    for p, totals in lm.items():
        assert totals["updates"] == [0] and totals["filtered_tokens"] > 0 and 0 < totals["abs_shift_mean"] < 0.05, p
    summary = pd.read_csv(out / "lm_summary.csv")
    assert set(summary["method"]) == {"pg_is", "grpo", "dppo_tv", "drpo"}
    assert set(summary["precision"]) == {"fp32", "bf16", "fp8"}
    # every claim has a verdict, with its figures drawn
    claims = json.loads((out / "claims.json").read_text())
    assert [c["number"] for c in claims] == list(range(1, 13))
    assert {c["verdict"] for c in claims} <= {"supported", "not supported", "inconclusive"}
    assert claims[0]["verdict"] == claims[1]["verdict"] == claims[2]["verdict"] == "supported"  # exact math
    for c in claims:
        assert c["numbers"] and c["reason"], c["number"]
        assert all((out / f"{f}.png").is_file() for f in c["figures"]), c["number"]
    assert all(c["figures"] for c in claims if c["number"] != 2)  # claim 2 is an identity, with no figure
    # the report: beside figures/, every claim, every image link resolves, every number traceable
    paper = (tmp_path / "paper" / "README.md").read_text()
    for c in claims:
        assert f"## Claim {c['number']}: " in paper and c["reason"] in paper
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", paper)
    assert {Path(link).name for link in links} >= {f"{f}.png" for c in claims for f in c["figures"]}
    assert all((tmp_path / "paper" / link).resolve().is_file() for link in links)
    assert report.check_numbers(paper, out, include=report.report_inputs(out)) == []


def test_list_shows_every_objective(capsys):
    assert cli.main(["list"]) == 0
    out = capsys.readouterr().out
    for name in ("pg_is", "ppo", "grpo", "cispo", "spo", "dppo_tv", "dppo_kl", "drpo", "mask_drpo"):
        assert f"{name}(" in out


def test_bad_arguments_exit_with_status_2_and_one_line(tmp_path):
    res = subprocess.run(
        [sys.executable, "-m", "drpo_sim.cli", "geometry", "--out", str(tmp_path), "--formats", "tiff"],
        capture_output=True, text=True,
    )
    assert res.returncode == 2
    assert res.stderr.strip().splitlines() == [
        "drpo-sim geometry: error: --formats: unsupported tiff; choose from png, pdf, svg"
    ]
    res = subprocess.run(
        [sys.executable, "-m", "drpo_sim.cli", "geometry", "--out", str(tmp_path), "--n-plane", "3"],
        capture_output=True, text=True,
    )
    assert res.returncode == 2 and "--n-plane must be at least 10" in res.stderr
