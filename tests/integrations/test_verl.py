"""drpo_sim.integrations.verl against verl 0.9.1 itself: the losses are in verl's registry, and run
through verl's own ppo_loss (verl/workers/utils/losses.py, which fills the global batch information
as the actor does) they give policy_loss's loss and gradient on one rank, and the whole mini-batch's
gradient across simulated data-parallel ranks and micro-batches, where policy_loss on each rank does
not. Skipped where verl is not installed (docs/integrations.md says how to install it)."""

from __future__ import annotations

import importlib
import re
import sys
import warnings
from pathlib import Path

import pytest
import torch

from drpo_sim import objectives
from drpo_sim.objectives import policy_loss

DOC = Path(__file__).resolve().parents[2] / "docs" / "integrations.md"
MODES = ["token-mean", "seq-mean-token-sum", "seq-mean-token-mean", "seq-mean-token-sum-norm"]
# two data-parallel ranks of two micro-batches each: the responses' lengths, 248 and 335 tokens
RANKS = [[[60, 3, 40, 21], [64, 10, 2, 48]], [[64, 64, 50, 7], [33, 64, 1, 52]]]
WIDTH = 64


def test_import_without_verl_is_a_one_line_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "verl", None)  # `import verl` raises ImportError
    monkeypatch.delitem(sys.modules, "drpo_sim.integrations.verl", raising=False)
    import drpo_sim

    assert drpo_sim.integrations.__all__ == []  # the package itself never needs verl
    with pytest.raises(ModuleNotFoundError) as err:  # an ImportError, which pytest.importorskip skips on
        importlib.import_module("drpo_sim.integrations.verl")
    message = str(err.value)
    assert "pip install 'drpo_sim[verl]'" in message and "\n" not in message


@pytest.fixture(scope="module")
def dv():
    pytest.importorskip("verl", reason="verl is not installed (docs/integrations.md, 'verl')")
    return importlib.import_module("drpo_sim.integrations.verl")


@pytest.fixture(scope="module")
def verl_api(dv):
    """verl's own pieces the tests drive: its registry, its ppo_loss and its actor config."""
    from verl.trainer.config import RolloutCorrectionConfig
    from verl.trainer.ppo import core_algos
    from verl.workers.config import FSDPActorConfig, PolicyLossConfig
    from verl.workers.utils.losses import ppo_loss

    def config(loss_mode, loss_agg_mode="token-mean", *, bypass_mode=False, **kw):
        policy = PolicyLossConfig(loss_mode=loss_mode,
                                  rollout_correction=RolloutCorrectionConfig(bypass_mode=bypass_mode))
        return FSDPActorConfig(strategy="fsdp", rollout_n=1, ppo_micro_batch_size_per_gpu=1,
                               loss_agg_mode=loss_agg_mode, policy_loss=policy, **kw)

    return core_algos, ppo_loss, config


def batch(lengths, *, seed, dtype=torch.float32, width=WIDTH):
    """Right-padded responses of `lengths` tokens: pi (log_prob, a leaf), pi_old (old_log_prob), the
    engine's mu and one advantage per response, padding holding NaN in the constants."""
    g = torch.Generator().manual_seed(seed)
    b = len(lengths)
    mask = torch.arange(width)[None, :] < torch.tensor(lengths)[:, None]
    logp = (-3.0 * torch.rand(b, width, generator=g, dtype=torch.float64)).clamp(max=-1e-3)
    old = (logp + 0.2 * torch.randn(b, width, generator=g, dtype=torch.float64)).clamp(max=-1e-3)
    mu = (old + 0.2 * torch.randn(b, width, generator=g, dtype=torch.float64)).clamp(max=-1e-3)
    adv = torch.randn(b, 1, generator=g, dtype=torch.float64).expand(b, width)
    nan = torch.tensor(float("nan"), dtype=torch.float64)
    old, mu = torch.where(mask, old, nan), torch.where(mask, mu, nan)
    return {"log_prob": logp.to(dtype).requires_grad_(), "old_log_prob": old.to(dtype), "mu": mu.to(dtype),
            "advantages": adv.to(dtype).contiguous(), "mask": mask}


