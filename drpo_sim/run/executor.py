"""The one executor: run a list of cells on local processes or a Dask cluster, resumably.

:class:`Runner` serves every experiment of drpo_sim, sweeps (:mod:`drpo_sim.run.sweep`), the
lab's comparison (:mod:`drpo_sim.run.lab`) and the paper's panels (:mod:`drpo_sim.paper.jobs`)::

    runner = Runner(store=CellStore("figures/cells"), n_jobs=2)
    tables = runner.run(cells)          # one table per cell, in the order of ``cells``
    runner.last                         # what that call ran, skipped, and where

With a store, cells already there are skipped and each new cell is written as soon as it
finishes, so an interrupted run resumes where it stopped (:mod:`drpo_sim.run.store`).

A driver that knows its later cells can hand them over early: ``runner.prefetch(cells)`` starts
computing them on the workers in a background thread while the driver goes on (drawing figures,
say), and a later ``runner.run`` of any of them waits for them instead of computing them again;
``runner.join()`` waits for the rest and raises what failed there, ``runner.cancel()`` stops it.
``drpo-sim reproduce`` hands over every analysis's cells this way, so the workers never wait for
the driver's single-threaded work between analyses. Locally the
cells run on ``n_jobs`` joblib processes (default: the usable CPUs; one runs them in this
process); with ``scheduler="tcp://host:port"`` they run on that Dask cluster, whose workers need
the same drpo_sim code (checked on every result: each worker returns the code digest it computed
with). Either way the workers only compute; the driver writes every file. Runs are deterministic
per seed, so the results do not depend on where or in which order the cells ran.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import pandas as pd
from joblib import Parallel, cpu_count, delayed
from tqdm.auto import tqdm

from drpo_sim.run.cells import KINDS, Cell, Output
from drpo_sim.run.store import CellStore

# (cell id, its output, seconds the worker spent, the code digest the worker computed with)
Result = tuple[str, Output, float, str]


def compute(task: dict[str, Any]) -> Result:
    """Run one cell's task (:meth:`Cell.task`) in this process."""
    t0 = time.perf_counter()
    kind = KINDS[task["kind"]]
    out = kind.compute(task["spec"], task["inputs"])
    return task["id"], out, time.perf_counter() - t0, kind.code


def _local(tasks: list[dict[str, Any]], n_jobs: int) -> Iterator[Result]:
    """Tasks on ``n_jobs`` joblib processes (in this process when 1), yielded as each finishes."""
    if n_jobs == 1:
        yield from map(compute, tasks)
        return
    parallel = Parallel(n_jobs=min(n_jobs, len(tasks)), return_as="generator_unordered")
    yield from parallel(delayed(compute)(t) for t in tasks)


def _dask(tasks: list[dict[str, Any]], address: str) -> Iterator[Result]:
    """Tasks on the Dask cluster at ``address``, yielded as each finishes.

    Each result is released on the cluster once yielded; leaving the generator early (an error
    in the driver) closes the client, which cancels the tasks still queued. ``distributed`` is
    imported here, not at the top: ``import dask.distributed`` takes 0.8-0.9 s on this project's
    two-core machine (measured with ``python -c``), which every local run would otherwise pay.
    """
    from dask.distributed import Client, as_completed

    with Client(address, set_as_default=False) as client:
        keys = [f"drpo-sim-cell-{t['id']}" for t in tasks]
        pending = as_completed(client.map(compute, tasks, key=keys), loop=client.loop)
        for future in pending:
            out = future.result()
            future.release()
            yield out


def check_address(address: Any) -> None:
    """A TCP/TLS scheduler address must have a host and a port (checked before connecting: a
    ``Client`` given a malformed one fails, then hangs for a minute while it is collected)."""
    from distributed.comm import get_address_host_port, parse_address  # see _dask

    if not isinstance(address, str) or not address.strip():
        raise ValueError(f"scheduler: expected a Dask scheduler address such as tcp://host:8786, got {address!r}")
    scheme, _ = parse_address(address)
    if scheme in ("tcp", "tls"):
        try:
            get_address_host_port(address)
        except ValueError as err:
            raise ValueError(f"scheduler {address!r}: {err}; expected e.g. tcp://host:8786") from None


