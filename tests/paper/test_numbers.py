"""The number check (``drpo_sim.paper.numbers``): every number a text shows must be in the result
files at the precision shown; what is not a measured number (headings, claim numbers, code
fences, links, comments, identifiers, versions) is not checked; numbers are formatted one way,
which the check accepts by construction."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from drpo_sim.paper import numbers


@pytest.fixture
def results(tmp_path: Path) -> Path:
    """A results directory holding a manifest's strings (a version, a Python version, a commit)
    and a claim's reason quoting a 40x40 grid."""
    results = tmp_path / "results"
    results.mkdir()
    (results / "MANIFEST.json").write_text(json.dumps({
        "version": "0.1.0", "python": "3.11.7", "git_commit": "7af2ff4c45e1ded291b8d77ff111d52a8b818e58",
        "figures": [{"figure": "weight_plane", "wall_time_s": 1.5}]}))
    (results / "claims.json").write_text(json.dumps([{
        "number": 1, "reason": "over a 40x40 (mu, pi) grid DRPO's abs(w - 1) * delta peaks at 0.9975",
        "numbers": {"drpo_delta12.5_max_abs_w_minus_1_times_delta": 0.9975000000000012}}]))
    return results


def test_precision_percent_scientific_grouping_and_sign(tmp_path: Path) -> None:
    results = tmp_path / "r"
    results.mkdir()
    pd.DataFrame({"x": [0.88445, 0.131, 0.00123, 1024.0, -1.0095, 24.0]}).to_csv(results / "x.csv", index=False)
    pool = numbers.number_pool(results)

    def bad(text: str) -> list[str]:
        return [p.split("'")[1] for p in numbers.check_numbers(text, results, pool=pool)]

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
    assert numbers.check_numbers(ignored, results) == []
    checked = "| `x` | 0.777 |\n`J = 0.666 * r`\n_0.555_ and $0.444$, 40x401\nversion 9.9.9"
    flagged = [p.split("'")[1] for p in numbers.check_numbers(checked, results)]
    assert flagged == ["0.777", "0.666", "0.555", "0.444", "401", "9.9.9"]


@pytest.mark.parametrize("value, shown", [
    (0.9975000000000012, "0.9975"), (7999.920000000001, "7999.9"), (65536.0, "65,536"), (24.0, "24"),
    (-1.0095827668970925, "-1.01"), (5.2771860598748985e-15, "5.277e-15"), (0.0003, "3e-4"),
    (123456.789, "1.235e5"), (1e20, "1e20"), (0.0, "0"), (0.72, "0.72"), (9.99996, "10.0"),
])
def test_format_number_is_four_significant_digits_and_passes_the_check(tmp_path: Path, value: float,
                                                                      shown: str) -> None:
    assert numbers.format_number(value) == shown
    (tmp_path / "v.json").write_text(json.dumps({"v": value}))
    assert numbers.check_numbers(f"value {shown} or {numbers.format_percent(value)} of it", tmp_path) == []


def test_format_percent_has_three_significant_digits() -> None:
    assert [numbers.format_percent(x) for x in (0.13080452995893202, 0.0, 0.2756, 0.00612, 1.0)] == \
        ["13.1%", "0%", "27.6%", "0.612%", "100%"]


def test_pool_reads_every_csv_cell_of_a_large_file(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    frame = pd.DataFrame({"a": rng.uniform(0, 1e6, 100_000), "b": rng.integers(10**6, 10**7, 100_000),
                          "label": [f"cell {i}" for i in range(100_000)]})
    frame.to_csv(tmp_path / "big.csv", index=False)
    pool = numbers.number_pool(tmp_path)
    row = frame.iloc[77_777]
    assert numbers.check_numbers(f"{numbers.format_number(row['a'])} and {int(row['b']):,}", tmp_path, pool=pool) == []
    assert numbers.check_numbers("cell 99,999", tmp_path, pool=pool) == []  # numbers inside text cells count
    assert pool.values.size >= 200_000


def test_numeric_literals_carry_the_precision_they_show() -> None:
    found = list(numbers.numeric_literals("0.884, 13.1%, 1.2e-03, 1,024 and -1.01 but not fp8 or bf16"))
    assert [lit.text for lit in found] == ["0.884", "13.1%", "1.2e-03", "1,024", "-1.01"]
    assert [lit.value for lit in found] == [0.884, 13.1, 1.2e-3, 1024.0, -1.01]
    assert [lit.tolerance for lit in found] == pytest.approx([5e-4, 0.05, 5e-5, 0.0, 5e-3])
    assert found[1].percent and found[1].candidates() == [(13.1, 0.05), (0.131, 0.0005)]
    assert found[0].candidates() == [(0.884, found[0].tolerance)]
    assert numbers.STRUCTURAL_NUMBERS == (0, *numbers.CLAIM_NUMBERS) and numbers.CLAIM_NUMBERS == tuple(range(1, 13))
