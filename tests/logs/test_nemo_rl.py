"""drpo_sim.logs.nemo_rl: NeMo RL's train_data_step*.jsonl dumps reproduce known tokens exactly; bad
input gives one-line errors naming file, field, line and index; drop mode counts what it drops."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from logs_fixtures import assert_columns, error, expected, make_samples, nemo_lines, read_all, write_nemo

from drpo_sim.logs import open_log
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
    for mode in ("raise", "drop"):
        assert error(open_log, path, on_invalid=mode) == f"{path}: no tokens (empty file)"


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
