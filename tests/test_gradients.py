"""drpo_sim.gradients: one batch's estimate against autograd, the on-policy estimator against its
exact expectation, paired batches across objectives, the shares and bad input; the tabular task's
exact gradient, the token-based statistics against dense ones, the three policies' invariances
(on-policy and fresh, stale with an exact engine, fresh with a mismatched one), the sweep and the
equivalence verdict."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from drpo_sim import gradients, objectives
from drpo_sim.envs.bandit import LongTailBandit
from drpo_sim.envs.tabular import TabularSequence

ENV = LongTailBandit(vocab_size=64)
Z = ENV.initial_logits()[0]
R = ENV.token_rewards()
MU = Z + np.random.default_rng(0).normal(0.0, 0.5, Z.shape)  # an engine off by logit noise


@pytest.mark.parametrize("name", ["pg_is", "grpo", "cispo", "dppo_kl", "drpo", "spo"])
def test_one_batch_is_the_autograd_gradient_of_the_mean_surrogate_on_cpu(name):
    obj = objectives.get(name, **({"delta": 0.15} if name == "drpo" else {}))
    g, batch = gradients.sampled_gradients(obj, Z, MU, R, n_samples=32, n_batches=3, rng=np.random.default_rng(5))
    z = torch.tensor(np.tile(Z, (3, 1)), requires_grad=True)
    logp = torch.log_softmax(z, dim=1).gather(1, torch.as_tensor(batch["tokens"]))
    j = obj.surrogate(logp, torch.as_tensor(batch["logp_behavior"]), torch.as_tensor(batch["advantage"]))
    (grad,) = torch.autograd.grad(j.sum() / 32, z)
    np.testing.assert_allclose(g, grad.numpy(), rtol=1e-9, atol=1e-12)
    assert g.shape == (3, Z.size)


def test_on_policy_the_estimate_is_unbiased_but_for_the_batch_mean_baseline_on_cpu():
    """On-policy, with the batch's own mean as baseline, ``E[g] = (1 - 1/N) grad J`` exactly: the
    measured mean lies within a few Monte Carlo errors of it, and the ESS is 1."""
    n = 16
    df = gradients.gradient_diagnostics(["pg_is"], Z, Z, R, n_samples=n, n_batches=20000,
                                        rng=np.random.default_rng(2))
    truth = gradients.exact_gradient(Z, R)
    g, _ = gradients.sampled_gradients(objectives.get("pg_is"), Z, Z, R, n_samples=n, n_batches=20000,
                                       rng=np.random.default_rng(7))
    assert np.linalg.norm(g.mean(axis=0) - (1 - 1 / n) * truth) < 4 * df["mean_se"].iloc[0]
    assert df["relative_bias"].iloc[0] == pytest.approx(1 / n, abs=4 * df["mean_se"].iloc[0] / np.linalg.norm(truth))
    assert df["ess"].iloc[0] == 1.0 and df["cosine"].iloc[0] > 0.999


def test_every_objective_sees_the_same_batches_on_cpu():
    """Paired: DPPO-TV with a threshold no shift reaches is PG-IS, number for number; the shares
    sum to 1; the caller's generator advances once, whatever the number of objectives."""
    a, b = np.random.default_rng(3), np.random.default_rng(3)
    df = gradients.gradient_diagnostics(["pg_is", ("dppo_tv", {"delta": 2.0}), ("drpo", {"delta": 0.15})],
                                        Z, MU, R, n_samples=32, n_batches=500, rng=a)
    gradients.gradient_diagnostics(["pg_is"], Z, MU, R, n_samples=32, n_batches=500, rng=b)
    assert a.integers(2**31) == b.integers(2**31)
    cols = [*gradients.DIAGNOSTICS, *df.filter(like="share_").columns]
    assert (df.loc[0, cols] == df.loc[1, cols]).all()
    assert df.loc[2, "bias_norm"] != df.loc[0, "bias_norm"]
    np.testing.assert_allclose(df.filter(like="share_").sum(axis=1), 1.0)
    assert (df["ess"] < 1).all() and (df["ess"] == df["ess"].iloc[0]).all()  # the batch's, not the objective's


@pytest.mark.parametrize("kwargs, message", [
    ({"engine_logits": MU[:10]}, "vectors of one length"),
    ({"rewards": np.full(Z.shape, np.nan)}, "must be finite"),
    ({"n_samples": 1}, "n_samples must be an integer >= 2"),
    ({"n_batches": 2.5}, "n_batches must be an integer >= 2"),
])
def test_bad_input_is_one_clear_error_on_cpu(kwargs, message):
    args = {"logits": Z, "engine_logits": MU, "rewards": R, "n_samples": 8, "n_batches": 4, **kwargs}
    with pytest.raises(ValueError, match=message):
        gradients.gradient_diagnostics(["pg_is"], args.pop("logits"), args.pop("engine_logits"), args.pop("rewards"),
                                       rng=np.random.default_rng(0), **args)


