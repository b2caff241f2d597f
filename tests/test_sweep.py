"""Sweeps: grid expansion, cell ids, validation, equality with `simulate`, resume, kill -9, Dask."""

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from drpo_sim import cli, sweep
from drpo_sim.results import read_results, write_results
from drpo_sim.sim import simulate

HEAD = """
methods = ["grpo", "drpo"]
seeds = 2
[env]
vocab_size = 64
[train]
steps = 5
group_size = 8
"""
GRID = HEAD + """
[grid]
noise_std = [0, 0.1]
staleness = [0, 2]
"drpo.delta" = [12.5, 0.15]
"""


def _toml(tmp_path: Path, text: str, name: str = "sweep.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def _frame(out: Path) -> pd.DataFrame:
    return sweep.read_sweep(out)[0]


@pytest.fixture(scope="module")
def local(tmp_path_factory):
    """The GRID sweep run once on two local processes: (spec, its directory, its table)."""
    root = tmp_path_factory.mktemp("local")
    spec = sweep.load_sweep(_toml(root, GRID))
    df = sweep.run_sweep(spec, root / "out", n_jobs=2, progress=False)
    return spec, root / "out", df


# --------------------------------------------------------------------------------------------
# Grid expansion and cell ids
# --------------------------------------------------------------------------------------------


def test_grid_order_and_param_grid_applies_to_its_method_only(tmp_path):
    cells = sweep.load_sweep(_toml(tmp_path, GRID)).cells()
    # 2 noise x 2 staleness configurations, each: grpo once, drpo once per delta
    assert len(cells) == 4 * (1 + 2)
    assert [c.index for c in cells] == list(range(12))
    coords = [(c.coords["noise_std"], c.coords["staleness"]) for c in cells[::3]]
    assert coords == [(0.0, 0), (0.0, 2), (0.1, 0), (0.1, 2)]
    assert [c.method for c in cells[:3]] == ["grpo", "drpo", "drpo"]
    for c in cells:
        assert c.seeds == (0, 1) and c.config.env.vocab_size == 64 and c.config.train.steps == 5
        assert c.config.offpolicy.noise_std == c.coords["noise_std"] and isinstance(c.coords["noise_std"], float)
        if c.method == "grpo":
            assert "drpo.delta" not in c.coords and c.params == {"eps_low": 0.2, "eps_high": 0.28, "dual_clip": None}
        else:
            assert c.params == {"delta": c.coords["drpo.delta"]}
    assert [c.params["delta"] for c in cells if c.method == "drpo"] == [12.5, 0.15] * 4


def test_cell_ids_are_the_hash_of_the_cell_distinct_and_stable(tmp_path):
    cells = sweep.load_sweep(_toml(tmp_path, GRID)).cells()
    again = sweep.load_sweep(_toml(tmp_path, GRID, "copy.toml")).cells()
    assert [c.id for c in cells] == [c.id for c in again]
    assert len({c.id for c in cells}) == len(cells)
    for c in cells:
        canonical = json.dumps(
            {"config": c.config.flat(), "method": c.method, "params": c.params, "seeds": list(c.seeds)},
            sort_keys=True, separators=(",", ":"),
        )
        assert c.id == hashlib.sha256(canonical.encode()).hexdigest()[:16]
        assert c.file == f"cells/{c.id}.parquet"


def test_equal_computations_share_an_id_whatever_the_spelling(tmp_path):
    plain = sweep.load_sweep(_toml(tmp_path, HEAD + "[grid]\nnoise_std = [0.0]\n", "a.toml")).cells()
    spelled = sweep.load_sweep(
        _toml(tmp_path, HEAD.replace("[env]", "noise_std = 0\n[env]") + "[params.drpo]\ndelta = 12.5\n", "b.toml")
    ).cells()
    assert [c.id for c in plain] == [c.id for c in spelled]
    # ...and any difference in what is computed gives another id
    other_seeds = sweep.load_sweep(_toml(tmp_path, HEAD.replace("seeds = 2", "seeds = [0, 2]"), "c.toml")).cells()
    assert not {c.id for c in plain} & {c.id for c in other_seeds}


def test_a_dotted_key_and_a_method_table_mean_the_same_param_grid(tmp_path):
    quoted = sweep.load_sweep(_toml(tmp_path, HEAD + '[grid]\n"drpo.delta" = [2.5, 1]\n', "a.toml"))
    dotted = sweep.load_sweep(_toml(tmp_path, HEAD + "[grid]\ndrpo.delta = [2.5, 1]\n", "b.toml"))
    table = sweep.load_sweep(_toml(tmp_path, HEAD + "[grid.drpo]\ndelta = [2.5, 1]\n", "c.toml"))
    ids = [c.id for c in quoted.cells()]
    assert ids == [c.id for c in dotted.cells()] == [c.id for c in table.cells()] and len(ids) == 3
    assert [c.params for c in quoted.cells()][1:] == [{"delta": 2.5}, {"delta": 1.0}]


# --------------------------------------------------------------------------------------------
# Validation: one line naming the file and the key, before anything runs
# --------------------------------------------------------------------------------------------

BAD = [
    ("[grid]\nnoise_sdt = [0.1]\n", "noise_sdt"),
    ("[grid]\nstaleness = []\n", "staleness: empty list"),
    ("[grid]\nstaleness = 4\n", "staleness: expected a list"),
    ("[grid]\nstaleness = [1.5]\n", "staleness: expected int"),
    ("[grid]\nnoise_std = [0, 0.0]\n", "noise_std: [0.0, 0.0] lists a value twice"),
    ("[grid]\nnoise_std = [0.1, -1.0]\n", "cell noise_std=-1.0: noise_std must be finite and >= 0"),
    ("[grid]\nupdates_per_batch = [1, 3]\n", "cell updates_per_batch=3: updates_per_batch=3 must divide"),
    ('[grid]\n"dppo_tv.delta" = [0.1]\n', "dppo_tv.delta: 'dppo_tv' is not among the methods"),
    ('[grid]\n"drpo.deltaa" = [1.0]\n', "drpo.deltaa: objective 'drpo' has no parameter 'deltaa'"),
    ('[grid]\n"drpo.delta" = [1.0, 0.0]\n', "drpo.delta: drpo: parameter delta must be a finite number > 0"),
    ('[grid]\n"nope.delta" = [1.0]\n', "nope.delta: unknown objective 'nope'"),
    ("[grid]\nseeds = [1, 2]\n", "seeds: unknown configuration field (seeds are not a grid axis"),
    ("[grid]\nvocab_size = [32, 64]\n", "[grid] vocab_size: also set outside the grid"),
    ("[params.drpo]\ndelta = 2.5\n[grid]\n\"drpo.delta\" = [1.0]\n", "drpo.delta: also set in [params.drpo]"),
    ("[params.spo]\neps = 2.5\n", "[params.spo]: 'spo' is not among the methods"),
]


@pytest.mark.parametrize("extra, message", BAD, ids=[m.split(":")[0] for _, m in BAD])
def test_invalid_sweep_files_fail_in_one_line_naming_the_key(tmp_path, extra, message):
    path = _toml(tmp_path, HEAD + extra)
    with pytest.raises(ValueError) as info:
        sweep.load_sweep(path)
    text = str(info.value)
    assert text.startswith(f"{path}: ") and message in text and "\n" not in text


@pytest.mark.parametrize(
    "text, message",
    [
        (HEAD.replace('methods = ["grpo", "drpo"]', 'methods = ["grpo", "drpoo"]'), "methods: unknown drpoo"),
        (HEAD.replace('methods = ["grpo", "drpo"]', ""), "methods: missing"),
        (HEAD.replace("seeds = 2", "seeds = [1, 1]"), "seeds: [1, 1] lists a seed twice"),
        (HEAD.replace("seeds = 2", "seeds = 0"), "seeds: expected a number of seeds >= 1"),
        (HEAD + "preset = 'fp4'\n", "[train] has no field 'preset'"),  # TOML: a key after [train] is in [train]
        ('preset = "fp4"\n' + HEAD, "preset 'fp4'"),
        (HEAD + "[grid\n", "not valid TOML"),
        ("gird = 3\n" + HEAD, "unknown key 'gird'"),
    ],
)
def test_invalid_run_keys(tmp_path, text, message):
    path = _toml(tmp_path, text)
    with pytest.raises(ValueError) as info:
        sweep.load_sweep(path)
    assert str(info.value).startswith(f"{path}: ") and message in str(info.value) and "\n" not in str(info.value)


def test_cli_errors_exit_2_in_one_line_and_run_nothing(tmp_path, capsys):
    out = tmp_path / "out"
    # the first cell is valid, the second is not: nothing may run
    path = _toml(tmp_path, HEAD + "[grid]\nupdates_per_batch = [1, 3]\n")
    for argv, message in [
        (["sweep", str(path), "--out", str(out)], "updates_per_batch=3"),
        (["sweep", str(_toml(tmp_path, GRID, "ok.toml")), "--out", str(out), "--jobs", "0"], "--jobs must be"),
        (["sweep", str(_toml(tmp_path, GRID, "ok.toml")), "--out", str(out), "--jobs", "2", "--scheduler", "tcp://x:1"],
         "exclude each other"),
        (["sweep", str(tmp_path / "missing.toml"), "--out", str(out)], "missing.toml"),
        (["sweep", str(_toml(tmp_path, GRID, "ok.toml")), "--out", str(out), "--scheduler", "no address"],
         "scheduler 'no address': missing port number"),
    ]:
        assert cli.main(argv) == 2
        _, err = capsys.readouterr()
        assert err.startswith("drpo-sim sweep: error: ") and message in err and err.count("\n") == 1
    assert not out.exists()


# --------------------------------------------------------------------------------------------
# Results: exactly simulate's
# --------------------------------------------------------------------------------------------


def test_each_cell_is_exactly_simulate_of_that_cell(local):
    spec, out, df = local
    for cell in spec.cells():
        stored, meta = read_results(out / cell.file)
        expected = simulate(cell.config, [cell.method], cell.seeds, method_params={cell.method: cell.params})
        expected.insert(0, "cell", cell.id)
        pd.testing.assert_frame_equal(stored, expected)
        assert meta["cell"] == cell.id and meta["grid"] == cell.coords and meta["seeds"] == [0, 1]


def test_results_are_the_cells_in_grid_order_laid_out_as_simulate(local):
    spec, out, df = local
    cells = spec.cells()
    assert list(df["cell"].drop_duplicates()) == [c.id for c in cells]
    assert df.groupby(["cell", "method", "seed", "step"]).size().eq(1).all() and len(df) == 12 * 2 * 5
    # one configuration, grpo and drpo at delta 0.15: what one simulate call gives for both
    cfg = cells[3].config
    rows = df[df["cell"].isin([cells[3].id, cells[5].id])].drop(columns="cell").reset_index(drop=True)
    expected = simulate(cfg, ["grpo", "drpo"], [0, 1], method_params={"drpo": {"delta": 0.15}})
    pd.testing.assert_frame_equal(rows, expected)
    assert list(df.columns[:4]) == ["cell", "method", "seed", "step"]
    index = sweep.read_index(out)
    assert index["complete"] and [c["cell"] for c in index["cells"]] == [c.id for c in cells]
    assert {c["status"] for c in index["cells"]} == {"done"} and index["last_run"]["ran"] == 12


# --------------------------------------------------------------------------------------------
# Resume
# --------------------------------------------------------------------------------------------


def test_rerun_skips_everything_and_a_deleted_cell_alone_reruns(local, tmp_path):
    spec, done, df = local
    out = tmp_path / "out"
    shutil.copytree(done, out)
    before = (out / "results.parquet").read_bytes()
    pd.testing.assert_frame_equal(sweep.run_sweep(spec, out, n_jobs=1, progress=False), df)
    assert sweep.read_index(out)["last_run"] | {"wall_s": 0} == {
        "ran": 0, "skipped": 12, "rerun_unreadable": 0, "stale_tmp_removed": 0, "total": 12, "rows": 120,
        "executor": "none (every cell was done)", "wall_s": 0,
    }
    assert (out / "results.parquet").read_bytes() == before

    victim, garbled = spec.cells()[4], spec.cells()[7]
    (out / victim.file).unlink()
    (out / garbled.file).write_bytes(b"not parquet")  # no atomic write leaves this, a damaged disk might
    (out / "cells" / f".{victim.id}.parquet.x1y2.tmp").write_bytes(b"half a file")  # what kill -9 can leave
    sweep.run_sweep(spec, out, n_jobs=1, progress=False)
    index = sweep.read_index(out)
    assert [c["cell"] for c in index["cells"] if c["this_run"] == "ran"] == [victim.id, garbled.id]
    assert index["last_run"]["rerun_unreadable"] == 1 and index["last_run"]["stale_tmp_removed"] == 1
    assert (out / "results.parquet").read_bytes() == before
    assert not list(out.rglob("*.tmp"))


def test_a_cell_file_of_another_version_is_an_error(local, tmp_path):
    spec, done, _ = local
    out = tmp_path / "out"
    shutil.copytree(done, out)
    cell = spec.cells()[0]
    df, meta = read_results(out / cell.file)
    write_results(df, out / cell.file, {**meta, "version": "0.0.1"})
    with pytest.raises(ValueError, match=r"written by drpo_sim 0\.0\.1.*fresh directory"):
        sweep.run_sweep(spec, out, n_jobs=1, progress=False)


def test_an_unfinished_sweep_cannot_be_read(local, tmp_path):
    spec, done, _ = local
    out = tmp_path / "out"
    shutil.copytree(done, out)
    index = sweep.read_index(out)
    (out / "sweep.json").write_text(json.dumps({**index, "complete": False}))
    with pytest.raises(ValueError, match="unfinished"):
        sweep.read_sweep(out)


def test_two_drivers_cannot_write_into_one_directory(local, tmp_path):
    import fcntl

    spec, _, _ = local
    (tmp_path / "out").mkdir()
    with open(tmp_path / "out" / ".lock", "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)  # as a running sweep holds it
        with pytest.raises(OSError, match="another sweep is writing into this directory"):
            sweep.run_sweep(spec, tmp_path / "out", n_jobs=1, progress=False)
    assert not (tmp_path / "out" / "cells").exists()


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
    path = _toml(tmp_path, KILL)
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
    resumed = _frame(out)
    reference = sweep.run_sweep(spec, tmp_path / "uninterrupted", n_jobs=2, progress=False)
    pd.testing.assert_frame_equal(resumed, reference)
    assert not resumed.duplicated(["cell", "method", "seed", "step"]).any() and len(resumed) == n * 3 * 200
    assert not list(out.rglob("*.tmp"))
    assert (out / "results.parquet").read_bytes() == (tmp_path / "uninterrupted" / "results.parquet").read_bytes()


# --------------------------------------------------------------------------------------------
# Dask
# --------------------------------------------------------------------------------------------


def test_dask_local_cluster_gives_exactly_the_local_results(local, tmp_path):
    from dask.distributed import LocalCluster

    spec, done, df = local
    with LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1", dashboard_address=None
    ) as cluster:
        out = tmp_path / "dask"
        got = sweep.run_sweep(spec, out, scheduler=cluster.scheduler_address, progress=False)
    pd.testing.assert_frame_equal(got, df)
    assert (out / "results.parquet").read_bytes() == (done / "results.parquet").read_bytes()
    assert sweep.read_index(out)["last_run"]["executor"] == f"dask {cluster.scheduler_address}"
