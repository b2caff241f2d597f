"""Cells: the unit of work of every experiment, and what determines their numbers.

A cell is one call of a world's run function: a simulation of one objective on a set of seeds
(kind ``sim``: :func:`drpo_sim.sim.run_cell`), one RL run of the tiny transformer lab (kind
``lab``: :func:`drpo_sim.lm.rl.run_cell`), or one batch of arena runs, contestants x seeds in one
engine setting (kind ``arena``: :func:`drpo_sim.arena.train.run_cell`). Sweeps, the paper's panels,
the lab's comparison and the arena's settings are lists of cells;
:class:`~drpo_sim.run.executor.Runner` runs them, locally or on Dask, into a
:class:`~drpo_sim.run.store.CellStore`.

**A cell's id** is the first 16 hex digits of the SHA-256 of the canonical JSON (sorted keys, no
spaces) of ``{"kind", "spec", "code"}``:

- ``spec``: what the run function is given that changes its numbers (the full configuration,
  defaults included; the objective and its full parameters; the seeds), normalised so that
  ``noise_std = 0`` and ``0.0`` are one cell;
- ``code``: :func:`drpo_sim.provenance.code_digest` of the run function's module, which covers
  the source of every package module it imports and nothing else.

Editing a docstring, a figure or the report leaves every id as it was; editing the simulator
gives its cells new ids, so stale numbers are never reused.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import pandas as pd

from drpo_sim import objectives, sim
from drpo_sim.arena import train as arena
from drpo_sim.lm import rl
from drpo_sim.provenance import code_digest

ID_DIGITS = 16


@dataclass
class Output:
    """What a cell's run returns: its tidy table and, by name, token logs to keep beside it
    (a list of :class:`~drpo_sim.tokens.TokenBatch` and the log's metadata)."""

    table: pd.DataFrame
    token_logs: dict[str, tuple[list, dict[str, Any]]] = field(default_factory=dict)


@dataclass(frozen=True)
class Kind:
    """A kind of cell: the function that computes one, ``compute(spec, inputs) -> Output``, and
    the module whose code (with everything it imports) determines its numbers."""

    name: str
    compute: Callable[[Mapping[str, Any], Any], Output]
    module: str

    @property
    def code(self) -> str:
        return code_digest(self.module)


def _simulate(spec: Mapping[str, Any], inputs: Any) -> Output:
    return Output(sim.run_cell(spec))


def _train_lab(spec: Mapping[str, Any], inputs: Any) -> Output:
    table, batches, meta = rl.run_cell(spec, inputs)
    return Output(table, {"tokens": (batches, meta)} if batches is not None else {})


def _train_arena(spec: Mapping[str, Any], inputs: Any) -> Output:
    return Output(arena.run_cell(spec))


KINDS: dict[str, Kind] = {
    "sim": Kind("sim", _simulate, sim.__name__),
    "lab": Kind("lab", _train_lab, rl.__name__),
    "arena": Kind("arena", _train_arena, arena.__name__),
}


def cell_id(content: Mapping[str, Any]) -> str:
    """The first :data:`ID_DIGITS` hex digits of the SHA-256 of ``content``'s canonical JSON."""
    text = json.dumps(content, sort_keys=True, separators=(",", ":"), allow_nan=False)
    return hashlib.sha256(text.encode()).hexdigest()[:ID_DIGITS]


@dataclass(frozen=True)
class Cell:
    """One unit of work: its ``kind``, the ``spec`` that determines its numbers (hashed into its
    id), ``labels`` that place it in an experiment (grid coordinates, setting and variant; not
    hashed) and ``inputs`` the run needs but that are identified by the spec (the lab's
    pretrained checkpoint; not hashed)."""

    kind: str
    spec: Mapping[str, Any]
    labels: Mapping[str, Any] = field(default_factory=dict)
    inputs: Any = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown cell kind {self.kind!r}; valid: {', '.join(KINDS)}")

    @cached_property
    def code(self) -> str:
        return KINDS[self.kind].code

    @cached_property
    def id(self) -> str:
        try:
            return cell_id({"kind": self.kind, "spec": self.spec, "code": self.code})
        except ValueError:
            raise ValueError(f"cell {dict(self.labels)}: values must be finite numbers") from None

    def task(self) -> dict[str, Any]:
        """The picklable work item a worker runs (:func:`drpo_sim.run.executor.compute`)."""
        return {"id": self.id, "kind": self.kind, "spec": dict(self.spec), "inputs": self.inputs}

    def metadata(self) -> dict[str, Any]:
        """What the cell's file records about it."""
        return {"cell": self.id, "kind": self.kind, "spec": dict(self.spec), "labels": dict(self.labels),
                "code": self.code}

    def relabel(self, **labels: Any) -> Cell:
        return dataclasses.replace(self, labels={**self.labels, **labels})


#: The configuration fields of type float (an integer given for one is the same number).
_FLOAT_FIELDS = frozenset(k for k, v in sim.SimConfig().flat().items() if isinstance(v, float))


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _float_params(method: str) -> frozenset[str]:
    """The parameters of type float of the objective ``method`` (none if it is not registered)."""
    if method not in objectives.available():
        return frozenset()
    return frozenset(f.name for f in dataclasses.fields(type(objectives.get(method))) if "float" in str(f.type))


def sim_cell(config: Mapping[str, Any], method: str, params: Mapping[str, Any], seeds: list[int] | tuple[int, ...],
             **labels: Any) -> Cell:
    """A ``sim`` cell: ``method`` with its full objective ``params`` on ``seeds``, in the
    configuration of the full flat ``config`` (:meth:`drpo_sim.sim.SimConfig.flat`). An integer
    given for a float field or parameter becomes a float, so ``noise_std = 0`` and ``0.0`` are one
    cell (module docstring)."""
    floats = _float_params(method)
    spec = {"config": {k: float(v) if k in _FLOAT_FIELDS and _is_int(v) else v for k, v in config.items()},
            "method": method,
            "params": {k: float(v) if k in floats and _is_int(v) else v for k, v in params.items()},
            "seeds": [int(s) for s in seeds]}
    return Cell("sim", spec, labels)


def arena_cell(config: arena.ArenaConfig, contestants: list[arena.Contestant] | tuple[arena.Contestant, ...],
               seeds: list[int] | tuple[int, ...], **labels: Any) -> Cell:
    """An ``arena`` cell: every contestant on every seed, in ``config``'s engine setting
    (:func:`drpo_sim.arena.train.cell_spec`)."""
    return Cell("arena", arena.cell_spec(config, contestants, seeds), labels)