def through_ppo_loss(verl_api, config, b, log_prob, *, dp_size, batch_num_tokens, global_batch_size, prompt=2):
    """verl 0.9.1's ppo_loss on one micro-batch, as its FSDP engine hands it over: the model's log-probs
    flat over each row's prompt and response tokens, shifted left by one (`no_padding_2_padding` reads
    them back), the batch's tensors, and the global information the engine and the trainer set
    (dp_size, batch_num_tokens, global_batch_size) as non-tensor data."""
    from tensordict import TensorDict
    from verl.utils import tensordict_utils as tu

    _, ppo_loss, _ = verl_api
    mask = b["mask"]
    rows, width = mask.shape
    lengths = mask.sum(1).tolist()
    flat = torch.cat([piece for i, n in enumerate(lengths) for piece in (
        log_prob.new_zeros(prompt - 1), log_prob[i, :n], log_prob.new_zeros(1))])
    old = torch.where(mask, b["old_log_prob"], 0.0)  # verl's padded tensors hold zeros, not NaN
    data = TensorDict({
        "prompts": torch.ones(rows, prompt, dtype=torch.long), "responses": torch.ones(rows, width, dtype=torch.long),
        "attention_mask": torch.cat([torch.ones(rows, prompt, dtype=torch.long), mask.long()], 1),
        "response_mask": mask.long(), "old_log_probs": old, "advantages": b["advantages"]}, batch_size=[rows])
    tu.assign_non_tensor(data, dp_size=dp_size, batch_num_tokens=batch_num_tokens,
                         global_batch_size=global_batch_size)
    return ppo_loss(config, {"log_probs": flat}, data)


def grad(loss, leaf):
    return torch.autograd.grad(loss, leaf)[0]


