"""drpo_sim.lm.precision: the engine copies of the trainer (fp32, fp16, bf16, fp8 weights), and the
mismatch each gives against the float32 trainer on real rollouts."""

from __future__ import annotations

import pytest
import torch

from drpo_sim.lm.model import generate, token_logprobs
from drpo_sim.lm.precision import FP8_DTYPE, FP8Linear, engine_copy
from drpo_sim.lm.task import EOS, PAD


def _rollout(model, task, n=256, seed=1):
    digits = task.sample_digits(n, torch.Generator().manual_seed(seed))
    return generate(model, task.prompts(digits), task.response_len, eos_id=EOS, pad_id=PAD,
                    generator=torch.Generator().manual_seed(seed + 1))


def test_fp32_engine_reports_exactly_the_trainer_logprobs_on_cpu(lm_checkpoint):
    model, task = lm_checkpoint.model(), lm_checkpoint.task
    roll = _rollout(engine_copy(model, "fp32"), task)
    pi = token_logprobs(model, roll.seqs, task.prompt_len)
    assert torch.equal(pi[roll.mask], roll.logp[roll.mask])  # on-policy: zero mismatch, bit for bit


@pytest.mark.parametrize("precision, low, high", [("fp16", 1e-6, 1e-3), ("bf16", 1e-4, 5e-3), ("fp8", 2e-4, 1e-2)])
def test_reduced_precision_engines_give_a_real_mismatch_on_cpu(lm_checkpoint, precision, low, high):
    model, task = lm_checkpoint.model(), lm_checkpoint.task
    engine = engine_copy(model, precision)
    roll = _rollout(engine, task)
    with torch.no_grad():
        pi = token_logprobs(model, roll.seqs, task.prompt_len)[roll.mask].double()
    mu = roll.logp[roll.mask].double()
    shift = (pi.exp() - mu.exp()).abs()
    assert low < float(shift.mean()) < high  # published healthy runs: below about 5e-3
    assert float(shift.max()) < 0.1
    assert torch.all(mu <= 0)
    # the engine really computes in its dtype, and the trainer is untouched
    assert engine.tok.weight.dtype == {"fp16": torch.float16, "bf16": torch.bfloat16, "fp8": torch.bfloat16}[precision]
    assert model.tok.weight.dtype == torch.float32 and model.tok.weight.requires_grad


def test_fp8_engine_stores_float8_weights_on_cpu(lm_checkpoint):
    model = lm_checkpoint.model()
    engine = engine_copy(model, "fp8")
    fp8 = [m for m in engine.modules() if isinstance(m, FP8Linear)]
    assert len(fp8) == 4 * lm_checkpoint.config.n_layers  # qkv, attention output, two MLP layers per block
    for layer in fp8:
        assert layer.weight_fp8.dtype == FP8_DTYPE == torch.float8_e4m3fn
        assert layer.scale.dtype == torch.float32
    assert not any(isinstance(m, torch.nn.Linear) for m in engine.blocks.modules())
    # lm_head stays bf16
    assert isinstance(engine.head, torch.nn.Linear) and engine.head.weight.dtype == torch.bfloat16
    # dequantised weights are the originals up to e4m3's rounding (3 mantissa bits: 2^-4 relative)
    w = model.blocks[0].fc.weight.detach()
    deq = engine.blocks[0].fc.dequantized(torch.float32)
    rel = ((deq - w).abs() / w.abs().amax(dim=1, keepdim=True)).max()
    assert 0 < float(rel) <= 2.0**-4
    assert not torch.equal(deq, w)
