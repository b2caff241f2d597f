"""The arena's policy: one small causal transformer per run, all runs evaluated as one batch.

Every parameter carries a leading *run* axis ``R`` (seeds x objectives x learning rates), so one
batched matmul (``torch.baddbmm``) evaluates all runs at once, each with its own weights; the
runs never mix (nothing reduces over ``R``). The architecture is GPT-2-style (Radford et al.
2019) with one pre-LayerNorm block: token and learned position embeddings, causal multi-head
self-attention, an MLP (GELU), a final LayerNorm and an untied output head. With
``n_experts = K > 0`` the MLP is a mixture of ``K`` experts with top-1 routing (Switch
Transformer, Fedus et al. 2022): the router's logits ``h W_r`` pick ``e = argmax``, and the
block adds ``g_e * MLP_e(h)`` with the gate ``g = softmax(h W_r)``.

**Two numerical passes over the same parameters.**

* The *trainer* (:func:`logits`) computes in float32 over whole sequences, differentiably.
* The *engine* (:class:`Engine`) samples token by token with a KV cache, computing every layer in
  the engine's precision with real torch dtypes (:data:`PRECISIONS`):

  - ``"bf16"`` / ``"fp16"``: every parameter cast to ``torch.bfloat16`` / ``torch.float16``; every
    activation (embedding sum, LayerNorm, q/k/v, attention scores and softmax, MLP, router,
    logits) computed and stored in that dtype, the KV cache too;
  - ``"fp8"``: the bf16 engine with the block's linear weights (q/k/v, attention output, MLP or
    experts) stored as ``torch.float8_e4m3fn`` with one scale per output channel
    (:func:`drpo_sim.lm.precision.quantize_fp8`) and dequantised to bf16 at each call (W8A16);
  - ``"fp32"``: the same incremental pass in float32; its log-probs are then replaced by the
    trainer's own (the control with no mismatch, bit for bit; see :meth:`Engine.rollout`).

  On the CPU the engine's bfloat16 / float16 matrix products (linear layers, experts, router,
  attention) are computed by :mod:`drpo_sim.arena.reduced`: the numbers of torch's own kernels, bit
  for bit, several times faster. Only the final logits are cast to float32 before the temperature
  and the ``log_softmax``, as vLLM does. The engine's incremental attention (one query against
  the cached keys) also sums in a different order from the trainer's full-sequence attention, as
  a real engine's kernels do.
  With MoE, its router runs in the engine's precision, so near-ties flip the route (``routes``).

Because both passes read the same weights, the mismatch ``pi - mu`` is a function of where the
parameters are: it changes as training moves them (larger activations and logits round less
faithfully), not as an injected noise would.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from drpo_sim.arena import reduced
from drpo_sim.config import check_positive_ints
from drpo_sim.lm.precision import FP8_DTYPE, quantize_fp8

PRECISIONS = ("fp32", "bf16", "fp16", "fp8")
_DTYPE = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16, "fp8": torch.bfloat16}
_FP8_WEIGHTS = ("wqkv", "wo", "w1", "w2")
"""The block's linear weights an fp8 engine stores in float8 (embeddings, norms, router and head stay bf16)."""


@dataclass(frozen=True)
class ArenaModel:
    """Sizes of the arena's transformer (defaults: d_model 32, 2 heads, MLP 128, dense)."""

    vocab_size: int = 64
    max_len: int = 66
    d_model: int = 32
    n_heads: int = 2
    d_mlp: int = 128
    n_experts: int = 0
    """0: a dense MLP; ``K >= 2``: a top-1 mixture of ``K`` experts (module docstring)."""

    def __post_init__(self) -> None:
        check_positive_ints(self, "vocab_size", "max_len", "d_model", "n_heads", "d_mlp")
        if self.d_model % self.n_heads:
            raise ValueError(f"ArenaModel: d_model ({self.d_model}) must be divisible by n_heads ({self.n_heads})")
        if isinstance(self.n_experts, bool) or not isinstance(self.n_experts, int) or self.n_experts in (1,) \
                or self.n_experts < 0:
            raise ValueError(f"ArenaModel.n_experts must be 0 (dense) or an integer >= 2, got {self.n_experts!r}")

    @property
    def moe(self) -> bool:
        return self.n_experts > 0


