"""``drpo-sim lm`` (drpo_sim.cli.lab): pretrain, train and compare from the command line, as a user
runs them; bad input is one line on stderr and exit status 2."""

from __future__ import annotations

import json
import shutil

import pandas as pd
import pyarrow.parquet as pq
import pytest

from drpo_sim import cli
from drpo_sim.cli import lab as lab_cli
from drpo_sim.config import LAB_OBJECTIVES, LAB_PRECISIONS
from drpo_sim.paper.analyses.tiny_lm import SPEC
from drpo_sim.results import read_results
from drpo_sim.run.lab import CACHE_DIR
from drpo_sim.tokens import load_token_log


def run(argv, capsys):
    code = cli.main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def seed_cache(out, ckpt):
    """Put the shared checkpoint where ``lm compare`` looks for it, so nothing is pretrained again."""
    (out / CACHE_DIR).mkdir(parents=True, exist_ok=True)
    shutil.copy(ckpt.path, out / CACHE_DIR / ckpt.path.name)


def test_cli_pretrain_and_train(tmp_path, lm_checkpoint, capsys):
    code, out, _ = run(["lm", "pretrain", "--out", str(lm_checkpoint.path.parent), "--no-progress"], capsys)
    assert code == 0 and "cached" in out and str(lm_checkpoint.path) in out
    code, out, err = run(["lm", "train", "--objective", "drpo", "--param", "drpo.delta=2.5", "--precision", "bf16",
                          "--seed", "1", "--steps", "2", "--out", str(tmp_path), "--checkpoint",
                          str(lm_checkpoint.path), "--save-tokens", "--no-progress"], capsys)
    assert code == 0, err
    df, meta = read_results(tmp_path / "lm_drpo_bf16_seed1.parquet")
    assert len(df) == 2 and json.loads(df["method_params"].iloc[0]) == {"delta": 2.5}
    assert meta["lab"]["precision"] == "bf16" and meta["lab"]["seed"] == 1
    assert pq.read_metadata(tmp_path / "lm_drpo_bf16_seed1_tokens.parquet").num_rows > 0
    assert f"results: {tmp_path / 'lm_drpo_bf16_seed1.parquet'}" in out and "token log:" in out


