"""TokenBatch and the Parquet token log: round trips, streaming, atomicity, validation errors."""

from __future__ import annotations

import dataclasses
import json
import os
import re

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

import drpo_sim
from drpo_sim.tokens import (
    ALL_COLUMNS,
    OPTIONAL_COLUMNS,
    REQUIRED_COLUMNS,
    SCHEMA,
    TokenBatch,
    TokenLogWriter,
    concat,
    load_token_log,
    read_token_log,
    read_token_log_metadata,
    write_token_log,
)


def make_batch(n: int, seed: int = 0, optional: tuple[str, ...] = (), step: int = 0) -> TokenBatch:
    rng = np.random.default_rng(seed)
    mask = rng.random(n) < 0.8
    logp = np.log(rng.random(n))
    logp_b = logp + rng.normal(scale=1e-3, size=n)
    logp_b = np.minimum(logp_b, 0.0)
    # padding on masked-out tokens: anything goes, including NaN, inf and positive values
    pad = ~mask
    logp[pad] = np.where(rng.random(pad.sum()) < 0.5, np.nan, 3.0)
    logp_b[pad] = np.inf
    cols = dict(
        logp=logp,
        logp_behavior=logp_b,
        advantage=rng.normal(size=n),
        mask=mask,
        sample_id=np.arange(n) // 7,
        group_id=np.arange(n) // 28,
        position=np.arange(n) % 7,
    )
    extra = dict(
        token_id=rng.integers(0, 50_000, n),
        logp_old=logp_b - np.abs(rng.normal(scale=1e-4, size=n)),
        reward=rng.random(n),
        step=np.full(n, step),
        seed=np.full(n, seed),
        update=np.full(n, 3),
        topk_tv=rng.random(n),
        topk_kl=rng.exponential(size=n),
    )
    cols.update({k: extra[k] for k in optional})
    return TokenBatch.from_arrays(**cols)


def assert_bit_identical(a: TokenBatch, b: TokenBatch) -> None:
    assert list(a.columns) == list(b.columns)
    for name, x in a.columns.items():
        y = b.columns[name]
        assert x.dtype == y.dtype, name
        assert x.shape == y.shape, name
        # compare raw bytes: float64 exactness, -0.0 and NaN payloads included
        assert x.tobytes() == y.tobytes(), name


def files_in(directory) -> list[str]:
    return sorted(os.listdir(directory))


# ---------------------------------------------------------------------------------------------
# construction


def test_construction_casts_to_schema_dtypes():
    b = TokenBatch(
        logp=[-0.5, -1.0], logp_behavior=np.array([-0.4, -1.1], dtype=np.float32), advantage=[1, -1],
        mask=[1, 0], sample_id=[0.0, 1.0], group_id=np.array([0, 0], dtype=np.uint8), position=[0, 1],
        reward=[True, False],
    )
    assert len(b) == 2
    want = {"logp": np.float64, "logp_behavior": np.float64, "advantage": np.float64, "mask": np.bool_,
            "sample_id": np.int64, "group_id": np.int64, "position": np.int32, "reward": np.float64}
    assert {k: v.dtype for k, v in b.columns.items()} == {k: np.dtype(v) for k, v in want.items()}
    assert b.optional_columns == ("reward",)
    assert b.token_id is None and b.step is None
    assert b.to_pandas().dtypes.to_dict() == {k: np.dtype(v) for k, v in want.items()}
    # dataclasses.replace re-validates
    with pytest.raises(ValueError, match="logp: 1 row is positive"):
        dataclasses.replace(b, logp=np.array([0.5, -1.0]))


def test_schema_fields():
    assert SCHEMA.names == list(ALL_COLUMNS)
    for name in REQUIRED_COLUMNS:
        assert not SCHEMA.field(name).nullable
        assert SCHEMA.field(name).metadata[b"required"] == b"true"
    for name in OPTIONAL_COLUMNS:
        assert SCHEMA.field(name).metadata[b"required"] == b"false"
    assert SCHEMA.field("position").type == pa.int32()
    assert SCHEMA.field("mask").type == pa.bool_()


