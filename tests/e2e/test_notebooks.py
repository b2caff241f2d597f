"""The tutorials (``tutorials/*.ipynb``), executed as a student would, with their hidden checks.

* Every notebook executes top to bottom as handed out (kernel ``python3``, a fresh temporary
  working directory), with no error, at least one figure, and every check cell reporting the
  exercise as not attempted.
* Then, in the same kernel, each exercise cell runs again with the reference solution of
  ``tests/tutorial_solutions.py`` in place of its placeholder line (its check cell prints
  ``correct: ...``) and with a wrong answer (its check cell must raise ``AssertionError``).
* Fast static checks: the eight notebooks exist, are stored without outputs, and each exercise has
  its cell, its check and its solution.

The notebook executions are marked ``slow`` (each notebook takes 10 to 30 s on two cores). The
checks themselves (:mod:`drpo_sim.tutorials`) are tested in tests/test_tutorials.py.
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

ROOT = Path(__file__).resolve().parents[2]
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
        i = next((k for k in range(j - 1, -1, -1)
                  if nb.cells[k].cell_type == "code" and PLACEHOLDER in nb.cells[k].source), None)
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
    return any("data" in out and "image/png" in out["data"]
               for c in nb.cells if c.cell_type == "code" for out in c.outputs)


# ----------------------------------------------------------------------------------------------
# static tests


def test_the_eight_notebooks_exist():
    assert [p.name[:2] for p in NOTEBOOKS] == [f"{i:02d}" for i in range(1, 9)], [p.name for p in NOTEBOOKS]
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
    # every notebook has one to three exercises
    for path in NOTEBOOKS:
        assert 1 <= len(_exercises(_read(path))) <= 3


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
            assert "not attempted" in _text(nb.cells[j]), \
                f"{path.name}: the check of {name} printed {_text(nb.cells[j])!r}"
        for name, i, j in exercises:
            client.execute_cell(_inject(_read(path).cells[i], solutions[name]["solution"]), i)
            check = copy.deepcopy(nb.cells[j])
            client.execute_cell(check, j)
            assert _text(check).startswith("correct"), \
                f"{path.name}: the reference solution of {name} got {_text(check)!r}"
            client.execute_cell(_inject(_read(path).cells[i], solutions[name]["wrong"]), i)
            with pytest.raises(CellExecutionError) as err:
                client.execute_cell(copy.deepcopy(nb.cells[j]), j)
            assert err.value.ename == "AssertionError", \
                f"{path.name}: {name} with a wrong answer raised {err.value.ename}"
            assert name in err.value.evalue
