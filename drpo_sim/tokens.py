"""The one token record: :class:`TokenBatch`, and token logs as Parquet files.

Every part of drpo_sim exchanges tokens in this form (``docs/layout.md``, "One token
record"): the simulator emits a ``TokenBatch`` at each update, the log loaders produce one per
training step, the tiny LM lab writes them, and every analysis consumes them. A simulation saved
with :class:`TokenLogWriter` is replayed with :func:`read_token_log` exactly like a real log.

Schema
------

One row per sampled token. Notation as in ``docs/reference.md`` ("Notation"): ``pi`` is the
policy being trained, ``mu`` the behaviour (inference) policy that sampled the rollout.

=================  ========  =========  ===================================================================
column             type      required   meaning (unit)
=================  ========  =========  ===================================================================
``logp``           float64   required   ``log pi(y_t | s_t)`` of the sampled token under the trained policy
                                        (nats, ``<= 0``)
``logp_behavior``  float64   required   ``log mu(y_t | s_t)`` under the behaviour / inference policy that
                                        generated the rollout (nats, ``<= 0``)
``advantage``      float64   required   advantage ``A`` of the token (a sequence advantage broadcast over its
                                        tokens; reward units)
``mask``           bool      required   the token counts in the loss; ``False`` marks padding, prompt or
                                        otherwise excluded tokens
``sample_id``      int64     required   which sampled sequence (response) the token belongs to
``group_id``       int64     required   which prompt group the sequence belongs to (GRPO group)
``position``       int32     required   index of the token within its response (0-based)
``token_id``       int32     optional   vocabulary id of the sampled token
``logp_old``       float64   optional   ``log pi_old(y_t | s_t)`` recomputed by the trainer at rollout time
                                        (nats, ``<= 0``)
``reward``         float64   optional   reward of the token's sequence (reward units)
``step``           int64     optional   training step (one rollout batch per step)
``seed``           int64     optional   simulation seed the token comes from
``update``         int32     optional   index of the optimiser (mini-batch) update within the step
``topk_tv``        float64   optional   DPPO's Top-K total variation between the engine's and the trainer's
                                        next-token distributions at the token's state, the trainer's at
                                        the update that produced ``logp`` (``[0, 1]``)
``topk_kl``        float64   optional   DPPO's Top-K ``KL(engine || trainer)`` of the same distributions
                                        (nats, ``>= 0``)
=================  ========  =========  ===================================================================

``topk_tv`` and ``topk_kl`` are what :func:`drpo_sim.objectives.topk_divergences` computes from the
engine's top-K log-probs at each position and the trainer's log-probs of the same tokens (Qi et al.
2026, sail-sg/Stable-RL ``compute_topk_kl``); the Top-K DPPO objectives read them. No framework's
own log holds them; a trainer writes them with the rest of its token log.

Validation (at construction, so every ``TokenBatch`` in the toolkit satisfies it):

* every given column is 1-D and all have the same length (zero rows is a valid, empty batch);
* values are cast to the column's type; a float column must hold numbers (not strings, not
  complex), an integer column integral values in the type's range, ``mask`` booleans or 0/1;
* on tokens with ``mask == True``: ``logp``, ``logp_behavior`` (and ``logp_old`` when present)
  are finite and ``<= 0``, ``advantage`` is finite, and ``topk_tv`` / ``topk_kl`` (when present)
  are finite and ``>= 0``. Masked-out tokens may hold anything
  (padding, NaN).

Errors are ``ValueError`` naming the column and the first offending rows; when reading a file,
prefixed with the file's path and counting rows from the start of the file. The per-row value
checks (the third point) live in one function, :func:`row_problems`, which returns the offending
rows per (column, reason): ``TokenBatch`` raises on the first, the log loaders of
``drpo_sim.logs`` raise or drop the rows with it.

Token log files
---------------

A token log is one Parquet file in :data:`SCHEMA` (the required columns and the optional
columns present in every batch written to it; an optional column is present in all rows or in
none, and no column holds nulls). Its key-value metadata holds ``drpo_sim``, a JSON object
describing the run (configuration, source), and ``drpo_sim.version``, the package version that
wrote it. Columns outside the schema are ignored when reading. Files are written atomically: a
temporary file beside the target, renamed onto it only when writing succeeded.

Usage::

    from drpo_sim.tokens import TokenBatch, TokenLogWriter, read_token_log

    batch = TokenBatch.from_arrays(logp=lp, logp_behavior=lb, advantage=adv, mask=mask,
                                   sample_id=sid, group_id=gid, position=pos)   # any equal shape
    with TokenLogWriter("run.parquet", metadata={"objective": "drpo", "delta": 12.5}) as w:
        w.write(batch)
    for b in read_token_log("run.parquet", batch_size=65536):   # memory bounded by batch_size
        ...
"""

