"""Sweeps: grids of simulation runs, on local processes or a Dask cluster, into a resumable store.

A sweep file is an experiment file (:func:`drpo_sim.sim.read_experiment`: ``methods``, ``seeds``,
``seed_start``, ``preset``, configuration fields at the top level or in ``[env]``,
``[offpolicy]``, ``[train]``, and ``[params.METHOD]`` tables) plus a ``[grid]`` table of lists::

    methods = ["grpo", "dppo_tv", "drpo"]
    seeds = 16                      # seeds 0..15 (with seed_start, from there); or a list [3, 7, 11]
    preset = "fp8"
    [train]
    steps = 200
    [grid]
    noise_std = [0.0, 0.1, 0.3]     # any configuration field
    staleness = [0, 4, 16]
    "drpo.delta" = [12.5, 2.5, 0.15]  # METHOD.NAME: an objective parameter, for that method's cells only

Cells
-----
The cells are the cartesian product of the configuration grid (first key slowest, values in the
order written), the methods (in the order written) and, for each method, the grid of its own
parameters: a ``"drpo.delta"`` list multiplies the ``drpo`` cells and no others. Grid values
override the ``preset``; a field or parameter set both in the grid and elsewhere in the file is
an error. A cell trains its method on every seed of the sweep in one vectorised
:func:`drpo_sim.sim.simulate` call, so its table is exactly what ``simulate`` gives for that
configuration, method and parameters, plus a leading ``cell`` column.

Cell identity
-------------
A cell's id is the first 16 hex digits of the SHA-256 of the canonical JSON (sorted keys, no
spaces) of what determines its numbers: the full flat configuration (every field, defaults
included), the method, its full objective parameters (defaults included) and the seeds. Values
are normalised first (an integer given for a float field or parameter becomes a float), so
``noise_std = 0`` and ``noise_std = 0.0`` are one cell, and so is a parameter written out at its
default value and one left out. The package version is *not* part of the id: ids stay comparable
across versions. Each cell file records the version that wrote it instead, and resuming a store
written by another version is an error (the simulator's numbers may have changed; mixing them
silently would corrupt the sweep): start a fresh ``--out`` directory.

Store (``OUT/``)
----------------
``cells/<id>.parquet``
    One result file per finished cell (:func:`drpo_sim.results.write_results`; metadata: the
    cell's id, configuration, method, parameters, seeds, grid coordinates, package version),
    written by the driver, atomically, as soon as the cell's result arrives.
``results.parquet``
    Every cell of the sweep in grid order, with a ``param_<name>`` column per objective parameter
    of any method (empty where a method has none), as :func:`drpo_sim.sim.simulate` lays them
    out. Written only once every cell is done; removed when a sweep (re)starts, so it exists only
    for a finished sweep.
``sweep.json``
    The grid, the cells (index, id, method, coordinates, parameters, file, status) and the last
    invocation's counts and wall times; ``complete`` says whether ``results.parquet`` is current.
``.lock``
    Held (``flock``) by the one driver writing into the directory.

Resuming
--------
Rerunning the same sweep into the same directory skips every cell whose file exists and is a
readable Parquet file written for that cell (its footer is checked; an unreadable one is run
again and counted). Because files appear only by atomic rename, a sweep killed at any moment,
even by ``kill -9``, leaves complete cell files and perhaps stray ``.*.tmp`` files, which the
next run deletes; it then runs the missing cells and ends with exactly the results of an
uninterrupted run, none lost or duplicated. Cells are stored by content, so a directory may be
shared by sweeps over overlapping grids: extending a grid runs only the new cells.

Execution
---------
Locally with joblib processes (``n_jobs``, default: the usable CPUs), or on a Dask cluster
(``scheduler="tcp://host:port"``, :class:`dask.distributed.Client`), whose workers need the same
``drpo_sim`` version installed (checked on every result). Either way the workers only compute;
the driver writes every file as results arrive, in whatever order cells finish. Runs are
deterministic per seed (:mod:`drpo_sim.sim`), so the results do not depend on where or in which
order the cells ran.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import hashlib
import itertools
import json
import os
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import pandas as pd

from drpo_sim import __version__, objectives
from drpo_sim._io import write_text
from drpo_sim.offpolicy import NOISE_PRESETS
from drpo_sim.results import read_results, write_results
from drpo_sim.sim import SimConfig, simulate, split_experiment

CELLS_DIR = "cells"
RESULTS_FILE = "results.parquet"
INDEX_FILE = "sweep.json"
LOCK_FILE = ".lock"
ID_DIGITS = 16
GRID_KEY = "grid"

_FIELD_DEFAULTS: dict[str, Any] = SimConfig().flat()

# (cell id, its table, seconds the worker spent, the worker's drpo_sim version)
CellOutput = tuple[str, pd.DataFrame, float, str]


# --------------------------------------------------------------------------------------------
# Specification
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Cell:
    """One grid cell: a configuration, a method with its full parameters, the sweep's seeds."""

    index: int
    id: str
    method: str
    config: SimConfig
    params: dict[str, Any]
    seeds: tuple[int, ...]
    coords: dict[str, Any]

    @property
    def file(self) -> str:
        """The cell's result file, relative to the sweep directory."""
        return f"{CELLS_DIR}/{self.id}.parquet"

    def spec(self) -> dict[str, Any]:
        """What determines the cell's numbers (hashed into its id)."""
        return {"config": self.config.flat(), "method": self.method, "params": self.params, "seeds": list(self.seeds)}

    def task(self) -> dict[str, Any]:
        """The picklable work item a worker runs (:func:`run_cell`)."""
        return {"cell": self.id, **self.spec()}

    def metadata(self) -> dict[str, Any]:
        """The cell file's metadata."""
        return {"cell": self.id, **self.spec(), "grid": self.coords}


