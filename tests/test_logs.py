"""Log loaders (drpo_sim.logs): each format reproduces known tokens exactly; bad input gives
one-line errors naming file, field and row; drop mode counts what it drops; reading streams."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from drpo_sim.logs import FORMATS, open_log, parse_mapping
from drpo_sim.logs import trainer_dump as td
from drpo_sim.tokens import TokenBatch, concat, write_token_log

from logs_fixtures import (
    GENERIC_FLAT_MAP,
    GENERIC_RAGGED_MAP,
    expected,
    generic_ragged,
    make_samples,
    nemo_lines,
    padded,
    slime_rollout,
    slime_train_v1,
    slime_train_v2,
    write_generic_flat_jsonl,
    write_generic_flat_parquet,
    write_generic_ragged_jsonl,
    write_generic_ragged_parquet,
    write_nemo,
)

DOC = Path(__file__).resolve().parents[1] / "docs" / "trainer_dumps.md"


def read_all(*args, **kwargs) -> TokenBatch:
    return concat(list(open_log(*args, **kwargs)))


def assert_columns(batch: TokenBatch, want: dict[str, np.ndarray], columns=None) -> None:
    for name in columns or want:
        got = getattr(batch, name)
        assert got is not None, f"{name} missing"
        np.testing.assert_array_equal(got, np.asarray(want[name]).astype(got.dtype), err_msg=name)


def error(fn, *args, **kwargs) -> str:
    with pytest.raises(ValueError) as info:
        result = fn(*args, **kwargs)
        if hasattr(result, "__iter__"):
            list(result)
    msg = str(info.value)
    assert "\n" not in msg, msg
    return msg


# ---------------------------------------------------------------------------------------------
# ground truth, per format


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


@pytest.mark.parametrize("layout", ["flat", "ragged"])
@pytest.mark.parametrize("ext", ["parquet", "jsonl"])
def test_generic_reproduces_tokens(tmp_path, layout, ext):
    samples = make_samples(7, 5)
    writer = {("flat", "parquet"): write_generic_flat_parquet, ("flat", "jsonl"): write_generic_flat_jsonl,
              ("ragged", "parquet"): write_generic_ragged_parquet, ("ragged", "jsonl"): write_generic_ragged_jsonl}
    path = writer[layout, ext](tmp_path / f"log.{ext}", samples)
    mapping = GENERIC_FLAT_MAP if layout == "flat" else GENERIC_RAGGED_MAP
    src = open_log(path, mapping=mapping, group_size=2)  # auto + mapping -> generic
    b = concat(list(src))
    if layout == "flat":  # sample ids as mapped (10, 11, ...), groups sample_id // group_size
        want = expected(samples, 0, 10 + np.arange(5), (10 + np.arange(5)) // 2)
        cols = ["logp", "logp_behavior", "advantage", "mask", "position", "sample_id", "group_id"]
    else:  # positions, sample and group ids derived
        want = expected(samples, 0, np.arange(5), np.arange(5) // 2)
        cols = ["logp", "logp_behavior", "advantage", "mask", "position", "sample_id", "group_id", "token_id", "reward"]
    assert_columns(b, want, cols)
    assert src.describe()["format"] == "generic"


def test_generic_flat_derivations_and_describe(tmp_path):
    samples = make_samples(8, 4)
    e = expected(samples, 0, np.arange(4), np.arange(4))
    path = tmp_path / "t.parquet"
    pq.write_table(pa.table({"lp": e["logp"], "mu": e["logp_behavior"], "a": e["advantage"],
                             "pos": e["position"]}), path)
    src = open_log(path, fmt="generic", mapping="logp=lp,logp_behavior=mu,advantage=a,position=pos",
                   batch_size=7, group_size=2)
    assert src.describe()["derived"]["mask"] == "all True (not mapped)"
    b = concat(list(src))  # batches of 7 rows split samples; derivation carries over batches
    assert_columns(b, {**e, "mask": np.ones(len(b), bool), "group_id": np.repeat(np.arange(4) // 2,
                   [len(s.tokens) for s in samples])}, ["logp", "position", "sample_id", "group_id", "mask"])


def snippet_from_doc() -> str:
    text = DOC.read_text()
    m = re.search(r"<!-- snippet: dump_step.*?-->\n```python\n(.*?)```", text, re.S)
    assert m, "the dump_step snippet block is missing from docs/trainer_dumps.md"
    return m.group(1)


def test_trainer_dump_snippet_in_docs_is_the_one_the_loader_reads(tmp_path):
    code = snippet_from_doc()
    assert code == td.SNIPPET  # the docs cannot drift from the code
    ns: dict = {}
    exec(compile(code, str(DOC), "exec"), ns)
    samples = make_samples(9, 6)
    t = padded(samples)
    uid = np.array(["u-b", "u-b", "u-b", "u-a", "u-a", "u-a"], dtype=object)  # verl's uid strings
    path = ns["dump_step"](tmp_path / "dumps", 5, logp_behavior=t["logp_behavior"].to(torch.bfloat16).float(),
                           logp_old=t["logp_old"], advantages=t["advantages"], mask=t["mask"], group=uid,
                           token_ids=t["token_ids"], rewards=t["rewards"])
    assert Path(path).name == "drpo_dump_step5_rank0.pt"
    # TRL-style: per-token advantages, integer groups, a second step
    t2 = padded(samples[:4])
    ns["dump_step"](tmp_path / "dumps", 6, logp_behavior=t2["logp_behavior"], logp_old=t2["logp_old"],
                    advantages=t2["advantages"][:, None].expand_as(t2["logp_old"]), mask=t2["mask"].bool(),
                    group=torch.tensor([0, 0, 1, 1]), token_ids=t2["token_ids"], rewards=t2["rewards"])
    b = read_all(tmp_path / "dumps")  # auto: trainer_dump by name
    mu = [s.mu.astype(np.float32) for s in samples]
    bf = [torch.tensor(m).to(torch.bfloat16).float().numpy().astype(np.float64) for m in mu]
    want1 = expected(samples, 5, np.arange(6), [0, 0, 0, 1, 1, 1])
    want1["logp_behavior"] = np.concatenate(bf)
    want2 = expected(samples[:4], 6, 6 + np.arange(4), [2, 2, 3, 3])
    want = {k: np.concatenate([want1[k], want2[k]]) for k in want1}
    assert_columns(b, want)


def test_tokens_format_round_trip(tmp_path):
    samples = make_samples(10, 4)
    e = expected(samples, 3, np.arange(4), np.arange(4))
    batch = TokenBatch.from_arrays(**e)
    write_token_log(tmp_path / "run.parquet", batch)
    b = read_all(tmp_path / "run.parquet")
    assert_columns(b, e)
    assert read_all(tmp_path / "run.parquet", on_invalid="drop").columns.keys() == b.columns.keys()


# ---------------------------------------------------------------------------------------------
# streaming


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
# bad input: NeMo RL


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


# ---------------------------------------------------------------------------------------------
# bad input: generic


def test_generic_misspelt_and_missing_columns(tmp_path):
    path = write_generic_flat_parquet(tmp_path / "g.parquet", make_samples(12, 3))
    msg = error(open_log, path, fmt="generic", mapping="logp=trainer_lp,logp_behavior=engine_lp,advantage=advs")
    assert msg.startswith(f"{path}: column 'advs' (mapped to advantage) is not in the file (did you mean 'adv'?)")
    msg = error(open_log, path, fmt="generic", mapping="logp=trainer_lp,logp_behavior=engine_lp", on_invalid="drop")
    assert msg.startswith(f"{path}: no column for advantage: map it with advantage=<column>")


def test_generic_flat_nan_rows_raise_or_drop(tmp_path):
    cols = dict(pa.table({k: v for k, v in write_cols(make_samples(13, 4)).items()}).to_pydict())
    cols["trainer_lp"][5] = float("nan")
    cols["trainer_lp"][7] = float("nan")
    cols["loss_mask"][7] = 0  # NaN on a masked-out token is fine
    path = tmp_path / "g.parquet"
    pq.write_table(pa.table(cols), path)
    msg = error(open_log, path, mapping=GENERIC_FLAT_MAP)
    assert msg == f"{path}: trainer_lp (logp): 1 row is not finite (nan) on masked-in tokens at rows [5]"
    src = open_log(path, mapping=GENERIC_FLAT_MAP, on_invalid="drop", batch_size=4)
    b = concat(list(src))
    assert len(b) == len(cols["adv"]) - 1 and src.report.total == 1


def write_cols(samples):
    from logs_fixtures import generic_flat
    return generic_flat(samples)


def test_generic_ragged_positive_length_mismatch_and_types(tmp_path):
    samples = make_samples(14, 4)
    cols = generic_ragged(samples)
    cols["engine_lp"][2][1] = 0.25
    path = tmp_path / "r.parquet"
    pq.write_table(pa.table(cols), path)
    msg = error(open_log, path, mapping=GENERIC_RAGGED_MAP)
    assert msg.startswith(f"{path}: engine_lp (logp_behavior): 1 value is positive (max 0.25) at row 2 index 1;")

    cols = generic_ragged(samples)
    cols["engine_lp"][1] = cols["engine_lp"][1][:-1]
    path = write_generic_ragged_jsonl(tmp_path / "r.jsonl", samples)
    lines = path.read_text().splitlines()
    obj = json.loads(lines[1])
    obj["engine_lp"] = obj["engine_lp"][:-1]
    lines[1] = json.dumps(obj)
    path.write_text("\n".join(lines) + "\n")
    msg = error(open_log, path, mapping=GENERIC_RAGGED_MAP)
    assert msg.startswith(f"{path}: line 2: fields of one sample have different lengths (trainer_lp has")
    src = open_log(path, mapping=GENERIC_RAGGED_MAP, on_invalid="drop")
    assert len(concat(list(src))) == sum(len(s.tokens) for s in samples) - len(samples[1].tokens)
    assert src.report.total_samples == 1

    pq.write_table(pa.table({"trainer_lp": [-1.0], "engine_lp": [-1.0], "adv": ["big"]}), tmp_path / "s.parquet")
    msg = error(open_log, tmp_path / "s.parquet", mapping="logp=trainer_lp,logp_behavior=engine_lp,advantage=adv",
                on_invalid="drop")
    assert msg == f"{tmp_path / 's.parquet'}: adv (advantage): holds string, expected numbers"

    flat = write_generic_flat_jsonl(tmp_path / "f.jsonl", samples)
    lines = flat.read_text().splitlines()
    obj = json.loads(lines[6])
    obj["adv"] = "x"
    lines[6] = json.dumps(obj)
    flat.write_text("\n".join(lines) + "\n")
    assert error(open_log, flat, mapping=GENERIC_FLAT_MAP) == f"{flat}: line 7: adv (advantage): 'x' is not a number"


def test_generic_empty_and_truncated_parquet(tmp_path):
    path = tmp_path / "e.parquet"
    pq.write_table(pa.table({"lp": pa.array([], pa.float64()), "mu": pa.array([], pa.float64()),
                             "a": pa.array([], pa.float64())}), path)
    for mode in ("raise", "drop"):
        msg = error(open_log, path, mapping="logp=lp,logp_behavior=mu,advantage=a", on_invalid=mode)
        assert msg == f"{path}: no tokens (empty file)"
    path = write_generic_flat_parquet(tmp_path / "t.parquet", make_samples(15, 40))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    msg = error(open_log, path, fmt="generic", mapping=GENERIC_FLAT_MAP, on_invalid="drop")
    assert msg.startswith(f"{path}: not a readable Parquet file")


# ---------------------------------------------------------------------------------------------
# bad input: slime


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
    assert msg == f"{tmp_path / 'train_2.pt'}: log_probs (logp): 1 value is not finite (nan) on masked-in tokens at sample 2 index 1"

    dump = slime_train_v1(samples, 2, 0)
    dump["rollout_data"]["advantages"][1] = dump["rollout_data"]["advantages"][1][:-1]
    torch.save(dump, tmp_path / "train_2.pt")
    msg = error(open_log, tmp_path / "train_2.pt")
    assert msg.startswith(f"{tmp_path / 'train_2.pt'}: sample 1: fields of one sample have different lengths "
                          "(response_lengths has")
    src = open_log(tmp_path / "train_2.pt", on_invalid="drop")
    assert len(concat(list(src))) == sum(len(s.tokens) for s in samples) - len(samples[1].tokens)
    assert src.report.to_dict()["by_file"][str(tmp_path / "train_2.pt")] == {"length mismatch": {"rows": 0, "samples": 1}}


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


# ---------------------------------------------------------------------------------------------
# bad input: trainer dumps and token logs


def test_trainer_dump_bad_inputs(tmp_path):
    samples = make_samples(18, 4)
    t = padded(samples)
    args = dict(logp_behavior=t["logp_behavior"], logp_old=t["logp_old"], advantages=t["advantages"],
                mask=t["mask"])
    path = Path(td.dump_step(tmp_path, 1, **args))
    obj = torch.load(path)
    obj["masks"] = obj.pop("mask")
    torch.save(obj, path)
    msg = error(open_log, path)
    assert msg.startswith(f"{path}: missing field 'mask' (did you mean 'masks'?)")

    bad = dict(args, logp_old=t["logp_old"].clone())
    bad["logp_old"][1, 2] = float("nan")
    path = Path(td.dump_step(tmp_path, 1, **bad))
    assert error(open_log, path) == (f"{path}: logp_old (logp): 1 value is not "
                                     "finite (nan) on masked-in tokens at sample 1 index 2")
    src = open_log(path, on_invalid="drop")
    assert len(concat(list(src))) == sum(len(s.tokens) for s in samples) - 1 and src.report.total == 1

    path = Path(td.dump_step(tmp_path, 1, **dict(args, advantages=t["logp_old"][:3])))
    msg = error(open_log, path, on_invalid="drop")
    assert msg.startswith(f"{path}: advantages has shape (3, ") and "but logp_behavior has (4, " in msg

    path = Path(td.dump_step(tmp_path, 1, **{k: v[:0] for k, v in args.items()}))
    assert error(open_log, path) == f"{path}: no tokens (logp_behavior has shape (0, {t['mask'].shape[1]}))"

    path = Path(td.dump_step(tmp_path, 1, **args))
    data = path.read_bytes()
    path.write_bytes(data[:100])
    assert error(open_log, path).startswith(f"{path}: not a readable torch file (truncated or corrupt")


def test_token_log_bad_inputs(tmp_path):
    samples = make_samples(19, 3)
    e = expected(samples, 0, np.arange(3), np.arange(3))
    table = TokenBatch.from_arrays(**e).to_arrow().rename_columns(
        [n if n != "group_id" else "group_ids" for n in TokenBatch.from_arrays(**e).to_arrow().column_names])
    pq.write_table(table, tmp_path / "a.parquet")
    msg = error(open_log, tmp_path / "a.parquet", fmt="tokens", on_invalid="drop")
    assert msg.startswith(f"{tmp_path / 'a.parquet'}: missing required column 'group_id' (did you mean 'group_ids'?)")

    write_token_log(tmp_path / "empty.parquet", [])
    assert error(open_log, tmp_path / "empty.parquet") == f"{tmp_path / 'empty.parquet'}: no tokens (empty file)"

    e["logp"] = e["logp"].copy()
    e["logp"][4] = 0.5
    pq.write_table(pa.table(e), tmp_path / "b.parquet")
    msg = error(open_log, tmp_path / "b.parquet")
    assert msg.startswith(f"{tmp_path / 'b.parquet'}: logp: 1 row is positive (max 0.5) at rows [4]")
    src = open_log(tmp_path / "b.parquet", on_invalid="drop")
    assert len(concat(list(src))) == len(e["logp"]) - 1 and src.report.total == 1


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
