"""drpo_sim.lm.rl: the RL loop of the tiny transformer lab (its loss is the registry's), its table,
determinism, token log, configuration checks, and one run as a cell (``run_cell``)."""

from __future__ import annotations

import dataclasses
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from drpo_sim import objectives
from drpo_sim.lm.model import generate, token_logprobs
from drpo_sim.lm.precision import engine_copy
from drpo_sim.lm.pretrain import PretrainConfig
from drpo_sim.lm.rl import METRICS, LabConfig, _rollout_shape, run_cell, train
from drpo_sim.lm.task import EOS, PAD, VOCAB
from drpo_sim.tokens import ALL_COLUMNS, TokenLogWriter, concat, load_token_log, read_token_log, read_token_log_metadata

# a small run: 2 prompts x G = 4, two mini-batch updates, 16 held-out prompts
TINY = {"group_size": 4, "prompts_per_step": 2, "updates_per_batch": 2, "n_eval": 16}


def _rollout(model, task, n=256, seed=1):
    digits = task.sample_digits(n, torch.Generator().manual_seed(seed))
    return generate(model, task.prompts(digits), task.response_len, eos_id=EOS, pad_id=PAD,
                    generator=torch.Generator().manual_seed(seed + 1))


def test_rl_loss_gradient_is_the_registry_surrogate_gradient_on_cpu(lm_checkpoint):
    """The loop's loss is policy_loss: its gradient through the model equals the chain rule of the
    registry's closed-form dJ/dlogp = A r w, aggregated with seq-mean-token-sum-norm."""
    model, task = lm_checkpoint.model(), lm_checkpoint.task
    roll = _rollout(engine_copy(model, "bf16"), task, n=16)
    adv = torch.linspace(-1, 1, 16)
    obj = objectives.get("drpo", delta=0.05)
    logp = token_logprobs(model, roll.seqs, task.prompt_len)
    loss, metrics = objectives.policy_loss(obj, logp, roll.logp, adv, roll.mask,
                                           agg_mode="seq-mean-token-sum-norm", horizon=task.response_len)
    g_auto = torch.autograd.grad(loss, logp)[0]
    c = objectives.aggregation_weights(roll.mask, "seq-mean-token-sum-norm", horizon=task.response_len,
                                       dtype=torch.float32)
    g_closed = -c * obj.grad_logp(logp.detach(), roll.logp, adv[:, None].expand_as(logp))
    torch.testing.assert_close(g_auto, g_closed, rtol=1e-5, atol=1e-8)
    assert metrics["actor/valid_tokens"] == float(roll.mask.sum())


def test_rl_with_pg_is_improves_the_held_out_reward_on_cpu(lm_checkpoint):
    df = train(LabConfig(objective="pg_is", precision="fp32", steps=20, seed=0), lm_checkpoint)
    assert list(df["step"]) == list(range(1, 21))
    assert set(METRICS) <= set(df.columns)
    start = df["initial_eval_reward"].iloc[0]
    assert 0.2 < start < 0.6  # the pretrained model is clearly imperfect
    assert df["eval_reward"].tail(5).mean() > start + 0.03
    assert (df["mismatch_mean"] == 0).all() and (df["log_ratio_mean"] == 0).all()  # fp32 engine: on-policy
    for col in ("pi_minus_mu_mean", "pi_minus_mu_min", "pi_minus_mu_max", "kl_k3"):
        assert (df[col] == 0).all(), col
    assert df["response_len"].between(1, lm_checkpoint.task.response_len).all()
    assert not df["nonfinite"].any()
    assert df["eval_greedy"].notna().sum() == 2  # steps 10 and 20


def test_training_is_deterministic_given_the_seed_on_cpu(lm_checkpoint):
    a = train(LabConfig(objective="grpo", precision="bf16", steps=3, seed=5), lm_checkpoint)
    b = train(LabConfig(objective="grpo", precision="bf16", steps=3, seed=5), lm_checkpoint)
    c = train(LabConfig(objective="grpo", precision="bf16", steps=3, seed=6), lm_checkpoint)
    pd.testing.assert_frame_equal(a, b)
    assert not np.allclose(a["reward"], c["reward"]) or not np.allclose(a["eval_reward"], c["eval_reward"])
    assert (a["mismatch_mean"] > 0).all()


