"""drpo_sim.logs.trainer_dump: the dump snippet of docs/trainer_dumps.md is the loader's, its dumps (verl-
and TRL-style) reproduce known tokens exactly, and bad dumps give one-line errors."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import torch
from logs_fixtures import assert_columns, error, expected, make_samples, padded, read_all

from drpo_sim.logs import open_log
from drpo_sim.logs import trainer_dump as td
from drpo_sim.tokens import concat

DOC = Path(__file__).resolve().parents[2] / "docs" / "trainer_dumps.md"


# ---------------------------------------------------------------------------------------------
# ground truth


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

# ---------------------------------------------------------------------------------------------
# bad input


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
    msg = error(open_log, path)
    assert msg.startswith(f"{path}: no tokens (logp_behavior has shape (0, {t['mask'].shape[1]})); leave the file out")

    path = Path(td.dump_step(tmp_path, 1, **args))
    data = path.read_bytes()
    path.write_bytes(data[:100])
    assert error(open_log, path).startswith(f"{path}: not a readable torch file (truncated or corrupt")
