"""Where a result came from: the code that computed it and the commit it was run at.

:func:`code_digest` names the *code* behind a number: a hash of the source of a module and of
every ``drpo_sim`` module it imports, directly or not, read as Python syntax trees with the
docstrings dropped. Editing a docstring, a comment or a module the computation never imports
leaves it unchanged; editing a line the computation runs changes it. The cell store
(:mod:`drpo_sim.run`) keys its cells with it and the lab's checkpoint cache its checkpoints, so a
cached result is reused exactly as long as the code that made it is unchanged.

:func:`git_commit` names the commit of a source checkout, for the manifest of a run, and
:func:`git_dirty` says whether the package's files differ from it: a commit alone does not name the
code of a run started from uncommitted changes.
"""

from __future__ import annotations

import ast
import functools
import hashlib
import subprocess
from pathlib import Path

PACKAGE = "drpo_sim"
_ROOT = Path(__file__).resolve().parent


def _module_file(name: str) -> Path | None:
    """The source file of the package module ``name`` (``drpo_sim.x.y``), or None if there is none."""
    parts = name.split(".")[1:]
    base = _ROOT.joinpath(*parts)
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


@functools.cache
def _tree(name: str) -> ast.Module:
    path = _module_file(name)
    if path is None:
        raise ValueError(f"{name}: not a module of {PACKAGE}")
    return ast.parse(path.read_text(), filename=str(path))


def _imports(name: str) -> set[str]:
    """The package modules ``name`` imports anywhere in its source (functions included), with the
    packages that contain them (importing ``a.b.c`` runs ``a/__init__`` and ``a/b/__init__``)."""
    found: set[str] = set()
    for node in ast.walk(_tree(name)):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: against the importing module's package
                package = name if _module_file(name).name == "__init__.py" else name.rpartition(".")[0]
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            targets = [f"{base}.{a.name}" for a in node.names] + [base]
        else:
            continue
        for target in targets:
            if target != PACKAGE and not target.startswith(PACKAGE + "."):
                continue
            # ``from drpo_sim.x import y``: y is a module or a name defined in drpo_sim.x
            while target and _module_file(target) is None:
                target = target.rpartition(".")[0]
            parts = target.split(".")
            found.update(".".join(parts[:i]) for i in range(1, len(parts) + 1))
    found.discard(name)
    return found


@functools.cache
def module_closure(name: str) -> frozenset[str]:
    """``name`` and every package module it imports, transitively."""
    seen, todo = {name}, [name]
    while todo:
        for dep in _imports(todo.pop()):
            if dep not in seen:
                seen.add(dep)
                todo.append(dep)
    return frozenset(seen)


def _without_docstrings(tree: ast.Module) -> ast.Module:
    """A copy of ``tree`` without bare string statements (docstrings, attribute docstrings)."""
    tree = ast.parse(ast.unparse(tree))  # a copy
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if isinstance(body, list):
            kept = [s for s in body if not (isinstance(s, ast.Expr) and isinstance(s.value, ast.Constant)
                                           and isinstance(s.value.value, str))]
            node.body = kept or [ast.Pass()]
    return tree


@functools.cache
def code_digest(*modules: str) -> str:
    """The first 16 hex digits of the SHA-256 of the code of ``modules`` and everything they import
    from the package (see the module docstring). Order of ``modules`` does not matter."""
    names = sorted(set().union(*(module_closure(m) for m in modules)))
    digest = hashlib.sha256()
    for name in names:
        digest.update(name.encode() + b"\0")
        digest.update(ast.dump(_without_docstrings(_tree(name)), annotate_fields=False).encode() + b"\0")
    return digest.hexdigest()[:16]


def git_commit() -> str | None:
    """The commit of the checkout the package runs from, or None outside a git checkout."""
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True,
                              cwd=_ROOT).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


def git_dirty() -> bool | None:
    """Whether the package's own files (``drpo_sim/``) have changes the commit does not hold (modified,
    staged, deleted, or new and not ignored), or None outside a git checkout."""
    try:
        status = subprocess.run(["git", "status", "--porcelain", "--", "."], capture_output=True, text=True,
                                check=True, cwd=_ROOT).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    return bool(status.strip())
