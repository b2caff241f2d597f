"""``drpo-sim arena``: a short run end to end, and every impossible configuration as one line and
exit status 2."""

from __future__ import annotations

import pytest

from drpo_sim import cli
from drpo_sim.results import read_results

pytestmark = pytest.mark.slow(seconds=30)


def test_arena_run_writes_the_table_and_prints_the_summary_on_cpu(tmp_path, capsys):
    out = tmp_path / "arena.parquet"
    rc = cli.main(["arena", "run", "--out", str(out), "--objectives", "pg_is,ppo@recomputed,drpo",
                   "--param", "drpo.delta=2.5", "--seeds", "2", "--steps", "2", "--eval-every", "1",
                   "--reward-scale-spread", "1.5", "--no-progress"])
    assert rc == 0
    df, meta = read_results(out)
    assert sorted(df["method"].unique()) == ["drpo delta 2.5", "pg_is", "ppo (recomputed anchor)"]
    assert len(df) == 3 * 2 * 2 and meta["device"] == "cpu"
    assert meta["contestants"][2]["params"]["delta"] == 2.5
    assert set(df["reward_scale_spread"]) == {1.5} and meta["arena"]["reward_scale_spread"] == 1.5
    text = capsys.readouterr().out
    assert "collapse_rate" in text and "anchor=recomputed" in text and f"wrote {out}" in text


@pytest.mark.parametrize("flags, message", [
    (["--precision", "fp4"], "unknown precision 'fp4'; valid: fp32, bf16, fp16, fp8"),
    (["--routing-replay"], "routing replay needs a mixture-of-experts model"),
    (["--response-len", "100"], "the model cannot represent the task"),
    (["--objectives", "pg_is@engine"], "unknown anchor 'engine'"),
    (["--param", "spo.eps=2"], "--param names spo, which is not among --objectives"),
    (["--seeds", "0"], "--seeds must be at least 1"),
    (["--reward-scale-spread", "7"], "reward_scale_spread must be in [0, 6] decades, got 7.0"),
])
def test_impossible_configurations_exit_2_with_one_line(flags, message, tmp_path, capsys):
    rc = cli.main(["arena", "run", "--out", str(tmp_path / "a.parquet"), "--steps", "1", *flags])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err.count("\n") == 0 and message in err
    assert err.startswith("drpo-sim arena: error: ")
    assert not (tmp_path / "a.parquet").exists()