from __future__ import annotations

import contextlib
import errno
import json
import numbers
import os
import sys
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from drpo_sim import __version__
from drpo_sim._io import atomic_path

__all__ = [
    "ALL_COLUMNS",
    "METADATA_KEY",
    "OPTIONAL_COLUMNS",
    "REQUIRED_COLUMNS",
    "SCHEMA",
    "VERSION_KEY",
    "arrow_columns",
    "TokenBatch",
    "TokenLogWriter",
    "concat",
    "load_token_log",
    "read_token_log",
    "row_problems",
    "read_token_log_metadata",
    "write_token_log",
]

# name: (numpy dtype, arrow type, required, description)
_COLUMNS: dict[str, tuple[np.dtype, pa.DataType, bool, str]] = {
    "logp": (np.dtype(np.float64), pa.float64(), True,
             "log pi(y_t|s_t) of the sampled token under the trained policy (nats, <= 0)"),
    "logp_behavior": (np.dtype(np.float64), pa.float64(), True,
                      "log mu(y_t|s_t) under the behaviour/inference policy (nats, <= 0)"),
    "advantage": (np.dtype(np.float64), pa.float64(), True, "advantage A of the token"),
    "mask": (np.dtype(np.bool_), pa.bool_(), True, "the token counts in the loss"),
    "sample_id": (np.dtype(np.int64), pa.int64(), True, "sampled sequence the token belongs to"),
    "group_id": (np.dtype(np.int64), pa.int64(), True, "prompt group the sequence belongs to"),
    "position": (np.dtype(np.int32), pa.int32(), True, "index of the token in its response"),
    "token_id": (np.dtype(np.int32), pa.int32(), False, "vocabulary id of the sampled token"),
    "logp_old": (np.dtype(np.float64), pa.float64(), False,
                 "log pi_old(y_t|s_t) recomputed by the trainer at rollout time (nats, <= 0)"),
    "reward": (np.dtype(np.float64), pa.float64(), False, "reward of the token's sequence"),
    "step": (np.dtype(np.int64), pa.int64(), False, "training step"),
    "seed": (np.dtype(np.int64), pa.int64(), False, "simulation seed"),
    "update": (np.dtype(np.int32), pa.int32(), False, "optimiser update index within the step"),
    "topk_tv": (np.dtype(np.float64), pa.float64(), False,
                "DPPO's Top-K TV between the engine's and the trainer's next-token distributions ([0, 1])"),
    "topk_kl": (np.dtype(np.float64), pa.float64(), False,
                "DPPO's Top-K KL(engine || trainer) of the next-token distributions (nats, >= 0)"),
}

REQUIRED_COLUMNS: tuple[str, ...] = tuple(n for n, c in _COLUMNS.items() if c[2])
OPTIONAL_COLUMNS: tuple[str, ...] = tuple(n for n, c in _COLUMNS.items() if not c[2])
ALL_COLUMNS: tuple[str, ...] = REQUIRED_COLUMNS + OPTIONAL_COLUMNS

_LOGPROB_COLUMNS = ("logp", "logp_behavior", "logp_old")  # finite and <= 0 where mask
_FINITE_COLUMNS = ("advantage",)  # finite where mask
_DIVERGENCE_COLUMNS = ("topk_tv", "topk_kl")  # finite and >= 0 where mask

METADATA_KEY = "drpo_sim"
VERSION_KEY = "drpo_sim.version"