def test_length_mismatch_names_column_and_lengths():
    with pytest.raises(ValueError, match=r"advantage has length 3 but logp has length 4"):
        TokenBatch(logp=np.zeros(4) - 1, logp_behavior=np.zeros(4) - 1, advantage=np.zeros(3), mask=np.ones(4, bool),
                   sample_id=np.zeros(4), group_id=np.zeros(4), position=np.zeros(4))


def test_constructor_requires_1d():
    with pytest.raises(ValueError, match=r"logp: expected a 1-D array, got shape \(2, 2\)"):
        TokenBatch(logp=-np.ones((2, 2)), logp_behavior=-np.ones(4), advantage=np.zeros(4), mask=np.ones(4, bool),
                   sample_id=np.zeros(4), group_id=np.zeros(4), position=np.zeros(4))


def base_columns(n: int = 12) -> dict:
    return dict(logp=np.full(n, -1.0), logp_behavior=np.full(n, -1.0), advantage=np.ones(n), mask=np.ones(n, bool),
                sample_id=np.arange(n), group_id=np.zeros(n, int), position=np.arange(n))


def test_positive_logprob_error_names_column_rows_and_max():
    cols = base_columns()
    cols["logp_behavior"][[4, 9]] = [0.31, 0.02]
    with pytest.raises(ValueError, match=re.escape("logp_behavior: 2 rows are positive (max 0.31) at rows [4, 9]")):
        TokenBatch(**cols)
    cols["mask"][[4, 9]] = False  # the same values on padding are fine
    TokenBatch(**cols)


def test_nan_logp_behavior_masked_in_is_error_masked_out_is_fine():
    cols = base_columns()
    cols["logp_behavior"][3] = np.nan
    msg = "logp_behavior: 1 row is not finite (nan) on masked-in tokens at rows [3]"
    with pytest.raises(ValueError, match=re.escape(msg)):
        TokenBatch(**cols)
    cols["mask"][3] = False
    b = TokenBatch(**cols)
    assert np.isnan(b.logp_behavior[3])


@pytest.mark.parametrize("column", ["logp", "advantage", "logp_old"])
def test_nonfinite_values_on_masked_in_tokens(column):
    cols = base_columns()
    cols["logp_old"] = np.full(12, -1.0)
    cols[column][[1, 2, 5, 6, 7, 8, 10]] = -np.inf
    with pytest.raises(ValueError, match=re.escape(f"{column}: 7 rows are not finite (-inf) on masked-in tokens "
                                                   "at rows [1, 2, 5, 6, 7, ...]")):
        TokenBatch(**cols)


@pytest.mark.parametrize("column", ["topk_tv", "topk_kl"])
def test_topk_divergences_must_be_finite_and_nonnegative_on_masked_in_tokens(column):
    cols = base_columns()
    cols[column] = np.full(12, 0.01)
    cols[column][[2, 7]] = [-0.5, -1e-3]
    msg = f"{column}: 2 rows are negative (min -0.5) at rows [2, 7]; divergences must be >= 0 on masked-in tokens"
    with pytest.raises(ValueError, match=re.escape(msg)):
        TokenBatch(**cols)
    cols[column][[2, 7]] = np.nan
    with pytest.raises(ValueError, match=re.escape(f"{column}: 2 rows are not finite (nan)")):
        TokenBatch(**cols)
    cols["mask"][[2, 7]] = False  # padding may hold anything
    TokenBatch(**cols)


def test_non_integral_int_column():
    cols = base_columns()
    cols["sample_id"] = np.arange(12) + np.where(np.arange(12) == 5, 0.5, 0.0)
    with pytest.raises(ValueError, match=re.escape("sample_id: 1 row is non-integral (e.g. 5.5) at rows [5]")):
        TokenBatch(**cols)
    cols["sample_id"] = np.where(np.arange(12) == 2, np.nan, 1.0)
    with pytest.raises(ValueError, match=r"sample_id: .* at rows \[2\]"):
        TokenBatch(**cols)


