"""drpo_sim.results: tidy result tables as Parquet with their metadata, and one-line errors."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import drpo_sim
from drpo_sim.results import META_KEY, read_results, write_results


def table() -> pd.DataFrame:
    return pd.DataFrame({
        "method": ["drpo"] * 3 + ["grpo"] * 3,
        "seed": [0, 0, 1, 0, 0, 1],
        "step": [1, 2, 1, 1, 2, 1],
        "expected_reward": [0.1, 0.2, np.nan, 0.3, 0.4, 0.5],
        "collapsed": [False, False, True, False, False, False],
        "method_params": ['{"delta": 2.5}'] * 3 + ["{}"] * 3,
    })


def one_line_error(exc, path) -> str:
    with pytest.raises(exc) as info:
        read_results(path)
    msg = str(info.value)
    assert "\n" not in msg and msg.startswith(str(path)), msg
    return msg


def test_round_trip_with_metadata_and_version(tmp_path):
    df = table()
    meta = {"methods": ["drpo", "grpo"], "seeds": [0, 1], "config": {"noise_std": 0.1, "preset": None}}
    path = write_results(df, tmp_path / "run.parquet", meta)
    assert path == tmp_path / "run.parquet" and path.is_file()
    got, got_meta = read_results(path)
    pd.testing.assert_frame_equal(got, df)  # values, NaN, dtypes and column order
    assert got_meta == {**meta, "version": drpo_sim.__version__}
    # the metadata is the file's own, readable without drpo_sim
    raw = pq.read_schema(path).metadata[META_KEY]
    assert json.loads(raw) == got_meta
    assert [p.name for p in tmp_path.iterdir()] == ["run.parquet"]  # written atomically: no stray file
    # no metadata: only the version; a string path works as well
    write_results(df, str(tmp_path / "bare.parquet"))
    assert read_results(str(tmp_path / "bare.parquet"))[1] == {"version": drpo_sim.__version__}


def test_refuses_an_empty_table(tmp_path):
    with pytest.raises(ValueError, match="refusing to write an empty result table"):
        write_results(table().iloc[:0], tmp_path / "empty.parquet")
    assert not (tmp_path / "empty.parquet").exists() and not list(tmp_path.iterdir())


def test_one_line_errors_for_missing_unreadable_and_foreign_files(tmp_path):
    msg = one_line_error(FileNotFoundError, tmp_path / "missing.parquet")
    assert msg == f"{tmp_path / 'missing.parquet'}: no such result file"
    one_line_error(FileNotFoundError, tmp_path)  # a directory is not a result file either

    (tmp_path / "notes.parquet").write_text("method,seed,step\ndrpo,0,1\n")
    assert ": not a readable Parquet file (" in one_line_error(ValueError, tmp_path / "notes.parquet")
    write_results(table(), tmp_path / "cut.parquet")
    data = (tmp_path / "cut.parquet").read_bytes()
    (tmp_path / "cut.parquet").write_bytes(data[: len(data) // 2])
    assert ": not a readable Parquet file (" in one_line_error(ValueError, tmp_path / "cut.parquet")

    for missing in (["step"], ["method", "seed"]):
        foreign = tmp_path / f"no_{'_'.join(missing)}.parquet"
        pq.write_table(pa.Table.from_pandas(table().drop(columns=missing), preserve_index=False), foreign)
        msg = one_line_error(ValueError, foreign)
        assert msg == f"{foreign}: not a drpo_sim result table: missing column(s) {', '.join(missing)}"
    # a plain Parquet table with the three columns reads, with empty metadata
    plain = tmp_path / "plain.parquet"
    pq.write_table(pa.table({"method": ["a"], "seed": [0], "step": [1]}), plain)
    df, meta = read_results(plain)
    assert meta == {} and list(df.columns) == ["method", "seed", "step"]
