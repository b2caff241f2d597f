"""The generated report (``drpo_sim.paper.report``): its sections, its figure links, its objectives
table (from the registry), and the number check it runs on what it writes (the check itself:
test_numbers.py).

Every test builds its own small results directory in ``tmp_path``, except the one that checks the
committed report against the committed ``figures/``.
"""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import matplotlib
import pandas as pd
import pytest

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from drpo_sim import objectives  # noqa: E402
from drpo_sim.paper import report  # noqa: E402
from drpo_sim.paper.numbers import check_numbers  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
REPO_FIGURES = ROOT / "figures"

CLAIMS = [
    {
        "number": 1,
        "verdict": "supported",
        "reason": ("over a 40x40 (mu, pi) grid DRPO's abs(w - 1) * delta peaks at 0.9975 (bound 1); "
                   "SPO's slope is -1.010"),
        "numbers": {"drpo_delta12.5_max_abs_w_minus_1_times_delta": 0.9975000000000012,
                    "spo_log_peak_vs_log_mu_slope": -1.0095827668970925,
                    "spo_mu1e-05_max_abs_w_minus_1": 7999.920000000001},
        "sources": ["drpo_sim.objectives"],
        "statement": "DRPO's weight stays bounded by 1 + 1/delta for every token; SPO's grows like 1 / mu_min.",
        "figures": ["weight_plane"],
    },
    {
        "number": 5,
        "verdict": "not supported",
        "reason": "grpo masks 13.1% of 1,024 rare tokens against 3.5% of frequent ones",
        "numbers": {"grpo_masked_rare": 0.13080452995893202, "grpo_masked_frequent": 0.03533343899359382,
                    "rare_tokens": 1024.0, "chi2_max_rel_error": 5.2771860598748985e-15},
        "sources": ["summary.csv"],
        "statement": "Ratio clipping over-masks rare tokens (clip fraction concentrated at low mu).",
        "figures": ["convergence", "not_drawn"],
    },
    {
        "number": 12,
        "verdict": "inconclusive",
        "reason": "final reward 0.884 [0.851, 0.914] for DRPO against 0.921 [0.897, 0.942] over 4 seeds",
        "numbers": {"drpo_final_iqm": 0.88445172, "pg_is_final_iqm": 0.92148233, "n_seeds": 4.0},
        "sources": ["summary.csv"],
        "statement": "At delta = 12.5, DRPO behaves measurably differently from pg_is (or it does not).",
    },
]

MANIFEST = {
    "package": "drpo_sim",
    "version": "0.1.0",
    "git_commit": "7af2ff4c45e1ded291b8d77ff111d52a8b818e58",
    "profile": "quick",
    "python": "3.11.7",
    "created_unix": 1795844781.451632,
    "figures": [
        {"figure": "weight_plane", "files": ["weight_plane.png"], "data": "weight_plane.csv",
         "job": "geometry.weight_plane", "config": {"mus": [0.001, 0.1], "deltas": [12.5, 0.15]},
         "wall_time_s": 1.5, "seeds": None},
        {"figure": "convergence", "files": ["convergence.png"], "data": "summary.csv", "job": "sim.simulate",
         "config": {"env": "tabular", "vocab_size": 256, "noise_std": 0.1, "precision": "fp8_e4m3",
                    "staleness": 8, "steps": 50, "lr": 0.0003, "methods": ["pg_is", "drpo"]},
         "wall_time_s": 2.25, "seeds": [0, 1, 2, 3]},
        {"figure": "phase", "files": ["phase.png"], "data": "summary.csv", "job": "sweep.run_sweep",
         "config": {"base": {"env": "tabular", "steps": 30}, "grid": {"noise_std": [0.0, 0.3], "staleness": [0, 8]}},
         "wall_time_s": 0.5, "seeds": [0, 1]},
    ],
}


def _png(path: Path) -> None:
    fig, ax = plt.subplots(figsize=(1, 1), dpi=20)
    ax.plot([0, 1], [0, 1])
    fig.savefig(path)
    plt.close(fig)


