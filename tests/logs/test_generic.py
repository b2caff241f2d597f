"""drpo_sim.logs.generic: flat and ragged tables (Parquet, JSONL) read through a column mapping reproduce
known tokens exactly, derive what is not mapped, and give one-line errors naming file, column and row."""

from __future__ import annotations

import gzip
import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from logs_fixtures import (
    GENERIC_FLAT_MAP,
    GENERIC_RAGGED_MAP,
    assert_columns,
    error,
    expected,
    generic_flat,
    generic_ragged,
    make_samples,
    read_all,
    write_generic_flat_jsonl,
    write_generic_flat_parquet,
    write_generic_ragged_jsonl,
    write_generic_ragged_parquet,
)

from drpo_sim.logs import open_log
from drpo_sim.tokens import concat

# ---------------------------------------------------------------------------------------------
# ground truth


@pytest.mark.parametrize("layout", ["flat", "ragged"])
@pytest.mark.parametrize("ext", ["parquet", "jsonl"])
def test_generic_reproduces_tokens(tmp_path, layout, ext):
    samples = make_samples(7, 5)
    writer = {("flat", "parquet"): write_generic_flat_parquet, ("flat", "jsonl"): write_generic_flat_jsonl,
              ("ragged", "parquet"): write_generic_ragged_parquet, ("ragged", "jsonl"): write_generic_ragged_jsonl}
    path = writer[layout, ext](tmp_path / f"log.{ext}", samples)
    mapping = GENERIC_FLAT_MAP if layout == "flat" else GENERIC_RAGGED_MAP
    src = open_log(path, mapping=mapping, group_size=2)  # auto + mapping -> generic
    b = concat(list(src))
    if layout == "flat":  # sample ids as mapped (10, 11, ...), groups sample_id // group_size
        want = expected(samples, 0, 10 + np.arange(5), (10 + np.arange(5)) // 2)
        cols = ["logp", "logp_behavior", "advantage", "mask", "position", "sample_id", "group_id"]
    else:  # positions, sample and group ids derived
        want = expected(samples, 0, np.arange(5), np.arange(5) // 2)
        cols = ["logp", "logp_behavior", "advantage", "mask", "position", "sample_id", "group_id", "token_id", "reward"]
    assert_columns(b, want, cols)
    assert src.describe()["format"] == "generic"


def test_generic_flat_derivations_and_describe(tmp_path):
    samples = make_samples(8, 4)
    e = expected(samples, 0, np.arange(4), np.arange(4))
    path = tmp_path / "t.parquet"
    pq.write_table(pa.table({"lp": e["logp"], "mu": e["logp_behavior"], "a": e["advantage"],
                             "pos": e["position"]}), path)
    src = open_log(path, fmt="generic", mapping="logp=lp,logp_behavior=mu,advantage=a,position=pos",
                   batch_size=7, group_size=2)
    assert src.describe()["derived"]["mask"] == "all True (not mapped)"
    b = concat(list(src))  # batches of 7 rows split samples; derivation carries over batches
    assert_columns(b, {**e, "mask": np.ones(len(b), bool), "group_id": np.repeat(np.arange(4) // 2,
                   [len(s.tokens) for s in samples])}, ["logp", "position", "sample_id", "group_id", "mask"])

# ---------------------------------------------------------------------------------------------
# bad input


def test_generic_misspelt_and_missing_columns(tmp_path):
    path = write_generic_flat_parquet(tmp_path / "g.parquet", make_samples(12, 3))
    msg = error(open_log, path, fmt="generic", mapping="logp=trainer_lp,logp_behavior=engine_lp,advantage=advs")
    assert msg.startswith(f"{path}: column 'advs' (mapped to advantage) is not in the file (did you mean 'adv'?)")
    msg = error(open_log, path, fmt="generic", mapping="logp=trainer_lp,logp_behavior=engine_lp", on_invalid="drop")
    assert msg.startswith(f"{path}: no column for advantage: map it with advantage=<column>")


def test_generic_flat_nan_rows_raise_or_drop(tmp_path):
    cols = dict(pa.table(generic_flat(make_samples(13, 4))).to_pydict())
    cols["trainer_lp"][5] = float("nan")
    cols["trainer_lp"][7] = float("nan")
    cols["loss_mask"][7] = 0  # NaN on a masked-out token is fine
    path = tmp_path / "g.parquet"
    pq.write_table(pa.table(cols), path)
    msg = error(open_log, path, mapping=GENERIC_FLAT_MAP)
    assert msg == f"{path}: trainer_lp (logp): 1 row is not finite (nan) on masked-in tokens at rows [5]"
    src = open_log(path, mapping=GENERIC_FLAT_MAP, on_invalid="drop", batch_size=4)
    b = concat(list(src))
    assert len(b) == len(cols["adv"]) - 1 and src.report.total == 1


def test_generic_ragged_positive_length_mismatch_and_types(tmp_path):
    samples = make_samples(14, 4)
    cols = generic_ragged(samples)
    cols["engine_lp"][2][1] = 0.25
    path = tmp_path / "r.parquet"
    pq.write_table(pa.table(cols), path)
    msg = error(open_log, path, mapping=GENERIC_RAGGED_MAP)
    assert msg.startswith(f"{path}: engine_lp (logp_behavior): 1 value is positive (max 0.25) at row 2 index 1;")

    cols = generic_ragged(samples)
    cols["engine_lp"][1] = cols["engine_lp"][1][:-1]
    path = write_generic_ragged_jsonl(tmp_path / "r.jsonl", samples)
    lines = path.read_text().splitlines()
    obj = json.loads(lines[1])
    obj["engine_lp"] = obj["engine_lp"][:-1]
    lines[1] = json.dumps(obj)
    path.write_text("\n".join(lines) + "\n")
    msg = error(open_log, path, mapping=GENERIC_RAGGED_MAP)
    assert msg.startswith(f"{path}: line 2: fields of one sample have different lengths (trainer_lp has")
    src = open_log(path, mapping=GENERIC_RAGGED_MAP, on_invalid="drop")
    assert len(concat(list(src))) == sum(len(s.tokens) for s in samples) - len(samples[1].tokens)
    assert src.report.total_samples == 1

    pq.write_table(pa.table({"trainer_lp": [-1.0], "engine_lp": [-1.0], "adv": ["big"]}), tmp_path / "s.parquet")
    msg = error(open_log, tmp_path / "s.parquet", mapping="logp=trainer_lp,logp_behavior=engine_lp,advantage=adv",
                on_invalid="drop")
    assert msg == f"{tmp_path / 's.parquet'}: adv (advantage): holds string, expected numbers"

    flat = write_generic_flat_jsonl(tmp_path / "f.jsonl", samples)
    lines = flat.read_text().splitlines()
    obj = json.loads(lines[6])
    obj["adv"] = "x"
    lines[6] = json.dumps(obj)
    flat.write_text("\n".join(lines) + "\n")
    assert error(open_log, flat, mapping=GENERIC_FLAT_MAP) == f"{flat}: line 7: adv (advantage): 'x' is not a number"


def test_generic_empty_and_truncated_parquet(tmp_path):
    path = tmp_path / "e.parquet"
    pq.write_table(pa.table({"lp": pa.array([], pa.float64()), "mu": pa.array([], pa.float64()),
                             "a": pa.array([], pa.float64())}), path)
    msg = error(open_log, path, mapping="logp=lp,logp_behavior=mu,advantage=a")
    assert msg.startswith(f"{path}: no tokens (empty file); leave the file out, or pass --on-invalid drop")
    src = open_log(path, mapping="logp=lp,logp_behavior=mu,advantage=a", on_invalid="drop")
    assert list(src) == []  # skipped, and counted as a dropped file
    assert src.report.to_dict()["by_file"] == {str(path): {"empty (empty file)": {"rows": 0, "samples": 0, "files": 1}}}
    path = write_generic_flat_parquet(tmp_path / "t.parquet", make_samples(15, 40))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    msg = error(open_log, path, fmt="generic", mapping=GENERIC_FLAT_MAP, on_invalid="drop")
    assert msg.startswith(f"{path}: not a readable Parquet file")


def test_generic_jsonl_may_be_gzip_compressed(tmp_path):
    samples = make_samples(82, 5)
    plain = write_generic_ragged_jsonl(tmp_path / "ragged.jsonl", samples)
    gz = tmp_path / "ragged.jsonl.gz"
    gz.write_bytes(gzip.compress(plain.read_bytes()))
    want = read_all(plain, mapping=GENERIC_RAGGED_MAP)
    got = read_all(gz, mapping=GENERIC_RAGGED_MAP)
    assert_columns(got, want.columns)
