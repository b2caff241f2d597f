"""drpo_sim.logs.slime: slime's debug dumps (train dumps of both layouts, joined with rollout dumps)
reproduce known tokens exactly; bad input gives one-line errors naming file, sample and field."""

from __future__ import annotations

from pathlib import Path

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

from drpo_sim.logs import open_log, slime
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
    # expected copies are de-duplicated, not dropped
    assert not src.report and src.report.total_samples == 0 and src.report.dedup_samples == 4
    assert src.report.dedup_text() == ("read once: 4 samples (20 rows) that several files hold: train_1_1.pt: 4 "
                                       "samples (20 rows) copies of train_1_0.pt's (another tensor- or "
                                       "pipeline-parallel rank)")

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

# ---------------------------------------------------------------------------------------------
# file layouts: --dump-details folders, names, eval dumps, rank copies, empty and truncated files


def dump_details(tmp_path, samples_by_rollout: dict[int, list], tp: int = 2) -> Path:
    """A ``--dump-details DIR`` folder as slime v0.1.0 to v0.3.1 writes it: ``rollout_data/{rollout_id}.pt``,
    ``train_data/{rollout_id}_{rank}.pt`` from every rank (``tp`` tensor-parallel ranks: copies of one
    shard; these train dumps hold no rollout_log_probs, so the rollout dumps are joined), the
    evaluation dumps ``rollout_data/eval_{rollout_id}.pt`` and the tokenizer."""
    d = tmp_path / "dump"
    (d / "rollout_data").mkdir(parents=True)
    (d / "train_data").mkdir()
    (d / "tokenizer").mkdir()
    (d / "tokenizer" / "tokenizer.json").write_text("{}")
    (d / "tokenizer" / "tokenizer_config.json").write_text("{}")
    index0 = 0
    for rid, samples in samples_by_rollout.items():
        torch.save(slime_rollout(samples, rid, index0, group_size=2), d / "rollout_data" / f"{rid}.pt")
        torch.save(slime_rollout(samples[:2], rid, 1000, group_size=2), d / "rollout_data" / f"eval_{rid}.pt")
        for rank in range(tp):
            torch.save(slime_train_v1(samples, rid, index0, with_mu=False), d / "train_data" / f"{rid}_{rank}.pt")
        index0 += len(samples)
    return d


