"""drpo_sim.gradients: one batch's estimate against autograd, the on-policy estimator against its
exact expectation, paired batches across objectives, the shares and bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from drpo_sim import gradients, objectives
from drpo_sim.envs.bandit import LongTailBandit

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
