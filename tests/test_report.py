"""The generated report (``drpo_sim.report``): its sections, its figure links, and the number check
that keeps every number it shows traceable to a result file.

Every test builds its own small results directory in ``tmp_path``; the one test that reads the
repository's ``figures/`` falls back to the synthetic directory when that holds no run.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import matplotlib
import numpy as np
import pandas as pd
import pytest

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from drpo_sim import report  # noqa: E402

REPO_FIGURES = Path(__file__).resolve().parents[1] / "figures"

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
    assert re.search(r"^## Claim 7\n", text, re.M) and "statement is in `shared/REFERENCE.md`" in text
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
    assert report.check_numbers(text, results) == []
    # and from exactly the files the report reads: the check passes without the others
    narrow = ["claims.json", "MANIFEST.json", "drpo_delta_range.csv", "replay_sim_*"]
    assert report.check_numbers(text, results, include=narrow) == []


def test_committed_report_is_what_the_committed_results_give(tmp_path: Path) -> None:
    """``paper/README.md`` is regenerated from the committed ``figures/`` and is identical; every
    number it quotes is in the result files it reads; every image it embeds is committed."""
    committed = (REPO_FIGURES.parent / "paper" / "README.md").read_text()
    fresh = report.render_report(REPO_FIGURES, REPO_FIGURES.parent / "paper")
    assert fresh == committed, "paper/README.md is stale: run drpo-sim report"
    assert report.check_numbers(committed, REPO_FIGURES, include=report.report_inputs(REPO_FIGURES)) == []
    assert all((REPO_FIGURES.parent / "paper" / t).resolve().is_file() for t in _image_targets(committed))
    claims = json.loads((REPO_FIGURES / "claims.json").read_text())
    assert [c["number"] for c in claims] == list(range(1, 13))
    for claim in claims:
        assert f"**Verdict: {claim['verdict']}.**" in _section(committed, f"## Claim {claim['number']}:")


def test_write_report_refuses_a_number_it_cannot_trace(results: Path, tmp_path: Path, monkeypatch) -> None:
    real = report.render_report
    monkeypatch.setattr(report, "render_report", lambda r, p: real(r, p) + "\nDRPO reaches 0.777.\n")
    with pytest.raises(ValueError, match=r"'0\.777'"):
        report.write_report(results, tmp_path / "paper")
    assert not (tmp_path / "paper" / "README.md").exists()


# ----------------------------------------------------------------------------------------------
# the number check


def test_tampered_number_is_flagged_and_nothing_else(results: Path, tmp_path: Path) -> None:
    text = report.write_report(results, tmp_path / "paper").read_text()
    tampered = text.replace("## What this does not show", "DRPO reaches 0.777 here.\n\n## What this does not show")
    problems = report.check_numbers(tampered, results)
    assert len(problems) == 1
    line = tampered[:tampered.index("0.777")].count("\n") + 1
    assert problems[0].startswith(f"line {line}: '0.777' is not in the result files")


def test_precision_percent_scientific_grouping_and_sign(tmp_path: Path) -> None:
    results = tmp_path / "r"
    results.mkdir()
    pd.DataFrame({"x": [0.88445, 0.131, 0.00123, 1024.0, -1.0095, 24.0]}).to_csv(results / "x.csv", index=False)
    pool = report.number_pool(results)

    def bad(text: str) -> list[str]:
        return [p.split("'")[1] for p in report.check_numbers(text, results, pool=pool)]

    assert bad("0.884 0.88 0.8845 13.1% 13% 0.131 1.2e-03 1.23e-3 0.00123 1,024 1024 -1.010 -1.01 24 24.0") == []
    assert bad("0.886") == ["0.886"]                          # outside half a unit of 0.88445
    assert bad("13.3%") == ["13.3%"] and bad("1.4e-03") == ["1.4e-03"]
    assert bad("1.010") == ["1.010"] and bad("-0.131") == ["-0.131"]   # signs must agree
    assert bad("25") == ["25"] and bad("1,025") == ["1,025"]  # integers shown match exactly
    assert bad("DRPO reaches 0.777 and 13.1% with 1.2e-03") == ["0.777"]
    assert bad("\u22121.01") == []                            # a Unicode minus is a sign too


def test_excluded_text_and_identifiers_are_not_checked(results: Path) -> None:
    ignored = "\n".join([
        "## 37. A numbered heading",
        "Claim 37 and claims 38 are numbered, not measured.",
        "```sh\ndrpo-sim reproduce --seeds 0.777\n```",
        "![plot 1](../results/run_0.777.png) and [a link](https://example.org/0.777?x=0.666)",
        "<!-- 0.777 in a comment -->",
        "identifiers: fp8, bf16, fp8_e4m3, e4m3, `drpo_delta0.777_max`, ratio_099_to_080, commit 45e1ded291b8",
        "formulas: `w = 1 - sign(A)(pi - mu)/delta`, `(r-1)^2 / (2*delta)`, `[1 - 1/delta, 1 + 1/delta]`",
        "version `0.1.0`, Python `3.11.7`",
    ])
    assert report.check_numbers(ignored, results) == []
    checked = "| `x` | 0.777 |\n`J = 0.666 * r`\n_0.555_ and $0.444$, 40x401\nversion 9.9.9"
    flagged = [p.split("'")[1] for p in report.check_numbers(checked, results)]
    assert flagged == ["0.777", "0.666", "0.555", "0.444", "401", "9.9.9"]


@pytest.mark.parametrize("value, shown", [
    (0.9975000000000012, "0.9975"), (7999.920000000001, "7999.9"), (65536.0, "65,536"), (24.0, "24"),
    (-1.0095827668970925, "-1.01"), (5.2771860598748985e-15, "5.277e-15"), (0.0003, "3e-4"),
    (123456.789, "1.235e5"), (1e20, "1e20"), (0.0, "0"), (0.72, "0.72"), (9.99996, "10.0"),
])
def test_format_number_is_four_significant_digits_and_passes_the_check(tmp_path: Path, value: float,
                                                                      shown: str) -> None:
    assert report.format_number(value) == shown
    (tmp_path / "v.json").write_text(json.dumps({"v": value}))
    assert report.check_numbers(f"value {shown} or {report.format_percent(value)} of it", tmp_path) == []


def test_format_percent_has_three_significant_digits() -> None:
    assert [report.format_percent(x) for x in (0.13080452995893202, 0.0, 0.2756, 0.00612, 1.0)] == \
        ["13.1%", "0%", "27.6%", "0.612%", "100%"]


def test_pool_reads_every_csv_cell_of_a_large_file(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    frame = pd.DataFrame({"a": rng.uniform(0, 1e6, 100_000), "b": rng.integers(10**6, 10**7, 100_000),
                          "label": [f"cell {i}" for i in range(100_000)]})
    frame.to_csv(tmp_path / "big.csv", index=False)
    pool = report.number_pool(tmp_path)
    row = frame.iloc[77_777]
    assert report.check_numbers(f"{report.format_number(row['a'])} and {int(row['b']):,}", tmp_path, pool=pool) == []
    assert report.check_numbers("cell 99,999", tmp_path, pool=pool) == []  # numbers inside text cells count
    assert pool.values.size >= 200_000


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
