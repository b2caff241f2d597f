"""The objectives of three policies (mu, pi_old, pi), the corrections and the sequence-level ratios
(drpo_sim.objectives), each against the formula of the source it is named after, written out here
by hand. The registry-wide properties (weight against autograd, NumPy against torch, finite on
extreme inputs, padding) cover them through ``strategies.CONFIGS``.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import drpo_sim as ds
from drpo_sim.objectives import policy_loss

# four tokens, one row: pi, pi_old (the trainer's recomputation at rollout time), mu (the engine)
PI = np.array([0.50, 0.30, 0.020, 0.90])
PI_OLD = np.array([0.40, 0.40, 0.010, 0.85])
MU = np.array([0.38, 0.45, 0.004, 0.80])
ADV = np.array([1.0, -1.0, 1.0, -1.0])
LP, LO, LB = np.log(PI), np.log(PI_OLD), np.log(MU)
R, RHO, B = PI / MU, PI / PI_OLD, PI_OLD / MU


def _clip_keep(ratio, adv, eps_low, eps_high):
    return ~(((adv > 0) & (ratio > 1 + eps_high)) | ((adv < 0) & (ratio < 1 - eps_low)))


def test_minirl_is_stable_rls_ppo_recompute_on_cpu():
    """sail-sg/Stable-RL ``ppo_recompute``: loss ``-A sg(min(pi/mu, 10)) M(pi/pi_old) log pi``,
    written here from its formula: the same gradient in logp as ours."""
    lp = torch.tensor(LP, requires_grad=True)
    lb, lo, a = torch.tensor(LB), torch.tensor(LO), torch.tensor(ADV)
    keep = _clip_keep(np.exp(LP - LO), ADV, 0.2, 0.28)
    theirs = -(a * torch.exp(torch.clamp(lp - lb, max=20.0)).clamp(max=10.0).detach()
               * torch.tensor(keep, dtype=torch.float64) * lp)
    (g_theirs,) = torch.autograd.grad(theirs.sum(), lp)
    obj = ds.objectives.get("minirl")
    (g_ours,) = torch.autograd.grad(-obj.surrogate(lp, lb, a, logp_old=lo).sum(), lp)
    torch.testing.assert_close(g_ours, g_theirs, rtol=1e-12, atol=0)
    expected = keep * np.minimum(R, 10.0) / R
    np.testing.assert_allclose(obj.weight(LP, LB, ADV, logp_old=LO), expected, rtol=1e-12)
    # rho = 1.25 kept (A>0, <= 1.28); 0.75 clipped (A<0, < 0.8); 2.0 clipped (A>0) although
    # pi/mu = 5 is what it moved from the engine; 1.06 kept
    assert keep.tolist() == [True, False, False, True]
    # the cap on pi/mu: token 0 has r = 1.32; at cap 1.2 its weight is 1.2 / 1.32
    assert ds.objectives.get("minirl", cap=1.2).weight(LP, LB, ADV, logp_old=LO)[0] == pytest.approx(1.2 / R[0])


def test_dppo_recompute_modes_mask_the_shift_from_pi_old_on_cpu():
    """Stable-RL ``dppo_binary_tv_recompute`` / ``_kl_recompute``: the mask reads pi - pi_old, the
    importance ratio stays pi/mu."""
    pi, old, mu = np.array([0.55, 0.20, 0.55]), np.array([0.30, 0.40, 0.53]), np.array([0.50, 0.25, 0.30])
    adv = np.array([1.0, -1.0, 1.0])
    w = ds.objectives.get("dppo_tv_recompute", delta=0.15).weight(np.log(pi), np.log(mu), adv, logp_old=np.log(old))
    # pi - pi_old = 0.25 (A>0: masked), -0.20 (A<0: masked), 0.02 (kept; pi - mu = 0.25 would mask it)
    np.testing.assert_array_equal(w, [0.0, 0.0, 1.0])
    rollout = ds.objectives.get("dppo_tv", delta=0.15).weight(np.log(pi), np.log(mu), adv)
    np.testing.assert_array_equal(rollout, [1.0, 1.0, 0.0])
    kl = ds.objectives.get("dppo_kl_recompute", delta=0.05)
    d = ds.objectives.binary_kl(np.log(old), np.log(pi))
    expected = ~(((adv > 0) & (pi > old) & (d > 0.05)) | ((adv < 0) & (pi < old) & (d > 0.05)))
    np.testing.assert_array_equal(kl.weight(np.log(pi), np.log(mu), adv, logp_old=np.log(old)), expected)
    # the surrogate's gradient is sg(r) M A: importance-weighted to mu
    lp = torch.tensor(np.log(pi), requires_grad=True)
    j = ds.objectives.get("dppo_tv_recompute", delta=0.15).surrogate(
        lp, torch.tensor(np.log(mu)), torch.tensor(adv), logp_old=torch.tensor(np.log(old)))
    (g,) = torch.autograd.grad(j.sum(), lp)
    np.testing.assert_allclose(g.numpy(), [0.0, 0.0, adv[2] * pi[2] / mu[2]], rtol=1e-12)


def test_decoupled_ppo_is_hiltons_objective_and_ppo_with_the_is_correction_on_cpu():
    """``J = (pi_old/mu) min(rho A, clip(rho, 0.8, 1.2) A)`` (Hilton et al. 2022), by value."""
    obj = ds.objectives.get("decoupled_ppo")
    expected = B * np.minimum(RHO * ADV, np.clip(RHO, 0.8, 1.2) * ADV)
    np.testing.assert_allclose(obj.surrogate(LP, LB, ADV, logp_old=LO), expected, rtol=1e-12)
    np.testing.assert_array_equal(obj.weight(LP, LB, ADV, logp_old=LO), _clip_keep(RHO, ADV, 0.2, 0.2))
    same = ds.objectives.get("ppo", correction="is")
    for method in ("surrogate", "weight", "grad_logp"):
        np.testing.assert_array_equal(getattr(obj, method)(LP, LB, ADV, logp_old=LO),
                                      getattr(same, method)(LP, LB, ADV, logp_old=LO))
    capped = ds.objectives.get("decoupled_ppo", is_cap=1.5)
    np.testing.assert_allclose(capped.surrogate(LP, LB, ADV, logp_old=LO),
                               np.minimum(B, 1.5) * np.minimum(RHO * ADV, np.clip(RHO, 0.8, 1.2) * ADV), rtol=1e-12)


def test_token_corrections_by_hand_on_cpu():
    """TIS ``min(b, C)``, IcePop ``b 1[alpha <= b <= beta]`` and plain IS, each times the base
    objective anchored to pi_old."""
    b = B  # 1.053, 0.889, 2.5, 1.0625
    grpo_at_old = ds.objectives.get("grpo").surrogate(LP, LO, ADV)
    cases = {
        ("tis", 2.0): np.minimum(b, 2.0),
        ("is", None): b,
        ("icepop", None): np.where((b >= 0.5) & (b <= 5.0), b, 0.0),
    }
    for (name, cap), factor in cases.items():
        obj = ds.objectives.get("grpo", correction=name, **({"cap": cap} if cap else {}))
        np.testing.assert_allclose(obj.surrogate(LP, LB, ADV, logp_old=LO), factor * grpo_at_old, rtol=1e-12)
    narrow = ds.objectives.get("grpo", correction="icepop", alpha=0.95, beta=1.2)
    np.testing.assert_allclose(narrow.surrogate(LP, LB, ADV, logp_old=LO),
                               np.where((b >= 0.95) & (b <= 1.2), b, 0.0) * grpo_at_old, rtol=1e-12)
    assert (narrow.weight(LP, LB, ADV, logp_old=LO) == 0).tolist() == [False, True, True, False]


def test_sequence_corrections_by_hand_on_cpu():
    """Sequence TIS ``min(prod b, C)``, MIS ``B 1[B <= C]``, geometric ``1[lower <= B^(1/T) <= upper]``,
    on two sequences given by ``sample_id`` and, the same, as the rows of a [2, 2] batch."""
    ids = np.array([7, 7, 3, 3])  # any integers: tokens 0-1 one sequence, 2-3 another
    prod = np.array([B[0] * B[1]] * 2 + [B[2] * B[3]] * 2)  # 0.936, 2.656
    geo = np.sqrt(prod)
    drpo_at_old = ds.objectives.get("drpo").surrogate(LP, LO, ADV)
    cases = [
        ("seq_tis", {"cap": 2.0}, np.minimum(prod, 2.0)),
        ("seq_mis", {"cap": 2.0}, np.where(prod <= 2.0, prod, 0.0)),
        ("geo_mis", {"upper": 1.1}, np.where((geo >= 1 / 1.1) & (geo <= 1.1), 1.0, 0.0)),
    ]
    for name, params, factor in cases:
        obj = ds.objectives.get("drpo", correction=name, **params)
        np.testing.assert_allclose(obj.surrogate(LP, LB, ADV, logp_old=LO, sample_id=ids), factor * drpo_at_old,
                                   rtol=1e-12, err_msg=name)
        rows = obj.surrogate(LP.reshape(2, 2), LB.reshape(2, 2), ADV.reshape(2, 2), logp_old=LO.reshape(2, 2))
        np.testing.assert_allclose(rows.ravel(), factor * drpo_at_old, rtol=1e-12, err_msg=name)
    assert factor.tolist() == [1.0, 1.0, 0.0, 0.0]  # geo 0.97 kept, 1.63 dropped


def _gspo_batch():
    g = torch.Generator().manual_seed(11)
    lb = torch.log(torch.rand(3, 5, generator=g, dtype=torch.float64) * 0.9 + 0.05)
    lp = (lb + 0.3 * torch.randn(3, 5, generator=g, dtype=torch.float64)).clamp(max=0.0)
    adv = torch.tensor([1.0, -0.5, 2.0], dtype=torch.float64)
    mask = torch.ones(3, 5, dtype=torch.bool)
    mask[1, 3:] = False
    return lp, lb, adv, mask


def test_gspo_sequence_ratio_and_clip_by_hand_on_cpu():
    """``s = exp(mean_t log(pi/mu))`` over each sequence's valid tokens; ``J = min(s A, clip(s) A)``."""
    lp, lb, adv, mask = _gspo_batch()
    eps = 0.1
    m = mask.double()
    s = torch.exp(((lp - lb) * m).sum(-1) / m.sum(-1))
    per_seq = torch.minimum(s * adv, s.clamp(1 - eps, 1 + eps) * adv)
    for mode in ds.objectives.AGG_MODES:
        logp = lp.clone().requires_grad_(True)
        loss, _ = policy_loss(ds.objectives.get("gspo", eps_low=eps, eps_high=eps), logp, lb, adv, mask,
                              agg_mode=mode)
        loss.backward()
        # every mode gives each sequence its one term, times the mode's per-sequence coefficient
        n_seq, n_tok, t = 3, m.sum(-1), mask.shape[1]
        coef = {"token-mean": n_tok / m.sum(), "seq-mean-token-sum": n_tok / n_seq,
                "seq-mean-token-mean": torch.ones(3, dtype=torch.float64) / n_seq,
                "seq-mean-token-sum-norm": n_tok / t / n_seq}[mode]
        torch.testing.assert_close(loss.detach(), -(coef * per_seq).sum(), rtol=1e-12, atol=0)
        # the gradient: -c_t A r w with the registry's weight, on the valid tokens; none on padding
        w = ds.objectives.get("gspo", eps_low=eps, eps_high=eps).weight(
            torch.where(mask, lp, 0.0), torch.where(mask, lb, 0.0), adv[:, None],
            sample_id=torch.where(mask, torch.arange(3)[:, None], 99))
        c = ds.objectives.aggregation_weights(mask, mode, dtype=torch.float64)
        expected = -c * adv[:, None] * torch.exp(lp - lb) * w
        torch.testing.assert_close(logp.grad, torch.where(mask, expected, 0.0), rtol=1e-10, atol=1e-14)
    # the padding never enters s: garbage there changes nothing
    garbage = torch.where(mask, lp, -30.0)
    a, _ = policy_loss("gspo", lp, lb, adv, mask)
    b, _ = policy_loss("gspo", garbage, lb, adv, mask)
    assert torch.equal(a, b)


