"""drpo_sim.arena.train: the batched RL loop on a tiny arena: its table, shared seeds, the exact
fp32 control, independence of the runs in a batch, the per-run optimiser, and bad configurations."""

from __future__ import annotations

import dataclasses
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pandas as pd
import pytest
import torch

from drpo_sim.arena import pretrain as pretrain_module
from drpo_sim.arena.model import ArenaModel
from drpo_sim.arena.pretrain import BaseModelConfig, pretrain
from drpo_sim.arena.task import WalkTask
from drpo_sim.arena.train import (
    GRAD_SHARES,
    METRICS,
    ArenaConfig,
    Contestant,
    _Adam,
    cell_spec,
    run_cell,
    train,
)

TASK = WalkTask(vocab_size=16, n_classes=4, response_len=6)
BASE = BaseModelConfig(model=ArenaModel(vocab_size=16, max_len=TASK.seq_len, d_model=16, n_heads=2, d_mlp=32),
                       task=TASK, steps=20)
CONFIG = ArenaConfig(base=BASE, steps=4, n_eval=8, eval_every=2, prompts_per_step=2, group_size=4,
                     updates_per_batch=2, lr=3e-3)
PG, TV = Contestant.of("pg_is"), Contestant.of("dppo_tv", delta=0.05)


def test_table_columns_and_rows_on_cpu():
    df = train(CONFIG, [PG, TV], [0, 3])
    assert len(df) == 2 * 2 * CONFIG.steps
    for col in ("objective", "variant", "method", "anchor", "params", "precision", "lr", "seed", "step",
                "collapsed", "initial_heldout_reward", *METRICS):
        assert col in df.columns, col
    assert sorted(df["seed"].unique()) == [0, 3]
    assert set(df["variant"]) == {"", "delta=0.05"}
    # held-out reward only where evaluated (every 2 steps and the last)
    assert df.loc[df["step"].isin([2, 4]), "heldout_reward"].notna().all()
    assert df.loc[df["step"].isin([1, 3]), "heldout_reward"].isna().all()
    assert (df["response_len"] == TASK.response_len).all()
    shares = df[list(GRAD_SHARES)].sum(axis=1)
    np.testing.assert_allclose(shares[df["grad_norm"] > 0], 1.0, rtol=1e-9)
    assert df["mismatch_mean"].gt(0).all()  # bf16 engine


def test_runs_of_a_seed_share_prompts_and_draws_on_cpu():
    df = train(CONFIG, [PG, TV], [0, 1])
    first = df[df["step"] == 1].set_index(["method", "seed"])
    # step 1: every run starts from the base model and sees the same rollout as its seed's others
    for col in ("reward", "mismatch_mean", "entropy"):
        assert first.loc[("pg_is", 0), col] == first.loc[("dppo_tv delta 0.05", 0), col]
    assert first.loc[("pg_is", 0), "reward"] != first.loc[("pg_is", 1), "reward"]


def test_a_run_does_not_depend_on_the_others_in_its_batch_on_cpu():
    together = train(CONFIG, [PG, TV], [0, 1])
    alone = train(CONFIG, [TV], [1])
    a = together[(together["method"] == TV.label) & (together["seed"] == 1)].reset_index(drop=True)
    cols = ["reward", "heldout_reward", "mismatch_mean", "grad_norm"]
    pd.testing.assert_frame_equal(a[cols], alone[cols].reset_index(drop=True), rtol=1e-5, atol=1e-7)


def test_fp32_engine_has_no_mismatch_and_the_anchors_agree_on_cpu():
    cfg = dataclasses.replace(CONFIG, precision="fp32")
    minirl = Contestant.of("ppo", anchor="recomputed")
    df = train(cfg, [Contestant.of("ppo"), minirl], [0])
    assert (df[["mismatch_mean", "mismatch_max", "kl_k3"]] == 0).all().all()
    a, b = (df[df["anchor"] == x].reset_index(drop=True) for x in ("rollout", "recomputed"))
    pd.testing.assert_series_equal(a["heldout_reward"], b["heldout_reward"])
    assert minirl.variant == "anchor=recomputed"


