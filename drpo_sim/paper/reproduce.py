"""``drpo-sim reproduce``: every analysis, then the claims, the manifest and the report.

The pipeline, in one direction::

    specs (paper.analyses)  ->  jobs (paper.jobs, through one Runner and one cell store)
        ->  result files  ->  claims.json (paper.claims)  ->  paper/README.md (paper.report)

:func:`reproduce` runs the analyses of :data:`drpo_sim.paper.analyses.ORDER` (later ones may read
what earlier ones wrote), writes ``MANIFEST.json``, tests the claims on the result files and
writes the report. Every simulation goes through one :class:`~drpo_sim.run.executor.Runner`
whose cell store is ``<out>/cells``, so an interrupted run resumes where it stopped, and a rerun
after an edit recomputes only the cells whose code changed. With more than one worker, the cells
of every analysis are handed to the runner at the start (:func:`drpo_sim.paper.jobs.planned_cells`,
:meth:`~drpo_sim.run.executor.Runner.prefetch`): the workers compute them in the background, in
the order of the analyses and costliest first within each (but one arena cell per base model
first: :func:`drpo_sim.paper.jobs.base_models_first`), while this process runs the analyses
in order and draws their figures; nothing else changes, since every cell's numbers depend only
on its spec. ``only`` runs some stages: analysis names, ``claims`` or ``report``.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Sequence
from pathlib import Path

from tqdm.auto import tqdm

from drpo_sim.config import check_profile
from drpo_sim.paper import claims, jobs, report
from drpo_sim.paper.analyses import ORDER
from drpo_sim.paper.manifest import write_manifest
from drpo_sim.provenance import git_commit, git_dirty
from drpo_sim.run.executor import Runner
from drpo_sim.run.store import CellStore

STAGES = (*ORDER, "claims", "report")
CELLS_DIR = "cells"


def select(only: Sequence[str] | None) -> list[str]:
    """The stages to run: all, or those named in ``only`` (an unknown name is a ``ValueError``)."""
    if not only:
        return list(STAGES)
    unknown = [s for s in only if s not in STAGES]
    if unknown:
        raise ValueError(f"--only {', '.join(unknown)}: unknown; the stages are {', '.join(STAGES)}")
    return [s for s in STAGES if s in only]


def reproduce(out: str | Path = "figures", profile: str = "quick", formats: Sequence[str] = ("png", "pdf"), *,
              paper: str | Path | None = None, only: Sequence[str] | None = None, n_jobs: int | None = None,
              scheduler: str | None = None, progress: bool = True) -> dict:
    """Run the stages (all, or ``only``) into ``out``; the report goes to ``paper`` (default
    ``<out>/../paper``). Returns ``{"records", "manifest", "claims", "report", "wall_time_s"}``
    (``None`` for what was not run)."""
    check_profile(profile)
    stages = select(only)
    commit = git_commit()  # the code this process imported, not the checkout's HEAD when the run ends
    dirty = git_dirty()
    if dirty:
        warnings.warn("drpo_sim/ has changes its commit does not hold: MANIFEST.json records git_dirty = true, "
                      "and the commit does not name this run's code; commit first for a run you mean to keep",
                      UserWarning, stacklevel=2)
    t0 = time.perf_counter()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    store = CellStore(out / CELLS_DIR)
    runner = Runner(store=store, n_jobs=n_jobs, scheduler=scheduler, progress=progress)
    records = []
    analyses = [s for s in stages if s in ORDER]
    try:
        if runner.parallel:
            # every analysis's cells go to the workers now, so they keep computing while this
            # process draws figures and runs the analyses that train nothing
            # (the arena's base models first: trained side by side at the start, not in turn at the end)
            runner.prefetch(jobs.base_models_first(
                [c for name in analyses for c in jobs.planned_cells(ORDER[name].SPEC, profile, out)]))
        bar = tqdm(analyses, desc="reproduce", unit="analysis", disable=not progress or None)
        for name in bar:
            bar.set_postfix_str(name)
            for r in ORDER[name].run(out, profile, formats, runner):
                r.script = name
                records.append(r)
        runner.join()
    finally:
        runner.cancel()
    if analyses == list(ORDER):
        store.prune(runner.served)  # cells of older code or of experiments no longer run
    manifest = write_manifest(out, records, profile=profile, merge=bool(only), commit=commit,
                              dirty=dirty) if records else None
    results = None
    if "claims" in stages:
        results = claims.claims_from_results(out)
        claims.write_claims(results, out / claims.CLAIMS_FILE)
    doc = None
    if "report" in stages:
        doc = report.write_report(out, Path(paper) if paper is not None else out.parent / "paper")
    return {"records": records, "manifest": manifest, "claims": results, "report": doc,
            "wall_time_s": time.perf_counter() - t0}
