"""drpo_sim.offpolicy: number formats, the engine's channels (noise, bias, precision, truncation),
the configuration's checks, and the noise presets' calibration against the published sizes."""

import numpy as np
import pytest

from drpo_sim import offpolicy
from drpo_sim.config import NOISE_PRESETS
from drpo_sim.envs import zipf_logits
from drpo_sim.offpolicy import OffPolicyConfig, engine_logp, round_to_format, truncate, unit_roundoff
from drpo_sim.policies import log_softmax

# Machine epsilon (spacing of floats just above 1) from each format's definition:
# 2**-(mantissa bits): bf16 7, fp16 10, fp8 e4m3 3, fp8 e5m2 2 (OCP FP8 spec, IEEE 754).
FORMAT_EPS = {"fp32": 2.0**-23, "bf16": 2.0**-7, "fp16": 2.0**-10, "fp8_e4m3": 2.0**-3, "fp8_e5m2": 2.0**-2}
FORMAT_MAX = {"fp16": 65504.0, "fp8_e4m3": 448.0, "fp8_e5m2": 57344.0}


# ---------------------------------------------------------------------------------------------
# number formats


@pytest.mark.parametrize("fmt", list(FORMAT_EPS))
def test_rounding_has_the_formats_machine_epsilon_on_cpu(fmt):
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


@pytest.mark.parametrize("fmt", ["bf16", "fp16", "fp8_e4m3", "fp8_e5m2"])
def test_rounding_is_torchs_conversion_bit_for_bit_on_cpu(fmt):
    """The NumPy rounding (round_float32) against torch's ``x.to(dtype)``: every float32 within the
    format's range whose dropped bits sit at or next to a rounding boundary (every sign, exponent
    and kept mantissa), random values, signed zeros and NaN."""
    import torch

    dtype = offpolicy.PRECISIONS[fmt]
    fi = torch.finfo(dtype)
    drop = 23 - round(-np.log2(fi.eps))
    kept = np.arange(1 << (32 - drop), dtype=np.uint32) << np.uint32(drop)
    low = np.array([0, 1, (1 << (drop - 1)) - 1, 1 << (drop - 1), (1 << (drop - 1)) + 1, (1 << drop) - 1], np.uint32)
    x = (kept[:, None] | low[None, :]).ravel().view(np.float32)
    x = x[np.isfinite(x) & (np.abs(x) <= fi.max)]
    rand = np.random.default_rng(0).standard_normal(100_000).astype(np.float32) * np.float32(min(fi.max / 4, 1e3))
    rand = np.clip(rand, -fi.max, fi.max)  # round_to_format saturates before rounding
    x = np.concatenate([x, rand, np.array([0.0, -0.0, np.nan], np.float32)])
    ref = torch.from_numpy(x).to(dtype).to(torch.float32).numpy()
    got = offpolicy.round_float32(x, dtype)
    assert np.array_equal(np.isnan(got), np.isnan(ref))
    ok = ~np.isnan(ref)
    assert np.array_equal(got[ok].view(np.uint32), ref[ok].view(np.uint32))


def test_rounding_saturates_and_fp64_is_identity_on_cpu():
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


def test_every_channel_at_zero_is_exactly_on_policy_on_cpu():
    z = _zipf()
    for cfg in (OffPolicyConfig(), OffPolicyConfig(noise_dist="student_t"), OffPolicyConfig(top_k=0, top_p=1.0),
                OffPolicyConfig(anchor="recompute"), OffPolicyConfig(precision="bf16", trainer_precision="bf16")):
        assert cfg.on_policy
        np.testing.assert_array_equal(engine_logp(z, cfg), offpolicy.trainer_logp(z, cfg))
    assert not OffPolicyConfig(staleness=1).on_policy and not OffPolicyConfig(precision="bf16").on_policy


@pytest.mark.parametrize("dist", ["gaussian", "student_t"])
def test_logit_noise_has_the_requested_size_on_cpu(dist):
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


def test_engine_bias_is_a_fixed_offset_of_the_requested_size_on_cpu():
    v, sigma = 65536, 0.2
    z = _zipf(v, 1)
    cfg = OffPolicyConfig(bias_std=sigma)
    bias = np.random.default_rng(0).standard_normal(z.shape)
    d = engine_logp(z, cfg, bias=bias) - log_softmax(z)
    # exactly the offset, up to the normaliser
    np.testing.assert_allclose(d - d[0, 0], sigma * (bias - bias[0, 0]), atol=1e-12)
    assert (d - np.median(d)).std() == pytest.approx(sigma, rel=0.03)
    with pytest.raises(ValueError, match="bias"):
        engine_logp(z, cfg)
    assert not cfg.on_policy and OffPolicyConfig(bias_std=0.0).on_policy


def test_engine_precision_error_is_within_the_formats_roundoff_on_cpu():
    z = _zipf(1024, 1) * 3  # logits down to about -23
    for fmt in ("bf16", "fp16", "fp8_e4m3", "fp8_e5m2"):
        cfg = OffPolicyConfig(precision=fmt)
        zr = round_to_format(z, fmt)
        assert np.all(np.abs(zr - z) <= unit_roundoff(fmt) * np.abs(z) + 1e-300)
        np.testing.assert_allclose(engine_logp(z, cfg), log_softmax(zr))


def test_top_k_keeps_exactly_k_tokens_renormalised_on_cpu():
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
def test_top_p_keeps_the_smallest_nucleus_on_cpu(top_p):
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


def test_config_rejects_bad_channels():
    for kwargs in (
        {"noise_std": -0.1}, {"bias_std": float("nan")}, {"noise_dist": "cauchy"}, {"precision": "fp4"},
        {"trainer_precision": "int8"}, {"top_k": -1}, {"top_p": 0.0}, {"top_p": 1.5}, {"staleness": -1},
        {"updates_per_batch": 0}, {"anchor": "old"},
    ):
        with pytest.raises(ValueError):
            OffPolicyConfig(**kwargs)


# ---------------------------------------------------------------------------------------------
# calibration of the noise presets


def test_precision_mismatch_grows_with_coarser_formats_on_cpu():
    stats = offpolicy.calibration(4096, presets={f: {"precision": f} for f in ("fp16", "bf16", "fp8_e4m3", "fp8_e5m2")})
    tv = [stats[f]["tv"] for f in ("fp16", "bf16", "fp8_e4m3", "fp8_e5m2")]
    assert tv == sorted(tv) and tv[0] > 0


def test_noise_presets_match_published_mismatch_sizes_on_cpu():
    """docs/reference.md ("Published sizes"): mean abs(pi - mu) below ~0.005 in healthy runs; BF16
    drift ~ -1e-3 nats per token; the ratio spreads over roughly [0.8, 1.3] for mu < 0.2 (fp8-like).
    ``calibration`` measures :data:`drpo_sim.config.NOISE_PRESETS` by default."""
    s = offpolicy.calibration(32768)
    assert set(s) == set(NOISE_PRESETS) == {"bf16", "fp8"}
    assert s["bf16"]["shift_mean"] < 0.005 and s["fp8"]["shift_mean"] < 0.005
    assert -3e-3 < s["bf16"]["logratio_drift"] < -3e-4
    assert 0.65 < s["fp8"]["ratio_q05_mu_lt_0.2"] < 0.85 and 1.2 < s["fp8"]["ratio_q95_mu_lt_0.2"] < 1.4
    assert s["bf16"]["ratio_q95_mu_lt_0.2"] < s["fp8"]["ratio_q95_mu_lt_0.2"]
