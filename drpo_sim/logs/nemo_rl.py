"""NeMo RL per-step training dumps, ``train_data_step{N}.jsonl``, as token batches.

Source (field names and nesting as written there): NVIDIA-NeMo/RL,
``nemo_rl/algorithms/grpo.py`` (``grpo_train`` and ``async_grpo_train``, "Logging" stage) builds
``log_data`` from the training batch and calls ``logger.log_batched_dict_as_jsonl(log_data,
f"train_data_step{total_steps + 1}.jsonl")``; ``nemo_rl/utils/logger.py``
(``Logger.log_batched_dict_as_jsonl``) writes one JSON object per line, one line per sample: the
size-1 slice of the batch (``make_microbatch_iterator(1)``) plus ``"idx": i``. So every
per-sample value is wrapped in a one-element list: ``"prev_logprobs": [[...]]``,
``"input_lengths": [L]``, ``"rewards": [r]``.

Fields used (``T`` = padded sequence length, prompt and response together):

=======================  =========  ==============================================================
field                    shape      meaning (NeMo RL)
=======================  =========  ==============================================================
``generation_logprobs``  ``[[T]]``  log-prob of token ``t`` under the generation engine (vLLM):
                                    ``mu``; 0 on prompt and padding tokens
``prev_logprobs``        ``[[T]]``  the trainer's recomputed log-prob (``policy.get_logprobs``
                                    before the update): ``pi_old``; index ``t`` scores token ``t``
``advantages``           ``[[T]]``  per token: the sample's advantage expanded over each message's
                                    tokens (prompt included); a plain number is broadcast
``token_loss_mask``      ``[[T]]``  1 on generated (assistant) tokens, 0 on prompt, environment
                                    and padding tokens
``input_lengths``        ``[L]``    unpadded sequence length
``sample_loss_mask``     ``[m]``    optional; NeMo RL's ``loss_multiplier`` (0 drops the sample)
``token_ids``            ``[[T]]``  optional; the token ids
``rewards``              ``[r]``    optional; the sample's reward
=======================  =========  ==============================================================

Other fields (``content``, ``idx``, ``agent_ref``, ``filtered_rewards``) are ignored. Versions of
NeMo RL that log only ``generation_logprobs``/``prev_logprobs`` lack ``advantages`` and
``token_loss_mask`` and cannot be replayed (missing-field error).

Mapping to the schema
---------------------
``logp_behavior = generation_logprobs``; ``logp = logp_old = prev_logprobs``. The dump holds no
post-update policy: it is written once per step, and at the first mini-batch of a step the
trained policy equals the policy that recomputed ``prev_logprobs``, so ``pi = pi_old`` there; the
per-token analyses (weights at the first update, ``pi_old`` vs ``mu`` mismatch) are exact for it.

Rows are the tokens of the response: from the first token with ``token_loss_mask == 1`` up to
``input_lengths`` (exclusive); prompt tokens before it and padding after it are not emitted.
``position`` counts from that first token (0); environment tokens between turns of a multi-turn
sample are emitted with ``mask = False``. ``mask = token_loss_mask and sample_loss_mask != 0``.
A sample with no loss token contributes no rows. ``step`` is ``N`` of the file name.

``sample_id`` numbers samples across the whole log in reading order. The dump has no group field:
NeMo RL repeats each prompt ``num_generations_per_prompt`` times consecutively
(``batch.repeat_interleave``), so ``group_id`` is given to consecutive samples of a file in
groups of ``group_size`` (a loader option; default 1: each sample its own group), numbered
across the log.

Problems confined to one line (invalid or truncated JSON, fields of different lengths, strings
where numbers belong, a field missing on that line) raise ``<file>: line N: ...``, or drop the
line with ``on_invalid="drop"``; a required field missing from the first line is an error in
both modes. Lines are parsed one at a time and converted in blocks of about ``batch_size``
tokens, so memory is bounded by ``batch_size`` and the longest line.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from drpo_sim.logs._stream import Batcher, iter_lines
from drpo_sim.logs.validate import (
    Context,
    Piece,
    SampleError,
    check_lengths,
    check_piece,
    did_you_mean,
    numbers_1d,
    scalar,
)
from drpo_sim.tokens import TokenBatch

NAME = "nemo_rl"
REQUIRED = ("generation_logprobs", "prev_logprobs", "advantages", "token_loss_mask", "input_lengths")
OPTIONAL = ("token_ids", "rewards", "sample_loss_mask")
FILE_RE = re.compile(r"train_data_step(\d+)\.jsonl$")
_STEP_RE = re.compile(r"step(\d+)")
#: schema column -> NeMo RL field, for messages
NAMES = {"logp": "prev_logprobs", "logp_old": "prev_logprobs", "logp_behavior": "generation_logprobs",
         "advantage": "advantages", "mask": "token_loss_mask", "token_id": "token_ids", "reward": "rewards"}


def matches(path: Path) -> bool:
    """Files a directory contributes for this format: ``train_data_step{N}.jsonl``."""
    return FILE_RE.search(path.name) is not None


def sniff(first_line: dict[str, Any]) -> bool:
    return "generation_logprobs" in first_line and "prev_logprobs" in first_line


def iter_files(paths: list[Path], ctx: Context) -> Iterator[TokenBatch]:
    for path in paths:
        yield from _read(path, ctx)


def _step(path: Path) -> int:
    m = _STEP_RE.search(path.name)
    if m is None:
        raise ValueError(f"{path}: cannot read the step from the file name (NeMo RL writes train_data_step{{N}}.jsonl)")
    return int(m.group(1))


def _read(path: Path, ctx: Context) -> Iterator[TokenBatch]:
    step = _step(path)
    batcher = Batcher(ctx, path)
    optional: tuple[str, ...] | None = None
    n = 0  # samples (non-blank lines) seen in this file
    block: list[tuple[int, dict[str, np.ndarray], np.ndarray]] = []
    rows = 0
    for lineno, obj in iter_lines(path):
        k, n = n, n + 1
        try:
            if isinstance(obj, SampleError):
                raise obj
            if not isinstance(obj, dict):
                raise SampleError(f"expected a JSON object, got {type(obj).__name__}", "invalid JSON")
            if optional is None:  # the first good line fixes the fields of the file
                missing = [f for f in REQUIRED if f not in obj]
                if missing:
                    hint = did_you_mean(missing[0], obj)
                    raise ValueError(
                        f"{path}: line {lineno}: missing field {missing[0]!r}{hint}; NeMo RL train_data_step*.jsonl "
                        f"lines need {', '.join(REQUIRED)} (found: {', '.join(sorted(obj))})"
                    )
                optional = tuple(f for f in OPTIONAL if f in obj)
            got = _sample(obj, optional, step)
        except SampleError as e:
            ctx.sample_problem(path, f"line {lineno}", e)
            continue
        if got is None:
            continue
        cols, t = got
        sid = ctx.next_sample + k
        gid = ctx.next_group + k // ctx.group_size
        cols["sample_id"] = np.full(t.size, sid, np.int64)
        cols["group_id"] = np.full(t.size, gid, np.int64)
        block.append((lineno, cols, t))
        rows += t.size
        if rows >= ctx.batch_size:
            yield from batcher.add(_check(block, path, ctx))
            block, rows = [], 0
    if n == 0:
        raise ValueError(f"{path}: no tokens (empty file)")
    if block:
        yield from batcher.add(_check(block, path, ctx))
    ctx.next_sample += n
    ctx.next_group += math.ceil(n / ctx.group_size)
    yield from batcher.flush()


def _check(block: list[tuple[int, dict[str, np.ndarray], np.ndarray]], path: Path, ctx: Context) -> dict:
    names = block[0][1].keys()
    piece = Piece(
        columns={c: np.concatenate([b[1][c] for b in block]) for c in names},
        unit=np.concatenate([np.full(b[2].size, b[0], np.int64) for b in block]),
        index=np.concatenate([b[2] for b in block]),
    )
    return check_piece(piece, ctx, path, "line", NAMES)


def _sample(
    obj: dict[str, Any], optional: tuple[str, ...], step: int
) -> tuple[dict[str, np.ndarray], np.ndarray] | None:
    """One line's response tokens as schema columns, and their indices in the line's lists."""
    for f in REQUIRED + optional:
        if f not in obj:
            raise SampleError(f"missing field {f!r}{did_you_mean(f, obj)}", "missing field")
    gen = numbers_1d(obj["generation_logprobs"], "generation_logprobs")
    prev = numbers_1d(obj["prev_logprobs"], "prev_logprobs")
    lmask = numbers_1d(obj["token_loss_mask"], "token_loss_mask")
    lengths = {"generation_logprobs": gen.size, "prev_logprobs": prev.size, "token_loss_mask": lmask.size}
    adv_raw = obj["advantages"]
    if isinstance(adv_raw, (int, float)) or (isinstance(adv_raw, list) and len(adv_raw) == 1
                                              and not isinstance(adv_raw[0], list)):
        adv = np.full(gen.size, scalar(adv_raw, "advantages"))
    else:
        adv = numbers_1d(adv_raw, "advantages")
        lengths["advantages"] = adv.size
    tok = None
    if "token_ids" in optional:
        tok = numbers_1d(obj["token_ids"], "token_ids", integer=True)
        lengths["token_ids"] = tok.size
    check_lengths(lengths)
    size = gen.size
    length = scalar(obj["input_lengths"], "input_lengths")
    if not (length.is_integer() and 0 <= length <= size):
        raise SampleError(f"input_lengths is {length:g} but the sequence lists hold {size} tokens", "length mismatch")
    length = int(length)
    bad = np.flatnonzero((lmask != 0) & (lmask != 1))
    if bad.size:
        raise SampleError(f"token_loss_mask: index {bad[0]} holds {lmask[bad[0]]:g}, not 0 or 1", "non-numeric value")
    inside = np.flatnonzero(lmask[:length] != 0)
    if inside.size == 0:
        return None
    t = np.arange(inside[0], length)
    keep = lmask[t] != 0
    if "sample_loss_mask" in optional:
        keep &= scalar(obj["sample_loss_mask"], "sample_loss_mask") != 0
    cols: dict[str, np.ndarray] = {
        "logp": prev[t], "logp_behavior": gen[t], "advantage": adv[t], "mask": keep,
        "position": (t - t[0]).astype(np.int32), "logp_old": prev[t],
        "step": np.full(t.size, step, np.int64),
    }
    if tok is not None:
        cols["token_id"] = tok[t]
    if "rewards" in optional:
        cols["reward"] = np.full(t.size, scalar(obj["rewards"], "rewards"))
    return cols, t