def cell_id(spec: dict[str, Any]) -> str:
    """The first :data:`ID_DIGITS` hex digits of the SHA-256 of ``spec``'s canonical JSON."""
    text = json.dumps(spec, sort_keys=True, separators=(",", ":"), allow_nan=False)
    return hashlib.sha256(text.encode()).hexdigest()[:ID_DIGITS]


@dataclass(frozen=True)
class SweepSpec:
    """A validated sweep: everything but the grid fixed, the grid as ordered lists of values.

    ``base`` holds the flat configuration overrides shared by every cell (the file's fields with
    the preset applied), ``params`` the fixed objective parameters per method, ``grid`` the
    configuration grid as ``(field, values)`` pairs and ``param_grid`` the objective-parameter
    grid as ``(method, name, values)`` triples, each in file order. Build one with
    :func:`load_sweep` or :func:`parse_sweep`, which check everything, every cell included.
    """

    source: str
    methods: tuple[str, ...]
    seeds: tuple[int, ...]
    base: dict[str, Any]
    preset: str | None = None
    params: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)
    grid: tuple[tuple[str, tuple[Any, ...]], ...] = ()
    param_grid: tuple[tuple[str, str, tuple[Any, ...]], ...] = ()

    def cells(self) -> list[Cell]:
        """Every cell, in grid order (configuration grid, then method, then its parameter grid)."""
        return list(self._cells)

    @cached_property
    def _cells(self) -> tuple[Cell, ...]:
        fields = [f for f, _ in self.grid]
        cells: list[Cell] = []
        for combo in itertools.product(*(values for _, values in self.grid)):
            coords = dict(zip(fields, combo))
            cfg = self._config(coords)
            for method in self.methods:
                for pcoords, params in self._method_params(method, coords):
                    full = _objective_params(method, params, f"{self.source}: {_where({**coords, **pcoords})}")
                    cell = Cell(len(cells), "", method, cfg, full, self.seeds, {**coords, **pcoords})
                    try:
                        cells.append(dataclasses.replace(cell, id=cell_id(cell.spec())))
                    except ValueError:
                        raise ValueError(
                            f"{self.source}: {_where(cell.coords)}: values must be finite numbers"
                        ) from None
        ids = [c.id for c in cells]
        if len(set(ids)) != len(ids):
            raise ValueError(f"{self.source}: two cells have the same configuration; remove the duplicate grid values")
        return tuple(cells)

    def _config(self, coords: dict[str, Any]) -> SimConfig:
        try:
            return SimConfig.from_flat({**self.base, **coords})
        except (ValueError, TypeError) as err:
            raise ValueError(f"{self.source}: {_where(coords)}: {err}") from None

    def _method_params(self, method: str, coords: dict[str, Any]) -> Iterator[tuple[dict[str, Any], dict[str, Any]]]:
        """``(grid coordinates, parameters)`` for each point of ``method``'s parameter grid."""
        axes = [(name, values) for m, name, values in self.param_grid if m == method]
        for combo in itertools.product(*(values for _, values in axes)):
            grid_params = {name: v for (name, _), v in zip(axes, combo)}
            yield {f"{method}.{k}": v for k, v in grid_params.items()}, {**self.params.get(method, {}), **grid_params}

    def describe(self) -> dict[str, Any]:
        """The sweep as JSON-ready data (everything but ``source``)."""
        grid = {f: list(v) for f, v in self.grid}
        grid.update({f"{m}.{n}": list(v) for m, n, v in self.param_grid})
        return {
            "methods": list(self.methods),
            "seeds": list(self.seeds),
            "preset": self.preset,
            "base": self.base,
            "params": self.params,
            "grid": grid,
        }


