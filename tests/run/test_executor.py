"""The executor (drpo_sim.run.executor): Runner runs cells locally or on Dask, returns their tables
in cell order, skips the cells its store holds, and refuses results computed by other code."""

from __future__ import annotations

import time
from pathlib import Path

import pandas as pd
import pytest
from dask.distributed import LocalCluster
from run_fixtures import CONFIG, GRID

from drpo_sim import objectives, sim
from drpo_sim.run import sweep
from drpo_sim.run.cells import KINDS, Cell, Kind, Output, sim_cell
from drpo_sim.run.executor import Runner, RunReport
from drpo_sim.run.store import CellStore


def _cells() -> list[Cell]:
    """Four small cells of different methods, configurations and seeds."""
    noisy = {**CONFIG, "noise_std": 0.3, "staleness": 2}
    return [
        sim_cell(CONFIG, "grpo", objectives.get("grpo").params, [0, 1], i=0),
        sim_cell(noisy, "drpo", objectives.get("drpo", delta=0.15).params, [0, 1], i=1),
        sim_cell(noisy, "pg_is", objectives.get("pg_is").params, [2], i=2),
        sim_cell(CONFIG, "dppo_tv", objectives.get("dppo_tv").params, [0, 1, 2], i=3),
    ]


# --------------------------------------------------------------------------------------------
# validation


@pytest.mark.parametrize("n_jobs", [0, -1, 1.5, True, "2"])
def test_n_jobs_must_be_a_number_of_processes(n_jobs):
    with pytest.raises(ValueError, match=r"n_jobs must be a number of processes >= 1, got"):
        Runner(n_jobs=n_jobs)


@pytest.mark.parametrize("scheduler, message", [
    ("no address", "scheduler 'no address': missing port number"),
    ("tcp://host", "scheduler 'tcp://host': missing port number"),
    ("", "scheduler: expected a Dask scheduler address such as tcp://host:8786"),
    (8786, "scheduler: expected a Dask scheduler address"),
])
def test_a_scheduler_address_needs_a_host_and_a_port(scheduler, message):
    with pytest.raises(ValueError, match=message):
        Runner(scheduler=scheduler)


def test_n_jobs_and_scheduler_exclude_each_other():
    with pytest.raises(ValueError, match="n_jobs and scheduler exclude each other"):
        Runner(n_jobs=2, scheduler="tcp://127.0.0.1:8786")
    Runner(scheduler="tcp://127.0.0.1:8786")  # checked, not connected to, until it runs


def test_two_cells_with_one_spec_are_an_error():
    cell = _cells()[0]
    with pytest.raises(ValueError, match="two cells have the same specification"):
        Runner(n_jobs=1).run([cell, cell.relabel(i=9)])


# --------------------------------------------------------------------------------------------
# without a store


@pytest.mark.parametrize("n_jobs", [1, 2])
def test_without_a_store_the_tables_come_back_in_cell_order(n_jobs):
    cells = _cells()
    runner = Runner(n_jobs=n_jobs)
    tables = runner.run(cells[::-1])
    assert len(tables) == len(cells)
    for cell, table in zip(cells[::-1], tables):
        pd.testing.assert_frame_equal(table, sim.run_cell(cell.spec))
    assert runner.last.ran == runner.last.total == len(cells) and runner.last.skipped == 0
    assert runner.last.executor == ("local, 1 process" if n_jobs == 1 else "local, 2 processes")


def _fake_kind(monkeypatch, token_logs: bool) -> None:
    """A kind ``fake`` whose cells return a small table, and a token log when ``token_logs``."""
    def compute(spec, inputs):
        table = pd.DataFrame({"method": ["fake"], "seed": [0], "step": [1], "value": [spec["x"]]})
        return Output(table, {"tokens": ([], {"x": spec["x"]})} if token_logs else {})

    monkeypatch.setitem(KINDS, "fake", Kind("fake", compute, "drpo_sim.stats"))


def test_a_cell_with_token_logs_needs_a_store(monkeypatch):
    _fake_kind(monkeypatch, token_logs=True)
    cell = Cell("fake", {"x": 1.0})
    with pytest.raises(ValueError, match=rf"cell {cell.id} wrote token logs \(tokens\): run it with a store"):
        Runner(n_jobs=1).run([cell])