def make_results(root: Path) -> Path:
    """A small results directory: claims 1, 5 and 12, a manifest, CSVs, a replay and three PNGs."""
    results = root / "results"
    results.mkdir(parents=True)
    (results / "claims.json").write_text(json.dumps(CLAIMS, indent=2))
    (results / "MANIFEST.json").write_text(json.dumps(MANIFEST, indent=2))
    summary = {"method": ["drpo", "pg_is"], "final_iqm": [0.88445172, 0.92148233],
               "final_low": [0.85102305, 0.8972177], "final_high": [0.91378842, 0.94202027],
               "label": ["0.884 [0.851, 0.914]", "0.921 [0.897, 0.942]"]}
    pd.DataFrame(summary).to_csv(results / "summary.csv", index=False)
    pd.DataFrame({"delta": [12.5, 0.15], "weight_min": [0.9204, -5.6333333], "weight_max": [1.0796, 7.6333333],
                  "corrective_fraction": [0.0, 0.361215625], "bound_low": [0.92, -5.6666667],
                  "bound_high": [1.08, 7.6666667]}).to_csv(results / "drpo_delta_range.csv", index=False)
    (results / "replay_sim_replay.json").write_text(json.dumps({"rare_share": 0.2756, "rare_threshold": 0.01,
                                                                "tokens": 2048}))
    replay = {"objective": ["grpo", "drpo"], "masked_frac": [0.0754, 0.0], "rare_masked_frac": [0.1308, 0.0]}
    pd.DataFrame(replay).to_csv(results / "replay_sim_objectives.csv", index=False)
    for name in ("weight_plane", "convergence", "phase"):
        _png(results / f"{name}.png")
    return results


@pytest.fixture
def results(tmp_path: Path) -> Path:
    return make_results(tmp_path)


def _image_targets(markdown: str) -> list[str]:
    return re.findall(r"!\[[^\]]*\]\(([^)\s]+)\)", markdown)


def _section(markdown: str, heading_start: str) -> str:
    start = markdown.index(heading_start)
    end = markdown.find("\n## ", start + 1)
    return markdown[start:end if end >= 0 else None]


# ----------------------------------------------------------------------------------------------
# the report


def test_report_has_every_section_summary_table_and_verdicts(results: Path, tmp_path: Path) -> None:
    path = report.write_report(results, tmp_path / "paper")
    assert path == tmp_path / "paper" / "README.md"
    text = path.read_text()
    assert text.startswith("<!-- Generated by drpo_sim.paper.report.write_report")
    for heading in ("# ", "## Summary", "## What DRPO is", "## How the toolkit tests it",
                    "## What this does not show", "## Reproduce"):
        assert f"\n{heading}" in "\n" + text, heading
    for n in range(1, 13):
        assert re.search(rf"^## Claim {n}\b", text, re.M), n
    assert "## Claim 1: DRPO's weight stays bounded by 1 + 1/delta" in text
    # the header line comes from the manifest
    assert "`0.1.0`" in text and MANIFEST["git_commit"] in text and "**quick**" in text
    assert "4.25 s" in text  # total wall time: the sum of the figures' wall_time_s
    # summary: one row per claim, verdicts and reasons
    summary = _section(text, "## Summary")
    rows = [line for line in summary.splitlines() if line.startswith("| [")]
    assert len(rows) == 12
    assert "**supported**" in rows[0] and CLAIMS[0]["reason"] in rows[0]
    assert "**not supported**" in rows[4] and "**inconclusive**" in rows[11]
    assert "not tested in this run" in rows[1]
    # claim sections: bold verdict, numbers table, reason, sources
    claim5 = _section(text, "## Claim 5")
    assert "**Verdict: not supported.**" in claim5
    assert "| `grpo_masked_rare` | 0.1308 |" in claim5 and "| `rare_tokens` | 1,024 |" in claim5
    assert "| `chi2_max_rel_error` | 5.277e-15 |" in claim5
    assert CLAIMS[1]["reason"] in claim5 and "[summary.csv](../results/summary.csv)" in claim5
    assert "| `spo_mu1e-05_max_abs_w_minus_1` | 7999.9 |" in _section(text, "## Claim 1")
    assert "Not tested in this run" in _section(text, "## Claim 4")
    # an untested claim whose statement quotes numbers (claim 7's "{2.5, 12.5}") is named without it
    assert re.search(r"^## Claim 7\n", text, re.M) and "statement is in `docs/reference.md`" in text
    # "what DRPO is" quotes the weight range from drpo_delta_range.csv and the rare tokens from the replay
    drpo = _section(text, "## What DRPO is")
    assert "`w = 1 - sign(A)(pi - mu)/delta`" in drpo or "`1 - sign(A)(pi - mu)/delta`" in drpo
    assert "[0.9204, 1.08]" in drpo and "27.6%" in drpo and "`mu <= 0.01`" in drpo
    # configurations quoted from the manifest
    how = _section(text, "## How the toolkit tests it")
    assert "4 (seeds 0–3)" in how and "lr 3e-4" in how and "grid: noise_std {0, 0.3} x staleness {0, 8}" in how