def quiet(fn):
    """`fn()` with the MuFallbackWarning of verl's missing engine log-probs silenced (tested on its own)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"drpo_sim \(.*\): verl .* passes a policy loss no")
        return fn()


# ---------------------------------------------------------------------------------------------
# the registry


def test_every_objective_is_in_verls_registry_on_cpu(dv, verl_api):
    core_algos, _, _ = verl_api
    names = [f"drpo_sim/{n}" for n in objectives.available()]
    assert dv.REGISTERED == names
    vanilla = core_algos.get_policy_loss_fn("vanilla")
    assert dv.register_all() == names  # idempotent: the same names again
    for name in names:
        fn = core_algos.get_policy_loss_fn(name)
        assert callable(fn)
    loss = core_algos.get_policy_loss_fn("drpo_sim/drpo")
    assert isinstance(loss, dv.VerlPolicyLoss) and loss.objective == objectives.get("drpo")
    assert core_algos.get_policy_loss_fn("vanilla") is vanilla  # verl's own losses untouched
    with pytest.raises(ValueError, match="not drpo_sim's"):
        dv.register("ppo", name="vanilla")


def test_configured_objectives_and_corrections_on_cpu(dv, verl_api):
    core_algos, _, _ = verl_api
    d3 = dv.register("drpo", delta=3.0, name="drpo_sim/drpo_d3")
    assert core_algos.get_policy_loss_fn("drpo_sim/drpo_d3") is d3 and d3.objective == objectives.get("drpo", delta=3.0)
    tis = dv.register("grpo", correction="tis", cap=2.0)
    assert tis.name == "drpo_sim/grpo+tis" and core_algos.get_policy_loss_fn("drpo_sim/grpo+tis") is tis
    b = batch([9, 64, 30], seed=3)
    got, _ = tis(b["old_log_prob"], b["log_prob"], b["advantages"], b["mask"], "token-mean",
                 rollout_log_probs=b["mu"])
    want, _ = policy_loss(objectives.get("grpo", correction="tis", cap=2.0), b["log_prob"], b["mu"], b["advantages"],
                          b["mask"], logp_old=b["old_log_prob"])
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-8)
    torch.testing.assert_close(grad(got, b["log_prob"]), grad(want, b["log_prob"]), rtol=1e-6, atol=1e-9)


def test_what_verl_cannot_run_is_refused_in_one_line_on_cpu(dv, verl_api):
    core_algos, _, _ = verl_api
    with pytest.raises(ValueError, match=r"needs topk_tv .*which verl 0\.9 does not pass") as err:
        dv.register("dppo_topk_tv")
    assert "\n" not in str(err.value)
    refused = core_algos.get_policy_loss_fn("drpo_sim/dppo_topk_kl")  # registered by register_all, to say why
    b = batch([5, 2], seed=0)
    with pytest.raises(ValueError, match="needs topk_kl"):
        refused(b["old_log_prob"], b["log_prob"], b["advantages"], b["mask"], "token-mean")
    with pytest.raises(ValueError, match="statistic of the whole batch"):
        dv.register("drpo_no_abs_adv", adv_scale="batch", name="drpo_sim/drpo_no_abs_adv_batch")
    with pytest.raises(ValueError, match="reads pi_old .*bypass mode"):
        dv.register("minirl", old_log_prob="mu", name="drpo_sim_bypass/minirl")


# ---------------------------------------------------------------------------------------------
# one rank


@pytest.mark.parametrize("name", ["drpo", "ppo", "grpo", "dppo_tv", "minirl", "gspo"])
@pytest.mark.parametrize("mode", MODES)
def test_loss_and_gradient_are_policy_loss_on_one_rank_on_cpu(dv, verl_api, name, mode):
    """verl's ppo_loss with loss_mode drpo_sim/<name> on one rank (the global information the actor
    sets: dp_size 1, the batch's own tokens and sequences) is policy_loss in the same aggregation, mu and
    pi_old both verl's old_log_prob; a direct call with rollout_log_probs makes them mu and pi_old."""
    core_algos, _, config = verl_api
    b = batch([9, 64, 30, 1], seed=1)
    mask, lp = b["mask"], b["log_prob"]
    loss, metrics = quiet(lambda: through_ppo_loss(
        verl_api, config(f"drpo_sim/{name}", mode), b, lp, dp_size=1, batch_num_tokens=int(mask.sum()),
        global_batch_size=mask.shape[0]))
    want, _ = policy_loss(name, lp, b["old_log_prob"], b["advantages"], mask, agg_mode=mode,
                          logp_old=b["old_log_prob"])
    torch.testing.assert_close(loss, want, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(grad(loss, lp), grad(want, lp), rtol=1e-5, atol=1e-8)
    assert {"actor/pg_loss", "actor/ppo_kl", "drpo_sim/masked_frac"} <= set(metrics)

    fn = core_algos.get_policy_loss_fn(f"drpo_sim/{name}")  # called directly: no global information
    got, _ = fn(b["old_log_prob"], lp, b["advantages"], mask, mode, rollout_log_probs=b["mu"])
    want, _ = policy_loss(name, lp, b["mu"], b["advantages"], mask, agg_mode=mode, logp_old=b["old_log_prob"])
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-7)
    g = grad(got, lp)
    torch.testing.assert_close(g, grad(want, lp), rtol=1e-5, atol=1e-8)
    assert torch.isfinite(g).all()  # the NaN of the padding reached nothing


def test_token_sum_and_loss_scale_factor_on_cpu(dv, verl_api):
    """verl's token-sum (which policy_loss lacks) is the token mean times the tokens; its
    loss_scale_factor is policy_loss's horizon."""
    core_algos, _, config = verl_api
    fn = core_algos.get_policy_loss_fn("drpo_sim/drpo")
    b = batch([9, 64, 30, 1], seed=2)
    n = int(b["mask"].sum())
    args = (b["old_log_prob"], b["log_prob"], b["advantages"], b["mask"])
    got, _ = fn(*args, "token-sum", rollout_log_probs=b["mu"])
    want, _ = policy_loss("drpo", b["log_prob"], b["mu"], b["advantages"], b["mask"], logp_old=b["old_log_prob"])
    torch.testing.assert_close(got, n * want, rtol=1e-5, atol=1e-6)
    cfg = config("drpo_sim/drpo", "seq-mean-token-sum-norm", loss_scale_factor=4096)
    loss, _ = quiet(lambda: through_ppo_loss(verl_api, cfg, b, b["log_prob"], dp_size=1, batch_num_tokens=n,
                                             global_batch_size=4))
    want, _ = policy_loss("drpo", b["log_prob"], b["old_log_prob"], b["advantages"], b["mask"],
                          agg_mode="seq-mean-token-sum-norm", horizon=4096)
    torch.testing.assert_close(loss, want, rtol=1e-5, atol=1e-9)


