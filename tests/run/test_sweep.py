"""Sweeps (drpo_sim.run.sweep): grid expansion, cell ids, validation, equality with `simulate`, the
index, and a store written by other simulator code. Resuming, killing and the lock are tested
with the store (test_store.py), Dask with the executor (test_executor.py)."""

from __future__ import annotations

import hashlib
import json
import shutil

import pandas as pd
import pytest
from run_fixtures import GRID, HEAD, run_grid, toml

from drpo_sim import cli
from drpo_sim.results import read_results
from drpo_sim.run import sweep
from drpo_sim.run.cells import Kind
from drpo_sim.run.store import CellStore
from drpo_sim.sim import SimConfig, simulate


@pytest.fixture(scope="module")
def local(tmp_path_factory):
    """The GRID sweep run once on two local processes: (spec, its directory, its table)."""
    return run_grid(tmp_path_factory.mktemp("local"), n_jobs=2)


# --------------------------------------------------------------------------------------------
# Grid expansion and cell ids
# --------------------------------------------------------------------------------------------


def test_grid_order_and_param_grid_applies_to_its_method_only(tmp_path):
    cells = sweep.load_sweep(toml(tmp_path, GRID)).cells()
    # 2 noise x 2 staleness configurations, each: grpo once, drpo once per delta
    assert len(cells) == 4 * (1 + 2)
    coords = [(c.labels["noise_std"], c.labels["staleness"]) for c in cells[::3]]
    assert coords == [(0.0, 0), (0.0, 2), (0.1, 0), (0.1, 2)]
    assert [c.spec["method"] for c in cells[:3]] == ["grpo", "drpo", "drpo"]
    for c in cells:
        config = c.spec["config"]
        assert c.kind == "sim" and c.spec["seeds"] == [0, 1] and config["vocab_size"] == 64 and config["steps"] == 5
        assert config == SimConfig.from_flat(config).flat()  # the full flat configuration, defaults included
        assert config["noise_std"] == c.labels["noise_std"] and isinstance(c.labels["noise_std"], float)
        if c.spec["method"] == "grpo":
            assert "drpo.delta" not in c.labels
            assert c.spec["params"] == {"eps_low": 0.2, "eps_high": 0.28, "dual_clip": None}
        else:
            assert c.spec["params"] == {"delta": c.labels["drpo.delta"]}
    assert [c.spec["params"]["delta"] for c in cells if c.spec["method"] == "drpo"] == [12.5, 0.15] * 4


def test_cell_ids_are_the_hash_of_the_cell_distinct_and_stable(tmp_path):
    cells = sweep.load_sweep(toml(tmp_path, GRID)).cells()
    again = sweep.load_sweep(toml(tmp_path, GRID, "copy.toml")).cells()
    assert [c.id for c in cells] == [c.id for c in again]
    assert len({c.id for c in cells}) == len(cells)
    store = CellStore(tmp_path / "out" / sweep.CELLS_DIR)
    for c in cells:
        canonical = json.dumps({"kind": "sim", "spec": dict(c.spec), "code": c.code}, sort_keys=True,
                               separators=(",", ":"))
        assert c.id == hashlib.sha256(canonical.encode()).hexdigest()[:16]
        assert store.path(c) == tmp_path / "out" / "cells" / f"{c.id}.parquet"


def test_equal_computations_share_an_id_whatever_the_spelling(tmp_path):
    plain = sweep.load_sweep(toml(tmp_path, HEAD + "[grid]\nnoise_std = [0.0]\n", "a.toml")).cells()
    spelled = sweep.load_sweep(
        toml(tmp_path, HEAD.replace("[env]", "noise_std = 0\n[env]") + "[params.drpo]\ndelta = 12.5\n", "b.toml")
    ).cells()
    assert [c.id for c in plain] == [c.id for c in spelled]
    # ...and any difference in what is computed gives another id
    other_seeds = sweep.load_sweep(toml(tmp_path, HEAD.replace("seeds = 2", "seeds = [0, 2]"), "c.toml")).cells()
    assert not {c.id for c in plain} & {c.id for c in other_seeds}


def test_a_dotted_key_and_a_method_table_mean_the_same_param_grid(tmp_path):
    quoted = sweep.load_sweep(toml(tmp_path, HEAD + '[grid]\n"drpo.delta" = [2.5, 1]\n', "a.toml"))
    dotted = sweep.load_sweep(toml(tmp_path, HEAD + "[grid]\ndrpo.delta = [2.5, 1]\n", "b.toml"))
    table = sweep.load_sweep(toml(tmp_path, HEAD + "[grid.drpo]\ndelta = [2.5, 1]\n", "c.toml"))
    ids = [c.id for c in quoted.cells()]
    assert ids == [c.id for c in dotted.cells()] == [c.id for c in table.cells()] and len(ids) == 3
    assert [c.spec["params"] for c in quoted.cells()][1:] == [{"delta": 2.5}, {"delta": 1.0}]


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
    path = toml(tmp_path, HEAD + extra)
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
    path = toml(tmp_path, text)
    with pytest.raises(ValueError) as info:
        sweep.load_sweep(path)
    assert str(info.value).startswith(f"{path}: ") and message in str(info.value) and "\n" not in str(info.value)


