"""Fixtures for the log loaders' tests (tests/logs/): one set of ground-truth tokens written in each
dump format, and the helpers those tests share (``read_all``, ``assert_columns``, ``error``).

Field names and nesting follow the real projects (see the loaders' docstrings for sources):
NeMo RL's padded prompt+response lists wrapped in one-element lists, slime's ragged per-sample
lists and tensors (response only), flat and ragged generic tables, padded ``[B, T]`` trainer
dumps written by ``trainer_dump.SNIPPET``. Values are float32-representable so that formats that
store float32 tensors reproduce them exactly.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from drpo_sim.logs import open_log
from drpo_sim.tokens import TokenBatch, concat


@dataclass
class Sample:
    prompt: np.ndarray  # prompt token ids
    tokens: np.ndarray  # response token ids
    logp: np.ndarray  # pi_old per response token
    mu: np.ndarray  # behaviour log-probs per response token
    mask: np.ndarray  # loss mask per response token (first and last True)
    advantage: float
    reward: float


def f32(x) -> np.ndarray:
    return np.asarray(x, np.float32).astype(np.float64)


def make_samples(seed: int = 0, n: int = 6) -> list[Sample]:
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        p, r = int(rng.integers(2, 5)), int(rng.integers(3, 8))
        mask = np.ones(r, bool)
        if r > 4:
            mask[2] = False  # an environment token inside a multi-turn response
        logp = f32(-rng.exponential(1.0, r))
        out.append(Sample(
            prompt=rng.integers(5, 1000, p), tokens=rng.integers(5, 1000, r), logp=logp,
            mu=f32(np.minimum(logp + rng.normal(0, 0.05, r), 0.0)), mask=mask,
            advantage=float(f32(rng.normal())), reward=float(f32(rng.random())),
        ))
    return out


def expected(samples: list[Sample], step: int, sample_ids, group_ids) -> dict[str, np.ndarray]:
    """The token rows every loader must produce for these samples (response tokens only)."""
    n = [len(s.tokens) for s in samples]
    return {
        "logp": np.concatenate([s.logp for s in samples]),
        "logp_behavior": np.concatenate([s.mu for s in samples]),
        "logp_old": np.concatenate([s.logp for s in samples]),
        "advantage": np.repeat([s.advantage for s in samples], n),
        "mask": np.concatenate([s.mask for s in samples]),
        "position": np.concatenate([np.arange(k) for k in n]),
        "token_id": np.concatenate([s.tokens for s in samples]),
        "reward": np.repeat([s.reward for s in samples], n),
        "step": np.full(sum(n), step),
        "sample_id": np.repeat(np.asarray(sample_ids), n),
        "group_id": np.repeat(np.asarray(group_ids), n),
    }


# ----------------------------------------------------------------------------------------------
# NeMo RL: train_data_step{N}.jsonl


def nemo_lines(samples: list[Sample], seed: int = 0) -> list[str]:
    rng = np.random.default_rng(seed + 100)
    t = max(len(s.prompt) + len(s.tokens) for s in samples) + 3  # padded length
    lines = []
    for i, s in enumerate(samples):
        p, r = len(s.prompt), len(s.tokens)
        pad = t - p - r
        prompt_lp = [0.0] + f32(-rng.exponential(2.0, p - 1)).tolist()  # the trainer scores prompt tokens too
        obj = {
            "content": [f"prompt {i} and response"],
            "rewards": [s.reward],
            "input_lengths": [p + r],
            "token_ids": [list(map(int, s.prompt)) + list(map(int, s.tokens)) + [0] * pad],
            "token_loss_mask": [[0] * p + list(map(int, s.mask)) + [0] * pad],
            "sample_loss_mask": [1.0],
            "advantages": [[s.advantage] * (p + r) + [0.0] * pad],
            "generation_logprobs": [[0.0] * p + s.mu.tolist() + [0.0] * pad],
            "prev_logprobs": [prompt_lp + s.logp.tolist() + [0.0] * pad],
            "idx": i,
        }
        lines.append(json.dumps(obj))
    return lines


def write_nemo(path: Path, samples: list[Sample], seed: int = 0) -> Path:
    path.write_text("\n".join(nemo_lines(samples, seed)) + "\n")
    return path


def nemo_lines_v05(samples: list[Sample], seed: int = 0, dynamic_sampling: bool = False) -> list[str]:
    """Lines as NeMo RL v0.3.0 to v0.5.0 wrote them (``grpo_train`` logged ``content``, ``rewards``,
    ``generation_logprobs``, ``prev_logprobs`` and ``input_lengths`` only, plus
    ``filtered_rewards`` with dynamic sampling from v0.4.0). ``generation_logprobs`` is 0 on every
    token the engine did not generate (prompt, environment, padding), as NeMo RL's
    ``zeros_like`` there. With ``dynamic_sampling``, ``filtered_rewards`` holds the sample's reward
    and ``rewards`` another number (the unfiltered batch's)."""
    out = []
    for line, s in zip(nemo_lines(samples, seed), samples):
        obj = json.loads(line)
        p = len(s.prompt)
        gen = obj["generation_logprobs"][0]
        for j, m in enumerate(s.mask):
            if not m:
                gen[p + j] = 0.0
        old = {"content": obj["content"], "rewards": obj["rewards"], "generation_logprobs": obj["generation_logprobs"],
               "prev_logprobs": obj["prev_logprobs"], "input_lengths": obj["input_lengths"], "idx": obj["idx"]}
        if dynamic_sampling:
            old["filtered_rewards"] = [s.reward]
            old["rewards"] = [s.reward + 10.0]
        out.append(json.dumps(old))
    return out


def expected_v05(samples: list[Sample], step: int, sample_ids, group_ids) -> dict[str, np.ndarray]:
    """The rows of :func:`nemo_lines_v05`: no advantage (0) nor token ids, and the mask told by
    ``generation_logprobs != 0`` (the engine's log-prob is 0 on the tokens it did not generate)."""
    for s in samples:
        assert s.mu[0] != 0.0, "the fixture's first response token needs a non-zero engine log-prob"
    e = expected(samples, step, sample_ids, group_ids)
    mask = e["mask"] & (e["logp_behavior"] != 0.0)
    e["mask"] = mask
    e["logp_behavior"] = np.where(mask, e["logp_behavior"], 0.0)
    e["advantage"] = np.zeros(len(mask))
    del e["token_id"]
    return e


# ----------------------------------------------------------------------------------------------
# slime: --save-debug-rollout-data / --save-debug-train-data


def slime_rollout(samples: list[Sample], rollout_id: int, index0: int, group_size: int) -> dict:
    out = []
    for i, s in enumerate(samples):
        out.append({
            "group_index": (index0 + i) // group_size, "index": index0 + i, "prompt": f"prompt {i}",
            "tokens": list(map(int, s.prompt)) + list(map(int, s.tokens)), "multimodal_inputs": None,
            "response": "...", "response_length": len(s.tokens), "label": None, "reward": s.reward,
            "loss_mask": list(map(int, s.mask)), "weight_versions": [], "rollout_log_probs": s.mu.tolist(),
            "remove_sample": False, "status": "completed", "metadata": {},
            "spec_info": {"spec_accept_token_num": 0}, "prefix_cache_info": {"cached_tokens": 0},
        })
    return {"rollout_id": rollout_id, "samples": out}


def slime_train_v1(samples: list[Sample], rollout_id: int, index0: int, with_mu: bool = True) -> dict:
    rd = {
        "tokens": [list(map(int, s.prompt)) + list(map(int, s.tokens)) for s in samples],
        "response_lengths": [len(s.tokens) for s in samples],
        "rewards": [s.advantage for s in samples],
        "raw_reward": [s.reward for s in samples],
        "truncated": [0] * len(samples),
        "sample_indices": [index0 + i for i in range(len(samples))],
        "loss_masks": [list(map(int, s.mask)) for s in samples],
        "total_lengths": [len(s.prompt) + len(s.tokens) for s in samples],
        "log_probs": [torch.tensor(s.logp, dtype=torch.float32) for s in samples],
        "ref_log_probs": [torch.tensor(s.logp, dtype=torch.float32) for s in samples],
        "advantages": [torch.full((len(s.tokens),), s.advantage, dtype=torch.float32) for s in samples],
        "returns": [torch.full((len(s.tokens),), s.advantage, dtype=torch.float32) for s in samples],
    }
    if with_mu:
        rd["rollout_log_probs"] = [s.mu.tolist() for s in samples]
    return {"rollout_id": rollout_id, "rank": 0, "rollout_data": rd}


def slime_train_v2(samples: list[Sample], rollout_id: int, index0: int) -> dict:
    v1 = slime_train_v1(samples, rollout_id, index0)["rollout_data"]
    rows = []
    for i in range(len(samples)):
        row = {"data_parallel_rank": 0, "sample_index": v1["sample_indices"][i], "rollout_position": i}
        row.update({k: v[i] for k, v in v1.items() if k not in ("sample_indices", "raw_reward")})
        rows.append(row)
    return {"format_version": 2, "rollout_id": rollout_id, "rank": 0, "samples": rows,
            "dp_shards": [{"rank": 0, "data_parallel_rank": 0}], "raw_reward": v1["raw_reward"]}


# ----------------------------------------------------------------------------------------------
# generic tables


def generic_flat(samples: list[Sample]) -> dict[str, np.ndarray]:
    """One token per row, with the file's own column names."""
    e = expected(samples, 0, np.arange(len(samples)) + 10, np.zeros(len(samples)))
    return {"trainer_lp": e["logp"], "engine_lp": e["logp_behavior"], "adv": e["advantage"],
            "loss_mask": e["mask"].astype(np.int8), "seq": e["sample_id"], "tok_pos": e["position"]}


def write_generic_flat_parquet(path: Path, samples: list[Sample]) -> Path:
    pq.write_table(pa.table(generic_flat(samples)), path)
    return path


def write_generic_flat_jsonl(path: Path, samples: list[Sample]) -> Path:
    cols = generic_flat(samples)
    rows = [{k: v[i].item() for k, v in cols.items()} for i in range(len(cols["adv"]))]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def generic_ragged(samples: list[Sample]) -> dict[str, list]:
    """One sample per row: per-token lists and per-sample scalars."""
    return {
        "trainer_lp": [s.logp.tolist() for s in samples],
        "engine_lp": [s.mu.tolist() for s in samples],
        "adv": [s.advantage for s in samples],
        "loss_mask": [list(map(bool, s.mask)) for s in samples],
        "ids": [list(map(int, s.tokens)) for s in samples],
        "score": [s.reward for s in samples],
    }


def write_generic_ragged_parquet(path: Path, samples: list[Sample]) -> Path:
    pq.write_table(pa.table(generic_ragged(samples)), path)
    return path


def write_generic_ragged_jsonl(path: Path, samples: list[Sample]) -> Path:
    cols = generic_ragged(samples)
    rows = [{k: v[i] for k, v in cols.items()} for i in range(len(samples))]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


GENERIC_FLAT_MAP = "logp=trainer_lp,logp_behavior=engine_lp,advantage=adv,mask=loss_mask,sample_id=seq,position=tok_pos"
GENERIC_RAGGED_MAP = "logp=trainer_lp,logp_behavior=engine_lp,advantage=adv,mask=loss_mask,token_id=ids,reward=score"


# ----------------------------------------------------------------------------------------------
# trainer dumps: padded [B, T] tensors as verl / TRL hold them


def padded(samples: list[Sample], extra: int = 2) -> dict[str, torch.Tensor]:
    b, t = len(samples), max(len(s.tokens) for s in samples) + extra
    out = {
        "logp_behavior": torch.zeros(b, t), "logp_old": torch.zeros(b, t),
        "advantages": torch.tensor([s.advantage for s in samples]),
        "mask": torch.zeros(b, t, dtype=torch.int64), "token_ids": torch.zeros(b, t, dtype=torch.int64),
        "rewards": torch.tensor([s.reward for s in samples]),
    }
    for i, s in enumerate(samples):
        r = len(s.tokens)
        out["logp_behavior"][i, :r] = torch.tensor(s.mu)
        out["logp_old"][i, :r] = torch.tensor(s.logp)
        out["mask"][i, :r] = torch.tensor(s.mask.astype(np.int64))
        out["token_ids"][i, :r] = torch.tensor(s.tokens)
    return out


# ---------------------------------------------------------------------------------------------
# helpers of the loaders' tests


def read_all(*args, **kwargs) -> TokenBatch:
    """Every batch :func:`drpo_sim.logs.open_log` yields for these arguments, concatenated."""
    return concat(list(open_log(*args, **kwargs)))


def assert_columns(batch: TokenBatch, want: dict[str, np.ndarray], columns=None) -> None:
    """``batch``'s columns (all of ``want``, or ``columns``) equal ``want``'s, in the batch's dtypes."""
    for name in columns or want:
        got = getattr(batch, name)
        assert got is not None, f"{name} missing"
        np.testing.assert_array_equal(got, np.asarray(want[name]).astype(got.dtype), err_msg=name)


def error(fn, *args, **kwargs) -> str:
    """The message of the ``ValueError`` that calling ``fn`` (and reading what it returns) raises;
    the message must be one line."""
    with pytest.raises(ValueError) as info:
        result = fn(*args, **kwargs)
        if hasattr(result, "__iter__"):
            list(result)
    msg = str(info.value)
    assert "\n" not in msg, msg
    return msg
