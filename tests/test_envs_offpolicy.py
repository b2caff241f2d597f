"""Environments, policies and off-policy channels: each against an independent computation."""

import numpy as np
import pytest
import torch

from drpo_sim import advantages, offpolicy
from drpo_sim.envs import LongTailBandit, TabularSequence, zipf_logits
from drpo_sim.offpolicy import OffPolicyConfig, engine_logp, round_to_format, truncate, unit_roundoff
from drpo_sim.policies import SharedFeatureLogits, TabularLogits, log_softmax
from drpo_sim.sim import sample_tokens

# Machine epsilon (spacing of floats just above 1) from each format's definition:
# 2**-(mantissa bits): bf16 7, fp16 10, fp8 e4m3 3, fp8 e5m2 2 (OCP FP8 spec, IEEE 754).
FORMAT_EPS = {"fp32": 2.0**-23, "bf16": 2.0**-7, "fp16": 2.0**-10, "fp8_e4m3": 2.0**-3, "fp8_e5m2": 2.0**-2}
FORMAT_MAX = {"fp16": 65504.0, "fp8_e4m3": 448.0, "fp8_e5m2": 57344.0}


# ---------------------------------------------------------------------------------------------
# environments


@pytest.mark.parametrize("v", [8, 64, 1024, 65536])
def test_bandit_is_zipf_with_rare_rewarded_tokens(v):
    env = LongTailBandit(vocab_size=v)
    logp = log_softmax(env.initial_logits())[0]
    p = np.exp(logp)
    ranks = np.arange(1, v + 1)
    np.testing.assert_allclose(p / p[0], ranks ** -1.1, rtol=1e-12)
    r = env.token_rewards()
    assert np.count_nonzero(r) == env.n_rewarded
    assert r.max() == 1.0 and r[env.rewarded_tokens[-1]] == 1.0  # the rarest rewarded token is the best
    assert np.all(np.diff(env.rewarded_tokens) > 0)
    if v >= 1024:
        assert p[env.rewarded_tokens[-1]] < 0.001  # the optimum is a rare token
    assert env.expected_reward(logp[None, None]) == pytest.approx(p @ r)


def test_bandit_rejects_bad_shapes():
    for kwargs in ({"vocab_size": 4}, {"n_rewarded": 0}, {"reward_min": 2.0}, {"rare_quantile": 0.0}, {"zipf_exponent": -1.0}):
        with pytest.raises(ValueError):
            LongTailBandit(**kwargs)


@pytest.mark.parametrize("reward", ["prefix", "match"])
def test_tabular_expected_reward_matches_monte_carlo(reward):
    env = TabularSequence(vocab_size=6, n_prompts=3, horizon=4, reward=reward, target_max_rank=6)
    rng = np.random.default_rng(0)
    z = env.initial_logits() + rng.normal(size=(env.n_states, env.vocab_size))
    logp = log_softmax(z)[None]
    exact = env.expected_reward(logp)[0]
    # sample 200k responses per prompt, score them with the reward function
    n = 200_000
    p = np.exp(logp[0]).reshape(env.n_prompts, env.horizon, -1)
    cdf = p.cumsum(-1)
    u = rng.random((env.n_prompts, n, env.horizon))
    tokens = (u[..., None] > cdf[:, None]).sum(-1)
    prompts = np.arange(env.n_prompts)[None]
    rewards = env.rewards(prompts, tokens[None])
    assert rewards.mean() == pytest.approx(exact, abs=4 * rewards.std() / np.sqrt(rewards.size))


def test_tabular_reward_by_hand():
    env = TabularSequence(vocab_size=8, n_prompts=1, horizon=4, reward="prefix")
    t = env.targets[0]
    wrong = (t + 1) % 8
    resp = np.array([[t, [t[0], t[1], wrong[2], t[3]], [wrong[0], t[1], t[2], t[3]]]])[None]  # [1, 1, 3, 4]
    np.testing.assert_allclose(env.rewards(np.zeros((1, 1), int), resp)[0, 0], [1.0, 0.5, 0.0])
    env_m = TabularSequence(vocab_size=8, n_prompts=1, horizon=4, reward="match")
    np.testing.assert_allclose(env_m.rewards(np.zeros((1, 1), int), resp)[0, 0], [1.0, 0.75, 0.75])


