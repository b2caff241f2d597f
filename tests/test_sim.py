"""drpo_sim.sim, the training loop: the gradient, invariances, determinism, exact against sampled,
each channel's effect, sampling, and cells of a sweep."""

import dataclasses

import numpy as np
import pandas as pd
import pytest
import torch
from sim_reference import ReferenceSimulation

from drpo_sim import objectives, stats
from drpo_sim.advantages import reward_scales
from drpo_sim.envs import zipf_logits
from drpo_sim.offpolicy import trainer_logp, truncate
from drpo_sim.policies import log_softmax
from drpo_sim.sim import (
    METRICS,
    TOPK,
    SimConfig,
    Simulation,
    engine_topk,
    gather,
    logit_gradient,
    run,
    run_cell,
    sample_tokens,
    simulate,
    topk_columns,
    with_param_columns,
)
from drpo_sim.tokens import concat

ALL = objectives.available()


def _neutral_on_policy(name: str) -> bool:
    """Whether the objective's weight is exactly 1 at r = 1 for every advantage."""
    adv = np.array([-2.0, -0.5, 0.0, 0.3, 4.0])
    lp = np.log(np.array([0.9, 0.5, 0.1, 0.01, 1e-4]))
    zero = np.zeros_like(lp)  # on-policy: pi_old = mu = pi, and every divergence is 0
    return bool(np.all(objectives.get(name).weight(lp, lp, adv, logp_old=lp, topk_tv=zero, topk_kl=zero) == 1.0))


# drpo_kl's k1 penalty has a per-token gradient at pi = mu (its weight there is 1 + sign(A)/delta,
# see its docstring): on-policy it is not plain policy gradient, so it is left out of the invariance.
NEUTRAL = [n for n in ALL if _neutral_on_policy(n)]


def test_only_the_k1_ablation_is_not_neutral_on_policy_on_cpu():
    assert sorted(set(ALL) - set(NEUTRAL)) == ["drpo_kl"]


def cfg(**flat) -> SimConfig:
    base = {"vocab_size": 64, "steps": 12, "group_size": 8, "lr": 0.1}
    base.update(flat)
    return SimConfig.from_flat(base)


# ---------------------------------------------------------------------------------------------
# the gradient


@pytest.mark.parametrize("mode", objectives.AGG_MODES)
def test_logit_gradient_matches_autograd_of_policy_loss_on_cpu(mode):
    """The simulator's closed-form chain rule equals torch autograd of the registry's loss."""
    rng = np.random.default_rng(0)
    n, s, v, b, t = 2, 3, 6, 5, 4
    z = rng.normal(size=(n, s, v))
    zb = z + 0.4 * rng.normal(size=(n, s, v))
    rows = np.arange(n)[:, None, None] * s + rng.integers(0, s, size=(n, b, t))
    tok = rng.integers(0, v, size=(n, b, t))
    adv = np.broadcast_to(rng.normal(size=(n, b, 1)), (n, b, t))
    zo = z + 0.2 * rng.normal(size=(n, s, v))  # the trainer's recomputed pi_old
    partial = rng.random((n, b, t)) < 0.8
    partial[:, 0] = False  # an empty sequence
    for name in ALL:
        obj = objectives.get(name)
        # a sequence-level ratio reads a sequence's valid tokens, which the NumPy call below has no
        # mask to tell: whole sequences are kept or dropped for them
        mask = np.broadcast_to(partial.any(-1, keepdims=True), partial.shape) if obj.per_sequence else partial
        lp, lpb = gather(log_softmax(z), rows, tok), gather(log_softmax(zb), rows, tok)
        lpo = gather(log_softmax(zo), rows, tok)
        cols = {"logp_old": lpo, "topk_tv": np.abs(np.exp(lp) - np.exp(lpb)) * 2, "topk_kl": (lp - lpb) ** 2}
        grad_logp = obj.grad_logp(lp, lpb, adv, **cols)
        coef = objectives.aggregation_weights(mask, mode, horizon=t) * np.where(mask, grad_logp, 0.0)
        grad = logit_gradient(coef, rows, tok, np.exp(log_softmax(z)))
        zt = torch.tensor(z, requires_grad=True)
        lpt = torch.log_softmax(zt, -1).reshape(-1)[torch.as_tensor(rows * v + tok)]
        total = sum(
            objectives.policy_loss(
                obj, lpt[i], torch.tensor(lpb[i]), torch.tensor(adv[i]), torch.tensor(mask[i]), agg_mode=mode,
                horizon=t, **{k: torch.tensor(c[i]) for k, c in cols.items()},
            )[0]
            for i in range(n)
        )
        total.backward()
        np.testing.assert_allclose(grad, -zt.grad.numpy(), atol=1e-12, err_msg=name)


