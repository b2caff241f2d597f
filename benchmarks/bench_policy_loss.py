"""Forward and backward of ``policy_loss`` (metrics off, default, full) beside two peers' losses.

What it measures
----------------
One trainer step's policy loss on a padded batch of ``B`` sequences of ``T`` tokens (default
64 x 4096, float32, torch on the CPU): the scalar loss is built from ``logp`` (a leaf tensor that
requires grad, standing for the model's output), ``logp_behavior``, a per-token advantage and the
padding mask, then ``loss.backward()`` writes ``logp.grad``. For each of DRPO, PPO and GRPO these
variants read the very same tensors:

* ``drpo_sim off`` / ``default`` / ``full``: :func:`drpo_sim.objectives.policy_loss` with
  ``metrics=False``, ``"default"`` and ``"full"`` (the metrics, as Python floats, included);
* ``peer``: the same loss as the peer codebase writes it, with the metrics its loss function
  returns (turned into Python floats, as its trainer does), token-mean aggregated over the valid
  tokens;
* ``peer, loss only``: the peer's loss without its metrics (for information).

The peers are written here from their published formulas, not copied:

* **UniRL's DRPO** (``unirl/algorithms/drpo.py``, ``_drpo_loss`` and ``DRPO.step``,
  github.com/Tencent-Hunyuan/UniRL): ``r = exp(clamp(logp - logp_old, -20, 20))``,
  ``mu = exp(logp_old)``, per-token loss ``-A r + abs(A) mu (r - 1)^2 / (2 eps)`` with
  ``eps = 12.5``; its metrics: the mean and max of ``r``, the k3 estimate ``mean((r - 1) - log r)``,
  the penalty's mean and the fractions of tokens with ``r > 1 + eps / mu`` and ``r < 1 - eps / mu``,
  each over all the tokens it is given. Against ``drpo_sim``'s ``drpo`` (``delta = 12.5``).
* **verl's clipped PPO loss** (``verl/trainer/ppo/core_algos.py``, ``compute_policy_loss_vanilla``
  and ``agg_loss``; ``verl/utils/torch_functional.py``, ``masked_mean``,
  github.com/volcengine/verl): ``r`` as above, ``max(-A r, -A clip(r, 1 - eps_low, 1 + eps_high))``,
  then for ``A < 0`` the dual clip ``min(., -A c)`` with ``c = 3``; its metrics: the clip
  fraction, the lower (dual) clip fraction and ``ppo_kl``, the masked mean of ``-log r``. PPO
  (``eps_low = eps_high = 0.2``) against ``drpo_sim``'s ``ppo`` and GRPO with clip-higher
  (``0.2 / 0.28``) against its ``grpo``, both with ``dual_clip=3`` (verl's vanilla loss always
  applies the dual clip).

Token-mean over the valid tokens is both peers' default aggregation; ``--agg-mode
seq-mean-token-sum-norm`` gives every variant that mode instead (the peers as UniRL writes it:
per-sequence sums over the horizon ``T``, mean over sequences). Before timing, the script checks
that every variant of an objective gives the same loss and gradient as its peer (to float32
rounding) and that ``drpo_sim``'s three metric settings give them bit for bit.

Time and peak memory
--------------------
Time: the best of ``--repeats`` forward+backward calls of each variant after one warm-up call
(``time.perf_counter``), the variants interleaved round-robin so that a slow spell of the machine
falls on all of them alike. Setting ``logp.grad`` back to ``None`` between calls is not timed.
``--threads 1 --clock cpu`` times the calling thread's CPU time instead (``time.thread_time``):
with one thread torch runs every kernel of the forward and the backward pass on the calling
thread, so this leaves out the time other processes hold the core, though not their use of the
shared caches.

Peak memory: the most bytes held by tensors allocated during one forward+backward call, above
what was held before it (inputs excluded; the gradient written into ``logp.grad`` and the graph's
saved tensors included): the CPU counterpart of ``torch.cuda.max_memory_allocated``. It is read
from the allocation and free events of torch's CPU allocator, recorded by ``torch.profiler`` with
``profile_memory=True`` in a separate untimed call, and summed in time order. This counts exactly
the tensor memory a variant needs, whatever the allocator underneath does with it. The resident
set size (``getrusage``'s ``ru_maxrss``) would not: at these sizes (1 MiB per ``[B, T]`` float32
tensor) it is dominated by the interpreter and torch (hundreds of MB), and freed blocks that
malloc keeps for reuse hide a variant's allocations; ``tracemalloc`` sees only Python's own
allocator, not torch's. The script needs no GPU; on a GPU build the same events would be counted.

Goals (issue 18, item 1): with metrics off, time and peak memory at most the peer's (ratio <= 1.0);
with the default metrics, at most 1.3 times the peer's. The table prints every variant's ratios to
its peer as published and to the peer's loss alone; the goals are read against the former.

Threads and noise: torch's CPU kernels use ``torch.get_num_threads()`` threads (printed in the
header; ``--threads`` sets them); other processes on the same cores distort the times, torch's
multi-threaded kernels most (the script reports how much CPU time they took during the run, as
``bench_objectives.py`` does). On a busy machine ``--threads 1 --clock cpu`` and more repeats give
steadier ratios. Peak memory depends on neither.

How to run
----------
::

    python benchmarks/bench_policy_loss.py                        # 64 x 4096 float32, best of 30
    python benchmarks/bench_policy_loss.py --batch 8 --tokens 512 --repeats 3 --csv loss.csv
    python benchmarks/bench_policy_loss.py --agg-mode seq-mean-token-sum-norm --dtype float64
    python benchmarks/bench_policy_loss.py --threads 1 --clock cpu --repeats 100   # on a busy machine
"""

