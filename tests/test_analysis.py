"""The replay's per-token analysis (drpo_sim.analysis), checked against direct NumPy formulas."""

import dataclasses
import threading

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


# ---------------------------------------------------------------------------------------------
# three policies (logp_old) and sequence-level objectives (sample_id)

#: One objective of each kind: anchored to pi_old, sequence-level, a token and two sequence corrections.
THREE_POLICY = {"minirl": {}, "decoupled_ppo": {}, "gspo": {}, "grpo": {"correction": "tis", "cap": 2},
                "drpo": {"correction": "seq_mis", "cap": 1.2}, "spo": {"correction": "geo_mis", "upper": 1.02}}


def make_sequences(n_seq=60, steps=3, seed=1):
    """Sequences of 1 to 40 tokens under three policies, ``n_seq / steps`` per step, masked-out tokens
    inside them. ``sample_id`` is unique only within a step, and counts down in odd steps, so a step's
    last sample and the next step's first share an id: only the step tells them apart."""
    rng = np.random.default_rng(seed)
    length = rng.integers(1, 41, n_seq)
    length[n_seq // 2] = 40
    per = n_seq // steps
    seq_step = np.arange(n_seq) // per
    local = np.arange(n_seq) % per
    seq_sid = np.where(seq_step % 2 == 0, local, per - 1 - local)
    seq = np.repeat(np.arange(n_seq), length)
    n = len(seq)
    logp_b = np.log(rng.beta(0.5, 0.5, n).clip(1e-6, 1.0))
    logp_old = np.minimum(logp_b + rng.normal(0, 0.05, n), 0.0)  # the engine's gap
    logp = np.minimum(logp_old + rng.normal(0, 0.1, n), 0.0)  # the updates' drift
    adv = rng.choice([-1.0, -0.5, 0.5, 1.0], n_seq)[seq]
    pos = np.arange(n) - np.repeat(np.cumsum(length) - length, length)
    return TokenBatch.from_arrays(logp=logp, logp_behavior=logp_b, logp_old=logp_old, advantage=adv,
                                  mask=rng.random(n) >= 0.1, sample_id=seq_sid[seq], group_id=seq_sid[seq] // 4,
                                  position=pos, step=seq_step[seq])


def by_hand(batch, objs):
    """Each objective's weight on the kept tokens, from the registry, sequences told apart by (step, sample_id)."""
    keep = batch.mask
    ids = batch.step[keep] * 10_000 + batch.sample_id[keep]
    cols = (batch.logp[keep], batch.logp_behavior[keep], batch.advantage[keep])
    return {n: o.weight(*cols, logp_old=batch.logp_old[keep], sample_id=ids) for n, o in objs.items()}


def test_three_policy_and_sequence_objectives_match_the_registry_on_cpu():
    b = make_sequences()
    objs = analysis.objective_specs(list(THREE_POLICY), THREE_POLICY)
    assert objs["grpo"] == objectives.get("grpo", correction="tis", cap=2)
    res = analysis.replay([b], objs)
    keep = b.mask
    a, r = b.advantage[keep], np.exp(b.logp[keep] - b.logp_behavior[keep])
    table = res.objectives.set_index("objective")
    for name, w in by_hand(b, objs).items():
        reg, row = objectives.Regions.from_weight(w), table.loc[name]
        assert row["tokens"] == keep.sum()
        for region in ("masked", "attenuated", "corrective", "amplified"):
            assert row[f"{region}_frac"] == pytest.approx(getattr(reg, region).mean(), abs=1e-12), (name, region)
        assert row["grad_mass_share"] == pytest.approx(np.abs(a * r * w).sum() / np.abs(a * r).sum(), rel=1e-10)
        assert row["weight_min"] == pytest.approx(w.min()) and row["weight_max"] == pytest.approx(w.max())
    # every kind is at work on these tokens: GSPO and the sequence masks drop whole sequences
    assert 0.1 < table.loc["gspo", "masked_frac"] < 0.9 and 0 < table.loc["drpo", "masked_frac"] < 1
    assert table.loc["grpo", "params"] == "eps_low=0.2, eps_high=0.28, correction=tis, cap=2"
    n_seq = len(np.unique(b.step[keep] * 10_000 + b.sample_id[keep]))
    assert res.totals["sequences"] == n_seq and res.totals["sequence_key"] == ["step", "sample_id"]
    # ids unique only within a step: merging a step's last sample with the next step's first changes GSPO
    merged = objs["gspo"].weight(b.logp[keep], b.logp_behavior[keep], a, sample_id=b.sample_id[keep])
    assert not np.array_equal(merged, by_hand(b, objs)["gspo"])


def split_at(batch, cuts):
    edges = [0, *cuts, len(batch)]
    return [TokenBatch.from_arrays(**{k: v[lo:hi] for k, v in batch.columns.items()})
            for lo, hi in zip(edges[:-1], edges[1:])]


def test_a_sequence_split_across_batches_gives_the_whole_sequence_result_on_cpu():
    b = make_sequences()
    objs = analysis.objective_specs(list(THREE_POLICY), THREE_POLICY)
    starts = np.flatnonzero(np.r_[True, b.position[1:] == 0])
    longest = starts[np.argmax(np.diff(np.r_[starts, len(b)]))]
    # cuts one token into sequences, twice inside the longest (a batch within one sequence), and an empty batch
    cuts = sorted([*(starts[5::9] + 1), longest + 7, longest + 30, longest + 30])
    pieces = split_at(b, cuts)
    assert any(len(p) == 0 for p in pieces)
    whole, streamed = analysis.replay([b], objs), analysis.replay(pieces, objs)
    for table in ("mismatch", "regions", "objectives", "by_step"):
        x, y = getattr(whole, table), getattr(streamed, table)
        num = x.select_dtypes("number").columns
        np.testing.assert_allclose(x[num].to_numpy(float), y[num].to_numpy(float), rtol=1e-12, atol=1e-15,
                                   err_msg=table)
    assert streamed.totals["sequences"] == whole.totals["sequences"] and streamed.totals["batches"] == len(pieces)
    # the cuts matter: each piece evaluated on its own would give GSPO other weights
    naive = np.concatenate([w["gspo"] for w in (by_hand(p, {"gspo": objs["gspo"]}) for p in pieces if len(p))])
    assert not np.allclose(naive, by_hand(b, objs)["gspo"])


def test_one_sequence_longer_than_every_batch_on_cpu():
    b = make_sequences(n_seq=1, steps=1)
    b = split_at(b, [len(b)])[0]
    objs = analysis.objective_specs(["gspo", "drpo"], {"drpo": {"correction": "seq_tis", "cap": 1.05}})
    whole = analysis.replay([b], objs)
    streamed = analysis.replay(split_at(b, range(3, len(b), 3)), objs)
    assert streamed.totals["sequences"] == 1
    np.testing.assert_allclose(whole.objectives.select_dtypes("number").to_numpy(float),
                               streamed.objectives.select_dtypes("number").to_numpy(float), rtol=1e-12)


def test_three_policy_errors_on_cpu():
    b = make_sequences(n_seq=6, steps=1)
    old_log = dataclasses.replace(b, logp_old=None)
    objs = analysis.objective_specs(["drpo", "minirl", "grpo"], {"grpo": {"correction": "tis"}})
    with pytest.raises(objectives.MissingColumn, match=r"^minirl, grpo \(correction tis\) need the column 'logp_old'"):
        analysis.replay([old_log], objs)
    analysis.replay([old_log])  # the default objectives need no logp_old
    acc = analysis.ReplayAccumulator(analysis.objective_specs(["decoupled_ppo"]))
    acc.update(b)
    with pytest.raises(ValueError, match="decoupled_ppo needs the column 'logp_old'.*--objectives"):
        acc.update(old_log)  # every batch, not only the first
    # a sample whose tokens are not one after another cannot be a sequence
    order = np.r_[np.arange(3), len(b) - 1, np.arange(3, len(b) - 1)]
    shuffled = TokenBatch.from_arrays(**{k: v[order] for k, v in b.columns.items()})
    assert shuffled.sample_id[3] != shuffled.sample_id[4]
    with pytest.raises(ValueError, match=r"\(gspo\) need .* one after another.* step 0, sample_id 0 come in 2 sep"):
        analysis.replay([shuffled], analysis.objective_specs(["gspo", "drpo"]))
    analysis.replay([shuffled])  # token-level objectives do not mind the order


def _accumulator_state(acc):
    """Every table of an accumulator, as NumPy, and its per-step sums."""
    state = {k: v.cpu().numpy().copy() for k, v in vars(acc).items() if isinstance(v, torch.Tensor)}
    state["steps"] = {s: (st.tokens, st.abs_shift_sum, st.abs_shift_max, st.log_ratio_sum, st.masked.tolist())
                      for s, st in acc.steps.items()}
    return state


def _fold_all(batches, objs, **kwargs):
    acc = analysis.ReplayAccumulator(objs, **kwargs)
    for b in batches:
        acc.update(b)
    acc.finish()
    return acc


def test_blocks_of_the_fold_change_no_bit_on_cpu(monkeypatch):
    """The fold works through blocks of FOLD_BLOCK tokens, its float sums accumulated token by token in
    order: blocks of 7 and 4,099 tokens give the tables of one block per batch (the whole-batch
    pass) bit for bit, with the elementwise, three-policy and sequence objectives together."""
    objs = {**analysis.objective_specs(None), "gspo": objectives.get("gspo"), "minirl": objectives.get("minirl"),
            "tis": objectives.get("grpo", correction="tis", cap=1.5)}
    seq = make_sequences(n_seq=90)
    batches = split_at(seq, [500, 1100])
    states = {}
    for block in (7, 4099, 1 << 30):
        monkeypatch.setattr(analysis, "FOLD_BLOCK", block)
        states[block] = _accumulator_state(_fold_all(batches, objs))
    whole = states.pop(1 << 30)
    for block, state in states.items():
        assert state.keys() == whole.keys()
        for name, value in whole.items():
            if name == "steps":
                assert state[name] == value, block
            else:
                np.testing.assert_array_equal(state[name], value, err_msg=f"{name}, blocks of {block}")


def test_fused_kernels_give_the_registrys_tables_to_a_few_ulps_on_cpu():
    """kernels="fused": counts equal but for tokens whose weight is within the kernels' bound of 0 or
    1 (none here), sums to 1e-12 relative; an objective that is not elementwise stays eager."""
    objs = {**analysis.objective_specs(["pg_is", "drpo", "dppo_kl"]), "gspo": objectives.get("gspo")}
    seq = make_sequences(n_seq=40)
    eager = _fold_all([seq], objs)
    fused_acc = _fold_all([seq], objs, kernels="fused")
    assert fused_acc.kernel is not None and set(fused_acc.kernel.objectives) == {"pg_is", "drpo", "dppo_kl"}
    a, b = _accumulator_state(eager), _accumulator_state(fused_acc)
    for name in ("regions", "tokens", "log_ratio_hist", "shift_hist"):
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)
    for name in ("mass", "weight_sum", "weight_min", "weight_max"):
        np.testing.assert_allclose(a[name], b[name], rtol=1e-12, atol=1e-300, err_msg=name)
    # a weight histogram bin is 3% wide: a few ulps move at most a token across an edge
    assert np.abs(a["weight_hist"] - b["weight_hist"]).sum() <= 2
    with pytest.raises(ValueError, match=r"kernels must be one of \['eager', 'fused'\], got 'jit'"):
        analysis.ReplayAccumulator(objs, kernels="jit")


