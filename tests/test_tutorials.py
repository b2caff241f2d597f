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
