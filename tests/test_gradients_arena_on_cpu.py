"""drpo_sim.gradients in a small arena: the enumerated exact gradient against finite differences and
the score Jacobian, the engine's table against its own sampler, the on-policy estimator against its
exact expectation ``(1 - 1/G) grad J``, the mismatch of the reduced-precision engines, finite
diagnostics for every objective with a stale policy, reproducibility and the sweep's table."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from drpo_sim import gradients, objectives
from drpo_sim.arena.model import Engine, response_logprobs

G = 8


@pytest.fixture(scope="module")
def world():
    return gradients.ArenaEnumeration()


@pytest.fixture(scope="module")
def stale():
    return gradients.ArenaEnumeration(staleness=2, step_kl=2e-3)


def _shifted(world, direction: np.ndarray, h: float) -> dict[str, torch.Tensor]:
    out, i = {}, 0
    for k in world.names:
        p = world.params[k].double()
        out[k] = p + h * torch.from_numpy(direction[i:i + p.numel()]).view(p.shape)
        i += p.numel()
    return out


def test_the_exact_gradient_is_the_derivative_of_the_enumerated_expected_reward_on_cpu(world):
    """Along a random direction, a central finite difference of ``J`` (float64) gives ``truth . v``;
    and the score Jacobian's rows, summed over every response and weighted by ``pi R``, give the truth."""
    assert world.n == 8**3 and world.truth.shape == (world.n_params,) == (2600,)
    v = np.random.default_rng(0).standard_normal(world.n_params)
    v /= np.linalg.norm(v)  # a unit direction: the step h v is small in every parameter
    rewards = torch.from_numpy(world.rewards)
    h = 1e-4
    j_plus, j_minus = (float(gradients.arena_expected_reward(_shifted(world, v, s), world.cfg, world.seqs, rewards))
                       for s in (h, -h))
    assert (j_plus - j_minus) / (2 * h) == pytest.approx(float(world.truth @ v), rel=1e-6)
    # J itself: the float32 trainer's and the float64 evaluation agree to float32 rounding
    j64 = float(gradients.arena_expected_reward(_shifted(world, v, 0.0), world.cfg, world.seqs, rewards))
    assert world.expected_reward == pytest.approx(j64, rel=1e-5)
    assert 0.25 < j64 < 0.75  # the small base model has learnt something and left room to learn
    # score-function form: grad J = (1/P) sum_p sum_y pi(y) R(y) sum_t grad log pi(y_t | state_t)
    pi = np.exp(world.seq_logp(world.logp))
    np.testing.assert_allclose(pi.sum(axis=1), 1.0, rtol=1e-5)
    weight = np.bincount(world.token_key.ravel(), minlength=world.n_keys,
                         weights=np.repeat(pi * world.rewards / world.n_prompts, world.horizon))
    by_scores = weight @ world.scores
    np.testing.assert_allclose(by_scores, world.truth, rtol=1e-4, atol=1e-6 * np.abs(world.truth).max())
    # each state's scores average to zero under pi (the score of a normalised distribution)
    pk = np.exp(world.logp).reshape(world.n_states, world.vocab)
    mean_score = np.einsum("sv,svk->sk", pk, world.scores.reshape(world.n_states, world.vocab, -1))
    assert np.abs(mean_score).max() < 1e-5 * np.abs(world.scores).max()


