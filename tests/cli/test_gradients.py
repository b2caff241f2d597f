"""``drpo-sim gradients``: the table printed and written, and bad options as one line and exit 2."""

from __future__ import annotations

import pandas as pd
import pytest

from drpo_sim import cli, gradients


def test_gradients_prints_and_writes_the_table_on_cpu(tmp_path, capsys):
    out = tmp_path / "g.csv"
    rc = cli.main(["gradients", "--objectives", "pg_is,drpo,cispo", "--param", "drpo.delta=0.15",
                   "--param", "cispo.cap=10", "--vocab", "64", "--batches", "50", "--samples", "16",
                   "--csv", str(out)])
    assert rc == 0
    text = capsys.readouterr().out
    assert "V=64" in text and "drpo(delta=0.15)" in text and "cispo(eps_high=0.28, cap=10)" in text
    table = pd.read_csv(out)
    assert list(table["objective"]) == ["pg_is()", "drpo(delta=0.15)", "cispo(eps_high=0.28, cap=10)"]
    assert set(gradients.DIAGNOSTICS) <= set(table.columns) and (table["cosine"] <= 1 + 1e-12).all()
    assert not list(tmp_path.glob("*.tmp"))


def test_on_policy_every_ratio_is_one_on_cpu(tmp_path, capsys):
    out = tmp_path / "g.csv"
    assert cli.main(["gradients", "--objectives", "pg_is,grpo", "--engine-noise", "0", "--vocab", "32",
                     "--batches", "20", "--samples", "8", "--csv", str(out)]) == 0
    table = pd.read_csv(out)
    assert (table["ess"] == 1).all()
    assert table.loc[0, "bias_norm"] == table.loc[1, "bias_norm"]  # r = 1: GRPO's clip never acts


@pytest.mark.parametrize("flags, message", [
    (["--engine-noise", "-1"], "--engine-noise must be a finite number >= 0"),
    (["--objectives", "trpo"], "unknown objective 'trpo'"),
    (["--samples", "1"], "n_samples must be an integer >= 2"),
    (["--objectives", "pg_is", "--param", "spo.eps=2"], "parameters given for ['spo']"),
])
def test_bad_options_exit_2_with_one_line(flags, message, capsys):
    rc = cli.main(["gradients", "--vocab", "32", "--batches", "4", *flags])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err.count("\n") == 0 and err.startswith("drpo-sim gradients: error: ") and message in err


def test_the_quick_sweep_writes_the_table_the_figure_and_the_verdict_on_cpu(tmp_path, capsys):
    assert cli.main(["gradients", "--sweep", "--quick", "--out", str(tmp_path)]) == 0
    text = capsys.readouterr().out
    table = pd.read_csv(tmp_path / "gradient_diagnostics.csv")
    labels = list(gradients.SWEEP_OBJECTIVES)
    assert len(table) == 2 * 2 * len(labels) and set(table["label"]) == set(labels)
    assert {"env", "noise_std", "staleness", "kl_engine", "kl_stale", *gradients.DIAGNOSTICS, *gradients.PAIRED} <= set(
        table.columns)
    assert (tmp_path / "gradient_diagnostics.png").stat().st_size > 10_000
    verdict = pd.read_csv(tmp_path / "gradient_diagnostics_equivalence.csv")
    assert len(verdict) == 4 and set(verdict["verdict"]) <= {"equivalent", "different", "undecided"}
    assert "drpo (delta 12.5) against pg_is" in text and not list(tmp_path.glob("*.tmp"))


def test_one_tabular_setting_with_staleness_and_a_custom_sweep_on_cpu(tmp_path, capsys):
    out = tmp_path / "t.csv"
    assert cli.main(["gradients", "--env", "tabular", "--objectives", "pg_is,minirl,gspo", "--vocab", "16",
                     "--prompts", "2", "--horizon", "3", "--staleness", "2", "--batches", "20", "--samples", "4",
                     "--csv", str(out)]) == 0
    assert "the tabular task, V=16, 2 prompts x 3 positions" in capsys.readouterr().out
    assert len(pd.read_csv(out)) == 3
    assert cli.main(["gradients", "--sweep", "--env", "tabular", "--objectives", "pg_is,decoupled_ppo",
                     "--noise-grid", "0,0.5,1", "--staleness-grid", "1", "--vocab", "16", "--batches", "10",
                     "--out", str(tmp_path)]) == 0
    table = pd.read_csv(tmp_path / "gradient_diagnostics_tabular.csv")
    assert len(table) == 6 and (table["env"] == "tabular").all() and sorted(table["noise_std"].unique()) == [0, 0.5, 1]
    assert (tmp_path / "gradient_diagnostics_tabular.png").exists()
    assert not (tmp_path / "gradient_diagnostics_tabular_equivalence.csv").exists()  # no drpo (delta 12.5) here


@pytest.mark.parametrize("flags, message", [
    (["--sweep"], "--sweep needs --out DIR"),
    (["--out", "x"], "--out, --quick, --full, --noise-grid and --staleness-grid belong to --sweep"),
    (["--full"], "belong to --sweep"),
    (["--sweep", "--out", "x", "--csv", "y.csv"], "--csv is for one setting"),
    (["--sweep", "--out", "x", "--noise-grid", "0,a"], "--noise-grid: not a comma-separated list"),
    (["--sweep", "--out", "x", "--noise-grid", "-1"], "engine noise stds must be finite numbers >= 0"),
    (["--sweep", "--out", "x", "--staleness-grid", "0,-2"], "--staleness-grid: values must be >= 0"),
    (["--staleness", "-1"], "--staleness must be >= 0"),
    (["--step-kl", "0"], "--step-kl must be a finite number > 0"),
    (["--env", "tabular", "--vocab", "1"], "vocab_size must be in"),
])
def test_bad_sweep_options_exit_2_with_one_line(flags, message, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    rc = cli.main(["gradients", "--vocab", "32", "--batches", "4", *flags])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err.count("\n") == 0 and err.startswith("drpo-sim gradients: error: ") and message in err
    assert not list(tmp_path.iterdir())  # nothing written
