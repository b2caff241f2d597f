"""drpo_sim.arena.model: runs stay independent in the batch, the fp32 engine is exact, reduced
precisions round real torch dtypes, MoE routes flip and replay."""

from __future__ import annotations

import pytest
import torch

from drpo_sim.arena.model import (
    PRECISIONS,
    ArenaModel,
    Engine,
    init_params,
    logits,
    replicate,
    response_logprobs,
    sample_inverse_cdf,
)
from drpo_sim.arena.task import WalkTask
from drpo_sim.lm.precision import quantize_fp8

TASK = WalkTask(vocab_size=16, n_classes=4, response_len=6)
CFG = ArenaModel(vocab_size=16, max_len=TASK.seq_len, d_model=16, n_heads=2, d_mlp=32)


def _params(cfg=CFG, runs=3, scale=0.5, seed=0):
    gen = torch.Generator().manual_seed(seed)
    p = replicate(init_params(cfg, gen), runs)
    return {k: v + scale * torch.randn(v.shape, generator=gen) for k, v in p.items()}  # runs differ


def _rollout(p, precision, cfg=CFG, b=5, trainer=None):
    gen = torch.Generator().manual_seed(1)
    r = next(iter(p.values())).shape[0]
    prompts = TASK.prompts(r * b, gen).view(r, b, 2)
    draws = torch.rand(TASK.response_len, r, b, generator=gen)
    return Engine(p, cfg, precision).rollout(prompts, TASK.response_len, lambda j: draws[j], trainer=trainer)


def test_runs_in_a_batch_are_independent_on_cpu():
    p = _params()
    seqs = torch.randint(0, 16, (3, 4, TASK.seq_len), generator=torch.Generator().manual_seed(2))
    together, _ = logits(p, CFG, seqs)
    for r in range(3):
        alone, _ = logits({k: v[r:r + 1] for k, v in p.items()}, CFG, seqs[r:r + 1])
        torch.testing.assert_close(together[r:r + 1], alone, rtol=1e-5, atol=1e-6)
    # a gradient of one run's output reaches only that run's parameters
    q = {k: v.clone().requires_grad_(True) for k, v in p.items()}
    logits(q, CFG, seqs)[0][1].sum().backward()
    for k, v in q.items():
        assert float(v.grad[0].abs().sum()) == 0.0 and float(v.grad[2].abs().sum()) == 0.0, k


def test_fp32_engine_reports_the_trainers_logprobs_bit_for_bit_on_cpu():
    p = _params()
    roll = _rollout(p, "fp32", trainer=p)
    _, lp = response_logprobs(p, CFG, roll.seqs, TASK.prompt_len)
    assert torch.equal(roll.logp, lp)
    # without the trainer, its incremental pass differs only by float32 rounding
    alone = _rollout(p, "fp32")
    assert torch.equal(alone.seqs, roll.seqs)
    torch.testing.assert_close(alone.logp, lp, rtol=0, atol=1e-4)


def test_reduced_precision_engines_differ_as_their_formats_do_on_cpu():
    p = _params()
    gaps = {}
    for precision in ("bf16", "fp16", "fp8"):
        roll = _rollout(p, precision, trainer=p)
        _, lp = response_logprobs(p, CFG, roll.seqs, TASK.prompt_len)
        gaps[precision] = float((lp.exp() - roll.logp.exp()).abs().mean())
    assert 0 < gaps["fp16"] < gaps["bf16"] / 3  # 11 against 8 significant bits
    assert gaps["fp8"] > gaps["bf16"]  # 3-bit mantissa weights on top of bf16
    assert Engine(p, CFG, "bf16").p["wqkv"].dtype == torch.bfloat16
    assert Engine(p, CFG, "fp16").p["emb"].dtype == torch.float16
    # fp8: each output channel of the block's linear weights quantised to e4m3 with its own scale
    w = p["w1"][0]  # [in, out]
    q, scale = quantize_fp8(w.T)
    expected = (q.float() * scale[:, None]).T.to(torch.bfloat16)
    assert torch.equal(Engine(p, CFG, "fp8").p["w1"][0], expected)
    assert not torch.equal(expected, w.to(torch.bfloat16))
    assert Engine(p, CFG, "fp8").p["head"].dtype == torch.bfloat16  # the head stays unquantised
    assert set(PRECISIONS) == {"fp32", "bf16", "fp16", "fp8"}


def test_the_mismatch_depends_on_the_parameters_on_cpu():
    small, large = _params(scale=0.1), _params(scale=1.0)
    gaps = []
    for p in (small, large):
        roll = _rollout(p, "bf16", trainer=p)
        _, lp = response_logprobs(p, CFG, roll.seqs, TASK.prompt_len)
        gaps.append(float((lp - roll.logp).abs().mean()))
    assert gaps[1] > 2 * gaps[0]


def test_moe_routes_flip_and_replay_on_cpu():
    cfg = ArenaModel(vocab_size=16, max_len=TASK.seq_len, d_model=16, n_heads=2, d_mlp=32, n_experts=4)
    p = _params(cfg, scale=1.0)
    roll = _rollout(p, "bf16", cfg=cfg, b=16, trainer=p)
    assert roll.routes.shape == (3, 16, TASK.seq_len - 1)
    _, own = logits(p, cfg, roll.seqs[..., :-1])
    assert set(own.unique().tolist()) <= set(range(4))
    # replaying the engine's routes is what the trainer then uses
    z_replay, used = logits(p, cfg, roll.seqs[..., :-1], roll.routes)
    assert torch.equal(used, roll.routes)
    z_own, _ = logits(p, cfg, roll.seqs[..., :-1])
    same = (own == roll.routes)
    torch.testing.assert_close(z_replay[same], z_own[same])
    fp32 = _rollout(p, "fp32", cfg=cfg, b=16, trainer=p)
    _, own32 = logits(p, cfg, fp32.seqs[..., :-1])
    assert float((own32 != fp32.routes).float().mean()) < 0.01  # same precision: (almost) no flip


def test_inverse_cdf_sampling_on_cpu():
    probs = torch.tensor([[0.2, 0.3, 0.5], [0.2, 0.3, 0.5], [0.2, 0.3, 0.5], [0.0, 0.0, 0.99]])
    u = torch.tensor([0.1, 0.2, 0.999, 0.995])
    assert sample_inverse_cdf(probs, u).tolist() == [0, 1, 2, 2]


def test_bad_configurations_on_cpu():
    with pytest.raises(ValueError, match="unknown precision 'fp4'; valid: fp32, bf16, fp16, fp8"):
        Engine(_params(), CFG, "fp4")
    with pytest.raises(ValueError, match="n_experts must be 0"):
        ArenaModel(n_experts=1)
    with pytest.raises(ValueError, match="divisible"):
        ArenaModel(d_model=30, n_heads=4)
    with pytest.raises(ValueError, match="one run's parameters"):
        replicate(_params(), 2)
    with pytest.raises(ValueError, match="exceeds the model's max_len"):
        logits(_params(), CFG, torch.zeros(3, 1, CFG.max_len + 1, dtype=torch.long))