def test_embedded_figures_resolve_relative_to_the_paper_directory(results: Path, tmp_path: Path) -> None:
    paper = tmp_path / "paper"
    text = report.write_report(results, paper).read_text()
    targets = _image_targets(text)
    assert "../results/weight_plane.png" in targets
    assert all((paper / t).resolve().is_file() for t in targets), targets
    # claim 1 and 5 embed their figures; 12 has no `figures` key and embeds none; a figure whose PNG is absent is named
    assert "![weight_plane](../results/weight_plane.png)" in _section(text, "## Claim 1")
    claim5 = _section(text, "## Claim 5")
    assert "![convergence](../results/convergence.png)" in claim5 and "`not_drawn` is not in this run" in claim5
    assert not _image_targets(_section(text, "## Claim 12"))
    # a figure no claim names still appears once, among the other figures
    assert targets.count("../results/phase.png") == 1


def test_report_numbers_all_come_from_the_result_files(results: Path, tmp_path: Path) -> None:
    text = report.write_report(results, tmp_path / "paper").read_text()
    assert check_numbers(text, results) == []
    # and from exactly the files the report reads: the check passes without the others
    narrow = ["claims.json", "MANIFEST.json", "drpo_delta_range.csv", "replay_sim_*"]
    assert check_numbers(text, results, include=narrow) == []


def test_committed_report_is_what_the_committed_results_give(tmp_path: Path) -> None:
    """``paper/README.md`` is regenerated from the committed ``figures/`` and is identical; every
    number it quotes is in the result files it reads; every image it embeds is committed."""
    committed = (ROOT / "paper" / "README.md").read_text()
    fresh = report.render_report(REPO_FIGURES, ROOT / "paper")
    # what the committed and the regenerated report must both satisfy, checked first
    for text in (fresh, committed):
        assert check_numbers(text, REPO_FIGURES, include=report.report_inputs(REPO_FIGURES)) == []
        assert all((ROOT / "paper" / t).resolve().is_file() for t in _image_targets(text))
    claims = json.loads((REPO_FIGURES / "claims.json").read_text())
    assert [c["number"] for c in claims] == list(range(1, 13))
    for claim in claims:
        assert f"**Verdict: {claim['verdict']}.**" in _section(committed, f"## Claim {claim['number']}:")
    assert fresh == committed, "paper/README.md is stale: run drpo-sim report"


def test_write_report_refuses_a_number_it_cannot_trace(results: Path, tmp_path: Path, monkeypatch) -> None:
    real = report.render_report
    monkeypatch.setattr(report, "render_report", lambda r, p: real(r, p) + "\nDRPO reaches 0.777.\n")
    with pytest.raises(ValueError, match=r"'0\.777'"):
        report.write_report(results, tmp_path / "paper")
    assert not (tmp_path / "paper" / "README.md").exists()


def test_tampered_number_is_flagged_and_nothing_else(results: Path, tmp_path: Path) -> None:
    text = report.write_report(results, tmp_path / "paper").read_text()
    tampered = text.replace("## What this does not show", "DRPO reaches 0.777 here.\n\n## What this does not show")
    problems = check_numbers(tampered, results)
    assert len(problems) == 1
    line = tampered[:tampered.index("0.777")].count("\n") + 1
    assert problems[0].startswith(f"line {line}: '0.777' is not in the result files")


def test_the_report_names_its_generator_and_the_reference(results: Path, tmp_path: Path) -> None:
    text = report.write_report(results, tmp_path / "paper").read_text()
    assert text.splitlines()[0].startswith("<!-- Generated by drpo_sim.paper.report.write_report")
    assert "`drpo_sim.paper.numbers.check_numbers`" in text and "`drpo_sim.paper.claims.claim_1`" in text
    assert "`docs/reference.md`" in text and "REFERENCE.md" not in text and "shared/" not in text
    assert report.REPORT_FILE == "README.md"


def test_the_arena_reward_scale_runs_get_their_table(results: Path, tmp_path: Path) -> None:
    from drpo_sim.paper.analyses import arena_reward_scales as ars

    spec = ars.SPEC
    rows = [{"setting": st.name, "reward_scale_spread": st.reward_scale_spread, "objective": c.objective,
             "variant": c.variant, "precision": "bf16", "lr": 3e-4, "seeds": 8, "steps": 400,
             "final_heldout_reward": 0.9 + 0.01 * i + 0.001 * j}
            for j, st in enumerate(spec.settings) for i, c in enumerate(spec.contestants)]
    pd.DataFrame(rows).to_csv(results / spec.summary_file, index=False)
    assert report.render_report(results, tmp_path).count("mixed reward scales (claim 8)") == 0  # no figure yet
    _png(results / f"{spec.name}.png")
    text = report.write_report(results, tmp_path / "paper").read_text()  # its numbers all checked
    section = _section(text, "## The arena with mixed reward scales (claim 8)")
    assert "8 seeds x 400 steps" in section and "![" in section
    assert f"| {ars.label(ars.ABLATION, 0.15)} | 0.94 | 0.941 | 0.942 |" in section
    assert spec.summary_file in report.report_inputs(results)