@pytest.mark.parametrize("precision", ["bf16", "fp8"])
def test_the_engine_table_is_what_the_engines_sampler_reports_on_cpu(world, precision):
    """The forced rollouts' table of ``log mu`` holds, bit for bit, the log-prob the engine's own
    token-by-token sampler reports for the tokens it samples freely."""
    table = world.engine_state_logp(precision).ravel()
    n = 64
    rows = torch.arange(world.n_prompts).repeat_interleave(n // world.n_prompts)
    draws = torch.rand(world.horizon, 1, n, generator=torch.Generator().manual_seed(3))
    roll = Engine(world.params_old, world.cfg, precision).rollout(world.prompts[rows][None], world.horizon,
                                                                  lambda j: draws[j])
    resp = roll.seqs[0, :, world.task.prompt_len:].numpy()
    index = (resp * world.vocab ** np.arange(world.horizon - 1, -1, -1)).sum(axis=1)
    keys = world.token_key[rows.numpy(), index]  # [n, H]
    np.testing.assert_array_equal(table[keys], roll.logp[0].double().numpy())


def test_on_policy_pg_is_is_unbiased_but_for_the_group_mean_baseline_on_cpu(world):
    """fp32 engine (``mu = pi_old = pi`` bit for bit): pg_is's mean gradient lies within Monte Carlo
    error of ``(1 - 1/G) grad J`` and far from ``grad J`` itself; ratios are exactly 1."""
    df = gradients.arena_gradient_diagnostics(["pg_is", "grpo"], world=world, precision="fp32", n_samples=G,
                                              n_batches=2000, rng=np.random.default_rng(11))
    row = df.set_index("label").loc["pg_is"]
    assert row["kl_engine"] == 0.0 and row["mismatch_mean"] == 0.0 and row["ess"] == 1.0 and row["ess_seq"] == 1.0
    assert row["cosine"] > 0.999 and row["batch_cosine"] > 0.3
    # || E[g] - (1 - 1/G) truth || against its Monte Carlo error; the baseline's bias is over 10 errors
    truth_norm = row["truth_norm"]
    bias_baseline = truth_norm / G
    c0, n = 1 - 1 / G, row["norm_ratio"]  # ||E[g] - c0 truth||^2 / ||truth||^2 from the norm ratio and the cosine
    off = np.sqrt(max(n**2 - 2 * c0 * n * row["cosine"] + c0**2, 0.0))
    assert off < 3 * row["mean_se"] / truth_norm
    assert row["relative_bias"] == pytest.approx(1 / G, abs=3 * row["mean_se"] / truth_norm)
    assert bias_baseline > 10 * row["mean_se"]
    # on-policy every objective of the registry reduces to pg_is here (no ratio leaves 1)
    assert (df["diff_rel"] == 0.0).all()


def test_the_reduced_precision_engines_differ_from_the_trainer_on_cpu(world):
    rows = {p: gradients.arena_gradient_diagnostics(["pg_is", ("drpo", {"delta": 0.15})], world=world, precision=p,
                                                    n_samples=4, n_batches=50, rng=np.random.default_rng(2))
            for p in ("fp32", "bf16", "fp16", "fp8")}
    assert rows["fp32"]["mismatch_mean"].iloc[0] == 0.0
    for p in ("bf16", "fp16", "fp8"):
        r = rows[p].iloc[0]
        assert 1e-5 < r["mismatch_mean"] < 0.02 and r["kl_engine"] > 0 and r["ess"] < 1.0
        assert r["abs_shift"] > 0
    # fp16 rounds less than bf16; drpo at a small delta turns away from pg_is once mu moves
    assert rows["fp16"]["kl_engine"].iloc[0] < rows["bf16"]["kl_engine"].iloc[0]
    assert rows["bf16"]["diff_rel"].iloc[1] > 0 and rows["fp32"]["diff_rel"].iloc[1] == 0


def test_every_objective_gives_finite_diagnostics_with_a_stale_policy_on_cpu(stale):
    """Two exact-gradient steps since the rollout and a bf16 engine: every sweep objective, the
    Top-K DPPO modes and a sequence-level one give finite diagnostics, and the policies moved."""
    methods = {**gradients.SWEEP_OBJECTIVES, "dppo_topk_tv": ("dppo_topk_tv", {}), "dppo_topk_kl": ("dppo_topk_kl", {}),
               "gspo": ("gspo", {})}
    df = gradients.arena_gradient_diagnostics(methods, world=stale, precision="bf16", n_samples=4, n_batches=60,
                                              rng=np.random.default_rng(4))
    assert list(df["label"]) == list(methods)
    cols = [*gradients.DIAGNOSTICS, *gradients.PAIRED, "kl_engine", "kl_stale", "abs_shift", "mismatch_mean"]
    assert np.isfinite(df[cols].to_numpy(dtype=float)).all()
    shares = df.filter(like="share_").sum(axis=1)
    np.testing.assert_allclose(shares, 1.0, atol=1e-9)
    assert (df["staleness"] == 2).all()
    # two steps of second-order KL 2e-3 each along (nearly) one direction: about 4 x 2 x 2e-3 = 0.016
    assert 0.008 < df["kl_stale"].iloc[0] < 0.03
    assert stale.expected_reward > stale.expected_reward_old
    assert df.set_index("label").loc["pg_is", "diff_rel"] == 0.0
    assert df.set_index("label").loc["grpo", "diff_rel"] > 0.0  # the clip acts on a stale policy


def test_a_seed_gives_the_same_table_and_another_seed_another_on_cpu(world):
    def run(seed):
        return gradients.arena_gradient_diagnostics(["pg_is", "cispo"], world=world, precision="bf16", n_samples=4,
                                                    n_batches=40, rng=np.random.default_rng(seed))

    a, b, c = run(7), run(7), run(8)
    assert a.equals(b)
    assert not np.allclose(a["cosine"], c["cosine"])


def test_the_sweep_is_one_tidy_table_over_precisions_and_staleness_on_cpu():
    methods = {"pg_is": ("pg_is", {}), "grpo": ("grpo", {})}
    t = gradients.arena_gradient_sweep(["fp32", "bf16"], methods=methods, staleness=(0, 1), n_samples=4,
                                       n_batches=30, rng=np.random.default_rng(0))
    assert len(t) == 2 * 2 * 2
    assert list(t.columns[:6]) == ["precision", "staleness", "step_kl", "n_prompts", "n_samples", "n_batches"]
    assert set(map(tuple, t[["precision", "staleness"]].drop_duplicates().to_numpy())) == {
        ("fp32", 0), ("bf16", 0), ("fp32", 1), ("bf16", 1)}
    assert (t.loc[t["staleness"] == 0, "kl_stale"] == 0).all() and (t.loc[t["staleness"] == 1, "kl_stale"] > 0).all()
    # the engine is pi_old's: its distance from pi_old does not depend on the staleness
    kl = t.groupby(["precision", "staleness"])["kl_engine"].first().unstack()
    np.testing.assert_array_equal(kl[0], kl[1])


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"precision": "fp4"}, "unknown precision"),
    ({"n_samples": 1}, "n_samples"),
    ({"reference": "nope"}, "reference"),
])
def test_bad_input_is_refused_on_cpu(world, kwargs, match):
    with pytest.raises(ValueError, match=match):
        gradients.arena_gradient_diagnostics(["pg_is"], world=world, rng=np.random.default_rng(0),
                                             **{"n_batches": 4, **kwargs})