def test_token_log_is_readable_and_complete_on_cpu(lm_checkpoint, tmp_path):
    cfg = LabConfig(objective="dppo_tv", precision="fp8", steps=2, seed=3)
    path = tmp_path / "tokens.parquet"
    with TokenLogWriter(path, metadata={"config": cfg.flat()}) as w:
        df = train(cfg, lm_checkpoint, w)
    batches = list(read_token_log(path))
    assert batches
    tb = load_token_log(path)
    # every column but the Top-K divergences, which only a Top-K objective's log carries
    assert set(tb.columns) == set(ALL_COLUMNS) - {"topk_tv", "topk_kl"}
    task = lm_checkpoint.task
    per_step = cfg.prompts_per_step * cfg.group_size * task.response_len
    assert len(tb) == cfg.steps * per_step
    assert sorted(set(tb.update.tolist())) == list(range(cfg.updates_per_batch))
    assert sorted(set(tb.step.tolist())) == [1, 2] and set(tb.seed.tolist()) == {3}
    assert len(set(tb.sample_id.tolist())) == cfg.steps * cfg.prompts_per_step * cfg.group_size
    assert len(set(tb.group_id.tolist())) == cfg.steps * cfg.prompts_per_step
    assert tb.position.max() == task.response_len - 1
    m = tb.mask
    assert np.all(tb.logp[m] <= 0) and np.all(tb.logp_behavior[m] <= 0) and np.all(tb.logp_old[m] <= 0)
    # logp_old is the trainer at rollout time: in the first update of a step it equals logp
    first = m & (tb.update == 0)
    np.testing.assert_array_equal(tb.logp[first], tb.logp_old[first])
    # the rollout-time mismatch in the table is the one in the log
    step1 = m & (tb.step == 1)
    shift = np.abs(np.exp(tb.logp_old[step1]) - np.exp(tb.logp_behavior[step1]))
    assert shift.mean() == pytest.approx(df["mismatch_mean"].iloc[0], rel=1e-6)
    diff = np.exp(tb.logp_old[step1]) - np.exp(tb.logp_behavior[step1])
    row = df.iloc[0]
    assert (diff.mean(), diff.min(), diff.max()) == pytest.approx(
        (row["pi_minus_mu_mean"], row["pi_minus_mu_min"], row["pi_minus_mu_max"]), rel=1e-6, abs=1e-12)
    assert row["pi_minus_mu_min"] < 0 < row["pi_minus_mu_max"]  # fp8 rounding moves tokens both ways
    log_r = tb.logp_old[step1] - tb.logp_behavior[step1]
    assert np.mean(np.exp(log_r) - 1 - log_r) == pytest.approx(row["kl_k3"], rel=1e-5)
    assert row["kl_k3"] > 0
    n_samples = len(set(tb.sample_id[tb.step == 1].tolist()))  # each in one mini-batch of the step
    assert row["response_len"] == pytest.approx(m[tb.step == 1].sum() / n_samples)
    assert 0 < row["entropy"] < np.log(len(VOCAB))
    # group-relative advantages without std: zero mean per group
    adv = pd.DataFrame({"g": tb.group_id, "s": tb.sample_id, "a": tb.advantage}).drop_duplicates("s")
    assert np.abs(adv.groupby("g")["a"].mean()).max() < 1e-6
    assert read_token_log_metadata(path)["config"]["precision"] == "fp8"


def test_lab_config_rejects_bad_input():
    with pytest.raises(ValueError, match="unknown objective"):
        LabConfig(objective="nope")
    with pytest.raises(ValueError, match="valid parameters"):
        LabConfig(objective="drpo", params={"eps": 1.0})
    with pytest.raises(ValueError, match="precision"):
        LabConfig(precision="fp4")
    with pytest.raises(ValueError, match="mini-batches"):
        LabConfig(group_size=3, prompts_per_step=3, updates_per_batch=4)
    assert LabConfig().agg_mode == "seq-mean-token-sum-norm"