def _field(name: str) -> pa.Field:
    _, typ, required, desc = _COLUMNS[name]
    # No column may hold nulls; an optional column is absent as a whole. "required" is recorded in
    # the field metadata, so a file describes itself.
    return pa.field(name, typ, nullable=False,
                    metadata={"required": "true" if required else "false", "description": desc})


#: The full token-log schema: every column, required ones first. A file or table holds the
#: required columns and any subset of the optional ones, in this order.
SCHEMA: pa.Schema = pa.schema([_field(n) for n in ALL_COLUMNS])


def _schema_for(names: Iterable[str]) -> pa.Schema:
    names = set(names)
    return pa.schema([_field(n) for n in ALL_COLUMNS if n in names])


# ----------------------------------------------------------------------------------------------
# conversion and validation


def _rows(idx: np.ndarray, offset: int, limit: int = 5) -> str:
    shown = ", ".join(str(int(i) + offset) for i in idx[:limit])
    more = ", ..." if idx.size > limit else ""
    return f"[{shown}{more}]"


def _count(k: int, what: str) -> str:
    return f"{k} row is {what}" if k == 1 else f"{k} rows are {what}"


def _val(x: Any) -> str:
    return repr(x.item() if isinstance(x, np.generic) else x)


def _is_torch(x: Any) -> bool:
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(x, torch.Tensor)


def _to_numpy(name: str, x: Any) -> np.ndarray:
    if _is_torch(x):
        torch = sys.modules["torch"]  # loaded: x is a tensor (tokens never imports torch itself)
        x = x.detach().cpu()
        if x.dtype == torch.bfloat16:  # NumPy has no bfloat16; float32 holds it exactly
            x = x.to(torch.float32)
        return x.numpy()
    if isinstance(x, (pa.Array, pa.ChunkedArray)):
        return x.to_numpy(zero_copy_only=False)
    if isinstance(x, np.ndarray):
        return x
    try:
        return np.asarray(x)
    except (ValueError, TypeError) as e:
        raise ValueError(f"{name}: cannot convert to an array ({e})") from e


def _object_numbers(name: str, arr: np.ndarray, want: np.dtype, offset: int) -> np.ndarray:
    """Convert an object array whose elements are all real numbers; reject anything else."""
    flat = arr.ravel()
    bad = np.flatnonzero([not isinstance(v, numbers.Real) for v in flat])
    if bad.size:
        raise ValueError(
            f"{name}: cannot cast to {want}: {_count(bad.size, 'non-numeric')} "
            f"(e.g. {_val(flat[bad[0]])}) at rows {_rows(bad, offset)}"
        )
    if want.kind in "iu" and all(isinstance(v, numbers.Integral) for v in flat):
        try:
            return np.array([int(v) for v in flat], dtype=np.int64)
        except OverflowError as e:
            raise ValueError(f"{name}: value out of int64 range ({e})") from e
    return np.array([float(v) for v in flat], dtype=np.float64)


def _cast(name: str, arr: np.ndarray, offset: int) -> np.ndarray:
    want = _COLUMNS[name][0]
    if arr.dtype == want:
        return arr
    if arr.dtype.kind == "O":
        arr = _object_numbers(name, arr, want, offset)
        if arr.dtype == want:
            return arr
    kind = arr.dtype.kind
    if kind not in "biuf":
        raise ValueError(f"{name}: cannot cast {arr.dtype} to {want}")

    if want.kind == "f":
        return arr.astype(want)

    if want.kind == "b":  # mask: booleans, or numbers that are exactly 0 or 1
        bad = np.flatnonzero(~((arr == 0) | (arr == 1)))
        if bad.size:
            raise ValueError(
                f"{name}: {_count(bad.size, 'neither 0 nor 1')} (e.g. {_val(arr[bad[0]])}) at rows {_rows(bad, offset)}"
            )
        return arr.astype(want)

    # integer columns
    if kind == "b" or np.can_cast(arr.dtype, want, casting="safe"):
        return arr.astype(want)
    info = np.iinfo(want)
    if kind == "f":
        bad = np.flatnonzero(~(np.isfinite(arr) & (arr == np.floor(np.where(np.isfinite(arr), arr, 0)))))
        if bad.size:
            raise ValueError(
                f"{name}: {_count(bad.size, 'non-integral')} (e.g. {_val(arr[bad[0]])}) at rows {_rows(bad, offset)}"
            )
        out = ~((arr >= float(info.min)) & (arr < float(info.max) + 1.0))
    else:  # int / uint wider than the target
        out = ~((arr >= info.min) & (arr <= info.max))
    bad = np.flatnonzero(out)
    if bad.size:
        raise ValueError(
            f"{name}: {_count(bad.size, f'out of the {want} range')} (e.g. {_val(arr[bad[0]])}) "
            f"at rows {_rows(bad, offset)}"
        )
    return arr.astype(want)


