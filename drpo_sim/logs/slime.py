"""slime debug dumps (``--save-debug-rollout-data``, ``--save-debug-train-data``) as token batches.

Sources (THUDM/slime; field names as written there):

* rollout dump: ``slime/observability/rollout_data_utils.py`` ``save_debug_rollout_data`` (earlier
  ``slime/ray/rollout.py`` ``RolloutManager._save_debug_rollout_data``) writes
  ``torch.save({"rollout_id": N, "samples": [Sample.to_dict(), ...]}, path_template.format(rollout_id=N))``.
  ``Sample`` (``slime/utils/types.py``) holds ``index`` (global sample counter), ``group_index``
  (prompt group), ``tokens`` (prompt + response), ``response_length``, ``loss_mask`` (response
  only, or ``None`` for all ones), ``rollout_log_probs`` (response only: the inference engine's
  log-probs, ``mu``), ``reward``, ``status``.
* train dump: ``slime/observability/train_data_utils.py`` (earlier
  ``slime/backends/megatron_utils/train_dump_utils.py``) ``save_debug_train_data``, called by the
  actor after ``compute_advantages_and_returns`` and the update, writes, per rank,
  ``{"rollout_id": N, "rank": r, "rollout_data": {field: [one value per sample]}}`` (format 1),
  or, in newer versions, one file for all data-parallel shards:
  ``{"format_version": 2, "rollout_id": N, "rank": r, "samples": [{field: value}], "dp_shards": ...}``.
  Per-sample fields (built by ``RolloutManager._convert_samples_to_train_data`` and the actor):
  ``log_probs`` (the trainer's log-probs recomputed before the update: ``pi_old``),
  ``advantages``, ``loss_masks``, ``rollout_log_probs`` (copied from the samples),
  ``response_lengths``, ``tokens``, ``sample_indices`` (format 1; ``sample_index`` in format
  2), ``group_index`` (newer versions), all per-token lists/tensors covering the response only.

Mapping: ``logp = logp_old = log_probs`` (no post-update policy is dumped; at the first
mini-batch ``pi = pi_old``), ``logp_behavior = rollout_log_probs``, ``advantage = advantages``,
``mask = loss_masks`` (all ones when absent), ``position`` = index in the response,
``token_id`` = the last ``response_lengths`` entries of ``tokens``, ``step`` = ``rollout_id``.
The train dump carries ``rollout_log_probs`` whenever the samples had them; otherwise each
train sample is joined to the rollout dump of the same rollout id on its sample index
(``sample_indices`` / ``sample_index`` == ``Sample.index``; format 2 falls back to
``rollout_position``, the position in the rollout dump).

Ids: ``sample_id`` is slime's own ``Sample.index`` (unique over the run) when the dump has it,
else numbered across the log. ``group_id`` is slime's ``group_index`` (train dump, else rollout
dump), else ``sample index // group_size`` (slime numbers the samples of one prompt
consecutively), else consecutive samples in groups of ``group_size``.

Files: one ``.pt`` per rollout id (and per rank for format-1 train dumps), named by the user's
templates: ``--dump-details DIR`` writes ``DIR/rollout_data/{rollout_id}.pt`` and
``DIR/train_data/{rollout_id}_{rank}.pt`` (format 1, slime v0.1.0 to v0.3.1) or
``DIR/train_data/{rollout_id}.pt`` (format 2, main from August 2026), and a template may put any
other number first (``qwen3-8b_train_{rollout_id}.pt``). So files are grouped by the
``rollout_id`` stored in each file, not by their names: a first pass loads each file (its tensors
memory-mapped, not read) to read the id, then each rollout's files are loaded together and
released before the next rollout's, in order of rollout id. Memory holds the files of one rollout
id; each file is read twice. Files may be gzip- or zstd-compressed (``.pt.gz``, ``.pt.zst``).

Evaluation dumps are skipped wherever they are passed (and listed as skipped): slime writes them
with the same template, ``{rollout_id}`` replaced by ``eval_{rollout_id}`` (``rollout_data/eval_3.pt``)
and the same ``rollout_id`` inside as the training rollout, so they are known by ``eval_`` and a
number in the name (:func:`is_eval`). A dump with no samples (an empty step file) is an error, or
skipped and counted as a dropped file with ``on_invalid="drop"``.

Rank copies: format-1 dumps are written by every rank, so tensor- and pipeline-parallel ranks of
one data-parallel shard write the same samples. A sample index already read from another file of
the rollout is read once and counted as de-duplicated (``report.dedup``: expected, not a drop);
a file without ``log_probs`` (a pipeline stage before the last) is de-duplicated likewise when
another file of the rollout has them. A sample index repeated within one file is a per-sample
problem (error, or dropped and counted). Context-parallel format-1 dumps hold sharded log-probs;
their lengths disagree with ``response_lengths`` and are reported as such (use format 2, which
restores them).

Objects ``torch.load(weights_only=True)`` refuses (a NumPy scalar reward, say) make the file an
error that names the object; ``weights_only=False`` (``--trust-pickles``) reads such files.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from drpo_sim.logs._stream import Batcher, load_torch, log_suffix
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

NAME = "slime"
NAMES = {"logp": "log_probs", "logp_old": "log_probs", "logp_behavior": "rollout_log_probs",
         "advantage": "advantages", "mask": "loss_masks", "token_id": "tokens"}
REQUIRED = ("log_probs", "advantages")
_EVAL = re.compile(r"(?:^|[^A-Za-z0-9])eval_\d")
#: Why an evaluation dump is skipped (the listing says so).
EVAL_REASON = "slime evaluation dump (eval_<rollout id> in the name): not a training step"


def is_eval(path: Path) -> bool:
    """An evaluation dump: slime fills ``{rollout_id}`` with ``eval_<id>`` for those."""
    return _EVAL.search(path.name) is not None


def matches(path: Path) -> bool:
    return log_suffix(path) == ".pt" and not is_eval(path)


def sniff(obj: Any) -> bool:
    return isinstance(obj, dict) and ("rollout_data" in obj or ("samples" in obj and "rollout_id" in obj))


def kind(obj: Any) -> str | None:
    """``"train"`` (format 1 or 2), ``"rollout"``, or ``None`` for anything else."""
    if not isinstance(obj, dict):
        return None
    if isinstance(obj.get("rollout_data"), dict):
        return "train"
    samples = obj.get("samples")
    if isinstance(samples, list):
        if obj.get("format_version") is not None:
            return "train"
        first = samples[0] if samples else {}
        if isinstance(first, dict) and "log_probs" in first and "response_length" not in first:
            return "train"
        return "rollout"
    return None


def iter_files(paths: list[Path], ctx: Context) -> Iterator[TokenBatch]:
    groups, empty = _index(paths, ctx)
    for rid in sorted(groups):
        yield from _group(groups[rid], rid, rid in empty, ctx)


def _index(paths: list[Path], ctx: Context) -> tuple[dict[int, list[Path]], set[int]]:
    """Rollout id -> its files (empty dumps left out and reported), and the ids that had an empty dump."""
    groups: dict[int, list[Path]] = {}
    empty: set[int] = set()
    for f in paths:
        obj = load_torch(f, ctx.weights_only, mmap=True)
        k = kind(obj)
        if k is None:
            keys = list(obj) if isinstance(obj, dict) else type(obj).__name__
            raise ValueError(f"{f}: not a slime debug dump (expected the keys rollout_id and samples or rollout_data; "
                             f"found {keys}); leave it out, or pass its --format")
        rid = obj.get("rollout_id")
        if isinstance(rid, bool) or not isinstance(rid, (int, np.integer)):
            raise ValueError(f"{f}: a slime dump whose rollout_id is {rid!r}, not a number (slime writes "
                             "{'rollout_id': N, ...}); leave it out, or check how it was written")
        n = len(obj["samples"]) if "samples" in obj else _train_count(obj["rollout_data"])
        del obj
        if n == 0:
            ctx.empty_file(f, "the dump holds no samples")
            empty.add(int(rid))
            continue
        groups.setdefault(int(rid), []).append(f)
    return groups, empty


def _train_count(rd: dict) -> int:
    for key in ("response_lengths", "log_probs", "advantages", "tokens"):
        if isinstance(rd.get(key), (list, tuple)):
            return len(rd[key])
    return 0


def _samples(path: Path, obj: dict) -> tuple[list[dict[str, Any]], bool]:
    """The train dump's samples as dicts (format 1 transposed lazily), and whether it has log_probs."""
    if "rollout_data" in obj:
        rd = obj["rollout_data"]
        n = len(rd.get("response_lengths", rd.get("log_probs", rd.get("advantages", []))))
        per_sample = {k: v for k, v in rd.items() if isinstance(v, (list, tuple)) and len(v) == n}
        samples = [{k: v[i] for k, v in per_sample.items()} for i in range(n)]
        for s in samples:
            if "sample_indices" in s:
                s["sample_index"] = s.pop("sample_indices")
        keys = list(rd)
    else:
        samples = obj["samples"]
        keys = list(samples[0]) if samples else []
    if not samples:
        raise ValueError(f"{path}: no tokens (the dump holds no samples)")
    has_lp = "log_probs" in keys
    if has_lp:
        missing = [f for f in REQUIRED if f not in keys]
        if missing:
            raise ValueError(
                f"{path}: missing field {missing[0]!r}{did_you_mean(missing[0], keys)}; slime train "
                f"dumps need {', '.join(REQUIRED)} per sample (found: {', '.join(sorted(map(str, keys)))})"
            )
    return samples, has_lp