def _where(coords: dict[str, Any]) -> str:
    if not coords:
        return "configuration"
    return "cell " + ", ".join(f"{k}={v!r}" for k, v in coords.items())


def load_sweep(path: str | os.PathLike) -> SweepSpec:
    """Read and validate a sweep file (module docstring); every cell is built and checked."""
    import tomllib

    path = str(path)
    try:
        with open(path, "rb") as fh:
            doc = tomllib.load(fh)
    except tomllib.TOMLDecodeError as err:
        raise ValueError(f"{path}: not valid TOML ({err})") from None
    return parse_sweep(doc, source=path)


def parse_sweep(doc: dict[str, Any], source: str = "<sweep>") -> SweepSpec:
    """A :class:`SweepSpec` from a parsed sweep file; errors name ``source`` and the key."""
    doc = dict(doc)
    grid_doc = doc.pop(GRID_KEY, {})
    if not isinstance(grid_doc, dict):
        raise ValueError(f"{source}: [{GRID_KEY}] must be a table of lists")
    run, config = split_experiment(doc, source, also=(GRID_KEY,))
    methods = _methods(run.get("methods"), source)
    seeds = _seeds(run.get("seeds", 8), run.get("seed_start"), source)
    preset = run.get("preset")
    base = {k: _coerce_field(k, v, f"{source}: {k}") for k, v in config.items()}
    if preset is not None:
        if preset not in NOISE_PRESETS:
            raise ValueError(f"{source}: preset {preset!r}: valid presets are {', '.join(NOISE_PRESETS)}")
        base.update(NOISE_PRESETS[preset])
    params = _fixed_params(run.get("params", {}), methods, source)
    grid, param_grid = _grid(grid_doc, methods, source)
    for field, _ in grid:
        if field in config:
            raise ValueError(f"{source}: [{GRID_KEY}] {field}: also set outside the grid; keep one")
    for method, name, _ in param_grid:
        if name in params.get(method, {}):
            raise ValueError(f"{source}: [{GRID_KEY}] {method}.{name}: also set in [params.{method}]; keep one")
    spec = SweepSpec(source, methods, seeds, base, preset, params, grid, param_grid)
    spec.cells()  # build and check every cell before anything runs
    return spec


def _methods(value: Any, source: str) -> tuple[str, ...]:
    if value is None:
        raise ValueError(f"{source}: methods: missing; list the objectives to sweep, e.g. methods = ['grpo', 'drpo']")
    if isinstance(value, str):
        value = [m.strip() for m in value.split(",") if m.strip()]
    if not isinstance(value, list) or not value or not all(isinstance(m, str) for m in value):
        raise ValueError(f"{source}: methods: expected a non-empty list of objective names, got {value!r}")
    unknown = [m for m in value if m not in objectives.available()]
    if unknown:
        raise ValueError(f"{source}: methods: unknown {', '.join(unknown)}; valid: {', '.join(objectives.available())}")
    if len(set(value)) != len(value):
        raise ValueError(f"{source}: methods: {value} lists a method twice")
    return tuple(value)