def test_tabular_structure_depends_on_env_seed_only():
    a, b, c = TabularSequence(env_seed=0), TabularSequence(env_seed=0), TabularSequence(env_seed=1)
    np.testing.assert_array_equal(a.targets, b.targets)
    assert not np.array_equal(a.targets, c.targets)
    z = a.initial_logits()
    np.testing.assert_allclose(np.sort(z, axis=1)[:, ::-1], np.broadcast_to(zipf_logits(a.vocab_size, 1.1), z.shape))


# ---------------------------------------------------------------------------------------------
# policies


def test_shared_features_gradient_matches_autograd():
    rng = np.random.default_rng(1)
    z0 = rng.normal(size=(3, 5))
    pol = SharedFeatureLogits(z0=z0, n_features=4)
    params = pol.init(z0, 2, rng.standard_normal((2, 8, 4)))
    g = rng.normal(size=(2, 3, 5))
    grads = pol.backward(params, g)
    h = torch.tensor(params["h"], requires_grad=True)
    e = torch.tensor(params["e"], requires_grad=True)
    (torch.sum((torch.tensor(z0) + h @ e.transpose(1, 2)) * torch.tensor(g))).backward()
    np.testing.assert_allclose(grads["h"], h.grad.numpy(), rtol=1e-12)
    np.testing.assert_allclose(grads["e"], e.grad.numpy(), rtol=1e-12)
    np.testing.assert_allclose(pol.logits(params), z0 + params["h"] @ params["e"].transpose(0, 2, 1))


def test_shared_features_couple_tokens_tabular_does_not():
    rng = np.random.default_rng(2)
    z0 = np.zeros((1, 6))
    g = np.zeros((1, 1, 6))
    g[0, 0, 2] = 1.0  # push one token's logit
    tab = TabularLogits()
    p = tab.init(z0, 1)
    moved = tab.backward(p, g)["z"]
    assert np.count_nonzero(moved) == 1
    sh = SharedFeatureLogits(z0=z0, n_features=3)
    ps = sh.init(z0, 1, rng.standard_normal((1, 7, 3)))
    step = {k: ps[k] + 0.1 * gk for k, gk in sh.backward(ps, g).items()}
    dz = sh.logits(step) - sh.logits(ps)
    assert np.count_nonzero(np.abs(dz) > 1e-6) == 6  # every token's logit moved


# ---------------------------------------------------------------------------------------------
# advantages


def test_group_relative_advantages_by_hand():
    r = np.array([[1.0, 0.0, 0.0, 1.0], [0.5, 0.5, 0.5, 0.5]])
    np.testing.assert_allclose(advantages.group_relative(r), [[0.5, -0.5, -0.5, 0.5], [0, 0, 0, 0]])
    std = np.std([1.0, 0, 0, 1], ddof=1)
    np.testing.assert_allclose(advantages.group_relative(r, std_norm=True)[0], np.array([0.5, -0.5, -0.5, 0.5]) / (std + 1e-6))
    with pytest.raises(ValueError):
        advantages.group_relative(np.ones((2, 1)), std_norm=True)


def test_exact_advantages_are_the_infinite_group_limit():
    rewards = np.array([0.0, 1.0, 0.5])
    mu = np.array([0.5, 0.25, 0.25])
    a = advantages.exact(rewards, mu)
    np.testing.assert_allclose(a, rewards - mu @ rewards)
    rng = np.random.default_rng(3)
    draws = rewards[rng.choice(3, size=(2000, 64), p=mu)]
    sd = np.sqrt(mu @ rewards**2 - (mu @ rewards) ** 2)
    np.testing.assert_allclose(advantages.exact(rewards, mu, std_norm=True), (rewards - mu @ rewards) / (sd + 1e-6))
    assert draws.std(ddof=1, axis=1).mean() == pytest.approx(sd, rel=0.02)


# ---------------------------------------------------------------------------------------------
# precision