def test_gspo_token_has_gspos_gradient_with_one_advantage_per_sequence_on_cpu():
    lp, lb, adv, mask = _gspo_batch()
    grads = {}
    for name in ("gspo", "gspo_token"):
        logp = lp.clone().requires_grad_(True)
        loss, _ = policy_loss(ds.objectives.get(name, eps_low=0.05, eps_high=0.05), logp, lb, adv, mask,
                              agg_mode="seq-mean-token-mean")
        loss.backward()
        grads[name] = logp.grad
    torch.testing.assert_close(grads["gspo"], grads["gspo_token"], rtol=1e-12, atol=1e-15)


def test_missing_logp_old_is_one_line_naming_the_column_on_cpu():
    lp = np.log(np.array([[0.3, 0.5]]))
    needs = [n for n in ds.objectives.available() if ds.objectives.get(n).needs_old]
    assert set(needs) == {"minirl", "dppo_tv_recompute", "dppo_kl_recompute", "decoupled_ppo"}
    objs = [ds.objectives.get(n) for n in needs] + [ds.objectives.get("drpo", correction="tis")]
    for obj in objs:
        for call in (lambda o: o.weight(lp, lp, 1.0), lambda o: o.surrogate(lp, lp, 1.0),
                     lambda o: policy_loss(o, torch.tensor(lp), torch.tensor(lp), torch.ones(1))):
            with pytest.raises(ValueError, match=r"needs logp_old.*column 'logp_old'") as err:
                call(obj)
            assert "\n" not in str(err.value)
    # the others ignore it
    plain = ds.objectives.get("drpo")
    np.testing.assert_array_equal(plain.weight(lp, lp - 0.1, 1.0, logp_old=lp), plain.weight(lp, lp - 0.1, 1.0))


