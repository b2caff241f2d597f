"""drpo_sim.logs (the package's open_log): format detection, one file at a time streaming, natural
file order, argument checks and parse_mapping."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from logs_fixtures import (
    error,
    expected,
    make_samples,
    padded,
    slime_train_v1,
    write_generic_flat_parquet,
    write_nemo,
)

from drpo_sim.logs import FORMATS, detect_format, open_log, parse_mapping
from drpo_sim.logs import trainer_dump as td
from drpo_sim.tokens import TokenBatch, write_token_log

# ---------------------------------------------------------------------------------------------
# streaming and order


def test_multi_file_log_streams_one_file_at_a_time(tmp_path):
    for step in (1, 2, 3):
        write_nemo(tmp_path / f"train_data_step{step}.jsonl", make_samples(step, 20))
    src = open_log(tmp_path, batch_size=16)
    it = iter(src)
    first = next(it)
    assert len(first) <= 16 and first.step[0] == 1
    # the iterator has not read step 3 yet: corrupting it now surfaces only when reached
    (tmp_path / "train_data_step3.jsonl").write_text('{"generation_logprobs": [[0.0]], "prev_log')
    sizes, steps = [len(first)], {1}
    with pytest.raises(ValueError, match=r"train_data_step3\.jsonl: line 1: truncated line"):
        for b in it:
            sizes.append(len(b))
            steps |= set(np.unique(b.step).tolist())
            assert len(np.unique(b.step)) == 1  # a batch never spans two steps
    assert steps == {1, 2} and max(sizes) <= 16


def test_natural_order_and_bad_arguments(tmp_path):
    for step in (10, 9):
        write_nemo(tmp_path / f"train_data_step{step}.jsonl", make_samples(step, 2))
    files = [tmp_path / "train_data_step10.jsonl", tmp_path / "train_data_step9.jsonl"]
    steps = [int(b.step[0]) for b in open_log(files, fmt="nemo_rl")]
    assert steps == sorted(steps) and steps[0] == 9
    assert set(FORMATS) == {"auto", "tokens", "nemo_rl", "slime", "generic", "trainer_dump"}
    assert "did you mean 'nemo_rl'" in error(open_log, files, fmt="nemo")
    assert "on_invalid" in error(open_log, files, on_invalid="skip")
    with pytest.raises(FileNotFoundError, match="missing.jsonl"):
        open_log(tmp_path / "missing.jsonl")

# ---------------------------------------------------------------------------------------------
# format detection


def test_detect_format_by_name_extension_and_content(tmp_path):
    samples = make_samples(21, 3)
    batch = TokenBatch.from_arrays(**expected(samples, 0, np.arange(3), np.arange(3)))
    write_token_log(tmp_path / "run.parquet", batch)
    assert detect_format(tmp_path / "run.parquet") == "tokens"
    flat = write_generic_flat_parquet(tmp_path / "flat.parquet", samples)
    assert detect_format(flat, {"logp": "trainer_lp"}) == "generic"  # a mapping makes a table generic
    write_nemo(tmp_path / "train_data_step3.jsonl", samples)
    assert detect_format(tmp_path / "train_data_step3.jsonl") == "nemo_rl"  # by name
    (tmp_path / "renamed.jsonl").write_bytes((tmp_path / "train_data_step3.jsonl").read_bytes())
    assert detect_format(tmp_path / "renamed.jsonl") == "nemo_rl"  # by content
    torch.save(slime_train_v1(samples, 2, 0), tmp_path / "train_2.pt")
    assert detect_format(tmp_path / "train_2.pt") == "slime"
    t = padded(samples)
    dump = td.dump_step(tmp_path, 4, logp_behavior=t["logp_behavior"], logp_old=t["logp_old"],
                        advantages=t["advantages"], mask=t["mask"])
    assert detect_format(dump) == "trainer_dump"
    (tmp_path / "other.pt").write_bytes(Path(dump).read_bytes())
    assert detect_format(tmp_path / "other.pt") == "trainer_dump"  # by content, whatever the name
    src = open_log(tmp_path / "renamed.jsonl")
    assert src.describe()["format"] == "nemo_rl"


def test_unknown_format_is_a_clear_error(tmp_path):
    (tmp_path / "log.csv").write_text("a,b\n1,2\n")
    msg = error(open_log, tmp_path / "log.csv")
    assert msg.startswith(f"{tmp_path / 'log.csv'}: cannot detect the format (unknown extension .csv)")
    pq.write_table(pa.table({"x": [1.0]}), tmp_path / "x.parquet")
    assert "read it with --format generic" in error(open_log, tmp_path / "x.parquet")
    (tmp_path / "x.jsonl").write_text('{"x": 1}\n')
    assert "read it with --format generic" in error(open_log, tmp_path / "x.jsonl")
    torch.save({"weights": torch.ones(2)}, tmp_path / "m.pt")
    assert "neither a slime debug dump nor a drpo_sim trainer dump" in error(open_log, tmp_path / "m.pt")
    assert "reads .jsonl files, not .parquet" in error(open_log, tmp_path / "x.parquet", fmt="nemo_rl")
    assert "generic format only" in error(open_log, tmp_path / "x.jsonl", fmt="nemo_rl", mapping="logp=x")

def test_has_column_tells_from_the_files_without_reading_rows(tmp_path):
    samples = make_samples(22, 3)
    e = expected(samples, 0, np.arange(3), np.arange(3))
    write_token_log(tmp_path / "with.parquet", TokenBatch.from_arrays(**e))
    write_token_log(tmp_path / "without.parquet", TokenBatch.from_arrays(**{k: v for k, v in e.items()
                                                                             if k != "logp_old"}))
    assert open_log(tmp_path / "with.parquet").has_column("logp_old") is True
    src = open_log(tmp_path / "without.parquet")
    assert src.has_column("logp_old") is False and src.has_column("sample_id") is True
    assert src.has_column("topk_tv") is False  # an optional column this log does not hold
    assert src.has_column("entropy") is False  # outside the schema: no batch can hold it
    write_nemo(tmp_path / "train_data_step1.jsonl", samples)
    assert open_log(tmp_path / "train_data_step1.jsonl").has_column("logp_old") is True  # NeMo RL always gives it
    assert open_log(tmp_path / "train_data_step1.jsonl").has_column("seed") is None  # only the rows would tell
    flat = write_generic_flat_parquet(tmp_path / "flat.parquet", samples)
    mapping = "logp=trainer_lp,logp_behavior=engine_lp,advantage=adv"
    assert open_log(flat, mapping=mapping).has_column("logp_old") is False
    assert open_log(flat, mapping=mapping + ",logp_old=trainer_lp").has_column("logp_old") is True
    # what it says is what the batches hold
    for path in (tmp_path / "with.parquet", tmp_path / "without.parquet"):
        src = open_log(path)
        assert src.has_column("logp_old") is (next(iter(src)).logp_old is not None)

# ---------------------------------------------------------------------------------------------
# mapping


def test_parse_mapping():
    assert parse_mapping("logp=trainer_lp, logp_behavior=engine_lp,advantage=adv") == {
        "logp": "trainer_lp", "logp_behavior": "engine_lp", "advantage": "adv"}
    assert parse_mapping(None) == {} and parse_mapping({"mask": "m"}) == {"mask": "m"}
    msg = error(parse_mapping, "logp_behaviour=x")
    assert "unknown schema column 'logp_behaviour'" in msg and "did you mean 'logp_behavior'" in msg
    assert "valid names are ['logp'" in msg
    assert "ours=theirs" in error(parse_mapping, "logp")
    assert "mapped twice" in error(parse_mapping, "logp=a,logp=b")

# ---------------------------------------------------------------------------------------------
# folders, globs and compression


def test_searched_folders_skip_what_they_cannot_read_and_say_why_on_cpu(tmp_path):
    run = tmp_path / "run"
    (run / "dumps" / "deeper").mkdir(parents=True)
    samples = make_samples(80, 3)
    torch.save(slime_train_v1(samples, 2, 0), run / "dumps" / "deeper" / "train_2.pt")
    (run / "metrics.jsonl").write_text('{"loss": 0.5}\n')  # another tool's log
    (run / "notes.txt").write_text("lr 1e-6\n")
    (run / ".cache").mkdir()
    src = open_log(run)
    assert src.files == [run / "dumps" / "deeper" / "train_2.pt"] and src.describe()["format"] == "slime"
    why = dict(src.listing.skipped)
    assert why[run / "metrics.jsonl"].startswith("cannot detect the format: JSONL that is not a NeMo RL")
    assert why[run / "notes.txt"] == "not a log file (.txt)" and why[run / ".cache"] == "hidden folder (not searched)"
    # named, the same file is an error (it was asked for)
    assert "read it with --format generic" in error(open_log, run / "metrics.jsonl")
    # a folder with nothing to read says what it skipped
    msg = error(open_log, run, fmt="nemo_rl")
    assert msg.startswith(f"{run}: no nemo_rl files in this folder or below (skipped ")
    assert "not a nemo_rl file" in msg


def test_compressed_jsonl_for_every_jsonl_format_and_no_compressed_parquet(tmp_path):
    samples = make_samples(81, 4)
    write_nemo(tmp_path / "train_data_step3.jsonl", samples)
    gz = tmp_path / "train_data_step3.jsonl.gz"
    gz.write_bytes(gzip.compress((tmp_path / "train_data_step3.jsonl").read_bytes()))
    assert detect_format(gz) == "nemo_rl"  # by name, through the compression suffix
    (tmp_path / "train_data_step3.jsonl").unlink()
    flat = write_generic_flat_parquet(tmp_path / "flat.parquet", samples)
    pgz = tmp_path / "flat.parquet.gz"
    pgz.write_bytes(gzip.compress(flat.read_bytes()))
    msg = error(open_log, pgz)
    assert msg.startswith(f"{pgz}: a compressed Parquet file is not read") and "decompress it" in msg
    assert dict(open_log(tmp_path).listing.skipped)[pgz].startswith("compressed Parquet")
