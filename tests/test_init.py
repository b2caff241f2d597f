"""The package itself (``drpo_sim/__init__.py``): its submodules load on first use."""

import pkgutil
import subprocess
import sys

import pytest

import drpo_sim
import drpo_sim as ds
from drpo_sim.sim import simulate


def test_submodules_load_on_first_use():
    assert ds.sim.simulate is simulate and ds.stats.iqm([1.0, 2.0, 3.0, 4.0]) == 2.5
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        ds.nope


def test_import_drpo_sim_imports_no_lazy_submodule():
    code = "import sys, drpo_sim; print(sorted(m for m in drpo_sim._LAZY if 'drpo_sim.' + m in sys.modules))"
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "[]"


def test_every_packages_public_names_import():
    """``from PACKAGE import *`` works for drpo_sim and each of its subpackages: every name of an
    ``__all__`` exists (drpo_sim.explore listed a ``cli`` module after it moved to drpo_sim.cli)."""

    packages = ["drpo_sim", *(m.name for m in pkgutil.walk_packages(drpo_sim.__path__, "drpo_sim.") if m.ispkg)]
    assert {"drpo_sim.cli", "drpo_sim.explore", "drpo_sim.paper", "drpo_sim.run"} <= set(packages)
    for name in packages:
        exec(f"from {name} import *", {})
