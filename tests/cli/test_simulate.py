"""``drpo-sim simulate``, ``summarize`` (:mod:`drpo_sim.cli.simulate`) end to end, and their errors."""

import numpy as np
import pytest
from PIL import Image

from drpo_sim import cli, objectives
from drpo_sim.results import read_results
from drpo_sim.tokens import load_token_log, read_token_log_metadata

QUICK = ["--seeds", "3", "--steps", "6", "--vocab-size", "64", "--group-size", "8", "--no-progress"]
CHANNELS = [
    "--preset", "fp8", "--noise-dist", "student_t", "--bias-std", "0.05", "--trainer-precision", "bf16",
    "--top-p", "0.95", "--staleness", "2", "--updates-per-batch", "2", "--anchor", "recompute",
]


def _run(argv, capsys):
    rc = cli.main(argv)
    out, err = capsys.readouterr()
    return rc, out, err


@pytest.mark.parametrize("env", ["bandit", "tabular"])
def test_simulate_every_objective_with_every_channel(tmp_path, capsys, env):
    out = tmp_path / "r.parquet"
    argv = ["simulate", "--env", env, "--methods", ",".join(objectives.available()), "--out", str(out),
            *QUICK, *CHANNELS]
    rc, text, err = _run(argv, capsys)
    assert rc == 0, err
    df, meta = read_results(out)
    assert sorted(df.method.unique()) == sorted(objectives.available())
    assert len(df) == len(objectives.available()) * 3 * 6
    assert np.isfinite(df.expected_reward).all()
    assert (df.shift_max > 0).all()  # every channel is on: mu != pi
    assert meta["config"]["anchor"] == "recompute" and meta["config"]["precision"] == "fp8_e4m3"
    assert meta["preset"] == "fp8" and meta["seeds"] == [0, 1, 2] and meta["version"]
    for col in ("noise_std", "staleness", "updates_per_batch", "top_p", "env"):
        assert df[col].nunique() == 1
    assert "final_iqm" in text


def test_simulate_exact_mode(tmp_path, capsys):
    out = tmp_path / "e.parquet"
    rc, _, err = _run(["simulate", "--mode", "exact", "--methods", "drpo,spo", "--out", str(out), *QUICK,
                       "--preset", "bf16"], capsys)
    assert rc == 0, err
    df, _ = read_results(out)
    assert df["mode"].eq("exact").all() and len(df) == 2 * 3 * 6


def test_same_command_gives_identical_files(tmp_path, capsys):
    a, b = tmp_path / "a.parquet", tmp_path / "b.parquet"
    for out in (a, b):
        argv = ["simulate", "--methods", "grpo,drpo", "--out", str(out), *QUICK, "--preset", "fp8", "--staleness", "1"]
        assert _run(argv, capsys)[0] == 0
    assert a.read_bytes() == b.read_bytes()


def test_config_file_params_and_token_logs(tmp_path, capsys):
    toml = tmp_path / "exp.toml"
    toml.write_text(
        'methods = ["dppo_tv", "drpo"]\nseeds = 2\npreset = "fp8"\n'
        "[env]\nenv = \"tabular\"\nvocab_size = 16\nhorizon = 3\n"
        "[train]\nsteps = 4\ngroup_size = 4\n"
        "[offpolicy]\nstaleness = 1\n"
        "[params.drpo]\ndelta = 2.5\n"
    )
    out, tok = tmp_path / "r.parquet", tmp_path / "tokens"
    # a flag overrides the file; --param adds to it
    rc, _, err = _run(["simulate", "--config", str(toml), "--out", str(out), "--steps", "5",
                       "--param", "dppo_tv.delta=0.3", "--save-tokens", str(tok), "--no-progress"], capsys)
    assert rc == 0, err
    df, meta = read_results(out)
    assert df.steps.eq(5).all() and df.env.eq("tabular").all() and df.staleness.eq(1).all()
    assert meta["method_params"]["drpo"]["delta"] == 2.5 and meta["method_params"]["dppo_tv"]["delta"] == 0.3
    for m in ("dppo_tv", "drpo"):
        batch = load_token_log(tok / f"{m}.parquet")
        assert len(batch) == 2 * 5 * 8 * 4 * 3  # seeds x steps x prompts x group x horizon
        assert read_token_log_metadata(tok / f"{m}.parquet")["method"] == m
        assert set(np.unique(batch.step)) == {1, 2, 3, 4, 5}


def test_summarize_prints_and_plots(tmp_path, capsys):
    out = tmp_path / "r.parquet"
    assert _run(["simulate", "--methods", "pg_is,drpo", "--out", str(out), *QUICK, "--preset", "fp8"], capsys)[0] == 0
    png, csv = tmp_path / "curves.png", tmp_path / "s.csv"
    rc, text, err = _run(["summarize", str(out), "--plot", str(png), "--reference", "pg_is", "--threshold", "0.06",
                          "--csv", str(csv)], capsys)
    assert rc == 0, err
    assert "p_improve" in text and "drpo" in text and "steps_to_threshold_median" in text
    img = np.asarray(Image.open(png).convert("L"), dtype=float)
    assert img.shape[0] > 200 and img.std() > 10  # a real, non-blank image
    assert csv.read_text().startswith("method,")


@pytest.mark.parametrize(
    "argv, needle",
    [
        (["simulate", "--methods", "drpo,dpo", "--out", "X"], "unknown method"),
        (["simulate", "--methods", "drpo", "--param", "drpo.delta", "--out", "X"], "expected METHOD.NAME=VALUE"),
        (["simulate", "--methods", "drpo", "--param", "drpo.gamma=1", "--out", "X"], "gamma"),
        (["simulate", "--methods", "drpo", "--param", "spo.eps=1", "--out", "X"], "not among the methods"),
        (["simulate", "--methods", "drpo", "--preset", "fp4", "--out", "X"], "--preset"),
        (["simulate", "--methods", "drpo", "--precision", "fp4", "--out", "X"], "unknown precision"),
        (["simulate", "--methods", "drpo", "--updates-per-batch", "3", "--out", "X"], "must divide"),
        (["simulate", "--methods", "drpo", "--seeds", "0", "--out", "X"], "--seeds"),
        (["simulate", "--methods", "drpo"], "--out"),
        (["simulate", "--mode", "exact", "--save-tokens", "D", "--out", "X"], "sampled mode"),
        (["summarize", "nope.parquet"], "no such result file"),
    ],
)
def test_errors_are_one_line_and_exit_2(tmp_path, capsys, monkeypatch, argv, needle):
    monkeypatch.chdir(tmp_path)
    rc, _, err = _run(argv, capsys)
    assert rc == 2
    assert needle in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "X").exists()


def test_bad_config_and_result_files(tmp_path, capsys):
    bad = tmp_path / "bad.toml"
    bad.write_text("[offpolicy]\nlr = 0.1\n")
    rc, _, err = _run(["simulate", "--config", str(bad), "--out", str(tmp_path / "x.parquet")], capsys)
    assert rc == 2 and "[offpolicy] has no field 'lr'" in err
    bad.write_text("seeds = [\n")
    rc, _, err = _run(["simulate", "--config", str(bad), "--out", str(tmp_path / "x.parquet")], capsys)
    assert rc == 2 and "not valid TOML" in err
    junk = tmp_path / "junk.parquet"
    junk.write_bytes(b"PAR1 this is not parquet")
    rc, _, err = _run(["summarize", str(junk)], capsys)
    assert rc == 2 and "not a readable Parquet file" in err
