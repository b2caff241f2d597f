"""A small causal transformer, its response log-probs, and autoregressive sampling.

GPT-2-style decoder (Radford et al. 2019): token and learned position embeddings, ``n_layers``
pre-LayerNorm blocks of causal multi-head self-attention and a GELU MLP, a final LayerNorm and an
untied output projection. ``forward(tokens [B, T]) -> logits [B, T, V]`` in the dtype of the
parameters, so a copy cast to bfloat16 (:mod:`drpo_sim.lm.precision`) computes in bfloat16.

Log-probs of responses. For a sequence ``x`` whose response starts at ``prompt_len``,
``log pi(x_t | x_<t) = log_softmax(z_{t-1})[x_t]`` for ``t >= prompt_len``, with ``z_{t-1}`` the
logits at position ``t - 1``, cast to float32 before the ``log_softmax`` (as inference engines
such as vLLM do with their low-precision logits). :func:`response_logprobs_all` is the one place
this is computed: the trainer (:func:`token_logprobs`), the sampler (:func:`generate`) and the
engine copies all call it on an input of the same shape ``[B, seq_len - 1]``. With a causal mask
the future positions add exact zeros, so an fp32 engine reports bit for bit the log-probs the
fp32 trainer computes for the same sequences: zero training-inference mismatch by construction,
and any mismatch measured with a reduced-precision engine comes from its precision alone.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class ModelConfig:
    """Sizes of :class:`TinyTransformer` (defaults: 2 layers, d_model 64, 4 heads, about 0.1 M parameters)."""

    vocab_size: int = 14
    max_len: int = 16
    d_model: int = 64
    n_layers: int = 2
    n_heads: int = 4
    d_mlp: int = 256

    def __post_init__(self) -> None:
        for name in ("vocab_size", "max_len", "d_model", "n_layers", "n_heads", "d_mlp"):
            v = getattr(self, name)
            if not (isinstance(v, int) and v >= 1):
                raise ValueError(f"ModelConfig.{name} must be a positive integer, got {v!r}")
        if self.d_model % self.n_heads:
            raise ValueError(f"d_model ({self.d_model}) must be divisible by n_heads ({self.n_heads})")


class CausalSelfAttention(nn.Module):
    """Multi-head attention ``softmax(q k^T / sqrt(d_head) + causal mask) v``, computed explicitly
    (matmul, ``-inf`` mask, softmax) so it runs in any floating dtype.

    The scores are held transposed, ``[keys, queries]``, and normalised over the keys axis
    (``dim=-2``): the same numbers, but the reduction then runs along contiguous memory, about
    four times faster on CPU for these short sequences than a softmax over a last axis of 10-20.
    """

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.n_heads = cfg.n_heads
        self.qkv = nn.Linear(cfg.d_model, 3 * cfg.d_model)
        self.proj = nn.Linear(cfg.d_model, cfg.d_model)
        # future[k, q]: key k comes after query q (masked)
        future = torch.ones(cfg.max_len, cfg.max_len, dtype=torch.bool).triu(diagonal=1).T
        self.register_buffer("future", future, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(x).split(d, dim=2)
        shape = (b, t, self.n_heads, d // self.n_heads)
        q, k, v = (a.view(shape).transpose(1, 2) for a in (q, k, v))  # [b, h, t, d_head]
        scores = (k @ q.transpose(-2, -1)) * (1.0 / math.sqrt(shape[-1]))  # [b, h, key, query]
        att = scores.masked_fill(self.future[:t, :t], float("-inf")).softmax(dim=-2)
        y = (att.transpose(-2, -1) @ v).transpose(1, 2).reshape(b, t, d)
        return self.proj(y)


class Block(nn.Module):
    """Pre-LN transformer block: ``x + attn(ln(x))``, then ``x + mlp(ln(x))``."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.ln1 = nn.LayerNorm(cfg.d_model)
        self.attn = CausalSelfAttention(cfg)
        self.ln2 = nn.LayerNorm(cfg.d_model)
        self.fc = nn.Linear(cfg.d_model, cfg.d_mlp)
        self.out = nn.Linear(cfg.d_mlp, cfg.d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln1(x))
        return x + self.out(F.gelu(self.fc(self.ln2(x))))


