"""The content-addressed, resumable cell store: one file per finished cell.

Layout of a store directory::

    <id>.parquet          the cell's table (drpo_sim.results; metadata: the cell's id, kind,
                          spec, labels, code digest and the package version)
    <id>.<name>.parquet   a token log the cell produced (the lab's), written before its table
    .lock                 held (flock) by the one driver writing into the directory

Files appear only by atomic rename, so a run killed at any moment, even by ``kill -9``, leaves
complete cell files and perhaps stray ``.*.tmp`` files, which the next run deletes; it then runs
the missing cells and ends with exactly the results of an uninterrupted run. Because cells are
stored by content (:mod:`drpo_sim.run.cells`), one store may serve many experiments: a cell
computed for one is reused by any other that asks for the same numbers from the same code.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import threading
from collections.abc import Iterable, Iterator
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from drpo_sim.results import read_results, write_results
from drpo_sim.run.cells import Cell
from drpo_sim.tokens import write_token_log

LOCK_FILE = ".lock"


class CellStore:
    """A directory of finished cells (module docstring)."""

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root)
        self._guard = threading.Lock()
        self._holders = 0
        self._fd: int | None = None

    def __repr__(self) -> str:
        return f"CellStore({str(self.root)!r})"

    def path(self, cell: Cell) -> Path:
        return self.root / f"{cell.id}.parquet"

    def token_log(self, cell: Cell, name: str = "tokens") -> Path:
        """Where the token log ``name`` of ``cell`` is kept."""
        return self.root / f"{cell.id}.{name}.parquet"

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """Hold the store's lock for the block; another driver on the same store is an error.

        The lock belongs to this object: its threads may nest blocks (a runner's background
        prefetch and its caller share one store), and the file lock is released when the last
        block ends."""
        with self._guard:
            if self._holders == 0:
                self.root.mkdir(parents=True, exist_ok=True)
                fd = os.open(self.root / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o666)
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    os.close(fd)
                    raise OSError(f"{self.root}: another run is writing into this cell store "
                                  f"(it holds {self.root / LOCK_FILE})") from None
                self._fd = fd
            self._holders += 1
        try:
            yield
        finally:
            with self._guard:
                self._holders -= 1
                if self._holders == 0:
                    os.close(self._fd)  # closing releases the lock, as does the process's death
                    self._fd = None

    def remove_stale(self) -> int:
        """Delete the temporary files of interrupted atomic writes; return how many."""
        stale = list(self.root.glob(".*.tmp"))
        for p in stale:
            p.unlink()
        return len(stale)

    def done(self, cell: Cell) -> bool:
        """Whether ``cell``'s file exists and is a readable result file for this cell, with its
        token logs. An unreadable file (which atomic writes cannot leave, but a damaged disk can)
        counts as not done; a readable file of another cell is an error."""
        path = self.path(cell)
        if not path.is_file():
            return False
        try:
            raw = (pq.read_schema(path).metadata or {}).get(b"drpo_sim")
            meta = json.loads(raw) if raw else {}
        except (pa.ArrowInvalid, OSError, ValueError):
            return False
        if meta.get("cell") != cell.id:
            raise ValueError(f"{path}: holds cell {meta.get('cell')!r}, not {cell.id!r}; remove the file")
        return all(self.root.joinpath(f).is_file() for f in meta.get("token_logs", []))

    def write(self, cell: Cell, table: pd.DataFrame, token_logs: dict[str, tuple[list, dict]] | None = None) -> Path:
        """Store a finished cell: its token logs first, then its table (whose presence marks it done)."""
        names = []
        for name, (batches, meta) in (token_logs or {}).items():
            names.append(write_token_log(self.token_log(cell, name), batches, meta).name)
        return write_results(table, self.path(cell), {**cell.metadata(), "token_logs": names})

    def read(self, cell: Cell) -> pd.DataFrame:
        """A finished cell's table."""
        df, meta = read_results(self.path(cell))
        if meta.get("cell") != cell.id:
            raise ValueError(f"{self.path(cell)}: holds cell {meta.get('cell')!r}, not {cell.id!r}")
        return df

    def prune(self, keep: Iterable[str]) -> int:
        """Delete every stored cell whose id is not in ``keep`` (cells of older code, or of
        experiments no longer run); return how many cells were removed."""
        ids = set(keep)
        removed = set()
        for p in self.root.glob("*.parquet"):
            cid = p.name.split(".", 1)[0]
            if cid not in ids:
                p.unlink()
                removed.add(cid)
        return len(removed)