def _convert_columns(given: Mapping[str, Any], offset: int = 0) -> dict[str, np.ndarray]:
    """Convert columns (``None`` = absent) to the schema's dtypes; check names, shapes and lengths.

    Type problems (strings where numbers belong, non-integral ids, ...) raise ``ValueError``; the
    value checks of :func:`row_problems` are not run here.
    """
    unknown = [n for n in given if n not in _COLUMNS]
    if unknown:
        raise ValueError(f"unknown column(s) {unknown}; valid columns are {list(ALL_COLUMNS)}")
    missing = [n for n in REQUIRED_COLUMNS if given.get(n) is None]
    if missing:
        raise ValueError(f"missing required column(s) {missing}; required columns are {list(REQUIRED_COLUMNS)}")

    arrays = {n: _to_numpy(n, given[n]) for n in ALL_COLUMNS if given.get(n) is not None}
    for n, a in arrays.items():
        if a.ndim != 1:
            raise ValueError(
                f"{n}: expected a 1-D array, got shape {a.shape} (TokenBatch.from_arrays flattens equal shapes)"
            )
    n_ref = len(arrays["logp"])
    for n, a in arrays.items():
        if len(a) != n_ref:
            raise ValueError(f"{n} has length {len(a)} but logp has length {n_ref}; all columns need one length")

    return {n: _cast(n, a, offset) for n, a in arrays.items()}


#: Reasons reported by :func:`row_problems`.
NOT_FINITE = "not finite"
POSITIVE = "positive"
NEGATIVE = "negative"


def row_problems(arrays: Mapping[str, np.ndarray]) -> list[tuple[str, str, np.ndarray]]:
    """The per-row value checks of the schema, as boolean masks of the offending rows.

    ``arrays`` are converted columns (schema dtypes, e.g. from :func:`_convert_columns`). Returns
    ``(column, reason, bad)`` for each failing check, in the order errors are reported: for each of
    ``logp``, ``logp_behavior``, ``logp_old`` (when present), ``advantage``, ``topk_tv`` and
    ``topk_kl`` (when present), first :data:`NOT_FINITE` then :data:`POSITIVE` (log-probabilities)
    or :data:`NEGATIVE` (divergences), all only on rows with ``mask == True``. This is the one
    place these checks live: :class:`TokenBatch` raises on the first problem, the log loaders
    (``drpo_sim.logs``) raise or drop the rows.
    """
    mask = arrays["mask"]
    out: list[tuple[str, str, np.ndarray]] = []
    for n in _LOGPROB_COLUMNS + _FINITE_COLUMNS + _DIVERGENCE_COLUMNS:
        x = arrays.get(n)
        if x is None:
            continue
        bad = mask & ~np.isfinite(x)
        if bad.any():
            out.append((n, NOT_FINITE, bad))
        if n in _LOGPROB_COLUMNS:
            bad = mask & (x > 0)
            if bad.any():
                out.append((n, POSITIVE, bad))
        elif n in _DIVERGENCE_COLUMNS:
            bad = mask & (x < 0)
            if bad.any():
                out.append((n, NEGATIVE, bad))
    return out