def test_objectives_of_three_policies_and_sequences_train_in_the_arena_on_cpu():
    """They read the trainer's pi_old as logp_old and each response as a sequence. With an fp32
    engine pi_old = mu bit for bit: decoupled PPO is then PPO (its gap b is 1), and the corrected
    GRPO is GRPO."""
    three = [Contestant.of("minirl"), Contestant.of("decoupled_ppo"), Contestant.of("gspo"),
             Contestant.of("grpo", correction="seq_tis", cap=2.0)]
    df = train(CONFIG, three, [0])
    assert np.isfinite(df["grad_norm"]).all() and df["mismatch_mean"].gt(0).all()
    assert set(df["variant"]) >= {"correction=seq_tis, cap=2.0"}
    fp32 = dataclasses.replace(CONFIG, precision="fp32")
    pairs = train(fp32, [Contestant.of("ppo"), Contestant.of("decoupled_ppo"), Contestant.of("grpo"),
                         Contestant.of("grpo", correction="tis")], [0])
    cols = ["reward", "heldout_reward", "grad_norm"]
    by = {m: g[cols].reset_index(drop=True) for m, g in pairs.groupby("method", sort=False)}
    names = list(by)
    pd.testing.assert_frame_equal(by[names[0]], by[names[1]])
    pd.testing.assert_frame_equal(by[names[2]], by[names[3]])


def test_topk_dppo_reads_the_engines_topk_in_the_arena_on_cpu():
    """The engine reports its top tokens when a Top-K contestant runs. With an fp32 engine the Top-K
    TV at the first update is a few float32 ulps (the engine's incremental pass against the trainer's
    full one), so DPPO-TopK-TV is DPPO-TV there; under bf16 both train with finite gradients."""
    topk, binary = Contestant.of("dppo_topk_tv", delta=0.05), Contestant.of("dppo_tv", delta=0.05)
    df = train(CONFIG, [topk, Contestant.of("dppo_topk_kl")], [0])
    assert np.isfinite(df["grad_norm"]).all() and df["mismatch_mean"].gt(0).all()
    fp32 = dataclasses.replace(CONFIG, precision="fp32", steps=1, updates_per_batch=1)
    pair = train(fp32, [topk, binary], [0])
    assert pair.groupby("method")["masked_frac"].first().eq(0).all()
    pd.testing.assert_series_equal(*(g["grad_norm"].reset_index(drop=True) for _, g in pair.groupby("method")),
                                   rtol=1e-6)


def test_the_engine_reports_its_topk_on_cpu():
    from drpo_sim.arena.model import Engine, replicate, response_logprobs
    from drpo_sim.arena.pretrain import pretrain as base

    params = replicate(base(BASE), 1)
    prompts = TASK.prompts(3, torch.Generator().manual_seed(0))[None]
    u = torch.rand(TASK.response_len, 1, 3, generator=torch.Generator().manual_seed(1))
    roll = Engine(params, BASE.model, "fp32").rollout(prompts, TASK.response_len, lambda j: u[j], topk=5)
    assert roll.topk_ids.shape == roll.topk_logp.shape == (1, 3, TASK.response_len, 5)
    lp_all, _ = response_logprobs(params, BASE.model, roll.seqs, TASK.prompt_len)
    want_lp, want_ids = lp_all.topk(5, dim=-1)
    torch.testing.assert_close(roll.topk_logp, want_lp, atol=1e-5, rtol=0)
    assert (roll.topk_logp[..., :-1] >= roll.topk_logp[..., 1:]).all()
    assert Engine(params, BASE.model, "bf16").rollout(prompts, TASK.response_len, lambda j: u[j]).topk_ids is None


def test_moe_reports_flip_rate_and_replays_routes_on_cpu():
    moe = dataclasses.replace(BASE, model=dataclasses.replace(BASE.model, n_experts=2))
    df = train(dataclasses.replace(CONFIG, base=moe, routing_replay=True), [PG], [0])
    assert df["flip_rate"].between(0, 1).all()
    assert set(df["variant"]) == {"moe_replay"}
    dense = train(CONFIG, [PG], [0])
    assert dense["flip_rate"].isna().all()


def test_cell_spec_round_trip_on_cpu():
    spec = cell_spec(CONFIG, [PG, TV], [0])
    assert spec["contestants"][1]["params"]["delta"] == 0.05
    pd.testing.assert_frame_equal(run_cell(spec), train(CONFIG, [PG, TV], [0]))
    assert ArenaConfig.from_flat(CONFIG.flat()) == CONFIG


