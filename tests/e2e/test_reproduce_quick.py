"""``drpo-sim reproduce --quick`` end to end: every analysis, the manifest, the twelve claims and
the report with every number checked; then a rerun of one analysis that reads every cell from
the store."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pandas as pd
import pytest
from figure_checks import assert_real_image

import drpo_sim
from drpo_sim import cli
from drpo_sim.config import VERDICTS
from drpo_sim.paper import report
from drpo_sim.paper.analyses import ORDER, weight_table
from drpo_sim.paper.numbers import check_numbers
from drpo_sim.run import executor
from drpo_sim.run.executor import Runner

pytestmark = pytest.mark.slow(seconds=400)

FIGURES = weight_table.SPEC.figures


@pytest.fixture(scope="module")
def quick(tmp_path_factory) -> Path:
    """One ``drpo-sim reproduce --quick`` into a fresh directory; its root (figures/, paper/)."""
    root = tmp_path_factory.mktemp("quick")
    assert cli.main(["reproduce", "--quick", "--out", str(root / "figures"), "--formats", "png",
                     "--compare", "none"]) == 0
    return root


def test_reproduce_quick_runs_every_analysis_and_writes_the_report(quick):
    tmp_path = quick
    out = tmp_path / "figures"
    manifest = json.loads((out / "MANIFEST.json").read_text())
    assert manifest["package"] == "drpo_sim" and manifest["profile"] == "quick"
    named = {f for rec in manifest["figures"] for f in rec["files"]}
    replay = ("mismatch", "regions", "weights", "rare_tokens", "by_step")
    extra = ("fixed_point_flows", "convergence_fp8_stale", "convergence_settings", "phase_diagram",
             "threshold_sensitivity", "divergence_tuning", "ablation_abs_adv", "ablation_divergences",
             "ablation_mask", "reward_scales", "anchor_fp8",
             "anchor_stress", "lm_reward", "lm_mismatch", "sanity_test", "arena_precision", "arena_lr", "arena_moe",
             "arena_grad_share", "arena_order_of_events", "arena_reward_scales", "arena_three_policies",
             "gradient_diagnostics", "gradient_diagnostics_tabular", "gradient_diagnostics_arena",
             *(f"{prefix}_{name}" for prefix in ("replay_sim", "replay_lm_bf16", "replay_lm_fp8") for name in replay))
    assert named == {f"{fig}.png" for fig in FIGURES + extra}
    assert set(p.name for p in out.glob("*.png")) == named  # every image is in the manifest
    package = Path(drpo_sim.__file__).resolve().parent
    for rec in manifest["figures"]:
        assert (rec["config"].get("objectives") or rec["config"].get("methods")) and rec["wall_time_s"] > 0
        # the analysis that made it, a module of the package
        assert rec["script"] in ORDER and Path(ORDER[rec["script"]].__file__).resolve().is_relative_to(package)
        assert (out / rec["data"]).is_file()
        for f in rec["files"]:
            assert_real_image(out / f)
    assert [r["script"] for r in manifest["figures"]] == sorted((r["script"] for r in manifest["figures"]),
                                                                 key=list(ORDER).index)  # in the analyses' order
    conv = next(r for r in manifest["figures"] if r["figure"] == "convergence_fp8_stale")
    assert conv["seeds"] and conv["config"]["precision"] == "fp8_e4m3" and conv["config"]["staleness"] > 0
    phase = pd.read_csv(out / "phase_diagram.csv")
    assert set(phase["method"]) == {"pg_is", "grpo", "spo", "dppo_tv", "drpo"} and phase["stable"].dtype == bool
    assert len(phase) == 5 * phase["noise_std"].nunique() * phase["staleness"].nunique()
    assert (out / "cells").is_dir() and list((out / "cells").glob("*.parquet"))  # the cell store: a rerun resumes
    sens = pd.read_csv(out / "threshold_sensitivity.csv")
    assert sorted(sens.loc[sens["method"] == "drpo", "delta"].unique()) == [0.15, 0.5, 1.0, 2.5, 5.0, 12.5]
    bands = pd.read_csv(out / "convergence_fp8_stale.csv")
    assert set(bands["method"]) == {"pg_is", "grpo", "spo", "dppo_tv", "drpo"}
    assert (bands["low"] <= bands["iqm"] + 1e-12).all() and (bands["iqm"] <= bands["high"] + 1e-12).all()
    # six settings x six variants, each with its interval; the ablations and anchors likewise
    settings = pd.read_csv(out / "settings_summary.csv")
    assert settings["setting"].nunique() == 6 and len(settings) == 36
    assert (settings["final_low"] <= settings["final_iqm"]).all()
    assert (settings["auc_iqm"] <= settings["auc_high"]).all()
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
    assert len(claims) == 12 and [c["number"] for c in claims] == list(range(1, 13))
    assert {c["verdict"] for c in claims} <= set(VERDICTS)
    # each verdict says where it comes from: the world, the quick profile
    assert all(c["world"] and c["profile"] == "quick" for c in claims)
    assert claims[0]["verdict"] == claims[1]["verdict"] == claims[2]["verdict"] == "supported"  # exact math
    for c in claims:
        assert c["numbers"] and c["reason"], c["number"]
        assert all((out / f"{f}.png").is_file() for f in c["figures"]), c["number"]
    assert all(c["figures"] for c in claims if c["number"] != 2)  # claim 2 is an identity, with no figure
    # the report: beside figures/, every claim, every image link resolves, every number traceable
    paper = (tmp_path / "paper" / "README.md").read_text()
    assert paper.startswith("<!-- Generated by drpo_sim.paper.report.write_report")
    for c in claims:
        assert f"## Claim {c['number']}: " in paper and c["reason"] in paper
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", paper)
    assert {Path(link).name for link in links} >= {f"{f}.png" for c in claims for f in c["figures"]}
    assert all((tmp_path / "paper" / link).resolve().is_file() for link in links)
    assert check_numbers(paper, out, include=report.report_inputs(out)) == []
    # no temporary file of an atomic write is left anywhere
    assert not list(tmp_path.rglob("*.tmp"))


def test_rerunning_one_analysis_reads_every_cell_from_the_store(quick, monkeypatch, capsys):
    out = quick / "figures"
    cells = {p.name for p in (out / "cells").glob("*.parquet")}
    before = json.loads((out / "MANIFEST.json").read_text())
    reports = []
    real_run = Runner.run

    def spy(self, *args, **kwargs):
        tables = real_run(self, *args, **kwargs)
        reports.append(self.last)
        return tables

    def refuse(tasks, n_jobs):
        raise AssertionError(f"{len(tasks)} cell(s) computed again; every cell should come from the store")

    monkeypatch.setattr(Runner, "run", spy)
    monkeypatch.setattr(executor, "_local", refuse)
    assert cli.main(["reproduce", "--quick", "--only", "settings", "--out", str(out), "--formats", "png",
                     "--compare", "none"]) == 0
    assert "1 figures in" in capsys.readouterr().out
    assert [(r.ran, r.skipped, r.total) for r in reports] == [(0, 36, 36)]  # six settings x six variants
    assert reports[0].executor == "none (every cell was done)"
    assert {p.name for p in (out / "cells").glob("*.parquet")} == cells  # nothing added, nothing pruned
    after = json.loads((out / "MANIFEST.json").read_text())
    assert [r["figure"] for r in after["figures"]] == [r["figure"] for r in before["figures"] if r["script"] !=
                                                       "settings"] + ["convergence_settings"]
    assert after["profile"] == "quick"
    assert not list(out.rglob("*.tmp"))
