"""Run the analyses of ``analyses/``: one script per figure or claim, alone or all together.

Each script in ``analyses/`` states its configuration at the top, defines
``run(out, profile, formats) -> list[FigureRecord]`` calling the library, and ends with
``sys.exit(script_main(run, __doc__))`` so that ``python analyses/<name>.py [--quick|--full]
[--out DIR]`` runs it on its own. ``drpo-sim reproduce`` (:func:`reproduce`) runs every script in
file-name order (the numeric prefixes set it: later scripts read the result files of earlier
ones), then writes ``MANIFEST.json``, ``claims.json`` (the script ``*_claims.py``) and the report
(:func:`drpo_sim.report.write_report`).

The scripts live in the source checkout, beside the package (``<repo>/analyses``); the package
finds them there, or in the directory given by ``DRPO_SIM_ANALYSES``.
"""

from __future__ import annotations

import argparse
import importlib.util
import inspect
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from types import ModuleType

from drpo_sim import figures

Runner = Callable[[Path, str, Sequence[str]], list]


def analyses_dir() -> Path:
    """The ``analyses/`` directory: ``$DRPO_SIM_ANALYSES``, else ``<repo>/analyses`` beside the package."""
    path = Path(os.environ.get("DRPO_SIM_ANALYSES") or Path(__file__).resolve().parent.parent / "analyses")
    if not path.is_dir():
        raise FileNotFoundError(f"{path}: no analyses directory; drpo-sim reproduce runs the scripts of a source "
                                "checkout (git clone, then pip install -e .), or set DRPO_SIM_ANALYSES")
    return path


def scripts(where: Path | None = None) -> list[Path]:
    """The analysis scripts in the order they run (file names, which start with a number)."""
    found = sorted(p for p in (where or analyses_dir()).glob("[0-9]*.py"))
    if not found:
        raise FileNotFoundError(f"{where or analyses_dir()}: no analysis scripts (NN_name.py)")
    return found


def load(path: Path) -> ModuleType:
    """Import one script as a module (its ``__main__`` block does not run)."""
    spec = importlib.util.spec_from_file_location(f"drpo_sim_analysis_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if not callable(getattr(module, "run", None)):
        raise ValueError(f"{path}: an analysis script defines run(out, profile, formats)")
    return module


def reproduce(out: str | Path = "figures", profile: str = "quick", formats: Sequence[str] = ("png", "pdf"), *,
              paper: str | Path | None = None, only: Sequence[str] | None = None, progress: bool = True) -> dict:
    """Run every analysis into ``out``, then the manifest and the report (``paper``, default
    ``<out>/../paper``). ``only`` keeps the scripts whose name contains one of its strings (the
    claims script reads whatever result files are there). Returns ``{"records", "manifest",
    "report", "wall_time_s"}``."""
    from tqdm.auto import tqdm

    from drpo_sim import report

    t0 = time.perf_counter()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    todo = [p for p in scripts() if not only or any(s in p.stem for s in only)]
    records = []
    bar = tqdm(todo, desc="reproduce", unit="analysis", disable=not progress or None)
    for path in bar:
        bar.set_postfix_str(path.stem)
        records.extend(_stamped(load(path).run(out, profile, formats), path.name))
    manifest = figures.write_manifest(out, records, profile=profile, merge=bool(only))
    paper = Path(paper) if paper is not None else out.parent / "paper"
    doc = report.write_report(out, paper)
    return {"records": records, "manifest": manifest, "report": doc, "wall_time_s": time.perf_counter() - t0}


def _stamped(records: list, script: str) -> list:
    """The records with the name of the script that produced them (for ``MANIFEST.json``)."""
    for r in records:
        r.script = script
    return records


def script_main(run: Runner, doc: str | None, argv: Sequence[str] | None = None) -> int:
    """The command line of one analysis script: ``[--quick|--full] [--out DIR] [--formats png,pdf]``.

    Runs the script into ``--out`` (default ``figures/``) and merges its figures into that
    directory's ``MANIFEST.json``.
    """
    from drpo_sim.cli import parse_formats

    p = argparse.ArgumentParser(description=(doc or "").strip().splitlines()[0] if doc else None)
    group = p.add_mutually_exclusive_group()
    group.add_argument("--quick", dest="profile", action="store_const", const="quick", help="the fast profile (default)")
    group.add_argument("--full", dest="profile", action="store_const", const="full", help="the full profile")
    p.add_argument("--out", default="figures", help="output directory (default figures/)")
    p.add_argument("--formats", default="png,pdf", help="comma-separated image formats (default png,pdf)")
    p.set_defaults(profile="quick")
    args = p.parse_args(argv)
    try:
        t0 = time.perf_counter()
        records = _stamped(run(Path(args.out), args.profile, parse_formats(args.formats)),
                           Path(inspect.getsourcefile(run) or "?").name)
        if records:
            figures.write_manifest(args.out, records, profile=args.profile, merge=True)
    except (ValueError, TypeError, OSError) as err:
        print(f"{Path(sys.argv[0]).name}: error: {err}", file=sys.stderr)
        return 2
    for r in records:
        print(f"{r.figure:<28} {', '.join(r.files)}  (data: {r.data})")
    print(f"{len(records)} figures in {args.out} ({time.perf_counter() - t0:.1f} s)")
    return 0