def test_batched_adamw_matches_torch_on_cpu():
    gen = torch.Generator().manual_seed(0)
    w = torch.randn(3, 4, 5, generator=gen)
    ours = _Adam({"w": w.clone()}, lr=1e-2, weight_decay=0.01)
    ref = [torch.nn.Parameter(w[r].clone()) for r in range(3)]
    opt = torch.optim.AdamW(ref, lr=1e-2, weight_decay=0.01)
    for _ in range(3):
        g = torch.randn(3, 4, 5, generator=gen)
        ok = torch.tensor([True, False, True])  # run 1 skips its updates
        ours.step({"w": g}, ok)
        for r in (0, 2):
            ref[r].grad = g[r].clone()
        ref[1].grad = None
        opt.step()
    for r in range(3):
        torch.testing.assert_close(ours.params["w"][r], ref[r].detach(), rtol=1e-5, atol=1e-7)
    assert torch.equal(ours.params["w"][1], w[1])


@pytest.mark.parametrize("kwargs, match", [
    ({"precision": "fp4"}, "unknown precision 'fp4'"),
    ({"routing_replay": True}, "routing replay needs a mixture-of-experts model"),
    ({"updates_per_batch": 3}, "does not split into 3 mini-batches"),
    ({"lr": 0}, "lr must be a finite number > 0"),
    ({"group_size": 1}, "group_size must be at least 2"),
    ({"reward_scale_spread": 7.0}, r"reward_scale_spread must be in \[0, 6\] decades"),
    ({"reward_scale_spread": -1.0}, r"reward_scale_spread must be in \[0, 6\] decades"),
])
def test_impossible_configurations_on_cpu(kwargs, match):
    with pytest.raises(ValueError, match=match):
        dataclasses.replace(CONFIG, **kwargs)


def test_reward_scales_reach_the_learner_not_the_reported_reward_on_cpu():
    ablation = Contestant.of("drpo_no_abs_adv", delta=0.05, adv_scale="batch")
    plain = train(CONFIG, [PG, ablation], [0, 1])
    wide = train(dataclasses.replace(CONFIG, reward_scale_spread=2.0), [PG, ablation], [0, 1])
    assert set(plain["reward_scale_spread"]) == {0.0} and set(wide["reward_scale_spread"]) == {2.0}
    first, first_wide = plain[plain["step"] == 1], wide[wide["step"] == 1]
    # the same first rollout, and its reward reported on the task's own scale...
    np.testing.assert_array_equal(first["reward"].to_numpy(), first_wide["reward"].to_numpy())
    np.testing.assert_array_equal(first["mismatch_mean"].to_numpy(), first_wide["mismatch_mean"].to_numpy())
    # ...while the learner's advantages, and so its gradient, change
    assert not np.allclose(first["grad_norm"].to_numpy(), first_wide["grad_norm"].to_numpy())
    assert np.isfinite(wide["grad_norm"]).all() and not wide["nonfinite"].any()


def test_bad_contestants_and_seeds_on_cpu():
    with pytest.raises(ValueError, match="unknown anchor 'engine'"):
        Contestant.of("pg_is", anchor="engine")
    with pytest.raises(ValueError, match="unknown objective"):
        Contestant.of("nope")
    with pytest.raises(ValueError, match="listed twice"):
        train(CONFIG, [PG, PG], [0])
    with pytest.raises(ValueError, match="distinct non-negative integers"):
        train(CONFIG, [PG], [0, 0])
    with pytest.raises(ValueError, match="at least one contestant"):
        train(CONFIG, [], [0])
    with pytest.raises(ValueError, match="cannot represent the task"):
        BaseModelConfig(model=ArenaModel(vocab_size=32), task=WalkTask())


def test_pretraining_is_cached_and_deterministic_on_cpu():
    a, b = pretrain(BASE), pretrain(BASE)
    for k in a:
        assert torch.equal(a[k], b[k])
    a["emb"].zero_()  # a copy: the cache is untouched
    assert not torch.equal(pretrain(BASE)["emb"], a["emb"])


def test_pretraining_runs_on_one_thread_whoever_calls_it_on_cpu(monkeypatch):
    """The cached base must not depend on whether a worker (one thread), the CLI or a benchmark
    (the machine's threads) trained it first."""
    seen, real = [], pretrain_module.logits

    def spy(*args, **kwargs):
        seen.append(torch.get_num_threads())
        return real(*args, **kwargs)

    monkeypatch.setattr(pretrain_module, "logits", spy)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        pretrain_module._train(dataclasses.replace(BASE, steps=2))
        assert seen and set(seen) == {1} and torch.get_num_threads() == 2  # restored after
    finally:
        torch.set_num_threads(before)