def test_report_inputs_are_the_files_it_quotes(results: Path) -> None:
    assert report.report_inputs(results) == ["claims.json", "MANIFEST.json", "drpo_delta_range.csv",
                                             "replay_sim_objectives.csv", "replay_sim_replay.json", "summary.csv"]


# ----------------------------------------------------------------------------------------------
# the objectives table: generated from the registry

TABLE_START = ("<!-- objectives table: generated by drpo_sim.paper.report.objectives_table(available(), sources=True); "
               "do not edit -->")
TABLE_END = "<!-- end of generated table -->"


def test_objectives_table_is_the_registry_formulas() -> None:
    table = report.objectives_table(["pg_is", "drpo"]).splitlines()
    assert table[0] == "| objective | surrogate `J` | weight `w` | idea |" and len(table) == 4
    drpo = objectives.get("drpo").formula
    assert table[3] == f"| `drpo` | `{drpo.surrogate}` | `{drpo.weight}` | {drpo.idea} |"
    with_sources = report.objectives_table(["drpo"], sources=True).splitlines()
    assert with_sources[0].endswith("| idea | source |") and with_sources[2].endswith(f"| {drpo.source} |")


def test_the_report_objectives_table_comes_from_the_registry(results: Path, tmp_path: Path, monkeypatch) -> None:
    cls = type(objectives.get("drpo"))
    patched = dataclasses.replace(cls.formula, surrogate="J_FROM_THE_REGISTRY", idea="an idea from the registry")
    monkeypatch.setattr(cls, "formula", patched)
    text = report.render_report(results, tmp_path / "paper")
    assert "| `drpo` | `J_FROM_THE_REGISTRY` | " in text and "an idea from the registry" in text
    monkeypatch.undo()
    assert "J_FROM_THE_REGISTRY" not in report.render_report(results, tmp_path / "paper")


def test_the_reference_page_objectives_table_is_generated() -> None:
    """``docs/reference.md``'s table of every objective is exactly what the registry gives."""
    text = (ROOT / "docs" / "reference.md").read_text()
    assert text.count(TABLE_START) == 1 and text.count(TABLE_END) == 1
    block = text.split(TABLE_START + "\n", 1)[1].split("\n" + TABLE_END, 1)[0]
    assert block == report.objectives_table(objectives.available(), sources=True), (
        "docs/reference.md's objectives table is stale: paste objectives_table(available(), sources=True)")


# ----------------------------------------------------------------------------------------------
# bad input


def test_missing_or_malformed_input_files_give_one_line_errors(tmp_path: Path) -> None:
    results = make_results(tmp_path)
    (results / "MANIFEST.json").unlink()
    with pytest.raises(FileNotFoundError, match="MANIFEST.json"):
        report.write_report(results, tmp_path / "paper")
    (results / "claims.json").unlink()
    with pytest.raises(FileNotFoundError, match="claims.json"):
        report.write_report(results, tmp_path / "paper")
    (results / "MANIFEST.json").write_text(json.dumps(MANIFEST))
    (results / "claims.json").write_text("[{")
    with pytest.raises(ValueError, match=r"claims.json: not valid JSON") as err:
        report.write_report(results, tmp_path / "paper")
    assert "\n" not in str(err.value)
    bad = [{**CLAIMS[0], "verdict": "maybe"}]
    (results / "claims.json").write_text(json.dumps(bad))
    with pytest.raises(ValueError, match=r"claims.json: claim 1: verdict 'maybe'"):
        report.write_report(results, tmp_path / "paper")
    (results / "claims.json").write_text(json.dumps([{k: v for k, v in CLAIMS[0].items() if k != "reason"}]))
    with pytest.raises(ValueError, match=r"claims.json: entry 0: missing 'reason'"):
        report.write_report(results, tmp_path / "paper")
    (results / "claims.json").write_text(json.dumps(CLAIMS))
    (results / "MANIFEST.json").write_text(json.dumps({"version": "0.1.0"}))
    with pytest.raises(ValueError, match=r"MANIFEST.json: 'figures'"):
        report.write_report(results, tmp_path / "paper")
    assert not (tmp_path / "paper").exists()
