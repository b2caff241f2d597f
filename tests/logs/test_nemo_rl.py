"""drpo_sim.logs.nemo_rl: NeMo RL's train_data_step*.jsonl dumps reproduce known tokens exactly; bad
input gives one-line errors naming file, field, line and index; drop mode counts what it drops."""

from __future__ import annotations

import gzip
import json
import sys
from pathlib import Path

import logs_fixtures as fx
import numpy as np
import pytest
from logs_fixtures import assert_columns, error, expected, make_samples, nemo_lines, read_all, write_nemo

from drpo_sim.logs import open_log
from drpo_sim.logs._stream import ZSTD_INSTALL
from drpo_sim.tokens import concat

# ---------------------------------------------------------------------------------------------
# ground truth


def test_nemo_rl_reproduces_tokens_over_two_steps(tmp_path):
    s1, s2 = make_samples(1, 6), make_samples(2, 4)
    write_nemo(tmp_path / "train_data_step2.jsonl", s1)
    write_nemo(tmp_path / "train_data_step10.jsonl", s2)
    (tmp_path / "val_data_step2.jsonl").write_text("{}\n")  # not a training dump: skipped
    src = open_log(tmp_path, group_size=3)
    b = read_all(tmp_path, group_size=3)
    want1 = expected(s1, 2, np.arange(6), np.arange(6) // 3)
    want2 = expected(s2, 10, 6 + np.arange(4), 2 + np.arange(4) // 3)
    want = {k: np.concatenate([want1[k], want2[k]]) for k in want1}
    assert_columns(b, want)
    assert b.optional_columns == ("token_id", "logp_old", "reward", "step")
    d = src.describe()
    assert d["format"] == "nemo_rl" and d["files"] == 2 and d["last_file"].endswith("train_data_step10.jsonl")


def test_nemo_rl_sample_loss_mask_and_scalar_advantages(tmp_path):
    samples = make_samples(3, 3)
    lines = [json.loads(x) for x in nemo_lines(samples)]
    lines[1]["sample_loss_mask"] = [0.0]
    lines[2]["advantages"] = [samples[2].advantage]  # a number per sample is broadcast
    (tmp_path / "train_data_step1.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    b = read_all(tmp_path / "train_data_step1.jsonl")
    want = expected(samples, 1, np.arange(3), np.arange(3))
    n0, n1 = len(samples[0].tokens), len(samples[1].tokens)
    want["mask"][n0:n0 + n1] = False
    assert_columns(b, want)

# ---------------------------------------------------------------------------------------------
# bad input


def nemo_file(tmp_path, edit=None, n=6, name="train_data_step1.jsonl") -> Path:
    lines = [json.loads(x) for x in nemo_lines(make_samples(11, n))]
    if edit:
        edit(lines)
    path = tmp_path / name
    path.write_text("".join(json.dumps(x) + "\n" for x in lines))
    return path


def first_response_index(line: dict) -> int:
    return line["token_loss_mask"][0].index(1)


def test_nemo_missing_field_suggests_name_in_both_modes(tmp_path):
    def rename(lines):
        for x in lines:
            x["prev_logprob"] = x.pop("prev_logprobs")
    path = nemo_file(tmp_path, rename)
    for mode in ("raise", "drop"):
        msg = error(open_log, path, on_invalid=mode)
        assert msg.startswith(f"{path}: line 1: missing field 'prev_logprobs' (did you mean 'prev_logprob'?)"), msg


def test_nemo_nan_and_positive_name_field_line_and_index(tmp_path):
    def nan(lines):
        t = first_response_index(lines[2]) + 1
        lines[2]["prev_logprobs"][0][t] = float("nan")
    path = nemo_file(tmp_path, nan)
    t = first_response_index(json.loads(path.read_text().splitlines()[2])) + 1
    msg = error(open_log, path)
    assert msg == f"{path}: prev_logprobs (logp): 1 value is not finite (nan) on masked-in tokens at line 3 index {t}"

    def positive(lines):
        lines[1]["generation_logprobs"][0][first_response_index(lines[1])] = 0.5
    path = nemo_file(tmp_path, positive)
    msg = error(open_log, path)
    assert msg.startswith(f"{path}: generation_logprobs (logp_behavior): 1 value is positive (max 0.5) at line 2 index")


def test_nemo_length_mismatch_wrong_type_truncated_and_empty(tmp_path):
    path = nemo_file(tmp_path, lambda lines: lines[3]["token_loss_mask"][0].pop())
    msg = error(open_log, path)
    assert msg.startswith(f"{path}: line 4: fields of one sample have different lengths (generation_logprobs has")
    assert "token_loss_mask has" in msg

    path = nemo_file(tmp_path, lambda lines: lines[1]["advantages"][0].__setitem__(5, "high"))
    assert error(open_log, path) == f"{path}: line 2: advantages: index 5 holds 'high', not a number"

    path = nemo_file(tmp_path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 40])  # cut mid-line
    msg = error(open_log, path)
    assert msg.startswith(f"{path}: line 6: truncated line (the file ends mid-line")

    path.write_text("")
    assert error(open_log, path).startswith(f"{path}: no tokens (empty file, 0 bytes); leave the file out, or pass "
                                            "--on-invalid drop")
    path.write_text("\n\n")  # blank lines only: no sample either
    assert error(open_log, path).startswith(f"{path}: no tokens (empty file); leave the file out")


def test_nemo_drop_mode_counts_rows_and_samples(tmp_path):
    def edit(lines):
        t = first_response_index(lines[0])
        lines[0]["prev_logprobs"][0][t] = float("inf")
        lines[0]["generation_logprobs"][0][t + 1] = 0.25
        lines[2]["token_ids"][0].pop()  # length mismatch: the sample goes
    path = nemo_file(tmp_path, edit)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 40])  # the last line goes too
    clean = concat(list(open_log(nemo_file(tmp_path / "..", name="train_data_step1.jsonl"))))
    src = open_log(path, on_invalid="drop")
    b = concat(list(src))
    lost = [len(s.tokens) for s in make_samples(11, 6)]
    assert len(b) == len(clean) - 2 - lost[2] - lost[5]
    r = src.report.to_dict()["by_file"][str(path)]
    assert r["prev_logprobs (logp) not finite"] == {"rows": 1, "samples": 0}
    assert r["generation_logprobs (logp_behavior) positive"] == {"rows": 1, "samples": 0}
    assert r["length mismatch"]["samples"] == 1 and r["truncated line"]["samples"] == 1
    assert src.report.total == 2 and src.report.total_samples == 2
    summary = str(src.report)
    assert summary.startswith("dropped 2 rows (2 whole samples): train_data_step1.jsonl: ")
    assert "1 row prev_logprobs (logp) not finite" in summary and "1 sample truncated line" in summary
    assert src.describe()["dropped"] == {"rows": 2, "samples": 2}