def row_problem_message(column: str, reason: str, x: np.ndarray, bad: np.ndarray, where: str,
                        noun: str = "row") -> str:
    """One-line message for a :func:`row_problems` entry.

    ``bad`` holds the offending row indices (into ``x``), ``where`` says where they are (e.g.
    ``"rows [4, 9]"`` or ``"line 3 index 17"``), ``noun`` what a row is called.
    """
    k = bad.size
    count = f"{k} {noun} is {reason}" if k == 1 else f"{k} {noun}s are {reason}"
    if reason == NOT_FINITE:
        return f"{column}: {count} ({_val(x[bad[0]])}) on masked-in tokens at {where}"
    if reason == POSITIVE:
        return (f"{column}: {count} (max {x[bad].max():.3g}) at {where}; "
                "log-probabilities must be <= 0 on masked-in tokens")
    if reason == NEGATIVE:
        return (f"{column}: {count} (min {x[bad].min():.3g}) at {where}; "
                "divergences must be >= 0 on masked-in tokens")
    raise ValueError(f"unknown row problem {reason!r}")


def _check_columns(given: Mapping[str, Any], offset: int = 0) -> dict[str, np.ndarray]:
    """Convert and validate columns (``None`` = absent); return them in schema order."""
    arrays = _convert_columns(given, offset)
    for n, reason, bad in row_problems(arrays):
        idx = np.flatnonzero(bad)
        raise ValueError(row_problem_message(n, reason, arrays[n], idx, f"rows {_rows(idx, offset)}"))
    return arrays


def arrow_columns(table: pa.Table | pa.RecordBatch, offset: int = 0) -> dict[str, np.ndarray]:
    """The schema columns an Arrow table holds, as NumPy arrays (unconverted, unchecked).

    Columns outside the schema are left out. A null in any of them is a ``ValueError`` naming
    the column and the first rows (counted from ``offset``): the schema has no nullable column.
    """
    names = set(table.schema.names)
    columns = {}
    for n in ALL_COLUMNS:
        if n not in names:
            continue
        col = table.column(n)
        if col.null_count:
            bad = np.flatnonzero(col.is_null().to_numpy(zero_copy_only=False))
            raise ValueError(f"{n}: {_count(bad.size, 'null')} at rows {_rows(bad, offset)}")
        columns[n] = col.to_numpy(zero_copy_only=False)
    return columns


# ----------------------------------------------------------------------------------------------
# the record