def test_slime_dump_details_folder_is_searched_on_cpu(tmp_path):
    s0, s1 = make_samples(60, 4), make_samples(61, 2)
    d = dump_details(tmp_path, {0: s0, 1: s1})
    src = open_log(d)
    b = concat(list(src))
    w0 = expected(s0, 0, np.arange(4), np.arange(4) // 2)
    w1 = expected(s1, 1, 4 + np.arange(2), (4 + np.arange(2)) // 2)
    assert_columns(b, {k: np.concatenate([w0[k], w1[k]]) for k in w0}, [c for c in w0 if c != "reward"])
    # rank copies are read once and reported as such, not as drops
    assert not src.report and src.report.dedup_samples == 6
    assert src.report.to_dict()["deduplicated"]["total_samples"] == 6
    why = {str(f.relative_to(d)): reason for f, reason in src.listing.skipped}
    assert why["rollout_data/eval_0.pt"] == why["rollout_data/eval_1.pt"] == slime.EVAL_REASON
    assert why["tokenizer/tokenizer.json"] == "not a log file (.json)"
    text = "\n".join(src.listing_lines())
    assert f"reading 6 files (slime) found under {d}:" in text and "skipped 4 files:" in text


def test_slime_files_are_grouped_by_the_rollout_id_inside_on_cpu(tmp_path):
    """A template whose first number is not the rollout id (qwen3-8b_...): the ids in the files decide."""
    s0, s1 = make_samples(62, 3), make_samples(63, 3)
    for rid, samples, index0 in ((0, s0, 0), (1, s1, 3)):
        torch.save(slime_rollout(samples, rid, index0, group_size=3), tmp_path / f"qwen3-8b_rollout_{rid}.pt")
        torch.save(slime_train_v1(samples, rid, index0, with_mu=False), tmp_path / f"qwen3-8b_train_{rid}.pt")
    src = open_log(tmp_path, fmt="slime")
    steps = [int(b.step[0]) for b in src]
    assert steps == [0, 1]
    b = concat(list(open_log(sorted(tmp_path.iterdir()))))
    w0, w1 = expected(s0, 0, np.arange(3), np.zeros(3)), expected(s1, 1, 3 + np.arange(3), np.ones(3))
    assert_columns(b, {k: np.concatenate([w0[k], w1[k]]) for k in w0}, [c for c in w0 if c != "reward"])


def test_slime_eval_dumps_are_skipped_wherever_passed_on_cpu(tmp_path):
    samples = make_samples(64, 3)
    torch.save(slime_rollout(samples, 3, 0, 3), tmp_path / "rollout_3.pt")
    torch.save(slime_train_v1(samples, 3, 0, with_mu=False), tmp_path / "train_3.pt")
    torch.save(slime_rollout(samples, 3, 500, 3), tmp_path / "rollout_eval_3.pt")  # same rollout id inside
    named = [tmp_path / "rollout_3.pt", tmp_path / "rollout_eval_3.pt", tmp_path / "train_3.pt"]
    for fmt in ("auto", "slime"):
        src = open_log(named, fmt=fmt)
        assert len(concat(list(src))) == sum(len(s.tokens) for s in samples)
        assert src.listing.skipped == [(tmp_path / "rollout_eval_3.pt", slime.EVAL_REASON)]
    msg = error(open_log, tmp_path / "rollout_eval_3.pt")
    assert msg == f"no log files to read (skipped 1 file: {slime.EVAL_REASON}); name the files, or pass --format"
    assert not slime.is_eval(tmp_path / "retrieval_3.pt")  # "eval_" inside a word is not an evaluation dump


def test_slime_numpy_scalar_is_refused_unless_trusted_on_cpu(tmp_path):
    samples = make_samples(65, 3)
    rollout = slime_rollout(samples, 2, 0, 3)
    for s, x in zip(rollout["samples"], samples):
        s["reward"] = np.float64(x.reward)  # a reward function that returns a NumPy number
    torch.save(rollout, tmp_path / "rollout_2.pt")
    torch.save(slime_train_v1(samples, 2, 0, with_mu=False), tmp_path / "train_2.pt")
    msg = error(open_log, tmp_path, fmt="slime")
    assert msg.startswith(f"{tmp_path / 'rollout_2.pt'}: torch.load(weights_only=True) refused an object in it")
    assert msg.endswith("if you trust the file, pass --trust-pickles (open_log(..., weights_only=False))")
    b = concat(list(open_log(tmp_path, fmt="slime", weights_only=False)))
    assert len(b) == sum(len(s.tokens) for s in samples)


def test_slime_truncated_dump_names_the_file_and_what_to_do_on_cpu(tmp_path):
    torch.save(slime_train_v2(make_samples(66, 3), 4, 0), tmp_path / "train_4.pt")
    data = (tmp_path / "train_4.pt").read_bytes()
    for cut in (len(data) // 2, len(data) - 10):  # near the end torch raised "[Errno 22] Invalid argument"
        (tmp_path / "train_4.pt").write_bytes(data[:cut])
        msg = error(open_log, tmp_path / "train_4.pt")
        assert msg.startswith(f"{tmp_path / 'train_4.pt'}: not a readable torch file (truncated or corrupt: ")
        assert msg.endswith("move it out of the log, or pass the other files")


def test_slime_empty_dump_is_skipped_and_counted_with_drop_on_cpu(tmp_path):
    samples = make_samples(67, 3)
    torch.save(slime_train_v2(samples, 1, 0), tmp_path / "train_1.pt")
    empty = slime_train_v2(samples, 2, 3)
    empty["samples"] = []
    torch.save(empty, tmp_path / "train_2.pt")
    torch.save(slime_rollout(samples, 2, 3, 3), tmp_path / "rollout_2.pt")
    msg = error(open_log, tmp_path)
    assert msg.startswith(f"{tmp_path / 'train_2.pt'}: no tokens (the dump holds no samples); leave the file out")
    src = open_log(tmp_path, on_invalid="drop")
    assert [int(b.step[0]) for b in src] == [1]
    by_file = src.report.to_dict()["by_file"]
    assert by_file[str(tmp_path / "train_2.pt")] == {"empty (the dump holds no samples)": {"rows": 0, "samples": 0,
                                                                                           "files": 1}}
    assert by_file[str(tmp_path / "rollout_2.pt")] == {
        "unused (the train dump of this rollout is empty)": {"rows": 0, "samples": 0, "files": 1}}


def test_slime_sample_index_repeated_within_a_file_is_a_sample_problem_on_cpu(tmp_path):
    samples = make_samples(68, 3)
    dump = slime_train_v1(samples, 5, 0)
    dump["rollout_data"]["sample_indices"][2] = 0
    torch.save(dump, tmp_path / "train_5.pt")
    assert error(open_log, tmp_path / "train_5.pt") == f"{tmp_path / 'train_5.pt'}: sample 2: sample index 0 again " \
                                                       "in this file"
    src = open_log(tmp_path / "train_5.pt", on_invalid="drop")
    assert len(concat(list(src))) == sum(len(s.tokens) for s in samples[:2])
    assert src.report.to_dict()["by_file"][str(tmp_path / "train_5.pt")] == {
        "duplicate sample index": {"rows": 0, "samples": 1}}