def test_cli_errors_exit_2_in_one_line_and_run_nothing(tmp_path, capsys):
    out = tmp_path / "out"
    # the first cell is valid, the second is not: nothing may run
    path = toml(tmp_path, HEAD + "[grid]\nupdates_per_batch = [1, 3]\n")
    for argv, message in [
        (["sweep", str(path), "--out", str(out)], "updates_per_batch=3"),
        (["sweep", str(toml(tmp_path, GRID, "ok.toml")), "--out", str(out), "--jobs", "0"], "--jobs must be"),
        (["sweep", str(toml(tmp_path, GRID, "ok.toml")), "--out", str(out), "--jobs", "2", "--scheduler", "tcp://x:1"],
         "exclude each other"),
        (["sweep", str(tmp_path / "missing.toml"), "--out", str(out)], "missing.toml"),
        (["sweep", str(toml(tmp_path, GRID, "ok.toml")), "--out", str(out), "--scheduler", "no address"],
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
    store = CellStore(out / sweep.CELLS_DIR)
    for cell in spec.cells():
        stored, meta = read_results(store.path(cell))
        method = cell.spec["method"]
        expected = simulate(SimConfig.from_flat(cell.spec["config"]), [method], cell.spec["seeds"],
                            method_params={method: cell.spec["params"]})
        pd.testing.assert_frame_equal(stored, expected)
        assert meta["cell"] == cell.id and meta["labels"] == cell.labels and meta["spec"]["seeds"] == [0, 1]
        assert meta["code"] == cell.code
        # and in the sweep's table, under its id
        rows = df[df["cell"] == cell.id].drop(columns="cell").reset_index(drop=True)
        pd.testing.assert_frame_equal(rows[expected.columns], expected)


def test_results_are_the_cells_in_grid_order_laid_out_as_simulate(local):
    spec, out, df = local
    cells = spec.cells()
    assert list(df["cell"].drop_duplicates()) == [c.id for c in cells]
    assert df.groupby(["cell", "method", "seed", "step"]).size().eq(1).all() and len(df) == 12 * 2 * 5
    # one configuration, grpo and drpo at delta 0.15: what one simulate call gives for both
    cfg = SimConfig.from_flat(cells[3].spec["config"])
    rows = df[df["cell"].isin([cells[3].id, cells[5].id])].drop(columns="cell").reset_index(drop=True)
    expected = simulate(cfg, ["grpo", "drpo"], [0, 1], method_params={"drpo": {"delta": 0.15}})
    pd.testing.assert_frame_equal(rows, expected)
    assert list(df.columns[:4]) == ["cell", "method", "seed", "step"]
    index = sweep.read_index(out)
    assert index["complete"] and [c["cell"] for c in index["cells"]] == [c.id for c in cells]
    assert [c["index"] for c in index["cells"]] == list(range(12))
    assert [c["file"] for c in index["cells"]] == [f"cells/{c.id}.parquet" for c in cells]
    assert [c["grid"] for c in index["cells"]] == [dict(c.labels) for c in cells]
    assert {c["status"] for c in index["cells"]} == {"done"} and index["last_run"]["ran"] == 12
    stored, meta = read_results(out / sweep.RESULTS_FILE)
    pd.testing.assert_frame_equal(stored, df)
    assert meta["cells"] == [c.id for c in cells] and meta["sweep"] == spec.describe()


def test_table_checks_one_row_per_seed_and_step(local):
    spec, out, df = local
    cells = spec.cells()[:2]
    store = CellStore(out / sweep.CELLS_DIR)
    tables = [store.read(c) for c in cells]
    pd.testing.assert_frame_equal(sweep.table(cells, tables),
                                  df[df["cell"].isin([c.id for c in cells])].reset_index(drop=True))
    with pytest.raises(RuntimeError, match=rf"cell {cells[0].id}: 9 rows, expected 10 distinct \(seed, step\)"):
        sweep.table(cells, [tables[0].iloc[1:], tables[1]])


# --------------------------------------------------------------------------------------------
# Other code, unfinished sweeps
# --------------------------------------------------------------------------------------------


def test_a_store_of_other_simulator_code_is_never_reused(local, tmp_path, monkeypatch):
    """Cells carry the simulator's code digest, so a sweep rerun after an edit of the simulator
    recomputes every cell under new ids, beside the old ones, never mixed with them."""
    spec, done, df = local
    out = tmp_path / "out"
    shutil.copytree(done, out)
    old = {c.id for c in spec.cells()}
    monkeypatch.setattr(Kind, "code", property(lambda self: "e" * 16))  # an edited simulator
    edited = sweep.load_sweep(toml(tmp_path, GRID))
    new = {c.id for c in edited.cells()}
    assert not new & old and len(new) == 12
    got = sweep.run_sweep(edited, out, n_jobs=1, progress=False)
    last = sweep.read_index(out)["last_run"]
    assert (last["ran"], last["skipped"]) == (12, 0)
    assert {p.name.split(".")[0] for p in (out / "cells").glob("*.parquet")} == old | new
    assert list(got["cell"].drop_duplicates()) == [c.id for c in edited.cells()]
    # the same code on the same seeds: the same numbers
    pd.testing.assert_frame_equal(got.drop(columns="cell"), df.drop(columns="cell"))


def test_an_unfinished_sweep_cannot_be_read(local, tmp_path):
    spec, done, _ = local
    out = tmp_path / "out"
    shutil.copytree(done, out)
    index = sweep.read_index(out)
    (out / "sweep.json").write_text(json.dumps({**index, "complete": False}))
    with pytest.raises(ValueError, match=r"the sweep is unfinished \(12 of 12 cells done\)"):
        sweep.read_sweep(out)
    with pytest.raises(FileNotFoundError, match="no sweep index"):
        sweep.read_index(tmp_path / "nowhere")
