"""``drpo-sim replay`` (:mod:`drpo_sim.cli.replay`) end to end: simulator logs, real-format fixtures,
bad input, drop mode, bounded memory."""

import json
import subprocess
import sys
from pathlib import Path

import logs_fixtures as fx
import numpy as np
import pandas as pd
import pytest
import torch

from drpo_sim import analysis, cli, objectives
from drpo_sim.config import parse_params
from drpo_sim.tokens import TokenBatch, load_token_log, read_token_log, write_token_log

ROOT = Path(__file__).resolve().parents[2]
TABLES = ("mismatch_by_mu.csv", "regions_by_mu.csv", "objectives.csv", "replay.json")
FIGURES = ("mismatch.png", "regions.png", "weights.png", "rare_tokens.png")


def run(capsys, *argv):
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def assert_outputs(out_dir, by_step=False):
    for name in TABLES + FIGURES + (("by_step.csv", "by_step.png") if by_step else ()):
        path = out_dir / name
        assert path.exists() and path.stat().st_size > 0, name


@pytest.fixture(scope="module")
def sim_log(tmp_path_factory):
    d = tmp_path_factory.mktemp("sim")
    code = cli.main(["simulate", "--env", "tabular", "--vocab-size", "64", "--n-prompts", "4", "--horizon", "3",
                     "--preset", "fp8", "--staleness", "2", "--methods", "drpo,grpo", "--seeds", "2", "--steps", "12",
                     "--out", str(d / "sim.parquet"), "--save-tokens", str(d / "tok"), "--no-progress"])
    assert code == 0
    return d / "tok"


def test_replay_a_simulator_log(tmp_path, capsys, sim_log):
    code, out, err = run(capsys, "replay", str(sim_log / "grpo.parquet"), "--out", str(tmp_path), "--no-progress",
                         "--param", "drpo.delta=0.5")
    assert code == 0, err
    assert_outputs(tmp_path, by_step=True)
    assert "tokens replayed" in out and "drpo" in out
    totals = json.loads((tmp_path / "replay.json").read_text())
    assert totals["source"]["format"] == "tokens"
    assert totals["objectives"]["drpo"] == "delta=0.5"
    obj = pd.read_csv(tmp_path / "objectives.csv").set_index("objective")
    n = sum(len(b) for b in read_token_log(sim_log / "grpo.parquet"))
    assert obj.loc["pg_is", "tokens"] + totals["excluded_tokens"] == n
    assert obj.loc["pg_is", "grad_mass_share"] == pytest.approx(1.0)


def test_replay_two_logs_and_a_subset_of_objectives(tmp_path, capsys, sim_log):
    code, out, err = run(capsys, "replay", str(sim_log), "--out", str(tmp_path), "--objectives", "spo,drpo",
                         "--no-progress", "--formats", "png,pdf")
    assert code == 0, err
    assert (tmp_path / "regions.pdf").exists()
    obj = pd.read_csv(tmp_path / "objectives.csv")
    assert list(obj["objective"]) == ["spo", "drpo"]
    totals = json.loads((tmp_path / "replay.json").read_text())
    assert totals["source"]["files"] == 2


def test_replay_a_nemo_rl_dump(tmp_path, capsys):
    d = tmp_path / "nemo"
    d.mkdir()
    fx.write_nemo(d / "train_data_step1.jsonl", fx.make_samples(0, 8))
    fx.write_nemo(d / "train_data_step2.jsonl", fx.make_samples(1, 8), seed=1)
    code, out, err = run(capsys, "replay", str(d), "--group-size", "4", "--out", str(tmp_path / "out"), "--no-progress")
    assert code == 0, err
    assert_outputs(tmp_path / "out", by_step=True)
    totals = json.loads((tmp_path / "out" / "replay.json").read_text())
    assert totals["source"]["format"] == "nemo_rl"
    by_step = pd.read_csv(tmp_path / "out" / "by_step.csv")
    assert list(by_step["step"]) == [1, 2]