def test_int_out_of_range_and_bad_types():
    cols = base_columns()
    cols["position"] = np.arange(12, dtype=np.int64) + 2**31 - 3
    msg = "position: 9 rows are out of the int32 range (e.g. 2147483648) at rows [3, 4, 5, 6, 7, ...]"
    with pytest.raises(ValueError, match=re.escape(msg)):
        TokenBatch(**cols)
    cols = base_columns()
    cols["advantage"] = np.array(["a"] * 12)
    with pytest.raises(ValueError, match="advantage: cannot cast <U1 to float64"):
        TokenBatch(**cols)
    cols["advantage"] = np.ones(12, dtype=complex)
    with pytest.raises(ValueError, match="advantage: cannot cast complex128 to float64"):
        TokenBatch(**cols)
    cols["advantage"] = [1.0] * 11 + [None]
    msg = "advantage: cannot cast to float64: 1 row is non-numeric (e.g. None) at rows [11]"
    with pytest.raises(ValueError, match=re.escape(msg)):
        TokenBatch(**cols)
    cols = base_columns()
    cols["mask"] = np.full(12, 2)
    with pytest.raises(ValueError, match="mask: 12 rows are neither 0 nor 1"):
        TokenBatch(**cols)


def test_missing_and_unknown_columns_in_from_arrays():
    cols = base_columns()
    del cols["mask"]
    with pytest.raises(ValueError, match=r"missing required column\(s\) \['mask'\]; required columns are \['logp'"):
        TokenBatch.from_arrays(**cols)
    with pytest.raises(ValueError, match=r"unknown column\(s\) \['bogus'\]"):
        TokenBatch.from_arrays(**base_columns(), bogus=np.zeros(12))


def test_from_arrays_torch_tensors_and_flattening():
    g = torch.Generator().manual_seed(0)
    logp = torch.log(torch.rand(3, 5, generator=g)).requires_grad_()
    b = TokenBatch.from_arrays(
        logp=logp * 1.0,  # non-leaf with grad: detached
        logp_behavior=(logp.detach() - 0.01).to(torch.bfloat16).clamp(max=0),
        advantage=torch.randn(3, 1, generator=g).expand(3, 5),
        mask=torch.ones(3, 5, dtype=torch.bool),
        sample_id=torch.arange(3).unsqueeze(1).expand(3, 5),
        group_id=torch.zeros(3, 5, dtype=torch.int64),
        position=torch.arange(5).expand(3, 5),
        token_id=torch.randint(0, 100, (3, 5), generator=g, dtype=torch.int32),
    )
    assert len(b) == 15
    np.testing.assert_array_equal(b.logp, logp.detach().numpy().astype(np.float64).ravel())
    np.testing.assert_array_equal(b.sample_id, np.repeat(np.arange(3), 5))
    np.testing.assert_array_equal(b.position, np.tile(np.arange(5), 3))
    assert b.position.dtype == np.int32 and b.token_id.dtype == np.int32


def test_from_arrays_rejects_different_shapes():
    cols = {k: np.reshape(v, (3, 4)) for k, v in base_columns().items()}
    cols["advantage"] = np.ones(12)
    with pytest.raises(ValueError, match=r"different shapes \(.*advantage \(12,\).*from_arrays flattens only"):
        TokenBatch.from_arrays(**cols)
    cols = base_columns()
    cols["position"] = np.arange(11)
    with pytest.raises(ValueError, match="position has length 11 but logp has length 12"):
        TokenBatch.from_arrays(**cols)


def test_concat():
    a, b = make_batch(10, 1, ("reward",)), make_batch(5, 2, ("reward",))
    c = concat([a, b])
    assert len(c) == 15
    np.testing.assert_array_equal(c.reward, np.concatenate([a.reward, b.reward]))
    with pytest.raises(ValueError, match=r"batch 1 has optional columns \[\] but batch 0 has \['reward'\]"):
        concat([a, make_batch(5, 3)])
    with pytest.raises(ValueError, match="at least one batch"):
        concat([])


# ---------------------------------------------------------------------------------------------
# token log files