@pytest.mark.parametrize("fmt", list(FORMAT_EPS))
def test_rounding_has_the_formats_machine_epsilon(fmt):
    eps = FORMAT_EPS[fmt]
    assert unit_roundoff(fmt) == eps / 2
    one = np.array([1.0, 1.0 + eps, 1.0 + 0.49 * eps, 1.0 + 0.51 * eps, 1.0 + 0.5 * eps, 1.0 + 1.5 * eps])
    # the spacing above 1 is eps; ties round to even (1 + eps/2 -> 1, 1 + 3eps/2 -> 1 + 2eps)
    np.testing.assert_array_equal(round_to_format(one, fmt), [1.0, 1 + eps, 1.0, 1 + eps, 1.0, 1 + 2 * eps])
    rng = np.random.default_rng(0)
    x = rng.uniform(0.5, 8.0, size=100_000) * rng.choice([-1, 1], size=100_000)
    if fmt != "fp32":  # the narrower formats are reached through float32 (documented)
        x = x.astype(np.float32).astype(np.float64)
    rel = np.abs(round_to_format(x, fmt) / x - 1)
    assert rel.max() <= eps / 2 * (1 + 1e-6)
    assert rel.max() >= 0.4 * eps  # u / (1 + u) is reached: the bound is reached: this is the format, not a finer one


def test_rounding_saturates_and_fp64_is_identity():
    x = np.array([1e6, -1e6, 3.0])
    for fmt, big in FORMAT_MAX.items():
        np.testing.assert_array_equal(round_to_format(x, fmt), [big, -big, 3.0])
    y = np.random.default_rng(0).normal(size=10)
    assert round_to_format(y, "fp64") is y
    with pytest.raises(ValueError, match="unknown precision"):
        round_to_format(y, "fp4")


# ---------------------------------------------------------------------------------------------
# channels


def _zipf(v=4096, rows=4):
    return np.broadcast_to(zipf_logits(v, 1.1), (rows, v)).copy()


def test_every_channel_at_zero_is_exactly_on_policy():
    z = _zipf()
    for cfg in (OffPolicyConfig(), OffPolicyConfig(noise_dist="student_t"), OffPolicyConfig(top_k=0, top_p=1.0), OffPolicyConfig(anchor="recompute"),
                OffPolicyConfig(precision="bf16", trainer_precision="bf16")):
        assert cfg.on_policy
        np.testing.assert_array_equal(engine_logp(z, cfg), offpolicy.trainer_logp(z, cfg))
    assert not OffPolicyConfig(staleness=1).on_policy and not OffPolicyConfig(precision="bf16").on_policy


@pytest.mark.parametrize("dist", ["gaussian", "student_t"])
def test_logit_noise_has_the_requested_size(dist):
    v, sigma = 65536, 0.1
    z = _zipf(v, 1)
    cfg = OffPolicyConfig(noise_std=sigma, noise_dist=dist, noise_df=5.0)
    rng = np.random.default_rng(0)
    noise = rng.standard_normal(z.shape) if dist == "gaussian" else rng.standard_t(5.0, z.shape)
    d = engine_logp(z, cfg, noise) - log_softmax(z)
    d = d - np.median(d)  # the normaliser moves every log-prob by the same amount
    assert d.std() == pytest.approx(sigma, rel=0.03)
    kurt = np.mean(d**4) / np.mean(d**2) ** 2
    assert kurt == pytest.approx(3.0, abs=0.2) if dist == "gaussian" else kurt > 5.0  # t(5): 9 in theory


def test_engine_bias_is_a_fixed_offset_of_the_requested_size():
    v, sigma = 65536, 0.2
    z = _zipf(v, 1)
    cfg = OffPolicyConfig(bias_std=sigma)
    bias = np.random.default_rng(0).standard_normal(z.shape)
    d = engine_logp(z, cfg, bias=bias) - log_softmax(z)
    np.testing.assert_allclose(d - d[0, 0], sigma * (bias - bias[0, 0]), atol=1e-12)  # exactly the offset, up to the normaliser
    assert (d - np.median(d)).std() == pytest.approx(sigma, rel=0.03)
    with pytest.raises(ValueError, match="bias"):
        engine_logp(z, cfg)
    assert not cfg.on_policy and OffPolicyConfig(bias_std=0.0).on_policy


def test_engine_precision_error_is_within_the_formats_roundoff():
    z = _zipf(1024, 1) * 3  # logits down to about -23
    for fmt in ("bf16", "fp16", "fp8_e4m3", "fp8_e5m2"):
        cfg = OffPolicyConfig(precision=fmt)
        zr = round_to_format(z, fmt)
        assert np.all(np.abs(zr - z) <= unit_roundoff(fmt) * np.abs(z) + 1e-300)
        np.testing.assert_allclose(engine_logp(z, cfg), log_softmax(zr))