def test_bad_rows_error_in_one_line_or_are_dropped_and_counted(tmp_path, capsys):
    path = tmp_path / "train_data_step1.jsonl"
    lines = fx.nemo_lines(fx.make_samples(0, 6))
    bad = json.loads(lines[2])
    p = bad["input_lengths"][0] - 1
    bad["prev_logprobs"][0][p] = 0.5  # a positive log-prob on a masked-in response token
    lines[2] = json.dumps(bad)
    path.write_text("\n".join(lines) + "\n")
    code, out, err = run(capsys, "replay", str(path), "--out", str(tmp_path / "a"), "--no-progress")
    assert code == 2
    assert len(err.strip().splitlines()) == 1
    assert "train_data_step1.jsonl" in err and "prev_logprobs" in err and "line 3" in err
    assert not (tmp_path / "a" / "replay.json").exists()

    code, out, err = run(capsys, "replay", str(path), "--out", str(tmp_path / "b"), "--on-invalid", "drop",
                         "--no-progress")
    assert code == 0, err
    assert "dropped" in out and "positive" in out
    totals = json.loads((tmp_path / "b" / "replay.json").read_text())
    assert totals["dropped"]["total_rows"] == 1 and totals["source"]["format"] == "nemo_rl"


def test_param_builds_a_corrected_objective():
    """``--param grpo.correction=tis --param grpo.cap=2``: the string passes through, the number is parsed."""
    params = parse_params(["grpo.correction=tis", "grpo.cap=2", "gspo.correction=seq_mis"])
    assert params == {"grpo": {"correction": "tis", "cap": 2}, "gspo": {"correction": "seq_mis"}}
    objs = analysis.objective_specs(["grpo", "gspo"], params)
    assert objs["grpo"] == objectives.get("grpo", correction="tis", cap=2)
    assert objs["gspo"] == objectives.get("gspo", correction="seq_mis")


def test_replay_three_policy_and_sequence_objectives_on_cpu(tmp_path, capsys, sim_log):
    """minirl, decoupled PPO, GSPO and corrected GRPO and DRPO on a simulator log (which has ``logp_old``),
    in batches of 100 tokens that cut its 3-token sequences: the tables are the registry's weights on
    the whole log, each sequence told apart by (seed, step, update, sample_id)."""
    names = ["minirl", "decoupled_ppo", "gspo", "grpo", "drpo"]
    code, out, err = run(capsys, "replay", str(sim_log / "grpo.parquet"), "--out", str(tmp_path), "--no-progress",
                         "--objectives", ",".join(names), "--param", "grpo.correction=tis", "--param", "grpo.cap=2",
                         "--param", "drpo.correction=seq_mis", "--param", "drpo.cap=1.05", "--batch-size", "100")
    assert code == 0, err
    assert_outputs(tmp_path, by_step=True)
    totals = json.loads((tmp_path / "replay.json").read_text())
    assert totals["objectives"]["grpo"] == "eps_low=0.2, eps_high=0.28, correction=tis, cap=2"
    assert totals["sequence_key"] == ["seed", "step", "update", "sample_id"] and totals["batches"] > 40
    b = load_token_log(sim_log / "grpo.parquet")
    keep = b.mask
    key = np.stack([b.seed, b.step, b.update, b.sample_id], axis=1)[keep]
    ids = np.unique(key, axis=0, return_inverse=True)[1].reshape(-1)
    assert totals["sequences"] == ids.max() + 1
    lp, lb, lo, a = b.logp[keep], b.logp_behavior[keep], b.logp_old[keep], b.advantage[keep]
    r = np.exp(lp - lb)
    objs = analysis.objective_specs(names, {"grpo": {"correction": "tis", "cap": 2},
                                            "drpo": {"correction": "seq_mis", "cap": 1.05}})
    table = pd.read_csv(tmp_path / "objectives.csv").set_index("objective")  # 8 significant digits
    assert list(table.index) == names
    for name, obj in objs.items():
        w = obj.weight(lp, lb, a, logp_old=lo, sample_id=ids)
        reg, row = objectives.Regions.from_weight(w), table.loc[name]
        for region in ("masked", "attenuated", "corrective", "amplified"):
            assert row[f"{region}_frac"] == pytest.approx(getattr(reg, region).mean(), rel=1e-7), (name, region)
        assert row["grad_mass_share"] == pytest.approx(np.abs(a * r * w).sum() / np.abs(a * r).sum(), rel=1e-7)
        assert row["weight_max"] == pytest.approx(w.max(), rel=1e-7)
    assert 0 < table.loc["gspo", "masked_frac"] < 1 and 0 < table.loc["drpo", "masked_frac"] < 1