def test_corrections_name_and_parameters_are_checked_on_cpu():
    assert ds.objectives.corrections() == ["is", "tis", "seq_tis", "seq_mis", "geo_mis", "icepop"]
    with pytest.raises(ValueError, match="unknown correction 'tsi'; available: is, tis, seq_tis"):
        ds.objectives.get("grpo", correction="tsi")
    with pytest.raises(ValueError, match="has no parameter 'alpha'"):
        ds.objectives.get("grpo", correction="tis", alpha=0.5)  # icepop's, not tis's nor grpo's
    with pytest.raises(ValueError, match="cispo and correction tis both have parameter"):
        ds.objectives.get("cispo", correction="tis", cap=2.0)
    with pytest.raises(ValueError, match="parameter cap must be a finite number > 0"):
        ds.objectives.get("grpo", correction="seq_tis", cap=0.0)
    with pytest.raises(ValueError, match="need alpha < 1 < beta"):
        ds.objectives.get("grpo", correction="icepop", alpha=1.5)
    with pytest.raises(ValueError, match="need lower < 1 < upper"):
        ds.objectives.get("grpo", correction="geo_mis", upper=0.9)
    with pytest.raises(ValueError, match="already anchored to pi_old"):
        ds.objectives.get("minirl", correction="tis")
    with pytest.raises(ValueError, match="use a sequence correction"):
        ds.objectives.get("gspo", correction="icepop")
    with pytest.raises(ValueError, match="sample_id must hold integers"):
        ds.objectives.get("gspo").weight(LP, LB, ADV, sample_id=np.array([0.0, 0.0, 1.0, 1.0]))
    with pytest.raises(ValueError, match="does not fit the tokens"):
        ds.objectives.get("gspo").weight(LP, LB, ADV, sample_id=np.array([0, 1]))