@pytest.mark.parametrize("optional", [(), ("token_id", "logp_old", "reward", "step", "seed", "update"),
                                      ("token_id", "logp_old", "topk_tv", "topk_kl")])
def test_round_trip_bit_identical(tmp_path, optional):
    path = tmp_path / "log.parquet"
    batches = [make_batch(n, seed=s, optional=optional, step=s) for s, n in enumerate([100, 1, 0, 333])]
    with TokenLogWriter(path, metadata={"objective": "drpo"}) as w:
        for b in batches:
            w.write(b)
    assert w.rows_written == 434
    assert files_in(tmp_path) == ["log.parquet"]
    whole = concat(batches)
    loaded = load_token_log(path)
    assert_bit_identical(whole, loaded)
    streamed = concat(list(read_token_log(path)))
    assert_bit_identical(whole, streamed)
    assert pq.read_schema(path).names == list(REQUIRED_COLUMNS + optional)


def test_streaming_respects_batch_size(tmp_path):
    path = tmp_path / "log.parquet"
    batches = [make_batch(n, seed=s) for s, n in enumerate([500, 70, 431])]
    write_token_log(path, batches, row_group_size=300)
    sizes = [len(b) for b in read_token_log(path, batch_size=64)]
    assert sum(sizes) == 1001
    assert max(sizes) <= 64 and len(sizes) >= 1001 // 64
    assert_bit_identical(concat(batches), concat(list(read_token_log(path, batch_size=64))))


def test_metadata_round_trip(tmp_path):
    path = tmp_path / "log.parquet"
    meta = {"objective": "drpo", "delta": 12.5, "seeds": [0, 1, 2], "env": {"name": "bandit", "vocab": 1000}}
    write_token_log(path, [make_batch(10)], metadata=meta)
    assert read_token_log_metadata(path) == meta
    kv = pq.read_metadata(path).metadata
    assert json.loads(kv[b"drpo_sim"]) == meta
    assert kv[b"drpo_sim.version"].decode() == drpo_sim.__version__
    # no metadata: an empty dict; a plain Parquet file without the key: also an empty dict
    write_token_log(tmp_path / "plain.parquet", [make_batch(3)])
    assert read_token_log_metadata(tmp_path / "plain.parquet") == {}
    pq.write_table(make_batch(3).to_arrow(), tmp_path / "other.parquet")
    assert read_token_log_metadata(tmp_path / "other.parquet") == {}
    with pytest.raises(ValueError, match="not JSON-serialisable"):
        TokenLogWriter(tmp_path / "x.parquet", metadata={"f": object()})


def test_empty_batch_and_empty_log_round_trip(tmp_path):
    empty = TokenBatch.from_arrays(**{k: np.asarray(v)[:0] for k, v in base_columns().items()})
    assert len(empty) == 0
    write_token_log(tmp_path / "a.parquet", [empty])
    assert_bit_identical(empty, load_token_log(tmp_path / "a.parquet"))
    with TokenLogWriter(tmp_path / "b.parquet"):
        pass
    loaded = load_token_log(tmp_path / "b.parquet")
    assert len(loaded) == 0 and list(loaded.columns) == list(REQUIRED_COLUMNS)
    assert list(read_token_log(tmp_path / "b.parquet")) == []
    assert pq.read_schema(tmp_path / "b.parquet").names == list(REQUIRED_COLUMNS)
    assert len(TokenBatch.from_arrow(empty.to_arrow())) == 0


def test_atomic_on_exception(tmp_path):
    path = tmp_path / "log.parquet"
    with pytest.raises(RuntimeError, match="boom"):
        with TokenLogWriter(path) as w:
            w.write(make_batch(50))
            raise RuntimeError("boom")
    assert files_in(tmp_path) == []

    write_token_log(path, [make_batch(20, seed=7)], metadata={"v": 1})
    before = path.read_bytes()
    with pytest.raises(KeyboardInterrupt):
        with TokenLogWriter(path, metadata={"v": 2}, row_group_size=10) as w:
            w.write(make_batch(50))  # flushed to the temporary file already
            raise KeyboardInterrupt
    assert path.read_bytes() == before
    assert files_in(tmp_path) == ["log.parquet"]
    assert read_token_log_metadata(path) == {"v": 1}


