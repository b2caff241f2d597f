"""Time of one RL step of the tiny transformer lab, phase by phase, against a matmul floor.

What it measures
----------------
For each engine precision, the median wall time (over ``--steps`` steps after one warm-up) of
the phases of :func:`drpo_sim.lm.rl.train`'s step with the default :class:`LabConfig` (8 prompts
x G = 8, 4 mini-batch updates, 64 held-out prompts), each timed on its own with the same calls
the loop makes: the engine copy (weight sync), the rollout (sampling and the engine's
log-probs), the trainer's rollout-time log-probs, the 4 updates (forward, backward, clip,
AdamW) and the evaluation (one sampled response per held-out prompt). Pretraining is timed once.

The floor
---------
The step's matrix multiplications cost ``2 x (linear-layer parameters)`` flops per token and
forward pass (attention scores and the embedding add a few percent, ignored), three times that
for a forward and backward pass. Decoding runs one forward pass over the whole ``[B, T - 1]``
buffer per response position (the price of bit-exact fp32 log-probs, see
:mod:`drpo_sim.lm.model`), so the rollout and the evaluation each process ``R x B x (T - 1)``
tokens. The floor is those flops at the rate of one float32 matmul of the model's own shape
(``[B (T-1), d_model] x [d_model, d_mlp]``), measured on the spot on one thread. A ratio of 3
means the step costs three times its matmuls at that rate: the elementwise work, the small
attention tensors, Python's per-operation overhead and, for reduced precision, the casts.

How to run
----------
::

    python benchmarks/bench_lm.py                   # fp32, bf16, fp8; 10 timed steps each
    python benchmarks/bench_lm.py --steps 3 --precisions fp32 --csv lm.csv

The lab runs on one torch thread; other processes on the cores distort the times.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
from pathlib import Path

import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from drpo_sim import advantages, objectives  # noqa: E402
from drpo_sim.lm.model import generate, token_logprobs, torch_threads  # noqa: E402
from drpo_sim.lm.precision import engine_copy  # noqa: E402
from drpo_sim.lm.pretrain import PretrainConfig, eval_digits, evaluate, pretrain  # noqa: E402
from drpo_sim.lm.rl import LabConfig  # noqa: E402
from drpo_sim.lm.task import EOS, PAD  # noqa: E402


def _median_ms(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return 1000 * statistics.median(times)


def matmul_rate(m: int, k: int, n: int, repeats: int = 50) -> float:
    """Flops per second of a float32 ``[m, k] x [k, n]`` matmul on the current threads (best of runs)."""
    a, b = torch.randn(m, k), torch.randn(k, n)
    best = min(_median_ms(lambda: a @ b, 5) for _ in range(max(repeats // 5, 1))) / 1000
    return 2 * m * k * n / best


def bench(precisions: list[str], steps: int) -> pd.DataFrame:
    with torch_threads(1):
        t = time.perf_counter()
        ckpt = pretrain(PretrainConfig())
        pretrain_s = time.perf_counter() - t
        model, task, cfg = ckpt.model(), ckpt.task, LabConfig()
        P, G, U = cfg.prompts_per_step, cfg.group_size, cfg.updates_per_batch
        B, H, T1 = P * G, task.response_len, task.seq_len - 1
        linear = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))
        tokens_fwd = H * B * T1 + B * T1 + H * cfg.n_eval * T1  # rollout, logp_old, evaluation
        tokens_fwd_bwd = B * T1  # the 4 mini-batch updates cover the batch once
        flops = 2 * linear * (tokens_fwd + 3 * tokens_fwd_bwd)
        rate = matmul_rate(B * T1, model.cfg.d_model, model.cfg.d_mlp)
        opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        obj = objectives.get("drpo")
        gen = torch.Generator().manual_seed(0)
        held_out = eval_digits(task, cfg.n_eval)
        rows = []
        for precision in precisions:
            engine = engine_copy(model, precision)
            digits = task.sample_digits(P, gen).repeat_interleave(G, dim=0)
            roll = generate(engine, task.prompts(digits), H, eos_id=EOS, pad_id=PAD, generator=gen)
            reward = task.reward(roll.seqs[:, task.prompt_len:], digits)
            adv = torch.from_numpy(advantages.group_relative(reward.view(P, G).double().numpy()).reshape(B)).float()

            def updates():
                for u in range(U):
                    sl = slice(u * B // U, (u + 1) * B // U)
                    logp = token_logprobs(model, roll.seqs[sl], task.prompt_len)
                    loss, _ = objectives.policy_loss(obj, logp, roll.logp[sl], adv[sl], roll.mask[sl],
                                                     agg_mode=cfg.agg_mode, horizon=H, metrics="full")
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
                    opt.step()

            def logp_old():
                with torch.no_grad():
                    token_logprobs(model, roll.seqs, task.prompt_len)

            phases = {
                "engine_copy": lambda: engine_copy(model, precision),
                "rollout": lambda: generate(engine, task.prompts(digits), H, eos_id=EOS, pad_id=PAD, generator=gen),
                "logp_old": logp_old,
                "updates": updates,
                "eval": lambda: evaluate(model, task, held_out, greedy=False),
            }
            row = {"precision": precision, **{f"{k}_ms": _median_ms(f, steps) for k, f in phases.items()}}
            row["step_ms"] = sum(row[f"{k}_ms"] for k in phases)
            row["floor_ms"] = 1000 * flops / rate
            row["gflops_per_step"] = flops / 1e9
            row["matmul_gflops"] = rate / 1e9
            row["pretrain_s"] = pretrain_s
            rows.append(row)
    return pd.DataFrame(rows)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=10, help="timed repetitions of each phase (median)")
    ap.add_argument("--precisions", default="fp32,bf16,fp8", help="comma-separated engine precisions")
    ap.add_argument("--csv", help="also write the table as CSV")
    args = ap.parse_args(argv)
    table = bench([p.strip() for p in args.precisions.split(",") if p.strip()], args.steps)
    print(f"{platform.processor() or platform.machine()}, torch {torch.__version__}, one thread; "
          f"pretraining {table['pretrain_s'].iloc[0]:.2f} s; {table['gflops_per_step'].iloc[0]:.2f} GFLOP per step at "
          f"{table['matmul_gflops'].iloc[0]:.0f} GFLOP/s")
    for _, r in table.iterrows():
        phases = ("engine_copy_ms", "rollout_ms", "logp_old_ms", "updates_ms", "eval_ms")
        parts = ", ".join(f"{k[:-3]} {r[k]:.1f}" for k in phases)
        print(f"{r['precision']:>5}: {r['step_ms']:6.1f} ms per step ({parts}); floor {r['floor_ms']:.1f} ms, "
              f"{r['step_ms'] / r['floor_ms']:.1f} x floor")
    if args.csv:
        table.to_csv(args.csv, index=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