def test_a_corrected_objective_is_rebuilt_from_its_name_and_parameters_on_cpu():
    obj = ds.objectives.get("grpo", correction="tis", cap=1.5, eps_high=0.3)
    assert str(obj) == "grpo(eps_low=0.2, eps_high=0.3)+tis(cap=1.5)"
    again = ds.objectives.get(obj.name, **obj.params)
    assert again == obj and again.needs_old
    assert ds.objectives.get("gspo", correction="seq_tis").per_sequence
    assert not ds.objectives.get("grpo", correction="tis").per_sequence


def _softmax_logs(z: np.ndarray) -> np.ndarray:
    return z - np.logaddexp.reduce(z, axis=-1, keepdims=True)


def test_topk_divergences_are_the_exact_ones_at_k_equal_v_and_bucket_the_rest_on_cpu():
    """DPPO's Top-K divergence (Stable-RL ``compute_topk_kl``): with every token in the top K it is
    the exact TV and KL(engine || trainer); with K = 1 it is the binary divergence of the engine's
    top token against the rest, by hand."""
    rng = np.random.default_rng(3)
    lp = _softmax_logs(rng.normal(size=(5, 12)))  # the engine
    lq = _softmax_logs(lp + 0.4 * rng.normal(size=(5, 12)))  # the trainer
    p, q = np.exp(lp), np.exp(lq)
    order = np.argsort(-lp, axis=-1)
    tv, kl = ds.objectives.topk_divergences(lq, order, np.take_along_axis(lp, order, -1))
    np.testing.assert_allclose(tv, 0.5 * np.abs(p - q).sum(-1), rtol=1e-12)
    np.testing.assert_allclose(kl, (p * (lp - lq)).sum(-1), rtol=1e-10)
    top = order[:, :1]
    tv1, kl1 = ds.objectives.topk_divergences(lq, top, np.take_along_axis(lp, top, -1))
    p1, q1 = np.take_along_axis(p, top, -1)[:, 0], np.take_along_axis(q, top, -1)[:, 0]
    np.testing.assert_allclose(tv1, np.abs(p1 - q1), rtol=1e-12)  # (|p1 - q1| + |(1-p1) - (1-q1)|) / 2
    np.testing.assert_allclose(kl1, p1 * np.log(p1 / q1) + (1 - p1) * np.log((1 - p1) / (1 - q1)), rtol=1e-10)
    t_tv, t_kl = ds.objectives.topk_divergences(torch.tensor(lq), torch.tensor(top),
                                                torch.tensor(np.take_along_axis(lp, top, -1)))
    np.testing.assert_allclose(t_tv.numpy(), tv1, rtol=1e-12)
    np.testing.assert_allclose(t_kl.numpy(), kl1, rtol=1e-12)
    # the engine puts mass where the trainer has none: an infinite KL, never NaN
    lq0 = np.array([[0.0, -np.inf]])  # the trainer: all its mass on token 0
    tv0, kl0 = ds.objectives.topk_divergences(lq0, np.array([[1]]), np.log(np.array([[0.5]])))
    assert tv0[0] == pytest.approx(0.5) and kl0[0] == np.inf