def _seeds(value: Any, start: Any, source: str) -> tuple[int, ...]:
    def is_int(x: Any) -> bool:
        return isinstance(x, int) and not isinstance(x, bool)

    if start is not None and not (is_int(start) and start >= 0):
        raise ValueError(f"{source}: seed_start: expected an integer >= 0, got {start!r}")
    if is_int(value):
        if value < 1:
            raise ValueError(f"{source}: seeds: expected a number of seeds >= 1 or a list, got {value!r}")
        return tuple(range(start or 0, (start or 0) + value))
    if start is not None:
        raise ValueError(f"{source}: seed_start: only with a number of seeds, not a list")
    if not isinstance(value, list) or not value or not all(is_int(s) and s >= 0 for s in value):
        raise ValueError(
            f"{source}: seeds: expected a number of seeds or a non-empty list of integers >= 0, got {value!r}"
        )
    if len(set(value)) != len(value):
        raise ValueError(f"{source}: seeds: {value} lists a seed twice")
    return tuple(value)


def _coerce_field(name: str, value: Any, where: str) -> Any:
    """``value`` as the configuration field ``name``'s type (an int for a float field -> float)."""
    default = _FIELD_DEFAULTS[name]
    ok = (
        isinstance(value, bool)
        if isinstance(default, bool)
        else isinstance(value, int) and not isinstance(value, bool)
        if isinstance(default, int)
        else isinstance(value, (int, float)) and not isinstance(value, bool)
        if isinstance(default, float)
        else isinstance(value, type(default))
    )
    if not ok:
        raise ValueError(f"{where}: expected {type(default).__name__}, got {value!r}")
    return float(value) if isinstance(default, float) else value


def _coerce_param(method: str, name: str, value: Any, where: str) -> Any:
    """An objective parameter as its field's type (an int for a float parameter -> float)."""
    fields = {f.name: str(f.type) for f in dataclasses.fields(type(objectives.get(method)))}
    if name not in fields:
        valid = ", ".join(fields) or "none"
        raise ValueError(f"{where}: objective {method!r} has no parameter {name!r}; valid parameters: {valid}")
    if isinstance(value, int) and not isinstance(value, bool) and "float" in fields[name]:
        return float(value)
    if isinstance(value, (dict, list)):
        raise ValueError(f"{where}: expected a number, got {value!r}")
    return value


def _objective_params(method: str, params: dict[str, Any], where: str) -> dict[str, Any]:
    """``method``'s full parameters (defaults included) for ``params``; errors prefixed by ``where``."""
    try:
        return dict(objectives.get(method, **params).params)
    except (ValueError, TypeError) as err:
        raise ValueError(f"{where}: {err}") from None


def _fixed_params(value: Any, methods: tuple[str, ...], source: str) -> dict[str, dict[str, Any]]:
    if not isinstance(value, dict) or not all(isinstance(v, dict) for v in value.values()):
        raise ValueError(f"{source}: [params] must hold one table per method, e.g. [params.drpo]")
    out = {}
    for method, table in value.items():
        where = f"{source}: [params.{method}]"
        if method not in methods:
            raise ValueError(f"{where}: {method!r} is not among the methods {', '.join(methods)}")
        out[method] = {k: _coerce_param(method, k, v, f"{where} {k}") for k, v in table.items()}
        _objective_params(method, out[method], where)
    return out