def test_precision_mismatch_grows_with_coarser_formats():
    stats = offpolicy.calibration(4096, presets={f: {"precision": f} for f in ("fp16", "bf16", "fp8_e4m3", "fp8_e5m2")})
    tv = [stats[f]["tv"] for f in ("fp16", "bf16", "fp8_e4m3", "fp8_e5m2")]
    assert tv == sorted(tv) and tv[0] > 0


def test_noise_presets_match_published_mismatch_sizes():
    """REFERENCE.md: mean abs(pi - mu) below ~0.005 in healthy runs; BF16 drift ~ -1e-3 nats per
    token; the ratio spreads over roughly [0.8, 1.3] for mu < 0.2 (fp8-like)."""
    s = offpolicy.calibration(32768)
    assert s["bf16"]["shift_mean"] < 0.005 and s["fp8"]["shift_mean"] < 0.005
    assert -3e-3 < s["bf16"]["logratio_drift"] < -3e-4
    assert 0.65 < s["fp8"]["ratio_q05_mu_lt_0.2"] < 0.85 and 1.2 < s["fp8"]["ratio_q95_mu_lt_0.2"] < 1.4
    assert s["bf16"]["ratio_q95_mu_lt_0.2"] < s["fp8"]["ratio_q95_mu_lt_0.2"]


def test_top_k_keeps_exactly_k_tokens_renormalised():
    z = _zipf(100, 3) + np.random.default_rng(0).normal(size=(3, 100))
    lp = log_softmax(z)
    t = truncate(lp, top_k=7)
    kept = np.isfinite(t)
    assert np.all(kept.sum(1) == 7)
    for i in range(3):
        top = np.argsort(-lp[i])[:7]
        assert set(np.flatnonzero(kept[i])) == set(top)
        np.testing.assert_allclose(np.exp(t[i, top]), np.exp(lp[i, top]) / np.exp(lp[i, top]).sum())


@pytest.mark.parametrize("top_p", [0.3, 0.9, 0.99])
def test_top_p_keeps_the_smallest_nucleus(top_p):
    z = _zipf(500, 4) + np.random.default_rng(1).normal(size=(4, 500))
    lp = log_softmax(z)
    t = truncate(lp, top_p=top_p)
    p = np.exp(lp)
    for i in range(4):
        kept = np.isfinite(t[i])
        assert p[i, kept].sum() >= top_p  # the nucleus reaches top_p ...
        assert p[i, kept].sum() - p[i, kept].min() < top_p  # ... and is the smallest set that does
        assert p[i, kept].min() >= p[i, ~kept].max()
        np.testing.assert_allclose(np.exp(t[i, kept]).sum(), 1.0)


def test_truncated_tokens_are_never_sampled():
    lp = truncate(log_softmax(_zipf(50, 2)), top_k=5)
    rows = np.repeat(np.arange(2), 20000)
    tok = sample_tokens(np.exp(lp)[None], rows, np.random.default_rng(0).random(rows.size))
    assert tok.max() < 5


def test_sampling_follows_the_distribution():
    lp = log_softmax(_zipf(20, 3) + np.random.default_rng(0).normal(size=(3, 20)))
    n = 200_000
    rows = np.repeat(np.arange(3), n)
    tok = sample_tokens(np.exp(lp)[None], rows, np.random.default_rng(1).random(rows.size))
    freq = np.stack([np.bincount(tok[rows == i], minlength=20) / n for i in range(3)])
    p = np.exp(lp)
    assert np.all(np.abs(freq - p) < 5 * np.sqrt(p * (1 - p) / n) + 1e-9)


def test_config_rejects_bad_channels():
    for kwargs in (
        {"noise_std": -0.1}, {"bias_std": float("nan")}, {"noise_dist": "cauchy"}, {"precision": "fp4"}, {"trainer_precision": "int8"},
        {"top_k": -1}, {"top_p": 0.0}, {"top_p": 1.5}, {"staleness": -1}, {"updates_per_batch": 0}, {"anchor": "old"},
    ):
        with pytest.raises(ValueError):
            OffPolicyConfig(**kwargs)