def _fresh(monkeypatch, folder) -> None:
    monkeypatch.setenv(pretrain_module.CACHE_ENV, str(folder))
    pretrain_module._pretrain.cache_clear()


def test_the_disk_cache_returns_the_trained_base_bit_for_bit_on_cpu(tmp_path, monkeypatch):
    base = dataclasses.replace(BASE, seed=7)
    _fresh(monkeypatch, tmp_path)
    trained = pretrain(base)
    name = f"{pretrain_module.cache_key(base)}.pt"
    assert {f.name for f in (tmp_path / "arena_bases").iterdir()} == {name, f"{name}.lock"}  # no temporary left
    _fresh(monkeypatch, tmp_path)  # a new process: only the disk remains
    calls = []
    monkeypatch.setattr(pretrain_module, "_train", lambda c: calls.append(c))
    loaded = pretrain(base)
    assert calls == [] and loaded.keys() == trained.keys()
    assert all(torch.equal(loaded[k], trained[k]) and loaded[k].dtype == trained[k].dtype for k in trained)
    # another seed, size or budget is another base
    keys = {pretrain_module.cache_key(b) for b in (base, BASE, dataclasses.replace(base, steps=21))}
    assert len(keys) == 3
    pretrain_module._pretrain.cache_clear()


def test_two_processes_needing_one_base_train_it_once_on_cpu(tmp_path, monkeypatch):
    """The lock file: the second caller waits for the first one's file (two threads stand for two
    worker processes; each opens the lock file itself, as a process would)."""
    base = dataclasses.replace(BASE, seed=11)
    _fresh(monkeypatch, tmp_path)
    trained, real = [], pretrain_module._train

    def slow_train(config):
        trained.append(config)
        time.sleep(0.5)  # long enough for the other thread to reach the lock
        return real(config)

    monkeypatch.setattr(pretrain_module, "_train", slow_train)
    with ThreadPoolExecutor(2) as pool:
        a, b = pool.map(lambda _: pretrain_module._pretrain.__wrapped__(base), range(2))
    assert trained == [base] and all(torch.equal(a[k], b[k]) for k in a)
    pretrain_module._pretrain.cache_clear()


def test_an_unreadable_cached_base_is_named_and_trained_again_on_cpu(tmp_path, monkeypatch):
    base = dataclasses.replace(BASE, seed=8)
    _fresh(monkeypatch, tmp_path)
    path = tmp_path / "arena_bases" / f"{pretrain_module.cache_key(base)}.pt"
    path.parent.mkdir()
    path.write_bytes(b"half a file")  # an interrupted copy
    with pytest.warns(UserWarning, match=rf"{path}: unreadable cached arena base"):
        trained = pretrain(base)
    _fresh(monkeypatch, tmp_path)
    assert all(torch.equal(pretrain(base)[k], v) for k, v in trained.items())  # replaced by a good file
    # a file holding another configuration is not taken for this one
    other = dataclasses.replace(base, seed=9)
    path.rename(tmp_path / "arena_bases" / f"{pretrain_module.cache_key(other)}.pt")
    _fresh(monkeypatch, tmp_path)
    with pytest.warns(UserWarning, match="holds another configuration"):
        pretrain(other)
    pretrain_module._pretrain.cache_clear()


def test_an_unwritable_or_disabled_cache_still_trains_on_cpu(tmp_path, monkeypatch):
    blocker = tmp_path / "a_file"
    blocker.write_text("")  # the cache folder would have to be inside a file
    _fresh(monkeypatch, blocker)
    with pytest.warns(UserWarning, match="cannot write the arena base cache"):
        a = pretrain(dataclasses.replace(BASE, seed=10))
    _fresh(monkeypatch, "off")
    assert pretrain_module.cache_dir() is None
    b = pretrain(dataclasses.replace(BASE, seed=10))
    assert all(torch.equal(a[k], b[k]) for k in a)
    monkeypatch.delenv(pretrain_module.CACHE_ENV)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert pretrain_module.cache_dir() == tmp_path / "xdg" / "drpo_sim" / "arena_bases"
    pretrain_module._pretrain.cache_clear()