def test_aggregation_weights_reproduce_aggregate_on_cpu():
    rng = np.random.default_rng(1)
    v = rng.normal(size=(4, 5))
    m = rng.random((4, 5)) < 0.6
    m[1] = False
    for mode in objectives.AGG_MODES:
        c = objectives.aggregation_weights(m, mode, horizon=7)
        assert np.sum(c * v) == pytest.approx(float(objectives.aggregate(v, m, mode, horizon=7)))
    # leading axes are independent batches
    stacked = objectives.aggregation_weights(np.stack([m, m[::-1]]), "seq-mean-token-mean")
    np.testing.assert_allclose(stacked[1], objectives.aggregation_weights(m[::-1], "seq-mean-token-mean"))


# ---------------------------------------------------------------------------------------------
# on-policy invariance


@pytest.mark.parametrize(
    "flat",
    [
        {},
        {"env": "tabular", "vocab_size": 16, "n_prompts": 3, "horizon": 3, "group_size": 4},
        {"policy": "shared", "n_features": 4, "optimizer": "sgd", "grad_clip": 0.5},
        {"env": "tabular", "vocab_size": 16, "reward": "match", "std_norm": True, "agg_mode": "seq-mean-token-mean",
         "prompts_per_step": 4},
        {"mode": "exact"},
        {"precision": "fp8_e4m3", "trainer_precision": "fp8_e4m3"},  # the same rounding on both sides
    ],
)
def test_on_policy_every_objective_gives_the_same_trajectory_on_cpu(flat):
    """With every channel off and one update per batch, r = 1 and w = 1 for every token: every
    objective must follow the same trajectory, bit for bit."""
    c = cfg(**flat)
    assert c.offpolicy.on_policy
    # exact mode has no sequences: the sequence-level objectives are refused there (tested below)
    names = [n for n in NEUTRAL if c.train.mode == "sampled" or not objectives.get(n).per_sequence]
    df = simulate(c, names, [0, 1, 2])
    ref = df[df.method == "pg_is"].reset_index(drop=True)
    assert ref.expected_reward.iloc[-1] > ref.initial_reward.iloc[-1]  # it learns
    assert (df.shift_max == 0).all() and (df.tv_mean == 0).all() and (df.masked_frac == 0).all()
    assert (df.weight_min == 1).all() and (df.weight_max == 1).all()
    for name in names:
        got = df[df.method == name].reset_index(drop=True)
        for col in ("expected_reward", "grad_norm", "entropy", "sample_reward"):
            np.testing.assert_array_equal(got[col].to_numpy(), ref[col].to_numpy(), err_msg=f"{name}: {col}")