@dataclass
class RunReport:
    """What one :meth:`Runner.run` did."""

    ran: int = 0
    skipped: int = 0
    rerun_unreadable: int = 0
    stale_tmp_removed: int = 0
    total: int = 0
    executor: str = ""
    wall_s: float = 0.0
    cells: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Per cell id: ``{"this_run": "ran" | "skipped", "wall_s": ...}``."""


class Cancelled(Exception):
    """A background prefetch was cancelled (:meth:`Runner.cancel`)."""


@dataclass
class _Prefetch:
    """A background run of cells: an event per cell id, set once the cell is in the store (or
    the run ended without it); what each cell did; what failed."""

    done: dict[str, threading.Event]
    runs: dict[str, dict[str, Any]] = field(default_factory=dict)
    cancel: threading.Event = field(default_factory=threading.Event)
    error: BaseException | None = None
    thread: threading.Thread | None = None


@dataclass
class Runner:
    """Runs cells (module docstring). ``store``: where finished cells are kept (None: nowhere,
    nothing resumes); ``n_jobs`` local processes or the Dask ``scheduler``'s address;
    ``progress``: a tqdm bar counting cells."""

    store: CellStore | None = None
    n_jobs: int | None = None
    scheduler: str | None = None
    progress: bool = False
    last: RunReport = field(default_factory=RunReport, init=False, repr=False)
    served: set[str] = field(default_factory=set, init=False, repr=False)
    """The ids of every cell this runner has served, over all its calls."""
    _prefetch: _Prefetch | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        if self.scheduler is not None:
            if self.n_jobs is not None:
                raise ValueError("n_jobs and scheduler exclude each other: a Dask cluster has its own workers")
            check_address(self.scheduler)
        elif self.n_jobs is not None and not (isinstance(self.n_jobs, int) and not isinstance(self.n_jobs, bool)
                                              and self.n_jobs >= 1):
            raise ValueError(f"n_jobs must be a number of processes >= 1, got {self.n_jobs!r}")

    @property
    def parallel(self) -> bool:
        """Whether cells run outside this process (more than one local process, or Dask)."""
        return self.scheduler is not None or (self.n_jobs or cpu_count()) > 1

    def _executor(self) -> tuple[Callable[[list[dict[str, Any]]], Iterator[Result]], str]:
        if self.scheduler is not None:
            return (lambda tasks: _dask(tasks, self.scheduler)), f"dask {self.scheduler}"
        n = self.n_jobs or cpu_count()
        return (lambda tasks: _local(tasks, n)), f"local, {n} process{'es' if n > 1 else ''}"

    def run(self, cells: Sequence[Cell], *, desc: str = "cells",
            on_result: Callable[[Cell, float], None] | None = None) -> list[pd.DataFrame]:
        """Every cell's table, in the order of ``cells``: from the store where it is there,
        computed otherwise. ``on_result(cell, seconds)`` is called as each new cell is stored by
        this call (not for cells a :meth:`prefetch` computes)."""
        ids = [c.id for c in cells]
        if len(set(ids)) != len(ids):
            raise ValueError("two cells have the same specification; remove the duplicate")
        self.served.update(ids)
        t0 = time.perf_counter()
        pf = self._prefetch
        if pf is not None:
            if all(i in pf.done for i in ids):
                return self._collect(cells, pf, t0)
            self.join()  # cells the background run does not have: one pool at a time
        execute, where = self._executor()
        if self.store is None:
            tables = self._compute(cells, execute, desc, on_result, {})
            self.last = RunReport(ran=len(cells), total=len(cells), executor=where, wall_s=time.perf_counter() - t0)
            return [tables[c.id] for c in cells]
        with self.store.locked():
            stale = self.store.remove_stale()
            done, todo = self._split(cells)
            unreadable = sum(1 for c in todo if self.store.path(c).exists())
            report = RunReport(skipped=len(done), rerun_unreadable=unreadable, stale_tmp_removed=stale,
                               total=len(cells), executor=where if todo else "none (every cell was done)",
                               cells={cid: {"this_run": "skipped"} for cid in done})
            self._compute(todo, execute, desc, on_result, report.cells, initial=len(done), total=len(cells))
            report.ran = len(todo)
            report.wall_s = time.perf_counter() - t0
            self.last = report
            return [self.store.read(c) for c in cells]

    def _split(self, cells: Sequence[Cell]) -> tuple[set[str], list[Cell]]:
        """The ids of the cells the store holds, and the cells still to compute (in order)."""
        done = {c.id for c in cells if self.store.done(c)}
        return done, [c for c in cells if c.id not in done]

    def prefetch(self, cells: Sequence[Cell], *, desc: str = "cells") -> None:
        """Start computing ``cells`` (in this order) in a background thread; return at once.

        Each result goes to the store as it finishes; a later :meth:`run` whose cells are all
        here waits for them (any other :meth:`run` first waits for the whole prefetch). Needs a
        store, which hands the results over; one prefetch at a time."""
        if self.store is None:
            raise ValueError("prefetch hands results over through the cell store: give the runner a store")
        if self._prefetch is not None:
            raise RuntimeError("a prefetch is already running: join() or cancel() it first")
        unique = list({c.id: c for c in cells}.values())
        self.served.update(c.id for c in unique)
        pf = _Prefetch({c.id: threading.Event() for c in unique})
        pf.thread = threading.Thread(target=self._background, args=(unique, pf, desc), name="drpo-sim-prefetch",
                                     daemon=True)
        self._prefetch = pf
        pf.thread.start()

    def _background(self, cells: list[Cell], pf: _Prefetch, desc: str) -> None:
        def stored(cell: Cell, seconds: float) -> None:
            pf.done[cell.id].set()
            if pf.cancel.is_set():
                raise Cancelled

        try:
            with self.store.locked():
                self.store.remove_stale()
                done, todo = self._split(cells)
                for cid in done:
                    pf.runs[cid] = {"this_run": "skipped"}
                    pf.done[cid].set()
                execute, _ = self._executor()
                self._compute(todo, execute, desc, stored, pf.runs, initial=len(cells) - len(todo),
                              total=len(cells))
        except BaseException as err:  # noqa: BLE001 - handed to whoever waits (run, join)
            pf.error = err
        finally:
            for event in pf.done.values():
                event.set()  # nobody waits forever: a cell missing after this is an error

    def _collect(self, cells: Sequence[Cell], pf: _Prefetch, t0: float) -> list[pd.DataFrame]:
        """The tables of prefetched ``cells``, once the background run has stored them."""
        for c in cells:
            pf.done[c.id].wait()
            if c.id not in pf.runs:
                raise RuntimeError(f"cell {c.id} ({dict(c.labels)}): the background run stopped before it") \
                    from pf.error
        runs = {c.id: pf.runs[c.id] for c in cells}
        ran = sum(r["this_run"] == "ran" for r in runs.values())
        where = self._executor()[1]
        self.last = RunReport(ran=ran, skipped=len(cells) - ran, total=len(cells),
                              executor=f"{where} (prefetched)" if ran else "none (every cell was done)",
                              wall_s=time.perf_counter() - t0, cells=runs)
        return [self.store.read(c) for c in cells]

    def join(self) -> None:
        """Wait for the prefetch (if any) to end; raise what failed in it."""
        pf, self._prefetch = self._prefetch, None
        if pf is None:
            return
        pf.thread.join()
        if pf.error is not None and not isinstance(pf.error, Cancelled):
            raise RuntimeError(f"the background run of {len(pf.done)} cells failed: {pf.error}") from pf.error

    def cancel(self) -> None:
        """Stop the prefetch (if any): the cells running finish and are stored, the queued ones
        are dropped. Safe to call at any time, e.g. in a ``finally``."""
        pf, self._prefetch = self._prefetch, None
        if pf is None:
            return
        pf.cancel.set()
        pf.thread.join()

    def _compute(self, todo: Sequence[Cell], execute, desc: str, on_result, runs: dict[str, dict[str, Any]], *,
                 initial: int = 0, total: int | None = None) -> dict[str, pd.DataFrame]:
        """Run ``todo``, storing each result as it arrives; the tables by cell id."""
        by_id = {c.id: c for c in todo}
        tables: dict[str, pd.DataFrame] = {}
        total = len(todo) if total is None else total
        bar = tqdm(total=total, initial=initial, unit="cell", desc=desc, disable=not self.progress or None)
        results = execute([c.task() for c in todo]) if todo else iter(())
        try:
            for cid, out, seconds, code in results:
                cell = by_id[cid]
                if code != cell.code:
                    raise RuntimeError(f"cell {cid}: a worker computed it with code {code}, the driver has "
                                       f"{cell.code}; run one version of drpo_sim everywhere")
                if self.store is not None:
                    self.store.write(cell, out.table, out.token_logs)
                elif out.token_logs:
                    raise ValueError(f"cell {cid} wrote token logs ({', '.join(out.token_logs)}): run it with a store")
                else:
                    tables[cid] = out.table
                runs[cid] = {"this_run": "ran", "wall_s": round(seconds, 3)}
                if on_result is not None:
                    on_result(cell, seconds)
                bar.update(1)
        finally:
            if hasattr(results, "close"):
                results.close()  # leaving early cancels the tasks still queued
            bar.close()
        missing = [c.id for c in todo if c.id not in runs]
        if missing:
            raise RuntimeError(f"{len(missing)} cell(s) never returned a result (first: {missing[0]})")
        return tables