# ----------------------------------------------------------------------------------------------
# three policies, the tabular task and the sweep (issue 16, item 5)

TAB = TabularSequence(vocab_size=12, n_prompts=3, horizon=4)
TZ = TAB.initial_logits()
TMU = TZ + np.random.default_rng(1).normal(0.0, 0.5, TZ.shape)


@pytest.mark.parametrize("reward", ["prefix", "match"])
def test_the_tabular_gradient_is_the_autograd_gradient_of_the_expected_reward_on_cpu(reward):
    env = TabularSequence(vocab_size=12, n_prompts=3, horizon=5, reward=reward)
    z0 = env.initial_logits() + np.random.default_rng(4).normal(0.0, 1.0, (15, 12))
    z = torch.tensor(z0, requires_grad=True)
    q = torch.log_softmax(z, dim=1)[torch.arange(15), torch.as_tensor(env.targets.reshape(-1))].exp().reshape(3, 5)
    j = (q.mean(-1) if reward == "match" else torch.cumprod(q, -1).mean(-1)).mean()
    (grad,) = torch.autograd.grad(j, z)
    np.testing.assert_allclose(gradients.exact_gradient(z0, env), grad.numpy(), rtol=1e-10, atol=1e-15)


@pytest.mark.parametrize("world", ["bandit", "tabular"])
def test_the_statistics_from_the_tokens_equal_the_dense_ones_on_cpu(world):
    """The diagnostics never build ``[B, S, V]`` gradients: their mean, variance, cosines and paired
    differences equal those of the dense estimates (an autograd-checked path), with staleness."""
    z_old, mu, rewards, n = (Z, MU, R, 16) if world == "bandit" else (TZ, TMU, TAB, 3)
    z = gradients.after_updates(z_old, rewards, updates=2, step_kl=2e-3)
    methods = {"pg_is": "pg_is", "gspo": "gspo", "seq_tis": ("grpo", {"correction": "seq_tis"}), "minirl": "minirl"}
    seed = np.random.default_rng(9).integers(2**63)
    df = gradients.gradient_diagnostics(methods, z, mu, rewards, n_samples=n, n_batches=60, old_logits=z_old,
                                        rng=np.random.default_rng(9), reference="pg_is").set_index("label")
    truth = gradients.exact_gradient(z, rewards).ravel()
    dense = {k: gradients.sampled_gradients(objectives.get(v) if isinstance(v, str) else objectives.get(v[0], **v[1]),
                                            z, mu, rewards,
                                            n_samples=n, n_batches=60, old_logits=z_old,
                                            rng=np.random.default_rng(seed))[0].reshape(60, -1)
             for k, v in methods.items()}
    for k, g in dense.items():
        m, d = g.mean(axis=0), g - dense["pg_is"]
        with np.errstate(invalid="ignore"):  # a batch whose advantages are all 0 has no direction
            cos = g @ truth / (np.linalg.norm(g, axis=1) * np.linalg.norm(truth))
        assert df.loc[k, "cosine"] == pytest.approx(m @ truth / np.linalg.norm(m) / np.linalg.norm(truth), rel=1e-9)
        assert df.loc[k, "variance"] == pytest.approx(((g - m) ** 2).sum(axis=1).mean(), rel=1e-9)
        assert df.loc[k, "batch_cosine"] == pytest.approx(np.nanmean(cos), rel=1e-9)
        assert df.loc[k, "relative_bias"] == pytest.approx(np.linalg.norm(m - truth) / np.linalg.norm(truth), rel=1e-9)
        assert df.loc[k, "diff_rel"] == pytest.approx(np.linalg.norm(d.mean(axis=0)) / np.linalg.norm(truth),
                                                      rel=1e-9, abs=1e-15)
    assert df.loc["pg_is", "diff_rel"] == 0 and (df["ess_seq"] <= df["ess"] + 1e-12).all()


