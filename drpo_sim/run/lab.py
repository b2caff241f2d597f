"""The tiny transformer lab's comparison: objectives x engine precisions x seeds, as cells.

:func:`compare` pretrains (or loads from the cache) one model, fine-tunes it with every
combination of objective, engine precision and seed (a ``lab`` cell each,
:func:`drpo_sim.lm.rl.run_cell`, run by the :class:`~drpo_sim.run.executor.Runner`), and writes
to ``out``:

* ``lm_compare.parquet``: the tidy result table (``method, precision, seed, step`` and the
  metrics of :data:`drpo_sim.lm.rl.METRICS`), the configuration in its metadata;
* ``lm_tokens/<objective>_<precision>_seed<k>.parquet``: the token logs of the first seed of
  the objectives in ``token_log_objectives``, one :class:`~drpo_sim.tokens.TokenBatch` per
  optimiser update, for ``drpo-sim replay``;
* ``lm_cache/pretrain-<hash>.pt``: the pretrained checkpoint, reused by later calls.

:func:`plan` gives the same cells without running them. :func:`compare` returns the table and
leaves summaries (:func:`drpo_sim.summaries.lab_summary`) and figures
(:func:`drpo_sim.paper.jobs.lab_figures`) to its callers.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from drpo_sim._io import atomic_path
from drpo_sim.config import parse_names
from drpo_sim.lm.precision import PRECISIONS
from drpo_sim.lm.pretrain import Checkpoint, PretrainConfig, pretrain
from drpo_sim.lm.rl import LabConfig
from drpo_sim.results import write_results
from drpo_sim.run.cells import Cell
from drpo_sim.run.executor import Runner
from drpo_sim.run.store import CellStore

RESULTS_FILE = "lm_compare.parquet"
TOKENS_DIR = "lm_tokens"
CACHE_DIR = "lm_cache"


@dataclasses.dataclass
class Comparison:
    """What :func:`compare` ran: the table, its configuration (for the manifest), the seeds, the
    token logs written (paths relative to ``out``) and the pretrained checkpoint."""

    table: pd.DataFrame
    config: dict[str, Any]
    seeds: list[int]
    token_logs: list[str]
    checkpoint: Checkpoint


def token_log_name(objective: str, precision: str, seed: int) -> str:
    """The file name of a lab run's token log in ``lm_tokens/``."""
    return f"{objective}_{precision}_seed{seed}.parquet"


@dataclasses.dataclass
class Plan:
    """What :func:`compare` will run: the validated names and seeds, one configuration and one
    ``lab`` cell per (objective, precision, seed), and the pretrained checkpoint they start from."""

    objectives: list[str]
    precisions: list[str]
    seeds: list[int]
    configs: list[LabConfig]
    pretrain_config: PretrainConfig
    checkpoint: Checkpoint
    cells: list[Cell]


def plan(
    objectives: Sequence[str] | str,
    precisions: Sequence[str] | str,
    seeds: int | Iterable[int],
    steps: int,
    out: str | os.PathLike,
    *,
    params: Mapping[str, Mapping[str, Any]] | None = None,
    lab: Mapping[str, Any] | None = None,
    token_log_objectives: Sequence[str] | None = None,
    pretrain_config: PretrainConfig | None = None,
    cache_dir: str | os.PathLike | None = None,
    progress: bool = False,
) -> Plan:
    """The cells of :func:`compare`, after pretraining the model they start from (or loading it
    from ``cache_dir``, default ``out/lm_cache``), without running them; a runner may be handed
    them early (:meth:`~drpo_sim.run.executor.Runner.prefetch`). Arguments: those of
    :func:`compare`. Bad input: ``ValueError`` before any work."""
    objectives, precisions = _names(objectives, "objectives"), _names(precisions, "precisions")
    bad = [p for p in precisions if p not in PRECISIONS]
    if bad:
        raise ValueError(f"unknown precision(s) {', '.join(bad)}; valid: {', '.join(PRECISIONS)}")
    seeds = _seeds(seeds)
    params = {k: dict(v) for k, v in (params or {}).items()}
    unused = sorted(set(params) - set(objectives))
    if unused:
        raise ValueError(f"parameters given for {', '.join(unused)}, which is not among the objectives "
                         f"{', '.join(objectives)}")
    lab = dict(lab or {})
    reserved = {"objective", "params", "precision", "seed", "steps"} & set(lab)
    if reserved:
        raise ValueError(f"lab fields {sorted(reserved)} are set by compare itself")
    configs = [
        LabConfig(objective=o, params=params.get(o, {}), precision=p, seed=s, steps=int(steps), **lab)
        for o in objectives for p in precisions for s in seeds
    ]  # validates every objective, parameter and field up front

    out = Path(out)
    pcfg = pretrain_config or PretrainConfig()
    ckpt = pretrain(pcfg, out / CACHE_DIR if cache_dir is None else cache_dir, progress=progress)
    logged = set(objectives if token_log_objectives is None else token_log_objectives)
    cells = [
        Cell("lab", {"lab": dataclasses.asdict(c), "pretrain": dataclasses.asdict(pcfg),
                     "token_log": c.objective in logged and c.seed == seeds[0]},
             {"objective": c.objective, "precision": c.precision, "seed": c.seed}, inputs=ckpt)
        for c in configs
    ]
    return Plan(objectives, precisions, seeds, configs, pcfg, ckpt, cells)


