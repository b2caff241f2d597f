"""drpo_sim.plots: every figure function writes readable images atomically, in every format asked.

The figures' content is checked where their data is made (tests/paper/test_jobs.py, tests/cli/
test_paper.py); here: the drawing itself, from small tables built by the library."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from matplotlib import image

from drpo_sim import plots, stats


def _bands(methods=("pg_is", "drpo"), steps=12, seeds=4) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    rows = [{"method": m, "seed": s, "step": t, "expected_reward": min(1.0, t / steps + 0.1 * rng.random())}
            for m in methods for s in range(seeds) for t in range(1, steps + 1)]
    return stats.curve_bands(pd.DataFrame(rows), "expected_reward")


def test_curves_figure_writes_every_format_and_no_temporary_file(tmp_path):
    files = plots.curves_figure([("expected reward", _bands())], tmp_path / "curves", title="t",
                                formats=("png", "pdf", "svg"))
    assert [f.name for f in files] == ["curves.png", "curves.pdf", "curves.svg"]
    assert all(f.stat().st_size > 1000 for f in files)
    pixels = image.imread(files[0])[..., :3]
    assert pixels.std() > 0.05, "the PNG looks blank"
    assert not list(tmp_path.glob(".*.tmp"))


def test_save_leaves_no_file_when_drawing_fails(tmp_path, monkeypatch):
    fig = plots.plt.figure()

    def fail(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(fig, "savefig", fail)
    with pytest.raises(OSError, match="disk full"):
        plots.save(fig, tmp_path / "broken", formats=("png",))
    assert list(tmp_path.iterdir()) == []


def test_variant_style_keeps_the_objective_colour_for_a_second_parameter_set():
    base = plots.variant_style("drpo", "drpo")
    other = plots.variant_style("drpo (delta 0.15)", "drpo")
    assert base == plots.STYLE["drpo"]
    assert other["color"] == base["color"] and other["ls"] != base.get("ls")