def test_updates_move_pi_by_the_step_kl_each_towards_more_reward_on_cpu():
    for rewards, z_old in ((R, Z), (TAB, TZ)):
        assert np.array_equal(gradients.after_updates(z_old, rewards, updates=0, step_kl=1e-3), z_old)
        z1 = gradients.after_updates(z_old, rewards, updates=1, step_kl=1e-3)
        lo, l1 = (gradients._log_softmax(x) for x in (z_old, z1))
        kl = np.mean((np.exp(lo) * (lo - l1)).sum(axis=-1))
        assert kl == pytest.approx(1e-3, rel=0.05)  # the second-order step length, met to a few percent
    j = [gradients._world(Z, gradients.after_updates(Z, R, updates=k, step_kl=1e-3), Z, R)["expected_reward"]
         for k in (0, 1, 4)]
    assert j[0] < j[1] < j[2]


def _paired_diffs(methods, z, mu, z_old, rewards, reference, n=8):
    df = gradients.gradient_diagnostics(methods, z, mu, rewards, n_samples=n, n_batches=200, old_logits=z_old,
                                        rng=np.random.default_rng(0), reference=reference)
    return df.set_index("label")["diff_rel"]


@pytest.mark.parametrize("world", ["bandit", "tabular"])
def test_on_policy_and_fresh_every_objective_is_pg_is_on_cpu(world):
    """``mu = pi_old = pi``: every ratio is 1, every weight and correction factor 1, so every
    objective of the registry, and every correction, gives pg_is's gradient on the same batches;
    all but ``drpo_kl``, whose k1 penalty's weight is ``1 + sign(A)/delta`` even on-policy (its
    docstring), which makes it pg_is scaled by ``1 +- 1/12.5`` per token."""
    z, rewards = (Z, R) if world == "bandit" else (TZ, TAB)
    methods = {name: name for name in objectives.available()}
    methods.update({f"grpo+{c}": ("grpo", {"correction": c}) for c in objectives.corrections()})
    methods["drpo (delta 0.15)"] = ("drpo", {"delta": 0.15})
    diff = _paired_diffs(methods, z, z, z, rewards, "pg_is")
    assert list(diff[diff >= 1e-12].index) == ["drpo_kl"] and 0.01 < diff["drpo_kl"] < 1 / 12.5


@pytest.mark.parametrize("world", ["bandit", "tabular"])
def test_stale_with_an_exact_engine_the_pi_old_anchors_are_their_mu_anchored_twins_on_cpu(world):
    """No mismatch (``mu = pi_old``) but ``pi`` moved: ``b = 1``, so decoupled PPO is PPO, a corrected
    objective is its base, MiniRL is GRPO (no ratio reaches its cap of 10) and the recompute modes
    are DPPO's; pg_is is not among them (the clips act)."""
    z_old, rewards = (Z, R) if world == "bandit" else (TZ, TAB)
    z = gradients.after_updates(z_old, rewards, updates=8, step_kl=3e-3)
    pairs = [("ppo", "decoupled_ppo"), ("grpo", "minirl"), ("dppo_tv", "dppo_tv_recompute"),
             ("dppo_kl", "dppo_kl_recompute")]
    pairs += [("grpo", ("grpo", {"correction": c})) for c in objectives.corrections()]
    for base, twin in pairs:
        diff = _paired_diffs({"base": base, "twin": twin, "pg_is": "pg_is"}, z, z_old, z_old, rewards, "base")
        assert diff["twin"] < 1e-12, (base, twin, diff["twin"])
        if base in ("ppo", "grpo"):
            assert diff["pg_is"] > 0.01


def test_fresh_with_a_mismatched_engine_the_pi_old_anchors_are_importance_sampling_on_cpu():
    """No update since the rollout (``pi = pi_old``) but ``mu`` off: ``rho = 1``, so decoupled PPO
    and GRPO with plain IS are pg_is, MiniRL is CISPO capped at 10, and DPPO's recompute modes mask
    nothing."""
    methods = {"pg_is": "pg_is", "decoupled_ppo": "decoupled_ppo", "grpo+is": ("grpo", {"correction": "is"}),
               "dppo_tv_recompute": "dppo_tv_recompute", "dppo_kl_recompute": "dppo_kl_recompute",
               "grpo": "grpo"}
    noisy = Z + np.random.default_rng(3).normal(0.0, 1.0, Z.shape)
    diff = _paired_diffs(methods, Z, noisy, Z, R, "pg_is", n=32)
    assert (diff.drop("grpo") < 1e-12).all() and diff["grpo"] > 0.01
    diff = _paired_diffs({"cispo": ("cispo", {"cap": 10.0}), "minirl": "minirl"}, Z, noisy, Z, R, "cispo", n=32)
    assert diff["minirl"] < 1e-12


