"""Tokens per second of the arena's rollout and update, beside a bare torch model of the same size.

What it measures
----------------
For ``--runs`` runs (contestants x seeds) of the arena's calibrated model
(:data:`drpo_sim.paper.analyses.arena.SPEC`), one step's batch (4 prompts x G = 8 responses of
64 tokens per run), the median wall time over ``--repeats`` of:

* ``rollout``: the engine's token-by-token sampling with its KV cache, in each ``--precisions``
  (:meth:`drpo_sim.arena.model.Engine.rollout`); for a reduced precision also ``rollout, torch's
  kernels``, the same rollout with torch's own bfloat16 / float16 products instead of
  :mod:`drpo_sim.arena.reduced`'s (the same numbers; on a CPU without bfloat16 units, slower);
* ``update``: the trainer's float32 forward over the whole batch, a DRPO surrogate and the
  backward pass into every run's parameters (:func:`drpo_sim.arena.model.response_logprobs`,
  the calls :mod:`drpo_sim.arena.train` makes);

against the peer
----------------
* ``bare forward`` / ``bare forward+backward``: one GPT block of the same sizes written with
  ``torch.nn`` (``nn.Linear``, ``nn.LayerNorm``, ``F.scaled_dot_product_attention``), one set of
  weights shared by all ``runs x batch`` sequences, teacher-forced over the whole sequence: what
  torch does for the same token count without per-run weights, without reduced precision and
  without decoding one position at a time.

Tokens are response tokens (``runs x 32 x 64``). The ratio bare / arena says how much the per-run
weights (batched matmuls), the engine's casts and the token-by-token decoding cost.

How to run
----------
::

    python benchmarks/bench_arena.py                       # 36 runs, bf16 and fp32 rollouts
    python benchmarks/bench_arena.py --runs 4 --repeats 1 --csv arena.csv

One torch thread, as the arena's cells run; other processes on the cores distort the times.
"""

from __future__ import annotations

import argparse
import platform
import sys
from pathlib import Path

import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from drpo_sim import objectives  # noqa: E402
from drpo_sim.arena import reduced  # noqa: E402
from drpo_sim.arena.model import Engine, replicate, response_logprobs  # noqa: E402
from drpo_sim.arena.pretrain import pretrain  # noqa: E402
from drpo_sim.lm.model import torch_threads  # noqa: E402
from drpo_sim.paper.analyses.arena import SPEC  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_lm import _median_ms  # noqa: E402  (the one timing helper of the benchmarks)


def _median_s(fn, repeats: int) -> float:
    return _median_ms(fn, repeats) / 1000


class BareBlock(nn.Module):
    """The arena's architecture in plain torch, one set of weights."""

    def __init__(self, vocab: int, max_len: int, d: int, heads: int, d_mlp: int):
        super().__init__()
        self.heads = heads
        self.emb, self.pos = nn.Embedding(vocab, d), nn.Embedding(max_len, d)
        self.ln1, self.ln2, self.lnf = nn.LayerNorm(d), nn.LayerNorm(d), nn.LayerNorm(d)
        self.qkv, self.proj = nn.Linear(d, 3 * d), nn.Linear(d, d)
        self.fc, self.out = nn.Linear(d, d_mlp), nn.Linear(d_mlp, d)
        self.head = nn.Linear(d, vocab)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        b, t = tokens.shape
        x = self.emb(tokens) + self.pos.weight[:t]
        q, k, v = self.qkv(self.ln1(x)).view(b, t, 3, self.heads, -1).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).reshape(b, t, -1)
        x = x + self.proj(y)
        x = x + self.out(F.gelu(self.fc(self.ln2(x))))
        return self.head(self.lnf(x))


def bench(runs: int, precisions: list[str], repeats: int) -> pd.DataFrame:
    base, cfg = SPEC.base, SPEC.config
    task, model = base.task, base.model
    B, H, plen = cfg.prompts_per_step * cfg.group_size, task.response_len, task.prompt_len
    tokens = runs * B * H
    rows = []
    with torch_threads(1):
        params = replicate(pretrain(base), runs)
        gen = torch.Generator().manual_seed(0)
        prompts = task.prompts(runs * B, gen).view(runs, B, plen)
        draws = torch.rand(H, runs, B, generator=gen)
        for precision in precisions:
            engine = Engine(params, model, precision)
            s = _median_s(lambda: engine.rollout(prompts, H, lambda j: draws[j], trainer=params), repeats)
            rows.append({"phase": "rollout", "precision": precision, "seconds": s})
            if engine.dtype in reduced.REDUCED:  # the same rollout with torch's own reduced-precision kernels
                with reduced.torch_kernels():
                    s = _median_s(lambda: engine.rollout(prompts, H, lambda j: draws[j], trainer=params), repeats)
                rows.append({"phase": "rollout, torch's kernels", "precision": precision, "seconds": s})
        seqs = engine.rollout(prompts, H, lambda j: draws[j], trainer=params).seqs
        trainable = {k: v.clone().requires_grad_(True) for k, v in params.items()}
        obj = objectives.get("drpo")
        adv = torch.randn(runs, B, 1, generator=gen)

        def update():
            _, logp = response_logprobs(trainable, model, seqs, plen)
            loss = -obj.surrogate(logp, logp.detach(), adv).sum()
            torch.autograd.grad(loss, list(trainable.values()))

        rows.append({"phase": "update", "precision": "fp32", "seconds": _median_s(update, repeats)})
        bare = BareBlock(model.vocab_size, model.max_len, model.d_model, model.n_heads, model.d_mlp)
        flat = seqs.reshape(runs * B, -1)

        def bare_forward():
            with torch.no_grad():
                bare(flat[:, :-1])

        def bare_step():
            bare.zero_grad(set_to_none=True)
            logp = torch.log_softmax(bare(flat[:, :-1])[:, plen - 1:], -1)
            logp.gather(-1, flat[:, plen:, None]).sum().backward()

        rows.append({"phase": "bare forward", "precision": "fp32", "seconds": _median_s(bare_forward, repeats)})
        rows.append({"phase": "bare forward+backward", "precision": "fp32", "seconds": _median_s(bare_step, repeats)})
    df = pd.DataFrame(rows)
    df["runs"], df["tokens"] = runs, tokens
    df["tokens_per_s"] = tokens / df["seconds"]
    return df


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=36, help="runs in the batch (default 36: 9 contestants x 4 seeds)")
    parser.add_argument("--precisions", default="bf16,fp32", help="engine precisions of the rollout")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--csv", default=None)
    args = parser.parse_args(argv)
    df = bench(args.runs, [p.strip() for p in args.precisions.split(",") if p.strip()], args.repeats)
    print(f"# arena throughput, {args.runs} runs x {int(df['tokens'].iloc[0]) // args.runs} response tokens, "
          f"one thread, torch {torch.__version__}, {platform.machine()}")
    fwd = float(df.loc[df["phase"] == "bare forward", "tokens_per_s"].iloc[0])
    step = float(df.loc[df["phase"] == "bare forward+backward", "tokens_per_s"].iloc[0])
    for r in df.itertuples():
        ref = fwd if r.phase.startswith("rollout") or r.phase == "bare forward" else step
        print(f"{r.phase:24s} {r.precision:5s} {r.tokens_per_s:12,.0f} tokens/s   {ref / r.tokens_per_s:6.2f} x the "
              f"time per token of the bare torch {'forward' if ref == fwd else 'forward+backward'}")
    if args.csv:
        df.to_csv(args.csv, index=False)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
