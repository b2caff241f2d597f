"""Figure jobs: compute a figure's data with the library, write it as CSV, draw it, record it.

``drpo-sim geometry`` runs :func:`geometry_figures`; ``drpo-sim reproduce`` runs every job and
writes ``MANIFEST.json`` beside the figures (figure, producing job, configuration, package
version, git commit, wall time).
"""

from __future__ import annotations

import dataclasses
import json
import platform
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

from drpo_sim import __version__, geometry, plots
from drpo_sim._io import write_csv, write_text


@dataclasses.dataclass
class FigureRecord:
    """One figure written by a job: its files and what produced them."""

    figure: str
    files: list[str]
    data: str
    job: str
    config: dict
    wall_time_s: float


def geometry_figures(out: str | Path, cfg: geometry.GeometryConfig | None = None, formats: Sequence[str] = ("png",)) -> list[FigureRecord]:
    """The trust-region geometry figures (DRPO paper's Table 1 drawn out, Figure 1, delta range)."""
    cfg = cfg or geometry.GeometryConfig()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    labels = {name: str(obj) for name, obj in cfg.build().items()}
    config = _jsonable(dataclasses.asdict(cfg))
    records = []

    t0 = time.perf_counter()
    curves = geometry.weight_curves(cfg)
    write_csv(curves, out / "weight_vs_pi.csv")
    main = [n for n, _ in cfg.objectives if n not in cfg.ablations]
    files = plots.weight_curves_figure(
        curves, out / "weight_vs_pi", names=main, formats=formats,
        title="Gradient weight w = (dJ/dlogp) / (A r) against pi at fixed mu, A = +-1 (DRPO paper, Table 1); "
        "lines leaving the frame keep going",
    )
    records.append(FigureRecord("weight_vs_pi", _names(files), "weight_vs_pi.csv", "geometry.weight_curves", config, time.perf_counter() - t0))

    t0 = time.perf_counter()
    ablations = ["drpo"] + [n for n, _ in cfg.objectives if n in cfg.ablations]
    files = plots.weight_curves_figure(
        curves, out / "weight_vs_pi_ablations", names=ablations, formats=formats,
        title="DRPO and its ablations (no abs(A) factor; KL, TV, K3 penalties of the sampled token), A = +-1",
    )
    records.append(FigureRecord("weight_vs_pi_ablations", _names(files), "weight_vs_pi.csv", "geometry.weight_curves", config, time.perf_counter() - t0))

    t0 = time.perf_counter()
    plane = geometry.weight_plane(cfg)
    write_csv(plane, out / "weight_plane.csv")
    files = plots.weight_plane_figure(plane, out / "weight_plane", labels=labels, formats=formats)
    records.append(FigureRecord("weight_plane", _names(files), "weight_plane.csv", "geometry.weight_plane", config, time.perf_counter() - t0))

    t0 = time.perf_counter()
    ranges, range_curves = geometry.drpo_weight_range(cfg)
    write_csv(ranges, out / "drpo_delta_range.csv")
    write_csv(range_curves, out / "drpo_delta_curves.csv")
    files = plots.drpo_range_figure(ranges, range_curves, out / "drpo_delta_range", formats=formats)
    records.append(FigureRecord("drpo_delta_range", _names(files), "drpo_delta_range.csv", "geometry.drpo_weight_range", config, time.perf_counter() - t0))
    return records


def write_manifest(out: str | Path, records: list[FigureRecord], *, profile: str) -> Path:
    """``MANIFEST.json``: every figure, its job and configuration, the package version and git commit."""
    manifest = {
        "package": "drpo_sim",
        "version": __version__,
        "git_commit": _git_commit(),
        "profile": profile,
        "python": platform.python_version(),
        "created_unix": time.time(),
        "figures": [dataclasses.asdict(r) for r in records],
    }
    return write_text(json.dumps(manifest, indent=2) + "\n", Path(out) / "MANIFEST.json")


def _names(files: list[Path]) -> list[str]:
    return [f.name for f in files]


def _jsonable(obj):
    if isinstance(obj, dict):
        return {k: _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, set, frozenset)):
        items = [_jsonable(v) for v in obj]
        return sorted(items) if isinstance(obj, (set, frozenset)) else items
    return obj


def _git_commit() -> str | None:
    try:
        return subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True, cwd=Path(__file__).parent
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None