from __future__ import annotations

import argparse
import gc
import platform
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench_objectives import busy_cpu_seconds, contention_report, own_cpu_seconds  # noqa: E402

from drpo_sim import objectives  # noqa: E402
from drpo_sim._io import write_csv as write_frame  # noqa: E402

GOALS = {"off": 1.0, "default": 1.3}
"""Issue 18's ceilings on time and peak memory as a multiple of the peer's."""
METRICS = {"off": False, "default": "default", "full": "full"}
"""The three settings of ``policy_loss(metrics=...)`` that are measured."""
LOG_RATIO_CLAMP = 20.0  # both peers clamp log r to [-20, 20]
DUAL_CLIP = 3.0  # verl's clip_ratio_c default


@dataclass(frozen=True)
class Config:
    batch: int = 64
    tokens: int = 4096
    dtype: str = "float32"
    repeats: int = 30
    agg_mode: str = "token-mean"
    seed: int = 0
    threads: int | None = None  # torch's CPU threads; None: as torch sets them
    clock: str = "wall"  # "wall": time.perf_counter; "cpu": the calling thread's CPU time (one thread)
    csv: Path | None = None


@dataclass(frozen=True)
class Batch:
    logp: torch.Tensor  # [B, T], a leaf that requires grad
    logp_behavior: torch.Tensor  # [B, T]
    advantage: torch.Tensor  # [B, T], one value per sequence repeated over its tokens
    mask: torch.Tensor  # [B, T] bool


# --------------------------------------------------------------------------------------------
# Inputs
# --------------------------------------------------------------------------------------------