def test_missing_logp_old_exits_2_and_old_logs_replay_as_before_on_cpu(tmp_path, capsys, sim_log):
    """A log without ``logp_old``: objectives that need it are refused in one line, before any output;
    the default objectives replay it exactly as the same log with the column."""
    b = load_token_log(sim_log / "grpo.parquet")
    old = tmp_path / "old.parquet"
    write_token_log(old, TokenBatch.from_arrays(**{k: v for k, v in b.columns.items() if k != "logp_old"}))
    code, out, err = run(capsys, "replay", str(old), "--out", str(tmp_path / "a"), "--no-progress",
                         "--objectives", "drpo,minirl,gspo")
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "minirl needs the column 'logp_old'" in err and "--objectives" in err
    assert not (tmp_path / "a").exists()
    for log, out_dir in ((old, "old"), (sim_log / "grpo.parquet", "new")):
        code, out, err = run(capsys, "replay", str(log), "--out", str(tmp_path / out_dir), "--no-progress")
        assert code == 0, err
    for name in ("objectives.csv", "regions_by_mu.csv", "mismatch_by_mu.csv", "by_step.csv"):
        pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "old" / name), pd.read_csv(tmp_path / "new" / name))
    assert "sequences" not in json.loads((tmp_path / "old" / "replay.json").read_text())


def test_topk_objectives_need_their_column_and_replay_with_it_on_cpu(tmp_path, capsys, sim_log):
    """A Top-K DPPO objective on a log without ``topk_tv`` exits 2 with one line and writes nothing;
    the same log with the column replays, its masked fraction the registry's on those tokens."""
    code, out, err = run(capsys, "replay", str(sim_log / "grpo.parquet"), "--out", str(tmp_path / "a"),
                         "--no-progress", "--objectives", "drpo,dppo_topk_tv")
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "dppo_topk_tv needs the column 'topk_tv'" in err and not (tmp_path / "a").exists()
    b = load_token_log(sim_log / "grpo.parquet")
    tv = np.abs(np.exp(b.logp) - np.exp(b.logp_behavior)) * np.random.default_rng(0).uniform(1, 3, len(b))
    with_tv = tmp_path / "with_tv.parquet"
    write_token_log(with_tv, TokenBatch.from_arrays(**b.columns, topk_tv=np.minimum(tv, 1.0)))
    code, out, err = run(capsys, "replay", str(with_tv), "--out", str(tmp_path / "b"), "--no-progress",
                         "--objectives", "dppo_topk_tv", "--param", "dppo_topk_tv.delta=0.01")
    assert code == 0, err
    keep = b.mask
    w = objectives.get("dppo_topk_tv", delta=0.01).weight(b.logp[keep], b.logp_behavior[keep], b.advantage[keep],
                                                          topk_tv=np.minimum(tv, 1.0)[keep])
    row = pd.read_csv(tmp_path / "b" / "objectives.csv").set_index("objective").loc["dppo_topk_tv"]
    assert 0 < row["masked_frac"] < 1 and row["masked_frac"] == pytest.approx(np.mean(w == 0), rel=1e-7)


@pytest.mark.parametrize("argv, message", [
    (["--device", "cuda"], "CUDA"),
    (["--objectives", "drpo,nope"], "nope"),
    (["--param", "spo.eps=1"], "not replayed"),
    (["--format", "parquet"], "format"),
    (["--map", "lgp=x"], "logp"),
    (["--batch-size", "0"], "batch-size"),
    (["--group-size", "0"], "group_size"),
    (["--updates", "first"], "--updates"),
])
def test_bad_options_exit_2(tmp_path, capsys, sim_log, monkeypatch, argv, message):
    # the CUDA refusal is what a machine without a GPU sees: hide any GPU so this runs everywhere
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    extra = ["--objectives", "drpo"] if argv[0] == "--param" else []
    code, out, err = run(capsys, "replay", str(sim_log / "drpo.parquet"), "--out", str(tmp_path), "--no-progress",
                         *argv, *extra)
    assert code == 2, (out, err)
    assert message in err and len(err.strip().splitlines()) == 1


