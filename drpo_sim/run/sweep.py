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
Each cell is a ``sim`` cell of :mod:`drpo_sim.run.cells`: its id hashes the full flat
configuration (every field, defaults included), the method, its full objective parameters
(defaults included), the seeds and the code digest of the simulator
(:func:`drpo_sim.provenance.code_digest`). Values are normalised first (an integer given for a
float field or parameter becomes a float), so ``noise_std = 0`` and ``noise_std = 0.0`` are one
cell, and so is a parameter written out at its default value and one left out. A store written
by other simulator code holds other ids: its cells are never reused, and they are never mixed
with the new ones.

Store (``OUT/``)
----------------
``cells/``
    A :class:`~drpo_sim.run.store.CellStore`: one result file per finished cell, written by the
    driver, atomically, as soon as the cell's result arrives (metadata: the cell's id,
    configuration, method, parameters, seeds, grid coordinates, code digest, package version).
``results.parquet``
    Every cell of the sweep in grid order, with a leading ``cell`` column and a
    ``param_<name>`` column per objective parameter of any method (empty where a method has
    none), as :func:`drpo_sim.sim.simulate` lays them out. Written only once every cell is done;
    removed when a sweep (re)starts, so it exists only for a finished sweep.
``sweep.json``
    The grid, the cells (index, id, method, coordinates, parameters, file, status) and the last
    invocation's counts and wall times; ``complete`` says whether ``results.parquet`` is current.
``cells/.lock``
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
By :class:`drpo_sim.run.executor.Runner`: locally with joblib processes (``n_jobs``, default:
the usable CPUs), or on a Dask cluster (``scheduler="tcp://host:port"``) whose workers run the
same drpo_sim code (checked on every result). Either way the workers only compute; the driver
writes every file as results arrive, in whatever order cells finish. Runs are deterministic per
seed (:mod:`drpo_sim.sim`), so the results do not depend on where or in which order the cells ran.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import os
import tomllib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import pandas as pd

from drpo_sim import __version__, objectives
from drpo_sim._io import write_text
from drpo_sim.config import resolve
from drpo_sim.results import read_results, write_results
from drpo_sim.run.cells import Cell, sim_cell
from drpo_sim.run.executor import Runner
from drpo_sim.run.store import CellStore
from drpo_sim.sim import SimConfig, split_experiment, with_param_columns

CELLS_DIR = "cells"
RESULTS_FILE = "results.parquet"
INDEX_FILE = "sweep.json"
GRID_KEY = "grid"

_FIELD_DEFAULTS: dict[str, Any] = SimConfig().flat()


# --------------------------------------------------------------------------------------------
# Specification
# --------------------------------------------------------------------------------------------


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
        """Every cell, in grid order (configuration grid, then method, then its parameter grid);
        each cell's ``labels`` are its grid coordinates."""
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
                    where = f"{self.source}: {_where({**coords, **pcoords})}"
                    full = _objective_params(method, params, where)
                    cell = sim_cell(cfg.flat(), method, full, self.seeds, **coords, **pcoords)
                    try:
                        cell.id
                    except ValueError:
                        raise ValueError(f"{where}: values must be finite numbers") from None
                    cells.append(cell)
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
    base = resolve({k: _coerce_field(k, v, f"{source}: {k}") for k, v in config.items()}, preset,
                   where=f"{source}: preset")
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
# The driver
# --------------------------------------------------------------------------------------------


def _check_output(cell: Cell, df: pd.DataFrame) -> None:
    """A cell's table has one row per seed and step."""
    expected = len(cell.spec["seeds"]) * cell.spec["config"]["steps"]
    keys = df[["seed", "step"]].drop_duplicates()
    if len(df) != expected or len(keys) != expected:
        raise RuntimeError(f"cell {cell.id}: {len(df)} rows, expected {expected} distinct (seed, step)")


def table(cells: Sequence[Cell], tables: Sequence[pd.DataFrame]) -> pd.DataFrame:
    """The cells' tables in grid order as one, with a leading ``cell`` column and the
    ``param_<name>`` columns of :func:`drpo_sim.sim.simulate` (one per parameter of any method)."""
    for cell, df in zip(cells, tables):
        _check_output(cell, df)
    return with_param_columns(pd.concat([df.assign(cell=c.id)[["cell", *df.columns]] for c, df in zip(cells, tables)],
                                        ignore_index=True))


def _index(spec: SweepSpec, cells: Sequence[Cell], done: set[str], runs: dict[str, dict[str, Any]],
           **extra: Any) -> dict[str, Any]:
    """The content of ``sweep.json``."""
    return {
        "version": __version__,
        "source": spec.source,
        **spec.describe(),
        "cells": [
            {
                "index": i,
                "cell": c.id,
                "method": c.spec["method"],
                "grid": dict(c.labels),
                "params": c.spec["params"],
                "file": f"{CELLS_DIR}/{c.id}.parquet",
                "status": "done" if c.id in done else "pending",
                **runs.get(c.id, {}),
            }
            for i, c in enumerate(cells)
        ],
        **extra,
    }


def _write_index(out: Path, content: dict[str, Any]) -> None:
    write_text(json.dumps(content, indent=1, allow_nan=False) + "\n", out / INDEX_FILE)


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
    written as soon as it finishes. The progress bar counts cells and starts from the cells
    already done. ``sweep.json`` records what this call ran and skipped.
    """
    out = Path(out)
    cells = spec.cells()
    store = CellStore(out / CELLS_DIR)
    runner = Runner(store=store, n_jobs=n_jobs, scheduler=scheduler, progress=progress)
    out.mkdir(parents=True, exist_ok=True)
    (out / RESULTS_FILE).unlink(missing_ok=True)
    _write_index(out, _index(spec, cells, {c.id for c in cells if store.path(c).is_file()}, {}, complete=False))
    tables = runner.run(cells, desc="sweep")
    report = runner.last
    df = table(cells, tables)
    write_results(df, out / RESULTS_FILE, {"sweep": spec.describe(), "cells": [c.id for c in cells]})
    last_run = {
        "ran": report.ran,
        "skipped": report.skipped,
        "rerun_unreadable": report.rerun_unreadable,
        "stale_tmp_removed": report.stale_tmp_removed,
        "total": report.total,
        "rows": len(df),
        "executor": report.executor,
        "wall_s": round(report.wall_s, 3),
    }
    _write_index(out, _index(spec, cells, {c.id for c in cells}, report.cells, complete=True, results=RESULTS_FILE,
                             last_run=last_run))
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
