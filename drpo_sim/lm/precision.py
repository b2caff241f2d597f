"""Inference-engine copies of the policy in reduced precision: a real training-inference mismatch.

At every RL step the trainer's float32 weights are synchronised into an engine copy
(:func:`engine_copy`), which samples the rollouts and reports the log-probs ``mu`` of its own
samples from its own low-precision logits, the way vLLM or SGLang report ``logprobs``. The trainer
then recomputes ``pi`` in float32. Nothing is injected: the difference ``pi - mu`` is what the
engine's arithmetic makes of the same weights.

Precisions (``PRECISIONS``):

* ``"fp32"``: an exact copy. It reports bit for bit the trainer's log-probs (see
  :mod:`drpo_sim.lm.model`), the on-policy control with zero mismatch.
* ``"bf16"``: every parameter cast to ``torch.bfloat16`` (8 significant bits) and every
  operation (embeddings, LayerNorm, matmuls, attention softmax, GELU) computed in bfloat16, as a
  bf16 inference engine does; only the final logits are cast to float32 for the ``log_softmax``.
* ``"fp16"``: the same in ``torch.float16`` (11 significant bits, narrower range).
* ``"fp8"``: weight-only FP8 on top of the bf16 engine (W8A16). The weight of every ``nn.Linear``
  inside the transformer blocks (attention ``qkv`` and output projections, the two MLP layers) is
  quantised from the float32 master weights to ``torch.float8_e4m3fn`` (4 exponent bits, 3
  mantissa bits, max 448) with one float32 scale per output row, ``s_i = max_j abs(W_ij) / 448``,
  and *stored* in that dtype (:class:`FP8Linear`); at each call it is dequantised on the fly,
  ``W ~= fp8(W / s) * s``, cast to bfloat16 and multiplied with bfloat16 activations. Embeddings,
  LayerNorms and the output head (``lm_head``) stay in bfloat16, as vLLM's FP8 checkpoints keep
  them unquantised. Per-row scaling follows vLLM's per-channel FP8 weights.

The engine reports ``mu`` for each sampled token with :func:`drpo_sim.lm.model.generate`, from
``log_softmax(float32(logits))``.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from drpo_sim.lm.model import Block

PRECISIONS = ("fp32", "bf16", "fp16", "fp8")
FP8_DTYPE = torch.float8_e4m3fn
FP8_MAX = float(torch.finfo(FP8_DTYPE).max)  # 448
_CAST = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16, "fp8": torch.bfloat16}


class FP8Linear(nn.Module):
    """``y = x W^T + b`` with ``W`` stored as float8 e4m3 with a float32 scale per output row.

    Buffers: ``weight_fp8 [out, in]`` (``torch.float8_e4m3fn``), ``scale [out]`` (float32),
    ``bias [out]`` (the activation dtype). The matmul runs in the activations' dtype on the
    dequantised weight ``fp8 * scale``.
    """

    def __init__(self, weight_fp8: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None):
        super().__init__()
        self.register_buffer("weight_fp8", weight_fp8)
        self.register_buffer("scale", scale)
        self.register_buffer("bias", bias)

    @classmethod
    def from_linear(cls, linear: nn.Linear, act_dtype: torch.dtype = torch.bfloat16) -> FP8Linear:
        """Quantise a float32 ``nn.Linear``: ``s_i = amax_i / 448``, ``W8 = fp8(W / s)`` (round to nearest)."""
        w = linear.weight.detach().float()
        q, scale = quantize_fp8(w)
        bias = None if linear.bias is None else linear.bias.detach().to(act_dtype).clone()
        return cls(q, scale, bias)

    def dequantized(self, dtype: torch.dtype) -> torch.Tensor:
        """``fp8 * scale`` in ``dtype`` (the product is formed in float32, then cast)."""
        return (self.weight_fp8.float() * self.scale[:, None]).to(dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bias = None if self.bias is None else self.bias.to(x.dtype)
        return F.linear(x, self.dequantized(x.dtype), bias)

    def extra_repr(self) -> str:
        out, inp = self.weight_fp8.shape
        return f"in_features={inp}, out_features={out}, weight={self.weight_fp8.dtype}, per-row scale"


def quantize_fp8(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``w [out, in]`` -> ``(fp8 weights, float32 scale [out])`` with ``w ~= fp8 * scale[:, None]``.

    Each row is scaled so its largest magnitude maps to the format's max (448); an all-zero row
    gets scale 1. The cast rounds to nearest even, values beyond +-448 cannot occur.
    """
    amax = w.abs().amax(dim=1)
    scale = torch.where(amax > 0, amax / FP8_MAX, torch.ones_like(amax)).float()
    q = (w / scale[:, None]).clamp(-FP8_MAX, FP8_MAX).to(FP8_DTYPE)
    return q, scale


def engine_copy(model: nn.Module, precision: str) -> nn.Module:
    """A frozen inference copy of ``model`` (float32) in ``precision`` (module docstring).

    The copy shares nothing with ``model``: the trainer's later updates do not reach it until the
    next :func:`engine_copy` (the weight synchronisation of an RL step).
    """
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; valid: {', '.join(PRECISIONS)}")
    engine = copy.deepcopy(model).eval()
    engine.requires_grad_(False)
    quantized = []
    if precision == "fp8":  # quantise from the float32 master weights, before the cast to bf16
        for block in (m for m in engine.modules() if isinstance(m, Block)):
            for parent in (block.attn, block):
                for name, child in parent.named_children():
                    if isinstance(child, nn.Linear):
                        quantized.append((parent, name, FP8Linear.from_linear(child, _CAST[precision])))
    engine.to(_CAST[precision])  # (would also cast float8 buffers: the FP8 layers go in after it)
    for parent, name, layer in quantized:
        setattr(parent, name, layer)
    return engine

def compute_dtype(engine: nn.Module) -> torch.dtype:
    """The dtype the engine computes in (that of its token embedding)."""
    return engine.tok.weight.dtype
