"""drpo_sim.logs.slime: slime's debug dumps (train dumps of both layouts, joined with rollout dumps)
reproduce known tokens exactly; bad input gives one-line errors naming file, sample and field."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from logs_fixtures import (
    assert_columns,
    error,
    expected,
    make_samples,
    read_all,
    slime_rollout,
    slime_train_v1,
    slime_train_v2,
)

from drpo_sim.logs import open_log
from drpo_sim.tokens import concat

# ---------------------------------------------------------------------------------------------
# ground truth


@pytest.mark.parametrize("version", [1, 2])
def test_slime_train_dump_reproduces_tokens(tmp_path, version):
    samples = make_samples(4, 5)
    dump = slime_train_v1(samples, 7, 70) if version == 1 else slime_train_v2(samples, 7, 70)
    torch.save(dump, tmp_path / "train_7.pt")
    b = read_all(tmp_path / "train_7.pt", group_size=2)  # auto detects slime
    want = expected(samples, 7, 70 + np.arange(5), (70 + np.arange(5)) // 2)
    assert_columns(b, want, [c for c in want if c != "reward"])
    assert b.reward is None


def test_slime_joins_rollout_dump_on_sample_index(tmp_path):
    samples = make_samples(5, 6)
    torch.save(slime_rollout(samples, 3, 30, group_size=3), tmp_path / "rollout_3.pt")
    train = slime_train_v1(samples, 3, 30, with_mu=False)
    order = [4, 1, 0, 5, 2, 3]  # data-parallel balancing reorders samples
    train["rollout_data"] = {k: [v[i] for i in order] if isinstance(v, list) else v
                             for k, v in train["rollout_data"].items()}
    torch.save(train, tmp_path / "train_3_0.pt")
    torch.save(slime_rollout(samples, 3, 30, 3), tmp_path / "eval_3.pt")  # evaluation dump: skipped
    b = read_all(tmp_path, fmt="slime")
    perm = [samples[i] for i in order]
    want = expected(perm, 3, 30 + np.array(order), (30 + np.array(order)) // 3)
    assert_columns(b, want, [c for c in want if c != "reward"])


def test_slime_rank_copies_are_counted_not_duplicated(tmp_path):
    samples = make_samples(6, 4)
    for rank in range(2):  # a tensor-parallel pair writes the same shard twice
        torch.save(slime_train_v1(samples, 1, 0), tmp_path / f"train_1_{rank}.pt")
    src = open_log(tmp_path, fmt="slime")
    b = concat(list(src))
    assert len(b) == sum(len(s.tokens) for s in samples)
    assert src.report.total_samples == 4 and "duplicate" in str(src.report)

# ---------------------------------------------------------------------------------------------
# bad input


def test_slime_missing_field_nan_length_mismatch_and_drop(tmp_path):
    samples = make_samples(16, 4)
    dump = slime_train_v1(samples, 2, 0)
    dump["rollout_data"]["advantage"] = dump["rollout_data"].pop("advantages")
    torch.save(dump, tmp_path / "train_2.pt")
    for mode in ("raise", "drop"):
        msg = error(open_log, tmp_path / "train_2.pt", on_invalid=mode)
        assert msg.startswith(f"{tmp_path / 'train_2.pt'}: missing field 'advantages' (did you mean 'advantage'?)")

    dump = slime_train_v1(samples, 2, 0)
    dump["rollout_data"]["log_probs"][2][1] = float("nan")
    torch.save(dump, tmp_path / "train_2.pt")
    msg = error(open_log, tmp_path / "train_2.pt")
    assert msg == (f"{tmp_path / 'train_2.pt'}: log_probs (logp): 1 value is not finite (nan) on masked-in tokens "
                   "at sample 2 index 1")

    dump = slime_train_v1(samples, 2, 0)
    dump["rollout_data"]["advantages"][1] = dump["rollout_data"]["advantages"][1][:-1]
    torch.save(dump, tmp_path / "train_2.pt")
    msg = error(open_log, tmp_path / "train_2.pt")
    assert msg.startswith(f"{tmp_path / 'train_2.pt'}: sample 1: fields of one sample have different lengths "
                          "(response_lengths has")
    src = open_log(tmp_path / "train_2.pt", on_invalid="drop")
    assert len(concat(list(src))) == sum(len(s.tokens) for s in samples) - len(samples[1].tokens)
    by_file = src.report.to_dict()["by_file"]
    assert by_file[str(tmp_path / "train_2.pt")] == {"length mismatch": {"rows": 0, "samples": 1}}


def test_slime_truncated_and_rollout_only(tmp_path):
    samples = make_samples(17, 3)
    torch.save(slime_train_v2(samples, 4, 0), tmp_path / "train_4.pt")
    data = (tmp_path / "train_4.pt").read_bytes()
    (tmp_path / "train_4.pt").write_bytes(data[: len(data) // 2])
    msg = error(open_log, tmp_path / "train_4.pt", fmt="slime", on_invalid="drop")
    assert msg.startswith(f"{tmp_path / 'train_4.pt'}: not a readable torch file (truncated or corrupt")
    torch.save(slime_rollout(samples, 5, 0, 3), tmp_path / "rollout_5.pt")
    msg = error(open_log, tmp_path / "rollout_5.pt", fmt="slime")
    assert msg.startswith(f"{tmp_path / 'rollout_5.pt'}: slime rollout dump for rollout 5 without a train dump")


def test_slime_wrong_dtype_names_sample_and_field(tmp_path):
    samples = make_samples(20, 3)
    dump = slime_train_v2(samples, 8, 0)
    dump["samples"][1]["rollout_log_probs"][2] = "oops"
    torch.save(dump, tmp_path / "train_8.pt")
    msg = error(open_log, tmp_path / "train_8.pt")
    assert msg == f"{tmp_path / 'train_8.pt'}: sample 1: rollout_log_probs: index 2 holds 'oops', not a number"
    src = open_log(tmp_path / "train_8.pt", on_invalid="drop")
    assert len(concat(list(src))) == sum(len(s.tokens) for s in samples) - len(samples[1].tokens)
    assert src.report.total_samples == 1
