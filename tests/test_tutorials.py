"""The tutorials (``tutorials/*.ipynb``) and their hidden checks (:mod:`drpo_sim.tutorials`).

* Every notebook executes top to bottom as handed out (kernel ``python3``, a fresh temporary
  working directory), with no error, at least one figure, and every check cell reporting the
  exercise as not attempted.
* Then, in the same kernel, each exercise cell runs again with the reference solution of
  ``tests/tutorial_solutions.py`` in place of its placeholder line (its check cell prints
  ``correct: ...``) and with a wrong answer (its check cell must raise ``AssertionError``).
* Fast tests of :func:`drpo_sim.tutorials.check` itself: unknown names, unanswered exercises,
  wrong types, and hints that do not give the answer away.

The notebook executions are marked ``slow`` (each notebook takes 10 to 30 s on two cores).
"""

from __future__ import annotations

import copy
import re
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError
from tutorial_solutions import PLACEHOLDER, SOLUTIONS

from drpo_sim import tutorials

ROOT = Path(__file__).resolve().parents[1]
TUTORIALS = ROOT / "tutorials"
NOTEBOOKS = sorted(TUTORIALS.glob("*.ipynb"))
CELL_TIMEOUT_S = 180
CHECK_CALL = re.compile(r"""tutorials\.check\(\s*["']([^"']+)["']\s*,\s*answer\s*\)""")


def _ids(paths):
    return [p.stem for p in paths]


def _read(path: Path) -> nbformat.NotebookNode:
    return nbformat.read(path, as_version=4)


def _exercises(nb: nbformat.NotebookNode) -> list[tuple[str, int, int]]:
    """``(name, exercise cell index, check cell index)`` for every check cell of a notebook.

    The exercise cell is the nearest code cell above the check cell that holds the placeholder.
    """
    found = []
    for j, cell in enumerate(nb.cells):
        if cell.cell_type != "code":
            continue
        m = CHECK_CALL.search(cell.source)
        if not m:
            continue
        i = next((k for k in range(j - 1, -1, -1) if nb.cells[k].cell_type == "code" and PLACEHOLDER in nb.cells[k].source), None)
        assert i is not None, f"check cell {j} ({m.group(1)}) has no exercise cell with {PLACEHOLDER!r} above it"
        found.append((m.group(1), i, j))
    return found


def _inject(cell: nbformat.NotebookNode, code: str) -> nbformat.NotebookNode:
    new = copy.deepcopy(cell)
    assert new.source.count(PLACEHOLDER) == 1, f"the exercise cell must hold {PLACEHOLDER!r} exactly once"
    new.source = new.source.replace(PLACEHOLDER, code)
    return new


def _client(nb: nbformat.NotebookNode, cwd: Path) -> NotebookClient:
    return NotebookClient(nb, timeout=CELL_TIMEOUT_S, kernel_name="python3", resources={"metadata": {"path": str(cwd)}})


def _text(cell: nbformat.NotebookNode) -> str:
    parts = []
    for out in cell.get("outputs", []):
        if out.output_type == "stream":
            parts.append(out.text)
        elif "data" in out and "text/plain" in out["data"]:
            parts.append(out["data"]["text/plain"])
    return "".join(parts)


def _has_figure(nb: nbformat.NotebookNode) -> bool:
    return any("data" in out and "image/png" in out["data"] for c in nb.cells if c.cell_type == "code" for out in c.outputs)


# ----------------------------------------------------------------------------------------------
# static tests


def test_the_six_notebooks_exist():
    assert [p.name[:2] for p in NOTEBOOKS] == ["01", "02", "03", "04", "05", "06"], [p.name for p in NOTEBOOKS]
    assert (TUTORIALS / "README.md").is_file()


@pytest.mark.parametrize("path", NOTEBOOKS, ids=_ids(NOTEBOOKS))
def test_notebook_is_stored_clean(path):
    nb = _read(path)
    nbformat.validate(nb)
    assert nb.metadata.get("kernelspec", {}).get("name") == "python3"
    for i, cell in enumerate(nb.cells):
        if cell.cell_type == "code":
            assert cell.outputs == [], f"{path.name}: cell {i} is stored with outputs"
            assert cell.execution_count is None, f"{path.name}: cell {i} is stored with an execution count"


def test_every_exercise_has_a_cell_a_check_and_a_solution():
    in_notebooks = {}
    for path in NOTEBOOKS:
        for name, _, _ in _exercises(_read(path)):
            assert name not in in_notebooks, f"{name} is checked twice"
            in_notebooks[name] = path.stem
    assert set(in_notebooks) == set(tutorials.EXERCISES)
    for name, stem in in_notebooks.items():
        assert tutorials.EXERCISES[name].notebook == stem
        assert set(SOLUTIONS[stem][name]) == {"solution", "wrong"}
    assert {(s, n) for s, d in SOLUTIONS.items() for n in d} == {(s, n) for n, s in in_notebooks.items()}
    # every notebook has one or two exercises
    for path in NOTEBOOKS:
        assert 1 <= len(_exercises(_read(path))) <= 2


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
    t = tutorials.task("05.best_method")
    assert not any(k.startswith("_") for k in t)
    t["config"]["noise_std"] = 123.0
    assert tutorials.task("05.best_method")["config"]["noise_std"] != 123.0


@pytest.mark.parametrize(("name", "answer"), [("02.frequent_token", "one"), ("02.frequent_token", [1.0, 2.0]),
                                              ("02.frequent_token", True), ("04.drpo_bounds", 0.9),
                                              ("04.drpo_bounds", (1.0, 2.0, 3.0)), ("05.best_method", 3)])
def test_answers_of_the_wrong_type_are_rejected(name, answer):
    with pytest.raises(AssertionError):
        tutorials.check(name, answer)


def test_numbers_of_any_array_kind_are_accepted():
    import numpy as np
    import torch

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


# ----------------------------------------------------------------------------------------------
# executing the notebooks


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=_ids(NOTEBOOKS))
def test_notebook_runs_as_handed_out_and_checks_solutions(path, tmp_path):
    """One kernel per notebook (each execution costs 10 to 30 s): the notebook top to bottom as
    handed out (every check says "not attempted"), then each exercise cell again with the reference
    solution (its check prints "correct") and with a wrong answer (its check raises)."""
    nb = _read(path)
    client = _client(nb, tmp_path)
    exercises = _exercises(nb)
    solutions = SOLUTIONS[path.stem]
    with client.setup_kernel():
        for index, cell in enumerate(nb.cells):
            client.execute_cell(cell, index)  # raises CellExecutionError on the first failing cell
        assert _has_figure(nb), f"{path.name} draws no figure"
        for name, _, j in exercises:
            assert "not attempted" in _text(nb.cells[j]), f"{path.name}: the check of {name} printed {_text(nb.cells[j])!r}"
        for name, i, j in exercises:
            client.execute_cell(_inject(_read(path).cells[i], solutions[name]["solution"]), i)
            check = copy.deepcopy(nb.cells[j])
            client.execute_cell(check, j)
            assert _text(check).startswith("correct"), f"{path.name}: the reference solution of {name} got {_text(check)!r}"
            client.execute_cell(_inject(_read(path).cells[i], solutions[name]["wrong"]), i)
            with pytest.raises(CellExecutionError) as err:
                client.execute_cell(copy.deepcopy(nb.cells[j]), j)
            assert err.value.ename == "AssertionError", f"{path.name}: {name} with a wrong answer raised {err.value.ename}"
            assert name in err.value.evalue