def test_the_sweep_is_a_tidy_reproducible_table_on_cpu():
    kw = {"noise_stds": [0.0, 0.5], "staleness": [0, 3], "step_kl": 1e-3, "n_samples": 8, "n_batches": 50}
    df = gradients.gradient_sweep(Z, R, rng=np.random.default_rng(1), **kw)
    again = gradients.gradient_sweep(Z, R, rng=np.random.default_rng(1), **kw)
    labels = list(gradients.SWEEP_OBJECTIVES)
    assert len(df) == 2 * 2 * len(labels) and list(df["label"][: len(labels)]) == labels
    want = {"noise_std", "staleness", "step_kl", "kl_engine", "kl_stale", "abs_shift", "truth_norm", "objective",
            *gradients.DIAGNOSTICS, *gradients.PAIRED, "share_rare_pos", "share_high_neg"}
    assert want <= set(df.columns) and not df.duplicated(["noise_std", "staleness", "label"]).any()
    pd.testing.assert_frame_equal(df, again)
    assert (df.loc[df["noise_std"] == 0, "kl_engine"] == 0).all()
    assert (df.loc[df["staleness"] == 0, "kl_stale"] == 0).all()
    assert (df.loc[(df["noise_std"] > 0) & (df["staleness"] > 0), ["kl_engine", "kl_stale"]] > 0).all().all()
    assert (df.loc[df["label"] == "pg_is", "diff_rel"] == 0).all()
    fresh = df[(df["noise_std"] == 0) & (df["staleness"] == 0)]
    assert (fresh["diff_rel"] < 1e-12).all()  # on-policy and fresh: every objective is pg_is
    tab = gradients.gradient_sweep(TZ, TAB, methods=["pg_is", "gspo"], rng=np.random.default_rng(1),
                                   **{**kw, "n_batches": 20})
    assert len(tab) == 8 and tab["truth_norm"].gt(0).all()


def test_the_equivalence_verdict_follows_the_margin_on_cpu():
    rows = [{"noise_std": s, "staleness": 0, "label": lab, "reference": "pg_is", "kl_engine": 0.0, "kl_stale": 0.0,
             "cosine": 0.9, "diff_rel": d if lab == "x" else 0.0, "diff_rel_se": se if lab == "x" else 0.0,
             "diff_batch_rel": 0.0, "delta_batch_cosine": 0.0, "delta_batch_cosine_se": 0.0}
            for s, d, se in ((0.0, 0.005, 0.001), (0.1, 0.009, 0.001), (0.2, 0.02, 0.001)) for lab in ("pg_is", "x")]
    out = gradients.equivalence(pd.DataFrame(rows), "x")
    assert list(out["verdict"]) == ["equivalent", "undecided", "different"] and (out["delta_cosine"] == 0).all()
    assert gradients.EQUIVALENCE_MARGIN == 0.01  # fixed before the full sweep was run: changing it is a new question
    with pytest.raises(ValueError, match="no objective labelled 'y'"):
        gradients.equivalence(pd.DataFrame(rows), "y")


@pytest.mark.parametrize("call, message", [
    (lambda: gradients.after_updates(Z, R, updates=-1, step_kl=1e-3), "staleness .* must be an integer >= 0"),
    (lambda: gradients.after_updates(Z, R, updates=1, step_kl=0.0), "step_kl must be a finite number > 0"),
    (lambda: gradients.gradient_sweep(Z, R, noise_stds=[-0.1], staleness=[0], step_kl=1e-3, n_samples=4,
                                      n_batches=4, rng=np.random.default_rng(0)), "noise stds must be finite"),
    (lambda: gradients.gradient_sweep(Z, R, noise_stds=[0.1], staleness=[], step_kl=1e-3, n_samples=4,
                                      n_batches=4, rng=np.random.default_rng(0)), "at least one"),
    (lambda: gradients.gradient_diagnostics(["pg_is"], Z, MU, R, n_samples=4, n_batches=4, reference="grpo",
                                            rng=np.random.default_rng(0)), "reference 'grpo' is not among"),
    (lambda: gradients.gradient_diagnostics(["pg_is"], TZ[:3], TMU, TAB, n_samples=4, n_batches=4,
                                            rng=np.random.default_rng(0)), "tabular task needs logits"),
    (lambda: gradients.gradient_diagnostics(["pg_is", "pg_is"], Z, MU, R, n_samples=4, n_batches=4,
                                            rng=np.random.default_rng(0)), "listed twice"),
])
def test_bad_sweep_input_is_one_clear_error_on_cpu(call, message):
    with pytest.raises(ValueError, match=message):
        call()