def _group(files: list[Path], rid: int, had_empty: bool, ctx: Context) -> Iterator[TokenBatch]:
    rollout: tuple[Path, dict] | None = None
    trains: list[tuple[Path, list[dict[str, Any]], bool]] = []
    for f in files:
        obj = load_torch(f, ctx.weights_only)
        if kind(obj) == "rollout":
            if rollout is not None:
                raise ValueError(f"{f}: a second slime rollout dump for rollout {rid} (first: {rollout[0]}); "
                                 "pass the dumps of one run")
            rollout = (f, obj)
        else:
            samples, has_lp = _samples(f, obj)
            trains.append((f, samples, has_lp))
    if not trains:
        assert rollout is not None
        if had_empty:  # its train dump was empty, skipped and counted
            ctx.report.add(rollout[0], "unused (the train dump of this rollout is empty)", files=1)
            return
        raise ValueError(
            f"{rollout[0]}: slime rollout dump for rollout {rid} without a train dump; the trainer's log_probs and "
            "advantages are only in --save-debug-train-data files: pass them too"
        )
    if not any(t[2] for t in trains):
        f, samples = trains[0][0], trains[0][1]
        keys = list(samples[0])
        raise ValueError(f"{f}: missing field 'log_probs'{did_you_mean('log_probs', keys)}; slime train dumps need "
                         f"{', '.join(REQUIRED)} per sample (found: {', '.join(sorted(map(str, keys)))})")
    by_index = None
    if rollout is not None:
        by_index = {s.get("index"): s for s in rollout[1]["samples"] if isinstance(s, dict)}
    seen: dict[int, Path] = {}
    for f, samples, has_lp in trains:
        if not has_lp:
            ctx.report.add_dedup(f, "file without log_probs (a pipeline stage before the last; the last stage's "
                                 "file holds these samples)", samples=len(samples), files=1)
            continue
        yield from _train_file(f, samples, rid, rollout, by_index, seen, ctx)


