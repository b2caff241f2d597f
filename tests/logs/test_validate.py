"""drpo_sim.logs.validate: the pieces every loader shares, checked on their own: name suggestions,
the drop report, per-sample conversion, and the row checks of a piece (raise or drop)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from drpo_sim.logs.validate import (
    Context,
    DropReport,
    Piece,
    SampleError,
    check_lengths,
    check_piece,
    did_you_mean,
    label,
    numbers_1d,
    scalar,
    where,
)


def test_did_you_mean():
    assert did_you_mean("prev_logprob", ["prev_logprobs", "advantages"]) == " (did you mean 'prev_logprobs'?)"
    assert did_you_mean("zzz", ["prev_logprobs", "advantages"]) == ""
    assert did_you_mean("x", []) == ""


def test_drop_report_counts_and_text():
    report = DropReport()
    assert not report and str(report) == "nothing dropped" and report.total == 0
    report.add("logs/a.jsonl", "logp not finite", rows=2)
    report.add(Path("logs/a.jsonl"), "logp not finite", rows=1)  # the same file as a Path: one entry
    report.add("logs/a.jsonl", "truncated line", samples=1)
    report.add("logs/b.jsonl", "length mismatch", rows=4, samples=1)
    assert report and report.total == 7 and report.total_samples == 2
    assert report.to_dict() == {
        "total_rows": 7,
        "total_samples": 2,
        "by_file": {
            "logs/a.jsonl": {"logp not finite": {"rows": 3, "samples": 0}, "truncated line": {"rows": 0, "samples": 1}},
            "logs/b.jsonl": {"length mismatch": {"rows": 4, "samples": 1}},
        },
    }
    assert str(report) == ("dropped 7 rows (2 whole samples): a.jsonl: 3 rows logp not finite, 1 sample truncated "
                           "line; b.jsonl: 1 sample (4 rows) length mismatch")
    assert "\n" not in str(report)
    report.clear()
    assert not report and report.total_samples == 0
    one = DropReport()
    one.add("x.parquet", "logp positive", rows=1)
    assert str(one) == "dropped 1 row: x.parquet: 1 row logp positive"


def test_drop_report_shows_five_files_at_most():
    report = DropReport()
    for i in range(7):
        report.add(f"f{i}.jsonl", "truncated line", samples=1)
    text = str(report)
    assert text.startswith("dropped 0 rows (7 whole samples): f0.jsonl: 1 sample truncated line; ")
    assert "f4.jsonl" in text and "f5.jsonl" not in text and text.endswith("; ...")


def test_numbers_1d_accepts_the_shapes_loaders_meet():
    np.testing.assert_array_equal(numbers_1d([-1.0, -2.5], "lp"), [-1.0, -2.5])
    np.testing.assert_array_equal(numbers_1d([[-1.0, -2.5]], "lp"), [-1.0, -2.5])  # NeMo RL's [[...]]
    np.testing.assert_array_equal(numbers_1d(np.array([[1, 2, 3]]), "ids", integer=True), [1, 2, 3])
    np.testing.assert_array_equal(numbers_1d(torch.tensor([0.5, -0.25], dtype=torch.bfloat16), "lp"), [0.5, -0.25])
    got = numbers_1d([1, None, 2.5], "adv")
    assert got.dtype == np.float64 and np.isnan(got[1]) and got[2] == 2.5  # None: NaN, for float fields
    assert numbers_1d([True, False], "mask").tolist() == [1.0, 0.0]
    ids = numbers_1d([3.0, 4.0], "ids", integer=True)
    assert ids.dtype == np.int64 and ids.tolist() == [3, 4]


@pytest.mark.parametrize(
    "value, kwargs, message, reason",
    [
        ([0.1, "high", 0.3], {}, "adv: index 1 holds 'high', not a number", "non-numeric value"),
        ([1, None], {"integer": True}, "adv: index 1 holds None, not a number", "non-numeric value"),
        ([1.0, 2.5], {"integer": True}, "adv: index 1 holds 2.5, not an integer", "non-numeric value"),
        ([[1.0], [2.0, 3.0]], {}, "adv: index 0 holds [1.0], not a number", "non-numeric value"),
        ({"a": 1}, {}, "adv: expected a list of numbers, got dict", "wrong type"),
        (np.zeros((2, 3)), {}, "adv: expected a flat list of numbers, got shape (2, 3)", "wrong type"),
    ],
)
def test_numbers_1d_errors_name_the_field_and_index(value, kwargs, message, reason):
    with pytest.raises(SampleError) as info:
        numbers_1d(value, "adv", **kwargs)
    assert str(info.value) == message and info.value.reason == reason
    assert isinstance(info.value, ValueError)


def test_scalar_and_check_lengths():
    assert scalar(0.5, "r") == 0.5 and scalar([2], "r") == 2.0 and scalar(torch.tensor([1.5]), "r") == 1.5
    with pytest.raises(SampleError, match=r"^r: expected one number, got a list of 2$"):
        scalar([1.0, 2.0], "r")
    for bad in ("x", True, None):
        with pytest.raises(SampleError, match="r: expected a number, got"):
            scalar(bad, "r")
    check_lengths({"logp": 3, "mask": 3})
    with pytest.raises(SampleError) as info:
        check_lengths({"logp": 3, "mask": 2})
    assert str(info.value) == "fields of one sample have different lengths (logp has 3, mask has 2)"
    assert info.value.reason == "length mismatch"


def test_where_and_label():
    rows = Piece({}, unit=np.arange(10, 20))
    assert where("row", rows, np.array([0, 3])) == "rows [10, 13]"
    assert where("row", rows, np.arange(7)) == "rows [10, 11, 12, 13, 14, ...]"
    lines = Piece({}, unit=np.array([4, 4, 9]), index=np.array([17, 18, 3]))
    assert where("line", lines, np.array([0, 2])) == "line 4 index 17, line 9 index 3"
    assert label("logp", {"logp": "prev_logprobs"}) == "prev_logprobs (logp)"
    assert label("logp", {"logp": "logp"}) == "logp" and label("mask", {}) == "mask"


def _piece(logp):
    n = len(logp)
    cols = {"logp": np.asarray(logp, float), "logp_behavior": np.full(n, -1.0), "advantage": np.ones(n),
            "mask": np.ones(n, bool), "sample_id": np.arange(n), "group_id": np.zeros(n, int),
            "position": np.arange(n)}
    return Piece(cols, unit=np.arange(n))


def test_check_piece_raises_or_drops_bad_rows():
    path, names = Path("log.parquet"), {"logp": "trainer_lp"}
    good = check_piece(_piece([-1.0, -2.0]), Context(), path, "row", names)
    assert good["logp"].tolist() == [-1.0, -2.0]
    with pytest.raises(ValueError) as info:
        check_piece(_piece([-1.0, 0.5, np.nan]), Context(), path, "row", names)
    msg = str(info.value)
    assert msg.startswith("log.parquet: trainer_lp (logp): ") and "\n" not in msg
    ctx = Context(on_invalid="drop")
    kept = check_piece(_piece([-1.0, 0.5, np.nan, -3.0]), ctx, path, "row", names)
    assert kept["logp"].tolist() == [-1.0, -3.0] and kept["sample_id"].tolist() == [0, 3]
    assert ctx.report.total == 2 and ctx.report.total_samples == 0
    assert set(ctx.report.to_dict()["by_file"]["log.parquet"]) == {"trainer_lp (logp) not finite",
                                                                   "trainer_lp (logp) positive"}


def test_context_sample_problems_and_ids():
    ctx = Context(group_size=3)
    with pytest.raises(ValueError, match=r"^f\.jsonl: line 2: fields of one sample"):
        ctx.sample_problem(Path("f.jsonl"), "line 2", SampleError("fields of one sample differ", "length mismatch"))
    drop = Context(on_invalid="drop")
    drop.sample_problem(Path("f.jsonl"), "line 2", SampleError("bad", "length mismatch"), rows=5)
    assert drop.report.total == 5 and drop.report.total_samples == 1
    sid, gid = ctx.take_ids(4)
    assert sid.tolist() == [0, 1, 2, 3] and gid.tolist() == [0, 0, 0, 1]
    sid, gid = ctx.take_ids(2)  # numbered on across files; a new file starts a new group
    assert sid.tolist() == [4, 5] and gid.tolist() == [2, 2]