def test_served_accumulates_the_ids_of_every_call(monkeypatch):
    _fake_kind(monkeypatch, token_logs=False)
    a, b, c = (Cell("fake", {"x": x}) for x in (1.0, 2.0, 3.0))
    runner = Runner(n_jobs=1)
    assert runner.served == set()
    assert [t["value"].item() for t in runner.run([a, b])] == [1.0, 2.0]
    runner.run([b, c])
    assert runner.served == {a.id, b.id, c.id}


# --------------------------------------------------------------------------------------------
# with a store


def test_last_counts_what_ran_and_what_was_skipped(tmp_path: Path):
    cells = _cells()
    store = CellStore(tmp_path / "cells")
    seen = []
    runner = Runner(store=store, n_jobs=1)
    first = runner.run(cells, on_result=lambda cell, seconds: seen.append((cell.id, seconds >= 0)))
    assert seen == [(c.id, True) for c in cells]
    report = runner.last
    assert isinstance(report, RunReport)
    counts = (report.ran, report.skipped, report.rerun_unreadable, report.stale_tmp_removed, report.total)
    assert counts == (4, 0, 0, 0, 4)
    assert report.executor == "local, 1 process" and report.wall_s > 0
    assert {cid: r["this_run"] for cid, r in report.cells.items()} == {c.id: "ran" for c in cells}
    assert all(r["wall_s"] >= 0 for r in report.cells.values())
    for cell, table in zip(cells, first):
        assert store.done(cell)
        pd.testing.assert_frame_equal(table, sim.run_cell(cell.spec))

    seen.clear()
    again = runner.run(cells)
    assert seen == []
    assert (runner.last.ran, runner.last.skipped, runner.last.total) == (0, 4, 4)
    assert runner.last.executor == "none (every cell was done)"
    assert runner.last.cells == {c.id: {"this_run": "skipped"} for c in cells}
    for a, b in zip(first, again):
        pd.testing.assert_frame_equal(a, b)

    store.path(cells[1]).unlink()
    store.path(cells[2]).write_bytes(b"not parquet")  # no atomic write leaves this, a damaged disk might
    (tmp_path / "cells" / f".{cells[1].id}.parquet.x1y2.tmp").write_bytes(b"half a file")  # what kill -9 can leave
    runner.run(cells, on_result=lambda cell, seconds: seen.append(cell.id))
    assert seen == [cells[1].id, cells[2].id]
    last = runner.last
    assert (last.ran, last.skipped, last.rerun_unreadable, last.stale_tmp_removed, last.total) == (2, 2, 1, 1, 4)
    assert [cid for cid, r in last.cells.items() if r["this_run"] == "ran"] == [cells[1].id, cells[2].id]
    assert not list((tmp_path / "cells").glob("*.tmp"))
    assert runner.served == {c.id for c in cells}


def test_a_result_computed_with_other_code_is_refused(tmp_path: Path, monkeypatch):
    cells = _cells()[:1]
    driver_code = cells[0].code  # the driver's digest, fixed when the cell was made
    monkeypatch.setattr(Kind, "code", property(lambda self: "f" * 16))  # the worker runs other code
    store = CellStore(tmp_path)
    with pytest.raises(RuntimeError, match=rf"cell {cells[0].id}: a worker computed it with code f{{16}}, the "
                                           rf"driver has {driver_code}; run one version of drpo_sim everywhere"):
        Runner(store=store, n_jobs=1).run(cells)
    assert not store.path(cells[0]).exists()  # nothing of it is stored
    with pytest.raises(RuntimeError, match="a worker computed it with code"):
        Runner(n_jobs=1).run(cells)


# --------------------------------------------------------------------------------------------
# prefetch: cells handed over early, computed in the background


def test_prefetched_cells_are_served_from_the_background_run(tmp_path: Path):
    cells = _cells()
    store = CellStore(tmp_path / "cells")
    runner = Runner(store=store, n_jobs=2)
    assert runner.parallel and not Runner(n_jobs=1).parallel
    runner.prefetch(cells[::-1])
    first = runner.run(cells[:2])  # waits for these two, while the others may still run
    assert (runner.last.ran, runner.last.skipped, runner.last.total) == (2, 0, 2)
    assert runner.last.executor == "local, 2 processes (prefetched)"
    assert set(runner.last.cells) == {c.id for c in cells[:2]}
    rest = runner.run(cells[2:])
    runner.join()
    for cell, table in zip(cells, first + rest):
        pd.testing.assert_frame_equal(table, sim.run_cell(cell.spec))
    assert runner.served == {c.id for c in cells}
    # with everything stored, a prefetch runs nothing
    runner.prefetch(cells)
    runner.run(cells)
    assert (runner.last.ran, runner.last.skipped, runner.last.executor) == (0, 4, "none (every cell was done)")
    runner.join()


