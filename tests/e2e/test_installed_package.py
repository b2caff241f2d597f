"""``drpo-sim reproduce`` from a non-editable install: the analyses are package modules, so an
installed drpo_sim reproduces as well as a checkout (nothing is read from the repository)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from drpo_sim.paper.analyses import weight_table

ROOT = Path(__file__).resolve().parents[2]
FIGURES = weight_table.SPEC.figures


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    """drpo_sim built from a copy of the checkout's sources (so the build leaves nothing in the
    checkout) and installed, without its dependencies, into a target directory."""
    root = tmp_path_factory.mktemp("installed")
    src = root / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    shutil.copytree(ROOT / "drpo_sim", src / "drpo_sim", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    res = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-build-isolation", "--no-index",
                          "--disable-pip-version-check", "--quiet", "--target", str(root / "site"), str(src)],
                         capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    return root / "site"


def _env(site: Path) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(site), "MPLBACKEND": "Agg"}


def test_reproduce_runs_from_a_non_editable_install(site, tmp_path):
    cwd = tmp_path / "elsewhere"  # an empty directory: the checkout is neither the cwd nor on the path
    cwd.mkdir()
    # the installed copy, and only it (its subpackages are found through its __path__)
    script = "import drpo_sim; print(drpo_sim.__file__); print(*drpo_sim.__path__)"
    where = subprocess.run([sys.executable, "-c", script], cwd=cwd, env=_env(site), capture_output=True, text=True)
    assert where.returncode == 0, where.stderr
    file, path = where.stdout.splitlines()
    assert Path(file).resolve() == (site / "drpo_sim" / "__init__.py").resolve()
    assert Path(path).resolve() == (site / "drpo_sim").resolve()

    out = tmp_path / "out"
    res = subprocess.run(
        [sys.executable, "-m", "drpo_sim.cli", "reproduce", "--quick", "--only", "weight_table",
         "--out", str(out), "--formats", "png", "--compare", "none"],
        cwd=cwd, env=_env(site), capture_output=True, text=True, timeout=300,
    )
    assert res.returncode == 0, res.stderr
    assert f"6 figures in {out}" in res.stdout
    for fig in FIGURES:
        assert (out / f"{fig}.png").is_file(), fig
    manifest = json.loads((out / "MANIFEST.json").read_text())
    assert manifest["profile"] == "quick" and {r["figure"] for r in manifest["figures"]} == set(FIGURES)
    assert {r["script"] for r in manifest["figures"]} == {"weight_table"}
    assert not list(cwd.iterdir())  # nothing written where it ran