def test_empty_and_missing_logs_exit_2(tmp_path, capsys):
    empty = tmp_path / "train_data_step1.jsonl"
    empty.write_text("")
    code, out, err = run(capsys, "replay", str(empty), "--out", str(tmp_path / "o"), "--no-progress")
    assert code == 2 and "train_data_step1.jsonl" in err
    code, out, err = run(capsys, "replay", str(tmp_path / "nope.parquet"), "--out", str(tmp_path / "o"),
                         "--no-progress")
    assert code == 2 and "nope.parquet" in err


@pytest.mark.slow
def test_replay_memory_is_bounded_by_the_batch_not_the_file(tmp_path):
    """Stream a half- and a 2-million-token log (about 23 and 90 MB decoded) in batches of 65,536
    tokens, each in a fresh process: the peak memory (``resource``'s RSS, Linux) is the same
    within a few tens of MB (a replay that held the file would differ by about 68 MB), so it does
    not grow with the file."""
    script = ROOT / "benchmarks" / "bench_replay.py"

    def peak(n):
        log = tmp_path / f"log{n}.parquet"
        subprocess.run([sys.executable, "-c", f"import sys; sys.path.insert(0, {str(script.parent)!r}); "
                        f"import bench_replay; bench_replay.write_log(__import__('pathlib').Path({str(log)!r}), {n})"],
                       check=True)
        code = (
            "import resource, torch, drpo_sim.analysis as a, drpo_sim.logs as l; torch.set_num_threads(1); "
            f"r = a.replay(l.open_log({str(log)!r}, fmt='tokens', batch_size=65536)); "
            "print(r.totals['tokens'], resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)"
        )
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
        assert int(out[0]) == n
        return int(out[1])

    small, large = peak(500_000), peak(2_000_000)
    assert large - small < 40e6, f"peak memory {small / 1e6:.0f} MB for 0.5M tokens, {large / 1e6:.0f} MB for 2M"


# ---------------------------------------------------------------------------------------------
# every log a run leaves behind: old NeMo RL logs, globs and run folders, drop reports, slime


def test_replay_an_old_nemo_rl_log_measures_the_mismatch_only(tmp_path, capsys):
    d = tmp_path / "logs" / "exp_001"
    d.mkdir(parents=True)
    for step in (1, 2):
        (d / f"train_data_step{step}.jsonl").write_text(
            "".join(x + "\n" for x in fx.nemo_lines_v05(fx.make_samples(70 + step, 6), seed=step)))
    out_dir = tmp_path / "out"
    code, out, err = run(capsys, "replay", str(tmp_path / "logs"), "--out", str(out_dir), "--no-progress")
    assert code == 0, err
    assert out.count("no advantages") == 1 and "mismatch only, no objective tables or figures" in out
    totals = json.loads((out_dir / "replay.json").read_text())
    assert totals["mismatch_only"] is True and "no advantages" in totals["note"] and totals["objectives"] == {}
    assert totals["source"]["mismatch_only"] is True
    for name in ("mismatch_by_mu.csv", "by_step.csv", "mismatch.png", "by_step.png", "replay.json"):
        assert (out_dir / name).stat().st_size > 0, name
    for name in ("objectives.csv", "regions_by_mu.csv", "regions.png", "weights.png", "rare_tokens.png"):
        assert not (out_dir / name).exists(), name
    assert pd.read_csv(out_dir / "mismatch_by_mu.csv")["tokens"].sum() == totals["tokens"] > 0


