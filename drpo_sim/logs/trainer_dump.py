'''Per-step dumps written from inside a verl or TRL trainer with :data:`SNIPPET`, as token batches.

verl and TRL keep per-token log-probs in memory only. ``docs/trainer_dumps.md`` shows where to
call ``dump_step`` (the function in :data:`SNIPPET`: plain torch, nothing from drpo_sim needed
in the trainer) so that each training step writes one file
``<dir>/drpo_dump_step{step}_rank{rank}.pt`` holding a dict:

==================  ==========  ======================================================================
key                 shape       meaning
==================  ==========  ======================================================================
``format``          str         ``"drpo_sim.trainer_dump"`` (``version`` 1)
``step``, ``rank``  int         training step; writing process
``logp_behavior``   ``[B, T]``  log-prob of each response token under the inference engine (``mu``)
``logp_old``        ``[B, T]``  the trainer's recomputed log-prob before the update (``pi_old``)
``logp``            ``[B, T]``  optional: the trained policy's log-prob (default: ``logp_old``)
``advantages``      ``[B, T]``  or ``[B]`` (one per sequence, broadcast over its tokens)
``mask``            ``[B, T]``  bool: the token counts in the loss (response tokens, right-padded)
``group``           ``[B]``     optional: prompt-group id, an integer unique within the step
``token_ids``       ``[B, T]``  optional
``rewards``         ``[B]``     optional: sequence reward
==================  ==========  ======================================================================

Rows: for each sequence, the response positions up to its last token with ``mask`` set (the
right padding after it is not emitted; masked-out tokens inside, e.g. tool output in a
multi-turn response, are emitted with ``mask = False``); ``position`` is the index in the
response. ``sample_id`` numbers sequences across the log; ``group_id`` is ``group`` offset so
that ids stay unique across steps (files of one step share the offset, so ids computed
globally across ranks, as in the TRL recipe, stay consistent), or without ``group``
consecutive sequences in groups of ``group_size``. ``step`` comes from the file.

Each file is loaded whole (one step of one rank at a time): memory is bounded by the largest
file, not by the log. Shapes that disagree between fields are an error naming the file and the
field (both modes); bad values are reported as ``sample S index T`` (or dropped).
'''

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from drpo_sim import tokens
from drpo_sim.logs._stream import Batcher, load_torch, log_suffix
from drpo_sim.logs.validate import Context, Piece, check_piece, did_you_mean
from drpo_sim.tokens import TokenBatch

NAME = "trainer_dump"
MARKER = "drpo_sim.trainer_dump"
REQUIRED = ("logp_behavior", "logp_old", "advantages", "mask")
OPTIONAL = ("logp", "group", "token_ids", "rewards")
NAMES = {"logp_behavior": "logp_behavior", "logp_old": "logp_old", "advantage": "advantages", "mask": "mask",
         "token_id": "token_ids", "reward": "rewards"}

#: The code that trainers run (see docs/trainer_dumps.md, which holds the same text; a test
#: executes it and checks that this module reads what it writes).
SNIPPET = '''\
import os

import torch


def dump_step(out_dir, step, *, logp_behavior, logp_old, advantages, mask,
              logp=None, group=None, token_ids=None, rewards=None, rank=0):
    """Save one training step's per-token data for `drpo-sim replay --format trainer_dump`.

    Per-token arguments are [B, T] tensors over the response tokens (right-padded):
    logp_behavior = log-probs of the inference engine (mu), logp_old = the trainer's
    recomputed log-probs before the update (pi_old), logp = the trained policy's
    (optional, defaults to logp_old), mask = 1 where the token counts in the loss.
    advantages: [B, T], or [B] with one per sequence. group: [B] prompt-group labels,
    integers unique within the step or any hashable labels (e.g. verl's uid strings).
    token_ids [B, T] and rewards [B] are optional. Writes
    <out_dir>/drpo_dump_step{step}_rank{rank}.pt atomically and returns the path.
    """
    def cpu(x, dtype=None):
        if x is None:
            return None
        t = torch.as_tensor(x).detach().cpu()
        if dtype is not None:
            return t.to(dtype)
        return t.float() if t.dtype in (torch.bfloat16, torch.float16) else t

    if group is not None and not torch.is_tensor(group):
        first = {}
        group = [first.setdefault(g, len(first)) for g in list(group)]
    record = {
        "format": "drpo_sim.trainer_dump", "version": 1, "step": int(step), "rank": int(rank),
        "logp_behavior": cpu(logp_behavior), "logp_old": cpu(logp_old), "logp": cpu(logp),
        "advantages": cpu(advantages), "mask": cpu(mask, torch.bool),
        "group": cpu(group, torch.int64), "token_ids": cpu(token_ids, torch.int64),
        "rewards": cpu(rewards),
    }
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, f"drpo_dump_step{int(step)}_rank{int(rank)}.pt")
    torch.save({k: v for k, v in record.items() if v is not None}, path + ".tmp")
    os.replace(path + ".tmp", path)
    return path
'''