def test_prefetched_reader_keeps_order_and_raises_where_the_reader_failed_on_cpu():
    def produce(n, fail_at=None):
        for i in range(n):
            if i == fail_at:
                raise ValueError("log.parquet: row group 3 is corrupt; re-export the log")
            yield i

    assert list(analysis.prefetched(produce(50), 2)) == list(range(50))
    assert list(analysis.prefetched(produce(5), 0)) == list(range(5))
    got = []
    with pytest.raises(ValueError, match="^log.parquet: row group 3 is corrupt; re-export the log$"):
        for item in analysis.prefetched(produce(10, fail_at=3), 2):
            got.append(item)
    assert got == [0, 1, 2]
    # a consumer that stops early stops the reader too (no thread left behind)
    stream = analysis.prefetched(produce(10**9), 2)
    assert next(stream) == 0
    stream.close()
    assert not any(t.name == "drpo-sim-prefetch" and t.is_alive() for t in threading.enumerate())
    # the replay reads ahead or in line to the same tables
    b = make_batch()
    ahead, inline = analysis.replay(split(b, 5), prefetch=3), analysis.replay(split(b, 5), prefetch=0)
    for table in ("mismatch", "regions", "objectives", "by_step"):
        assert getattr(ahead, table).equals(getattr(inline, table)), table
