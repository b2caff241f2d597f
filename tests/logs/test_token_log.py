"""drpo_sim.logs.token_log: drpo_sim's own token logs read back exactly through open_log, and bad ones
give one-line errors."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from logs_fixtures import assert_columns, error, expected, make_samples, read_all

from drpo_sim.logs import open_log
from drpo_sim.tokens import TokenBatch, concat, write_token_log

# ---------------------------------------------------------------------------------------------
# ground truth


def test_tokens_format_round_trip(tmp_path):
    samples = make_samples(10, 4)
    e = expected(samples, 3, np.arange(4), np.arange(4))
    batch = TokenBatch.from_arrays(**e)
    write_token_log(tmp_path / "run.parquet", batch)
    b = read_all(tmp_path / "run.parquet")
    assert_columns(b, e)
    assert read_all(tmp_path / "run.parquet", on_invalid="drop").columns.keys() == b.columns.keys()

# ---------------------------------------------------------------------------------------------
# bad input


def test_token_log_bad_inputs(tmp_path):
    samples = make_samples(19, 3)
    e = expected(samples, 0, np.arange(3), np.arange(3))
    table = TokenBatch.from_arrays(**e).to_arrow().rename_columns(
        [n if n != "group_id" else "group_ids" for n in TokenBatch.from_arrays(**e).to_arrow().column_names])
    pq.write_table(table, tmp_path / "a.parquet")
    msg = error(open_log, tmp_path / "a.parquet", fmt="tokens", on_invalid="drop")
    assert msg.startswith(f"{tmp_path / 'a.parquet'}: missing required column 'group_id' (did you mean 'group_ids'?)")

    write_token_log(tmp_path / "empty.parquet", [])
    empty = tmp_path / "empty.parquet"
    assert error(open_log, empty).startswith(f"{empty}: no tokens (empty file)")

    e["logp"] = e["logp"].copy()
    e["logp"][4] = 0.5
    pq.write_table(pa.table(e), tmp_path / "b.parquet")
    msg = error(open_log, tmp_path / "b.parquet")
    assert msg.startswith(f"{tmp_path / 'b.parquet'}: logp: 1 row is positive (max 0.5) at rows [4]")
    src = open_log(tmp_path / "b.parquet", on_invalid="drop")
    assert len(concat(list(src))) == len(e["logp"]) - 1 and src.report.total == 1