def test_the_simulators_topk_divergence_is_the_engines_top_tokens_against_the_trainer_on_cpu():
    """At most TOPK tokens: the exact TV and KL(mu || pi) of each state; more: the engine's TOPK
    most likely tokens and the rest as one bucket."""
    rng = np.random.default_rng(2)
    for v in (12, 300):
        zmu = rng.normal(size=(2, 3, v)) * 2
        logmu = zmu - np.logaddexp.reduce(zmu, -1, keepdims=True)
        zpi = zmu + 0.3 * rng.normal(size=zmu.shape)
        logpi = zpi - np.logaddexp.reduce(zpi, -1, keepdims=True)
        cols = topk_columns(objectives.get("dppo_topk_tv"), logpi, engine_topk(logmu))
        assert set(cols) == {"topk_tv"} and cols["topk_tv"].shape == (2, 3, 1)
        mu, pi = np.exp(logmu), np.exp(logpi)
        if v <= TOPK:
            np.testing.assert_allclose(cols["topk_tv"][..., 0], 0.5 * np.abs(mu - pi).sum(-1), rtol=1e-12)
        else:
            top = np.argsort(-logmu, -1)[..., :TOPK]
            p, q = np.take_along_axis(mu, top, -1), np.take_along_axis(pi, top, -1)
            by_hand = 0.5 * (np.abs(p - q).sum(-1) + np.abs(p.sum(-1) - q.sum(-1)))
            np.testing.assert_allclose(cols["topk_tv"][..., 0], by_hand, rtol=1e-10)
        kl = topk_columns(objectives.get("dppo_topk_kl"), logpi, engine_topk(logmu))["topk_kl"]
        assert (kl >= 0).all()
    assert topk_columns(objectives.get("drpo"), logpi, None) == {}


def test_exact_mode_refuses_a_sequence_level_ratio_on_cpu():
    with pytest.raises(ValueError, match="gspo.* takes a sequence-level ratio, but exact mode .* use mode='sampled'"):
        simulate(cfg(mode="exact"), ["gspo"], [0])


def test_three_policy_objectives_read_the_recomputed_trainer_policy_on_cpu():
    """With the engine off by noise, decoupled PPO (PPO's clip on pi/pi_old, importance-weighted by
    pi_old/mu) differs from PPO on the rollout anchor; with the recompute anchor its gap is 1 and
    it is PPO on that anchor, bit for bit."""
    noisy = {"noise_std": 0.3, "updates_per_batch": 2, "lr": 0.5}
    df = simulate(cfg(**noisy), ["ppo", "decoupled_ppo"], [0, 1])
    curves = df.pivot_table(index=["seed", "step"], columns="method", values="expected_reward")
    assert not np.array_equal(curves["ppo"], curves["decoupled_ppo"])
    df = simulate(cfg(**noisy, anchor="recompute"), ["ppo", "decoupled_ppo"], [0, 1])
    curves = df.pivot_table(index=["seed", "step"], columns="method", values="expected_reward")
    np.testing.assert_array_equal(curves["ppo"], curves["decoupled_ppo"])


def test_any_channel_breaks_the_invariance():
    for flat in ({"noise_std": 0.3}, {"bias_std": 0.3}, {"precision": "fp8_e5m2"}, {"top_k": 8}, {"staleness": 2},
                 {"updates_per_batch": 4}):
        df = simulate(cfg(**flat, lr=0.5), ["pg_is", "dppo_tv", "spo"], [0, 1])
        curves = df.pivot_table(index=["seed", "step"], columns="method", values="expected_reward")
        assert not np.array_equal(curves["pg_is"], curves["spo"]), flat
        assert (df.shift_max > 0).any(), flat


# ---------------------------------------------------------------------------------------------
# determinism and seeds


def test_same_seed_same_table_and_seeds_do_not_interact():
    c = cfg(env="tabular", vocab_size=16, noise_std=0.2, noise_dist="student_t", staleness=1, updates_per_batch=2,
            policy="shared")
    a = run(c, "drpo", [3, 5, 9])
    b = run(c, "drpo", [3, 5, 9])
    pd.testing.assert_frame_equal(a, b)
    alone = run(c, "drpo", [5])
    pd.testing.assert_frame_equal(a[a.seed == 5].reset_index(drop=True), alone)
    other = run(c, "drpo", [4])
    assert not np.array_equal(other.expected_reward, alone.expected_reward)


