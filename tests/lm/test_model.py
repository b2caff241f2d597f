"""drpo_sim.lm.model: the tiny transformer's token log-probabilities, causal mask and initialisation."""

from __future__ import annotations

import torch

from drpo_sim.lm.model import ModelConfig, TinyTransformer, token_logprobs
from drpo_sim.lm.task import PAD


def test_token_logprobs_equal_a_manual_log_softmax_gather_on_cpu():
    cfg = ModelConfig(max_len=10)
    model = TinyTransformer(cfg, generator=torch.Generator().manual_seed(0))
    seqs = torch.randint(0, cfg.vocab_size, (5, 10), generator=torch.Generator().manual_seed(1))
    got = token_logprobs(model, seqs, prompt_len=4)
    logits = model(seqs)
    manual = torch.stack(
        [torch.log_softmax(logits[b, t - 1], dim=-1)[seqs[b, t]] for b in range(5) for t in range(4, 10)]
    ).view(5, 6)
    torch.testing.assert_close(got, manual, rtol=1e-6, atol=1e-6)
    assert got.shape == (5, 6) and torch.all(got <= 0)


def test_causal_mask_future_tokens_do_not_change_earlier_logits_on_cpu():
    model = TinyTransformer(ModelConfig(max_len=8), generator=torch.Generator().manual_seed(0))
    a = torch.randint(0, 14, (3, 8), generator=torch.Generator().manual_seed(2))
    b = a.clone()
    b[:, 5:] = PAD
    assert torch.equal(model(a)[:, :5], model(b)[:, :5])


def test_initialisation_is_deterministic_given_the_generator():
    m1 = TinyTransformer(ModelConfig(), generator=torch.Generator().manual_seed(3))
    m2 = TinyTransformer(ModelConfig(), generator=torch.Generator().manual_seed(3))
    for (n, p), (_, q) in zip(m1.named_parameters(), m2.named_parameters()):
        assert torch.equal(p, q), n
