"""Loss aggregation modes and the trainer-facing ``policy_loss``, against hand-written formulas."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import drpo_sim as ds
from drpo_sim.objectives import AGG_MODES, aggregate, policy_loss

VALUES = np.array([[1.0, 2.0, 3.0, 4.0], [10.0, 20.0, 0.0, 0.0], [5.0, 0.0, 0.0, 0.0]])
MASK = np.array([[1, 1, 1, 1], [1, 1, 0, 0], [0, 0, 0, 0]], dtype=bool)  # third sequence: no valid token


@pytest.mark.parametrize(
    "mode,expected",
    [
        ("token-mean", (1 + 2 + 3 + 4 + 10 + 20) / 6),
        ("seq-mean-token-sum", (10 + 30) / 2),
        ("seq-mean-token-mean", (2.5 + 15) / 2),
        ("seq-mean-token-sum-norm", (10 / 4 + 30 / 4) / 2),
    ],
)
def test_aggregation_modes_by_hand_on_cpu(mode, expected):
    assert aggregate(VALUES, MASK, mode) == pytest.approx(expected)
    assert float(aggregate(torch.tensor(VALUES), torch.tensor(MASK), mode)) == pytest.approx(expected)


def test_fixed_horizon_and_padding_is_never_read_on_cpu():
    assert aggregate(VALUES, MASK, "seq-mean-token-sum-norm", horizon=10) == pytest.approx((1.0 + 3.0) / 2)
    garbage = VALUES.copy()
    garbage[~MASK] = np.nan
    for mode in AGG_MODES:
        assert aggregate(garbage, MASK, mode) == pytest.approx(aggregate(VALUES, MASK, mode))


def test_aggregation_rejects_bad_arguments_on_cpu():
    with pytest.raises(ValueError, match="unknown loss aggregation mode 'seq-sum'; valid: token-mean"):
        aggregate(VALUES, MASK, "seq-sum")
    with pytest.raises(ValueError, match=r"mask has shape \(3, 3\) but the values have shape \(3, 4\)"):
        aggregate(VALUES, MASK[:, :3])
    with pytest.raises(ValueError, match="horizon must be a positive integer"):
        aggregate(VALUES, MASK, "seq-mean-token-sum-norm", horizon=0)
    with pytest.raises(ValueError, match=r"needs per-token values of shape \[B, T\]"):
        aggregate(VALUES.ravel(), MASK.ravel(), "seq-mean-token-mean")


def _batch(seed=0, b=4, t=6):
    g = torch.Generator().manual_seed(seed)
    mu = torch.rand(b, t, generator=g, dtype=torch.float64) * 0.98 + 0.01
    pi = (mu + 0.3 * (torch.rand(b, t, generator=g, dtype=torch.float64) - 0.5)).clamp(1e-3, 1.0)
    adv = torch.randn(b, generator=g, dtype=torch.float64)
    mask = torch.ones(b, t, dtype=torch.bool)
    mask[1, 4:] = False
    mask[3, 2:] = False
    return pi.log(), mu.log(), adv, mask


@pytest.mark.parametrize("name", ["ppo", "grpo", "cispo", "spo", "dppo_tv", "drpo"])
@pytest.mark.parametrize("mode", AGG_MODES)
def test_policy_loss_gradient_is_the_weighted_policy_gradient_on_cpu(name, mode):
    """``d loss / d logp_t = -c_t A r w`` with ``c_t`` the aggregation's per-token coefficient."""
    obj = ds.objectives.get(name, **({"delta": 0.1} if name == "drpo" else {}))
    logp, lpb, adv, mask = _batch()
    logp.requires_grad_(True)
    loss, metrics = policy_loss(obj, logp, lpb, adv, mask, agg_mode=mode)
    loss.backward()
    m = mask.double()
    n_tok, t = m.sum(-1, keepdim=True), mask.shape[1]
    coef = {
        "token-mean": m / m.sum(),
        "seq-mean-token-sum": m / mask.shape[0],
        "seq-mean-token-mean": m / n_tok / mask.shape[0],
        "seq-mean-token-sum-norm": m / t / mask.shape[0],
    }[mode]
    a = adv[:, None].expand_as(logp)
    expected = -coef * a * torch.exp(logp.detach() - lpb) * obj.weight(logp.detach(), lpb, a)
    torch.testing.assert_close(logp.grad, expected, rtol=1e-10, atol=1e-12)
    assert metrics["actor/pg_loss"] == pytest.approx(float(loss.detach()))
    assert metrics["actor/valid_tokens"] == float(mask.sum())