REFERENCE_CASES = {
    "bandit": {"vocab_size": 256},
    "bandit, channels": {"vocab_size": 256, "noise_std": 0.1, "precision": "fp8_e4m3", "staleness": 2},
    "bandit, every channel": {"vocab_size": 256, "noise_std": 0.2, "noise_dist": "student_t", "bias_std": 0.1,
                              "precision": "bf16", "trainer_precision": "fp16", "top_p": 0.9, "staleness": 1,
                              "updates_per_batch": 2, "anchor": "recompute", "weight_decay": 0.01},
    "bandit, exact": {"vocab_size": 256, "mode": "exact"},
    "bandit, exact, channels": {"vocab_size": 256, "mode": "exact", "noise_std": 0.1, "top_k": 32,
                                "staleness": 1, "updates_per_batch": 2},
    "tabular": {"env": "tabular", "vocab_size": 32, "n_prompts": 4, "horizon": 3, "group_size": 4},
    "tabular, channels": {"env": "tabular", "vocab_size": 32, "n_prompts": 4, "horizon": 3, "group_size": 4,
                          "noise_std": 0.1, "precision": "fp8_e4m3", "staleness": 2, "prompts_per_step": 2,
                          "std_norm": True, "optimizer": "sgd", "lr": 0.5},
    "tabular, shared policy": {"env": "tabular", "vocab_size": 32, "n_prompts": 4, "horizon": 3, "group_size": 4,
                               "policy": "shared", "n_features": 4, "noise_std": 0.1, "updates_per_batch": 2},
    "tabular, blow-up": {"env": "tabular", "vocab_size": 32, "n_prompts": 4, "horizon": 3, "group_size": 4,
                         "optimizer": "sgd", "grad_clip": 0.0, "lr": 1e150, "weight_decay": 1.0, "noise_std": 0.3},
}


@pytest.mark.parametrize("method", ["drpo", "pg_is"])
@pytest.mark.parametrize("case", sorted(REFERENCE_CASES))
def test_blocked_step_is_the_reference_bit_for_bit_on_cpu(case, method):
    """The step works through the seeds block by block with fused, in-place passes (issue 18,
    item 4); for the same seeds it must give the result table and the token log of the plain
    whole-table step it replaced (``tests/sim_reference.py``), bit for bit, whatever the blocks."""
    c = cfg(**REFERENCE_CASES[case], steps=6)
    seeds = [0, 3, 4, 7, 11]
    obj = objectives.get(method)
    ref_log: list = []
    ref = ReferenceSimulation(c, obj, seeds, ref_log.append)
    ref_table = ref.table([ref.step(k) for k in range(1, 7)])
    for block in (None, 1, 2, 5):
        log: list = []
        sim = Simulation(c, obj, seeds, None if c.train.mode == "exact" else log.append, seed_block=block)
        table = sim.table([sim.step(k) for k in range(1, 7)])
        pd.testing.assert_frame_equal(table, ref_table, check_exact=True)
        for col in METRICS:
            assert np.array_equal(table[col].to_numpy(), ref_table[col].to_numpy(), equal_nan=True), (block, col)
        for k in sim.params:
            assert np.array_equal(sim.params[k], ref.params[k]), (block, k)
        if c.train.mode != "exact":
            assert len(log) == len(ref_log)
            for a, b in zip(log, ref_log, strict=True):
                for f in dataclasses.fields(a):
                    assert np.array_equal(getattr(a, f.name), getattr(b, f.name)), (block, f.name)
    if case == "tabular, blow-up":
        assert ref_table.nonfinite.any()  # the case exercises the freezing of non-finite seeds


def test_result_table_columns():
    df = simulate(cfg(steps=3), ["grpo", "drpo"], [0, 1], method_params={"drpo": {"delta": 2.5}})
    need = {"method", "seed", "step", "expected_reward", "tv_mean", "masked_frac", "corrective_frac", "grad_norm",
            "collapsed"}
    assert need <= set(df.columns) and set(METRICS) <= set(df.columns)
    assert set(SimConfig().flat()) <= set(df.columns)
    assert len(df) == 2 * 2 * 3 and sorted(df.step.unique()) == [1, 2, 3]
    assert df[df.method == "drpo"].param_delta.eq(2.5).all() and df[df.method == "grpo"].param_delta.isna().all()
    assert df[df.method == "grpo"].param_eps_high.eq(0.28).all()


