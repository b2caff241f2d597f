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
                                    (v0.6.0 on; without it the log is mismatch-only, below)
``token_loss_mask``      ``[[T]]``  1 on generated (assistant) tokens, 0 on prompt, environment
                                    and padding tokens (v0.6.0 on)
``input_lengths``        ``[L]``    unpadded sequence length
``sample_loss_mask``     ``[m]``    optional; NeMo RL's ``loss_multiplier`` (0 drops the sample)
``token_ids``            ``[[T]]``  optional; the token ids
``rewards``              ``[r]``    optional; the sample's reward
``filtered_rewards``     ``[r]``    optional (dynamic sampling); the sample's reward, then
                                    ``rewards`` holds the unfiltered batch's
=======================  =========  ==============================================================

Other fields (``content``, ``idx``, ``agent_ref``) are ignored.

Versions (fields per line as written by ``grpo_train``; NeMo RL tags ``v0.3.0`` to ``v0.7.0``):

* **v0.6.0 on** (main from 21 February 2026, commit "Nano v3 RL Recipe"): all the fields above.
* **v0.3.0 to v0.5.0** (and ``nemo_reinforcer`` v0.2): only ``content``, ``rewards``,
  ``generation_logprobs``, ``prev_logprobs`` and ``input_lengths`` (``filtered_rewards`` too from
  v0.4.0, with dynamic sampling). These logs are read in **mismatch-only** mode: they hold both
  log-probs, which is all the ``pi_old`` against ``mu`` analysis needs, but no advantage, so
  ``advantage`` is filled with 0, :attr:`drpo_sim.logs.LogSource.mismatch_only` is set and the
  replay computes no objective weights (it says so once, in its output and ``replay.json``).
  Without ``token_loss_mask`` the response tokens are told by ``generation_logprobs != 0``:
  NeMo RL writes ``zeros_like`` there for every message the engine did not generate (prompt,
  environment), so ``mask = generation_logprobs != 0`` within ``input_lengths``. A generated
  token whose engine log-prob is exactly 0 (probability 1 in float32) cannot be told from those
  and is left out too (``mask = False``, counted among the replay's excluded tokens).

  One log must not mix the two: a file with ``advantages`` after one without (or the reverse)
  is an error naming both files.

* **Dynamic sampling** (DAPO, ``grpo.use_dynamic_sampling``, v0.4.0 on): ``rewards`` holds the
  total reward of the unfiltered generation batch and ``filtered_rewards`` the reward of the
  sample on the line (the batch that was trained on), so ``reward = filtered_rewards`` when the
  field is there, else ``rewards``.

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
A sample with no loss token contributes no rows. ``step`` is ``N`` of the file name; two files of
one step (two runs, or a restarted run that logged a step again, searched from their parent
folder) are an error naming both.

Files: ``train_data_step{N}.jsonl``, also gzip- or zstd-compressed (``.jsonl.gz``, ``.jsonl.zst``).
``val_data_step{N}.jsonl`` (validation: ``content`` and ``rewards`` only) is not a training log
and is skipped when a folder is searched.

``sample_id`` numbers samples across the whole log in reading order. The dump has no group field:
NeMo RL repeats each prompt ``num_generations_per_prompt`` times consecutively
(``batch.repeat_interleave``), so ``group_id`` is given to consecutive samples of a file in
groups of ``group_size`` (a loader option; default 1: each sample its own group), numbered
across the log.

Problems confined to one line (invalid or truncated JSON, fields of different lengths, strings
where numbers belong, a field missing on that line) raise ``<file>: line N: ...``, or drop the
line with ``on_invalid="drop"``; a required field missing from the first line is an error in
both modes. A file without a line (an empty step file) is an error, or is skipped and counted as a
dropped file with ``on_invalid="drop"``. Lines are parsed one at a time and converted in blocks of about ``batch_size``
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
#: Fields every version logs (v0.3.0 on).
REQUIRED = ("generation_logprobs", "prev_logprobs", "input_lengths")
#: Fields logged from v0.6.0 on: without them the log is read in mismatch-only mode.
TRAINING = ("advantages", "token_loss_mask")
OPTIONAL = ("token_ids", "filtered_rewards", "rewards", "sample_loss_mask")
FILE_RE = re.compile(r"train_data_step(\d+)\.jsonl(?:\.gz|\.zst|\.zstd)?$")
VALIDATION_RE = re.compile(r"val_data_step\d+\.jsonl(?:\.gz|\.zst|\.zstd)?$")
_STEP_RE = re.compile(r"step(\d+)")
#: schema column -> NeMo RL field, for messages
NAMES = {"logp": "prev_logprobs", "logp_old": "prev_logprobs", "logp_behavior": "generation_logprobs",
         "advantage": "advantages", "mask": "token_loss_mask", "token_id": "token_ids", "reward": "rewards"}
#: What the replay says, once, about a log without advantages.
NO_ADVANTAGE_NOTE = ("the log has no advantages (NeMo RL before v0.6.0, February 2026, logged only "
                     "generation_logprobs and prev_logprobs): the mismatch between pi_old and mu is measured; the "
                     "objectives' weights need advantages and are not computed")


def matches(path: Path) -> bool:
    """Files a directory contributes for this format: ``train_data_step{N}.jsonl`` (also ``.gz``, ``.zst``)."""
    return FILE_RE.search(path.name) is not None


def skip_reason(path: Path) -> str | None:
    """Why a file beside NeMo RL step files is not read (``None`` for a step file)."""
    if matches(path):
        return None
    if VALIDATION_RE.search(path.name):
        return "NeMo RL validation log (content and rewards only, no log-probs)"
    return "not a NeMo RL train_data_step*.jsonl (its folder holds NeMo RL step files)"


def sniff(first_line: dict[str, Any]) -> bool:
    return "generation_logprobs" in first_line and "prev_logprobs" in first_line


def peek(paths: list[Path]) -> tuple[Path, int, dict[str, Any]] | None:
    """``(file, line number, object)`` of the first well-formed line of the first file that has one
    (to know, before reading, whether the log holds advantages); ``None`` when no file has one."""
    for path in paths:
        try:
            for lineno, obj in iter_lines(path):
                if isinstance(obj, dict):
                    return path, lineno, obj
        except (ValueError, OSError):
            continue  # reading the file reports it
    return None


def has_advantages(first_line: dict[str, Any]) -> bool:
    return "advantages" in first_line


def step_of(path: Path) -> int | None:
    m = FILE_RE.search(path.name) or _STEP_RE.search(path.name)
    return int(m.group(1)) if m else None


def check_steps(paths: list[Path]) -> None:
    """One file per step: two files with one step number (two runs, or a restarted run that logged
    a step again, found under one parent folder) are an error naming both."""
    seen: dict[int, Path] = {}
    for p in paths:
        step = step_of(p)
        if step is None:
            continue
        if step in seen:
            raise ValueError(f"{p}: step {step} again ({seen[step]} is step {step} too): these are two runs, or a "
                             "restarted run that logged the step twice; pass the folder of one run, or the files to "
                             "replay")
        seen[step] = p


def iter_files(paths: list[Path], ctx: Context) -> Iterator[TokenBatch]:
    for path in paths:
        yield from _read(path, ctx)


def _step(path: Path) -> int:
    step = step_of(path)
    if step is None:
        raise ValueError(f"{path}: cannot read the step from the file name (NeMo RL writes train_data_step{{N}}.jsonl):"
                         " rename it train_data_step<N>.jsonl")
    return step


def _fields(path: Path, lineno: int, obj: dict[str, Any], ctx: Context) -> tuple[str, ...]:
    """The fields the first good line of a file fixes for the file; checks them against the log's."""
    missing = [f for f in REQUIRED if f not in obj]
    if missing:
        hint = did_you_mean(missing[0], obj)
        raise ValueError(
            f"{path}: line {lineno}: missing field {missing[0]!r}{hint}; NeMo RL train_data_step*.jsonl "
            f"lines need {', '.join(REQUIRED)} (found: {', '.join(sorted(obj))})"
        )
    fields = tuple(f for f in TRAINING + OPTIONAL if f in obj)
    has_adv = "advantages" in fields
    if ctx.has_advantage is None:
        ctx.has_advantage, ctx.has_advantage_file = has_adv, path
    elif ctx.has_advantage != has_adv:
        other = ctx.has_advantage_file
        raise ValueError(
            f"{path}: {'has' if has_adv else 'has no'} 'advantages' field but {other} "
            f"{'has none' if has_adv else 'has it'}: the log mixes NeMo RL versions (advantages are logged from "
            "v0.6.0 on); replay the files with advantages and those without separately"
        )
    if not has_adv:
        ctx.derived["advantage"] = "absent (mismatch-only log): 0"
    if "token_loss_mask" not in fields:
        ctx.derived["mask"] = ("generation_logprobs != 0 (no token_loss_mask: NeMo RL writes 0 for tokens the engine "
                               "did not generate; a generated token of probability 1 is left out too)")
    if "filtered_rewards" in fields:
        ctx.derived["reward"] = "filtered_rewards (dynamic sampling: rewards holds the unfiltered batch's)"
    return fields


def _read(path: Path, ctx: Context) -> Iterator[TokenBatch]:
    step = _step(path)
    batcher = Batcher(ctx, path)
    fields: tuple[str, ...] | None = None
    names = NAMES
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
            if fields is None:  # the first good line fixes the fields of the file
                fields = _fields(path, lineno, obj, ctx)
                names = dict(NAMES, reward="filtered_rewards" if "filtered_rewards" in fields else "rewards")
                if "token_loss_mask" not in fields:
                    names["mask"] = "generation_logprobs != 0"
            got = _sample(obj, fields, step)
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
            yield from batcher.add(_check(block, path, ctx, names))
            block, rows = [], 0
    if n == 0:
        ctx.empty_file(path, "empty file")
        return
    if block:
        yield from batcher.add(_check(block, path, ctx, names))
    ctx.next_sample += n
    ctx.next_group += math.ceil(n / ctx.group_size)
    yield from batcher.flush()


def _check(block: list[tuple[int, dict[str, np.ndarray], np.ndarray]], path: Path, ctx: Context,
           fields: dict[str, str]) -> dict:
    names = block[0][1].keys()
    piece = Piece(
        columns={c: np.concatenate([b[1][c] for b in block]) for c in names},
        unit=np.concatenate([np.full(b[2].size, b[0], np.int64) for b in block]),
        index=np.concatenate([b[2] for b in block]),
    )
    return check_piece(piece, ctx, path, "line", fields)


def _sample(
    obj: dict[str, Any], fields: tuple[str, ...], step: int
) -> tuple[dict[str, np.ndarray], np.ndarray] | None:
    """One line's response tokens as schema columns, and their indices in the line's lists."""
    for f in REQUIRED + fields:
        if f not in obj:
            raise SampleError(f"missing field {f!r}{did_you_mean(f, obj)}", "missing field")
    gen = numbers_1d(obj["generation_logprobs"], "generation_logprobs")
    prev = numbers_1d(obj["prev_logprobs"], "prev_logprobs")
    lengths = {"generation_logprobs": gen.size, "prev_logprobs": prev.size}
    if "token_loss_mask" in fields:
        lmask = numbers_1d(obj["token_loss_mask"], "token_loss_mask")
        lengths["token_loss_mask"] = lmask.size
    else:  # before v0.6.0: the engine's log-prob is 0 on every token it did not generate
        lmask = None
    if "advantages" in fields:
        adv_raw = obj["advantages"]
        if isinstance(adv_raw, (int, float)) or (isinstance(adv_raw, list) and len(adv_raw) == 1
                                                  and not isinstance(adv_raw[0], list)):
            adv = np.full(gen.size, scalar(adv_raw, "advantages"))
        else:
            adv = numbers_1d(adv_raw, "advantages")
            lengths["advantages"] = adv.size
    else:  # a mismatch-only log
        adv = np.zeros(gen.size)
    tok = None
    if "token_ids" in fields:
        tok = numbers_1d(obj["token_ids"], "token_ids", integer=True)
        lengths["token_ids"] = tok.size
    check_lengths(lengths)
    size = gen.size
    length = scalar(obj["input_lengths"], "input_lengths")
    if not (length.is_integer() and 0 <= length <= size):
        raise SampleError(f"input_lengths is {length:g} but the sequence lists hold {size} tokens", "length mismatch")
    length = int(length)
    if lmask is None:
        lmask = (gen != 0).astype(np.float64)
    bad = np.flatnonzero((lmask != 0) & (lmask != 1))
    if bad.size:
        raise SampleError(f"token_loss_mask: index {bad[0]} holds {lmask[bad[0]]:g}, not 0 or 1", "non-numeric value")
    inside = np.flatnonzero(lmask[:length] != 0)
    if inside.size == 0:
        return None
    t = np.arange(inside[0], length)
    keep = lmask[t] != 0
    if "sample_loss_mask" in fields:
        keep &= scalar(obj["sample_loss_mask"], "sample_loss_mask") != 0
    cols: dict[str, np.ndarray] = {
        "logp": prev[t], "logp_behavior": gen[t], "advantage": adv[t], "mask": keep,
        "position": (t - t[0]).astype(np.int32), "logp_old": prev[t],
        "step": np.full(t.size, step, np.int64),
    }
    if tok is not None:
        cols["token_id"] = tok[t]
    reward = "filtered_rewards" if "filtered_rewards" in fields else "rewards" if "rewards" in fields else None
    if reward is not None:
        cols["reward"] = np.full(t.size, scalar(obj[reward], reward))
    return cols, t
