"""drpo_sim.lm.mismatch: the trainer-engine mismatch statistics, by hand on a small rollout, and
at initialisation for each engine precision."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from drpo_sim.lm.mismatch import PUBLISHED, RARE_MU, engine_statistics, token_statistics


def test_token_statistics_by_hand_on_cpu():
    # two responses: three valid tokens, then one (the padding holds values that must not count)
    pi = torch.tensor([[0.5, 0.2, 0.005, 0.9], [0.8, 0.3, 0.3, 0.3]])
    mu = torch.tensor([[0.4, 0.25, 0.01, 0.1], [0.8, 0.6, 0.6, 0.6]])
    mask = torch.tensor([[True, True, True, False], [True, False, False, False]])
    got = token_statistics(pi.log(), mu.log(), mask)
    p = [0.5, 0.2, 0.005, 0.8]
    m = [0.4, 0.25, 0.01, 0.8]
    d = [a - b for a, b in zip(p, m)]
    lr = [math.log(a / b) for a, b in zip(p, m)]
    assert got["mismatch_mean"] == pytest.approx(sum(abs(x) for x in d) / 4, rel=1e-6)
    assert got["mismatch_max"] == pytest.approx(0.1, rel=1e-6)
    assert (got["pi_minus_mu_min"], got["pi_minus_mu_max"]) == pytest.approx((-0.05, 0.1), rel=1e-6)
    assert got["pi_minus_mu_mean"] == pytest.approx(sum(d) / 4, rel=1e-6)
    assert got["log_ratio_mean"] == pytest.approx(sum(lr) / 4, rel=1e-6)
    assert got["seq_log_ratio_per_token"] == pytest.approx((sum(lr[:3]) / 3 + lr[3]) / 2, rel=1e-6)
    assert got["kl_k3"] == pytest.approx(sum(math.exp(x) - 1 - x for x in lr) / 4, rel=1e-6)
    assert got["rare_share"] == 0.25  # mu = 0.01 <= RARE_MU
    assert RARE_MU == 0.01


def test_token_statistics_refuses_an_empty_rollout_on_cpu():
    logp = torch.zeros(2, 3)
    with pytest.raises(ValueError, match="no valid token: the mismatch of an empty rollout is undefined"):
        token_statistics(logp, logp, torch.zeros(2, 3, dtype=torch.bool))


def test_engine_statistics_at_initialisation_on_cpu(lm_checkpoint):
    """fp32 is bit-identical to the trainer; the reduced precisions give a real mismatch, fp16's
    well below bf16's (11 significant bits against 8), fp8 weights above bf16's."""
    stats = {p: engine_statistics(lm_checkpoint, p, n_prompts=64) for p in ("fp32", "bf16", "fp16", "fp8")}
    for name, value in stats["fp32"].items():
        if name not in ("rare_share", "tokens", "responses"):
            assert value == 0, name
    for p in ("bf16", "fp16", "fp8"):
        s = stats[p]
        assert s["responses"] == 64 and s["tokens"] >= 64
        assert s["mismatch_mean"] > 0 and s["kl_k3"] > 0
        assert s["pi_minus_mu_min"] <= s["pi_minus_mu_mean"] <= s["pi_minus_mu_max"]
        assert 0 <= s["rare_share"] <= 1
    assert stats["fp16"]["mismatch_mean"] < stats["bf16"]["mismatch_mean"] / 3
    assert stats["fp8"]["mismatch_mean"] > stats["bf16"]["mismatch_mean"]
    # the same prompts and generator: the counts differ only where an engine stops elsewhere
    assert abs(stats["bf16"]["tokens"] - stats["fp32"]["tokens"]) < stats["fp32"]["tokens"] * 0.05


def test_engine_statistics_refuses_bad_input(lm_checkpoint):
    with pytest.raises(ValueError, match="unknown precision 'int4'; valid: fp32, bf16, fp16, fp8"):
        engine_statistics(lm_checkpoint, "int4")
    with pytest.raises(ValueError, match="n_prompts must be a positive integer, got 0"):
        engine_statistics(lm_checkpoint, "bf16", n_prompts=0)


def test_the_published_targets_are_the_reference_pages():
    """The targets a calibration reads are the numbers docs/reference.md gives, not retyped ones."""
    text = (Path(__file__).resolve().parents[2] / "docs" / "reference.md").read_text()
    bf16, fp16 = PUBLISHED["bf16"], PUBLISHED["fp16"]
    assert f"about {bf16['rare_share']:.1%} of sampled tokens have `mu <= {RARE_MU:g}`" in text
    def short(x):  # -0.001 -> "-1e-3", as the page writes it
        return f"{x:.0e}".replace("e-0", "e-")

    assert f"about {short(bf16['seq_log_ratio_per_token'])} nats per token with BF16 rollouts" in text
    assert f"about {short(fp16['seq_log_ratio_per_token'])} with" in text
    assert f"mean `abs(pi - mu)` rises from about {bf16['mismatch_mean']:g}" in text