def test_simulate_rejects_bad_requests():
    with pytest.raises(ValueError, match="unknown method"):
        simulate(cfg(), ["drpo", "dpo"], [0])
    with pytest.raises(ValueError, match="not among the methods"):
        simulate(cfg(), ["drpo"], [0], method_params={"spo": {"eps": 1.0}})
    with pytest.raises(ValueError, match="duplicate seeds"):
        run(cfg(), "drpo", [1, 1])
    with pytest.raises(ValueError, match="exact mode"):
        SimConfig.from_flat({"mode": "exact", "env": "tabular"})
    with pytest.raises(ValueError, match="must divide"):
        SimConfig.from_flat({"group_size": 6, "updates_per_batch": 4})
    with pytest.raises(ValueError, match="unknown configuration field"):
        SimConfig.from_flat({"noise": 0.1})
    with pytest.raises(ValueError, match="token logs need sampled mode"):
        run(cfg(mode="exact"), "drpo", [0], token_sink=lambda b: None)


def test_reward_scales_spread_the_advantages_across_prompts_on_cpu():
    s = reward_scales(2.0, 8)
    assert s[-1] / s[0] == pytest.approx(100.0) and np.exp(np.log(s).mean()) == pytest.approx(1.0)
    assert np.all(np.diff(s) > 0) and np.array_equal(reward_scales(0.0, 8), np.ones(8))
    c = cfg(env="tabular", vocab_size=16, n_prompts=4, horizon=2, steps=4, updates_per_batch=2)
    spread = dataclasses.replace(c, train=dataclasses.replace(c.train, reward_scale_spread=2.0))
    # each prompt's logits are parameters of their own, whose Adam step does not depend on the
    # size of their gradient: plain policy gradient hardly notices the scales...
    base, wide = run(c, "pg_is", [0]), run(spread, "pg_is", [0])
    assert base.sample_reward.iloc[0] == wide.sample_reward.iloc[0]  # same first batch, same task rewards
    np.testing.assert_allclose(base.expected_reward, wide.expected_reward, rtol=1e-4)
    # ...while one penalty coefficient for the whole batch weighs differently against each prompt's advantages
    params = {"adv_scale": "batch", "delta": 0.5}
    base, wide = run(c, "drpo_no_abs_adv", [0], params=params), run(spread, "drpo_no_abs_adv", [0], params=params)
    assert np.abs(base.expected_reward.to_numpy() - wide.expected_reward.to_numpy())[1:].min() > 1e-4
    with pytest.raises(ValueError, match="reward_scale_spread must be in"):
        SimConfig.from_flat({"reward_scale_spread": -1.0})
    with pytest.raises(ValueError, match="needs mode='sampled'"):
        SimConfig.from_flat({"mode": "exact", "reward_scale_spread": 1.0})
    with pytest.raises(ValueError, match="at least two prompts"):
        SimConfig.from_flat({"env": "bandit", "reward_scale_spread": 1.0})


# ---------------------------------------------------------------------------------------------
# exact against sampled


@pytest.mark.parametrize(
    "flat", [{}, {"noise_std": 0.3, "method": "spo"}, {"staleness": 0, "top_k": 16, "method": "dppo_tv"}]
)
def test_exact_mode_is_the_mean_of_sampled_runs_on_cpu(flat):
    """One SGD step without clipping is linear in the gradient, so the mean over seeds of the
    sampled runs' parameters must approach the exact run's. With G samples per group, the group
    mean includes the sample itself, so E[sampled gradient] = (G - 1) / G * exact gradient; the
    exact run's learning rate is scaled by that factor."""
    flat = dict(flat)
    method = flat.pop("method", "pg_is")
    g, lr, n = 8, 0.5, 6000
    common = {"vocab_size": 32, "steps": 1, "optimizer": "sgd", "grad_clip": 0.0, "group_size": g, **flat}
    seeds = list(range(n))
    obj = objectives.get(method)
    sampled = Simulation(SimConfig.from_flat({**common, "lr": lr}), obj, seeds, None)
    exact = Simulation(SimConfig.from_flat({**common, "lr": lr * (g - 1) / g, "mode": "exact"}), obj, seeds, None)
    sampled.step(1)
    exact.step(1)
    z0 = exact.env.initial_logits()[None]
    d_s = (sampled.params["z"] - z0).mean(axis=0)
    d_e = (exact.params["z"] - z0).mean(axis=0)
    se = (sampled.params["z"] - z0).std(axis=0) / np.sqrt(n)
    assert np.all(np.abs(d_s - d_e) < 5 * se + 1e-12)
    assert np.abs(d_e).max() > 10 * se.max()  # the test has power: the step is well resolved