def test_drpo_sims_ppo_is_verls_vanilla_loss_on_cpu(dv, verl_api):
    """drpo_sim's PPO with verl's dual clip (3) is verl's own "vanilla" loss, mu = old_log_prob: the
    same loss, gradient, actor/ppo_kl and actor/pg_clipfrac."""
    core_algos, _, config = verl_api
    ours = dv.register("ppo", dual_clip=3.0, name="drpo_sim/ppo_dual_clip")
    b = batch([9, 64, 30, 1], seed=4)
    args = (b["old_log_prob"], b["log_prob"], b["advantages"], b["mask"], "token-mean", config("vanilla"))
    loss, metrics = quiet(lambda: ours(*args))
    want, verls = core_algos.get_policy_loss_fn("vanilla")(*args)
    torch.testing.assert_close(loss, want, rtol=1e-6, atol=1e-8)
    torch.testing.assert_close(grad(loss, b["log_prob"]), grad(want, b["log_prob"]), rtol=1e-6, atol=1e-9)
    for key in ("actor/ppo_kl", "actor/pg_clipfrac"):
        assert metrics[key] == pytest.approx(verls[key], rel=1e-6, abs=1e-9), key
    assert metrics["actor/pg_clipfrac"] > 0


def test_metrics_are_floats_outside_the_graph_on_cpu(dv):
    b = batch([9, 64, 30, 1], seed=5)
    args = (b["old_log_prob"], b["log_prob"], b["advantages"], b["mask"], "token-mean")
    _, full = dv.VerlPolicyLoss(objectives.get("drpo"), name="full")(*args, rollout_log_probs=b["mu"])
    assert all(type(v) is float for v in full.values())
    _, stats = policy_loss("drpo", b["log_prob"].detach(), b["mu"], b["advantages"], b["mask"],
                           logp_old=b["old_log_prob"], metrics="full")
    mask = b["mask"]
    kl = float(torch.where(mask, b["old_log_prob"] - b["log_prob"].detach(), 0.0).sum() / mask.sum())
    assert full.pop("actor/ppo_kl") == pytest.approx(kl, rel=1e-6)
    assert full == {"actor/pg_clipfrac": stats["actor/masked_frac"],
                    **{f"drpo_sim/{k[6:]}": v for k, v in stats.items() if k != "actor/pg_loss"}}
    _, few = dv.VerlPolicyLoss(objectives.get("drpo"), name="few", metrics=False)(*args, rollout_log_probs=b["mu"])
    assert list(few) == ["actor/ppo_kl"]


# ---------------------------------------------------------------------------------------------
# mu, pi_old and verl's rollout correction


def test_mu_falls_back_to_old_log_prob_with_a_warning_on_cpu(dv, verl_api, monkeypatch):
    """verl's ppo_loss hands no engine log-probs: mu is old_log_prob, with one MuFallbackWarning; a
    caller's rollout_log_probs are mu, without one."""
    core_algos, _, config = verl_api
    fn = core_algos.get_policy_loss_fn("drpo_sim/minirl")
    monkeypatch.setattr(fn, "mu_source", None)
    b = batch([9, 64], seed=6)
    mask = b["mask"]
    info = dict(dp_size=1, batch_num_tokens=int(mask.sum()), global_batch_size=2)
    with pytest.warns(dv.MuFallbackWarning, match=r"mu \(logp_behavior\) is old_log_prob"):
        through_ppo_loss(verl_api, config("drpo_sim/minirl"), b, b["log_prob"], **info)
    with warnings.catch_warnings():
        warnings.simplefilter("error", dv.MuFallbackWarning)  # once per change of mu's source
        through_ppo_loss(verl_api, config("drpo_sim/minirl"), b, b["log_prob"], **info)
        fn(b["old_log_prob"], b["log_prob"], b["advantages"], mask, rollout_log_probs=b["mu"])
    assert fn.mu_source == "rollout_log_probs"