def compare(
    objectives: Sequence[str] | str,
    precisions: Sequence[str] | str,
    seeds: int | Iterable[int],
    steps: int,
    out: str | os.PathLike,
    *,
    runner: Runner | None = None,
    progress: bool = False,
    **options: Any,
) -> Comparison:
    """Run every (objective, precision, seed) and write the files of the module docstring.

    ``seeds``: a number of seeds (``range(n)``) or explicit seeds. ``options``: the keyword
    arguments of :func:`plan`: ``params``, objective parameters per objective name, e.g.
    ``{"drpo": {"delta": 2.5}}``; ``lab``, any other :class:`~drpo_sim.lm.rl.LabConfig` field
    (``lr``, ``group_size``, ...); ``token_log_objectives``, the objectives whose first seed keeps
    a token log (None: all); ``pretrain_config`` and ``cache_dir``. ``runner`` runs the cells
    (default: local processes, cells kept in ``out/cells``). Bad input: ``ValueError`` before any
    work.
    """
    out = Path(out)
    runner = runner or Runner(store=CellStore(out / "cells"), progress=progress)
    if runner.store is None:
        raise ValueError("the lab's comparison keeps token logs: give the runner a cell store")
    p = plan(objectives, precisions, seeds, steps, out, progress=progress, **options)
    out.mkdir(parents=True, exist_ok=True)
    tables = runner.run(p.cells, desc="lm compare")
    df = pd.concat(tables, ignore_index=True).sort_values(["method", "precision", "seed", "step"], ignore_index=True)

    token_logs = []
    for cell in p.cells:
        if cell.spec["token_log"]:
            name = f"{TOKENS_DIR}/{token_log_name(**cell.labels)}"
            with atomic_path(out / name) as tmp:
                shutil.copyfile(runner.store.token_log(cell), tmp)
            token_logs.append(name)
    config = {
        "objectives": list(p.objectives),
        "precisions": list(p.precisions),
        "method_params": {c.objective: c.build_objective().params for c in p.configs},
        "lab": {
            k: v
            for k, v in dataclasses.asdict(p.configs[0]).items()
            if k not in ("objective", "params", "precision", "seed")
        },
        "pretrain": dataclasses.asdict(p.pretrain_config),
        "pretrain_metrics": p.checkpoint.metrics,
        "results": RESULTS_FILE,
        "token_logs": sorted(token_logs),
    }
    write_results(df, out / RESULTS_FILE, {**config, "seeds": list(p.seeds)})
    return Comparison(df, config, list(p.seeds), sorted(token_logs), p.checkpoint)


def _names(values: Sequence[str] | str, what: str) -> list[str]:
    names = parse_names(values)
    if not names:
        raise ValueError(f"{what}: give at least one")
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ValueError(f"{what}: {', '.join(dup)} listed twice")
    return names


def _seeds(seeds: int | Iterable[int]) -> list[int]:
    if isinstance(seeds, bool):
        raise ValueError(f"seeds must be a number of seeds or a list of seeds, got {seeds!r}")
    if isinstance(seeds, int):
        if seeds < 1:
            raise ValueError(f"seeds must be >= 1, got {seeds}")
        return list(range(seeds))
    out = [int(s) for s in seeds]
    if not out or any(s < 0 for s in out) or len(set(out)) != len(out):
        raise ValueError(f"seeds must be distinct non-negative integers, got {out}")
    return out