# ---------------------------------------------------------------------------------------------
# sampling


def _zipf(v, rows):
    return np.broadcast_to(zipf_logits(v, 1.1), (rows, v)).copy()


def test_truncated_tokens_are_never_sampled_on_cpu():
    lp = truncate(log_softmax(_zipf(50, 2)), top_k=5)
    rows = np.repeat(np.arange(2), 20000)
    tok = sample_tokens(np.exp(lp)[None], rows, np.random.default_rng(0).random(rows.size))
    assert tok.max() < 5


def test_sampling_follows_the_distribution_on_cpu():
    lp = log_softmax(_zipf(20, 3) + np.random.default_rng(0).normal(size=(3, 20)))
    n = 200_000
    rows = np.repeat(np.arange(3), n)
    tok = sample_tokens(np.exp(lp)[None], rows, np.random.default_rng(1).random(rows.size))
    freq = np.stack([np.bincount(tok[rows == i], minlength=20) / n for i in range(3)])
    p = np.exp(lp)
    assert np.all(np.abs(freq - p) < 5 * np.sqrt(p * (1 - p) / n) + 1e-9)


# ---------------------------------------------------------------------------------------------
# the channels inside the loop


def test_staleness_uses_parameters_k_updates_old_on_cpu():
    k = 2
    c = cfg(staleness=k, updates_per_batch=2)
    seen = []
    r = Simulation(c, objectives.get("pg_is"), [0, 1], seen.append)
    history = [r.params]
    tokens_per_step = []
    for step in range(1, 6):
        before = len(seen)
        r.step(step)
        tokens_per_step.append(concat(seen[before:]))
        history.extend(h for h in list(r.history)[-2:])  # the two updates of this step
    for step, batch in enumerate(tokens_per_step, start=1):
        n_updates_before = 2 * (step - 1)
        rollout = history[max(n_updates_before - k, 0)]
        lp = trainer_logp(r.policy.logits(rollout), c.offpolicy)
        rows = batch.seed * r.env.n_states  # bandit: one state per seed
        np.testing.assert_array_equal(batch.logp_behavior, gather(lp, rows, batch.token_id))


def test_engine_bias_persists_across_steps_on_cpu():
    c = cfg(bias_std=0.3, steps=3)
    seen = []
    sim = Simulation(c, objectives.get("pg_is"), [0, 1], seen.append)
    bias = sim.bias.copy()
    for step in (1, 2, 3):
        z = sim.policy.logits(sim.params)
        sim.step(step)
        batch = seen[-1]
        expect = gather(log_softmax(z + 0.3 * bias), batch.seed * sim.env.n_states, batch.token_id)
        np.testing.assert_allclose(batch.logp_behavior, expect, rtol=0, atol=1e-12)
    np.testing.assert_array_equal(sim.bias, bias)
    # drawn from each seed's own stream: seed 1's bias does not depend on seed 0 being there
    np.testing.assert_array_equal(Simulation(c, objectives.get("pg_is"), [1], None).bias[0], bias[1])