def test_mismatched_optional_columns_across_batches(tmp_path):
    path = tmp_path / "log.parquet"
    with pytest.raises(ValueError, match=r"batch has optional columns \['step'\] but this log was started with \[\]"):
        with TokenLogWriter(path) as w:
            w.write(make_batch(10))
            w.write(make_batch(10, optional=("step",)))
    assert files_in(tmp_path) == []


def test_missing_column_in_plain_parquet(tmp_path):
    path = tmp_path / "plain.parquet"
    table = make_batch(10).to_arrow().drop_columns(["group_id"])
    pq.write_table(table, path)
    for reader in (load_token_log, lambda p: next(read_token_log(p))):
        with pytest.raises(ValueError) as info:
            reader(path)
        msg = str(info.value)
        assert msg.startswith(f"{path}: missing required column(s) ['group_id']")
        assert "required columns are ['logp', 'logp_behavior', 'advantage', 'mask'" in msg
    with pytest.raises(ValueError, match=r"missing required column\(s\) \['group_id'\]"):
        TokenBatch.from_arrow(table)


def test_plain_parquet_is_cast_and_extra_columns_ignored(tmp_path):
    path = tmp_path / "plain.parquet"
    n = 6
    pq.write_table(pa.table({
        "logp": pa.array(np.full(n, -0.5, np.float32)), "logp_behavior": np.full(n, -0.25),
        "advantage": np.arange(n, dtype=np.int16), "mask": np.ones(n, bool), "sample_id": np.arange(n, dtype=np.int32),
        "group_id": np.zeros(n, np.int64), "position": np.arange(n, dtype=np.int64), "note": ["x"] * n,
    }), path)
    b = load_token_log(path)
    assert list(b.columns) == list(REQUIRED_COLUMNS)
    assert b.logp.dtype == np.float64 and b.position.dtype == np.int32


def test_invalid_rows_in_file_name_file_and_file_rows(tmp_path):
    path = tmp_path / "plain.parquet"
    cols = base_columns(12)
    cols["logp"][10] = 0.5
    pq.write_table(pa.table(cols), path)
    with pytest.raises(ValueError, match=re.escape(f"{path}: logp: 1 row is positive (max 0.5) at rows [10]")):
        list(read_token_log(path, batch_size=4))  # row 10 is row 2 of the third batch
    with pytest.raises(ValueError, match=re.escape(f"{path}: logp: 1 row is positive (max 0.5) at rows [10]")):
        load_token_log(path)
    table = pa.table(base_columns(4)).set_column(0, "logp", pa.array([-1.0, None, -1.0, None]))
    pq.write_table(table, path)
    with pytest.raises(ValueError, match=re.escape(f"{path}: logp: 2 rows are null at rows [1, 3]")):
        load_token_log(path)


def test_truncated_and_non_parquet_files(tmp_path):
    path = tmp_path / "log.parquet"
    write_token_log(path, [make_batch(2000, optional=("reward",))])
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    for reader in (load_token_log, read_token_log, read_token_log_metadata, lambda p: list(read_token_log(p))):
        with pytest.raises(ValueError, match=re.escape(f"{path}: not a readable Parquet file")):
            reader(path)
    text = tmp_path / "notes.txt"
    text.write_text("not parquet at all\n")
    with pytest.raises(ValueError, match=re.escape(f"{text}: not a readable Parquet file")):
        load_token_log(text)
    with pytest.raises(FileNotFoundError, match="missing.parquet"):
        read_token_log(tmp_path / "missing.parquet")


def test_writer_misuse(tmp_path):
    w = TokenLogWriter(tmp_path / "log.parquet")
    with pytest.raises(RuntimeError, match="inside a `with` block"):
        w.write(make_batch(3))
    with pytest.raises(TypeError, match="expects a TokenBatch"):
        with TokenLogWriter(tmp_path / "log.parquet") as w:
            w.write(make_batch(3).to_arrow())
    assert files_in(tmp_path) == []