def test_bypass_mode_reads_old_log_prob_as_mu_on_cpu(dv, verl_api):
    """Registered with old_log_prob="mu" (verl's bypass mode), old_log_prob is mu and there is no pi_old;
    a pi_old loss refuses a config in bypass mode."""
    core_algos, _, config = verl_api
    names = dv.register_all("drpo_sim_bypass/", old_log_prob="mu")
    assert names[0] == "drpo_sim_bypass/pg_is"
    b = batch([9, 64, 30], seed=7)
    args = (b["mu"], b["log_prob"], b["advantages"], b["mask"], "token-mean")
    with warnings.catch_warnings():
        warnings.simplefilter("error", dv.MuFallbackWarning)
        got, _ = core_algos.get_policy_loss_fn("drpo_sim_bypass/drpo")(*args)
    want, _ = policy_loss("drpo", b["log_prob"], b["mu"], b["advantages"], b["mask"])
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-8)
    with pytest.raises(ValueError, match="reads pi_old"):
        core_algos.get_policy_loss_fn("drpo_sim_bypass/minirl")(*args)
    with pytest.raises(ValueError, match="old_log_prob='mu'"):
        core_algos.get_policy_loss_fn("drpo_sim/drpo")(*args, config("drpo_sim/drpo", bypass_mode=True))


def test_rollout_is_weights_multiply_the_loss_as_in_verls_losses_on_cpu(dv):
    """verl's rollout_is_weights (truncated pi_old/mu) multiply the per-token loss when mu is the
    old_log_prob fallback, and are refused when mu is the engine's (a double correction)."""
    fn = dv.VerlPolicyLoss(objectives.get("drpo"), name="is")
    b = batch([9, 64, 30], seed=8)
    mask, lp = b["mask"], b["log_prob"]
    w = torch.where(mask, torch.exp(b["old_log_prob"] - b["mu"]).clamp(max=2.0), 0.0)
    got, _ = quiet(lambda: fn(b["old_log_prob"], lp, b["advantages"], mask, "token-mean", None, w))
    surrogate = objectives.get("drpo").surrogate(torch.where(mask, lp, 0.0), torch.where(mask, b["old_log_prob"], 0.0),
                                                 b["advantages"])
    want = -(torch.where(mask, surrogate, 0.0) * w).sum() / mask.sum()
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-8)
    with pytest.raises(ValueError, match="correct it twice"):
        fn(b["old_log_prob"], lp, b["advantages"], mask, "token-mean", None, w, rollout_log_probs=b["mu"])


# ---------------------------------------------------------------------------------------------
# data parallelism


def ranks_of(lengths_by_rank, *, seed):
    """The ranks' micro-batches as rows of one batch: (whole batch, [[(rows, micro-batch), ...], ...])."""
    flat = [n for rank in lengths_by_rank for micro in rank for n in micro]
    whole = batch(flat, seed=seed, dtype=torch.float64)
    ranks, start = [], 0
    for rank in lengths_by_rank:
        micros = []
        for micro in rank:
            rows = slice(start, start + len(micro))
            micros.append((rows, {k: v[rows] for k, v in whole.items()}))
            start += len(micro)
        ranks.append(micros)
    return whole, ranks