def test_anchor_choice_on_cpu():
    """rollout: the ratio's denominator is the engine's log-prob; recompute: the trainer's own,
    recomputed before the first update, so the first mini-batch sees r = 1 despite the noise."""
    for anchor in ("rollout", "recompute"):
        seen = []
        c = cfg(noise_std=0.5, updates_per_batch=2, anchor=anchor)
        Simulation(c, objectives.get("pg_is"), [0], seen.append).step(1)
        first, second = seen
        assert not np.array_equal(first.logp_behavior, first.logp_old)  # the engine disagrees
        den = first.logp_behavior if anchor == "rollout" else first.logp_old
        assert np.array_equal(first.logp == den, np.full(len(first), anchor == "recompute"))
        assert not np.array_equal(second.logp, second.logp_old)  # the policy moved in between


def test_truncation_only_samples_the_nucleus():
    seen = []
    c = cfg(top_k=3, steps=4)
    run(c, "drpo", [0, 1], token_sink=seen.append)
    tok = concat(seen)
    assert len(np.unique(tok.token_id)) <= 3 * 4 * 2
    assert np.all(tok.logp_behavior > tok.logp)  # the truncated mu renormalises upwards


def test_token_log_agrees_with_the_metrics_on_cpu():
    seen = []
    c = cfg(env="tabular", vocab_size=16, noise_std=0.3, updates_per_batch=2, steps=4)
    df = run(c, "dppo_tv", [0, 1], token_sink=seen.append, params={"delta": 0.02})
    tok = concat(seen).to_pandas()
    n_samples = c.env.n_prompts * c.train.group_size
    assert len(tok) == 2 * 4 * n_samples * c.env.horizon
    assert tok.groupby(["seed", "step"]).sample_id.nunique().eq(n_samples).all()
    w = objectives.get("dppo_tv", delta=0.02).weight(
        tok.logp.to_numpy(), tok.logp_behavior.to_numpy(), tok.advantage.to_numpy()
    )
    tok["masked"] = w == 0
    by = tok.groupby(["seed", "step"]).masked.mean().to_numpy()
    np.testing.assert_allclose(df.sort_values(["seed", "step"]).masked_frac.to_numpy(), by)
    assert df.masked_frac.max() > 0


def test_topk_token_log_replays_with_the_topk_objective_on_cpu():
    """A Top-K DPPO run's token log carries the divergences it read (``topk_tv``), and replaying
    it with the same objective gives the masked fraction the simulator reported, step by step."""
    from drpo_sim.analysis import replay

    seen = []
    c = cfg(env="tabular", vocab_size=32, noise_std=0.5, updates_per_batch=2, steps=3)
    df = run(c, "dppo_topk_tv", [0, 1], token_sink=seen.append, params={"delta": 0.02})
    tok = concat(seen)
    assert tok.topk_tv is not None and tok.topk_kl is None  # the column the objective read
    assert np.all((tok.topk_tv >= 0) & (tok.topk_tv <= 1)) and np.any(tok.topk_tv > 0)
    result = replay(seen, {"dppo_topk_tv": objectives.get("dppo_topk_tv", delta=0.02)})
    by_step = result.by_step.set_index("step").dppo_topk_tv_masked_frac
    sim = df.groupby("step").masked_frac.mean()  # equal token counts per seed
    np.testing.assert_allclose(by_step.loc[sim.index].to_numpy(), sim.to_numpy(), rtol=1e-12)
    assert sim.max() > 0


class _Poisoned:
    def __init__(self, policy, backward):
        self.logits, self.backward = policy.logits, backward


def test_nonfinite_seed_is_frozen_and_flagged(monkeypatch):
    c = cfg(steps=4)
    r = Simulation(c, objectives.get("pg_is"), [0, 1, 2], None)
    orig = r.policy.backward

    def poisoned(params, grad_z):
        g = orig(params, grad_z)
        g["z"] = g["z"].copy()
        g["z"][1] = np.nan  # seed 1's gradient goes non-finite
        return g

    monkeypatch.setattr(r, "policy", _Poisoned(r.policy, poisoned))
    before = r.params["z"][1].copy()
    rows = [r.step(s) for s in (1, 2)]
    assert rows[0]["nonfinite"].tolist() == [False, True, False]
    assert np.isnan(rows[1]["expected_reward"][1]) and np.isfinite(rows[1]["expected_reward"][[0, 2]]).all()
    np.testing.assert_array_equal(r.params["z"][1], before)
    df = r.table(rows)
    assert df[df.seed == 1].collapsed.all() and not df[df.seed != 1].collapsed.any()