Params = dict[str, torch.Tensor]
"""Parameter name -> tensor with a leading run axis ``[R, ...]``."""


def shapes(cfg: ArenaModel) -> dict[str, tuple[int, ...]]:
    """Each parameter's shape for one run."""
    d, f, v, k = cfg.d_model, cfg.d_mlp, cfg.vocab_size, cfg.n_experts
    out = {
        "emb": (v, d), "pos": (cfg.max_len, d),
        "ln1_g": (d,), "ln1_b": (d,), "wqkv": (d, 3 * d), "bqkv": (3 * d,), "wo": (d, d), "bo": (d,),
        "ln2_g": (d,), "ln2_b": (d,),
        "lnf_g": (d,), "lnf_b": (d,), "head": (d, v), "bhead": (v,),
    }
    if k:
        out.update(router=(d, k), w1=(k, d, f), b1=(k, f), w2=(k, f, d), b2=(k, d))
    else:
        out.update(w1=(d, f), b1=(f,), w2=(f, d), b2=(d,))
    return out


def init_params(cfg: ArenaModel, generator: torch.Generator) -> Params:
    """One run's parameters ``[1, ...]``: GPT-2 initialisation (weights ``N(0, 0.02)``, the
    residual output projections ``N(0, 0.02 / sqrt(2))``, biases 0, LayerNorm ``(1, 0)``)."""
    out = {}
    for name, shape in shapes(cfg).items():
        if name.endswith("_g"):
            t = torch.ones(shape)
        elif name.endswith("_b") or name.startswith("b"):
            t = torch.zeros(shape)
        else:
            std = 0.02 / math.sqrt(2) if name in ("wo", "w2") else 0.02
            t = torch.randn(shape, generator=generator) * std
        out[name] = t[None]
    return out


def replicate(params: Params, n: int) -> Params:
    """``n`` independent copies of one run's parameters (``[1, ...]`` -> ``[n, ...]``)."""
    for name, p in params.items():
        if p.shape[0] != 1:
            raise ValueError(f"replicate needs one run's parameters, {name} has {p.shape[0]} runs")
    return {name: p.expand(n, *p.shape[1:]).clone() for name, p in params.items()}


# --------------------------------------------------------------------------------------------
# the layers, written once for both passes (the dtype is that of the tensors they are given)