def test_policy_loss_metrics_count_the_regions_on_cpu():
    lb = torch.log(torch.tensor([[0.5, 0.5, 0.5, 0.5]], dtype=torch.float64))
    lp = torch.log(torch.tensor([[0.7, 0.3, 0.55, 0.9]], dtype=torch.float64))
    adv = torch.tensor([1.0])
    mask = torch.tensor([[True, True, True, False]])
    _, m = policy_loss("ppo", lp, lb, adv, mask)
    assert m["actor/masked_frac"] == pytest.approx(1 / 3)  # r = 1.4 > 1.2 with A > 0
    assert m["actor/weight_min"] == 0.0 and m["actor/weight_max"] == 1.0
    assert m["actor/ratio_max"] == pytest.approx(1.4)  # the masked-out token (r = 1.8) is not read
    assert m["actor/abs_shift_mean"] == pytest.approx((0.2 + 0.2 + 0.05) / 3)
    _, m = policy_loss(ds.objectives.get("drpo", delta=0.1), lp, lb, adv, mask)
    assert m["actor/corrective_frac"] == pytest.approx(1 / 3)  # pi - mu = 0.2 > delta with A > 0
    assert m["actor/amplified_frac"] == pytest.approx(1 / 3)  # moved against the advantage
    assert m["actor/attenuated_frac"] == pytest.approx(1 / 3)
    assert set(m) >= {f"actor/{k}_frac" for k in ("masked", "attenuated", "corrective", "amplified")}


def test_policy_loss_empty_and_all_masked_batches_on_cpu():
    lp = torch.zeros(0, 5)
    with pytest.raises(ValueError, match=r"empty batch: logp has shape \(0, 5\)"):
        policy_loss("drpo", lp, lp, torch.zeros(0))
    logp, lpb, adv, mask = _batch()
    logp.requires_grad_(True)
    loss, metrics = policy_loss("drpo", logp, lpb, adv, torch.zeros_like(mask))
    loss.backward()  # still attached to the graph
    assert float(loss.detach()) == 0.0 and metrics["actor/valid_tokens"] == 0.0
    assert math.isnan(metrics["actor/weight_mean"]) and math.isnan(metrics["actor/masked_frac"])
    assert torch.count_nonzero(logp.grad) == 0


def test_policy_loss_rejects_mismatched_shapes_on_cpu():
    logp, lpb, adv, mask = _batch()
    with pytest.raises(ValueError, match=r"mask has shape \(4, 5\) but logp has shape \(4, 6\)"):
        policy_loss("drpo", logp, lpb, adv, mask[:, :5])
    with pytest.raises(ValueError, match=r"advantage has shape \(3,\), which does not fit"):
        policy_loss("drpo", logp, lpb, adv[:3], mask)
    with pytest.raises(ValueError, match=r"advantage has shape \(4, 6, 1\), which does not fit logp's \(4, 6\)"):
        policy_loss("drpo", logp, lpb, adv[:, None, None].expand(4, 6, 1), mask)  # would enlarge the batch
    with pytest.raises(ValueError, match=r"needs logp of shape \[B, T\]"):
        policy_loss("drpo", logp[0], lpb[0], adv[0], mask[0])
    with pytest.raises(ValueError, match="unknown objective 'dpo'"):
        policy_loss("dpo", logp, lpb, adv, mask)
