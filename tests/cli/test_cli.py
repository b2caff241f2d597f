"""The ``drpo-sim`` dispatcher (:mod:`drpo_sim.cli`): its help, its lazy imports, its exit codes."""

from __future__ import annotations

import importlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from drpo_sim import __version__, cli
from drpo_sim.cli import objectives as cli_objectives

COMMAND_MODULES = sorted({module for module, _ in cli.COMMANDS.values()})
HEAVY = ("torch", "bokeh", *COMMAND_MODULES)


def _imported_after(code: str) -> list[str]:
    """The modules of :data:`HEAVY` that a fresh interpreter has imported after running ``code``."""
    probe = f"{code}\nimport json, sys\nprint(json.dumps(sorted(m for m in {list(HEAVY)!r} if m in sys.modules)))"
    res = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout.strip().splitlines()[-1])


def _help_lists_every_command(text: str) -> None:
    flat = " ".join(text.split())  # the commands' column and their help, however argparse lays them out
    for name, (_, help_) in cli.COMMANDS.items():
        assert f"{name} {' '.join(help_.split())}" in flat, name


def test_help_lists_every_command(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "400")  # argparse wraps to the terminal, also at hyphens
    with pytest.raises(SystemExit) as exit_:
        cli.main(["--help"])
    assert exit_.value.code == 0
    _help_lists_every_command(capsys.readouterr().out)


def test_every_command_is_configured_by_its_module():
    for name, (module, _) in cli.COMMANDS.items():
        assert callable(getattr(importlib.import_module(module), f"configure_{name.replace('-', '_')}")), name
    parser = cli.build_parser()  # every command with its full arguments
    for argv in (["list"], ["geometry", "--out", "x"], ["summarize", "r.parquet"], ["report"], ["explore"]):
        assert callable(parser.parse_args(argv).func), argv


def test_the_parser_imports_no_command_module():
    """``drpo-sim --help`` builds the parser alone: no command's dependencies are imported."""
    assert _imported_after("from drpo_sim.cli import build_parser; build_parser(())") == []
    assert "drpo_sim.cli.simulate" in HEAVY and "torch" in HEAVY and "bokeh" in HEAVY


def test_a_command_imports_only_its_own_module():
    imported = _imported_after("import contextlib, io\nfrom drpo_sim.cli import main\n"
                               "with contextlib.redirect_stdout(io.StringIO()):\n    assert main(['list']) == 0")
    assert imported == ["drpo_sim.cli.objectives"]


def test_python_m_drpo_sim_cli_version():
    res = subprocess.run([sys.executable, "-m", "drpo_sim.cli", "--version"], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == f"drpo_sim {__version__}"


def test_unknown_command_exits_2(capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.main(["nope"])
    assert exit_.value.code == 2
    assert "invalid choice: 'nope'" in capsys.readouterr().err


def test_console_script_runs():
    res = subprocess.run([sys.executable, "-m", "drpo_sim.cli", "simulate", "--help"], capture_output=True, text=True)
    assert res.returncode == 0 and "--noise-std" in res.stdout and "--save-tokens" in res.stdout
    # the installed entry point (pyproject's [project.scripts]), beside this interpreter
    script = shutil.which("drpo-sim", path=str(Path(sys.executable).parent)) or shutil.which("drpo-sim")
    assert script is not None, "the drpo-sim console script is not installed"
    res = subprocess.run([script, "--help"], capture_output=True, text=True, env={**os.environ, "COLUMNS": "400"})
    assert res.returncode == 0, res.stderr
    _help_lists_every_command(res.stdout)


def test_a_failure_while_running_is_one_line_and_exit_1(monkeypatch, capsys):
    def boom(args):
        raise RuntimeError("2 cell(s) never returned a result (first: abc)")

    monkeypatch.setattr(cli_objectives, "run_list", boom)
    assert cli.main(["list"]) == 1
    err = capsys.readouterr().err
    assert err.strip().splitlines() == ["drpo-sim list: failed: 2 cell(s) never returned a result (first: abc)"]
