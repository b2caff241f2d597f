"""The cell store (drpo_sim.run.store): one file per finished cell, written atomically, so a run
killed at any moment resumes to exactly the uninterrupted results; one driver at a time."""

from __future__ import annotations

import fcntl
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pandas as pd
import pytest
from run_fixtures import CONFIG, run_grid, toml

from drpo_sim import objectives
from drpo_sim.results import read_results
from drpo_sim.run import sweep
from drpo_sim.run.cells import sim_cell
from drpo_sim.run.store import LOCK_FILE, CellStore
from drpo_sim.tokens import TokenBatch, read_token_log, read_token_log_metadata


def _cell(seed: int = 0, **labels):
    return sim_cell(CONFIG, "drpo", objectives.get("drpo").params, [seed], **labels)


def _table(value: float = 0.5) -> pd.DataFrame:
    return pd.DataFrame({"method": ["drpo"] * 3, "seed": [0] * 3, "step": [1, 2, 3], "expected_reward": [value] * 3})


def _batches(n: int = 8) -> list[TokenBatch]:
    rng = np.random.default_rng(0)
    mu = rng.uniform(0.1, 0.9, n)
    return [TokenBatch.from_arrays(logp=np.log(mu) + 0.01, logp_behavior=np.log(mu),
                                   advantage=rng.choice([-1.0, 1.0], n), mask=np.ones(n, bool),
                                   sample_id=np.arange(n), group_id=np.arange(n), position=np.zeros(n, int))]


# --------------------------------------------------------------------------------------------
# CellStore


def test_write_read_and_done_round_trip(tmp_path):
    store = CellStore(tmp_path / "cells")
    cell = _cell(setting="a")
    assert store.path(cell) == tmp_path / "cells" / f"{cell.id}.parquet"
    assert not store.done(cell)
    table = _table()
    assert store.write(cell, table) == store.path(cell)
    assert store.done(cell)
    pd.testing.assert_frame_equal(store.read(cell), table)
    _, meta = read_results(store.path(cell))
    assert meta["cell"] == cell.id and meta["kind"] == "sim" and meta["labels"] == {"setting": "a"}
    assert meta["spec"] == cell.spec and meta["code"] == cell.code and meta["token_logs"] == []
    assert not list((tmp_path / "cells").glob("*.tmp"))
    assert repr(store) == f"CellStore({str(tmp_path / 'cells')!r})"


def test_token_logs_are_written_beside_the_cell_and_needed_for_it_to_be_done(tmp_path):
    store = CellStore(tmp_path)
    cell = _cell()
    batches = _batches()
    store.write(cell, _table(), {"tokens": (batches, {"objective": "drpo"})})
    log = store.token_log(cell)
    assert log == tmp_path / f"{cell.id}.tokens.parquet" and log.is_file()
    assert read_token_log_metadata(log)["objective"] == "drpo"
    assert sum(len(b) for b in read_token_log(log)) == len(batches[0])
    _, meta = read_results(store.path(cell))
    assert meta["token_logs"] == [log.name]
    assert store.done(cell)
    log.unlink()  # a cell whose log is gone is not done: it runs again
    assert not store.done(cell)


def test_prune_removes_the_cells_not_kept_with_their_token_logs(tmp_path):
    store = CellStore(tmp_path)
    keep, drop, other = _cell(0), _cell(1), _cell(2)
    store.write(keep, _table(), {"tokens": (_batches(), {})})
    store.write(drop, _table(), {"tokens": (_batches(), {})})
    store.write(other, _table())
    assert store.prune([keep.id]) == 2
    assert sorted(p.name for p in tmp_path.glob("*.parquet")) == sorted([store.path(keep).name,
                                                                        store.token_log(keep).name])
    assert store.done(keep) and not store.done(drop) and not store.done(other)
    assert store.prune({keep.id}) == 0  # nothing left to remove


def test_a_cell_file_holding_another_cell_is_an_error_naming_the_file(tmp_path):
    store = CellStore(tmp_path)
    cell, other = _cell(0), _cell(1)
    store.write(other, _table())
    shutil.copy(store.path(other), store.path(cell))
    message = re.escape(f"{store.path(cell)}: holds cell '{other.id}', not '{cell.id}'")
    with pytest.raises(ValueError, match=message):
        store.done(cell)
    with pytest.raises(ValueError, match=message):
        store.read(cell)


def test_an_unreadable_cell_file_is_not_done(tmp_path):
    store = CellStore(tmp_path)
    cell = _cell()
    store.path(cell).write_bytes(b"not parquet")  # no atomic write leaves this, a damaged disk might
    assert not store.done(cell)
    store.write(cell, _table())
    assert store.done(cell)


def test_remove_stale_deletes_only_the_temporary_files(tmp_path):
    store = CellStore(tmp_path)
    cell = _cell()
    store.write(cell, _table())
    (tmp_path / f".{cell.id}.parquet.x1y2.tmp").write_bytes(b"half a file")  # what kill -9 can leave
    (tmp_path / ".other.parquet.abc.tmp").write_bytes(b"")
    assert store.remove_stale() == 2
    assert store.remove_stale() == 0
    assert [p.name for p in tmp_path.iterdir()] == [store.path(cell).name]