@pytest.mark.parametrize("name", ["drpo", "gspo"])
@pytest.mark.parametrize("mode", MODES)
def test_data_parallel_gradient_is_the_global_batchs_on_cpu(dv, verl_api, name, mode):
    """Two ranks holding 248 and 335 tokens, two micro-batches each, every micro-batch through verl's
    ppo_loss with the global information the actor sets (dp_size 2, the 583 tokens, the 16 sequences):
    summing each rank's micro-batch gradients and averaging over the ranks, as FSDP does, gives
    policy_loss's gradient over the whole mini-batch, to 1e-6.

    DDP averages the parameters' gradients, which are linear in the gradients with respect to the
    log-probs: with the log-probs one leaf of the whole batch whose rows each rank reads, that is the
    gradient of (sum of all micro-batch losses) / dp_size."""
    _, _, config = verl_api
    whole, ranks = ranks_of(RANKS, seed=11)
    assert [sum(int(m["mask"].sum()) for _, m in rank) for rank in ranks] == [248, 335]
    lp = whole["log_prob"]
    cfg = config(f"drpo_sim/{name}", mode)
    info = dict(dp_size=2, batch_num_tokens=583, global_batch_size=16)
    total = quiet(lambda: sum(through_ppo_loss(verl_api, cfg, micro, lp[rows], **info)[0]
                              for rank in ranks for rows, micro in rank))
    ddp = grad(total / 2, lp)
    want, _ = policy_loss(name, lp, whole["old_log_prob"], whole["advantages"], whole["mask"], agg_mode=mode)
    torch.testing.assert_close(ddp, grad(want, lp), rtol=1e-6, atol=1e-12)
    torch.testing.assert_close(total.detach() / 2, want.detach(), rtol=1e-6, atol=1e-12)  # the loss too


def test_policy_loss_on_each_rank_is_off_by_the_ranks_token_share_on_cpu(dv, verl_api):
    """The trap the adapter avoids (the issue's numbers): policy_loss's token mean on each rank's
    micro-batch of 248 and 335 tokens, averaged over the two ranks, scales each rank's token gradients
    by 583 / (2 n): 1.175 and 0.870 times the whole batch's; verl's global normalisation is exact."""
    _, _, config = verl_api
    whole, ranks = ranks_of([[[n for m in rank for n in m]] for rank in RANKS], seed=12)  # one micro-batch a rank
    lp, obj = whole["log_prob"], objectives.get("drpo", delta=2.5)
    want = grad(policy_loss(obj, lp, whole["old_log_prob"], whole["advantages"], whole["mask"])[0], lp)
    naive = grad(sum(policy_loss(obj, lp[rows], m["old_log_prob"], m["advantages"], m["mask"])[0]
                     for rank in ranks for rows, m in rank) / 2, lp)
    on = want != 0
    for (rows, m), n, factor in zip([rank[0] for rank in ranks], (248, 335), (1.175, 0.870)):
        ratio = (naive[rows] / torch.where(on[rows], want[rows], 1.0))[on[rows]]
        torch.testing.assert_close(ratio, torch.full_like(ratio, 583 / (2 * n)), rtol=1e-9, atol=0)
        assert 583 / (2 * n) == pytest.approx(factor, abs=5e-4)
    cfg = config("drpo_sim/drpo_d25", "token-mean")
    dv.register(obj, name="drpo_sim/drpo_d25")
    total = quiet(lambda: sum(through_ppo_loss(verl_api, cfg, m, lp[rows], dp_size=2, batch_num_tokens=583,
                                               global_batch_size=16)[0] for rank in ranks for rows, m in rank))
    torch.testing.assert_close(grad(total / 2, lp), want, rtol=1e-6, atol=1e-12)


# ---------------------------------------------------------------------------------------------
# the documentation


def test_documented_registration_and_loss_modes_on_cpu(dv, verl_api):
    """The Python block of the verl section of docs/integrations.md runs, and every loss_mode the
    section names is in verl's registry."""
    core_algos, _, _ = verl_api
    text = DOC.read_text()
    section = text[text.index("## verl"):]
    section = section[:section.index("\n## ", 1)] if "\n## " in section[1:] else section
    m = re.search(r"<!-- snippet: verl_register.*?-->\n```python\n(.*?)```", section, re.S)
    assert m, "the verl_register snippet block is missing from docs/integrations.md"
    exec(compile(m.group(1), str(DOC), "exec"), {})
    modes = set(re.findall(r"loss_mode=(drpo_sim/[\w.+-]+)", section))
    assert "drpo_sim/drpo" in modes
    for mode in modes:
        assert callable(core_algos.get_policy_loss_fn(mode)), mode
