"""Per-token analyses shared by simulations and real token logs: the replay.

Every token log (a simulator's ``--save-tokens``, the tiny LM lab's, or a real training run's
through :mod:`drpo_sim.logs`) goes through this one code path (``docs/layout.md``, "One
path for the data"). :class:`ReplayAccumulator` takes :class:`~drpo_sim.tokens.TokenBatch` es one
at a time, evaluates every objective's closed-form weight on every token with torch (on the CPU,
or on a GPU with ``device="cuda"``), and folds the results into fixed-size histograms and sums.
Memory is therefore bounded by the batch size, never by the log; the accumulators hold a few
megabytes whatever the number of tokens.

What is measured, on the tokens with ``mask == True`` (notation of ``docs/reference.md``:
``mu = exp(logp_behavior)`` the behaviour/inference probability, ``pi = exp(logp)``):

* **Mismatch** per ``mu`` bin (DPPO paper, Qi et al. 2026, Figure 2): the distribution of the
  ratio ``r = pi / mu`` (through ``log r``) and of the shift ``pi - mu = mu * (r - 1)``; quantile
  bands, means, the maximum ``abs(pi - mu)``.
* **Regions** per objective, ``mu`` bin and advantage sign: the fraction of tokens whose weight
  ``w`` (``dJ/dlogp = A r w``, ``docs/reference.md`` "Notation") is ``0`` (masked), in ``(0, 1)``
  (attenuated), ``< 0`` (corrective), ``> 1`` (amplified) or exactly ``1``; the distribution of
  ``w``; and the **gradient mass** the objective keeps, ``sum abs(A r w) / sum abs(A r)``: the
  share of the unregularised importance-sampled gradient's per-token magnitude that survives
  (``> 1`` where weights amplify).
* **Rare tokens**: the share of tokens with ``mu <= 0.01`` (about 7.8% in the published runs,
  ``docs/reference.md`` "Published sizes") and every objective's weights on them, where SPO's weight
  ``1 - sign(A)(r - 1)/eps`` is unbounded while DRPO's ``1 - sign(A)(pi - mu)/delta`` is not.
* **Per step** (when the log has a ``step`` column): tokens, mean and max ``abs(pi - mu)``, mean
  log-ratio and each objective's masked fraction.

**Three policies and sequences** (``docs/objectives/three_policies.md``, ``docs/objectives/gspo.md``).
Every objective is given the log's ``logp_old`` (the trainer's recomputed ``pi_old``) when one of
them reads it (:attr:`~drpo_sim.objectives.Objective.needs_old`; any column of
:attr:`~drpo_sim.objectives.Objective.required_columns`, :func:`extra_columns`); a log without it
is refused before any token is read when the source can tell from its files, else at the first
batch (:class:`~drpo_sim.objectives.MissingColumn`, one line naming the objectives and the column).
Sequence-level objectives (:attr:`~drpo_sim.objectives.Objective.per_sequence`: GSPO, the sequence
corrections) are given each token's sequence: a run of consecutive tokens (``mask == True``) with one
``sample_id`` within one ``seed``, ``step`` and ``update`` (:data:`SEQUENCE_KEY`, the columns the
log has), so ids unique only within a step, a seed or an update never merge two samples. A batch's
last sequence may continue in the next batch (loaders cut batches at ``batch_size`` rows, not at
sequence ends), so the accumulator holds it back and folds it in with the next batch, or at the
end (:meth:`ReplayAccumulator.finish`): the result equals the evaluation of whole sequences, with
memory bounded by the batch plus the longest sequence. A sample whose tokens are not consecutive
within a batch is an error.

Quantiles (columns ``..._q05`` to ``..._q95``) come from fixed histograms whose bins are the
floating-point numbers at reduced precision (:class:`FloatBins`): a bin is a fixed fraction of
its value wide, 0.8% for the ratio and the shift and 3% for ``w - 1``, from 1e-38 to 3e38, with
exact zeros apart. Means, minima, maxima, counts and sums are accumulated exactly.
"""

from __future__ import annotations

import contextlib
import json
import math
import threading
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from queue import Full, Queue
from typing import Any

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from drpo_sim import fused
from drpo_sim import objectives as objectives_mod
from drpo_sim._io import write_csv, write_text
from drpo_sim.config import REPLAY_OBJECTIVES
from drpo_sim.tokens import TokenBatch

__all__ = [
    "MU_EDGES",
    "NoTokens",
    "QUANTILES",
    "RARE_MU",
    "REGION_NAMES",
    "SEQUENCE_KEY",
    "ReplayAccumulator",
    "ReplayResult",
    "FloatBins",
    "extra_columns",
    "objective_specs",
    "replay",
    "replay_log",
]

#: ``mu <= RARE_MU`` is a rare token (the DPPO paper's threshold for its 7.8% statistic).
RARE_MU = 0.01

#: Bin edges on ``mu``: decades below ``RARE_MU`` (so rare tokens are whole bins), finer above.
MU_EDGES: np.ndarray = np.array(
    [0.0, 1e-6, 1e-5, 1e-4, 1e-3, RARE_MU, 0.03, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.97, 0.99, 1.0]
)

#: Quantiles reported for every distribution.
QUANTILES: tuple[float, ...] = (0.05, 0.25, 0.5, 0.75, 0.95)

#: Region codes, in the order of the accumulator's last axis (see :func:`drpo_sim.fused.region_codes`;
#: NaN weights give NaN there and are counted from the weight histogram instead).
REGION_NAMES: tuple[str, ...] = ("corrective", "masked", "attenuated", "unit", "amplified")

#: Advantage sign buckets.
SIGN_NAMES: tuple[str, ...] = ("A<0", "A=0", "A>0")

#: The columns that tell one sequence from another, those of them a log has (``sample_id`` always):
#: a sample is evaluated again at each mini-batch update of its step, and simulator logs number
#: samples within a seed.
SEQUENCE_KEY: tuple[str, ...] = ("seed", "step", "update", "sample_id")