def _train_file(path: Path, samples: list[dict[str, Any]], rid: int, rollout: tuple[Path, dict] | None,
                by_index: dict | None, seen: dict[int, Path], ctx: Context) -> Iterator[TokenBatch]:
    batcher = Batcher(ctx, path)
    step = rid
    has_index = all("sample_index" in s and s["sample_index"] is not None for s in samples)
    n = len(samples)
    fallback_sid = ctx.next_sample + np.arange(n)
    ctx.next_sample += n
    base_group = ctx.next_group
    block: list[tuple[int, dict[str, np.ndarray]]] = []
    rows = 0
    max_group = -1
    for i, s in enumerate(samples):
        idx = int(s["sample_index"]) if has_index else None
        try:
            if idx is not None and idx in seen:
                if seen[idx] != path:  # another rank's copy of the same data-parallel shard
                    ctx.report.add_dedup(path, f"copies of {seen[idx].name}'s (another tensor- or pipeline-parallel "
                                         "rank)", rows=len(s.get("log_probs", ())), samples=1)
                    continue
                raise SampleError(f"sample index {idx} again in this file", "duplicate sample index")
            cols, group = _sample(s, i, rollout, by_index, step)
        except SampleError as e:
            ctx.sample_problem(path, f"sample {i}", e)
            continue
        if idx is not None:
            seen[idx] = path
        size = cols["logp"].size
        sid = idx if idx is not None else int(fallback_sid[i])
        if group is None:
            group = sid // ctx.group_size if idx is not None else base_group + i // ctx.group_size
            max_group = max(max_group, group)
        cols["sample_id"] = np.full(size, sid, np.int64)
        cols["group_id"] = np.full(size, group, np.int64)
        block.append((i, cols))
        rows += size
        if rows >= ctx.batch_size:
            yield from batcher.add(_check(block, path, ctx))
            block, rows = [], 0
    if block:
        yield from batcher.add(_check(block, path, ctx))
    ctx.next_group = max(ctx.next_group, max_group + 1)
    yield from batcher.flush()