def _linear(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``x [R, N, in] @ w [R, in, out] + b [R, out]`` (:func:`drpo_sim.arena.reduced.matmul`)."""
    return reduced.matmul(x, w, b[:, None, :])


def _norm(x: torch.Tensor, g: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return F.layer_norm(x, x.shape[-1:]) * g[:, None, :] + b[:, None, :]


def _embed(p: Params, tokens: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """``tokens [R, N]`` at ``positions [N]`` -> ``[R, N, d]``."""
    r = torch.arange(tokens.shape[0], device=tokens.device)[:, None]
    return p["emb"][r, tokens] + p["pos"][:, positions]


def _mlp(p: Params, h: torch.Tensor, routes: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The MLP, or the top-1 mixture of experts (its routes ``[R, N]``: given, or the argmax)."""
    if "router" not in p:
        return _linear(F.gelu(_linear(h, p["w1"], p["b1"])), p["w2"], p["b2"]), None
    gate_logits = reduced.matmul(h, p["router"])  # [R, N, K]
    if routes is None:
        routes = gate_logits.argmax(dim=-1)
    gate = gate_logits.float().softmax(dim=-1).gather(-1, routes[..., None]).to(h.dtype)  # [R, N, 1]
    if reduced.emulated(h, p["w1"]) and reduced.emulated(h, p["w2"]):
        # the einsums below as products torch's reference kernel computes (the same numbers, faster)
        r, n, d = h.shape
        k, f = p["w1"].shape[1], p["w1"].shape[-1]
        hidden = reduced.reduced_bmm(h, p["w1"].permute(0, 2, 1, 3).reshape(r, d, k * f))
        hidden = F.gelu(hidden.view(r, n, k, f).transpose(1, 2) + p["b1"][:, :, None, :])
        out = reduced.reduced_bmm(hidden.reshape(r * k, n, f), p["w2"].reshape(r * k, f, d)).view(r, k, n, d)
        out = out + p["b2"][:, :, None, :]
    else:
        hidden = F.gelu(torch.einsum("rnd,rkdf->rknf", h, p["w1"]) + p["b1"][:, :, None, :])
        out = torch.einsum("rknf,rkfd->rknd", hidden, p["w2"]) + p["b2"][:, :, None, :]  # [R, K, N, d]
    idx = routes[:, None, :, None].expand(-1, 1, -1, out.shape[-1])
    return gate * out.gather(1, idx).squeeze(1), routes


def _heads(x: torch.Tensor, n_heads: int) -> torch.Tensor:
    """``[R, B, T, d]`` -> ``[R, B, heads, T, d_head]``."""
    r, b, t, d = x.shape
    return x.view(r, b, t, n_heads, d // n_heads).transpose(2, 3)


# --------------------------------------------------------------------------------------------
# the trainer's pass


def logits(p: Params, cfg: ArenaModel, tokens: torch.Tensor, routes: torch.Tensor | None = None,
           ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The trainer's float32 pass over whole sequences: ``tokens [R, B, T]`` -> logits
    ``[R, B, T, V]`` and, with MoE, its routes ``[R, B, T]`` (``routes`` given: routing replay,
    the trainer uses them instead of its own)."""
    r, b, t = tokens.shape
    if t > cfg.max_len:
        raise ValueError(f"sequence length {t} exceeds the model's max_len {cfg.max_len}")
    d = cfg.d_model
    x = _embed(p, tokens.reshape(r, b * t), torch.arange(t, device=tokens.device).repeat(b))  # [R, B*T, d]
    qkv = _linear(_norm(x, p["ln1_g"], p["ln1_b"]), p["wqkv"], p["bqkv"]).view(r, b, t, 3 * d)
    q, k, v = (_heads(a, cfg.n_heads) for a in qkv.split(d, dim=-1))  # [R, B, h, T, dh]
    scores = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(d // cfg.n_heads))
    future = torch.ones(t, t, dtype=torch.bool, device=tokens.device).triu(diagonal=1)
    att = scores.masked_fill(future, float("-inf")).softmax(dim=-1)
    y = (att @ v).transpose(2, 3).reshape(r, b * t, d)
    x = x + _linear(y, p["wo"], p["bo"])
    flat_routes = None if routes is None else routes.reshape(r, b * t)
    m, used = _mlp(p, _norm(x, p["ln2_g"], p["ln2_b"]), flat_routes)
    x = x + m
    z = _linear(_norm(x, p["lnf_g"], p["lnf_b"]), p["head"], p["bhead"])
    return z.view(r, b, t, -1), (None if used is None else used.view(r, b, t))


def response_logprobs(p: Params, cfg: ArenaModel, seqs: torch.Tensor, prompt_len: int, temperature: float = 1.0,
                      routes: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The trainer's ``log pi(. | x_<t)`` at every response position, ``[R, B, H, V]`` float32,
    and its log-prob of each response token ``[R, B, H]`` (``seqs [R, B, P + H]``; ``routes``
    as in :func:`logits`, for the input positions ``seqs[..., :-1]``)."""
    z, _ = logits(p, cfg, seqs[..., :-1], routes)
    return logprobs_of(z, seqs, prompt_len, temperature)


def logprobs_of(z: torch.Tensor, seqs: torch.Tensor, prompt_len: int, temperature: float = 1.0,
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`response_logprobs` from the logits ``z [R, B, P + H - 1, V]`` of ``seqs[..., :-1]``
    (for a caller that also needs :func:`logits`' routes)."""
    lp_all = torch.log_softmax(z[:, :, prompt_len - 1:] / temperature, dim=-1)
    return lp_all, lp_all.gather(-1, seqs[..., prompt_len:, None]).squeeze(-1)


# --------------------------------------------------------------------------------------------
# the engine's pass


@dataclass
class Rollout:
    """What the engine returns: sequences, its log-probs of its samples, its routes (MoE)."""

    seqs: torch.Tensor
    """``[R, B, P + H]`` int64: prompt and response."""
    logp: torch.Tensor
    """``[R, B, H]`` float32: ``log mu`` of each sampled token."""
    routes: torch.Tensor | None
    """``[R, B, P + H - 1]`` int64: the engine's expert at each input position (MoE only)."""
    topk_ids: torch.Tensor | None = None
    """``[R, B, H, K]`` int64: the engine's ``K`` most likely tokens at each response position
    (``rollout(topk=K)``; what an engine returns with ``logprobs=K``), for DPPO's Top-K divergences."""
    topk_logp: torch.Tensor | None = None
    """``[R, B, H, K]`` float32: the engine's log-probs of those tokens."""


class Engine:
    """A frozen copy of the trainer's parameters in ``precision`` (module docstring)."""

    def __init__(self, p: Params, cfg: ArenaModel, precision: str):
        if precision not in PRECISIONS:
            raise ValueError(f"unknown precision {precision!r}; valid: {', '.join(PRECISIONS)}")
        self.cfg, self.precision, self.dtype = cfg, precision, _DTYPE[precision]
        weights = {}
        for name, w in p.items():
            w = w.detach()
            if precision == "fp8" and name in _FP8_WEIGHTS:
                w = _fp8_roundtrip(w)
            weights[name] = w.to(self.dtype)
        self.p = weights

    @torch.no_grad()
    def rollout(self, prompts: torch.Tensor, n_new: int, uniforms: Callable[[int], torch.Tensor],
                temperature: float = 1.0, trainer: Params | None = None, topk: int = 0) -> Rollout:
        """Sample ``n_new`` tokens after ``prompts [R, B, P]`` by inverse-CDF sampling:
        ``uniforms(j) -> [R, B]`` in ``[0, 1)`` gives the draws for response position ``j``
        (the caller shares them between runs of the same seed: common random numbers).

        ``mu`` is ``log_softmax(float32(logits) / temperature)`` of each sampled token. For the
        fp32 engine given ``trainer`` (the parameters it copies), the reported log-probs are the
        trainer's own (the control with zero mismatch, bit for bit); without it, those of its
        incremental pass, which differ from the trainer's by a few float32 ulps (about 4e-6 nats).
        ``topk = K > 0`` also reports the engine's ``K`` most likely tokens at each response position
        and their log-probs (always its own pass's: the top-K list is what the engine returns)."""
        cfg, p, dt = self.cfg, self.p, self.dtype
        r, b, plen = prompts.shape
        total = plen + n_new
        if total > cfg.max_len:
            raise ValueError(f"prompt and response ({total} tokens) exceed the model's max_len {cfg.max_len}")
        d, nh = cfg.d_model, cfg.n_heads
        dh = d // nh
        dev = prompts.device
        seqs = torch.cat([prompts, torch.zeros(r, b, n_new, dtype=torch.long, device=dev)], dim=2)
        logp = torch.zeros(r, b, n_new, device=dev)
        k = min(int(topk), cfg.vocab_size)
        top_ids = torch.zeros(r, b, n_new, k, dtype=torch.long, device=dev) if k > 0 else None
        top_lp = torch.zeros(r, b, n_new, k, device=dev) if k > 0 else None
        routes = torch.zeros(r, b, total - 1, dtype=torch.long, device=dev) if cfg.moe else None
        # with torch's reduced-precision products reproduced (drpo_sim.arena.reduced), the KV cache
        # holds the engine's values as float32, laid out for reduced_dot: [dh, T, R*B*h], [T, R*B*h, dh]
        emulate = reduced.active(dt, dev)
        if emulate:
            kc = torch.zeros(dh, total - 1, r * b * nh, device=dev)
            vc = torch.zeros(total - 1, r * b * nh, dh, device=dev)
        else:
            kc = torch.zeros(r, b, nh, total - 1, dh, dtype=dt, device=dev)
            vc = torch.zeros(r, b, nh, total - 1, dh, dtype=dt, device=dev)
        scale = 1.0 / math.sqrt(dh)
        for t in range(total - 1):
            x = _embed(p, seqs[:, :, t], torch.full((b,), t, device=dev))  # [R, B, d]
            qkv = _linear(_norm(x, p["ln1_g"], p["ln1_b"]), p["wqkv"], p["bqkv"]).view(r, b, 3, nh, dh)
            q = qkv[:, :, 0]
            if emulate:  # torch's (kc @ q) and (att @ vc) in dt, summed its way
                kc[:, t] = qkv[:, :, 1].reshape(-1, dh).T
                vc[t] = qkv[:, :, 2].reshape(-1, dh)
                scores = reduced.reduced_dot(kc[:, : t + 1], q.float().reshape(-1, dh).T[:, None],
                                             reduced.lanes_for(dh, t + 1, 1))  # [t+1, R*B*h]
                att = (scores.T.reshape(r, b, nh, t + 1).to(dt) * scale).softmax(dim=-1)  # [R, B, h, t+1]
                y = reduced.reduced_dot(att.float().reshape(-1, t + 1).T[..., None], vc[: t + 1],
                                        reduced.lanes_for(t + 1, 1, dh))  # [R*B*h, dh]
                y = y.to(dt).reshape(r, b, d)
            else:
                kc[:, :, :, t] = qkv[:, :, 1]
                vc[:, :, :, t] = qkv[:, :, 2]
                scores = (kc[:, :, :, : t + 1] @ q[..., None]).squeeze(-1) * scale  # [R, B, h, t+1]
                att = scores.softmax(dim=-1)
                y = (att[..., None, :] @ vc[:, :, :, : t + 1]).reshape(r, b, d)
            x = x + _linear(y, p["wo"], p["bo"])
            m, used = _mlp(p, _norm(x, p["ln2_g"], p["ln2_b"]), None)
            if routes is not None:
                routes[:, :, t] = used
            x = x + m
            if t < plen - 1:
                continue
            z = _linear(_norm(x, p["lnf_g"], p["lnf_b"]), p["head"], p["bhead"])
            lp = torch.log_softmax(z.float() / temperature, dim=-1)  # [R, B, V]
            j = t - plen + 1
            tok = sample_inverse_cdf(lp.exp(), uniforms(j).to(dev))
            seqs[:, :, t + 1] = tok
            logp[:, :, j] = lp.gather(-1, tok[..., None]).squeeze(-1)
            if top_ids is not None:
                top_lp[:, :, j], top_ids[:, :, j] = lp.topk(k, dim=-1)
        if self.precision == "fp32" and trainer is not None:
            logp = response_logprobs(trainer, cfg, seqs, plen, temperature, routes)[1]
        return Rollout(seqs, logp, routes, top_ids, top_lp)


def sample_inverse_cdf(probs: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """The token ``min {i : sum_{j <= i} probs_j > u}`` for each row of ``probs [..., V]`` and
    draw ``u [...]`` in ``[0, 1)`` (the last token if rounding leaves the sum below ``u``)."""
    cdf = probs.cumsum(dim=-1)
    tok = torch.searchsorted(cdf, u[..., None].to(cdf.dtype).contiguous(), right=True).squeeze(-1)
    return tok.clamp_max(probs.shape[-1] - 1)


def _fp8_roundtrip(w: torch.Tensor) -> torch.Tensor:
    """``w [R, ..., in, out]`` quantised to float8 e4m3 with one scale per output channel and
    dequantised (float32), as :class:`drpo_sim.lm.precision.FP8Linear` does per output row."""
    moved = w.transpose(-1, -2)  # [..., out, in]
    q, scale = quantize_fp8(moved.reshape(-1, moved.shape[-1]))
    assert q.dtype == FP8_DTYPE
    return (q.float() * scale[:, None]).view(moved.shape).transpose(-1, -2)