def test_the_lock_admits_one_driver(tmp_path):
    store = CellStore(tmp_path / "cells")
    with store.locked():
        assert (tmp_path / "cells" / LOCK_FILE).is_file()
        with pytest.raises(OSError, match="another run is writing into this cell store") as err:
            with CellStore(tmp_path / "cells").locked():
                pass
        assert str(tmp_path / "cells" / LOCK_FILE) in str(err.value)
    with store.locked():  # released at the end of the block
        pass


def test_one_store_object_nests_its_lock_across_threads(tmp_path):
    """A runner's background prefetch and its caller share one store: the lock belongs to the
    object, is held until its last block ends, and refuses other drivers meanwhile."""
    store = CellStore(tmp_path / "cells")
    entered, release = threading.Event(), threading.Event()

    def background():
        with store.locked():
            entered.set()
            release.wait()

    thread = threading.Thread(target=background)
    with store.locked():
        thread.start()
        entered.wait()
        with store.locked():  # nested in this thread as well
            pass
    with pytest.raises(OSError, match="another run is writing into this cell store"):
        with CellStore(tmp_path / "cells").locked():  # the background's block is still open
            pass
    release.set()
    thread.join()
    with CellStore(tmp_path / "cells").locked():  # released with the last block
        pass


# --------------------------------------------------------------------------------------------
# resuming a sweep from its store


@pytest.fixture(scope="module")
def local(tmp_path_factory):
    """The GRID sweep run once: (spec, its directory, its table)."""
    return run_grid(tmp_path_factory.mktemp("local"), n_jobs=1)


def test_rerun_skips_everything_and_a_deleted_cell_alone_reruns(local, tmp_path):
    spec, done, df = local
    out = tmp_path / "out"
    shutil.copytree(done, out)
    store = CellStore(out / "cells")
    before = (out / "results.parquet").read_bytes()
    pd.testing.assert_frame_equal(sweep.run_sweep(spec, out, n_jobs=1, progress=False), df)
    assert sweep.read_index(out)["last_run"] | {"wall_s": 0} == {
        "ran": 0, "skipped": 12, "rerun_unreadable": 0, "stale_tmp_removed": 0, "total": 12, "rows": 120,
        "executor": "none (every cell was done)", "wall_s": 0,
    }
    assert (out / "results.parquet").read_bytes() == before

    victim, garbled = spec.cells()[4], spec.cells()[7]
    store.path(victim).unlink()
    store.path(garbled).write_bytes(b"not parquet")  # no atomic write leaves this, a damaged disk might
    (out / "cells" / f".{victim.id}.parquet.x1y2.tmp").write_bytes(b"half a file")  # what kill -9 can leave
    sweep.run_sweep(spec, out, n_jobs=1, progress=False)
    index = sweep.read_index(out)
    assert [c["cell"] for c in index["cells"] if c["this_run"] == "ran"] == [victim.id, garbled.id]
    assert index["last_run"]["rerun_unreadable"] == 1 and index["last_run"]["stale_tmp_removed"] == 1
    assert (out / "results.parquet").read_bytes() == before
    assert not list(out.rglob("*.tmp"))


def test_two_drivers_cannot_write_into_one_store(local, tmp_path):
    spec, _, _ = local
    cells_dir = tmp_path / "out" / "cells"
    cells_dir.mkdir(parents=True)
    with open(cells_dir / LOCK_FILE, "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)  # as a running driver holds it
        with pytest.raises(OSError, match="another run is writing into this cell store"):
            sweep.run_sweep(spec, tmp_path / "out", n_jobs=1, progress=False)
    assert not list(cells_dir.glob("*.parquet")) and not (tmp_path / "out" / "results.parquet").exists()


KILL = """
methods = ["grpo", "drpo"]
seeds = 3
noise_std = 0.1
[env]
vocab_size = 512
[train]
steps = 200
group_size = 8
[grid]
staleness = [0, 2, 4]
lr = [0.02, 0.05, 0.1]
"""


def test_kill_9_mid_sweep_then_resume_gives_the_uninterrupted_results(tmp_path):
    path = toml(tmp_path, KILL)
    spec = sweep.load_sweep(path)
    n = len(spec.cells())
    out = tmp_path / "killed"
    argv = [sys.executable, "-m", "drpo_sim.cli", "sweep", str(path), "--out", str(out), "--jobs", "1", "--no-progress"]
    proc = subprocess.Popen(argv, start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while not list((out / "cells").glob("*.parquet")) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)  # the driver's whole session, as a node failure would
    _, err = proc.communicate()
    assert proc.returncode == -signal.SIGKILL, err.decode()
    finished = len(list((out / "cells").glob("*.parquet")))
    assert 0 < finished < n and not (out / "results.parquet").exists()

    res = subprocess.run(argv, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert f"{n - finished} cells run, {finished} skipped, {n} in all" in res.stdout
    resumed = sweep.read_sweep(out)[0]
    reference = sweep.run_sweep(spec, tmp_path / "uninterrupted", n_jobs=2, progress=False)
    pd.testing.assert_frame_equal(resumed, reference)
    assert not resumed.duplicated(["cell", "method", "seed", "step"]).any() and len(resumed) == n * 3 * 200
    assert not list(out.rglob("*.tmp"))
    assert (out / "results.parquet").read_bytes() == (tmp_path / "uninterrupted" / "results.parquet").read_bytes()
