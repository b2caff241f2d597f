"""``MANIFEST.json``: every figure of a run, the job and configuration that made it, and where.

Each job returns one :class:`FigureRecord` per figure; :func:`write_manifest` writes them beside
the figures with the package version, the git commit (:func:`drpo_sim.provenance.git_commit`),
the profile and the Python version; :func:`load_manifest` reads one back, validated.
"""

from __future__ import annotations

import dataclasses
import json
import platform
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from drpo_sim import __version__
from drpo_sim._io import write_text
from drpo_sim.provenance import git_commit, git_dirty

MANIFEST_FILE = "MANIFEST.json"


@dataclasses.dataclass
class FigureRecord:
    """One figure written by a job: its files and what produced them."""

    figure: str
    files: list[str]
    data: str
    job: str
    config: dict
    wall_time_s: float
    seeds: list[int] | None = None
    script: str | None = None  # the analysis that ran the job (set by drpo_sim.paper.reproduce)


def write_manifest(out: str | Path, records: list[FigureRecord], *, profile: str, merge: bool = False,
                   commit: str | None = None, dirty: bool | None = None) -> Path:
    """``MANIFEST.json``: every figure, its analysis, job and configuration, the package version and git commit.

    With ``merge``, figures already listed in an existing manifest and not among ``records`` are
    kept (one analysis run on its own updates its own entries); the profile is then ``"mixed"``
    if the two differ. Every figure records the commit that made it (``git_commit``; a kept entry
    from an older manifest without one takes that manifest's), the manifest's own is this run's:
    ``commit``, read when the run started (a run of hours may end after the checkout has moved on;
    its code is what it imported), else the checkout's now. Beside it, ``git_dirty``: whether the
    package had changes that commit does not hold (``dirty``, read with ``commit``; None: unknown),
    in which case the commit does not name the code.
    """
    path = Path(out) / MANIFEST_FILE
    if commit is None:
        commit, dirty = git_commit(), git_dirty()
    entries = [{**dataclasses.asdict(r), "git_commit": commit, "git_dirty": dirty} for r in records]
    if merge and path.is_file():
        old = json.loads(path.read_text())
        mine = {e["figure"] for e in entries}
        kept = [e for e in old.get("figures", []) if e["figure"] not in mine]
        entries = [{**e, "git_commit": e.get("git_commit", old.get("git_commit")), "git_dirty": e.get("git_dirty")}
                   for e in kept] + entries
        if old.get("profile") not in (None, profile):
            profile = "mixed"
    manifest = {
        "package": "drpo_sim",
        "version": __version__,
        "git_commit": commit,
        "git_dirty": dirty,
        "profile": profile,
        "python": platform.python_version(),
        "created_unix": time.time(),
        "figures": entries,
    }
    return write_text(json.dumps(manifest, indent=2) + "\n", path)


def read_json(path: Path) -> Any:
    """A JSON file; malformed: a ``ValueError`` naming it."""
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno})") from None


def required_json(results: Path, name: str) -> Any:
    """``results/name``, which must exist (else a ``FileNotFoundError`` saying what writes it)."""
    path = results / name
    if not path.is_file():
        raise FileNotFoundError(f"{path}: not found; `drpo-sim reproduce --out {results}` writes it")
    return read_json(path)


def load_manifest(results: Path | str) -> dict:
    """``results/MANIFEST.json``, validated: an object whose ``figures`` is a list of records with
    at least a ``figure`` name. Missing file: :class:`FileNotFoundError`; malformed:
    :class:`ValueError` naming the file."""
    results = Path(results)
    path = results / MANIFEST_FILE
    data = required_json(results, MANIFEST_FILE)
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected an object, got {type(data).__name__}")
    figures = data.get("figures")
    if not isinstance(figures, list):
        raise ValueError(f"{path}: 'figures' should be a list of figure records")
    for i, rec in enumerate(figures):
        if not isinstance(rec, dict) or not isinstance(rec.get("figure"), str):
            raise ValueError(f"{path}: figures[{i}] has no 'figure' name")
    return data


def total_wall_time(manifest: Mapping) -> float:
    """The run's wall time: the manifest's ``wall_time_s`` if it records one, else the sum of its
    figures' ``wall_time_s`` (each job books its time once, on its first figure)."""
    total = manifest.get("wall_time_s")
    if isinstance(total, (int, float)) and not isinstance(total, bool):
        return float(total)
    times = [rec.get("wall_time_s") for rec in manifest.get("figures", []) if isinstance(rec, dict)]
    return float(sum(t for t in times if isinstance(t, (int, float)) and not isinstance(t, bool)))
