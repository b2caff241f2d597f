"""The closed-form weights against torch autograd, and the registry's contract.

Each objective's ``weight`` must satisfy ``dJ/dlogp = A * r * w`` where ``dJ/dlogp`` is computed
by autograd on its ``surrogate``, with ``r`` written out here by hand from the documented ratio
cap (``log r <= 20``).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from strategies import CONFIG_IDS, CONFIGS, make, token_batches

import drpo_sim as ds
from drpo_sim.objectives import LOG_RATIO_MAX

REQUIRED = {"pg_is", "ppo", "grpo", "cispo", "spo", "dppo_tv", "dppo_kl", "drpo", "mask_drpo"}
ABLATIONS = {"drpo_no_abs_adv", "drpo_kl", "drpo_tv", "drpo_k3"}
RTOL = {torch.float64: 1e-9, torch.float32: 2e-4}


def hand_ratio(logp: np.ndarray, lpb: np.ndarray) -> np.ndarray:
    """``r = exp(min(logp - logp_behavior, 20))``, the documented cap, written out by hand."""
    return np.exp(np.minimum(logp - lpb, LOG_RATIO_MAX))


def autograd(obj, logp, lpb, adv, dtype):
    """Surrogate, its gradient with respect to logp by autograd, all as float64 NumPy."""
    lp = torch.tensor(logp, dtype=dtype, requires_grad=True)
    j = obj.surrogate(lp, torch.tensor(lpb, dtype=dtype), torch.tensor(adv, dtype=dtype))
    assert j.dtype == dtype and j.shape == lp.shape
    (g,) = torch.autograd.grad(j.sum(), lp)
    return j.detach().double().numpy(), g.double().numpy()


def test_registry_has_every_required_objective_and_ablation_on_cpu():
    assert REQUIRED | ABLATIONS <= set(ds.objectives.available())
    for name in ds.objectives.available():
        obj = ds.objectives.get(name)
        assert obj.name == name
        assert type(obj).__doc__ and len(type(obj).__doc__) > 80, f"{name} needs its source and form in a docstring"


def test_unknown_name_or_parameter_lists_the_valid_ones_on_cpu():
    with pytest.raises(ValueError, match="available: pg_is, ppo, grpo"):
        ds.objectives.get("trpo")
    with pytest.raises(ValueError, match=r"has no parameter 'eps'; valid parameters: delta"):
        ds.objectives.get("drpo", eps=0.2)
    with pytest.raises(ValueError, match="valid parameters: eps_low, eps_high, dual_clip"):
        ds.objectives.get("ppo", clip=0.2)
    with pytest.raises(ValueError, match="valid parameters: none"):
        ds.objectives.get("pg_is", delta=1.0)


@pytest.mark.parametrize(
    "name,params",
    [("drpo", {"delta": 0.0}), ("spo", {"eps": -1.0}), ("dppo_tv", {"delta_high": float("nan")}),
     ("ppo", {"dual_clip": 0.5}), ("cispo", {"eps_high": float("inf")})],
)
def test_invalid_parameter_values_are_rejected_on_cpu(name, params):
    with pytest.raises(ValueError, match=name):
        ds.objectives.get(name, **params)


@pytest.mark.parametrize("config", CONFIGS, ids=CONFIG_IDS)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@given(batch=token_batches())
def test_weight_matches_autograd_on_cpu(config, dtype, batch):
    obj = make(config)
    logp, lpb, adv = batch
    # the inputs as the dtype sees them, so the hand formulas use the same numbers
    logp, lpb, adv = (np.asarray(torch.tensor(x, dtype=dtype).double()) for x in (logp, lpb, adv))
    j, g = autograd(obj, logp, lpb, adv, dtype)
    tl, tb, ta = (torch.tensor(x, dtype=dtype) for x in (logp, lpb, adv))
    w = obj.weight(tl, tb, ta).double().numpy()
    g_closed = obj.grad_logp(tl, tb, ta).double().numpy()
    assert np.isfinite(j).all() and np.isfinite(g).all() and np.isfinite(w).all()

    r = hand_ratio(logp, lpb)
    # magnitude of the two terms of the gradient (policy gradient and penalty) sets the tolerance
    scale = np.abs(adv) * r + np.abs(g_closed - adv * r) + 1e-300
    rtol = RTOL[dtype]
    np.testing.assert_array_less(np.abs(g - g_closed), rtol * scale + 1e-30, err_msg=f"{obj}: grad_logp")
    defined = np.abs(adv) >= getattr(obj, "adv_floor", 0.0)  # drpo_no_abs_adv: no weight at A = 0
    np.testing.assert_array_less(
        np.abs(g - adv * r * w)[defined], (rtol * scale + 1e-30)[defined], err_msg=f"{obj}: A r w"
    )


@pytest.mark.parametrize("config", CONFIGS, ids=CONFIG_IDS)
@given(batch=token_batches())
def test_numpy_and_torch_agree_on_cpu(config, batch):
    obj = make(config)
    logp, lpb, adv = batch
    for np_dtype, t_dtype, rtol in ((np.float64, torch.float64, 1e-12), (np.float32, torch.float32, 1e-5)):
        n_in = [x.astype(np_dtype) for x in (logp, lpb, adv)]
        t_in = [torch.tensor(x) for x in n_in]
        for method in ("surrogate", "weight", "grad_logp"):
            a = getattr(obj, method)(*n_in)
            b = getattr(obj, method)(*t_in)
            assert isinstance(a, np.ndarray) and isinstance(b, torch.Tensor)
            assert a.dtype == np_dtype and b.dtype == t_dtype
            np.testing.assert_allclose(a, b.numpy(), rtol=rtol, atol=rtol * np.abs(a).max(initial=0), err_msg=f"{obj}.{method}")


@pytest.mark.parametrize("config", CONFIGS, ids=CONFIG_IDS)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@given(
    batch=token_batches(
        lo=-3.0e38, advantage=st.one_of(st.floats(-1e6, 1e6), st.sampled_from([0.0, 1e6, -1e6, 5e-324]))
    )
)
def test_no_nan_or_inf_for_any_finite_input_on_cpu(config, dtype, batch):
    """logp down to -3e38 (as close to -inf as float32 goes), ratios up to e^(3e38), |A| up to 1e6."""
    obj = make(config)
    logp, lpb, adv = batch
    j, g = autograd(obj, logp, lpb, adv, dtype)
    w = obj.weight(*(torch.tensor(x, dtype=dtype) for x in batch))
    assert np.isfinite(j).all(), f"{obj}: surrogate not finite"
    assert np.isfinite(g).all(), f"{obj}: gradient not finite"
    assert torch.isfinite(w).all(), f"{obj}: weight not finite"


@pytest.mark.parametrize("name", sorted(REQUIRED | ABLATIONS))
def test_input_kinds_dtypes_and_shapes_on_cpu(name):
    obj = ds.objectives.get(name)
    lp = np.log(np.array([[0.2, 0.5, 0.01]]))
    lb = np.log(np.array([[0.25, 0.4, 0.02]]))
    adv = np.array([[1.0], [-2.0]])  # broadcasts to (2, 3)
    out = obj.weight(lp, lb, adv)
    assert out.shape == (2, 3) and out.dtype == np.float64 and out.flags.writeable
    assert obj.surrogate(lp.astype(np.float32), lb.astype(np.float32), np.float32(1.0)).dtype == np.float32
    assert obj.weight(lp, lb, 1).shape == (1, 3)  # Python scalar advantage
    half = obj.weight(torch.tensor(lp, dtype=torch.float16), torch.tensor(lb, dtype=torch.float16), 1.0)
    assert half.dtype == torch.float32  # half precision is computed in float32
    bf = obj.surrogate(torch.tensor(lp, dtype=torch.bfloat16), torch.tensor(lb, dtype=torch.bfloat16), 1.0)
    assert bf.dtype == torch.float32
    assert obj.weight(lp, lb, np.array([[1, -1, 0]])).dtype == np.float64  # integer advantages
    with pytest.raises(TypeError, match="must all be NumPy arrays or all torch tensors"):
        obj.weight(lp, torch.tensor(lb), 1.0)
    with pytest.raises(ValueError, match=r"do not broadcast: shapes \(1, 3\), \(1, 2\)"):
        obj.weight(lp, lb[:, :2], 1.0)


def test_weight_carries_no_gradient_and_surrogate_no_gradient_into_mu_on_cpu():
    lp = torch.tensor([-1.0, -2.0], requires_grad=True)
    lb = torch.tensor([-1.2, -1.5], requires_grad=True)
    obj = ds.objectives.get("drpo", delta=0.5)
    assert not obj.weight(lp, lb, 1.0).requires_grad
    obj.surrogate(lp, lb, torch.tensor([1.0, -1.0])).sum().backward()
    assert lb.grad is None and lp.grad is not None


def test_ppo_clip_and_dual_clip_regions_by_hand_on_cpu():
    ppo = ds.objectives.get("ppo", eps_low=0.2, eps_high=0.28, dual_clip=3.0)
    r = np.array([1.5, 1.5, 0.5, 0.5, 4.0, 1.1])
    adv = np.array([1.0, -1.0, 1.0, -1.0, -1.0, 1.0])
    lb = np.log(np.full(6, 0.1))
    w = ppo.weight(np.log(0.1 * r), lb, adv)
    np.testing.assert_array_equal(w, [0, 1, 1, 0, 0, 1])
    j = ppo.surrogate(np.log(0.1 * r), lb, adv)
    np.testing.assert_allclose(j, [1.28, -1.5, 0.5, -0.8, -3.0, 1.1])


def test_dppo_masks_by_absolute_shift_not_ratio_on_cpu():
    """Claim 5's geometry: 0.99 -> 0.80 is a ratio of 0.81 (inside PPO's clip) but a shift of 0.19."""
    lp, lb, adv = np.log([0.80, 0.002]), np.log([0.99, 0.001]), np.array([-1.0, 1.0])
    assert list(ds.objectives.get("ppo").weight(lp, lb, adv)) == [1.0, 0.0]  # clips the rare token
    assert list(ds.objectives.get("dppo_tv", delta=0.15).weight(lp, lb, adv)) == [0.0, 1.0]  # masks the frequent one
    # binary KL of 0.99 -> 0.80 by hand
    d = 0.99 * math.log(0.99 / 0.80) + 0.01 * math.log(0.01 / 0.20)
    assert d > 0.05
    np.testing.assert_allclose(ds.objectives.binary_kl(np.log(0.99), np.log(0.80)), d, rtol=1e-12)
    assert list(ds.objectives.get("dppo_kl", delta=0.05).weight(lp, lb, adv)) == [0.0, 1.0]


def test_binary_kl_edges_on_cpu():
    kl = ds.objectives.binary_kl
    assert kl(np.log(0.3), np.log(0.3)) == pytest.approx(0.0, abs=1e-15)
    assert kl(0.0, 0.0) == 0.0  # mu = pi = 1
    assert np.isinf(kl(np.log(0.5), 0.0))  # pi = 1 > mu: infinite divergence
    np.testing.assert_allclose(kl(np.log(1e-30), np.log(1e-20)), 1e-20 - 1e-30 + 1e-30 * math.log(1e-10), rtol=1e-6)


def test_regions_count_masked_attenuated_corrective_on_cpu():
    reg = ds.objectives.Regions.from_weight(np.array([0.5, 0.0, -1.0, 1.5, 1.0]))
    np.testing.assert_array_equal(reg.attenuated, [True, False, False, False, False])
    np.testing.assert_array_equal(reg.masked, [False, True, False, False, False])
    np.testing.assert_array_equal(reg.corrective, [False, False, True, False, False])
    np.testing.assert_array_equal(reg.amplified, [False, False, False, True, False])
    assert reg.counts() == {"tokens": 5, "masked": 1, "attenuated": 1, "corrective": 1, "amplified": 1}
    frac = reg.fractions(np.array([1, 1, 1, 0, 0]))
    assert frac == {"masked": 1 / 3, "attenuated": 1 / 3, "corrective": 1 / 3, "amplified": 0.0}
    with pytest.raises(ValueError, match="no valid tokens"):
        reg.fractions(np.zeros(5, bool))

    mu = np.full(5, 0.25)
    pi = np.array([0.375, 0.4999, 0.75, 0.125, 0.25])  # shifts .125, ~.25, .5, -.125, 0
    lp, lb, adv = np.log(pi), np.log(mu), np.ones(5)
    drpo = ds.objectives.get("drpo", delta=0.25)
    np.testing.assert_allclose(drpo.weight(lp, lb, adv), [0.5, 0.0004, -1.0, 1.5, 1.0], rtol=1e-12)
    assert drpo.regions(lp, lb, adv).counts() == {"tokens": 5, "masked": 0, "attenuated": 2, "corrective": 1, "amplified": 1}
    dppo = ds.objectives.get("dppo_tv", delta=0.2).regions(lp, lb, adv)
    assert dppo.counts() == {"tokens": 5, "masked": 2, "attenuated": 0, "corrective": 0, "amplified": 0}


@pytest.mark.parametrize("config", CONFIGS, ids=CONFIG_IDS)
def test_blockwise_evaluation_equals_whole_array_evaluation_on_cpu(config, monkeypatch):
    """Large calls are evaluated in cache-sized blocks; the numbers must not change."""
    obj = make(config)
    rng = np.random.default_rng(7)
    b, t = 37, 1000  # 37,000 tokens: several blocks of the (shrunk) block size, and a ragged last one
    lb = np.log(np.clip(rng.beta(0.3, 1.0, (b, t)), 1e-12, 1.0))
    lp = np.minimum(lb + rng.normal(0, 0.5, (b, t)), 0.0)
    adv = rng.normal(size=(b, 1)) * 3  # broadcast over tokens, as a sequence advantage
    inputs = {"numpy": (lp, lb, adv), "torch": tuple(torch.tensor(x) for x in (lp, lb, adv))}
    for kind, args in inputs.items():
        monkeypatch.setitem(ds.objectives.BLOCK_TOKENS, kind, 4096)
        blocked = {m: getattr(obj, m)(*args) for m in ("surrogate", "weight", "grad_logp")}
        monkeypatch.setitem(ds.objectives.BLOCK_TOKENS, kind, 10**9)
        for m, value in blocked.items():
            whole = getattr(obj, m)(*args)
            assert tuple(value.shape) == (b, t) and value.dtype == whole.dtype
            np.testing.assert_array_equal(np.asarray(value), np.asarray(whole), err_msg=f"{obj}.{m} ({kind})")