def test_a_run_of_other_cells_waits_for_the_whole_prefetch(tmp_path: Path):
    cells = _cells()
    runner = Runner(store=CellStore(tmp_path / "cells"), n_jobs=2)
    runner.prefetch(cells[:2])
    runner.run(cells[1:3])  # cells[2] was not handed over: the prefetch ends first, then it runs
    assert runner._prefetch is None
    assert (runner.last.ran, runner.last.skipped) == (1, 1)
    assert all(runner.store.done(c) for c in cells[:3])


def test_prefetch_needs_a_store_and_runs_one_at_a_time(tmp_path: Path):
    cells = _cells()
    with pytest.raises(ValueError, match="prefetch hands results over through the cell store"):
        Runner(n_jobs=2).prefetch(cells)
    runner = Runner(store=CellStore(tmp_path / "cells"), n_jobs=2)
    runner.prefetch(cells[:1])
    with pytest.raises(RuntimeError, match=r"a prefetch is already running: join\(\) or cancel\(\) it first"):
        runner.prefetch(cells[1:])
    runner.cancel()
    runner.cancel()  # nothing left to cancel
    runner.join()  # nor to join


def test_a_failure_in_the_background_reaches_the_waiting_run_and_join(tmp_path: Path, monkeypatch):
    def compute(spec, inputs):
        if spec["x"] == 2.0:
            raise ArithmeticError("cell two failed")
        return Output(pd.DataFrame({"method": ["fake"], "seed": [0], "step": [1], "value": [spec["x"]]}))

    monkeypatch.setitem(KINDS, "fake", Kind("fake", compute, "drpo_sim.stats"))
    a, b, c = (Cell("fake", {"x": x}) for x in (1.0, 2.0, 3.0))
    runner = Runner(store=CellStore(tmp_path / "cells"), n_jobs=1)  # in-process, in the background thread
    runner.prefetch([a, b, c])
    assert [t["value"].item() for t in runner.run([a])] == [1.0]
    with pytest.raises(RuntimeError, match=rf"cell {c.id} \({{}}\): the background run stopped before it"):
        runner.run([c])
    with pytest.raises(RuntimeError, match="the background run of 3 cells failed: cell two failed"):
        runner.join()
    assert runner.store.done(a) and not runner.store.done(b) and not runner.store.done(c)
    assert [t["value"].item() for t in runner.run([c])] == [3.0]  # an ordinary run afterwards


def test_cancel_stops_the_queued_cells(tmp_path: Path, monkeypatch):
    started = []

    def compute(spec, inputs):
        started.append(spec["x"])
        time.sleep(0.05)  # 50 cells take 2.5 s, the cancel comes within milliseconds
        return Output(pd.DataFrame({"method": ["fake"], "seed": [0], "step": [1], "value": [spec["x"]]}))

    monkeypatch.setitem(KINDS, "fake", Kind("fake", compute, "drpo_sim.stats"))
    cells = [Cell("fake", {"x": float(x)}) for x in range(50)]
    runner = Runner(store=CellStore(tmp_path / "cells"), n_jobs=1)
    runner.prefetch(cells)
    runner.run(cells[:1])
    runner.cancel()
    assert runner._prefetch is None and len(started) < len(cells)
    with runner.store.locked():  # the background released the store's lock
        pass


# --------------------------------------------------------------------------------------------
# Dask


def test_dask_local_cluster_gives_exactly_the_local_results(tmp_path: Path):
    path = tmp_path / "sweep.toml"
    path.write_text(GRID)
    spec = sweep.load_sweep(path)
    df = sweep.run_sweep(spec, tmp_path / "local", n_jobs=2, progress=False)
    with LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1", dashboard_address=None
    ) as cluster:
        out = tmp_path / "dask"
        got = sweep.run_sweep(spec, out, scheduler=cluster.scheduler_address, progress=False)
        # the runner itself, without a store: the same tables, in cell order
        cells = _cells()
        tables = Runner(scheduler=cluster.scheduler_address).run(cells)
    pd.testing.assert_frame_equal(got, df)
    assert (out / "results.parquet").read_bytes() == (tmp_path / "local" / "results.parquet").read_bytes()
    assert sweep.read_index(out)["last_run"]["executor"] == f"dask {cluster.scheduler_address}"
    for cell, table in zip(cells, tables):
        pd.testing.assert_frame_equal(table, sim.run_cell(cell.spec))