@dataclass(frozen=True, eq=False, repr=False)
class TokenBatch:
    """A batch of sampled tokens: one 1-D NumPy array per column, all of one length.

    See the module docstring for the schema and the checks run at construction. The arrays are
    not copied when they already have the schema's dtype, and may be read-only views (e.g. when
    read from Parquet): treat them as read-only. ``dataclasses.replace(batch, logp=...)`` builds
    a new, validated batch. Batches compare by identity; compare columns with NumPy.
    """

    logp: np.ndarray
    logp_behavior: np.ndarray
    advantage: np.ndarray
    mask: np.ndarray
    sample_id: np.ndarray
    group_id: np.ndarray
    position: np.ndarray
    token_id: np.ndarray | None = None
    logp_old: np.ndarray | None = None
    reward: np.ndarray | None = None
    step: np.ndarray | None = None
    seed: np.ndarray | None = None
    update: np.ndarray | None = None
    topk_tv: np.ndarray | None = None
    topk_kl: np.ndarray | None = None

    def __post_init__(self) -> None:
        checked = _check_columns({n: getattr(self, n) for n in ALL_COLUMNS})
        for n, a in checked.items():
            object.__setattr__(self, n, a)

    @classmethod
    def _trusted(cls, columns: Mapping[str, np.ndarray]) -> TokenBatch:
        """Build from columns already converted and validated (skips the checks)."""
        self = object.__new__(cls)
        for n in ALL_COLUMNS:
            object.__setattr__(self, n, columns.get(n))
        return self

    # construction ---------------------------------------------------------------------------

    @classmethod
    def from_arrays(cls, **columns: Any) -> TokenBatch:
        """Build a batch from NumPy arrays, lists or torch tensors (detached, moved to CPU).

        Columns of any shape are flattened (C order), but only if all share one shape, e.g.
        ``(batch, seq_len)`` tensors from a trainer; otherwise ``ValueError``. ``None`` marks an
        absent optional column.
        """
        given = {n: _to_numpy(n, c) for n, c in columns.items() if c is not None}
        unknown = [n for n in given if n not in _COLUMNS]
        if unknown:
            raise ValueError(f"unknown column(s) {unknown}; valid columns are {list(ALL_COLUMNS)}")
        shapes = {n: a.shape for n, a in given.items()}
        if len(set(shapes.values())) > 1 and any(len(s) != 1 for s in shapes.values()):
            listing = ", ".join(f"{n} {s}" for n, s in shapes.items())
            raise ValueError(f"columns have different shapes ({listing}); from_arrays flattens only equal shapes")
        flat = {n: a.reshape(-1) for n, a in given.items()}
        return cls._trusted(_check_columns(flat))

    @classmethod
    def from_arrow(cls, table: pa.Table | pa.RecordBatch) -> TokenBatch:
        """Build a validated batch from an Arrow table in the schema.

        Columns are cast to the schema's types; columns outside the schema are ignored. A missing
        required column, or nulls in any schema column, is a ``ValueError``.
        """
        return cls._from_arrow(table, 0)

    @classmethod
    def _from_arrow(cls, table: pa.Table | pa.RecordBatch, offset: int) -> TokenBatch:
        if not isinstance(table, (pa.Table, pa.RecordBatch)):
            raise TypeError(f"expected a pyarrow Table or RecordBatch, got {type(table).__name__}")
        names = set(table.schema.names)
        missing = [n for n in REQUIRED_COLUMNS if n not in names]
        if missing:
            raise ValueError(
                f"missing required column(s) {missing}; required columns are {list(REQUIRED_COLUMNS)}"
            )
        return cls._trusted(_check_columns(arrow_columns(table, offset), offset))

    @classmethod
    def empty(cls, optional: Iterable[str] = ()) -> TokenBatch:
        """A zero-row batch with the required columns and the named optional ones."""
        optional = list(optional)
        unknown = [n for n in optional if n not in OPTIONAL_COLUMNS]
        if unknown:
            raise ValueError(f"unknown optional column(s) {unknown}; optional columns are {list(OPTIONAL_COLUMNS)}")
        return cls._trusted({n: np.empty(0, _COLUMNS[n][0]) for n in REQUIRED_COLUMNS + tuple(optional)})

    # access ---------------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self.logp)

    def __repr__(self) -> str:
        return f"TokenBatch(n={len(self)}, optional={list(self.optional_columns)})"

    @property
    def columns(self) -> dict[str, np.ndarray]:
        """The present columns, name -> array, in schema order."""
        return {n: getattr(self, n) for n in ALL_COLUMNS if getattr(self, n) is not None}

    @property
    def optional_columns(self) -> tuple[str, ...]:
        """Names of the optional columns present, in schema order."""
        return tuple(n for n in OPTIONAL_COLUMNS if getattr(self, n) is not None)

    @property
    def schema(self) -> pa.Schema:
        """The Arrow schema of this batch: the required columns and the present optional ones."""
        return _schema_for(self.columns)

    # conversion -----------------------------------------------------------------------------

    def to_arrow(self) -> pa.Table:
        """A pyarrow Table in :data:`SCHEMA` (present columns only; zero-copy for numeric columns)."""
        schema = self.schema
        return pa.Table.from_arrays([pa.array(getattr(self, f.name), type=f.type) for f in schema], schema=schema)

    def to_pandas(self) -> pd.DataFrame:
        """A DataFrame with one column per present column, dtypes as in the schema."""
        return pd.DataFrame(self.columns)


def concat(batches: Iterable[TokenBatch]) -> TokenBatch:
    """Concatenate batches that all have the same optional columns (``ValueError`` otherwise)."""
    batches = list(batches)
    if not batches:
        raise ValueError("concat needs at least one batch (use TokenBatch.empty() for an empty one)")
    for i, b in enumerate(batches):
        if not isinstance(b, TokenBatch):
            raise TypeError(f"concat: item {i} is a {type(b).__name__}, not a TokenBatch")
    first = batches[0].optional_columns
    for i, b in enumerate(batches[1:], start=1):
        if b.optional_columns != first:
            raise ValueError(
                f"concat: batch {i} has optional columns {list(b.optional_columns)} but batch 0 has {list(first)}"
            )
    if len(batches) == 1:
        return batches[0]
    names = REQUIRED_COLUMNS + first
    return TokenBatch._trusted({n: np.concatenate([getattr(b, n) for b in batches]) for n in names})