def test_replay_a_quoted_glob_lists_what_it_found_and_skipped(tmp_path, capsys):
    d = tmp_path / "logs"
    for exp, step in (("exp_001", 1), ("exp_002", 2)):
        (d / exp).mkdir(parents=True)
        fx.write_nemo(d / exp / f"train_data_step{step}.jsonl", fx.make_samples(step, 6))
        (d / exp / "config.yaml").write_text("grpo: {}\n")
    code, out, err = run(capsys, "replay", str(d / "exp_*"), "--out", str(tmp_path / "o"), "--no-progress",
                         "--objectives", "drpo")
    assert code == 0, err
    assert f"reading 2 files (nemo_rl) found under {d / 'exp_001'}, {d / 'exp_002'} matching {d / 'exp_*'}:" in out
    assert "skipped 2 files:" in out and "config.yaml: not a log file (.yaml)" in out
    by_step = pd.read_csv(tmp_path / "o" / "by_step.csv")
    assert list(by_step["step"]) == [1, 2]


def test_replay_drop_report_for_whole_samples_empty_files_and_everything(tmp_path, capsys):
    d = tmp_path / "logs"
    d.mkdir()
    lines = [json.loads(x) for x in fx.nemo_lines(fx.make_samples(0, 6))]
    lines[1]["token_ids"][0].pop()  # a length mismatch: the whole sample goes, no row counted alone
    (d / "train_data_step1.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    (d / "train_data_step2.jsonl").write_text("")  # an empty step file
    code, out, err = run(capsys, "replay", str(d), "--out", str(tmp_path / "a"), "--no-progress")
    assert code == 2 and "train_data_step2.jsonl: no tokens (empty file, 0 bytes)" in err
    code, out, err = run(capsys, "replay", str(d), "--out", str(tmp_path / "b"), "--no-progress", "--on-invalid",
                         "drop", "--objectives", "drpo")
    assert code == 0, err
    assert ("dropped (--on-invalid drop): dropped 0 rows (1 whole sample) and 1 whole file: train_data_step1.jsonl: "
            "1 sample length mismatch; train_data_step2.jsonl: 1 whole file empty (empty file, 0 bytes)") in out
    totals = json.loads((tmp_path / "b" / "replay.json").read_text())
    assert totals["dropped"]["total_samples"] == 1 and totals["dropped"]["total_files"] == 1

    for x in lines:
        x["token_ids"][0].pop()  # every sample goes
    (d / "train_data_step1.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    code, out, err = run(capsys, "replay", str(d), "--out", str(tmp_path / "c"), "--no-progress", "--on-invalid",
                         "drop")
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "no tokens to replay: --on-invalid drop dropped everything the log held (dropped 0 rows (6 whole " \
           "samples) and 1 whole file: train_data_step1.jsonl: 6 samples length mismatch" in err
    assert not (tmp_path / "c" / "replay.json").exists()


def test_replay_slime_rank_copies_are_deduplicated_and_pickles_trusted_on_cpu(tmp_path, capsys):
    samples = fx.make_samples(3, 4)
    d = tmp_path / "dump"
    (d / "train_data").mkdir(parents=True)
    for rank in range(2):
        dump = fx.slime_train_v1(samples, 0, 0)
        dump["rollout_data"]["raw_reward"] = [np.float64(s.reward) for s in samples]  # NumPy scalars
        torch.save(dump, d / "train_data" / f"0_{rank}.pt")
    code, out, err = run(capsys, "replay", str(d), "--out", str(tmp_path / "a"), "--no-progress")
    assert code == 2 and "--trust-pickles" in err and "0_0.pt" in err
    code, out, err = run(capsys, "replay", str(d), "--out", str(tmp_path / "b"), "--no-progress", "--trust-pickles",
                         "--objectives", "drpo")
    assert code == 0, err
    assert "warning: --trust-pickles: 2 .pt files are loaded with torch.load(weights_only=False)" in err
    assert "de-duplicated, not dropped: read once: 4 samples" in out and "dropped (--on-invalid drop)" not in out
    totals = json.loads((tmp_path / "b" / "replay.json").read_text())
    assert totals["dropped"]["total_samples"] == 0 and totals["dropped"]["deduplicated"]["total_samples"] == 4
