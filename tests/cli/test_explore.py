"""``drpo-sim explore`` (:mod:`drpo_sim.cli.explore`): its port, its options; bad input is one line
and exit status 2. (The served app and the exported page in a browser: tests/e2e/test_explore_browser.py.)"""

from __future__ import annotations

import socket

import pytest

from drpo_sim import cli
from drpo_sim.cli.explore import parse_port, run_explore
from drpo_sim.config import PAPER_METHODS


def _explore(capsys, *args: str) -> tuple[int, list[str]]:
    """``drpo-sim explore ARGS`` in-process; exit code and stderr lines."""
    code = cli.main(["explore", *args])
    return code, capsys.readouterr().err.strip().splitlines()


@pytest.mark.parametrize(("text", "port"), [("0", 0), ("5006", 5006), ("65535", 65535), (" 80 ", 80)])
def test_parse_port_accepts_0_to_65535(text, port):
    assert parse_port(text) == port


@pytest.mark.parametrize(("text", "message"), [
    ("70000", "--port must be an integer in 0..65535 (0: a free port), got 70000"),
    ("-1", "--port must be an integer in 0..65535 (0: a free port), got -1"),
    ("http", "--port must be an integer in 0..65535 (0: a free port), got 'http'"),
    ("5006.5", "got '5006.5'"),
])
def test_parse_port_rejects_anything_else(text, message):
    with pytest.raises(ValueError) as err:
        parse_port(text)
    assert message in str(err.value)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--objectives", "drpo,nope", "--no-browser"], "unknown objective(s) nope"),
        (["--port", "70000", "--no-browser"], "--port must be an integer in 0..65535"),
        (["--port", "http", "--no-browser"], "--port must be an integer"),
    ],
)
def test_bad_input_is_one_line_and_status_2(capsys, args, message):
    code, lines = _explore(capsys, *args)
    assert code == 2 and len(lines) == 1 and message in lines[0], lines


def test_unwritable_export_path_is_one_line_and_status_2(capsys, tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    code, lines = _explore(capsys, "--export", str(blocker / "page.html"))
    assert code == 2 and len(lines) == 1 and "cannot write" in lines[0], lines
    code, lines = _explore(capsys, "--export", str(tmp_path))
    assert code == 2 and len(lines) == 1 and "is a directory" in lines[0], lines
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_file"]  # nothing left behind


def test_port_in_use_is_one_line_and_status_2(capsys):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        code, lines = _explore(capsys, "--port", str(port), "--no-browser")
    assert code == 2 and len(lines) == 1 and "error" in lines[0], lines


def test_explore_options_in_the_drpo_sim_parser(capsys):
    parser = cli.build_parser(["explore"])
    args = parser.parse_args(["explore", "--port", "0", "--no-browser", "--export", "x.html"])
    assert args.command == "explore" and args.no_browser and args.export == "x.html" and args.func is run_explore
    defaults = parser.parse_args(["explore"])
    assert defaults.port == "5006" and not defaults.no_browser and defaults.export is None
    assert defaults.objectives is None  # the explorer then shows PAPER_METHODS
    with pytest.raises(SystemExit) as exit_:
        cli.main(["explore", "--help"])
    assert exit_.value.code == 0
    assert f"default {','.join(PAPER_METHODS)}" in " ".join(capsys.readouterr().out.split())
