"""drpo_sim.arena.reduced: the engine's bfloat16 / float16 products are torch's, bit for bit, and
follow the reference kernel's order as written out term by term; the engine's rollouts are the same
with and without them."""

from __future__ import annotations

import pytest
import torch

from drpo_sim.arena import reduced
from drpo_sim.arena.model import ArenaModel, Engine, init_params, replicate
from drpo_sim.arena.task import WalkTask

DTYPES = (torch.bfloat16, torch.float16)
# (batch, rows, inner, columns): the arena's products (q/k/v, attention output, MLP in and out, head,
# router, the experts' products), a few below the naive kernel's threshold, and inner sizes that
# leave a remainder after the four lanes
SHAPES = [(88, 32, 32, 96), (88, 32, 32, 32), (88, 32, 32, 128), (88, 32, 128, 32), (88, 32, 32, 64),
          (16, 32, 32, 4), (16, 32, 32, 512), (64, 32, 128, 32), (40, 64, 16, 48),
          (30, 3, 8, 12), (30, 5, 8, 10), (30, 2, 16, 13), (30, 4, 5, 19), (30, 7, 9, 11), (30, 6, 3, 30),
          (30, 9, 2, 40)]


def _bits(t: torch.Tensor) -> torch.Tensor:
    return t.view(torch.int16)


def _operands(shape, dtype, seed):
    n, rows, k, cols = shape
    gen = torch.Generator().manual_seed(seed)
    # magnitudes over several octaves, some exact zeros and negative zeros
    x = torch.randn(n, rows, k, generator=gen) * torch.exp2(torch.randint(-4, 5, (n, rows, 1), generator=gen))
    x[x.abs() < 0.02] = -0.0
    w = torch.randn(n, k, cols, generator=gen) * 0.1
    b = torch.randn(n, 1, cols, generator=gen) * 0.1
    return x.to(dtype), w.to(dtype), b.to(dtype)


def _by_definition(x, w, bias=None):
    """The reference kernel's sum, term by term: products in float32, lanes of 4 (one sequential
    sum below 400), lane 0 takes the remainder, lanes added in order, bias, one rounding."""
    n, rows, k = x.shape
    cols = w.shape[-1]
    lanes = 1 if k * rows * cols < 400 else 4
    xf, wf = x.float(), w.float()
    part = [torch.zeros(n, rows, cols) for _ in range(lanes)]
    main = k - k % lanes
    for i in range(main):
        part[i % lanes] = part[i % lanes] + xf[:, :, i, None] * wf[:, None, i, :]
    for i in range(main, k):
        part[0] = part[0] + xf[:, :, i, None] * wf[:, None, i, :]
    acc = part[0]
    for j in range(1, lanes):
        acc = acc + part[j]
    if bias is not None:
        acc = bias.float() + acc
    return acc.to(x.dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_reduced_bmm_is_torchs_product_bit_for_bit_on_cpu(shape, dtype):
    for seed in range(3):
        x, w, b = _operands(shape, dtype, seed)
        # the order written out term by term, on any machine
        assert torch.equal(_bits(reduced.reduced_bmm(x, w)), _bits(_by_definition(x, w)))
        assert torch.equal(_bits(reduced.reduced_bmm(x, w, b)), _bits(_by_definition(x, w, b)))
        if reduced.torch_uses_reference_kernel(dtype):  # torch's own product, where it uses that kernel
            assert torch.equal(_bits(reduced.reduced_bmm(x, w)), _bits(torch.bmm(x, w)))
            assert torch.equal(_bits(reduced.reduced_bmm(x, w, b)), _bits(torch.baddbmm(b, x, w)))


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", [(60, 4, 16, 1), (60, 40, 16, 1), (60, 1, 20, 16), (60, 1, 64, 16), (60, 1, 27, 16)],
                         ids=str)
def test_reduced_dot_sums_as_the_kernel_does_on_cpu(shape, dtype):
    """The attention's products, term by term: ``(keys @ q)`` and ``(att @ values)`` per head."""
    for seed in range(3):
        x, w, _ = _operands(shape, dtype, seed)
        n, rows, k, cols = shape
        lanes = reduced.lanes_for(k, rows, cols)
        # a [k, n, rows, 1] against b [k, n, 1, cols]: the sum over k is x @ w
        got = reduced.reduced_dot(x.float().permute(2, 0, 1)[..., None], w.float().permute(1, 0, 2)[:, :, None, :],
                                  lanes).to(dtype)
        assert torch.equal(_bits(got), _bits(_by_definition(x, w)))
        if reduced.torch_uses_reference_kernel(dtype):
            assert torch.equal(_bits(got), _bits(torch.bmm(x, w)))


def test_the_order_matters_so_the_test_can_fail_on_cpu():
    """A plain float32 product rounded once differs from torch's bfloat16 product somewhere: the
    equalities above are not the rounding's doing alone."""
    x, w, b = _operands((88, 32, 128, 32), torch.bfloat16, 0)
    naive = torch.baddbmm(b.float(), x.float(), w.float()).to(torch.bfloat16)
    assert not torch.equal(_bits(naive), _bits(torch.baddbmm(b, x, w)))


def test_matmul_leaves_other_products_to_torch_on_cpu():
    x, w, b = _operands((8, 32, 32, 16), torch.bfloat16, 1)
    wt = w.transpose(1, 2).contiguous().transpose(1, 2)  # the same values, transposed in memory
    assert not reduced.emulated(x, wt)
    assert torch.equal(_bits(reduced.matmul(x, wt, b)), _bits(torch.baddbmm(b, x, wt)))
    xf, wf = x.float(), w.float()
    assert not reduced.emulated(xf, wf)
    assert torch.equal(reduced.matmul(xf, wf), torch.bmm(xf, wf))
    assert reduced.emulated(x, w)


TASK = WalkTask(vocab_size=16, n_classes=4, response_len=6)


@pytest.mark.parametrize("experts", [0, 4])
@pytest.mark.parametrize("precision", ["bf16", "fp16", "fp8"])
def test_engine_rollouts_are_the_same_with_torchs_own_products_on_cpu(precision, experts):
    cfg = ArenaModel(vocab_size=16, max_len=TASK.seq_len, d_model=16, n_heads=2, d_mlp=32, n_experts=experts)
    gen = torch.Generator().manual_seed(0)
    p = {k: v + 0.5 * torch.randn(v.shape, generator=gen) for k, v in replicate(init_params(cfg, gen), 6).items()}
    prompts = TASK.prompts(6 * 40, gen).view(6, 40, 2)
    draws = torch.rand(TASK.response_len, 6, 40, generator=gen)

    def roll():
        return Engine(p, cfg, precision).rollout(prompts, TASK.response_len, lambda j: draws[j], topk=4)

    fast = roll()
    with reduced.torch_kernels():
        slow = roll()
    assert reduced.emulated(p["wqkv"].bfloat16(), p["wqkv"].bfloat16())  # on again after the context
    assert (fast.routes is None) == (experts == 0)
    if not reduced.torch_uses_reference_kernel(torch.bfloat16 if precision != "fp16" else torch.float16):
        return  # torch sums its own products in another order here; the products above hold the definition
    assert torch.equal(fast.seqs, slow.seqs)
    assert torch.equal(fast.logp, slow.logp) and torch.equal(fast.topk_logp, slow.topk_logp)
    if experts:
        assert torch.equal(fast.routes, slow.routes)