# ----------------------------------------------------------------------------------------------
# token log files


class TokenLogWriter:
    """Stream :class:`TokenBatch` es into one Parquet token log, atomically.

    Use as a context manager. Rows go to a temporary file beside ``path`` that is renamed onto
    ``path`` only when the ``with`` block exits without an exception; otherwise it is removed and
    ``path`` is left as it was (absent, or the previous file). The first batch written fixes the
    optional columns; every later batch must have the same ones (``ValueError``). Writing no batch
    gives a valid file with the required columns and zero rows.

    ``metadata`` (a JSON-serialisable dict: the run's configuration, its source) is stored as JSON
    under the file's key-value metadata key ``drpo_sim``, beside ``drpo_sim.version``. Small
    batches are buffered and written as row groups of about ``row_group_size`` rows, so memory
    stays bounded by that and the file by its rows.
    """

    def __init__(self, path: str | os.PathLike, metadata: Mapping[str, Any] | None = None,
                 *, row_group_size: int = 1 << 17, compression: str = "zstd") -> None:
        self.path = Path(path)
        if metadata is not None and not isinstance(metadata, Mapping):
            raise TypeError(f"metadata must be a dict, got {type(metadata).__name__}")
        try:
            self._metadata_json = json.dumps(dict(metadata or {}), allow_nan=False)
        except (TypeError, ValueError) as e:
            raise ValueError(f"{self.path}: metadata is not JSON-serialisable ({e})") from e
        if row_group_size < 1:
            raise ValueError(f"row_group_size must be >= 1, got {row_group_size}")
        self.row_group_size = int(row_group_size)
        self.compression = compression
        self.rows_written = 0
        self._optional: tuple[str, ...] | None = None
        self._writer: pq.ParquetWriter | None = None
        self._buffer: list[pa.Table] = []
        self._buffered = 0
        self._stack: contextlib.ExitStack | None = None
        self._tmp: Path | None = None

    def __enter__(self) -> TokenLogWriter:
        if self._stack is not None:
            raise RuntimeError(f"{self.path}: TokenLogWriter is already open")
        stack = contextlib.ExitStack()
        self._tmp = stack.enter_context(atomic_path(self.path))
        self._stack = stack
        return self

    def write(self, batch: TokenBatch) -> None:
        """Append a batch (buffered; rows reach the file by the time the block exits)."""
        if self._stack is None:
            raise RuntimeError(f"{self.path}: use TokenLogWriter inside a `with` block")
        if not isinstance(batch, TokenBatch):
            raise TypeError(f"{self.path}: write expects a TokenBatch, got {type(batch).__name__}")
        if self._optional is None:
            self._optional = batch.optional_columns
        elif batch.optional_columns != self._optional:
            raise ValueError(
                f"{self.path}: batch has optional columns {list(batch.optional_columns)} but this log was "
                f"started with {list(self._optional)}; every batch in a token log needs the same columns"
            )
        if len(batch) == 0:
            return
        self._buffer.append(batch.to_arrow())
        self._buffered += len(batch)
        if self._buffered >= self.row_group_size:
            self._flush()

    def _open_writer(self) -> pq.ParquetWriter:
        if self._writer is None:
            schema = _schema_for(REQUIRED_COLUMNS + (self._optional or ())).with_metadata(
                {METADATA_KEY: self._metadata_json, VERSION_KEY: __version__}
            )
            self._writer = pq.ParquetWriter(self._tmp, schema, compression=self.compression)
        return self._writer

    def _flush(self) -> None:
        writer = self._open_writer()
        if self._buffer:
            table = pa.concat_tables(self._buffer)
            self._buffer, self._buffered = [], 0
            writer.write_table(table, row_group_size=self.row_group_size)
            self.rows_written += table.num_rows

    def __exit__(self, exc_type, exc, tb) -> bool:
        stack, self._stack = self._stack, None
        if stack is None:
            return False
        if exc_type is None:
            try:
                self._flush()
                self._writer.close()
            except BaseException:
                self._abandon()
                if not stack.__exit__(*sys.exc_info()):
                    raise
                return False
            finally:
                self._writer = None
            stack.__exit__(None, None, None)  # rename onto path
            return False
        self._abandon()
        return bool(stack.__exit__(exc_type, exc, tb))  # removes the temporary file, re-raises

    def _abandon(self) -> None:
        self._buffer, self._buffered = [], 0
        if self._writer is not None:
            with contextlib.suppress(Exception):
                self._writer.close()
            self._writer = None