def _grid(
    doc: dict[str, Any], methods: tuple[str, ...], source: str
) -> tuple[tuple[tuple[str, tuple[Any, ...]], ...], tuple[tuple[str, str, tuple[Any, ...]], ...]]:
    """The configuration grid and the objective-parameter grid of a ``[grid]`` table.

    Parameter keys are ``"METHOD.NAME"``; an unquoted ``METHOD.NAME`` (a TOML dotted key, read
    as a ``METHOD`` sub-table) and a ``[grid.METHOD]`` table mean the same.
    """
    flat: list[tuple[str, Any]] = []
    for key, values in doc.items():
        if isinstance(values, dict) and key in objectives.available():
            flat.extend((f"{key}.{name}", v) for name, v in values.items())
        else:
            flat.append((key, values))
    grid, param_grid = [], []
    for key, values in flat:
        where = f"{source}: [{GRID_KEY}] {key}"
        if not isinstance(values, list):
            raise ValueError(f"{where}: expected a list of values, got {values!r}")
        if not values:
            raise ValueError(f"{where}: empty list; give at least one value")
        method, dot, name = key.partition(".")
        if dot:
            if method not in objectives.available():
                raise ValueError(f"{where}: unknown objective {method!r}; valid: {', '.join(objectives.available())}")
            if method not in methods:
                raise ValueError(f"{where}: {method!r} is not among the methods {', '.join(methods)}")
            vals = tuple(_coerce_param(method, name, v, where) for v in values)
            for v in vals:
                _objective_params(method, {name: v}, where)
            param_grid.append((method, name, _distinct(vals, where)))
        else:
            if key not in _FIELD_DEFAULTS:
                hint = " (seeds are not a grid axis: every cell runs every seed)" if key in ("seeds", "seed") else ""
                valid = ", ".join(sorted(_FIELD_DEFAULTS))
                raise ValueError(f"{where}: unknown configuration field{hint}; valid: {valid} or METHOD.PARAMETER")
            vals = tuple(_coerce_field(key, v, where) for v in values)
            grid.append((key, _distinct(vals, where)))
    return tuple(grid), tuple(param_grid)


def _distinct(values: tuple[Any, ...], where: str) -> tuple[Any, ...]:
    seen = [json.dumps(v) for v in values]
    if len(set(seen)) != len(seen):
        raise ValueError(f"{where}: {list(values)} lists a value twice")
    return values


# --------------------------------------------------------------------------------------------
# Workers
# --------------------------------------------------------------------------------------------


def run_cell(task: dict[str, Any]) -> CellOutput:
    """Run one cell (a :meth:`Cell.task`) in this process: ``(id, table, seconds, version)``."""
    t0 = time.perf_counter()
    cfg = SimConfig.from_flat(task["config"])
    method = task["method"]
    df = simulate(cfg, [method], task["seeds"], method_params={method: task["params"]})
    df.insert(0, "cell", task["cell"])
    return task["cell"], df, time.perf_counter() - t0, __version__


def _local(tasks: list[dict[str, Any]], n_jobs: int) -> Iterator[CellOutput]:
    """Cells on ``n_jobs`` joblib processes (at most one per cell), yielded as each finishes."""
    from joblib import Parallel, delayed

    parallel = Parallel(n_jobs=min(n_jobs, len(tasks)), return_as="generator_unordered")
    yield from parallel(delayed(run_cell)(t) for t in tasks)


def _dask(tasks: list[dict[str, Any]], address: str) -> Iterator[CellOutput]:
    """Cells on the Dask cluster at ``address``, yielded as each finishes.

    Each result is released on the cluster once yielded; leaving the generator early (an error
    in the driver) closes the client, which cancels the cells still queued.
    """
    from dask.distributed import Client, as_completed

    with Client(address, set_as_default=False) as client:
        keys = [f"drpo-sim-cell-{t['cell']}" for t in tasks]
        pending = as_completed(client.map(run_cell, tasks, key=keys), loop=client.loop)
        for future in pending:
            out = future.result()
            future.release()
            yield out


# --------------------------------------------------------------------------------------------
# The store and the driver
# --------------------------------------------------------------------------------------------