def test_a_task_too_large_to_enumerate_is_refused_on_cpu():
    from dataclasses import replace

    base = replace(gradients.ARENA_BASE, task=replace(gradients.ARENA_BASE.task, response_len=5),
                   model=replace(gradients.ARENA_BASE.model, max_len=7))
    with pytest.raises(ValueError, match="responses per prompt"):
        gradients.ArenaEnumeration(base)


def test_one_batch_is_the_autograd_gradient_of_the_arena_loss_on_cpu(world):
    """One batch's gradient (rows of the score Jacobian weighted by ``d``) is the autograd gradient of
    the arena's loss, ``sum(aggregation_weights(AGG_MODE) * surrogate)`` times ``H``, through the
    trainer's pass (float64) on the batch's sequences."""
    from drpo_sim.arena.train import AGG_MODE

    obj = objectives.get("drpo", delta=0.15)
    bt = gradients._ArenaBatches(world, world.engine_state_logp("bf16"), 4, 2, np.random.default_rng(1))
    g = bt.gradients(bt.grad_logp(obj))
    # the sampled sequences: the keys' responses, read back from the key layout
    flat = world.token_key.reshape(-1, world.horizon)
    where = {tuple(k): i for i, k in enumerate(flat)}
    seqs = world.seqs.reshape(-1, world.seqs.shape[-1])[[where[tuple(k)] for k in bt.key[0]]]
    p64 = {k: world.params[k].detach().double().requires_grad_(True) for k in world.names}
    logp = response_logprobs(p64, world.cfg, seqs[None], world.task.prompt_len)[1][0]
    j = obj.surrogate(logp, torch.from_numpy(bt.logp_behavior[0]), torch.from_numpy(bt.advantage[0]))
    coef = objectives.aggregation_weights(torch.ones_like(logp, dtype=torch.bool), AGG_MODE,
                                          horizon=world.horizon) * world.horizon
    grads = torch.autograd.grad((coef.double() * j).sum(), [p64[k] for k in world.names])
    expect = torch.cat([gr.reshape(-1) for gr in grads]).numpy()
    np.testing.assert_allclose(g[0], expect, rtol=1e-4, atol=1e-6 * np.abs(expect).max())
