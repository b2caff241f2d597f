"""Any Parquet or JSONL file of per-token data, read through a column mapping (ours -> theirs).

The mapping (``open_log(..., mapping="logp=trainer_lp,logp_behavior=engine_lp,advantage=adv")``,
see :func:`drpo_sim.logs.parse_mapping`) names, for schema columns, the file's column (Parquet) or
key (JSONL). A schema column that is not mapped but exists in the file under its own name is
taken as is. At least ``logp``, ``logp_behavior`` and ``advantage`` must resolve; a mapped
column missing from the file is an error suggesting the closest name in the file.

Two layouts, detected from the type of the ``logp`` column (Parquet list type, or a JSON list):

*flat*
    one token per row (line). Unmapped columns are derived:

    * ``mask``: all True (``describe()`` says so under ``derived``);
    * ``position``: index of the row within its run of consecutive rows with the same
      ``sample_id``, when ``sample_id`` is mapped;
    * ``sample_id``: a new sample starts at every row whose ``position`` is not greater than the
      previous row's, when ``position`` is mapped; with neither mapped each row is its own sample
      (``position`` 0). Derived sample ids are numbered across the whole log in reading order;
      mapped ones are used as they are;
    * ``group_id``: ``sample_id // group_size`` for mapped sample ids, else consecutive derived
      samples in groups of ``group_size`` (default 1), numbered across the log.

*ragged*
    one sample per row (line); per-token columns are lists, all of one length within a row
    (else the sample is reported, or dropped with ``on_invalid="drop"``); sample-level columns
    (``sample_id``, ``group_id``, ``reward``, ``step``, or an ``advantage`` number per sample)
    are scalars, broadcast over the sample's tokens. Unmapped: ``mask`` all True, ``position``
    the index in the list, ``sample_id`` numbered across the log, ``group_id`` as for flat.

JSONL files may be gzip- or zstd-compressed (``.jsonl.gz``, ``.jsonl.zst``), read line by line
as they are decompressed; Parquet compresses its columns itself and is read as ``.parquet`` only.

Errors name the file, the file's column (with the schema column it feeds) and the rows:
``rows [..]`` (0-based from the start of the file) for flat Parquet, ``row R index I`` for
ragged Parquet, ``line N`` for JSONL (1-based). Parquet is read in record batches and JSONL
line by line, so memory is bounded by ``batch_size``.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from drpo_sim import tokens
from drpo_sim.logs._stream import UNREADABLE_ADVICE, Batcher, iter_lines, log_suffix, split_suffix
from drpo_sim.logs.validate import (
    Context,
    Piece,
    SampleError,
    check_piece,
    did_you_mean,
    numbers_1d,
    scalar,
)
from drpo_sim.tokens import ALL_COLUMNS, TokenBatch

NAME = "generic"
NEEDED = ("logp", "logp_behavior", "advantage")
EXTENSIONS = (".parquet", ".jsonl")
_INT_COLUMNS = ("sample_id", "group_id", "position", "token_id", "step", "seed", "update")
_READ_ERRORS = (pa.ArrowException, OSError)


def matches(path: Path) -> bool:
    suffix, comp = split_suffix(path)
    return suffix == ".jsonl" or (suffix == ".parquet" and comp is None)


def iter_files(paths: list[Path], ctx: Context) -> Iterator[TokenBatch]:
    for path in paths:
        suffix, comp = split_suffix(path)
        if suffix == ".parquet" and comp is None:
            yield from _parquet(path, ctx)
        elif suffix == ".jsonl":
            yield from _jsonl(path, ctx)
        else:
            raise ValueError(f"{path}: the generic format reads .parquet and .jsonl (also .jsonl.gz, .jsonl.zst) "
                             f"files, not {''.join(Path(path).suffixes[-2:]) or 'this'}; convert it to one of them")


def resolve(path: Path, available: list[str], mapping: dict[str, str] | None) -> dict[str, str]:
    """Schema column -> file column, from the mapping and same-named columns; errors name the file."""
    mapping = mapping or {}
    out: dict[str, str] = {}
    for ours in ALL_COLUMNS:
        theirs = mapping.get(ours)
        if theirs is not None:
            if theirs not in available:
                raise ValueError(
                    f"{path}: column {theirs!r} (mapped to {ours}) is not in the "
                    f"file{did_you_mean(theirs, available)}; "
                    f"columns in the file: {available}"
                )
            out[ours] = theirs
        elif ours in available:
            out[ours] = ours
    missing = [c for c in NEEDED if c not in out]
    if missing:
        c = missing[0]
        raise ValueError(
            f"{path}: no column for {c}{did_you_mean(c, available)}: map it with {c}=<column> "
            f"(columns in the file: {available}; needed: {', '.join(NEEDED)})"
        )
    return out


def _peek(path: Path, mapping: dict[str, str] | None) -> tuple[dict[str, str], str] | None:
    """The first file's schema columns (ours -> theirs, :func:`resolve`) and layout, from its Parquet
    schema or first JSONL line; ``None`` when it cannot be read or resolved (reading it reports why)."""
    try:
        if log_suffix(path) == ".parquet":
            schema = pq.read_schema(path)
            names, first = schema.names, None
        else:
            line = next(iter_lines(path), None)
            first = line[1] if line is not None and isinstance(line[1], dict) else {}
            names = list(first)
        cols = resolve(path, names, mapping)
    except (ValueError, *_READ_ERRORS):
        return None
    ragged = (_is_list(schema.field(cols["logp"]).type) if first is None else isinstance(first[cols["logp"]], list))
    return cols, "ragged" if ragged else "flat"


def peek(path: Path, ctx: Context) -> None:
    """Note in ``ctx.derived`` which columns the first file will derive (for ``describe()``)."""
    got = _peek(path, ctx.mapping)
    if got is not None:
        _note_derived(ctx, *got)


def columns(path: Path, mapping: dict[str, str] | None) -> set[str] | None:
    """The schema columns a log whose first file is ``path`` gives (mapped or same-named ones, and the
    required columns the loader derives), or ``None`` when the file cannot tell."""
    got = _peek(path, mapping)
    return None if got is None else set(got[0]) | set(tokens.REQUIRED_COLUMNS)


def _note_derived(ctx: Context, cols: dict[str, str], layout: str) -> None:
    if "mask" not in cols:
        ctx.derived["mask"] = "all True (not mapped)"
    if "position" not in cols:
        ctx.derived["position"] = ("index in the sample's list" if layout == "ragged" else
                                   "index in the run of rows with one sample_id" if "sample_id" in cols else "0")
    if "sample_id" not in cols:
        ctx.derived["sample_id"] = ("numbered across the log" if layout == "ragged" or "position" not in cols else
                                    "new sample where position does not increase")
    if "group_id" not in cols:
        ctx.derived["group_id"] = (f"sample_id // group_size ({ctx.group_size})" if "sample_id" in cols else
                                   f"consecutive samples in groups of group_size={ctx.group_size}")


# ----------------------------------------------------------------------------------------------
# flat layout: derivation of ids across record batches


class _FlatIds:
    def __init__(self, ctx: Context, cols: dict[str, str]) -> None:
        self.ctx, self.cols = ctx, cols
        self.last_sid: int | None = None
        self.run = 0  # position of the next row in the current run
        self.last_pos: int | None = None
        self.local = -1  # last derived sample index in this file

    def fill(self, c: dict[str, np.ndarray], offset: int) -> None:
        n = len(c["logp"])
        if n == 0:
            return
        ctx = self.ctx
        if "mask" not in c:
            c["mask"] = np.ones(n, bool)
        if "sample_id" in c:
            sid = tokens._cast("sample_id", np.asarray(c["sample_id"]), offset)
            c["sample_id"] = sid
            if "position" not in c:
                new = np.empty(n, bool)
                new[0] = self.last_sid is None or sid[0] != self.last_sid
                new[1:] = sid[1:] != sid[:-1]
                idx = np.arange(n)
                start = np.maximum.accumulate(np.where(new, idx, -1))
                pos = np.where(start < 0, self.run + idx, idx - start)
                c["position"] = pos
                self.run = int(pos[-1]) + 1
            self.last_sid = int(sid[-1])
            if "group_id" not in c:
                c["group_id"] = sid // ctx.group_size
            return
        if "position" in c:
            pos = tokens._cast("position", np.asarray(c["position"]), offset)
            c["position"] = pos
            new = np.empty(n, bool)
            new[0] = self.last_pos is None or pos[0] <= self.last_pos
            new[1:] = pos[1:] <= pos[:-1]
            local = self.local + np.cumsum(new)
            self.last_pos = int(pos[-1])
        else:
            local = self.local + 1 + np.arange(n)
            c["position"] = np.zeros(n, np.int32)
        self.local = int(local[-1])
        c["sample_id"] = ctx.next_sample + local
        if "group_id" not in c:
            c["group_id"] = ctx.next_group + local // ctx.group_size

    def finish(self) -> None:
        n = self.local + 1
        self.ctx.next_sample += n
        self.ctx.next_group += math.ceil(n / self.ctx.group_size)


class _RaggedIds:
    """Ids of ragged samples: file-local sample ``k`` gets a log-wide id; groups of ``group_size``."""

    def __init__(self, ctx: Context, cols: dict[str, str]) -> None:
        self.ctx, self.cols = ctx, cols
        self.base_sample, self.base_group = ctx.next_sample, ctx.next_group

    def fill(self, out: dict[str, np.ndarray], k: np.ndarray) -> None:
        """Add the unmapped id columns for rows whose file-local sample index is ``k``."""
        gs = self.ctx.group_size
        if "sample_id" not in out:
            out["sample_id"] = self.base_sample + k
        if "group_id" not in out:
            if "sample_id" in self.cols:
                out["group_id"] = tokens._cast("sample_id", np.asarray(out["sample_id"]), 0) // gs
            else:
                out["group_id"] = self.base_group + k // gs

    def finish(self, n: int) -> None:
        self.ctx.next_sample = self.base_sample + n
        if "group_id" not in self.cols and "sample_id" not in self.cols:
            self.ctx.next_group = self.base_group + math.ceil(n / self.ctx.group_size)


# ----------------------------------------------------------------------------------------------
# Parquet


def _open_parquet(path: Path) -> pq.ParquetFile:
    try:
        return pq.ParquetFile(path, pre_buffer=False)  # pre-buffering holds ~the file: unbounded memory
    except _READ_ERRORS as e:
        raise ValueError(f"{path}: not a readable Parquet file (truncated or not Parquet: {e})"
                         f"{UNREADABLE_ADVICE}") from None


def _is_list(t: pa.DataType) -> bool:
    return pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t)


def _check_type(path: Path, ours: str, theirs: str, t: pa.DataType) -> None:
    inner = t.value_type if _is_list(t) else t
    if not (pa.types.is_integer(inner) or pa.types.is_floating(inner) or pa.types.is_boolean(inner)
            or pa.types.is_null(inner)):
        raise ValueError(f"{path}: {theirs} ({ours}): holds {t}, expected numbers")


def _parquet(path: Path, ctx: Context) -> Iterator[TokenBatch]:
    pf = _open_parquet(path)
    with pf:
        schema = pf.schema_arrow
        cols = resolve(path, schema.names, ctx.mapping)
        for ours, theirs in cols.items():
            _check_type(path, ours, theirs, schema.field(theirs).type)
        if pf.metadata.num_rows == 0:
            ctx.empty_file(path, "empty file")
            return
        ragged = _is_list(schema.field(cols["logp"]).type)
        _note_derived(ctx, cols, "ragged" if ragged else "flat")
        names = {o: t for o, t in cols.items()}
        batcher = Batcher(ctx, path)
        read = list(dict.fromkeys(cols.values()))
        offset = 0
        ids = _FlatIds(ctx, cols)
        rids = _RaggedIds(ctx, cols)
        rows_per_read = ctx.batch_size if not ragged else max(1, ctx.batch_size // 512)
        try:
            for rb in pf.iter_batches(batch_size=rows_per_read, columns=read):
                if ragged:
                    piece = _ragged_arrow(rb, cols, offset, path, ctx, rids)
                else:
                    c = {o: _flat_column(rb.column(t), path, o, t, offset) for o, t in cols.items()}
                    ids.fill(c, offset)
                    piece = Piece(c, offset + np.arange(rb.num_rows, dtype=np.int64))
                offset += rb.num_rows
                if piece is not None:
                    yield from batcher.add(check_piece(piece, ctx, path, "row", names,
                                                       noun="row" if not ragged else "value"))
        except _READ_ERRORS as e:
            raise ValueError(f"{path}: not a readable Parquet file (truncated or corrupt: {e})"
                             f"{UNREADABLE_ADVICE}") from None
        if ragged:
            rids.finish(offset)
        else:
            ids.finish()
        yield from batcher.flush()


def _flat_column(col: pa.Array, path: Path, ours: str, theirs: str, offset: int) -> np.ndarray:
    if col.null_count:
        if ours in _INT_COLUMNS or ours == "mask":
            bad = np.flatnonzero(col.is_null().to_numpy(zero_copy_only=False))
            raise ValueError(f"{path}: {theirs} ({ours}): {bad.size} rows are null at rows "
                             f"{tokens._rows(bad, offset)}")
        col = col.cast(pa.float64()).fill_null(math.nan)
    return col.to_numpy(zero_copy_only=False)


def _ragged_arrow(rb: pa.RecordBatch, cols: dict[str, str], offset: int, path: Path, ctx: Context,
                  rids: _RaggedIds) -> Piece | None:
    """One record batch of samples (list columns) as a piece; bad samples raise or are dropped."""
    n = rb.num_rows
    lists: dict[str, pa.Array] = {}
    scalars: dict[str, pa.Array] = {}
    for ours, theirs in cols.items():
        col = rb.column(theirs)
        (lists if _is_list(col.type) else scalars)[ours] = col
    lengths = {o: pc.list_value_length(a).to_numpy(zero_copy_only=False) for o, a in lists.items()}
    ok = np.ones(n, bool)
    for o, a in list(lists.items()) + list(scalars.items()):
        if a.null_count:
            nulls = a.is_null().to_numpy(zero_copy_only=False)
            for r in np.flatnonzero(nulls & ok):
                ctx.sample_problem(path, f"row {offset + r}", SampleError(f"{cols[o]} ({o}): null", "null value"))
            ok &= ~nulls
    ref = lengths["logp"]
    for o, ln in lengths.items():
        bad = ok & (np.nan_to_num(ln.astype(float), nan=-1) != np.nan_to_num(ref.astype(float), nan=-1))
        for r in np.flatnonzero(bad):
            listing = ", ".join(f"{cols[c]} has {int(lengths[c][r])}" for c in lengths)
            err = SampleError(f"fields of one sample have different lengths ({listing})", "length mismatch")
            ctx.sample_problem(path, f"row {offset + r}", err, rows=0)
        ok &= ~bad
    if not ok.any():
        return None
    counts = np.where(ok, np.nan_to_num(ref.astype(float), nan=0), 0).astype(np.int64)
    total = int(counts.sum())
    out: dict[str, np.ndarray] = {}
    for o, a in lists.items():
        vals = a.filter(pa.array(ok)).flatten()
        if vals.null_count and o not in _INT_COLUMNS and o != "mask":
            vals = vals.cast(pa.float64()).fill_null(math.nan)
        out[o] = vals.to_numpy(zero_copy_only=False)
    rep = np.repeat(np.arange(n), counts)
    for o, a in scalars.items():
        out[o] = a.to_numpy(zero_copy_only=False)[rep]
    index = np.arange(total) - np.repeat(np.cumsum(counts) - counts, counts)
    if "position" not in out:
        out["position"] = index
    if "mask" not in out:
        out["mask"] = np.ones(total, bool)
    rids.fill(out, offset + rep)
    return Piece(out, offset + rep.astype(np.int64), index)


# ----------------------------------------------------------------------------------------------
# JSONL


def _jsonl(path: Path, ctx: Context) -> Iterator[TokenBatch]:
    batcher = Batcher(ctx, path)
    cols: dict[str, str] | None = None
    ragged = False
    names: dict[str, str] = {}
    ids: _FlatIds | None = None
    rids: _RaggedIds | None = None
    block: list[tuple[int, dict[str, Any]]] = []
    rows = 0
    n = 0
    for lineno, obj in iter_lines(path):
        n += 1
        try:
            if isinstance(obj, SampleError):
                raise obj
            if not isinstance(obj, dict):
                raise SampleError(f"expected a JSON object, got {type(obj).__name__}", "invalid JSON")
            if cols is None:
                cols = resolve(path, list(obj), ctx.mapping)
                names = dict(cols)
                ragged = isinstance(obj[cols["logp"]], list)
                _note_derived(ctx, cols, "ragged" if ragged else "flat")
                ids, rids = _FlatIds(ctx, cols), _RaggedIds(ctx, cols)
            if ragged:
                sample = _ragged_line(obj, cols, n - 1, rids)
                block.append((lineno, sample))
                rows += len(sample["logp"])
            else:
                block.append((lineno, _flat_line(obj, cols)))
                rows += 1
        except SampleError as e:
            ctx.sample_problem(path, f"line {lineno}", e)
            continue
        if rows >= ctx.batch_size:
            yield from batcher.add(_jsonl_block(block, ragged, ids, path, ctx, names))
            block, rows = [], 0
    if n == 0:
        ctx.empty_file(path, "empty file")
        return
    if block:
        yield from batcher.add(_jsonl_block(block, ragged, ids, path, ctx, names))
    if rids is not None and ragged:
        rids.finish(n)
    elif ids is not None:
        ids.finish()
    yield from batcher.flush()


def _flat_line(obj: dict[str, Any], cols: dict[str, str]) -> dict[str, Any]:
    out = {}
    for ours, theirs in cols.items():
        if theirs not in obj:
            raise SampleError(f"missing field {theirs!r}{did_you_mean(theirs, obj)}", "missing field")
        v = obj[theirs]
        if v is None and ours not in _INT_COLUMNS and ours != "mask":
            v = math.nan
        if isinstance(v, bool) and ours != "mask" or not isinstance(v, (int, float)):
            raise SampleError(f"{theirs} ({ours}): {v!r} is not a number", "non-numeric value")
        out[ours] = v
    return out


def _ragged_line(obj: dict[str, Any], cols: dict[str, str], k: int, rids: _RaggedIds) -> dict[str, np.ndarray]:
    lists: dict[str, np.ndarray] = {}
    scalars: dict[str, float] = {}
    for ours, theirs in cols.items():
        if theirs not in obj:
            raise SampleError(f"missing field {theirs!r}{did_you_mean(theirs, obj)}", "missing field")
        v = obj[theirs]
        if isinstance(v, list):
            lists[ours] = numbers_1d(v, f"{theirs} ({ours})", integer=ours in _INT_COLUMNS)
        else:
            scalars[ours] = scalar(v, f"{theirs} ({ours})")
    size = lists["logp"].size
    if any(a.size != size for a in lists.values()):
        listing = ", ".join(f"{cols[o]} has {a.size}" for o, a in lists.items())
        raise SampleError(f"fields of one sample have different lengths ({listing})", "length mismatch")
    out = dict(lists)
    for o, v in scalars.items():
        out[o] = np.full(size, v)
    if "position" not in out:
        out["position"] = np.arange(size)
    if "mask" not in out:
        out["mask"] = np.ones(size, bool)
    rids.fill(out, np.full(size, k, np.int64))
    return out


def _jsonl_block(block: list[tuple[int, dict[str, Any]]], ragged: bool, ids: _FlatIds | None, path: Path,
                 ctx: Context, names: dict[str, str]) -> dict[str, np.ndarray]:
    if ragged:
        keys = block[0][1].keys()
        piece = Piece({c: np.concatenate([b[1][c] for b in block]) for c in keys},
                      np.concatenate([np.full(len(b[1]["logp"]), b[0], np.int64) for b in block]),
                      np.concatenate([np.arange(len(b[1]["logp"])) for b in block]))
        return check_piece(piece, ctx, path, "line", names)
    keys = block[0][1].keys()
    c = {k: np.asarray([b[1][k] for b in block]) for k in keys}
    assert ids is not None
    ids.fill(c, 0)
    piece = Piece(c, np.asarray([b[0] for b in block], np.int64))
    return check_piece(piece, ctx, path, "line", names, noun="row")