def write_token_log(path: str | os.PathLike, batches: TokenBatch | Iterable[TokenBatch],
                    metadata: Mapping[str, Any] | None = None, **writer_options: Any) -> Path:
    """Write batches (or one batch) to a token log at ``path``, atomically; return the path."""
    if isinstance(batches, TokenBatch):
        batches = [batches]
    with TokenLogWriter(path, metadata, **writer_options) as writer:
        for b in batches:
            writer.write(b)
    return Path(path)


_READ_ERRORS = (pa.ArrowException, OSError)


def _require_file(path: Path) -> None:
    if not path.exists():
        raise FileNotFoundError(errno.ENOENT, "no such token log", str(path))


def _open_schema(path: Path) -> pa.Schema:
    _require_file(path)
    try:
        schema = pq.read_schema(path)
    except _READ_ERRORS as e:
        raise ValueError(f"{path}: not a readable Parquet file ({e})") from e
    missing = [n for n in REQUIRED_COLUMNS if n not in schema.names]
    if missing:
        raise ValueError(
            f"{path}: missing required column(s) {missing}; required columns are {list(REQUIRED_COLUMNS)}"
        )
    return schema


def read_token_log(path: str | os.PathLike, batch_size: int = 65536) -> Iterator[TokenBatch]:
    """Stream a token log as validated batches of at most ``batch_size`` rows.

    Memory is bounded by ``batch_size`` (and the file's row-group size), not by the file. The file
    and its schema are checked when this is called; rows as they are read. Errors are
    ``ValueError`` prefixed with the path, with row numbers counted from the start of the file.
    Columns outside the schema are ignored.
    """
    path = Path(path)
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    schema = _open_schema(path)
    names = [n for n in ALL_COLUMNS if n in schema.names]
    return _iter_batches(path, names, int(batch_size))


def _iter_batches(path: Path, names: list[str], batch_size: int) -> Iterator[TokenBatch]:
    offset = 0
    try:
        with pq.ParquetFile(path, pre_buffer=False) as pf:  # pre-buffering holds ~the file: unbounded memory
            for rb in pf.iter_batches(batch_size=batch_size, columns=names):
                batch = TokenBatch._from_arrow(rb, offset)
                offset += rb.num_rows
                yield batch
    except _READ_ERRORS as e:
        raise ValueError(f"{path}: not a readable Parquet file ({e})") from e
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from e


def load_token_log(path: str | os.PathLike) -> TokenBatch:
    """Read a whole token log into one batch (a zero-row file gives an empty batch)."""
    path = Path(path)
    schema = _open_schema(path)
    names = [n for n in ALL_COLUMNS if n in schema.names]
    try:
        table = pq.read_table(path, columns=names)
    except _READ_ERRORS as e:
        raise ValueError(f"{path}: not a readable Parquet file ({e})") from e
    try:
        return TokenBatch._from_arrow(table, 0)
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from e


def read_token_log_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """The run metadata stored with a token log (the decoded ``drpo_sim`` JSON; ``{}`` if none).

    The writing package's version is in the same key-value metadata under ``drpo_sim.version``
    (``pyarrow.parquet.read_metadata(path).metadata``).
    """
    path = Path(path)
    _require_file(path)
    try:
        kv = pq.read_metadata(path).metadata or {}
    except _READ_ERRORS as e:
        raise ValueError(f"{path}: not a readable Parquet file ({e})") from e
    raw = kv.get(METADATA_KEY.encode())
    if raw is None:
        return {}
    try:
        meta = json.loads(raw)
    except ValueError as e:
        raise ValueError(f"{path}: metadata key {METADATA_KEY!r} is not valid JSON ({e})") from e
    if not isinstance(meta, dict):
        raise ValueError(f"{path}: metadata key {METADATA_KEY!r} holds a {type(meta).__name__}, not a JSON object")
    return meta