# ---------------------------------------------------------------------------------------------
# one run as a cell (drpo_sim.run.cells, kind "lab")


def test_run_cell_gives_the_table_and_the_token_batches(lm_checkpoint):
    cfg = LabConfig(objective="drpo", params={"delta": 2.5}, precision="bf16", steps=2, seed=1, **TINY)
    spec = {"lab": dataclasses.asdict(cfg), "pretrain": dataclasses.asdict(lm_checkpoint.config), "token_log": True}
    table, batches, meta = run_cell(spec, lm_checkpoint)
    # the table is train's, one row per step
    pd.testing.assert_frame_equal(table, train(cfg, lm_checkpoint))
    assert list(table["step"]) == [1, 2] and set(table["method"]) == {"drpo"} and set(table["precision"]) == {"bf16"}
    assert json.loads(table["method_params"].iloc[0]) == {"delta": 2.5}
    # one batch per optimiser update, every sampled token of the run
    assert len(batches) == cfg.steps * cfg.updates_per_batch
    tokens = concat(batches)
    n_seq = cfg.prompts_per_step * cfg.group_size
    assert len(tokens) == cfg.steps * n_seq * lm_checkpoint.task.response_len
    assert sorted(set(tokens.step.tolist())) == [1, 2] and set(tokens.seed.tolist()) == {1}
    assert sorted(set(tokens.update.tolist())) == [0, 1]
    assert meta == {"source": "drpo_sim.lm", "config": cfg.flat(), "checkpoint": lm_checkpoint.path.name}
    # without a token log: the same table, no batches
    table2, none, meta2 = run_cell({**spec, "token_log": False}, lm_checkpoint)
    assert none is None and meta2 == meta
    pd.testing.assert_frame_equal(table2, table)


def test_run_cell_refuses_a_checkpoint_of_another_pretraining(lm_checkpoint):
    cfg = LabConfig(steps=1, **TINY)
    other = dataclasses.asdict(PretrainConfig(steps=3, seed=7))
    with pytest.raises(ValueError, match="the checkpoint was pretrained with"):
        run_cell({"lab": dataclasses.asdict(cfg), "pretrain": other, "token_log": False}, lm_checkpoint)
    with pytest.raises(ValueError, match="unknown precision"):
        run_cell({"lab": {**dataclasses.asdict(cfg), "precision": "fp4"},
                  "pretrain": dataclasses.asdict(lm_checkpoint.config), "token_log": False}, lm_checkpoint)


# ---------------------------------------------------------------------------------------------
# the lab's benchmark (it times this loop's step)


def test_benchmark_script_writes_its_table(tmp_path):
    out = tmp_path / "lm.csv"
    script = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_lm.py"
    res = subprocess.run([sys.executable, str(script), "--steps", "1", "--precisions", "fp32,fp8", "--csv", str(out)],
                         capture_output=True, text=True, check=True)
    assert "x floor" in res.stdout
    table = pd.read_csv(out)
    assert list(table["precision"]) == ["fp32", "fp8"] and (table["step_ms"] > 0).all()


def test_rollout_entropy_and_length_on_cpu():
    """The entropy is the trainer's full-distribution entropy averaged over valid positions only;
    the length counts valid tokens per response."""
    v = 4
    uniform = torch.full((1, 3, v), -math.log(v))
    peaked = torch.log_softmax(torch.tensor([[[20.0, 0.0, 0.0, 0.0]] * 3]), dim=-1)
    logp_all = torch.cat([uniform, peaked])
    mask = torch.tensor([[True, True, False], [True, False, False]])
    got = _rollout_shape(logp_all, mask)
    p = peaked[0, 0].exp()
    expected = (2 * math.log(v) + float(-(p * p.log()).sum())) / 3
    assert got["entropy"] == pytest.approx(expected, rel=1e-6)
    assert got["response_len"] == 1.5