def _check(block: list[tuple[int, dict[str, np.ndarray]]], path: Path, ctx: Context) -> dict[str, np.ndarray]:
    names = block[0][1].keys()
    piece = Piece({c: np.concatenate([b[1][c] for b in block]) for c in names},
                  np.concatenate([np.full(b[1]["logp"].size, b[0], np.int64) for b in block]),
                  np.concatenate([np.arange(b[1]["logp"].size) for b in block]))
    return check_piece(piece, ctx, path, "sample", NAMES)


def _sample(s: dict[str, Any], i: int, rollout: tuple[Path, dict] | None, by_index: dict | None,
            step: int | None) -> tuple[dict[str, np.ndarray], int | None]:
    for f in REQUIRED:
        if f not in s:
            raise SampleError(f"missing field {f!r}{did_you_mean(f, s)}", "missing field")
    lp = numbers_1d(s["log_probs"], "log_probs")
    adv = numbers_1d(s["advantages"], "advantages")
    lengths = {"log_probs": lp.size, "advantages": adv.size}
    if "response_lengths" in s:
        lengths = {"response_lengths": int(scalar(s["response_lengths"], "response_lengths")), **lengths}
    source = None  # the rollout sample, when joined
    if s.get("rollout_log_probs") is not None:
        mu = numbers_1d(s["rollout_log_probs"], "rollout_log_probs")
    else:
        source = _join(s, i, rollout, by_index)
        if source.get("rollout_log_probs") is None:
            raise SampleError("rollout_log_probs: absent from the train dump and from the rollout dump",
                              "missing field")
        mu = numbers_1d(source["rollout_log_probs"], "rollout_log_probs")
    lengths["rollout_log_probs"] = mu.size
    lm_raw = s.get("loss_masks", source.get("loss_mask") if source else None)
    lm = np.ones(lp.size) if lm_raw is None else numbers_1d(lm_raw, "loss_masks")
    lengths["loss_masks"] = lm.size
    check_lengths(lengths)
    bad = np.flatnonzero((lm != 0) & (lm != 1))
    if bad.size:
        raise SampleError(f"loss_masks: index {bad[0]} holds {lm[bad[0]]:g}, not 0 or 1", "non-numeric value")
    size = lp.size
    cols: dict[str, np.ndarray] = {"logp": lp, "logp_behavior": mu, "advantage": adv, "mask": lm != 0,
                                   "position": np.arange(size), "logp_old": lp}
    tok_raw = s.get("tokens", source.get("tokens") if source else None)
    if tok_raw is not None:
        tok = numbers_1d(tok_raw, "tokens", integer=True)
        if tok.size < size:
            raise SampleError(
                f"tokens has {tok.size} entries, fewer than the {size} response tokens", "length mismatch"
            )
        cols["token_id"] = tok[tok.size - size:]
    if step is not None:
        cols["step"] = np.full(size, step, np.int64)
    group = s.get("group_index", source.get("group_index") if source else None)
    if group is None and rollout is not None and by_index is not None and source is None:
        joined = by_index.get(s.get("sample_index"))
        group = joined.get("group_index") if joined else None
    return cols, (int(group) if group is not None else None)


def _join(s: dict[str, Any], i: int, rollout: tuple[Path, dict] | None, by_index: dict | None) -> dict[str, Any]:
    if rollout is None or by_index is None:
        raise SampleError("rollout_log_probs: absent from the train dump, and no rollout dump "
                          "(--save-debug-rollout-data) of this rollout was given to join", "missing field")
    if s.get("sample_index") is not None:
        found = by_index.get(s["sample_index"])
        if found is None:
            raise SampleError(f"sample index {s['sample_index']} is not in the rollout dump {rollout[0].name}",
                              "no matching rollout sample")
        return found
    pos = s.get("rollout_position")
    samples = rollout[1]["samples"]
    if pos is not None and 0 <= int(pos) < len(samples):
        return samples[int(pos)]
    raise SampleError("cannot join with the rollout dump: the train sample has no sample index or rollout position",
                      "no matching rollout sample")