def test_collapse_rule_flags_a_run_that_loses_its_reward_on_cpu():
    """SGD with a huge step on pg_is under heavy noise is unstable; whatever happens, the
    collapsed column must follow the documented rule applied to the curve."""
    c = cfg(optimizer="sgd", lr=50.0, grad_clip=0.0, noise_std=1.0, steps=30)
    df = run(c, "pg_is", list(range(6)))
    curves = df.pivot(index="seed", columns="step", values="expected_reward").to_numpy()
    nonfinite = df.pivot(index="seed", columns="step", values="nonfinite").to_numpy()
    init = df.groupby("seed").initial_reward.first().to_numpy()[:, None]
    expect = stats.collapsed(np.hstack([init, curves]), np.hstack([np.zeros_like(init, bool), nonfinite]))[:, 1:]
    np.testing.assert_array_equal(df.pivot(index="seed", columns="step", values="collapsed").to_numpy(), expect)


def test_config_round_trip():
    c = SimConfig.from_flat({"vocab_size": 128, "noise_std": 0.1, "lr": 0.01, "anchor": "recompute"})
    assert SimConfig.from_flat(c.flat()) == c
    assert dataclasses.asdict(c.offpolicy)["anchor"] == "recompute"


# ---------------------------------------------------------------------------------------------
# cells (drpo_sim.run.cells) and joined tables


def test_run_cell_is_one_method_of_simulate():
    """A ``sim`` cell's spec holds the full flat configuration, the method, its full parameters and
    the seeds; its table is that method's part of ``simulate``'s."""
    c = cfg(steps=3, noise_std=0.2)
    drpo = objectives.get("drpo", delta=2.5)
    spec = {"config": c.flat(), "method": "drpo", "params": drpo.params, "seeds": [0, 2]}
    table = run_cell(spec)
    both = simulate(c, ["grpo", "drpo"], [0, 2], method_params={"drpo": {"delta": 2.5}})
    expect = both[both.method == "drpo"].dropna(axis=1, how="all").reset_index(drop=True)
    pd.testing.assert_frame_equal(table, expect)
    assert table.param_delta.eq(2.5).all() and sorted(table.seed.unique()) == [0, 2]
    with pytest.raises(ValueError, match="unknown configuration field"):
        run_cell({**spec, "config": {**c.flat(), "noise": 0.1}})


def test_with_param_columns_joins_tables_of_one_method_each():
    c = cfg(steps=2)
    parts = [run_cell({"config": c.flat(), "method": m, "params": objectives.get(m, **p).params, "seeds": [0]})
             for m, p in (("grpo", {}), ("drpo", {"delta": 0.5}), ("pg_is", {}))]
    joined = with_param_columns(pd.concat(parts, ignore_index=True))
    assert {"param_delta", "param_eps_low", "param_eps_high", "param_dual_clip"} <= set(joined.columns)
    by = joined.groupby("method")
    assert by.param_delta.first()["drpo"] == 0.5 and by.param_delta.apply(lambda s: s.isna().all())["grpo"]
    assert by.param_eps_high.first()["grpo"] == 0.28
    assert joined[joined.method == "pg_is"].filter(like="param_").isna().all().all()
    # existing param_ columns are replaced, not duplicated, and the layout is simulate's
    again = with_param_columns(joined)
    pd.testing.assert_frame_equal(again, joined)
    ref = simulate(c, ["grpo", "drpo", "pg_is"], [0], method_params={"drpo": {"delta": 0.5}})
    pd.testing.assert_frame_equal(joined[sorted(joined.columns)], ref[sorted(ref.columns)])