@pytest.mark.parametrize(
    "argv, message",
    [
        (["lm", "train", "--objective", "drpo", "--param", "ppo.eps_low=0.1"], "objective is 'drpo'"),
        (["lm", "train", "--param", "drpo.eps=1"], "no parameter"),
        (["lm", "train", "--precision", "fp4"], "unknown precision 'fp4'"),
        (["lm", "train", "--param", "drpo.delta"], "expected METHOD.NAME=VALUE"),
        (["lm", "compare", "--precisions", "fp4"], "unknown precision(s) fp4"),
        (["lm", "compare", "--formats", "gif"], "--formats: unsupported gif"),
        (["lm", "compare", "--objectives", "pg_is,nope"], "unknown objective 'nope'"),
        (["lm", "compare", "--seeds", "0"], "--seeds must be a positive number of seeds, got 0"),
        (["lm", "compare", "--steps", "-1"], "--steps must be a positive number of steps, got -1"),
        (["lm", "compare", "--param", "spo.eps=1", "--objectives", "drpo"], "parameters given for spo"),
        (["lm", "mismatch", "--precisions", "bf16,int4"], "--precisions 'bf16,int4': unknown int4; valid: fp32"),
        (["lm", "mismatch", "--precisions", ""], "unknown (none given)"),
        (["lm", "mismatch", "--prompts", "0"], "--prompts must be a positive number of responses, got 0"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(tmp_path, capsys, argv, message):
    code, out, err = run([*argv, "--out", str(tmp_path / "out"), "--no-progress"], capsys)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("drpo-sim lm: error: ") and message in lines[0], err
    assert not (tmp_path / "out").exists()  # refused before any work


def test_compare_profiles_and_defaults(tmp_path, capsys, monkeypatch):
    """``--quick`` (the default) and ``--full`` are the lab analysis's profiles; flags override them."""
    seen = []

    def fake_compare(objectives, precisions, seeds, steps, out, **kwargs):
        seen.append({"objectives": objectives, "precisions": precisions, "seeds": seeds, "steps": steps, **kwargs})
        raise ValueError("stop here")

    monkeypatch.setattr(lab_cli.lab, "compare", fake_compare)
    for argv, profile in ((["--quick"], "quick"), ([], "quick"), (["--full"], "full")):
        assert run(["lm", "compare", *argv, "--out", str(tmp_path)], capsys)[0] == 2
        got, prof = seen[-1], SPEC.profile(profile)
        assert (got["seeds"], got["steps"]) == (prof.seeds, prof.steps)
        assert got["token_log_objectives"] == prof.token_log_objectives
        assert tuple(got["objectives"]) == LAB_OBJECTIVES and tuple(got["precisions"]) == LAB_PRECISIONS
        assert got["runner"].store.root == tmp_path / "cells"
    assert (SPEC.profile("quick").seeds, SPEC.profile("quick").steps) == (2, 15)
    assert (SPEC.profile("full").seeds, SPEC.profile("full").steps) == (8, 100)
    run(["lm", "compare", "--full", "--seeds", "3", "--steps", "4", "--objectives", "drpo", "--jobs", "1",
         "--param", "drpo.delta=2.5", "--out", str(tmp_path)], capsys)
    got = seen[-1]
    assert (got["seeds"], got["steps"], got["objectives"]) == (3, 4, "drpo")
    assert got["params"] == {"drpo": {"delta": 2.5}} and got["runner"].n_jobs == 1
    with pytest.raises(SystemExit):
        cli.main(["lm", "compare", "--quick", "--full", "--out", str(tmp_path)])  # argparse: exclusive


def test_compare_quick_writes_the_table_figures_summary_and_token_logs(tmp_path, lm_checkpoint, capsys, monkeypatch):
    out = tmp_path / "out"
    seed_cache(out, lm_checkpoint)
    records = []

    def lab_figures(*args, **kwargs):  # the command's own figure job, its records kept for the checks below
        records.extend(real_lab_figures(*args, **kwargs))
        return records

    real_lab_figures = lab_cli.lab_figures
    monkeypatch.setattr(lab_cli, "lab_figures", lab_figures)
    code, stdout, err = run(["lm", "compare", "--quick", "--out", str(out), "--objectives", "pg_is,drpo",
                             "--precisions", "fp32,bf16", "--seeds", "2", "--steps", "3", "--jobs", "1",
                             "--no-progress"], capsys)
    assert code == 0, err
    df, meta = read_results(out / "lm_compare.parquet")
    assert len(df) == 2 * 2 * 2 * 3
    assert {"method", "precision", "seed", "step", "eval_reward", "mismatch_mean"} <= set(df.columns)
    assert (df.loc[df.precision == "fp32", "mismatch_mean"] == 0).all()
    assert (df.loc[df.precision == "bf16", "mismatch_mean"] > 0).all()
    assert meta["objectives"] == ["pg_is", "drpo"] and meta["seeds"] == [0, 1]
    # the figures and the summary (drpo_sim.paper.jobs.lab_figures), with their manifest records
    assert [r.figure for r in records] == ["lm_reward", "lm_mismatch"]
    for r in records:
        assert r.files and all((out / f).stat().st_size > 0 for f in r.files)
        assert (out / r.data).stat().st_size > 0
        json.dumps(r.config)  # goes into MANIFEST.json
        assert r.seeds == [0, 1] and r.job == "run.lab.compare" and r.config["profile"] == "quick"
    assert {f for r in records for f in r.files} == {"lm_reward.png", "lm_mismatch.png"}
    summary = pd.read_csv(out / SPEC.summary_file)
    assert len(summary) == 4
    assert {"final_iqm", "final_low", "final_high", "final", "mismatch_mean"} <= set(summary.columns)
    assert set(summary["method"]) == {"pg_is", "drpo"} and set(summary["precision"]) == {"fp32", "bf16"}
    # the quick profile keeps token logs of pg_is and drpo, first seed
    logs = sorted(p.name for p in (out / "lm_tokens").iterdir())
    assert logs == ["drpo_bf16_seed0.parquet", "drpo_fp32_seed0.parquet", "pg_is_bf16_seed0.parquet",
                    "pg_is_fp32_seed0.parquet"]
    assert len(load_token_log(out / "lm_tokens" / logs[0])) > 0
    assert "lm_reward" in stdout and "lm_mismatch" in stdout and f"results: {out / 'lm_compare.parquet'}" in stdout
    assert list((out / CACHE_DIR).iterdir()) == [out / CACHE_DIR / lm_checkpoint.path.name]  # nothing retrained


def test_mismatch_prints_each_engine_beside_the_published_sizes(tmp_path, lm_checkpoint, capsys):
    csv = tmp_path / "mismatch.csv"
    code, out, err = run(["lm", "mismatch", "--out", str(tmp_path), "--checkpoint", str(lm_checkpoint.path),
                          "--precisions", "fp32,bf16", "--prompts", "16", "--csv", str(csv)], capsys)
    assert code == 0, err
    assert out.startswith("trainer (float32) against each engine at initialisation, 16 responses each")
    table = pd.read_csv(csv).set_index("statistic")
    assert list(table.columns) == ["fp32", "bf16", "published bf16", "published fp16"]
    assert table.loc["mismatch_mean", "fp32"] == 0 and table.loc["mismatch_mean", "bf16"] > 0
    assert table.loc["mismatch_mean", "published bf16"] == 0.004 and table.loc["responses", "bf16"] == 16
    assert table.loc["rare_share", "published bf16"] == 0.078
    assert not (tmp_path / CACHE_DIR).exists()  # the given checkpoint was used, nothing pretrained
