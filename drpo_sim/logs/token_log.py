"""Our own token logs (Parquet in the schema of :mod:`drpo_sim.tokens`) through the loader interface.

With ``on_invalid="raise"`` this is :func:`drpo_sim.tokens.read_token_log` (same checks, same
messages); with ``"drop"`` rows failing the row checks are dropped and counted instead. A missing
schema column is an error suggesting the closest column in the file; a file with no rows is an
error ("no tokens"), or skipped and counted as a dropped file with ``on_invalid="drop"``. Memory
is bounded by ``batch_size`` (and the file's row-group size).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from drpo_sim import tokens
from drpo_sim.logs._stream import UNREADABLE_ADVICE, Batcher
from drpo_sim.logs.validate import Context, Piece, check_piece, did_you_mean
from drpo_sim.tokens import ALL_COLUMNS, REQUIRED_COLUMNS, TokenBatch

NAME = "tokens"
_READ_ERRORS = (pa.ArrowException, OSError)


def matches(path: Path) -> bool:
    return path.suffix == ".parquet"


def sniff(schema: pa.Schema) -> bool:
    return all(n in schema.names for n in REQUIRED_COLUMNS)


def iter_files(paths: list[Path], ctx: Context) -> Iterator[TokenBatch]:
    for path in paths:
        yield from _read(path, ctx)


def _read(path: Path, ctx: Context) -> Iterator[TokenBatch]:
    try:
        meta = pq.read_metadata(path)
        names = pq.read_schema(path).names
    except _READ_ERRORS as e:
        raise ValueError(f"{path}: not a readable Parquet file ({e}){UNREADABLE_ADVICE}") from None
    missing = [n for n in REQUIRED_COLUMNS if n not in names]
    if missing:
        others = [n for n in names if n not in ALL_COLUMNS]
        raise ValueError(f"{path}: missing required column {missing[0]!r}{did_you_mean(missing[0], others)}; "
                         f"required columns are {list(REQUIRED_COLUMNS)}")
    if meta.num_rows == 0:
        ctx.empty_file(path, "empty file")
        return
    batcher = Batcher(ctx, path)
    if not ctx.drop:
        for b in tokens.read_token_log(path, batch_size=ctx.batch_size):
            yield from batcher.add(b.columns)
    else:
        read = [n for n in ALL_COLUMNS if n in names]
        offset = 0
        try:
            with pq.ParquetFile(path, pre_buffer=False) as pf:  # pre-buffering holds ~the file: unbounded memory
                for rb in pf.iter_batches(batch_size=ctx.batch_size, columns=read):
                    try:
                        cols = tokens.arrow_columns(rb, offset)
                    except ValueError as e:
                        raise ValueError(f"{path}: {e}") from None
                    piece = Piece(cols, offset + np.arange(rb.num_rows, dtype=np.int64))
                    offset += rb.num_rows
                    yield from batcher.add(check_piece(piece, ctx, path, "row", {}, noun="row"))
        except _READ_ERRORS as e:
            raise ValueError(f"{path}: not a readable Parquet file ({e}){UNREADABLE_ADVICE}") from None
    yield from batcher.flush()
