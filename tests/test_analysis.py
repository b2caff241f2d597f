"""The replay's per-token analysis (drpo_sim.analysis), checked against direct NumPy formulas."""

import dataclasses

import numpy as np
import pytest
import torch

from drpo_sim import analysis, objectives
from drpo_sim.config import REPLAY_OBJECTIVES
from drpo_sim.tokens import TokenBatch


def make_batch(n=20000, seed=0, masked_out=0.1, steps=3):
    rng = np.random.default_rng(seed)
    logp_b = np.log(rng.beta(0.3, 0.3, n).clip(1e-7, 1.0))
    logp_b[:5] = np.log([0.01, 1.0, 1e-6, 0.5, 0.2])  # bin edges: mu on an edge goes to the lower bin
    logp = np.minimum(logp_b + rng.normal(0, 0.2, n), 0.0)
    adv = rng.choice([-1.5, -0.3, 0.0, 0.4, 2.0], n)
    mask = rng.random(n) >= masked_out
    return TokenBatch.from_arrays(logp=logp, logp_behavior=logp_b, advantage=adv, mask=mask,
                                  sample_id=np.arange(n) // 10, group_id=np.arange(n) // 80,
                                  position=np.arange(n) % 10, step=np.arange(n) * steps // n)


def assert_quantiles(x, got, levels, tol=0.01):
    """Each value's rank in ``x``, within one bin's width (0.8% of it), is its level to ``tol``."""
    for v, q in zip(got, levels):
        lo, hi = v - 0.008 * abs(v) - 1e-30, v + 0.008 * abs(v) + 1e-30
        assert np.mean(x < lo) - tol <= q <= np.mean(x <= hi) + tol, (v, q)


def split(batch, parts):
    cuts = np.linspace(0, len(batch), parts + 1).astype(int)
    return [TokenBatch.from_arrays(**{k: v[a:b] for k, v in batch.columns.items()})
            for a, b in zip(cuts[:-1], cuts[1:])]


def test_regions_and_gradient_mass_match_the_registry_on_cpu():
    b = make_batch()
    res = analysis.replay([b])
    keep = b.mask
    lp, lb, a = b.logp[keep], b.logp_behavior[keep], b.advantage[keep]
    mu = np.exp(lb)
    mu_bin = np.searchsorted(analysis.MU_EDGES[1:-1], mu, side="left")
    r = np.exp(lp - lb)
    assert list(res.objectives["objective"]) == list(REPLAY_OBJECTIVES)  # the default objectives
    for name in REPLAY_OBJECTIVES:
        w = objectives.get(name).weight(lp, lb, a)
        reg = objectives.Regions.from_weight(w)
        row = res.objectives.set_index("objective").loc[name]
        assert row["tokens"] == keep.sum()
        for region in ("masked", "attenuated", "corrective", "amplified"):
            assert row[f"{region}_frac"] == pytest.approx(getattr(reg, region).mean(), abs=1e-12), (name, region)
        assert row["unit_frac"] == pytest.approx((w == 1).mean(), abs=1e-12)
        mass = np.abs(a * r * w).sum() / np.abs(a * r).sum()
        assert row["grad_mass_share"] == pytest.approx(mass, rel=1e-10)
        assert row["weight_min"] == pytest.approx(w.min()) and row["weight_max"] == pytest.approx(w.max())
        rare = mu <= analysis.RARE_MU
        assert row["rare_tokens"] == rare.sum()
        assert row["rare_masked_frac"] == pytest.approx(reg.masked[rare].mean(), abs=1e-12)
        # one (mu bin, sign) cell, exactly
        reg_table = res.regions
        d = reg_table[(reg_table["objective"] == name) & (reg_table["mu_bin"] == 4) & (reg_table["adv_sign"] == "A<0")]
        sel = (mu_bin == 4) & (a < 0)
        assert int(d["tokens"].iloc[0]) == sel.sum()
        assert d["masked_frac"].iloc[0] == pytest.approx(reg.masked[sel].mean(), abs=1e-12)
        assert d["weight_mean"].iloc[0] == pytest.approx(w[sel].mean(), rel=1e-10)


def test_mismatch_table_matches_numpy_on_cpu():
    b = make_batch(n=50000, masked_out=0.0)
    res = analysis.replay([b])
    mu, pi = np.exp(b.logp_behavior), np.exp(b.logp)
    mu_bin = np.searchsorted(analysis.MU_EDGES[1:-1], mu, side="left")
    m = res.mismatch
    assert m["tokens"].sum() == len(b)
    assert mu[3] == 0.5 and m.loc[mu_bin[3], "mu_high"] == 0.5  # bins are (low, high]
    assert mu[1] == 1.0 and m.loc[mu_bin[1], "mu_high"] == 1.0
    for k in np.unique(mu_bin):
        sel = mu_bin == k
        row = m.iloc[k]
        assert row["tokens"] == sel.sum()
        assert row["ratio_mean"] == pytest.approx((pi / mu)[sel].mean(), rel=1e-9)
        assert row["abs_shift_mean"] == pytest.approx(np.abs(pi - mu)[sel].mean(), rel=1e-9)
        assert row["abs_shift_max"] == pytest.approx(np.abs(pi - mu)[sel].max(), rel=1e-9)
        if sel.sum() > 2000:  # histogram quantiles: the data's CDF at them is the quantile's level
            got = row[["ratio_q05", "ratio_q50", "ratio_q95"]].to_numpy(float)
            assert_quantiles(np.log(pi[sel] / mu[sel]), np.log(got), (0.05, 0.5, 0.95))
    assert res.totals["rare_share"] == pytest.approx((mu <= 0.01).mean())


def test_streaming_in_pieces_gives_the_same_tables_on_cpu():
    b = make_batch()
    whole = analysis.replay([b])
    pieces = analysis.replay(split(b, 7))
    for table in ("mismatch", "regions", "objectives", "by_step"):
        a, c = getattr(whole, table), getattr(pieces, table)
        num = a.select_dtypes("number").columns
        np.testing.assert_allclose(a[num].to_numpy(float), c[num].to_numpy(float), rtol=1e-9, atol=1e-15, err_msg=table)
    assert pieces.totals["batches"] == 7


def test_masked_out_tokens_are_counted_not_analysed_on_cpu():
    b = make_batch(masked_out=0.3)
    # garbage on masked-out tokens must not leak into any statistic
    lp = b.logp.copy()
    lp[~b.mask] = np.nan
    res = analysis.replay([dataclasses.replace(b, logp=lp)])
    assert res.totals["excluded_tokens"] == (~b.mask).sum()
    assert res.totals["tokens"] == b.mask.sum()
    assert np.isfinite(res.objectives["grad_mass_share"]).all()
    assert (res.objectives["nonfinite_weights"] == 0).all()


def test_by_step_and_params_on_cpu():
    b = make_batch(steps=4)
    objs = analysis.objective_specs(["drpo", "dppo_tv"], {"drpo": {"delta": 0.2}})
    res = analysis.replay([b], objs)
    assert list(res.by_step["step"]) == [0, 1, 2, 3]
    assert res.by_step["tokens"].sum() == b.mask.sum()
    assert list(res.objectives["objective"]) == ["drpo", "dppo_tv"]
    assert res.objectives.loc[0, "params"] == "delta=0.2"
    # DRPO with delta < 1 has corrective tokens (claim 3); its weight stays in [1 - 1/delta, 1 + 1/delta]
    row = res.objectives.loc[0]
    assert row["corrective_frac"] > 0
    assert 1 - 1 / 0.2 <= row["weight_min"] and row["weight_max"] <= 1 + 1 / 0.2


def test_float_bins_quantiles_on_cpu():
    bins = analysis.FloatBins(7)
    rng = np.random.default_rng(3)
    for x in (rng.normal(size=200000), rng.standard_cauchy(200000) * 1e-4,
              np.r_[np.zeros(1000), rng.exponential(size=1000)]):
        counts = torch.bincount(bins.index(torch.from_numpy(x)), minlength=bins.size).numpy()
        assert_quantiles(x, bins.quantiles(counts, (0.05, 0.5, 0.95)), (0.05, 0.5, 0.95))
    counts = torch.bincount(bins.index(torch.tensor([np.inf, -np.inf, np.nan, 1.0])), minlength=bins.size).numpy()
    assert bins.nonfinite(counts) == 3
    assert np.isnan(bins.quantiles(np.zeros(bins.size))).all()


def test_bad_input_errors_on_cpu():
    b = make_batch(n=100)
    with pytest.raises(ValueError, match="empty"):
        analysis.replay([])
    none = dataclasses.replace(b, mask=np.zeros(len(b), bool))
    with pytest.raises(ValueError, match="mask false"):
        analysis.replay([none])
    with pytest.raises(ValueError, match="not replayed"):
        analysis.objective_specs(["drpo"], {"spo": {"eps": 1.0}})
    with pytest.raises(ValueError, match="unknown|valid"):
        analysis.objective_specs(["nope"])
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no CUDA"):
            analysis.ReplayAccumulator(device="cuda")
    with pytest.raises(ValueError, match="step column"):
        acc = analysis.ReplayAccumulator()
        acc.update(b)
        acc.update(dataclasses.replace(b, step=None))