# ---------------------------------------------------------------------------------------------
# older versions, dynamic sampling, compression, run folders and globs


def write_lines(path: Path, lines: list[str]) -> Path:
    path.write_text("".join(x + "\n" for x in lines))
    return path


def test_nemo_rl_before_v0_6_is_read_mismatch_only(tmp_path):
    """v0.3.0 to v0.5.0 logged no advantages nor token_loss_mask: both log-probs are read, advantage is 0,
    the mask is told by generation_logprobs != 0, and the source says it is mismatch-only."""
    s1, s2 = make_samples(31, 5), make_samples(32, 3)
    write_lines(tmp_path / "train_data_step1.jsonl", fx.nemo_lines_v05(s1))
    write_lines(tmp_path / "train_data_step2.jsonl", fx.nemo_lines_v05(s2, seed=1))
    src = open_log(tmp_path, group_size=2)
    assert src.mismatch_only and "no advantages" in src.note and "v0.6.0" in src.note
    b = concat(list(src))
    w1 = fx.expected_v05(s1, 1, np.arange(5), np.arange(5) // 2)
    w2 = fx.expected_v05(s2, 2, 5 + np.arange(3), 3 + np.arange(3) // 2)
    assert_columns(b, {k: np.concatenate([w1[k], w2[k]]) for k in w1})
    assert b.token_id is None and not src.report
    d = src.describe()
    assert d["mismatch_only"] and "note" not in d  # the replay states it, once
    assert d["derived"]["advantage"].startswith("absent")
    assert d["derived"]["mask"].startswith("generation_logprobs != 0")


def test_nemo_rl_old_log_leaves_out_a_token_of_engine_probability_one(tmp_path):
    samples = make_samples(33, 2)
    lines = [json.loads(x) for x in fx.nemo_lines_v05(samples)]
    p = len(samples[0].prompt)
    lines[0]["generation_logprobs"][0][p + 1] = 0.0  # the engine gave the sampled token probability 1
    b = read_all(write_lines(tmp_path / "train_data_step4.jsonl", [json.dumps(x) for x in lines]))
    want = fx.expected_v05(samples, 4, np.arange(2), np.arange(2))
    want["mask"][1] = False
    want["logp_behavior"][1] = 0.0
    assert_columns(b, want)


def test_nemo_rl_versions_mixed_in_one_log_is_an_error_naming_both(tmp_path):
    old = write_lines(tmp_path / "train_data_step1.jsonl", fx.nemo_lines_v05(make_samples(34, 3)))
    new = write_nemo(tmp_path / "train_data_step2.jsonl", make_samples(35, 3))
    msg = error(open_log, tmp_path)
    assert msg.startswith(f"{new}: has 'advantages' field but {old} has none: the log mixes NeMo RL versions")
    assert "replay the files with advantages and those without separately" in msg


def test_nemo_rl_dynamic_sampling_reward_is_filtered_rewards(tmp_path):
    samples = make_samples(36, 4)
    for name, lines in (("v05", fx.nemo_lines_v05(samples, dynamic_sampling=True)), ("v07", None)):
        if lines is None:  # v0.6.0 on: every field, and both rewards with dynamic sampling
            objs = [json.loads(x) for x in nemo_lines(samples)]
            for obj, s in zip(objs, samples):
                obj["filtered_rewards"], obj["rewards"] = [s.reward], [s.reward - 3.0]
            lines = [json.dumps(x) for x in objs]
        (tmp_path / name).mkdir()
        path = write_lines(tmp_path / name / "train_data_step1.jsonl", lines)
        src = open_log(path)
        b = concat(list(src))
        assert_columns(b, expected(samples, 1, np.arange(4), np.arange(4)), ["reward"])
        assert src.describe()["derived"]["reward"].startswith("filtered_rewards")


def test_nemo_rl_gzip_and_zstd_logs_read_like_plain_ones(tmp_path):
    samples = make_samples(37, 6)
    (tmp_path / "plain").mkdir()
    plain = write_nemo(tmp_path / "plain" / "train_data_step1.jsonl", samples)
    want = read_all(plain)
    (tmp_path / "gz").mkdir()
    gz = tmp_path / "gz" / "train_data_step1.jsonl.gz"
    gz.write_bytes(gzip.compress(plain.read_bytes()))
    assert_columns(read_all(gz), want.columns)
    assert open_log(tmp_path / "gz").files == [gz]  # found in a folder too
    data = gz.read_bytes()
    gz.write_bytes(data[: len(data) - 30])  # the run stopped while compressing
    msg = error(open_log, gz)
    assert msg.startswith(f"{gz}: line 6: truncated gzip-compressed data (Compressed file ended before")
    assert msg.endswith("this line and any after it are lost (the file was cut while being written?)")
    src = open_log(gz, on_invalid="drop")
    assert len(concat(list(src))) == len(want) - len(samples[5].tokens)
    reason = "compressed file cut short (the lines after the last whole one are lost)"
    assert src.report.to_dict()["by_file"][str(gz)] == {reason: {"rows": 0, "samples": 1}}
    gz.write_bytes(b"not gzip at all\n")
    assert error(open_log, gz, fmt="nemo_rl").startswith(f"{gz}: not readable as gzip-compressed data")

    zstd = pytest.importorskip("zstandard")
    zst = tmp_path / "train_data_step2.jsonl.zst"
    raw = plain.read_bytes()
    half = raw.index(b"\n", len(raw) // 2) + 1  # two frames, as zstd and pzstd write long files
    zst.write_bytes(zstd.ZstdCompressor().compress(raw[:half]) + zstd.ZstdCompressor().compress(raw[half:]))
    assert_columns(read_all(zst), {**want.columns, "step": np.full(len(want), 2)})
    data = zst.read_bytes()
    zst.write_bytes(data[: len(data) - 5])
    # the second frame (lines 5 and 6) is lost whole
    assert error(open_log, zst).startswith(f"{zst}: line 5: truncated zstd-compressed data (the file ends inside a "
                                           "zstd frame): this line and any after it are lost")


def test_nemo_rl_zstd_without_zstandard_names_the_file_and_the_install(tmp_path, monkeypatch):
    zst = tmp_path / "train_data_step1.jsonl.zst"
    zst.write_bytes(b"\x28\xb5\x2f\xfd")
    monkeypatch.setitem(sys.modules, "zstandard", None)  # import zstandard fails
    msg = error(open_log, zst)
    assert msg == f"{zst}: reading zstd-compressed files needs the zstandard package: {ZSTD_INSTALL}"
    assert "pip install zstandard" in msg


def nemo_run_tree(tmp_path: Path) -> Path:
    """logs/exp_001 (steps 1-2, its validation logs, tensorboard) and logs/exp_002 (step 3, a
    resumed run), as NeMo RL's get_next_experiment_dir lays them out."""
    logs = tmp_path / "logs"
    for exp, steps in (("exp_001", (1, 2)), ("exp_002", (3,))):
        d = logs / exp
        (d / "tensorboard").mkdir(parents=True)
        (d / "tensorboard" / "events.out.tfevents.1700000000.host").write_bytes(b"\0")
        for step in steps:
            write_nemo(d / f"train_data_step{step}.jsonl", make_samples(40 + step, 3))
            (d / f"val_data_step{step}.jsonl").write_text(json.dumps({"content": ["q"], "rewards": [1.0]}) + "\n")
    (logs / ".hidden").mkdir()
    return logs


def test_nemo_rl_run_folders_are_searched_and_skips_listed(tmp_path):
    logs = nemo_run_tree(tmp_path)
    src = open_log(logs)
    assert [f.name for f in src.files] == ["train_data_step1.jsonl", "train_data_step2.jsonl", "train_data_step3.jsonl"]
    assert [int(b.step[0]) for b in src] == [1, 2, 3]
    why = {f.name: reason for f, reason in src.listing.skipped}
    assert why["val_data_step1.jsonl"].startswith("NeMo RL validation log")
    assert why["events.out.tfevents.1700000000.host"].startswith("not a log file")
    assert why[".hidden"] == "hidden folder (not searched)"
    text = "\n".join(src.listing_lines())
    assert text.startswith(f"reading 3 files (nemo_rl) found under {logs}:")
    assert f"{logs / 'exp_001'}: 2 files, train_data_step1.jsonl .. train_data_step2.jsonl" in text
    assert "skipped 6 files:" in text and "NeMo RL validation log" in text
    d = src.describe()
    assert d["searched"] == [str(logs)] and d["skipped"]["hidden folder (not searched)"]["files"] == 1


def test_nemo_rl_globs_are_expanded(tmp_path):
    logs = nemo_run_tree(tmp_path)
    src = open_log(str(logs / "exp_*" / "train_data_step*.jsonl"))
    assert len(src.files) == 3 and src.describe()["patterns"] == [str(logs / "exp_*" / "train_data_step*.jsonl")]
    src = open_log(str(logs / "**" / "*.jsonl"))  # any depth; validation logs beside step files are skipped
    assert len(src.files) == 3 and len(src.listing.skipped) == 3
    with pytest.raises(FileNotFoundError, match="no file or folder matches this pattern"):
        open_log(str(logs / "exp_9*"))


def test_nemo_rl_two_runs_with_the_same_steps_is_an_error(tmp_path):
    logs = nemo_run_tree(tmp_path)
    write_nemo(logs / "exp_002" / "train_data_step2.jsonl", make_samples(50, 3))  # restarted from step 1
    msg = error(open_log, logs)
    assert msg.startswith(f"{logs / 'exp_002' / 'train_data_step2.jsonl'}: step 2 again "
                          f"({logs / 'exp_001' / 'train_data_step2.jsonl'} is step 2 too)")
    assert "pass the folder of one run" in msg


def test_nemo_rl_empty_step_file_is_skipped_and_counted_with_drop(tmp_path):
    write_nemo(tmp_path / "train_data_step1.jsonl", make_samples(51, 3))
    (tmp_path / "train_data_step2.jsonl").write_text("")  # the run stopped before logging step 2
    write_nemo(tmp_path / "train_data_step3.jsonl", make_samples(53, 3))
    msg = error(open_log, tmp_path)
    assert msg.startswith(f"{tmp_path / 'train_data_step2.jsonl'}: no tokens (empty file, 0 bytes)")
    src = open_log(tmp_path, on_invalid="drop")
    assert [int(b.step[0]) for b in src] == [1, 3]
    empty = {"empty (empty file, 0 bytes)": {"rows": 0, "samples": 0, "files": 1}}
    assert src.report.to_dict()["by_file"] == {str(tmp_path / "train_data_step2.jsonl"): empty}
    assert str(src.report) == "dropped 0 rows and 1 whole file: train_data_step2.jsonl: 1 whole file empty (empty " \
                              "file, 0 bytes)"
    assert src.describe()["dropped"] == {"rows": 0, "samples": 0, "files": 1}
    assert any("empty (0 bytes), counted as dropped" in line for line in src.listing_lines())
