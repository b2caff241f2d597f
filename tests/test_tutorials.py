"""The hidden checks of the tutorials' exercises (:mod:`drpo_sim.tutorials`).

Unknown names, unanswered exercises, wrong types, answers of any array kind, and hints that do
not give the answer away. The notebooks themselves, executed with the reference solutions of
``tests/tutorial_solutions.py``: tests/e2e/test_notebooks.py.
"""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch

from drpo_sim import tutorials


@pytest.mark.parametrize("name", list(tutorials.EXERCISES))
def test_unanswered_exercise_does_not_fail(name):
    msg = tutorials.check(name, None)
    assert "not attempted" in msg and not msg.startswith("correct")


def test_unknown_exercise_names_the_known_ones():
    with pytest.raises(KeyError, match="01.is_gradient"):
        tutorials.check("99.nothing", 1.0)
    with pytest.raises(KeyError):
        tutorials.task("99.nothing")


def test_task_is_a_copy_without_private_keys():
    t = tutorials.task("05.grpo_lowest_cell")
    assert not any(k.startswith("_") for k in t)
    t["cells"]["noise"]["noise_std"] = 123.0
    assert tutorials.task("05.grpo_lowest_cell")["cells"]["noise"]["noise_std"] != 123.0


@pytest.mark.parametrize(("name", "answer"), [("02.frequent_token", "one"), ("02.frequent_token", [1.0, 2.0]),
                                              ("02.frequent_token", True), ("04.drpo_bounds", 0.9),
                                              ("04.drpo_bounds", (1.0, 2.0, 3.0)), ("05.grpo_lowest_cell", 3),
                                              ("05.spo_outcomes", 3.0)])
def test_answers_of_the_wrong_type_are_rejected(name, answer):
    with pytest.raises(AssertionError):
        tutorials.check(name, answer)


def test_numbers_of_any_array_kind_are_accepted():
    want = tutorials.EXERCISES["01.is_gradient"].expected()
    for answer in (want, np.float32(want), np.array([want]), torch.tensor(want, dtype=torch.float64)):
        assert tutorials.check("01.is_gradient", answer).startswith("correct")


@pytest.mark.parametrize("name", list(tutorials.EXERCISES))
def test_a_wrong_answer_raises_with_a_hint_that_keeps_the_answer(name):
    ex = tutorials.EXERCISES[name]
    want = ex.expected()
    assert tutorials.check(name, want).startswith("correct")
    if ex.kind == "text":
        wrong, shown = "not_a_method", [str(want)]
    elif ex.kind == "pair":
        wrong, shown = (want[0] - 0.5, want[1] + 0.5), [f"{v:{fmt}}" for v in want for fmt in (".3g", ".4g", ".6g")]
    else:
        wrong, shown = want * 1.37 + 0.011, [f"{want:{fmt}}" for fmt in (".3g", ".4g", ".6g")]
    with pytest.raises(AssertionError) as err:
        tutorials.check(name, wrong)
    msg = str(err.value)
    assert name in msg
    # the message repeats the student's answer, then the hint: the hint must not hold the expected value
    hint = re.split(r"Hint:|slip:", msg)[-1]
    for s in shown:
        if len(s) >= 3:
            assert s not in hint, f"the hint gives the answer away: {msg}"


def test_the_prose_about_the_arena_record_quotes_the_record():
    """Notebook 5 and docs/arena.md comment in prose on the committed arena run's collapses
    (figures/arena_order_of_events.csv). Their counts must be the record's: a rerun of the arena
    that changes them fails here until the prose is reread and updated."""
    import nbformat
    import pandas as pd

    from drpo_sim.stats import compare

    events = pd.read_csv(tutorials.figures_dir() / "arena_order_of_events.csv")
    n, first = len(events), int(events["mismatch_first"].sum())
    bf16 = events[events["precision"] == "bf16"]
    climbed = events.dropna(subset=["climb_step"])
    before_collapse = int((climbed["climb_step"] < climbed["collapse_step"]).sum())
    root = tutorials.figures_dir().parent
    nb = nbformat.read(root / "tutorials" / "05_noise_staleness_convergence.ipynb", as_version=4)
    prose = " ".join(" ".join(c.source.split()) for c in nb.cells if c.cell_type == "markdown")
    assert first == 0, "notebook 5 says the mismatch never climbed first: reread its arena section"
    assert f"in none of the {n} runs did it start to climb before the reward fell" in prose
    assert f"({bf16['climb_step'].notna().sum()} of the {len(bf16)} bf16 runs)" in prose
    assert f"before the collapse step in {before_collapse} of them" in prose
    assert f"within its first {int(events['fall_step'].max())} steps" in prose
    # the paired comparison of bf16 and fp32 at the higher learning rate (shared seeds)
    seeds = pd.read_csv(tutorials.figures_dir() / "arena_seeds.csv")
    high = seeds[seeds["setting"].isin(["bf16_lr_high", "fp32_lr_high"])].pivot_table(
        index=["method", "seed"], columns="precision", values="collapsed").astype(bool)
    bf16_only, fp32_only, p = compare.mcnemar_test(high["bf16"], high["fp32"])
    pair_prose = (f"{bf16_only} collapse under bf16 alone and {fp32_only} under fp32 alone, and an exact McNemar "
                  f"test on those {bf16_only + fp32_only} gives p = {p:.2f}")
    assert f"More runs collapse under bf16 ({int(high['bf16'].sum())} of {len(high)})" in prose
    assert pair_prose in prose
    docs = " ".join((root / "docs" / "arena.md").read_text().split())
    assert f"In none of the {n} collapsed runs did the mismatch start to climb before the reward fell" in docs
    assert f"({bf16['climb_step'].notna().sum()} of the {len(bf16)} bf16 runs)" in docs
    assert (f"{bf16_only} runs collapsing under bf16 alone against {fp32_only} under fp32 alone "
            f"(exact McNemar test p = {p:.2f})") in docs
    counts = events.groupby(["objective", "precision"]).size()
    for label, objective in (("PG-IS", "pg_is"), ("CISPO", "cispo"), ("DPPO-Binary-TV", "dppo_tv"),
                             ("DRPO 12.5", "drpo")):
        pair = f"{label} {counts.get((objective, 'bf16'), 0)}/{counts.get((objective, 'fp32'), 0)}"
        assert pair in docs, pair