def draw_batch(cfg: Config) -> Batch:
    """A padded RL batch: ``mu ~ Beta(0.3, 1)`` clipped to ``[1e-8, 1]`` (long-tailed, as in
    ``bench_objectives.py``), ``logp = log mu + N(0, 0.1^2)`` clipped to ``<= 0``, one ``N(0, 1)``
    advantage per sequence, response lengths uniform in ``[T/4, T]``. Padded positions hold values
    drawn the same way, as a trainer's padded log-probs do."""
    rng = np.random.default_rng(cfg.seed)
    b, t = cfg.batch, cfg.tokens
    logp_behavior = np.log(np.clip(rng.beta(0.3, 1.0, size=(b, t)), 1e-8, 1.0))
    logp = np.minimum(logp_behavior + rng.normal(0.0, 0.1, size=(b, t)), 0.0)
    advantage = np.repeat(rng.standard_normal((b, 1)), t, axis=1)
    lengths = rng.integers(max(t // 4, 1), t + 1, size=b)
    mask = np.arange(t)[None, :] < lengths[:, None]
    dtype = getattr(torch, cfg.dtype)
    return Batch(
        logp=torch.tensor(logp, dtype=dtype).requires_grad_(True),
        logp_behavior=torch.tensor(logp_behavior, dtype=dtype),
        advantage=torch.tensor(advantage, dtype=dtype),
        mask=torch.from_numpy(mask),
    )


# --------------------------------------------------------------------------------------------
# The peers, from their published formulas (module docstring)
# --------------------------------------------------------------------------------------------


def _aggregate(per_token_loss: torch.Tensor, mask: torch.Tensor, agg_mode: str) -> torch.Tensor:
    """Token-mean over the valid tokens (``sum(L m) / sum(m)``, verl's ``agg_loss``), or UniRL's
    ``seq-mean-token-sum-norm`` (per-sequence sums over the horizon ``T``, mean over sequences)."""
    m = mask.to(per_token_loss.dtype)
    masked = torch.where(mask, per_token_loss, 0.0) * m
    if agg_mode == "token-mean":
        return masked.sum() / m.sum()
    return masked.sum(dim=-1).mean() / mask.shape[-1]


def unirl_drpo(b: Batch, agg_mode: str, *, eps: float = 12.5, metrics: bool = True):
    log_ratio = torch.clamp(b.logp - b.logp_behavior, -LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)
    ratio = torch.exp(log_ratio)
    adv = b.advantage.detach()
    mu = torch.exp(b.logp_behavior).detach()
    penalty = adv.abs() * mu * (ratio - 1.0).square() / (2.0 * eps)
    per_token = -adv * ratio + penalty
    out: dict[str, float] = {}
    if metrics:
        bound = torch.where(mu > 0.0, eps / mu, torch.full_like(mu, float("inf")))
        stats = {
            "ratio_mean": ratio.mean().detach(),
            "ratio_max": ratio.max().detach(),
            "approx_kl": ((ratio - 1.0) - log_ratio).mean().detach(),
            "drpo_penalty_mean": penalty.mean().detach(),
            "clipfrac_upper": (ratio > 1.0 + bound).float().mean().detach(),
            "clipfrac_lower": (ratio < 1.0 - bound).float().mean().detach(),
        }
        out = {k: float(v.item()) for k, v in stats.items()}
    loss = _aggregate(per_token, b.mask, agg_mode)
    if metrics:
        out["policy_loss"] = float(loss.detach().item())
    return loss, out


def _masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    m = mask.to(values.dtype)
    return (torch.where(mask, values, 0.0) * m).sum() / (m.sum() + 1e-8)


def verl_clipped(b: Batch, agg_mode: str, *, eps_low: float, eps_high: float, metrics: bool = True):
    log_ratio = torch.clamp(b.logp - b.logp_behavior, -LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)
    ratio = torch.exp(log_ratio)
    adv = b.advantage
    unclipped = -adv * ratio
    clipped = -adv * torch.clamp(ratio, 1.0 - eps_low, 1.0 + eps_high)
    pessimistic = torch.maximum(unclipped, clipped)
    floor = -adv * DUAL_CLIP
    per_token = torch.where(adv < 0, torch.minimum(floor, pessimistic), pessimistic)
    loss = _aggregate(per_token, b.mask, agg_mode)
    out: dict[str, float] = {}
    if metrics:
        stats = {
            "actor/pg_clipfrac": _masked_mean(torch.gt(clipped, unclipped).float(), b.mask),
            "actor/ppo_kl": _masked_mean(-log_ratio, b.mask),
            "actor/pg_clipfrac_lower": _masked_mean(
                torch.gt(pessimistic, floor).float() * (adv < 0).float(), b.mask),
        }
        out = {k: float(v.detach().item()) for k, v in stats.items()}
    return loss, out


# --------------------------------------------------------------------------------------------
# Variants
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Variant:
    objective: str
    name: str  # "off", "default", "full", "peer", "peer, loss only"
    peer: str  # the peer's label
    fn: Callable[[], tuple[torch.Tensor, dict]]


def variants(b: Batch, cfg: Config) -> list[Variant]:
    mode = cfg.agg_mode
    peers = {
        "drpo": ("UniRL DRPO", objectives.get("drpo", delta=12.5),
                 lambda metrics: unirl_drpo(b, mode, eps=12.5, metrics=metrics)),
        "ppo": ("verl PPO", objectives.get("ppo", eps_low=0.2, eps_high=0.2, dual_clip=DUAL_CLIP),
                lambda metrics: verl_clipped(b, mode, eps_low=0.2, eps_high=0.2, metrics=metrics)),
        "grpo": ("verl GRPO", objectives.get("grpo", eps_low=0.2, eps_high=0.28, dual_clip=DUAL_CLIP),
                 lambda metrics: verl_clipped(b, mode, eps_low=0.2, eps_high=0.28, metrics=metrics)),
    }
    out = []
    for name, (peer, obj, peer_fn) in peers.items():
        for setting, value in METRICS.items():
            out.append(Variant(name, setting, peer, lambda obj=obj, value=value: objectives.policy_loss(
                obj, b.logp, b.logp_behavior, b.advantage, b.mask, agg_mode=mode, metrics=value)))
        out.append(Variant(name, "peer", peer, lambda f=peer_fn: f(True)))
        out.append(Variant(name, "peer, loss only", peer, lambda f=peer_fn: f(False)))
    return out


def step(v: Variant, b: Batch) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """One forward+backward of ``v``: the loss, the gradient of ``logp`` and the metrics."""
    b.logp.grad = None
    loss, metrics = v.fn()
    loss.backward()
    return loss.detach(), b.logp.grad, metrics


def check(vs: list[Variant], b: Batch) -> dict[str, float]:
    """Same loss and gradient within an objective; ``drpo_sim``'s settings bit for bit. Returns the
    largest relative difference of each objective's loss and gradient between ours and the peer's."""
    worst: dict[str, float] = {}
    for name in dict.fromkeys(v.objective for v in vs):
        runs = {v.name: step(v, b) for v in vs if v.objective == name}
        loss0, grad0 = runs["off"][0], runs["off"][1].clone()
        for setting in ("default", "full"):
            loss, grad, _ = runs[setting]
            if not (torch.equal(loss, loss0) and torch.equal(grad, grad0)):
                raise AssertionError(f"{name}: metrics={setting!r} changed the loss or its gradient")
        for peer in ("peer", "peer, loss only"):
            loss, grad, _ = runs[peer]
            rel_loss = float(abs(loss - loss0) / abs(loss0).clamp_min(1e-30))
            rel_grad = float((grad - grad0).abs().max() / grad0.abs().max().clamp_min(1e-30))
            tol = 1e-4 if b.logp.dtype == torch.float32 else 1e-9
            if not (rel_loss < tol and rel_grad < tol):
                raise AssertionError(f"{name}: {peer} differs from drpo_sim (loss {rel_loss:.2e}, grad {rel_grad:.2e})")
            worst[name] = max(worst.get(name, 0.0), rel_loss, rel_grad)
    return worst


# --------------------------------------------------------------------------------------------
# Time and peak memory
# --------------------------------------------------------------------------------------------


def best_times(vs: list[Variant], b: Batch, repeats: int, clock: str = "wall") -> list[float]:
    """Best forward+backward seconds of each variant, the variants interleaved round-robin."""
    now = time.thread_time if clock == "cpu" else time.perf_counter
    for v in vs:
        step(v, b)  # warm-up
    best = [float("inf")] * len(vs)
    for _ in range(repeats):
        for i, v in enumerate(vs):
            b.logp.grad = None
            start = now()
            loss, _ = v.fn()
            loss.backward()
            best[i] = min(best[i], now() - start)
            del loss
    b.logp.grad = None
    return best


def peak_bytes(v: Variant, b: Batch) -> int | None:
    """Peak tensor bytes of one forward+backward above those held before it (module docstring):
    the running sum of torch's CPU allocation (+) and free (-) events, in time order."""
    from torch.profiler import ProfilerActivity, profile

    b.logp.grad = None
    gc.collect()
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        step(v, b)
    b.logp.grad = None
    results = getattr(prof.profiler, "kineto_results", None)
    if results is None:  # the profiler's raw events are not public API; report n/a if they move
        return None
    sizes = sorted((e.start_ns(), e.nbytes()) for e in results.events() if e.name() == "[memory]")
    held = peak = 0
    for _, nbytes in sizes:
        held += nbytes
        peak = max(peak, held)
    return peak


# --------------------------------------------------------------------------------------------
# Output
# --------------------------------------------------------------------------------------------


def run(cfg: Config) -> tuple[pd.DataFrame, dict[str, float]]:
    b = draw_batch(cfg)
    vs = variants(b, cfg)
    worst = check(vs, b)
    seconds = best_times(vs, b, cfg.repeats, cfg.clock)
    peaks = [peak_bytes(v, b) for v in vs]
    rows = pd.DataFrame({
        "objective": [v.objective for v in vs],
        "variant": [v.name for v in vs],
        "peer": [v.peer for v in vs],
        "ms": [s * 1e3 for s in seconds],
        "peak_mib": [np.nan if p is None else p / 2**20 for p in peaks],
    })
    for ref, suffix in (("peer", ""), ("peer, loss only", "_loss_only")):
        base = rows[rows["variant"] == ref].set_index("objective")
        rows[f"time_x_peer{suffix}"] = rows["ms"] / rows["objective"].map(base["ms"])
        rows[f"mem_x_peer{suffix}"] = rows["peak_mib"] / rows["objective"].map(base["peak_mib"])
    return rows, worst


def header(cfg: Config) -> str:
    return (
        f"drpo_sim policy_loss: forward+backward on a padded [{cfg.batch}, {cfg.tokens}] {cfg.dtype} batch, "
        f"{cfg.agg_mode}, best of {cfg.repeats} (+1 warm-up), round-robin, "
        f"{'CPU time of the calling thread' if cfg.clock == 'cpu' else 'wall time'}\n"
        f"python {platform.python_version()}, numpy {np.__version__}, torch {torch.__version__} "
        f"(torch.get_num_threads() = {torch.get_num_threads()}), {platform.machine()}\n"
        f"peak MiB = tensor bytes allocated above those held before the call (torch.profiler memory events); "
        f"x peer = variant / the peer as published (loss and its metrics); x loss only = / the peer's loss alone"
    )


def format_table(rows: pd.DataFrame) -> str:
    lines = [f"{'objective':9s} {'variant':16s} {'peer':11s} {'ms':>8s} {'x peer':>7s} {'x loss only':>11s} "
             f"{'peak MiB':>9s} {'x peer':>7s} {'x loss only':>11s}"]
    for i, r in enumerate(rows.itertuples()):
        if i and r.objective != rows["objective"].iloc[i - 1]:
            lines.append("")
        lines.append(
            f"{r.objective:9s} {r.variant:16s} {r.peer:11s} {r.ms:8.2f} {r.time_x_peer:7.2f} "
            f"{r.time_x_peer_loss_only:11.2f} {r.peak_mib:9.2f} {r.mem_x_peer:7.2f} {r.mem_x_peer_loss_only:11.2f}"
        )
    return "\n".join(lines)


def format_goals(rows: pd.DataFrame) -> str:
    lines = ["goals (issue 18): metrics off <= 1.0 x the peer, default metrics <= 1.3 x, in time and in peak memory"]
    for (name, setting), r in rows.set_index(["objective", "variant"]).iterrows():
        if setting not in GOALS:
            continue
        goal = GOALS[setting]
        verdict = [f"{what} {r[col]:.2f} {'<=' if r[col] <= goal else '>'} {goal}"
                   for what, col in (("time", "time_x_peer"), ("memory", "mem_x_peer"))]
        met = all(r[col] <= goal for col in ("time_x_peer", "mem_x_peer"))
        lines.append(f"  {name:5s} {setting:8s} vs {r['peer']:10s}: {', '.join(verdict)}  "
                     f"{'met' if met else 'NOT MET'}")
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> Config:
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    p.add_argument("--batch", type=int, default=Config.batch, help="sequences B (default %(default)s)")
    p.add_argument("--tokens", type=int, default=Config.tokens, help="tokens per sequence T (default %(default)s)")
    p.add_argument("--dtype", choices=["float32", "float64"], default=Config.dtype)
    p.add_argument("--repeats", type=int, default=Config.repeats, help="timed calls, best kept (default %(default)s)")
    p.add_argument("--agg-mode", choices=["token-mean", "seq-mean-token-sum-norm"], default=Config.agg_mode)
    p.add_argument("--seed", type=int, default=Config.seed, help="input generator seed (default %(default)s)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's own setting)")
    p.add_argument("--clock", choices=["wall", "cpu"], default=Config.clock,
                   help="wall time, or the calling thread's CPU time (with --threads 1 only)")
    p.add_argument("--csv", type=Path, default=None, help="also write the table to this CSV file")
    a = p.parse_args(argv)
    if min(a.batch, a.tokens, a.repeats, a.threads or 1) < 1:
        p.error("--batch, --tokens, --repeats and --threads must be >= 1")
    if a.clock == "cpu" and a.threads != 1:
        p.error("--clock cpu counts the calling thread's time only: use it with --threads 1")
    return Config(a.batch, a.tokens, a.dtype, a.repeats, a.agg_mode, a.seed, a.threads, a.clock, a.csv)


def main(argv: list[str] | None = None) -> None:
    cfg = parse_args(argv)
    if cfg.threads is not None:
        torch.set_num_threads(cfg.threads)
    print(header(cfg), flush=True)
    busy0, own0, start = busy_cpu_seconds(), own_cpu_seconds(), time.perf_counter()
    rows, worst = run(cfg)
    wall = time.perf_counter() - start
    print()
    print(format_table(rows))
    print()
    print(format_goals(rows))
    print("same loss and gradient as the peer, largest relative difference: "
          + ", ".join(f"{k} {v:.1e}" for k, v in worst.items()) + "; metrics off/default/full: bit for bit")
    print(contention_report(busy0, own0, wall))
    if cfg.csv is not None:
        write_frame(rows, cfg.csv, float_format="%.6g")
        print(f"wrote {cfg.csv}")


if __name__ == "__main__":
    main()
