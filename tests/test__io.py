"""drpo_sim._io: a result file is either absent or complete, never half-written."""

from __future__ import annotations

import os

import pandas as pd
import pytest

from drpo_sim._io import atomic_path, write_csv, write_text


def test_atomic_path_renames_on_success_and_keeps_the_old_file_on_failure(tmp_path):
    path = tmp_path / "sub" / "result.txt"
    write_text("first\n", path)
    assert path.read_text() == "first\n"
    with pytest.raises(RuntimeError):
        with atomic_path(path) as tmp:
            tmp.write_text("half")
            raise RuntimeError("interrupted")
    assert path.read_text() == "first\n"
    assert sorted(p.name for p in path.parent.iterdir()) == ["result.txt"]


def test_written_files_get_the_usual_mode(tmp_path):
    path = write_text("x", tmp_path / "a.txt")
    mask = os.umask(0)
    os.umask(mask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~mask


def test_write_csv_rounds_floats_to_eight_significant_digits(tmp_path):
    path = write_csv(pd.DataFrame({"x": [1 / 3], "n": [2]}), tmp_path / "t.csv")
    assert path.read_text().splitlines() == ["x,n", "0.33333333,2"]