class TinyTransformer(nn.Module):
    """The lab's policy: ``forward(tokens [B, T]) -> logits [B, T, V]`` (module docstring)."""

    def __init__(self, cfg: ModelConfig, generator: torch.Generator | None = None):
        super().__init__()
        self.cfg = cfg
        self.tok = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.pos = nn.Embedding(cfg.max_len, cfg.d_model)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layers))
        self.ln_f = nn.LayerNorm(cfg.d_model)
        self.head = nn.Linear(cfg.d_model, cfg.vocab_size)
        self.reset_parameters(generator)

    @torch.no_grad()
    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        """GPT-2 initialisation: weights ``N(0, 0.02)`` (residual output projections scaled by
        ``1/sqrt(2 n_layers)``), biases 0, LayerNorm ``(1, 0)``; randomness from ``generator`` only."""
        for name, p in self.named_parameters():
            if p.ndim < 2:
                p.fill_(1.0 if name.endswith("weight") else 0.0)  # LayerNorm weights; every bias
                continue
            std = 0.02 / math.sqrt(2 * self.cfg.n_layers) if name.endswith(("attn.proj.weight", "out.weight")) else 0.02
            p.normal_(0.0, std, generator=generator)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        t = tokens.shape[1]
        if t > self.cfg.max_len:
            raise ValueError(f"sequence length {t} exceeds the model's max_len {self.cfg.max_len}")
        x = self.tok(tokens) + self.pos.weight[:t]
        for block in self.blocks:
            x = block(x)
        return self.head(self.ln_f(x))


def num_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def response_logprobs_all(model: nn.Module, seqs: torch.Tensor, prompt_len: int) -> torch.Tensor:
    """``log pi(. | x_<t)`` over the vocabulary at every response position: ``[B, R, V]`` float32.

    ``seqs [B, T]`` holds prompts of length ``prompt_len`` followed by ``R = T - prompt_len``
    response tokens (tokens not yet sampled may hold anything: with the causal mask they do not
    reach earlier positions). The logits are cast to float32 before the ``log_softmax``.
    """
    if not 1 <= prompt_len < seqs.shape[1]:
        raise ValueError(f"prompt_len must be in [1, {seqs.shape[1] - 1}], got {prompt_len}")
    logits = model(seqs[:, :-1])[:, prompt_len - 1 :]
    return torch.log_softmax(logits.float(), dim=-1)


def token_logprobs(model: nn.Module, seqs: torch.Tensor, prompt_len: int) -> torch.Tensor:
    """Log-prob of each response token under ``model``: ``[B, R]`` float32.

    ``logp[b, j] = log_softmax(z[b, prompt_len + j - 1])[seqs[b, prompt_len + j]]`` (module
    docstring); differentiable when ``model`` has gradients enabled.
    """
    logp = response_logprobs_all(model, seqs, prompt_len)
    return logp.gather(-1, seqs[:, prompt_len:, None]).squeeze(-1)


@dataclass
class Rollout:
    """Sampled sequences and the log-probs the sampler reported for its own tokens."""

    seqs: torch.Tensor
    """``[B, T]`` int64: prompt and response; ``PAD`` after the first ``EOS``."""
    logp: torch.Tensor
    """``[B, R]`` float32: ``log mu`` of each response token under the sampling model."""
    mask: torch.Tensor
    """``[B, R]`` bool: the token was chosen by the policy (up to and including the first ``EOS``)."""


@torch.no_grad()
def generate(
    model: nn.Module,
    prompts: torch.Tensor,
    response_len: int,
    *,
    eos_id: int,
    pad_id: int,
    generator: torch.Generator | None = None,
    greedy: bool = False,
) -> Rollout:
    """Sample ``response_len`` tokens after each prompt (temperature 1, or argmax if ``greedy``).

    One forward pass per response position over the whole buffer ``[B, T - 1]`` (the shape the
    trainer uses, so an fp32 model reports exactly the trainer's log-probs), vectorised over the
    batch; sampling draws from ``softmax`` of the float32-cast logits with ``generator``. Once a
    row has emitted ``EOS``, its later tokens are ``PAD`` and masked out; their reported log-prob
    is 0. ``logp`` is the model's own log-prob of each sampled token: what an inference engine
    returns with its samples.
    """
    b, p = prompts.shape
    seqs = torch.cat([prompts, torch.full((b, response_len), pad_id, dtype=torch.long)], dim=1)
    logp = torch.zeros(b, response_len)
    done = torch.zeros(b, dtype=torch.bool)
    for j in range(response_len):
        lp = response_logprobs_all(model, seqs, p)[:, j]
        tok = lp.argmax(dim=-1) if greedy else torch.multinomial(lp.exp(), 1, generator=generator).squeeze(-1)
        tok = torch.where(done, torch.full_like(tok, pad_id), tok)
        seqs[:, p + j] = tok
        logp[:, j] = torch.where(done, torch.zeros(()), lp.gather(-1, tok[:, None]).squeeze(-1))
        done |= tok == eos_id
    mask = torch.ones(b, response_len, dtype=torch.bool)
    mask[:, 1:] = ~(seqs[:, p : p + response_len - 1] == eos_id).cumsum(dim=1).bool()
    return Rollout(seqs=seqs, logp=logp, mask=mask)


@contextlib.contextmanager
def torch_threads(n: int = 1) -> Iterator[None]:
    """Run the block with ``n`` torch threads, then restore the previous number.

    The lab's tensors are tiny: one thread is as fast as several, and it keeps a busy machine
    from being oversubscribed (each worker of an experiment is one process with one thread). It
    also makes the numbers independent of the machine's thread count.
    """
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)
