"""Validation shared by the log loaders: one-line errors, the drop report, row and sample checks.

Every loader turns its input into *pieces* (schema columns plus, per row, where the row came
from) and hands them to :func:`check_piece`, which runs the schema's row checks
(:func:`drpo_sim.tokens.row_problems`, the one place those checks live) and either raises or
drops the offending rows. Problems that concern a whole sample (a truncated JSONL line, fields
of different lengths, a string where numbers belong) go through :meth:`Context.sample_problem`,
which raises or drops the sample. Structural problems (missing field or column, empty or
unreadable file, unknown format) always raise, whatever ``on_invalid`` says.

Error messages are one line: ``<file>: <where>: <field>: <what>``, where ``<where>`` counts from
the start of the file (``rows [..]`` for Parquet, ``line N`` for JSONL, ``sample N`` for torch
files) and ``<field>`` is the field name in the file, followed by the schema column it feeds in
parentheses when the two differ, e.g.::

    logs/train_data_step3.jsonl: prev_logprobs (logp): 1 value is positive (max 0.31) at line 4 index 17; ...
"""

from __future__ import annotations

import difflib
import math
import numbers
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from drpo_sim import tokens

ON_INVALID = ("raise", "drop")


def did_you_mean(name: str, choices: Iterable[str]) -> str:
    """`` (did you mean 'x'?)`` for the closest choice, or ``""`` when none is close."""
    close = difflib.get_close_matches(name, list(choices), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


# ----------------------------------------------------------------------------------------------
# the drop report


@dataclass
class DropCount:
    rows: int = 0
    samples: int = 0
    files: int = 0

    def as_dict(self) -> dict[str, int]:
        out = {"rows": self.rows, "samples": self.samples}
        if self.files:
            out["files"] = self.files
        return out

    def text(self, reason: str) -> str:
        if self.files:
            what = _n(self.files, "whole file")
        elif self.samples:
            what = _n(self.samples, "sample") + (f" ({_n(self.rows, 'row')})" if self.rows else "")
        else:
            what = _n(self.rows, "row")
        return f"{what} {reason}"


@dataclass
class DropReport:
    """What ``on_invalid="drop"`` dropped: token rows, whole samples and whole files per (file, reason);
    and, apart, what was de-duplicated (expected repeats, not dropped).

    A row failing several checks is counted once, under the first (in the order of
    :func:`drpo_sim.tokens.row_problems`). A dropped sample counts as one sample and as the rows it
    would have had (0 when unknown, e.g. a truncated JSON line). A skipped file (an empty step
    file) counts as one file. De-duplicated samples (:meth:`add_dedup`: slime's copies of one
    data-parallel shard written by several tensor- or pipeline-parallel ranks) are the same
    samples read once; they are reported, in every mode, but are not drops.
    """

    counts: dict[tuple[str, str], DropCount] = field(default_factory=dict)
    dedup: dict[tuple[str, str], DropCount] = field(default_factory=dict)

    def add(self, file: str | Path, reason: str, rows: int = 0, samples: int = 0, files: int = 0) -> None:
        c = self.counts.setdefault((str(file), reason), DropCount())
        c.rows += int(rows)
        c.samples += int(samples)
        c.files += int(files)

    def add_dedup(self, file: str | Path, reason: str, rows: int = 0, samples: int = 0, files: int = 0) -> None:
        """Count samples (or files) left out because another file holds the same ones."""
        c = self.dedup.setdefault((str(file), reason), DropCount())
        c.rows += int(rows)
        c.samples += int(samples)
        c.files += int(files)

    @property
    def total(self) -> int:
        """Dropped token rows, all files and reasons together."""
        return sum(c.rows for c in self.counts.values())

    @property
    def total_samples(self) -> int:
        """Whole samples dropped (per-sample problems)."""
        return sum(c.samples for c in self.counts.values())

    @property
    def total_files(self) -> int:
        """Whole files skipped (empty step files)."""
        return sum(c.files for c in self.counts.values())

    @property
    def dedup_samples(self) -> int:
        """Samples read once although several files hold them."""
        return sum(c.samples for c in self.dedup.values())

    def __bool__(self) -> bool:
        """Whether anything was dropped (de-duplication is not dropping)."""
        return bool(self.counts)

    def clear(self) -> None:
        self.counts.clear()
        self.dedup.clear()

    def to_dict(self) -> dict[str, Any]:
        by_file: dict[str, dict[str, dict[str, int]]] = {}
        for (f, reason), c in self.counts.items():
            by_file.setdefault(f, {})[reason] = c.as_dict()
        out: dict[str, Any] = {"total_rows": self.total, "total_samples": self.total_samples, "by_file": by_file}
        if self.total_files:
            out["total_files"] = self.total_files
        if self.dedup:
            dedup: dict[str, dict[str, dict[str, int]]] = {}
            for (f, reason), c in self.dedup.items():
                dedup.setdefault(f, {})[reason] = c.as_dict()
            out["deduplicated"] = {"total_rows": sum(c.rows for c in self.dedup.values()),
                                   "total_samples": self.dedup_samples,
                                   "total_files": sum(c.files for c in self.dedup.values()), "by_file": dedup}
        return out

    def __str__(self) -> str:
        if not self.counts:
            return "nothing dropped"
        head = f"dropped {_n(self.total, 'row')}"
        if self.total_samples:
            head += f" ({_n(self.total_samples, 'whole sample')})"
        if self.total_files:
            head += f" and {_n(self.total_files, 'whole file')}"
        return f"{head}: {_by_file(self.counts)}"

    def dedup_text(self) -> str:
        """One line on what was de-duplicated (``""`` when nothing was)."""
        if not self.dedup:
            return ""
        rows = sum(c.rows for c in self.dedup.values())
        files = sum(c.files for c in self.dedup.values())
        head = f"read once: {_n(self.dedup_samples, 'sample')} ({_n(rows, 'row')})"
        if files:
            head += f" and {_n(files, 'file')}"
        return f"{head} that several files hold: {_by_file(self.dedup)}"


def _natural(text: str) -> list:
    parts = re.split(r"(\d+)", text)
    return [int(p) if i % 2 else p for i, p in enumerate(parts)]


def _by_file(counts: dict[tuple[str, str], DropCount]) -> str:
    by_file: dict[str, list[str]] = {}
    for (f, reason), c in sorted(counts.items(), key=lambda item: _natural(item[0][0])):
        by_file.setdefault(Path(f).name, []).append(c.text(reason))
    parts = [f"{f}: {', '.join(v)}" for f, v in by_file.items()]
    return "; ".join(parts[:5]) + ("; ..." if len(parts) > 5 else "")


def _n(k: int, noun: str) -> str:
    return f"{k} {noun}" if k == 1 else f"{k} {noun}s"


# ----------------------------------------------------------------------------------------------
# loading context


class SampleError(ValueError):
    """A problem confined to one sample (raised inside a loader, handled by ``sample_problem``)."""

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass
class Context:
    """State shared by the loaders over one pass through a log."""

    on_invalid: str = "raise"
    batch_size: int = 65536
    group_size: int = 1
    mapping: dict[str, str] | None = None
    weights_only: bool = True
    report: DropReport = field(default_factory=DropReport)
    next_sample: int = 0  # sample ids are numbered uniquely across the log, in reading order
    next_group: int = 0  # likewise group ids (when the format has no group field)
    columns: tuple[str, ...] | None = None  # columns of the first batch: every batch must match
    first_file: Path | None = None
    derived: dict[str, str] = field(default_factory=dict)  # column -> how it was derived
    state: dict[str, Any] = field(default_factory=dict)  # per-loader state over the pass
    #: whether the log holds advantages (``False``: a mismatch-only log, advantage filled with 0),
    #: ``None`` until a loader has seen the first file
    has_advantage: bool | None = None
    has_advantage_file: Path | None = None  # the file that decided has_advantage

    @property
    def drop(self) -> bool:
        return self.on_invalid == "drop"

    def sample_problem(self, path: Path, where: str, err: SampleError, rows: int = 0) -> None:
        """Raise ``err`` as a one-line error, or count the sample as dropped."""
        if not self.drop:
            raise ValueError(f"{path}: {where}: {err}") from None
        self.report.add(path, err.reason, rows=rows, samples=1)

    def empty_file(self, path: Path, detail: str) -> None:
        """A file with no samples (an empty step file): a one-line error, or skipped and counted as a
        dropped file with ``on_invalid="drop"``."""
        if not self.drop:
            raise ValueError(f"{path}: no tokens ({detail}); leave the file out, or pass --on-invalid drop "
                             "(on_invalid='drop') to skip it and count it in the drop report")
        self.report.add(path, f"empty ({detail})", files=1)

    def take_ids(self, n_samples: int) -> tuple[np.ndarray, np.ndarray]:
        """Sample and group ids for the next ``n_samples`` samples of a file (no group field).

        Sample ids run on across the log; group ids give consecutive samples in groups of
        ``group_size``, numbered on from the last group id of the log.
        """
        sid = self.next_sample + np.arange(n_samples, dtype=np.int64)
        gid = self.next_group + np.arange(n_samples, dtype=np.int64) // self.group_size
        self.next_sample += n_samples
        self.next_group += -(-n_samples // self.group_size)
        return sid, gid


# ----------------------------------------------------------------------------------------------
# per-sample conversion


def numbers_1d(value: Any, name: str, *, integer: bool = False) -> np.ndarray:
    """One sample's list of numbers (or a tensor) as a 1-D float64 (or int64) array.

    Accepts a flat list, a list wrapped in a one-element list (NeMo RL writes ``[[...]]``), a NumPy
    array or a torch tensor. ``None`` entries become NaN (float fields) and booleans 0/1. Strings,
    nested lists and the like raise :class:`SampleError` naming the field and the first bad index.
    """
    if tokens._is_torch(value):
        arr = tokens._to_numpy(name, value)
    elif isinstance(value, np.ndarray):
        arr = value
    else:
        if isinstance(value, list) and len(value) == 1 and isinstance(value[0], (list, tuple)):
            value = value[0]
        if not isinstance(value, (list, tuple)):
            raise SampleError(f"{name}: expected a list of numbers, got {type(value).__name__}", "wrong type")
        try:
            arr = np.asarray(value)
        except ValueError:  # ragged nesting
            arr = np.asarray(value, dtype=object)
    if arr.ndim == 2 and arr.shape[0] == 1:
        arr = arr[0]
    if arr.ndim != 1 and not (arr.ndim == 0 and arr.dtype.kind == "O"):
        raise SampleError(f"{name}: expected a flat list of numbers, got shape {arr.shape}", "wrong type")
    kind = arr.dtype.kind
    if kind in "iub" or (kind == "f" and not integer):
        if kind == "b" and not integer:
            return arr.astype(np.float64)
        return arr.astype(np.int64 if integer else np.float64, copy=False)
    if kind == "f":  # integer wanted
        ok = np.isfinite(arr) & (arr == np.round(np.where(np.isfinite(arr), arr, 0)))
        if not ok.all():
            i = int(np.flatnonzero(~ok)[0])
            raise SampleError(f"{name}: index {i} holds {arr[i].item()!r}, not an integer", "non-numeric value")
        return arr.astype(np.int64)
    # object or string arrays: find the first entry that is not a real number (or None for floats)
    flat = value if isinstance(value, (list, tuple)) and len(value) == arr.size else arr.reshape(-1).tolist()
    for i, v in enumerate(flat):
        good = isinstance(v, numbers.Real) and not isinstance(v, bool) or (v is None and not integer)
        if integer and good and isinstance(v, float) and not float(v).is_integer():
            good = False
        if not good:
            raise SampleError(f"{name}: index {i} holds {v!r}, not a number", "non-numeric value")
    if integer:
        return np.array([int(v) for v in flat], dtype=np.int64)
    return np.array([math.nan if v is None else float(v) for v in flat], dtype=np.float64)


def scalar(value: Any, name: str) -> float:
    """One sample's scalar (NeMo RL writes ``[x]``), as a float; :class:`SampleError` otherwise."""
    if tokens._is_torch(value) or isinstance(value, np.ndarray):
        value = np.asarray(tokens._to_numpy(name, value)).reshape(-1)
        value = value.tolist()
    if isinstance(value, (list, tuple)):
        if len(value) != 1:
            raise SampleError(f"{name}: expected one number, got a list of {len(value)}", "wrong type")
        value = value[0]
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise SampleError(f"{name}: expected a number, got {value!r}", "non-numeric value")
    return float(value)


def check_lengths(lengths: Mapping[str, int]) -> None:
    """:class:`SampleError` when the per-token fields of one sample have different lengths."""
    if len(set(lengths.values())) > 1:
        listing = ", ".join(f"{k} has {v}" for k, v in lengths.items())
        raise SampleError(f"fields of one sample have different lengths ({listing})", "length mismatch")


# ----------------------------------------------------------------------------------------------
# row checks on pieces


@dataclass
class Piece:
    """Schema columns for a run of rows of one file, and where each row came from.

    ``unit`` is the row's line (JSONL, 1-based), row (Parquet, 0-based) or sample (torch files,
    0-based) in the file; ``index`` the row's index within that unit's lists (``None`` when a unit
    is one row).
    """

    columns: dict[str, np.ndarray]
    unit: np.ndarray
    index: np.ndarray | None = None


def where(kind: str, piece: Piece, bad: np.ndarray, limit: int = 5) -> str:
    """``rows [3, 8]`` or ``line 4 index 17, line 9 index 3, ...`` for the bad rows of a piece."""
    shown = bad[:limit]
    more = ", ..." if bad.size > limit else ""
    if piece.index is None:
        return f"{kind}s [" + ", ".join(str(int(piece.unit[i])) for i in shown) + f"{more}]"
    return ", ".join(f"{kind} {int(piece.unit[i])} index {int(piece.index[i])}" for i in shown) + more


def label(column: str, names: Mapping[str, str]) -> str:
    """The file's field name, with the schema column in parentheses when they differ."""
    theirs = names.get(column, column)
    return column if theirs == column else f"{theirs} ({column})"


def check_piece(piece: Piece, ctx: Context, path: Path, kind: str, names: Mapping[str, str],
                noun: str = "value") -> dict[str, np.ndarray]:
    """Convert a piece to the schema's dtypes and run the row checks; raise or drop bad rows."""
    offset = int(piece.unit[0]) if piece.index is None and piece.unit.size and kind == "row" else 0
    try:
        arrays = tokens._convert_columns(piece.columns, offset)
    except ValueError as e:
        msg = str(e)
        column = msg.split(":", 1)[0]
        if column in piece.columns:
            msg = label(column, names) + msg[len(column):]
        raise ValueError(f"{path}: {msg}") from None
    problems = tokens.row_problems(arrays)
    if not problems:
        return arrays
    if not ctx.drop:
        column, reason, bad = problems[0]
        idx = np.flatnonzero(bad)
        msg = tokens.row_problem_message(label(column, names), reason, arrays[column], idx,
                                         where(kind, piece, idx), noun=noun)
        raise ValueError(f"{path}: {msg}")
    counted = np.zeros(len(arrays["logp"]), bool)
    for column, reason, bad in problems:
        new = bad & ~counted
        if new.any():
            ctx.report.add(path, f"{label(column, names)} {reason}", rows=int(new.sum()))
        counted |= bad
    keep = ~counted
    return {n: a[keep] for n, a in arrays.items()}
