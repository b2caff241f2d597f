"""drpo_sim.provenance: which code a result depends on (the module closure and its digest, blind to
docstrings and comments) and the commit of the checkout."""

from __future__ import annotations

import ast
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from drpo_sim import provenance
from drpo_sim.provenance import _without_docstrings, code_digest, git_commit, git_dirty, module_closure

PACKAGE_DIR = Path(provenance.__file__).resolve().parent


def _clear_caches() -> None:
    for fn in (code_digest, module_closure, provenance._tree):
        fn.cache_clear()


@pytest.fixture
def fresh_caches():
    """The digests are cached per process; a test that changes what they read starts and ends clean."""
    _clear_caches()
    yield
    _clear_caches()


# ---------------------------------------------------------------------------------------------
# module_closure


def test_module_closure_of_the_simulator_holds_its_imports_and_nothing_above_it():
    closure = module_closure("drpo_sim.sim")
    assert "drpo_sim.sim" in closure and "drpo_sim" in closure  # the package's __init__ runs too
    for dep in ("objectives", "offpolicy", "envs", "envs.bandit", "envs.tabular", "advantages", "policies", "stats",
                "tokens"):
        assert f"drpo_sim.{dep}" in closure, dep
    for above in ("drpo_sim.paper", "drpo_sim.plots", "drpo_sim.run", "drpo_sim.lm", "drpo_sim.cli",
                  "drpo_sim.analysis", "drpo_sim.summaries"):
        assert not any(m == above or m.startswith(above + ".") for m in closure), above
    # transitively closed: every member's own closure is inside it
    for m in closure:
        assert module_closure(m) <= closure, m


def test_module_closure_of_the_lab_and_bad_names():
    closure = module_closure("drpo_sim.lm.rl")
    assert {"drpo_sim.lm", "drpo_sim.lm.model", "drpo_sim.lm.precision", "drpo_sim.lm.pretrain", "drpo_sim.lm.task",
            "drpo_sim.objectives"} <= closure
    assert "drpo_sim.sim" not in closure and "drpo_sim.envs" not in closure
    with pytest.raises(ValueError, match="drpo_sim.nowhere: not a module of drpo_sim"):
        module_closure("drpo_sim.nowhere")


# ---------------------------------------------------------------------------------------------
# code_digest


def test_code_digest_is_deterministic_and_names_the_code(fresh_caches):
    sim, rl = code_digest("drpo_sim.sim"), code_digest("drpo_sim.lm.rl")
    assert re.fullmatch(r"[0-9a-f]{16}", sim) and re.fullmatch(r"[0-9a-f]{16}", rl)
    assert sim != rl
    _clear_caches()
    assert code_digest("drpo_sim.sim") == sim  # recomputed from the files, not served from the cache
    # and in a fresh interpreter (no dependence on set order or hash randomisation)
    other = subprocess.run(
        [sys.executable, "-c", "from drpo_sim.provenance import code_digest; print(code_digest('drpo_sim.sim'))"],
        capture_output=True, text=True, check=True,
    ).stdout.strip()
    assert other == sim


def test_code_digest_is_independent_of_argument_order():
    both = code_digest("drpo_sim.sim", "drpo_sim.lm.rl")
    assert both == code_digest("drpo_sim.lm.rl", "drpo_sim.sim")
    assert both == code_digest("drpo_sim.sim", "drpo_sim.lm.rl", "drpo_sim.sim")
    assert both not in (code_digest("drpo_sim.sim"), code_digest("drpo_sim.lm.rl"))
    # a module already in the closure adds nothing
    assert code_digest("drpo_sim.sim", "drpo_sim.objectives") == code_digest("drpo_sim.sim")


def _edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text, (path, old)
    path.write_text(text.replace(old, new, 1))


def test_code_digest_follows_code_not_docstrings_comments_or_other_modules(tmp_path, monkeypatch, fresh_caches):
    """On a copy of the package: a docstring, a comment or a module the simulator never imports
    leaves its digest as it was; a changed statement anywhere in its closure changes it."""
    real = code_digest("drpo_sim.sim")
    root = tmp_path / "drpo_sim"
    shutil.copytree(PACKAGE_DIR, root, ignore=shutil.ignore_patterns("__pycache__"))
    monkeypatch.setattr(provenance, "_ROOT", root)
    _clear_caches()
    base = code_digest("drpo_sim.sim")
    assert base == real  # the copy reads as the package itself

    def digest() -> str:
        _clear_caches()
        return code_digest("drpo_sim.sim")

    sim = root / "sim.py"
    _edit(sim, '"""The training loop:', '"""EDITED. The training loop:')  # module docstring
    _edit(sim, "def gather(table", "# a new comment\ndef gather(table")
    _edit(sim, '"""``table[row, token]``', '"""Edited: ``table[row, token]``')  # function docstring
    (root / "plots.py").write_text((root / "plots.py").read_text() + "\nX_NEW = 1\n")  # not in sim's closure
    assert digest() == base
    # a module of a package the simulator does not import (stats.compare) is not in its closure
    _edit(root / "stats" / "compare.py", "def holm(", "HOLM_NEW = 3\n\n\ndef holm(")
    assert digest() == base
    _edit(root / "stats" / "__init__.py", "def iqm(", "IQM_NEW = 2\n\n\ndef iqm(")  # a statement in an imported module
    changed = digest()
    assert changed != base
    _edit(sim, 'MODES = ("sampled", "exact")', 'MODES = ("exact", "sampled")')  # a statement of sim itself
    assert digest() not in (base, changed)


