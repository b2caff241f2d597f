"""The registry of objectives (drpo_sim.objectives): closed-form weights against torch autograd,
the registry's contract, loss aggregation and ``policy_loss``, and the trust-region facts of
``docs/reference.md``.

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
from scipy.optimize import minimize_scalar
from strategies import CONFIG_IDS, CONFIGS, make, per_sequence_advantage, policy_batches, token_batches

import drpo_sim as ds
from drpo_sim.objectives import AGG_MODES, LOG_RATIO_MAX, Formula, aggregate, policy_loss

# ----------------------------------------------------------------------------------------------
# the registry: weights against autograd, inputs, regions
# ----------------------------------------------------------------------------------------------


REQUIRED = {"pg_is", "ppo", "grpo", "cispo", "spo", "dppo_tv", "dppo_kl", "drpo", "mask_drpo"}
ABLATIONS = {"drpo_no_abs_adv", "drpo_kl", "drpo_tv", "drpo_k3"}
RTOL = {torch.float64: 1e-9, torch.float32: 2e-4}


def _extra(columns, sample_id, dtype):
    """The keywords of the extra per-token inputs (``logp_old``, ``topk_tv``, ``topk_kl``) and of
    sequences, as torch tensors (``None`` left out)."""
    out = {k: torch.tensor(np.asarray(v), dtype=dtype) for k, v in (columns or {}).items()}
    if sample_id is not None:
        out["sample_id"] = torch.as_tensor(np.asarray(sample_id))
    return out


def hand_ratio(logp: np.ndarray, lpb: np.ndarray) -> np.ndarray:
    """``r = exp(min(logp - logp_behavior, 20))``, the documented cap, written out by hand."""
    return np.exp(np.minimum(logp - lpb, LOG_RATIO_MAX))


def autograd(obj, logp, lpb, adv, dtype, columns=None, sample_id=None):
    """Surrogate, its gradient with respect to logp by autograd, all as float64 NumPy."""
    lp = torch.tensor(logp, dtype=dtype, requires_grad=True)
    j = obj.surrogate(lp, torch.tensor(lpb, dtype=dtype), torch.tensor(adv, dtype=dtype),
                      **_extra(columns, sample_id, dtype))
    assert j.dtype == dtype and j.shape == lp.shape
    (g,) = torch.autograd.grad(j.sum(), lp)
    return j.detach().double().numpy(), g.double().numpy()


def test_registry_has_every_required_objective_and_ablation_on_cpu():
    assert REQUIRED | ABLATIONS <= set(ds.objectives.available())
    for name in ds.objectives.available():
        obj = ds.objectives.get(name)
        assert obj.name == name
        assert type(obj).__doc__ and len(type(obj).__doc__) > 80, f"{name} needs its source and form in a docstring"


def test_every_registered_objective_has_its_formula_on_cpu():
    """``drpo-sim list``, the report and docs/reference.md are generated from these: each class
    declares its own (not one inherited from the objective it extends), every field filled in."""
    fields = ("surrogate", "weight", "idea", "source")
    formulas = {}
    for name in ds.objectives.available():
        cls = type(ds.objectives.get(name))
        assert "formula" in vars(cls), f"{name}: no formula of its own"
        formula = cls.formula
        assert isinstance(formula, Formula), name
        for field in fields:
            value = getattr(formula, field)
            assert isinstance(value, str) and value.strip(), f"{name}: empty formula.{field}"
        formulas[name] = formula
    # no two objectives share all four: a copied formula would say so (PPO and GRPO share their math)
    assert len(set(formulas.values())) == len(formulas)


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
     ("ppo", {"dual_clip": 0.5}), ("cispo", {"eps_high": float("inf")}), ("cispo", {"cap": 0.0}),
     ("ppo_rare_exempt", {"mu_low": 1.5}), ("ppo_rare_exempt", {"mu_high": -0.1})],
)
def test_invalid_parameter_values_are_rejected_on_cpu(name, params):
    with pytest.raises(ValueError, match=name):
        ds.objectives.get(name, **params)


def test_every_registered_objective_is_among_the_property_tests_configurations_on_cpu():
    assert {name for name, _ in CONFIGS} == set(ds.objectives.available())


def test_stable_rl_cispo_cap_and_low_mu_clip_ablations_by_hand_on_cpu():
    """sail-sg/Stable-RL ``pg_no_mask`` (ratio capped at clip_ratio_c = 10) and
    ``ppo_ablation_positive / negative / both`` (the clip skips tokens with mu below 0.28 for A>0,
    0.2 for A<0), token by token."""
    mu = np.array([0.5, 0.01, 0.5, 0.05, 0.5, 0.001, 0.9])
    pi = np.array([0.9, 0.5, 0.2, 0.001, 0.6, 0.5, 0.95])
    adv = np.array([1.0, 1.0, -1.0, -1.0, 1.0, 1.0, -1.0])
    lp, lb = np.log(pi), np.log(mu)
    r = pi / mu  # 1.8, 50, 0.4, 0.02, 1.2, 500, 1.06
    np.testing.assert_allclose(ds.objectives.get("cispo", cap=10).weight(lp, lb, adv), np.minimum(r, 10) / r)
    np.testing.assert_allclose(ds.objectives.get("cispo").weight(lp, lb, adv), np.minimum(r, 1.28) / r)
    grpo = ds.objectives.get("grpo").weight(lp, lb, adv)
    np.testing.assert_array_equal(grpo, [0, 0, 0, 0, 1, 0, 1])
    both = ds.objectives.get("ppo_rare_exempt").weight(lp, lb, adv)
    np.testing.assert_array_equal(both, [0, 1, 0, 1, 1, 1, 1])  # the rare tokens (mu 0.01, 0.05, 0.001) keep theirs
    positive = ds.objectives.get("ppo_rare_exempt", mu_low=0.0).weight(lp, lb, adv)
    np.testing.assert_array_equal(positive, [0, 1, 0, 0, 1, 1, 1])
    negative = ds.objectives.get("ppo_rare_exempt", mu_high=0.0).weight(lp, lb, adv)
    np.testing.assert_array_equal(negative, grpo + [0, 0, 0, 1, 0, 0, 0])
    assert (ds.objectives.get("ppo_rare_exempt", mu_low=0.0, mu_high=0.0).weight(lp, lb, adv) == grpo).all()


# The three property tests below check every configuration of strategies.CONFIGS on each drawn
# batch: drawing a batch costs Hypothesis far more than checking it (about 7 s of 8 for 150
# examples), and under derandomisation every configuration would be handed the same batches anyway.


def _weight_matches_autograd(obj, dtype, batch):
    logp, lpb, adv, columns, sample_id = batch
    if obj.cross_token:  # its weight is the gradient of a loss with one advantage per sequence
        adv = per_sequence_advantage(adv, sample_id)
    # the inputs as the dtype sees them, so the hand formulas use the same numbers
    logp, lpb, adv = (np.asarray(torch.tensor(x, dtype=dtype).double()) for x in (logp, lpb, adv))
    columns = {k: np.asarray(torch.tensor(v, dtype=dtype).double()) for k, v in columns.items()}
    j, g = autograd(obj, logp, lpb, adv, dtype, columns, sample_id)
    tl, tb, ta = (torch.tensor(x, dtype=dtype) for x in (logp, lpb, adv))
    kw = _extra(columns, sample_id, dtype)
    w = obj.weight(tl, tb, ta, **kw).double().numpy()
    g_closed = obj.grad_logp(tl, tb, ta, **kw).double().numpy()
    assert np.isfinite(j).all() and np.isfinite(g).all() and np.isfinite(w).all(), f"{obj}: not finite"

    r = hand_ratio(logp, lpb)
    # magnitude of the two terms of the gradient (policy gradient and penalty) sets the tolerance
    scale = np.abs(adv) * r + np.abs(g_closed - adv * r) + 1e-300
    rtol = RTOL[dtype]
    np.testing.assert_array_less(np.abs(g - g_closed), rtol * scale + 1e-30, err_msg=f"{obj}: grad_logp")
    defined = np.abs(adv) >= getattr(obj, "adv_floor", 0.0)  # drpo_no_abs_adv: no weight at A = 0
    np.testing.assert_array_less(
        np.abs(g - adv * r * w)[defined], (rtol * scale + 1e-30)[defined], err_msg=f"{obj}: A r w"
    )


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@given(batch=policy_batches())
def test_weight_matches_autograd_on_cpu(dtype, batch):
    for config in CONFIGS:
        _weight_matches_autograd(make(config), dtype, batch)


@given(batch=policy_batches())
def test_numpy_and_torch_agree_on_cpu(batch):
    logp, lpb, adv, columns, sample_id = batch
    for config in CONFIGS:
        obj = make(config)
        for np_dtype, t_dtype, rtol in ((np.float64, torch.float64, 1e-12), (np.float32, torch.float32, 1e-5)):
            n_in = [x.astype(np_dtype) for x in (logp, lpb, adv)]
            t_in = [torch.tensor(x) for x in n_in]
            n_cols = {k: v.astype(np_dtype) for k, v in columns.items()}
            n_kw = {**n_cols, "sample_id": sample_id}
            t_kw = _extra(n_cols, sample_id, t_dtype)
            # the surrogates and gradients are r A minus a term of up to its size: where the two
            # cancel, rounding is relative to r A, not to the difference (e.g. pi = 1 >> mu)
            leading = np.abs(np.exp(np.minimum(logp - lpb, LOG_RATIO_MAX)) * adv)
            for method in ("surrogate", "weight", "grad_logp"):
                a = getattr(obj, method)(*n_in, **n_kw)
                b = getattr(obj, method)(*t_in, **t_kw)
                assert isinstance(a, np.ndarray) and isinstance(b, torch.Tensor)
                assert a.dtype == np_dtype and b.dtype == t_dtype
                # per element: within rtol of the batch's largest value, or of its own leading term
                bound = rtol * (np.abs(a).max(initial=0) + (leading if method != "weight" else 0.0))
                diff = np.abs(a.astype(np.float64) - b.numpy().astype(np.float64))
                assert np.all((diff <= bound) | (a == b.numpy())), (
                    f"{obj}.{method}: numpy {a[diff > bound]} against torch {b.numpy()[diff > bound]}")


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@given(
    batch=policy_batches(
        lo=-3.0e38, advantage=st.one_of(st.floats(-1e6, 1e6), st.sampled_from([0.0, 1e6, -1e6, 5e-324]))
    )
)
def test_no_nan_or_inf_for_any_finite_input_on_cpu(dtype, batch):
    """logp down to -3e38 (as close to -inf as float32 goes), ratios up to e^(3e38), |A| up to 1e6."""
    logp, lpb, adv, columns, sample_id = batch
    for config in CONFIGS:
        obj = make(config)
        j, g = autograd(obj, logp, lpb, adv, dtype, columns, sample_id)
        w = obj.weight(*(torch.tensor(x, dtype=dtype) for x in (logp, lpb, adv)), **_extra(columns, sample_id, dtype))
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
    # mu within an ulp of 1 and pi = 1: infinite in float32 whatever the backend's exp rounds mu to
    # (NumPy's float32 exp gives exactly 1 here, torch's the float below 1)
    lp_mu = -3.58550993e-08
    assert np.isinf(kl(np.float32(lp_mu), np.float32(0.0))) and torch.isinf(kl(torch.tensor(lp_mu), torch.tensor(0.0)))
    dppo_kl = ds.objectives.get("dppo_kl")
    args = [np.array([0.0, 0.0], np.float32), np.array([lp_mu, -1e-3], np.float32), np.ones(2, np.float32)]
    assert dppo_kl.weight(*args).tolist() == dppo_kl.weight(*map(torch.tensor, args)).tolist() == [0.0, 0.0]


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
    counts = drpo.regions(lp, lb, adv).counts()
    assert counts == {"tokens": 5, "masked": 0, "attenuated": 2, "corrective": 1, "amplified": 1}
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
    cols = {"logp_old": np.minimum(lb + rng.normal(0, 0.05, (b, t)), 0.0),  # the trainer's recomputed pi_old
            "topk_tv": rng.uniform(0, 0.3, (b, t)), "topk_kl": rng.exponential(0.05, (b, t))}
    inputs = {"numpy": ((lp, lb, adv), cols),
              "torch": (tuple(torch.tensor(x) for x in (lp, lb, adv)), {k: torch.tensor(v) for k, v in cols.items()})}
    for kind, (args, extra) in inputs.items():
        monkeypatch.setitem(ds.objectives.BLOCK_TOKENS, kind, 4096)
        blocked = {m: getattr(obj, m)(*args, **extra) for m in ("surrogate", "weight", "grad_logp")}
        monkeypatch.setitem(ds.objectives.BLOCK_TOKENS, kind, 10**9)
        for m, value in blocked.items():
            whole = getattr(obj, m)(*args, **extra)
            assert tuple(value.shape) == (b, t) and value.dtype == whole.dtype
            np.testing.assert_array_equal(np.asarray(value), np.asarray(whole), err_msg=f"{obj}.{m} ({kind})")


# ----------------------------------------------------------------------------------------------
# loss aggregation and the trainer-facing policy_loss
# ----------------------------------------------------------------------------------------------


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


def _cols(lpb: torch.Tensor) -> dict[str, torch.Tensor]:
    """A batch's extra per-token inputs: the trainer's recomputed ``log pi_old`` (a small, fixed gap
    from the engine's) and DPPO's Top-K divergences (some above the default thresholds)."""
    wave = torch.sin(torch.arange(lpb.numel(), dtype=lpb.dtype)).reshape(lpb.shape)
    return {"logp_old": (lpb + 0.08 * wave).clamp(max=0.0), "topk_tv": 0.15 + 0.1 * wave,
            "topk_kl": 0.05 + 0.04 * wave}


def _padded(cols: dict[str, torch.Tensor], mask: torch.Tensor, dtype) -> dict[str, torch.Tensor]:
    nan = torch.full(mask.shape, float("nan"), dtype=torch.float64)
    return {k: torch.where(mask, v, nan).to(dtype) for k, v in cols.items()}


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
    _, m = policy_loss("ppo", lp, lb, adv, mask, metrics="full")
    assert m["actor/masked_frac"] == pytest.approx(1 / 3)  # r = 1.4 > 1.2 with A > 0
    assert m["actor/weight_min"] == 0.0 and m["actor/weight_max"] == 1.0
    assert m["actor/ratio_max"] == pytest.approx(1.4)  # the masked-out token (r = 1.8) is not read
    assert m["actor/abs_shift_mean"] == pytest.approx((0.2 + 0.2 + 0.05) / 3)
    _, m = policy_loss(ds.objectives.get("drpo", delta=0.1), lp, lb, adv, mask, metrics="full")
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
    loss, metrics = policy_loss("drpo", logp, lpb, adv, torch.zeros_like(mask), metrics="full")
    loss.backward()  # still attached to the graph
    assert float(loss.detach()) == 0.0 and metrics["actor/valid_tokens"] == 0.0
    assert math.isnan(metrics["actor/weight_mean"]) and math.isnan(metrics["actor/masked_frac"])
    assert math.isnan(metrics["actor/ratio_max"]) and math.isnan(metrics["actor/abs_shift_max"])
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


# policy_loss's metrics settings: off, default and full


METRIC_SETTINGS = (False, "default", True, "full")


def _graph(loss: torch.Tensor) -> list[str]:
    """The names of the autograd nodes behind ``loss``, in a fixed (depth-first) order."""
    names, stack, seen = [], [loss.grad_fn], set()
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        names.append(type(node).__name__)
        stack.extend(fn for fn, _ in node.next_functions)
    return names


def _padded_batch(config, dtype, seed=3):
    """A padded [4, 6] batch whose padding holds NaN (unpadded for an objective that is not
    elementwise, which refuses padding)."""
    logp, lpb, adv, mask = _batch(seed=seed)
    if make(config).uses_batch_statistic:
        mask = torch.ones_like(mask)
    nan = torch.full_like(logp, float("nan"))
    return (torch.where(mask, logp, nan).to(dtype), torch.where(mask, lpb, nan).to(dtype),
            torch.where(mask, adv[:, None].expand_as(logp), nan).to(dtype), mask,
            _padded(_cols(lpb), mask, dtype))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("config", CONFIGS, ids=CONFIG_IDS)
def test_metrics_settings_leave_the_loss_its_gradient_and_its_graph_alone_on_cpu(config, dtype):
    """Off, default and full: the same loss and gradient, bit for bit, and the same autograd graph,
    whose operations save the same tensors (an operation of a metric recorded in the graph would
    save its own); the metrics are Python floats, none with metrics off."""
    obj = make(config)
    logp0, lpb, adv, mask, old = _padded_batch(config, dtype)
    for mode in AGG_MODES:
        runs = {}
        for setting in METRIC_SETTINGS:
            logp = logp0.clone().requires_grad_(True)
            saved = []  # every tensor an operation recorded in the graph saves for the backward pass
            with torch.autograd.graph.saved_tensors_hooks(lambda x: saved.append(x.shape) or x, lambda x: x):
                loss, metrics = policy_loss(obj, logp, lpb, adv, mask, agg_mode=mode, metrics=setting, **old)
            graph = _graph(loss), saved
            loss.backward()
            runs[setting] = (loss.detach(), logp.grad, graph, metrics)
        loss0, grad0, graph0, off = runs[False]
        assert off == {}
        for setting, (loss, grad, graph, metrics) in runs.items():
            assert torch.equal(loss, loss0) and torch.equal(grad, grad0), (mode, setting)
            assert graph == graph0, (mode, setting)
            if setting is not False:
                assert all(type(v) is float for v in metrics.values()), (mode, setting)
                assert metrics["actor/pg_loss"] == float(loss)


@pytest.mark.parametrize("config", CONFIGS, ids=CONFIG_IDS)
def test_default_metrics_are_the_full_ones_they_share_on_cpu(config):
    obj = make(config)
    assert set(ds.objectives.DEFAULT_METRICS) < set(ds.objectives.FULL_METRICS)
    logp, lpb, adv, mask, old = _padded_batch(config, torch.float32)
    cases = [(logp, lpb, adv, mask, old),
             (logp.double().numpy(), lpb.double().numpy(), adv.double().numpy(), mask.numpy(),
              {k: v.double().numpy() for k, v in old.items()})]
    if not obj.uses_batch_statistic:
        cases.append((logp, lpb, adv, torch.zeros_like(mask), old))  # no valid token: NaN statistics
    full_logp, full_lpb, full_adv, _ = _batch(seed=4)
    cases.append((full_logp, full_lpb, full_adv, None, _cols(full_lpb)))  # no mask: every token valid
    for lp, lb, a, m, o in cases:
        _, default = policy_loss(obj, lp, lb, a, m, **o)
        _, also_default = policy_loss(obj, lp, lb, a, m, metrics=True, **o)
        _, full = policy_loss(obj, lp, lb, a, m, metrics="full", **o)
        assert list(default) == list(ds.objectives.DEFAULT_METRICS) and list(full) == list(ds.objectives.FULL_METRICS)
        assert also_default.keys() == default.keys()
        for key, value in default.items():
            assert value == full[key] or (math.isnan(value) and math.isnan(full[key])), key
            assert value == also_default[key] or (math.isnan(value) and math.isnan(also_default[key])), key


@pytest.mark.parametrize("config", CONFIGS, ids=CONFIG_IDS)
def test_full_metrics_are_the_registry_on_the_valid_tokens_on_cpu(config):
    """Each full metric against the registry's weight, regions, ratio and shift over the valid
    tokens, gathered by hand."""
    obj = make(config)
    logp, lpb, adv, mask, old = _padded_batch(config, torch.float64)
    _, m = policy_loss(obj, logp, lpb, adv, mask, metrics="full", **old)
    sel = mask.numpy()
    lp, lb, a = logp.numpy()[sel], lpb.numpy()[sel], adv.numpy()[sel]
    o = {k: v.numpy()[sel] for k, v in old.items()}
    rows = np.broadcast_to(np.arange(sel.shape[0])[:, None], sel.shape)[sel]  # each row one sequence
    if not obj.uses_batch_statistic:
        w = obj.weight(lp, lb, a, sample_id=rows, **o)
    else:  # a statistic of the whole batch: the [B, T] call, every token valid
        w = obj.weight(logp.numpy(), lpb.numpy(), adv.numpy(), **{k: v.numpy() for k, v in old.items()}).ravel()
    regions = ds.objectives.Regions.from_weight(w).fractions()
    r = np.exp(np.minimum(lp - lb, LOG_RATIO_MAX))
    shift = np.abs(r - 1.0) * np.exp(np.maximum(lb, lp - LOG_RATIO_MAX))
    assert m["actor/valid_tokens"] == sel.sum()
    for name in ds.objectives.Regions.NAMES:
        assert m[f"actor/{name}_frac"] == regions[name], name
    assert m["actor/weight_mean"] == pytest.approx(w.mean(), rel=1e-12, abs=1e-15)
    assert (m["actor/weight_min"], m["actor/weight_max"]) == (w.min(), w.max())
    assert m["actor/ratio_mean"] == pytest.approx(r.mean(), rel=1e-12)
    assert m["actor/ratio_max"] == pytest.approx(r.max(), rel=1e-12)
    assert m["actor/abs_shift_mean"] == pytest.approx(shift.mean(), rel=1e-9, abs=1e-15)
    assert m["actor/abs_shift_max"] == pytest.approx(shift.max(), rel=1e-9, abs=1e-15)


@pytest.mark.parametrize("config", CONFIGS, ids=CONFIG_IDS)
def test_detached_terms_are_the_ones_computed_without_gradient_on_cpu(config):
    """TokenTerms.detached() reuses what the surrogate computed: every reused term equals the one a
    ``detach=True`` evaluation computes, bit for bit, and none carries a gradient."""
    obj = make(config)
    logp, lpb, adv, _ = _batch(seed=6)
    logp.requires_grad_(True)
    terms = ds.objectives.TokenTerms.of(logp, lpb, adv[:, None], **_cols(lpb))
    obj._surrogate(terms)
    reused = terms.detached()
    fresh = ds.objectives.TokenTerms.of(logp.detach(), lpb, adv[:, None], detach=True, **_cols(lpb))
    given = ("xp", "shape", "logp", "_logp_behavior_given", "advantage", "_columns", "_sample_id", "_valid")
    names = [k for k in vars(reused) if k not in given]
    assert names  # the surrogate computed some terms (the ratio, or for the objectives anchored to pi_old
    # and the sequence-level ones, the gap log(pi_old/mu), the sequence's log-ratio, its length)
    for name in names:
        value = getattr(reused, name)
        assert not value.requires_grad and torch.equal(value, getattr(fresh, name)), name
    torch.testing.assert_close(obj._weight(reused), obj._weight(fresh), rtol=0, atol=0)


def test_policy_loss_rejects_an_unknown_metrics_setting_on_cpu():
    logp, lpb, adv, mask = _batch()
    for bad in ("fast", "off", None, 0, 1, "FULL"):
        with pytest.raises(ValueError, match=r"metrics must be one of False, True \(the same as 'default'\), "
                                             r"'default', 'full'; got "):
            policy_loss("drpo", logp, lpb, adv, mask, metrics=bad)


# ----------------------------------------------------------------------------------------------
# trust-region facts (docs/reference.md): weight bounds, identities, per-token maximisers
# ----------------------------------------------------------------------------------------------


PAPER_DELTAS = [12.5, 2.5, 1.0, 0.5, 0.15]


@pytest.mark.parametrize("delta", PAPER_DELTAS)
@given(batch=token_batches())
def test_drpo_weight_stays_in_its_bounds_on_cpu(delta, batch):
    """Claim 1: ``1 - 1/delta <= w <= 1 + 1/delta`` for every token, however rare."""
    w = ds.objectives.get("drpo", delta=delta).weight(*batch)
    tol = 1e-12
    assert (w >= 1 - 1 / delta - tol).all() and (w <= 1 + 1 / delta + tol).all()


@pytest.mark.parametrize("delta", [0.05, 0.15, 0.5])
@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_drpo_weight_is_zero_at_the_boundary_and_corrective_beyond_on_cpu(delta, sign):
    """Claim 3: at ``abs(pi - mu) = delta`` in the advantage's direction ``w = 0``; beyond it ``w < 0``."""
    drpo = ds.objectives.get("drpo", delta=delta)
    mu = np.linspace(0.01, 0.99, 99)
    boundary = mu + sign * delta
    ok = (boundary > 0) & (boundary < 1)
    mu, boundary = mu[ok], boundary[ok]
    adv = np.full_like(mu, sign)
    np.testing.assert_allclose(drpo.weight(np.log(boundary), np.log(mu), adv), 0.0, atol=1e-9)
    inside = mu + sign * delta * 0.5
    assert (drpo.weight(np.log(inside), np.log(mu), adv) > 0).all()
    beyond = np.clip(mu + sign * delta * 1.5, 1e-12, 1.0)
    moved = np.abs(beyond - mu) > delta
    assert moved.any()
    assert (drpo.weight(np.log(beyond[moved]), np.log(mu[moved]), adv[moved]) < 0).all()
    # and against the advantage's direction the weight exceeds 1: the token is pulled back
    against = np.clip(mu - sign * delta * 0.5, 1e-12, 1.0)
    assert (drpo.weight(np.log(against), np.log(mu), adv) > 1).all()


def test_drpo_weight_never_turns_corrective_at_the_papers_delta_on_cpu():
    """Claim 3, second half: with ``delta = 12.5`` no shift (at most 1) reaches the boundary."""
    grid = np.linspace(1e-6, 1.0, 600)
    mu, pi = np.meshgrid(grid, grid)
    for sign in (1.0, -1.0):
        w = ds.objectives.get("drpo", delta=12.5).weight(np.log(pi), np.log(mu), sign)
        assert w.min() >= 1 - 1 / 12.5 - 1e-12 and w.max() <= 1 + 1 / 12.5 + 1e-12
        assert (w > 0).all()
        np.testing.assert_allclose([w.min(), w.max()], [0.92, 1.08], atol=1e-5)


@pytest.mark.parametrize("bound", [1e2, 1e4, 1e5])
def test_spo_weight_exceeds_any_bound_as_mu_goes_to_zero_on_cpu(bound):
    """Claim 1: for a fixed shift, SPO's weight grows like ``1/mu``; DRPO's does not move."""
    spo, drpo = ds.objectives.get("spo", eps=12.5), ds.objectives.get("drpo", delta=12.5)
    shift = 0.05
    mu = np.logspace(-1, -8, 200)  # r stays below the documented cap e^20
    pi = mu + shift
    w_spo = spo.weight(np.log(pi), np.log(mu), 1.0)
    w_drpo = drpo.weight(np.log(pi), np.log(mu), 1.0)
    assert np.abs(w_spo).max() > bound
    first = int(np.argmax(np.abs(w_spo) > bound))
    assert np.all(np.abs(w_spo[first:]) > bound)  # and stays past it as mu keeps falling
    np.testing.assert_allclose(w_drpo, 1 - shift / 12.5, rtol=1e-9)
    # 1/mu growth: |w| * mu tends to shift / eps
    np.testing.assert_allclose(np.abs(w_spo[-1]) * mu[-1], shift / 12.5, rtol=1e-3)


@st.composite
def vocab_policies(draw):
    """Two long-tailed distributions over a vocabulary and an advantage per token."""
    v = draw(st.integers(2, 400))
    seed = draw(st.integers(0, 2**32 - 1))
    alpha = draw(st.sampled_from([0.05, 0.3, 1.0, 5.0]))
    rng = np.random.default_rng(seed)
    # floored at 1e-7 so that r = pi/mu stays below the documented ratio cap e^20
    mu = rng.dirichlet(np.full(v, alpha)) + 1e-7
    pi = rng.dirichlet(np.full(v, alpha)) + 1e-7
    adv = rng.normal(size=v) * draw(st.sampled_from([1e-3, 1.0, 1e3]))
    return pi / pi.sum(), mu / mu.sum(), adv


@given(vocab_policies())
def test_chi_square_and_l2_identities_enumerated_over_the_vocabulary_on_cpu(policies):
    """Claim 2: ``E_mu[abs(A)(r-1)^2] = sum abs(A)(pi-mu)^2/mu`` (SPO),
    ``E_mu[abs(A) mu (r-1)^2] = sum abs(A)(pi-mu)^2`` (DRPO).

    The left sides are read off the objectives' own surrogates: the penalty is ``r A - J``.
    """
    pi, mu, adv = policies
    lp, lb = np.log(pi), np.log(mu)
    eps = delta = 0.7
    r = pi / mu
    spo_penalty = 2 * eps * (r * adv - ds.objectives.get("spo", eps=eps).surrogate(lp, lb, adv))
    drpo_penalty = 2 * delta * (r * adv - ds.objectives.get("drpo", delta=delta).surrogate(lp, lb, adv))
    chi2 = np.sum(np.abs(adv) * (pi - mu) ** 2 / mu)
    l2 = np.sum(np.abs(adv) * (pi - mu) ** 2)
    scale = np.sum(np.abs(adv) * r * mu) + np.sum(np.abs(adv) * r**2 * mu)  # size of the cancelling terms
    assert abs(np.sum(mu * spo_penalty) - chi2) <= 1e-9 * scale + 1e-300
    assert abs(np.sum(mu * drpo_penalty) - l2) <= 1e-9 * scale + 1e-300
    # with abs(A) = 1 the two are the chi-square divergence and the squared l2 distance
    ones = np.ones_like(adv)
    chi2_div = np.sum(mu * 2 * eps * (r - ds.objectives.get("spo", eps=eps).surrogate(lp, lb, ones)))
    np.testing.assert_allclose(chi2_div, np.sum(pi**2 / mu) - 1.0, rtol=1e-7, atol=1e-9)


def _argmax_pi(obj, mu: float, sign: float) -> float:
    """Maximise the surrogate over ``pi in (0, 1)`` with ``mu`` and ``A`` fixed (bounded search on logp)."""
    lb = np.log(np.array([mu]))
    res = minimize_scalar(
        lambda x: -float(obj.surrogate(np.array([x]), lb, np.array([sign]))[0]),
        bounds=(math.log(1e-9), 0.0),
        method="bounded",
        options={"xatol": 1e-12},
    )
    return math.exp(res.x)


@pytest.mark.parametrize("delta", [0.05, 0.15, 0.3])
@pytest.mark.parametrize("mu", [0.001, 0.1, 0.4, 0.7])
@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_drpo_surrogate_peaks_at_mu_plus_sign_delta_on_cpu(delta, mu, sign):
    """``pi* = mu + sign(A) delta`` where that lies in (0, 1); otherwise the peak is at the edge."""
    pi_star = _argmax_pi(ds.objectives.get("drpo", delta=delta), mu, sign)
    target = mu + sign * delta
    expected = target if 0 < target < 1 else (1.0 if sign > 0 else 1e-9)
    assert pi_star == pytest.approx(expected, abs=1e-6)


@pytest.mark.parametrize("eps", [0.2, 0.5])
@pytest.mark.parametrize("mu", [0.001, 0.1, 0.4])
@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_spo_surrogate_peaks_at_ratio_one_plus_sign_eps_on_cpu(eps, mu, sign):
    pi_star = _argmax_pi(ds.objectives.get("spo", eps=eps), mu, sign)
    assert pi_star / mu == pytest.approx(1 + sign * eps, abs=1e-6)


def _gradient_flow(obj, mu: float, sign: float, steps: int = 4000, lr: float = 2e-3) -> tuple[float, float]:
    """Ascend ``J`` in ``logp`` from ``pi = mu`` along ``grad_logp``; return the final ``pi`` and gradient.

    The step ``lr g / (1 + abs(g))`` has the same rest points as plain ascent but never jumps
    more than ``lr`` nats, so a hard boundary is overshot by at most one small step.
    """
    lb = np.array([math.log(mu)])
    adv = np.array([sign])
    logp = lb.copy()
    for _ in range(steps):
        g = obj.grad_logp(logp, lb, adv)
        logp = np.minimum(logp + lr * g / (1.0 + np.abs(g)), 0.0)  # steps of at most lr nats
    return float(np.exp(logp[0])), float(obj.grad_logp(logp, lb, adv)[0])


@pytest.mark.parametrize(
    "name,params,mu,sign,expected",
    [
        ("ppo", {"eps_low": 0.2, "eps_high": 0.28}, 0.3, 1.0, 0.3 * 1.28),
        ("ppo", {"eps_low": 0.2, "eps_high": 0.28}, 0.3, -1.0, 0.3 * 0.8),
        ("grpo", {}, 0.01, 1.0, 0.01 * 1.28),
        ("dppo_tv", {"delta": 0.15}, 0.3, 1.0, 0.45),
        ("dppo_tv", {"delta": 0.15}, 0.3, -1.0, 0.15),
        ("dppo_tv", {"delta": 0.15}, 0.001, 1.0, 0.151),
    ],
)
def test_ppo_and_dppo_stop_at_their_boundaries_on_cpu(name, params, mu, sign, expected):
    """PPO and DPPO have no interior peak: the gradient is ``A r`` until the boundary, then exactly 0."""
    obj = ds.objectives.get(name, **params)
    pi_end, g_end = _gradient_flow(obj, mu, sign)
    assert g_end == 0.0
    assert pi_end == pytest.approx(expected, rel=2e-2)  # within one step past the boundary
    assert (pi_end - expected) * sign >= 0  # it stops just after crossing, not before


@pytest.mark.parametrize("mu,sign", [(0.3, 1.0), (0.01, 1.0), (0.6, -1.0)])
def test_drpo_and_spo_gradient_flows_come_to_rest_at_their_maximisers_on_cpu(mu, sign):
    drpo_pi, drpo_g = _gradient_flow(ds.objectives.get("drpo", delta=0.15), mu, sign, steps=20000, lr=0.05)
    assert drpo_pi == pytest.approx(mu + sign * 0.15, abs=1e-6) and abs(drpo_g) < 1e-8
    spo_pi, _ = _gradient_flow(ds.objectives.get("spo", eps=0.5), mu, sign, steps=20000, lr=0.05)
    assert spo_pi / mu == pytest.approx(1 + sign * 0.5, abs=1e-6)


def test_pg_is_has_no_rest_point_on_cpu():
    """Without a trust region the flow runs to the edge of the simplex (ever slower downwards, as ``r -> 0``)."""
    pg = ds.objectives.get("pg_is")
    pi_up, _ = _gradient_flow(pg, 0.3, 1.0, steps=20000, lr=0.05)
    assert pi_up == 1.0
    pi_down = [_gradient_flow(pg, 0.3, -1.0, steps=n, lr=0.05)[0] for n in (1000, 4000, 16000)]
    assert pi_down[0] > pi_down[1] > pi_down[2] and pi_down[2] < 1e-3


def test_the_batch_scale_is_the_batch_mean_abs_advantage_per_run_on_cpu():
    # drpo_no_abs_adv with adv_scale="batch" is the same objective with the constant set, run by
    # run (leading axis), to the mean abs(A) over that run's samples and tokens
    rng = np.random.default_rng(3)
    shape = (3, 6, 5)
    logp = np.log(rng.uniform(0.01, 1.0, shape))
    logp_mu = logp + rng.normal(0.0, 0.2, shape)
    adv = np.broadcast_to(rng.normal(0.0, [[[0.1]], [[1.0]], [[3.0]]], (3, 6, 1)), shape)
    batch = ds.objectives.get("drpo_no_abs_adv", delta=0.5, adv_scale=ds.objectives.BATCH_SCALE)
    assert not batch.elementwise and ds.objectives.get("drpo_no_abs_adv").elementwise
    for run in range(3):
        fixed = ds.objectives.get("drpo_no_abs_adv", delta=0.5, adv_scale=float(np.abs(adv[run]).mean()))
        for method in ("surrogate", "weight", "grad_logp"):
            np.testing.assert_allclose(getattr(batch, method)(logp, logp_mu, adv)[run],
                                       getattr(fixed, method)(logp[run], logp_mu[run], adv[run]), rtol=1e-12)
    # a [B, 1] advantage broadcast over the tokens gives the token mean, as the broadcast array does
    np.testing.assert_allclose(batch.grad_logp(logp[0], logp_mu[0], adv[0, :, :1]),
                               batch.grad_logp(logp[0], logp_mu[0], adv[0]), rtol=1e-12)
    # torch, differentiable: autograd of the surrogate is grad_logp
    x = torch.tensor(logp, requires_grad=True)
    batch.surrogate(x, torch.tensor(logp_mu), torch.tensor(np.ascontiguousarray(adv))).sum().backward()
    np.testing.assert_allclose(x.grad.numpy(), batch.grad_logp(logp, logp_mu, adv), rtol=1e-10)


def test_the_batch_scale_is_never_evaluated_block_by_block_on_cpu():
    # a call larger than the blocks of cache-blocked evaluation is still one batch
    n = 5 * ds.objectives.BLOCK_TOKENS["numpy"]
    rng = np.random.default_rng(4)
    logp = np.log(rng.uniform(0.01, 1.0, n))
    logp_mu = logp + rng.normal(0.0, 0.1, n)
    adv = np.where(np.arange(n) < n // 2, 0.1, 5.0)  # the blocks' own means would differ
    batch = ds.objectives.get("drpo_no_abs_adv", adv_scale="batch")
    fixed = ds.objectives.get("drpo_no_abs_adv", adv_scale=float(np.abs(adv).mean()))
    np.testing.assert_allclose(batch.weight(logp, logp_mu, adv), fixed.weight(logp, logp_mu, adv), rtol=1e-12)


def test_the_batch_scale_refuses_what_it_cannot_mean_on_cpu():
    with pytest.raises(ValueError, match="adv_scale must be a finite number > 0 or 'batch', got 'mean'"):
        ds.objectives.get("drpo_no_abs_adv", adv_scale="mean")
    with pytest.raises(ValueError, match="adv_scale must be a finite number > 0"):
        ds.objectives.get("drpo_no_abs_adv", adv_scale=0.0)
    logp = torch.full((2, 3), -1.0)
    mask = torch.tensor([[True, True, False], [True, True, True]])
    obj = ds.objectives.get("drpo_no_abs_adv", adv_scale="batch")
    with pytest.raises(ValueError, match="statistic of the whole batch, which its padded tokens would enter"):
        policy_loss(obj, logp, logp - 0.1, torch.ones(2), mask)
    loss, _ = policy_loss(obj, logp, logp - 0.1, torch.ones(2))  # unpadded: fine
    assert torch.isfinite(loss)


@pytest.mark.parametrize("config", [c for c in CONFIGS if not make(c).uses_batch_statistic], ids=[
    i for c, i in zip(CONFIGS, CONFIG_IDS) if not make(c).uses_batch_statistic])
def test_nan_padding_reaches_no_gradient_on_cpu(config):
    # a model's parameter w feeds every position's log-prob; the padding holds NaN in logp, in
    # logp_behavior and in the advantage: the gradient of w is the one of the valid tokens alone
    logp0, lpb, adv, mask = _batch(seed=5)
    adv = adv[:, None].expand_as(logp0).clone()
    nan = torch.full_like(logp0, float("nan"))
    obj = make(config)
    grads = []
    for garbage in (False, True):
        w = torch.zeros((), dtype=torch.float64, requires_grad=True)
        logp = (torch.where(mask, logp0, nan) if garbage else logp0) + w
        cols = _padded(_cols(lpb), mask, torch.float64) if garbage else _cols(lpb)
        loss, _ = policy_loss(obj, logp, torch.where(mask, lpb, nan) if garbage else lpb,
                              torch.where(mask, adv, nan) if garbage else adv, mask, agg_mode="seq-mean-token-mean",
                              **cols)
        loss.backward()
        assert torch.isfinite(loss) and torch.isfinite(w.grad), f"{obj}: NaN padding reached the gradient"
        grads.append((loss.item(), w.grad.item()))
    assert grads[1] == pytest.approx(grads[0], rel=1e-12, abs=1e-15)