def test_dppo_topk_modes_mask_by_the_positions_divergence_on_cpu():
    """Stable-RL ``dppo_topk_tv``: masked where the Top-K divergence exceeds delta and the sampled
    token moved in the advantage's direction; the sampled token's own shift only gives the direction."""
    pi, mu = np.array([0.30, 0.30, 0.20, 0.20]), np.array([0.25, 0.25, 0.25, 0.25])
    adv = np.array([1.0, 1.0, -1.0, 1.0])
    tv = np.array([0.20, 0.10, 0.20, 0.20])
    w = ds.objectives.get("dppo_topk_tv").weight(np.log(pi), np.log(mu), adv, topk_tv=tv)
    # pi > mu with A > 0 and TV 0.2 > 0.15: masked; TV 0.1: kept; pi < mu with A < 0: masked;
    # pi < mu with A > 0 (the update moves it back): kept
    np.testing.assert_array_equal(w, [0.0, 1.0, 0.0, 1.0])
    assert ds.objectives.get("dppo_tv").weight(np.log(pi), np.log(mu), adv).tolist() == [1.0] * 4  # shift 0.05
    kl = np.array([0.06, 0.04, 0.06, np.inf])
    np.testing.assert_array_equal(ds.objectives.get("dppo_topk_kl").weight(np.log(pi), np.log(mu), adv, topk_kl=kl),
                                  [0.0, 1.0, 0.0, 1.0])
    with pytest.raises(ValueError, match=r"dppo_topk_tv\(delta=0.15\) needs topk_tv, .*column 'topk_tv'"):
        ds.objectives.get("dppo_topk_tv").weight(np.log(pi), np.log(mu), adv)
    with pytest.raises(ValueError, match="needs topk_kl"):
        policy_loss("dppo_topk_kl", torch.tensor(np.log(pi)[None]), torch.tensor(np.log(mu)[None]), torch.ones(1),
                    topk_tv=torch.tensor(tv[None]))
    assert ds.objectives.get("dppo_topk_kl").required_columns == ("topk_kl",)
    assert ds.objectives.get("grpo", correction="tis").required_columns == ("logp_old",)