_namespace: dict[str, Any] = {}
exec(compile(SNIPPET, "<drpo_sim.logs.trainer_dump.SNIPPET>", "exec"), _namespace)
dump_step = _namespace["dump_step"]


def matches(path: Path) -> bool:
    return log_suffix(path) == ".pt"


def sniff(obj: Any) -> bool:
    return isinstance(obj, dict) and obj.get("format") == MARKER


def iter_files(paths: list[Path], ctx: Context) -> Iterator[TokenBatch]:
    for path in paths:
        yield from _read(path, ctx)


def _array(obj: dict, key: str, path: Path) -> np.ndarray:
    try:
        return tokens._to_numpy(key, obj[key])
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from None


def _read(path: Path, ctx: Context) -> Iterator[TokenBatch]:
    obj = load_torch(path, ctx.weights_only)
    if not sniff(obj):
        found = list(obj) if isinstance(obj, dict) else type(obj).__name__
        raise ValueError(f"{path}: not a drpo_sim trainer dump (no 'format': {MARKER!r} entry; write it with "
                         f"trainer_dump.SNIPPET's dump_step); found {found}")
    missing = [k for k in REQUIRED if k not in obj]
    if missing:
        raise ValueError(f"{path}: missing field {missing[0]!r}{did_you_mean(missing[0], obj)}; trainer dumps "
                         f"need {', '.join(REQUIRED)} (found: {', '.join(sorted(map(str, obj)))})")
    a = {k: _array(obj, k, path) for k in REQUIRED + OPTIONAL if obj.get(k) is not None}
    ref = a["logp_behavior"].shape
    if len(ref) != 2:
        raise ValueError(f"{path}: logp_behavior has shape {ref}, expected [batch, tokens]")
    if ref[0] == 0 or ref[1] == 0:
        ctx.empty_file(path, f"logp_behavior has shape {ref}")
        return
    for k, x in a.items():
        want = (ref[0],) if k in ("group", "rewards") else ref
        if k == "advantages" and x.shape == (ref[0],):
            continue
        if x.shape != want:
            raise ValueError(f"{path}: {k} has shape {x.shape} but logp_behavior has {ref}; expected {want}")
    for k, x in a.items():
        if x.dtype.kind not in "biuf":
            raise ValueError(f"{path}: {k} holds {x.dtype}, expected numbers")
    b, t = ref
    mask = a["mask"] != 0
    last = np.where(mask.any(axis=1), t - np.argmax(mask[:, ::-1], axis=1), 0)
    keep = np.arange(t)[None, :] < last[:, None]
    sample = np.broadcast_to(np.arange(b)[:, None], ref)[keep]
    position = np.broadcast_to(np.arange(t)[None, :], ref)[keep]
    adv = a["advantages"]
    if adv.ndim == 1:
        adv = np.broadcast_to(adv[:, None], ref)
    step = int(obj.get("step", 0))
    cols: dict[str, np.ndarray] = {
        "logp": (a["logp"] if "logp" in a else a["logp_old"])[keep],
        "logp_behavior": a["logp_behavior"][keep], "advantage": adv[keep], "mask": mask[keep],
        "position": position, "logp_old": a["logp_old"][keep], "step": np.full(keep.sum(), step, np.int64),
    }
    if "token_ids" in a:
        cols["token_id"] = a["token_ids"][keep]
    if "rewards" in a:
        cols["reward"] = a["rewards"][sample]
    sid, gid = _ids(a.get("group"), b, step, ctx, path)
    cols["sample_id"], cols["group_id"] = sid[sample], gid[sample]
    names = dict(NAMES, logp="logp" if "logp" in a else "logp_old")
    arrays = check_piece(Piece(cols, sample.astype(np.int64), position), ctx, path, "sample", names)
    batcher = Batcher(ctx, path)
    yield from batcher.add(arrays)
    yield from batcher.flush()


def _ids(group: np.ndarray | None, b: int, step: int, ctx: Context, path: Path) -> tuple[np.ndarray, np.ndarray]:
    if group is None:
        return ctx.take_ids(b)
    sid = ctx.next_sample + np.arange(b, dtype=np.int64)
    ctx.next_sample += b
    if group.dtype.kind not in "iu" or (group.size and group.min() < 0):
        raise ValueError(f"{path}: group must hold non-negative integers (dump_step renumbers other labels)")
    bases = ctx.state.setdefault(NAME, {})
    base = bases.setdefault(step, ctx.next_group)
    gid = base + group.astype(np.int64)
    ctx.next_group = max(ctx.next_group, int(gid.max()) + 1)
    return sid, gid