# ----------------------------------------------------------------------------------------------
# fixed bins for streaming quantiles


@dataclass(frozen=True)
class FloatBins:
    """Histogram bins that are the floating-point numbers themselves, at reduced precision.

    A value's bin is the top ``9 + mantissa_bits`` bits of its float32 encoding (sign, exponent
    and the leading ``mantissa_bits`` mantissa bits): a cast, a bit view and a shift, about a
    tenth of the cost of computing a transcendental bin index. Every finite float lands in one of
    ``2 ** (9 + mantissa_bits)`` bins whose width is a fixed fraction ``2 ** -mantissa_bits`` of
    the magnitude (3% for 5 bits, 0.8% for 7), from 1e-38 to 3e38; exact zeros have their own
    bin; infinities and NaN land in bins that :meth:`quantiles` treats as beyond every finite
    value. Bins are stored in bit order; :meth:`bounds` gives them in value order.
    """

    mantissa_bits: int = 5

    @property
    def shift(self) -> int:
        return 23 - self.mantissa_bits

    @property
    def size(self) -> int:
        return 1 << (32 - self.shift)

    def index(self, x: torch.Tensor) -> torch.Tensor:
        """The bin of every element of ``x`` (int64 in ``[0, size)``, same shape)."""
        bits = x.to(torch.float32).view(torch.int32)
        return (bits >> self.shift).to(torch.int64) + (self.size >> 1)

    def bounds(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(order, low, high)``: bin indices in increasing value and each one's value interval.

        NaN bins come last, with NaN bounds.
        """
        code = np.arange(self.size, dtype=np.int64) - (self.size >> 1)
        with np.errstate(invalid="ignore"):  # the NaN bins
            start = (code << self.shift).astype(np.int32).view(np.float32).astype(np.float64)
            nxt = (((code + 1) << self.shift) - 1).astype(np.int32).view(np.float32).astype(np.float64)
        low, high = np.minimum(start, nxt), np.maximum(start, nxt)
        with np.errstate(invalid="ignore"):
            mid = np.where(np.isnan(low) | np.isnan(high), np.inf, 0.5 * (low + high))
        mid = np.where(np.isinf(low) & ~np.isnan(low), low, mid)  # the infinity bins
        order = np.argsort(mid, kind="stable")
        return order, low[order], high[order]

    def quantiles(self, counts: np.ndarray, qs: Sequence[float] = QUANTILES) -> np.ndarray:
        """Quantiles of histograms ``counts[..., size]``: shape ``counts.shape[:-1] + (len(qs),)``.

        Linear interpolation inside the bin where the cumulative count crosses ``q`` (so the
        error is below one bin's width); empty histograms give NaN.
        """
        order, low, high = self._bounds
        counts = np.asarray(counts)
        lead = counts.shape[:-1]
        flat_all = counts.reshape(-1, self.size)
        out = np.full((flat_all.shape[0], len(qs)), np.nan)
        for start in range(0, flat_all.shape[0], 64):  # 64 histograms at a time: bounded temporaries
            flat = flat_all[start : start + 64][:, order].astype(np.float64)
            total = flat.sum(axis=1)
            cdf = np.cumsum(flat, axis=1)
            rows = np.arange(flat.shape[0])
            for j, q in enumerate(qs):
                target = q * total
                k = np.minimum((cdf < target[:, None]).sum(axis=1), self.size - 1)  # searchsorted, per row
                below = np.where(k > 0, cdf[rows, np.maximum(k - 1, 0)], 0.0)
                inbin = flat[rows, k]
                frac = np.divide(target - below, inbin, out=np.zeros_like(target), where=inbin > 0)
                lo, hi = low[k], high[k]
                with np.errstate(invalid="ignore"):
                    val = np.where(np.isfinite(lo) & np.isfinite(hi), lo + frac * (hi - lo), lo)
                out[start + rows, j] = np.where(total > 0, val, np.nan)
        return out.reshape(*lead, len(qs))

    @property
    def _bounds(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        cached = _BOUNDS.get(self.mantissa_bits)
        if cached is None:
            cached = _BOUNDS[self.mantissa_bits] = self.bounds()
        return cached

    def nonfinite(self, counts: np.ndarray) -> np.ndarray:
        """Counts in the infinity and NaN bins, summed over the last axis."""
        order, low, high = self._bounds
        bad = order[~(np.isfinite(low) & np.isfinite(high))]
        return np.asarray(counts)[..., bad].sum(axis=-1)


_BOUNDS: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}

#: ``log r`` and ``pi - mu``, per mu bin: 0.8% relative resolution.
LOG_RATIO_BINS = FloatBins(mantissa_bits=7)
SHIFT_BINS = FloatBins(mantissa_bits=7)
#: ``w - 1`` per objective, mu bin and sign: 3% of ``abs(w - 1)`` (DRPO's weight at delta = 12.5
#: differs from 1 by less than 0.08; SPO's grows like 1 / mu).
WEIGHT_BINS = FloatBins(mantissa_bits=5)


#: How the replay evaluates the elementwise objectives' weights: ``"eager"`` the registry
#: (:mod:`drpo_sim.objectives`, the reference; the tables are bit for bit the same whatever the
#: batch size), ``"fused"`` their compiled kernels (:mod:`drpo_sim.fused`: faster on a long log once
#: compiled, seconds per objective; weights within ``fused.ULP_BOUND`` ulps of the registry's, so a
#: token whose weight is within that of 0 or 1 may change region, and sums differ in the last digits).
KERNELS: tuple[str, ...] = ("eager", "fused")

#: Tokens per block of :meth:`ReplayAccumulator._fold`: a block's dozen float64 temporaries stay
#: within the L3 cache (the fastest of 8,192 to 1,048,576 tokens measured with 8 objectives on one thread).
FOLD_BLOCK = 1 << 17


# ----------------------------------------------------------------------------------------------
# objectives to replay


def objective_specs(names: Sequence[str] | None = None,
                    params: Mapping[str, Mapping[str, Any]] | None = None) -> dict[str, objectives_mod.Objective]:
    """``label -> Objective`` for the named objectives (default :data:`drpo_sim.config.REPLAY_OBJECTIVES`).

    ``params`` maps an objective name to keyword arguments for :func:`drpo_sim.objectives.get`
    (``{"drpo": {"delta": 2.5}}``); a name in ``params`` that is not replayed is an error.
    """
    names = list(REPLAY_OBJECTIVES if names is None else names)
    if not names:
        raise ValueError("no objectives to replay")
    if len(set(names)) != len(names):
        raise ValueError(f"objectives listed twice: {names}")
    params = {k: dict(v) for k, v in (params or {}).items()}
    stray = [k for k in params if k not in names]
    if stray:
        raise ValueError(f"parameters given for {stray}, which are not replayed (replayed: {', '.join(names)})")
    return {n: objectives_mod.get(n, **params.get(n, {})) for n in names}


def extra_columns(objectives: Mapping[str, objectives_mod.Objective]) -> tuple[str, ...]:
    """The token-log columns the objectives read beyond ``logp, logp_behavior, advantage``
    (:attr:`~drpo_sim.objectives.Objective.required_columns`: ``logp_old`` for those anchored to
    ``pi_old``), each once, in order."""
    return tuple(dict.fromkeys(c for o in objectives.values() for c in o.required_columns))


def _label(name: str, obj: objectives_mod.Objective) -> str:
    """An objective's name in a message, with its correction: ``grpo (correction tis)``."""
    return f"{name} (correction {obj.correction.name})" if isinstance(obj, objectives_mod.Corrected) else name


def _require_columns(objectives: Mapping[str, objectives_mod.Objective], has: Callable[[str], bool | None]) -> None:
    """Refuse objectives whose extra columns (:func:`extra_columns`) the log lacks.

    ``has(column)`` says whether the log holds the column: ``False`` is refused, ``True`` or ``None``
    (not known yet: the accumulator checks every batch) passes. The error is a one-line
    :class:`~drpo_sim.objectives.MissingColumn` (a ``ValueError``: exit status 2 on the command line)
    naming the objectives, the column and what to do.
    """
    for column in extra_columns(objectives):
        if has(column) is not False:
            continue
        need = [_label(n, o) for n, o in objectives.items() if column in o.required_columns]
        one, what = len(need) == 1, objectives_mod.EXTRA_COLUMNS[column]
        raise objectives_mod.MissingColumn(column, (
            f"{', '.join(need)} {'needs' if one else 'need'} the column '{column}' ({what}), which this log does "
            f"not have: log it (docs/token_logs.md, 'Columns some objectives need'), or leave "
            f"{'it' if one else 'them'} out of the objectives (--objectives)"
        ))


# ----------------------------------------------------------------------------------------------
# the accumulator


class NoTokens(ValueError):
    """A replay with no token to analyse: the stream was empty (``empty``), or every token had ``mask == False``."""

    def __init__(self, message: str, empty: bool) -> None:
        super().__init__(message)
        self.empty = empty


@dataclass
class _StepStats:
    """Per-step sums, kept in a dict keyed by step (steps are few compared with tokens)."""

    n_obj: int
    tokens: float = 0.0
    abs_shift_sum: float = 0.0
    abs_shift_max: float = 0.0
    log_ratio_sum: float = 0.0
    masked: np.ndarray = field(default=None)  # type: ignore[assignment]

    def __post_init__(self) -> None:
        if self.masked is None:
            self.masked = np.zeros(self.n_obj)


class ReplayAccumulator:
    """Streaming per-token analysis of token batches; see the module docstring for what it measures.

    ``update(batch)`` folds one :class:`TokenBatch` in; ``result()`` returns the tables. Tokens
    with ``mask == False`` are counted (``excluded_tokens``) and otherwise ignored. All arithmetic
    is torch float64 on ``device``.

    With a sequence-level objective, each batch's last sequence is held back until the next batch
    (or :meth:`finish`, which :meth:`result` calls) shows where it ends; ``sequences`` counts the
    sequences folded in.
    """

    def __init__(self, objectives: Mapping[str, objectives_mod.Objective] | None = None, *,
                 device: str | torch.device = "cpu", mu_edges: np.ndarray = MU_EDGES, kernels: str = "eager") -> None:
        self.objectives = dict(objectives) if objectives is not None else objective_specs()
        if kernels not in KERNELS:
            raise ValueError(f"kernels must be one of {list(KERNELS)}, got {kernels!r}")
        #: The elementwise objectives' fused kernel (:mod:`drpo_sim.fused`) when ``kernels="fused"``.
        self.kernel = None
        if kernels == "fused":
            elementwise = {label: o for label, o in self.objectives.items() if o.elementwise}
            self.kernel = fused.kernel(elementwise, outputs=("weight",)) if elementwise else None
        self.device = _device(device)
        self.mu_edges = np.asarray(mu_edges, dtype=np.float64)
        if not (self.mu_edges[0] == 0.0 and self.mu_edges[-1] == 1.0 and np.all(np.diff(self.mu_edges) > 0)):
            raise ValueError("mu_edges must increase from 0 to 1")
        k, n_mu, n_s = len(self.objectives), len(self.mu_edges) - 1, len(SIGN_NAMES)
        dev, f64, i64 = self.device, torch.float64, torch.int64
        # inner edges; torch.bucketize puts mu == edge into the lower bin (bins are (lo, hi]).
        self._mu_inner = torch.tensor(self.mu_edges[1:-1], dtype=f64, device=dev)
        self.n_mu, self.n_sign = n_mu, n_s
        # mismatch, per mu bin
        self.tokens = torch.zeros(n_mu * n_s, dtype=f64, device=dev)
        self.ratio_sum = torch.zeros(n_mu, dtype=f64, device=dev)
        self.log_ratio_sum = torch.zeros(n_mu, dtype=f64, device=dev)
        self.abs_shift_sum = torch.zeros(n_mu, dtype=f64, device=dev)
        self.abs_shift_max = torch.zeros(n_mu, dtype=f64, device=dev)
        self.log_ratio_hist = torch.zeros(n_mu * LOG_RATIO_BINS.size, dtype=i64, device=dev)
        self.shift_hist = torch.zeros(n_mu * SHIFT_BINS.size, dtype=i64, device=dev)
        # per objective x mu bin x sign
        self.is_mass = torch.zeros(n_mu * n_s, dtype=f64, device=dev)  # sum abs(A r)
        self.regions = torch.zeros(k, n_mu * n_s * len(REGION_NAMES), dtype=i64, device=dev)
        self.mass = torch.zeros(k, n_mu * n_s, dtype=f64, device=dev)  # sum abs(A r w)
        self.weight_sum = torch.zeros(k, n_mu * n_s, dtype=f64, device=dev)
        self.weight_min = torch.full((k, n_mu * n_s), math.inf, dtype=f64, device=dev)
        self.weight_max = torch.full((k, n_mu * n_s), -math.inf, dtype=f64, device=dev)
        self.weight_hist = torch.zeros(k, n_mu * n_s * WEIGHT_BINS.size, dtype=i64, device=dev)
        self.excluded_tokens = 0
        self.batches = 0
        self.steps: dict[int, _StepStats] = {}
        self.has_step = None
        #: The columns the objectives read beyond logp, logp_behavior and advantage (:func:`extra_columns`).
        self.extra_columns = extra_columns(self.objectives)
        #: The sequence-level objectives, and the :data:`SEQUENCE_KEY` columns of the first batch.
        self.sequence_objectives = [n for n, o in self.objectives.items() if o.per_sequence]
        self.sequence_key: tuple[str, ...] | None = None
        self._pending: dict[str, np.ndarray] | None = None  # the last sequence, held back
        self.sequences = 0

    # -- folding one batch in ------------------------------------------------------------------

    def update(self, batch: TokenBatch) -> None:
        """Fold one batch in (any size, including zero rows)."""
        if not isinstance(batch, TokenBatch):
            raise TypeError(f"update needs a TokenBatch, got {type(batch).__name__}")
        self.batches += 1
        _require_columns(self.objectives, lambda c: getattr(batch, c, None) is not None)
        keep = batch.mask
        n_keep = int(np.count_nonzero(keep))
        self.excluded_tokens += len(batch) - n_keep
        has_step = batch.step is not None
        if self.has_step is None:
            self.has_step = has_step
        elif self.has_step != has_step:
            raise ValueError("some batches have a step column and others do not")
        names = ["logp", "logp_behavior", "advantage", *["step"] * has_step, *self.extra_columns]
        if self.sequence_objectives:
            key = tuple(n for n in SEQUENCE_KEY if getattr(batch, n) is not None)
            if self.sequence_key is None:
                self.sequence_key = key
            elif key != self.sequence_key:
                raise ValueError(f"some batches have the columns {list(self.sequence_key)} and others {list(key)}; "
                                 "the sequence-level objectives need the same in every batch")
            names += [n for n in key if n not in names]
        if n_keep == 0:
            return
        all_kept = n_keep == len(batch)
        cols = {n: getattr(batch, n) if all_kept else getattr(batch, n)[keep] for n in names}
        seq = None
        if self.sequence_objectives:
            cols, seq = self._whole_sequences(cols)
            if seq is None:
                return
        self._fold_columns(cols, seq)

    def finish(self) -> None:
        """Fold in the sequence held back from the last batch: the stream has ended.

        :meth:`result` calls it; a batch given after it starts new sequences.
        """
        cols, self._pending = self._pending, None
        if cols is not None:
            self._fold_columns(cols, np.zeros(len(cols["logp"]), dtype=np.int64))

    def _whole_sequences(self, cols: dict[str, np.ndarray]) -> tuple[dict[str, np.ndarray], np.ndarray | None]:
        """The held-back sequence and this batch's kept tokens, less their last sequence (held back
        in turn), and each token's sequence as an index ``0..S-1`` (``None`` when nothing is whole).

        A sequence is a run of consecutive tokens with one value of every :data:`SEQUENCE_KEY`
        column present; a key found in two runs is an error (:func:`_check_consecutive`).
        """
        if self._pending is not None:
            cols = {n: np.concatenate([self._pending[n], a]) for n, a in cols.items()}
            self._pending = None
        key = [cols[n] for n in self.sequence_key]
        new = np.zeros(len(key[0]), dtype=bool)
        new[0] = True
        for a in key:
            new[1:] |= a[1:] != a[:-1]
        starts = np.flatnonzero(new)
        _check_consecutive(self.sequence_key, key, starts, self.sequence_objectives)
        last = int(starts[-1])
        self._pending = {n: a[last:].copy() for n, a in cols.items()}  # a copy: the batch can go
        if last == 0:
            return cols, None
        return {n: a[:last] for n, a in cols.items()}, np.cumsum(new[:last]) - 1

    def _fold_columns(self, cols: dict[str, np.ndarray], seq: np.ndarray | None) -> None:
        """Move the kept tokens' columns (and sequence indices) to the device and fold them in."""

        def dev(a: np.ndarray) -> torch.Tensor:
            with warnings.catch_warnings():  # read-only Arrow buffers: torch only reads them here
                warnings.simplefilter("ignore", UserWarning)
                return torch.from_numpy(np.ascontiguousarray(a)).to(self.device, non_blocking=True)

        if seq is not None:
            self.sequences += int(seq[-1]) + 1
        self._fold(dev(cols["logp"]), dev(cols["logp_behavior"]), dev(cols["advantage"]),
                   dev(cols["step"]) if "step" in cols else None, {n: dev(cols[n]) for n in self.extra_columns},
                   None if seq is None else dev(seq))

    @torch.no_grad()
    def _fold(self, logp: torch.Tensor, logp_b: torch.Tensor, adv: torch.Tensor, step: torch.Tensor | None,
              extra: Mapping[str, torch.Tensor], seq: torch.Tensor | None) -> None:
        """Fold in kept tokens. Every objective is given the extra columns (``logp_old``, ...) and
        ``seq``, each token's sequence (whole sequences only); each reads those it needs.

        The tokens are worked through in blocks of :data:`FOLD_BLOCK` (cache blocking: every
        per-token temporary of a block stays in cache, where a whole batch's would be a fresh array
        costing a pass over memory and its page faults), and each table is updated in place with
        ``index_add_`` at the tokens' cells: no sort, and no histogram-sized temporary per batch.
        A batch's float sums are accumulated token by token in order into per-batch partials, then
        added to the totals, as a whole-batch ``bincount`` would: the tables are bit for bit those
        of one pass over the batch, whatever the block size (``tests/test_analysis.py``: blocks of 7
        and 4,099 tokens against one block a batch).
        Objectives that are not elementwise (sequence ratios, batch statistics) have their weights
        computed over the whole batch first, then read block by block."""
        n_s, n_r, n_mu = self.n_sign, len(REGION_NAMES), self.n_mu
        n_cells = n_mu * n_s
        k_obj, dev, f64, i64 = len(self.objectives), self.device, torch.float64, torch.int64
        whole = {k: obj.weight(logp, logp_b, adv, sample_id=seq, **extra)
                 for k, obj in enumerate(self.objectives.values()) if not obj.elementwise}
        if step is not None:
            lo, hi = int(step.min()), int(step.max())
            if lo == hi:  # the usual case: loaders never mix steps in a batch
                steps, step_idx = step[:1], torch.zeros_like(step)
            else:
                steps, step_idx = torch.unique(step, return_inverse=True)
            n_steps = len(steps)
            # tokens, sum abs(pi - mu), max abs(pi - mu), sum log r, then each objective's masked tokens
            per_step = torch.zeros(4 + k_obj, n_steps, dtype=f64, device=dev)
        # this batch's float sums, in token order (what ``bincount(..., weights=...)`` would give)
        by_mu = torch.zeros(3, n_mu, dtype=f64, device=dev)  # sum r, sum log r, sum abs(pi - mu)
        is_mass = torch.zeros(n_cells, dtype=f64, device=dev)
        mass = torch.zeros(k_obj, n_cells, dtype=f64, device=dev)
        weight_sum = torch.zeros(k_obj, n_cells, dtype=f64, device=dev)
        n = logp.shape[0]
        ones = torch.ones(min(n, FOLD_BLOCK), dtype=i64, device=dev)
        for start in range(0, n, FOLD_BLOCK):
            part = slice(start, min(start + FOLD_BLOCK, n))
            lp, lpb, a = logp[part], logp_b[part], adv[part]
            one = ones[: lp.shape[0]]
            log_ratio = torch.clamp(lp - lpb, max=objectives_mod.LOG_RATIO_MAX)
            ratio = torch.exp(log_ratio)
            mu = torch.exp(lpb)
            shift = mu * torch.expm1(log_ratio)  # pi - mu without cancellation
            abs_shift = shift.abs()
            mu_bin = torch.bucketize(mu, self._mu_inner)
            cell = mu_bin * n_s + (torch.sign(a).to(i64) + 1)  # (mu bin, sign)

            self.tokens.index_add_(0, cell, one.to(f64))
            by_mu[0].index_add_(0, mu_bin, ratio)
            by_mu[1].index_add_(0, mu_bin, log_ratio)
            by_mu[2].index_add_(0, mu_bin, abs_shift)
            self.abs_shift_max.scatter_reduce_(0, mu_bin, abs_shift, reduce="amax")
            self.log_ratio_hist.index_add_(0, mu_bin * LOG_RATIO_BINS.size + LOG_RATIO_BINS.index(log_ratio), one)
            self.shift_hist.index_add_(0, mu_bin * SHIFT_BINS.size + SHIFT_BINS.index(shift), one)
            is_mag = a.abs() * ratio
            is_mass.index_add_(0, cell, is_mag)
            if step is not None:
                s_idx = step_idx[part]
                per_step[0].index_add_(0, s_idx, one.to(f64))
                per_step[1].index_add_(0, s_idx, abs_shift)
                per_step[2].scatter_reduce_(0, s_idx, abs_shift, reduce="amax")
                per_step[3].index_add_(0, s_idx, log_ratio)

            block_extra = {name: col[part] for name, col in extra.items()}
            by_kernel = None if self.kernel is None else self.kernel(lp, lpb, a, **block_extra)
            for k, (label, obj) in enumerate(self.objectives.items()):
                if k in whole:
                    w = whole[k][part]
                elif by_kernel is not None:
                    w = by_kernel[label]["weight"]
                else:
                    w = obj.weight(lp, lpb, a, **block_extra)
                w_minus_one = w - 1.0
                code = fused.region_codes(torch, w, w_minus_one).to(torch.int64).clamp_(0, n_r - 1)
                self.regions[k].index_add_(0, cell * n_r + code, one)
                mass[k].index_add_(0, cell, is_mag * w.abs())
                weight_sum[k].index_add_(0, cell, w)
                self.weight_min[k].scatter_reduce_(0, cell, w, reduce="amin")
                self.weight_max[k].scatter_reduce_(0, cell, w, reduce="amax")
                self.weight_hist[k].index_add_(0, cell * WEIGHT_BINS.size + WEIGHT_BINS.index(w_minus_one), one)
                if step is not None:
                    per_step[4 + k].index_add_(0, s_idx, (w == 0).to(f64))

        self.ratio_sum += by_mu[0]
        self.log_ratio_sum += by_mu[1]
        self.abs_shift_sum += by_mu[2]
        self.is_mass += is_mass
        self.mass += mass
        self.weight_sum += weight_sum
        if step is not None:
            per = per_step.cpu().numpy()
            for j, s in enumerate(steps.cpu().tolist()):
                st = self.steps.get(s)
                if st is None:
                    st = self.steps[s] = _StepStats(len(self.objectives))
                st.tokens += per[0, j]
                st.abs_shift_sum += per[1, j]
                st.abs_shift_max = max(st.abs_shift_max, per[2, j])
                st.log_ratio_sum += per[3, j]
                st.masked += per[4:, j]

    # -- results -------------------------------------------------------------------------------

    def result(self, source: Mapping[str, Any] | None = None) -> ReplayResult:
        """The tables (see :class:`ReplayResult`), after :meth:`finish`."""
        self.finish()
        return ReplayResult.from_accumulator(self, dict(source or {}))


def _check_consecutive(names: Sequence[str], key: Sequence[np.ndarray], starts: np.ndarray,
                       objectives: Sequence[str]) -> None:
    """``ValueError`` when a sequence's key (``key[i][starts]``, one row per run) is found in two runs."""
    if len(starts) < 2:
        return
    rows = np.stack([a[starts].astype(np.int64) for a in key], axis=1)
    uniq, counts = np.unique(rows, axis=0, return_counts=True)
    if len(uniq) == len(starts):
        return
    twice = uniq[np.argmax(counts > 1)]
    which = ", ".join(f"{n} {int(v)}" for n, v in zip(names, twice))
    raise ValueError(
        f"the sequence-level objectives ({', '.join(objectives)}) need each sequence's tokens one after another, but "
        f"the tokens of {which} come in {int(counts.max())} separate runs: write the log sequence by sequence "
        "(each sample's tokens together), or leave these objectives out"
    )


def _device(device: str | torch.device) -> torch.device:
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {str(device)!r}: torch finds no CUDA GPU here (use the default, cpu)")
    if dev.type not in ("cpu", "cuda"):
        raise ValueError(f"device {str(device)!r}: use cpu or cuda")
    return dev


def _qcols(prefix: str) -> list[str]:
    return [f"{prefix}_q{round(q * 100):02d}" for q in QUANTILES]


def _div(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.divide(a, b, out=np.full(np.broadcast_shapes(np.shape(a), np.shape(b)), np.nan), where=b > 0)


@dataclass
class ReplayResult:
    """The replay's tables (pandas DataFrames) and totals.

    * ``mismatch``: one row per ``mu`` bin: ``tokens``, ratio quantiles and mean, ``abs(pi-mu)``
      mean and max, signed-shift quantiles, mean log-ratio.
    * ``regions``: one row per (objective, ``mu`` bin, advantage sign): token count, the fraction
      in each region, weight mean/min/max/quantiles, gradient-mass share.
    * ``objectives``: one row per objective over all tokens, and over rare tokens (``rare_`` columns).
    * ``by_step``: one row per step (empty when the log has no ``step`` column).
    * ``totals``: counts and the source description (JSON-able); with a sequence-level objective
      also ``sequences`` (how many were evaluated) and ``sequence_key`` (the columns that told them apart).
    """

    mismatch: pd.DataFrame
    regions: pd.DataFrame
    objectives: pd.DataFrame
    by_step: pd.DataFrame
    totals: dict[str, Any]
    weight_hist: np.ndarray  # [objective, mu bin, sign, bins] counts, for figures
    weight_bins: FloatBins = WEIGHT_BINS

    @property
    def mismatch_only(self) -> bool:
        """A replay without objectives (a log without advantages): only the mismatch tables mean anything."""
        return bool(self.totals.get("mismatch_only"))

    @classmethod
    def from_accumulator(cls, acc: ReplayAccumulator, source: dict[str, Any]) -> ReplayResult:
        names = list(acc.objectives)
        k, n_mu, n_s, n_r = len(names), acc.n_mu, acc.n_sign, len(REGION_NAMES)
        cpu = lambda t: t.detach().cpu().numpy()  # noqa: E731
        tokens = cpu(acc.tokens).reshape(n_mu, n_s)
        tok_mu = tokens.sum(axis=1)
        edges = acc.mu_edges
        lo, hi = edges[:-1], edges[1:]
        mid = np.where(lo > 0, np.sqrt(lo * hi), hi / 10)

        lr_hist = cpu(acc.log_ratio_hist).reshape(n_mu, LOG_RATIO_BINS.size)
        sh_hist = cpu(acc.shift_hist).reshape(n_mu, SHIFT_BINS.size)
        mismatch = pd.DataFrame({"mu_low": lo, "mu_high": hi, "mu_mid": mid, "tokens": tok_mu.astype(np.int64)})
        mismatch[_qcols("ratio")] = np.exp(LOG_RATIO_BINS.quantiles(lr_hist))
        mismatch["ratio_mean"] = _div(cpu(acc.ratio_sum), tok_mu)
        mismatch["log_ratio_mean"] = _div(cpu(acc.log_ratio_sum), tok_mu)
        mismatch[_qcols("shift")] = SHIFT_BINS.quantiles(sh_hist)
        mismatch["abs_shift_mean"] = _div(cpu(acc.abs_shift_sum), tok_mu)
        mismatch["abs_shift_max"] = np.where(tok_mu > 0, cpu(acc.abs_shift_max), np.nan)

        reg = cpu(acc.regions).reshape(k, n_mu, n_s, n_r)
        mass = cpu(acc.mass).reshape(k, n_mu, n_s)
        is_mass = cpu(acc.is_mass).reshape(n_mu, n_s)
        wsum = cpu(acc.weight_sum).reshape(k, n_mu, n_s)
        wmin = cpu(acc.weight_min).reshape(k, n_mu, n_s)
        wmax = cpu(acc.weight_max).reshape(k, n_mu, n_s)
        whist = cpu(acc.weight_hist).reshape(k, n_mu, n_s, WEIGHT_BINS.size)
        wq = WEIGHT_BINS.quantiles(whist) + 1.0

        idx = pd.MultiIndex.from_product([names, range(n_mu), SIGN_NAMES], names=["objective", "mu_bin", "adv_sign"])
        regions = idx.to_frame(index=False)
        regions["mu_low"] = np.tile(np.repeat(lo, n_s), k)
        regions["mu_high"] = np.tile(np.repeat(hi, n_s), k)
        regions["mu_mid"] = np.tile(np.repeat(mid, n_s), k)
        t = np.broadcast_to(tokens, (k, n_mu, n_s))
        regions["tokens"] = t.reshape(-1).astype(np.int64)
        for j, r in enumerate(REGION_NAMES):
            regions[f"{r}_frac"] = _div(reg[..., j], t).reshape(-1)
        regions["weight_mean"] = _div(wsum, t).reshape(-1)
        regions["weight_min"] = np.where(t > 0, wmin, np.nan).reshape(-1)
        regions["weight_max"] = np.where(t > 0, wmax, np.nan).reshape(-1)
        regions[_qcols("weight")] = wq.reshape(-1, len(QUANTILES))
        regions["grad_mass_share"] = _div(mass, np.broadcast_to(is_mass, mass.shape)).reshape(-1)

        rare = hi <= RARE_MU + 1e-15
        total = tokens.sum()
        rows = []
        for i, (name, obj) in enumerate(acc.objectives.items()):
            row: dict[str, Any] = {"objective": name, "params": _params_text(obj)}
            for prefix, sel in (("", slice(None)), ("rare_", rare)):
                n = tokens[sel].sum()
                row[f"{prefix}tokens"] = int(n)
                for j, r in enumerate(REGION_NAMES):
                    row[f"{prefix}{r}_frac"] = float(_div(reg[i][sel][..., j].sum(), n))
                row[f"{prefix}grad_mass_share"] = float(_div(mass[i][sel].sum(), is_mass[sel].sum()))
                row[f"{prefix}weight_mean"] = float(_div(wsum[i][sel].sum(), n))
                row[f"{prefix}weight_min"] = float(wmin[i][sel].min()) if n else np.nan
                row[f"{prefix}weight_max"] = float(wmax[i][sel].max()) if n else np.nan
                qs = WEIGHT_BINS.quantiles(whist[i][sel].sum(axis=(0, 1))) + 1.0
                for q, v in zip(_qcols(f"{prefix}weight"), qs):
                    row[q] = float(v)
            row["nonfinite_weights"] = int(WEIGHT_BINS.nonfinite(whist[i]).sum())
            rows.append(row)
        objectives = pd.DataFrame(rows)

        step_rows = [
            {"step": s, "tokens": int(st.tokens), "abs_shift_mean": st.abs_shift_sum / st.tokens,
             "abs_shift_max": st.abs_shift_max, "log_ratio_mean": st.log_ratio_sum / st.tokens,
             **{f"{n}_masked_frac": st.masked[i] / st.tokens for i, n in enumerate(names)}}
            for s, st in sorted(acc.steps.items())
        ]
        by_step = pd.DataFrame(
            step_rows,
            columns=[
                "step",
                "tokens",
                "abs_shift_mean",
                "abs_shift_max",
                "log_ratio_mean",
                *[f"{n}_masked_frac" for n in names],
            ],
        )

        n_total = int(total)
        totals = {
            "tokens": n_total,
            "excluded_tokens": int(acc.excluded_tokens),
            "batches": int(acc.batches),
            "rare_tokens": int(tokens[rare].sum()),
            "rare_share": float(_div(tokens[rare].sum(), total)),
            "rare_threshold": RARE_MU,
            "abs_shift_mean": float(_div(cpu(acc.abs_shift_sum).sum(), total)),
            "abs_shift_max": float(cpu(acc.abs_shift_max).max()) if n_total else float("nan"),
            "log_ratio_mean": float(_div(cpu(acc.log_ratio_sum).sum(), total)),
            "objectives": {n: _params_text(o) for n, o in acc.objectives.items()},
            "device": str(acc.device),
            "source": source,
        }
        if acc.sequence_objectives:  # what a sequence was, for the sequence-level objectives
            totals["sequences"] = int(acc.sequences)
            totals["sequence_key"] = list(acc.sequence_key or ())
        return cls(mismatch, regions, objectives, by_step, totals, whist)

    def write(self, out: str | Path, prefix: str = "") -> list[Path]:
        """Write the tables as CSV and the totals as JSON into ``out``, each atomically.

        Files: ``{prefix}mismatch_by_mu.csv``, ``{prefix}regions_by_mu.csv``,
        ``{prefix}objectives.csv``, ``{prefix}by_step.csv`` (when the log has steps) and
        ``{prefix}replay.json``; a mismatch-only replay writes no ``regions_by_mu.csv`` and
        ``objectives.csv`` (``replay.json``'s ``note`` says why).
        """

        out = Path(out)
        paths = [write_csv(self.mismatch, out / f"{prefix}mismatch_by_mu.csv")]
        if not self.mismatch_only:
            paths += [
                write_csv(self.regions, out / f"{prefix}regions_by_mu.csv"),
                write_csv(self.objectives, out / f"{prefix}objectives.csv"),
            ]
        if len(self.by_step):
            paths.append(write_csv(self.by_step, out / f"{prefix}by_step.csv"))
        text = json.dumps(_jsonable(self.totals), indent=2, sort_keys=True) + "\n"
        paths.append(write_text(text, out / f"{prefix}replay.json"))
        return paths


def _params_text(obj: objectives_mod.Objective) -> str:
    return ", ".join(f"{k}={v}" for k, v in obj.params.items() if v is not None)


def _jsonable(x: Any) -> Any:
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, np.generic):
        return _jsonable(x.item())
    return x


def prefetched(items: Iterable[Any], depth: int) -> Iterator[Any]:
    """``items`` in order, with up to ``depth`` of them produced ahead on a background thread, so
    that reading and decoding the next batches (pyarrow releases the interpreter's lock) overlaps
    the fold of the current one. Memory grows by ``depth`` batches. An exception raised while
    producing an item is raised here, at that item, unchanged (the loaders' one-line errors); when
    the consumer stops early, the thread stops at its next item. ``depth = 0`` iterates in line."""
    if depth <= 0:
        yield from items
        return
    queue: Queue = Queue(maxsize=depth)
    stop = threading.Event()
    done = object()

    def produce() -> None:
        try:
            for item in items:
                while not stop.is_set():
                    try:
                        queue.put((item, None), timeout=0.1)
                        break
                    except Full:
                        continue
                if stop.is_set():
                    return
            outcome = (done, None)
        except BaseException as err:  # noqa: BLE001 (handed to the consumer, which raises it)
            outcome = (done, err)
        while not stop.is_set():
            try:
                queue.put(outcome, timeout=0.1)
                return
            except Full:
                continue

    thread = threading.Thread(target=produce, name="drpo-sim-prefetch", daemon=True)
    thread.start()
    try:
        while True:
            item, err = queue.get()
            if item is done:
                if err is not None:
                    raise err
                return
            yield item
    finally:
        stop.set()
        thread.join()


def replay(batches: Iterable[TokenBatch], objectives: Mapping[str, objectives_mod.Objective] | None = None, *,
           device: str | torch.device = "cpu", progress: bool = False, total_rows: int | None = None,
           source: Mapping[str, Any] | None = None, updates: Sequence[int] | None = None,
           kernels: str = "eager", prefetch: int = 2) -> ReplayResult:
    """Stream ``batches`` through a :class:`ReplayAccumulator` and return its tables.

    ``updates`` keeps only the tokens of those mini-batch updates within each step (the
    ``update`` column; ``[0]`` gives the first update, where ``logp`` is still the rollout-time
    policy, so the ratio measures the training-inference mismatch alone). Tokens left out are
    counted in ``totals["filtered_tokens"]``; a log without an ``update`` column is a
    ``ValueError``. ``progress`` shows a tqdm bar counting tokens (out of ``total_rows`` when
    known). A stream with no token, or none with ``mask == True``, is a ``ValueError``.
    ``kernels`` chooses how weights are evaluated (:data:`KERNELS`). ``prefetch`` batches are read
    ahead on a background thread (:func:`prefetched`) while the last one is folded in; 0 reads
    in line.
    """

    acc = ReplayAccumulator(objectives, device=device, kernels=kernels)
    keep_updates = None if updates is None else np.asarray(sorted(set(int(u) for u in updates)), dtype=np.int64)
    filtered = 0
    with tqdm(total=total_rows, unit="tok", unit_scale=True, disable=not progress, desc="replay") as bar:
        with contextlib.closing(prefetched(batches, prefetch)) as stream:  # on an error too: the reader stops
            for b in stream:
                bar.update(len(b))
                if keep_updates is not None:
                    if b.update is None:
                        raise ValueError("--updates needs an update column in the log, which this log does not have")
                    keep = np.isin(b.update, keep_updates)
                    filtered += int(len(b) - np.count_nonzero(keep))
                    b = TokenBatch._trusted({n: a[keep] for n, a in b.columns.items()})
                acc.update(b)
    acc.finish()
    if acc.batches == 0 or int(acc.tokens.sum()) + acc.excluded_tokens == 0:
        raise NoTokens(
            "no tokens to replay: the log is empty" + (" (or no token is in the selected updates)" if filtered else ""),
            empty=True,
        )
    if int(acc.tokens.sum()) == 0:
        raise NoTokens(f"no tokens to replay: all {acc.excluded_tokens} tokens have mask false", empty=False)
    result = acc.result(source)
    result.totals["filtered_tokens"] = filtered
    result.totals["updates"] = None if keep_updates is None else keep_updates.tolist()
    return result


def replay_log(
    src: Any, objectives: Mapping[str, objectives_mod.Objective] | None = None, **kwargs: Any
) -> ReplayResult:
    """:func:`replay` a :class:`drpo_sim.logs.LogSource` and record where its tokens came from.

    ``totals["source"]`` is the source's description and ``totals["dropped"]`` its drop report,
    both taken after the pass, so they include what ``on_invalid="drop"`` dropped. When nothing is
    left to replay after dropping, the error carries the drop report.

    A mismatch-only source (``src.mismatch_only``: a log without advantages, such as NeMo RL's
    before v0.6.0) is replayed without objectives: the mismatch tables (and ``by_step``) only,
    with ``totals["mismatch_only"] = True`` and ``totals["note"]`` saying why, once.

    Objectives that need a column the log lacks (``logp_old``: :func:`extra_columns`) are refused
    before any row is read when the source's files tell (``src.has_column``: a Parquet schema, a
    format that always has it); otherwise at the first batch.
    """
    mismatch_only = bool(getattr(src, "mismatch_only", False))
    objectives = {} if mismatch_only else objective_specs() if objectives is None else dict(objectives)
    if hasattr(src, "has_column"):
        _require_columns(objectives, src.has_column)
    try:
        result = replay(src, objectives, **kwargs)
    except NoTokens as e:
        report = getattr(src, "report", None)
        if not report:
            raise
        if e.empty:
            raise NoTokens(f"no tokens to replay: --on-invalid drop dropped everything the log held ({report})",
                           empty=True) from None
        raise NoTokens(f"{e}; --on-invalid drop also dropped: {report}", empty=False) from None
    result.totals["source"] = src.describe()
    result.totals["dropped"] = src.report.to_dict()
    if mismatch_only:
        result.totals["mismatch_only"] = True
        result.totals["note"] = src.note
    return result