# ---------------------------------------------------------------------------------------------
# _without_docstrings

SAMPLE = '''"""Module docstring."""

import math

X = 1
"""Attribute docstring of X."""


class Box:
    """Class docstring."""

    size: int = 3
    """Attribute docstring of size."""

    def area(self):
        """Method docstring."""
        return self.size ** 2  # a comment


def only_doc():
    """A function whose body is its docstring."""


def f(x):
    label = "a string that is a value, not a docstring"
    return math.sqrt(x) + X, label
'''

SAME = '''# a leading comment
"""Another module docstring, longer than the first one."""

import math

X = 1  # comment
"""Changed attribute docstring."""


class Box:
    """Changed class docstring."""

    size: int = 3

    def area(self):
        # a comment where the docstring was
        return self.size ** 2


def only_doc():
    pass


def f(x):
    label = "a string that is a value, not a docstring"
    return math.sqrt(x) + X, label  # a different comment
'''


def _dump(source: str) -> str:
    return ast.dump(_without_docstrings(ast.parse(source)), annotate_fields=False)


def test_without_docstrings_drops_docstrings_and_attribute_docstrings():
    tree = _without_docstrings(ast.parse(SAMPLE))
    strings = [n.value for n in ast.walk(tree) if isinstance(n, ast.Constant) and isinstance(n.value, str)]
    assert strings == ["a string that is a value, not a docstring"]
    assert ast.get_docstring(tree) is None
    box = next(n for n in tree.body if isinstance(n, ast.ClassDef))
    assert ast.get_docstring(box) is None and len(box.body) == 2  # size, area
    only_doc = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "only_doc")
    assert [type(s) for s in only_doc.body] == [ast.Pass]  # still a valid function
    ast.parse(ast.unparse(tree))  # still valid Python
    # the input tree is left as it was
    original = ast.parse(SAMPLE)
    _without_docstrings(original)
    assert ast.get_docstring(original) == "Module docstring."


def test_without_docstrings_dump_ignores_docstrings_and_comments_only():
    assert _dump(SAMPLE) == _dump(SAME)
    for old, new in [
        ("X = 1\n", "X = 2\n"),  # a value
        ("return self.size ** 2", "return self.size ** 3"),  # an expression
        ('label = "a string that is a value', 'label = "another string that is a value'),  # a string value
        ("import math\n", "import math\nimport os\n"),  # an import
        ('    """A function whose body is its docstring."""\n', '    """Docstring."""\n    return 1\n'),
    ]:
        assert old in SAMPLE
        assert _dump(SAMPLE.replace(old, new, 1)) != _dump(SAMPLE), new


# ---------------------------------------------------------------------------------------------
# git_commit


def test_git_commit_in_this_checkout():
    commit = git_commit()
    assert commit is not None and re.fullmatch(r"[0-9a-f]{40}", commit)
    head = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True,
                          cwd=PACKAGE_DIR).stdout.strip()
    assert commit == head


def test_git_commit_outside_a_checkout_is_none(tmp_path, monkeypatch):
    monkeypatch.setattr(provenance, "_ROOT", tmp_path)
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path.parent))
    assert git_commit() is None


def _git(cwd, *args):
    return subprocess.run(["git", *args], capture_output=True, text=True, check=True, cwd=cwd)


def test_git_dirty_tells_a_checkout_with_changes_from_its_commit(tmp_path, monkeypatch):
    """A package folder in a fresh repository: clean after its commit; dirty with a modified, a new or a
    deleted file; outside any checkout, unknown."""
    pkg = tmp_path / "repo" / "drpo_sim"
    pkg.mkdir(parents=True)
    (pkg / "a.py").write_text("x = 1\n")
    (pkg / "b.py").write_text("y = 2\n")
    repo = pkg.parent
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path))
    _git(repo, "init", "-q")
    _git(repo, "add", ".")
    _git(repo, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "c")
    (repo / "elsewhere.txt").write_text("outside the package\n")  # not the package's: not counted
    monkeypatch.setattr(provenance, "_ROOT", pkg)
    assert git_dirty() is False
    (pkg / "a.py").write_text("x = 3\n")
    assert git_dirty() is True
    _git(repo, "checkout", "-q", "--", "drpo_sim/a.py")
    (pkg / "c.py").write_text("z = 3\n")
    assert git_dirty() is True
    (pkg / "c.py").unlink()
    (pkg / "b.py").unlink()
    assert git_dirty() is True
    monkeypatch.setattr(provenance, "_ROOT", tmp_path / "nowhere")
    assert git_dirty() is None

