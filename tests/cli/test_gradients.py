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