@contextlib.contextmanager
def _locked(out: Path) -> Iterator[None]:
    """Hold ``OUT/.lock`` for the block; another driver on the same directory is an error."""
    out.mkdir(parents=True, exist_ok=True)
    fd = os.open(out / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise OSError(f"{out}: another sweep is writing into this directory (it holds {out / LOCK_FILE})") from None
        yield
    finally:
        os.close(fd)  # closing releases the lock, as does the process's death


def _remove_stale(out: Path) -> int:
    """Delete the temporary files of interrupted atomic writes, and the results of a previous run."""
    stale = [*out.glob(".*.tmp"), *(out / CELLS_DIR).glob(".*.tmp")]
    for p in stale:
        p.unlink()
    (out / RESULTS_FILE).unlink(missing_ok=True)
    return len(stale)


def _cell_done(out: Path, cell: Cell) -> bool:
    """Whether ``cell``'s file exists and is a readable result file for this cell and version.

    An unreadable file (which atomic writes cannot leave, but a damaged disk can) counts as
    not done; a readable file of another cell or another package version is an error.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = out / cell.file
    if not path.is_file():
        return False
    try:
        raw = (pq.read_schema(path).metadata or {}).get(b"drpo_sim")
        meta = json.loads(raw) if raw else {}
    except (pa.ArrowInvalid, OSError, ValueError):
        return False
    if meta.get("cell") != cell.id:
        raise ValueError(f"{path}: holds cell {meta.get('cell')!r}, not {cell.id!r}; remove the file")
    if meta.get("version") != __version__:
        raise ValueError(
            f"{path}: written by drpo_sim {meta.get('version')}, this is {__version__}; "
            "sweep into a fresh directory (results of two versions must not mix)"
        )
    return True


def _check_output(cell: Cell, df: pd.DataFrame, version: str) -> None:
    """A worker's table has one row per seed and step, from the same package version."""
    if version != __version__:
        raise RuntimeError(
            f"cell {cell.id}: a worker runs drpo_sim {version}, the driver {__version__}; install one version"
        )
    expected = len(cell.seeds) * cell.config.train.steps
    keys = df[["seed", "step"]].drop_duplicates()
    if len(df) != expected or len(keys) != expected or not (df["cell"] == cell.id).all():
        raise RuntimeError(
            f"cell {cell.id}: the worker returned {len(df)} rows, expected {expected} distinct (seed, step)"
        )


def _collect(out: Path, cells: Sequence[Cell]) -> pd.DataFrame:
    """Every cell's table in grid order, with the ``param_<name>`` columns of :func:`simulate`."""
    frames = []
    for cell in cells:
        df, meta = read_results(out / cell.file)
        if meta.get("cell") != cell.id:
            raise ValueError(f"{out / cell.file}: holds cell {meta.get('cell')!r}, not {cell.id!r}")
        frames.append(df.drop(columns=[c for c in df.columns if c.startswith("param_")]))
    df = pd.concat(frames, ignore_index=True)
    names = sorted({k for c in cells for k in c.params})
    for k in names:
        df[f"param_{k}"] = [json.loads(p).get(k) for p in df["method_params"]]
    return df


def _index(
    spec: SweepSpec, cells: Sequence[Cell], done: set[str], runs: dict[str, dict[str, Any]], **extra: Any
) -> dict[str, Any]:
    """The content of ``sweep.json``."""
    return {
        "version": __version__,
        "source": spec.source,
        **spec.describe(),
        "cells": [
            {
                "index": c.index,
                "cell": c.id,
                "method": c.method,
                "grid": c.coords,
                "params": c.params,
                "file": c.file,
                "status": "done" if c.id in done else "pending",
                **runs.get(c.id, {}),
            }
            for c in cells
        ],
        **extra,
    }


def _write_index(out: Path, content: dict[str, Any]) -> None:
    write_text(json.dumps(content, indent=1, allow_nan=False) + "\n", out / INDEX_FILE)


def _check_address(address: Any) -> None:
    """A TCP/TLS scheduler address must have a host and a port (checked before connecting: a
    ``Client`` given a malformed one fails, then hangs for a minute while it is collected)."""
    from distributed.comm import get_address_host_port, parse_address

    if not isinstance(address, str) or not address.strip():
        raise ValueError(f"scheduler: expected a Dask scheduler address such as tcp://host:8786, got {address!r}")
    scheme, _ = parse_address(address)
    if scheme in ("tcp", "tls"):
        try:
            get_address_host_port(address)
        except ValueError as err:
            raise ValueError(f"scheduler {address!r}: {err}; expected e.g. tcp://host:8786") from None


def _executor(
    n_jobs: int | None, scheduler: str | None
) -> tuple[Callable[[list[dict[str, Any]]], Iterator[CellOutput]], str]:
    """The function that runs a list of tasks, yielding results as they finish, and its description."""
    if scheduler is not None:
        if n_jobs is not None:
            raise ValueError("n_jobs and scheduler exclude each other: a Dask cluster has its own workers")
        _check_address(scheduler)
        return (lambda tasks: _dask(tasks, scheduler)), f"dask {scheduler}"
    if n_jobs is None:
        from joblib import cpu_count

        n_jobs = cpu_count()
    if not (isinstance(n_jobs, int) and not isinstance(n_jobs, bool) and n_jobs >= 1):
        raise ValueError(f"n_jobs must be a number of processes >= 1, got {n_jobs!r}")
    return (lambda tasks: _local(tasks, n_jobs)), f"local, {n_jobs} process{'es' if n_jobs > 1 else ''}"


def run_sweep(
    spec: SweepSpec,
    out: str | os.PathLike,
    *,
    n_jobs: int | None = None,
    scheduler: str | None = None,
    progress: bool = True,
) -> pd.DataFrame:
    """Run every cell of ``spec`` not yet in ``out``; write ``results.parquet``; return its table.

    ``n_jobs`` local joblib processes (default: the usable CPUs), or the Dask cluster at
    ``scheduler``. Cells already stored are skipped (module docstring: Resuming); each new cell is
    written as soon as it finishes. The progress bar counts cells (done, left, time left) and
    starts from the cells already done. ``sweep.json`` records what this call ran and skipped.
    """
    from tqdm.auto import tqdm

    out = Path(out)
    cells = spec.cells()
    t0 = time.perf_counter()
    execute, where = _executor(n_jobs, scheduler)
    with _locked(out):
        stale = _remove_stale(out)
        done = {c.id for c in cells if _cell_done(out, c)}
        replaced = sum(1 for c in cells if c.id not in done and (out / c.file).exists())
        todo = [c for c in cells if c.id not in done]
        by_id = {c.id: c for c in todo}
        runs: dict[str, dict[str, Any]] = {c.id: {"this_run": "skipped"} for c in cells if c.id in done}
        _write_index(out, _index(spec, cells, done, runs, complete=False))
        results = execute([c.task() for c in todo]) if todo else iter(())
        bar = tqdm(total=len(cells), initial=len(done), unit="cell", desc="sweep", disable=not progress)
        bar.set_postfix_str(f"left {len(cells) - len(done)}")
        try:
            for cid, df, seconds, version in results:
                cell = by_id[cid]
                _check_output(cell, df, version)
                write_results(df, out / cell.file, cell.metadata())
                done.add(cid)
                runs[cid] = {"this_run": "ran", "wall_s": round(seconds, 3)}
                bar.set_postfix_str(f"left {len(cells) - len(done)}", refresh=False)
                bar.update(1)
        finally:
            bar.close()
        missing = [c.id for c in todo if c.id not in done]
        if missing:
            raise RuntimeError(f"{out}: {len(missing)} cell(s) never returned a result (first: {missing[0]})")
        df = _collect(out, cells)
        write_results(df, out / RESULTS_FILE, {"sweep": spec.describe(), "cells": [c.id for c in cells]})
        last_run = {
            "ran": len(todo),
            "skipped": len(cells) - len(todo),
            "rerun_unreadable": replaced,
            "stale_tmp_removed": stale,
            "total": len(cells),
            "rows": len(df),
            "executor": where if todo else "none (every cell was done)",
            "wall_s": round(time.perf_counter() - t0, 3),
        }
        _write_index(out, _index(spec, cells, done, runs, complete=True, results=RESULTS_FILE, last_run=last_run))
    return df


def read_index(out: str | os.PathLike) -> dict[str, Any]:
    """The ``sweep.json`` of a sweep directory (cells, their status, the last run's counts)."""
    path = Path(out) / INDEX_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no sweep index; is {out} a sweep directory?")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not valid JSON ({err})") from None


def read_sweep(out: str | os.PathLike) -> tuple[pd.DataFrame, dict[str, Any]]:
    """The results table and the index of a finished sweep; an unfinished one is an error."""
    index = read_index(out)
    if not index.get("complete"):
        done = sum(c["status"] == "done" for c in index["cells"])
        n = len(index["cells"])
        raise ValueError(f"{out}: the sweep is unfinished ({done} of {n} cells done); rerun it to finish")
    df, _ = read_results(Path(out) / RESULTS_FILE)
    return df, index
