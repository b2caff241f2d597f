"""The tiny transformer lab (drpo_sim.lm): task, model, engine copies, RL loop, experiment, CLI."""

from __future__ import annotations

import argparse
import json

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import torch

from drpo_sim import objectives
from drpo_sim.lm import cli as lm_cli
from drpo_sim.lm.experiment import compare
from drpo_sim.lm.model import ModelConfig, TinyTransformer, generate, token_logprobs
from drpo_sim.lm.precision import FP8_DTYPE, FP8Linear, engine_copy
from drpo_sim.lm.pretrain import PretrainConfig, load_checkpoint, pretrain
from drpo_sim.lm.rl import METRICS, LabConfig, train
from drpo_sim.lm.task import BOS, EOS, PAD, SEP, SortTask, response_mask
from drpo_sim.results import read_results
from drpo_sim.tokens import ALL_COLUMNS, TokenLogWriter, load_token_log, read_token_log, read_token_log_metadata


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    """The default pretrained checkpoint (about 2 s), shared by the module."""
    return pretrain(PretrainConfig(), tmp_path_factory.mktemp("lm_cache"))


def _rollout(model, task, n=256, seed=1):
    digits = task.sample_digits(n, torch.Generator().manual_seed(seed))
    return generate(model, task.prompts(digits), task.response_len, eos_id=EOS, pad_id=PAD,
                    generator=torch.Generator().manual_seed(seed + 1))


# --------------------------------------------------------------------------------------------
# task


def test_sort_task_layout_and_reward_on_hand_made_cases():
    task = SortTask(n_digits=3)
    digits = torch.tensor([[3, 1, 2]] * 6)
    assert task.prompts(digits)[0].tolist() == [BOS, 3, 1, 2, SEP]
    assert task.targets(digits)[0].tolist() == [1, 2, 3, EOS]
    responses = torch.tensor([
        [1, 2, 3, EOS],      # exact
        [1, 3, 2, EOS],      # two positions wrong
        [1, 2, EOS, PAD],    # stopped early: positions 3 and 4 wrong
        [1, 2, EOS, EOS],    # anything after the first EOS counts as PAD
        [3, 2, 1, 5],        # only the middle digit right
        [EOS, 1, 2, 3],      # stops at once: nothing right
    ])
    np.testing.assert_allclose(task.reward(responses, digits).numpy(), [1.0, 0.5, 0.5, 0.5, 0.25, 0.0])
    np.testing.assert_allclose(task.reward(responses, digits, "exact").numpy(), [1, 0, 0, 0, 0, 0])
    assert response_mask(responses).tolist()[2] == [True, True, True, False]
    assert response_mask(responses).tolist()[5] == [True, False, False, False]
    with pytest.raises(ValueError, match="reward_mode"):
        SortTask(reward_mode="fuzzy")


def test_sequences_of_the_task_score_one():
    task = SortTask()
    digits = task.sample_digits(50, torch.Generator().manual_seed(0))
    seqs = task.sequences(digits)
    assert seqs.shape == (50, task.seq_len)
    assert torch.all(task.reward(seqs[:, task.prompt_len:], digits) == 1)


# --------------------------------------------------------------------------------------------
# model


def test_token_logprobs_equal_a_manual_log_softmax_gather():
    cfg = ModelConfig(max_len=10)
    model = TinyTransformer(cfg, generator=torch.Generator().manual_seed(0))
    seqs = torch.randint(0, cfg.vocab_size, (5, 10), generator=torch.Generator().manual_seed(1))
    got = token_logprobs(model, seqs, prompt_len=4)
    logits = model(seqs)
    manual = torch.stack(
        [torch.log_softmax(logits[b, t - 1], dim=-1)[seqs[b, t]] for b in range(5) for t in range(4, 10)]
    ).view(5, 6)
    torch.testing.assert_close(got, manual, rtol=1e-6, atol=1e-6)
    assert got.shape == (5, 6) and torch.all(got <= 0)


def test_causal_mask_future_tokens_do_not_change_earlier_logits():
    model = TinyTransformer(ModelConfig(max_len=8), generator=torch.Generator().manual_seed(0))
    a = torch.randint(0, 14, (3, 8), generator=torch.Generator().manual_seed(2))
    b = a.clone()
    b[:, 5:] = PAD
    assert torch.equal(model(a)[:, :5], model(b)[:, :5])


def test_initialisation_is_deterministic_given_the_generator():
    m1 = TinyTransformer(ModelConfig(), generator=torch.Generator().manual_seed(3))
    m2 = TinyTransformer(ModelConfig(), generator=torch.Generator().manual_seed(3))
    for (n, p), (_, q) in zip(m1.named_parameters(), m2.named_parameters()):
        assert torch.equal(p, q), n


# --------------------------------------------------------------------------------------------
# engine copies


def test_fp32_engine_reports_exactly_the_trainer_logprobs(ckpt):
    model, task = ckpt.model(), ckpt.task
    roll = _rollout(engine_copy(model, "fp32"), task)
    pi = token_logprobs(model, roll.seqs, task.prompt_len)
    assert torch.equal(pi[roll.mask], roll.logp[roll.mask])  # on-policy: zero mismatch, bit for bit


@pytest.mark.parametrize("precision, low, high", [("fp16", 1e-6, 1e-3), ("bf16", 1e-4, 5e-3), ("fp8", 2e-4, 1e-2)])
def test_reduced_precision_engines_give_a_real_mismatch(ckpt, precision, low, high):
    model, task = ckpt.model(), ckpt.task
    engine = engine_copy(model, precision)
    roll = _rollout(engine, task)
    with torch.no_grad():
        pi = token_logprobs(model, roll.seqs, task.prompt_len)[roll.mask].double()
    mu = roll.logp[roll.mask].double()
    shift = (pi.exp() - mu.exp()).abs()
    assert low < float(shift.mean()) < high  # published healthy runs: below about 5e-3
    assert float(shift.max()) < 0.1
    assert torch.all(mu <= 0)
    # the engine really computes in its dtype, and the trainer is untouched
    assert engine.tok.weight.dtype == {"fp16": torch.float16, "bf16": torch.bfloat16, "fp8": torch.bfloat16}[precision]
    assert model.tok.weight.dtype == torch.float32 and model.tok.weight.requires_grad


def test_fp8_engine_stores_float8_weights(ckpt):
    model = ckpt.model()
    engine = engine_copy(model, "fp8")
    fp8 = [m for m in engine.modules() if isinstance(m, FP8Linear)]
    assert len(fp8) == 4 * ckpt.config.n_layers  # qkv, attention output, two MLP layers per block
    for layer in fp8:
        assert layer.weight_fp8.dtype == FP8_DTYPE == torch.float8_e4m3fn
        assert layer.scale.dtype == torch.float32
    assert not any(isinstance(m, torch.nn.Linear) for m in engine.blocks.modules())
    assert isinstance(engine.head, torch.nn.Linear) and engine.head.weight.dtype == torch.bfloat16  # lm_head stays bf16
    # dequantised weights are the originals up to e4m3's rounding (3 mantissa bits: 2^-4 relative)
    w = model.blocks[0].fc.weight.detach()
    deq = engine.blocks[0].fc.dequantized(torch.float32)
    rel = ((deq - w).abs() / w.abs().amax(dim=1, keepdim=True)).max()
    assert 0 < float(rel) <= 2.0**-4
    assert not torch.equal(deq, w)


# --------------------------------------------------------------------------------------------
# RL


def test_rl_loss_gradient_is_the_registry_surrogate_gradient(ckpt):
    """The loop's loss is policy_loss: its gradient through the model equals the chain rule of the
    registry's closed-form dJ/dlogp = A r w, aggregated with seq-mean-token-sum-norm."""
    model, task = ckpt.model(), ckpt.task
    roll = _rollout(engine_copy(model, "bf16"), task, n=16)
    adv = torch.linspace(-1, 1, 16)
    obj = objectives.get("drpo", delta=0.05)
    logp = token_logprobs(model, roll.seqs, task.prompt_len)
    loss, metrics = objectives.policy_loss(obj, logp, roll.logp, adv, roll.mask,
                                           agg_mode="seq-mean-token-sum-norm", horizon=task.response_len)
    g_auto = torch.autograd.grad(loss, logp)[0]
    c = objectives.aggregation_weights(roll.mask, "seq-mean-token-sum-norm", horizon=task.response_len, dtype=torch.float32)
    g_closed = -c * obj.grad_logp(logp.detach(), roll.logp, adv[:, None].expand_as(logp))
    torch.testing.assert_close(g_auto, g_closed, rtol=1e-5, atol=1e-8)
    assert metrics["actor/valid_tokens"] == float(roll.mask.sum())


def test_rl_with_pg_is_improves_the_held_out_reward(ckpt):
    df = train(LabConfig(objective="pg_is", precision="fp32", steps=20, seed=0), ckpt)
    assert list(df["step"]) == list(range(1, 21))
    assert set(METRICS) <= set(df.columns)
    start = df["initial_eval_reward"].iloc[0]
    assert 0.2 < start < 0.6  # the pretrained model is clearly imperfect
    assert df["eval_reward"].tail(5).mean() > start + 0.03
    assert (df["mismatch_mean"] == 0).all() and (df["log_ratio_mean"] == 0).all()  # fp32 engine: on-policy
    assert not df["nonfinite"].any()
    assert df["eval_greedy"].notna().sum() == 2  # steps 10 and 20


def test_training_is_deterministic_given_the_seed(ckpt):
    a = train(LabConfig(objective="grpo", precision="bf16", steps=3, seed=5), ckpt)
    b = train(LabConfig(objective="grpo", precision="bf16", steps=3, seed=5), ckpt)
    c = train(LabConfig(objective="grpo", precision="bf16", steps=3, seed=6), ckpt)
    pd.testing.assert_frame_equal(a, b)
    assert not np.allclose(a["reward"], c["reward"]) or not np.allclose(a["eval_reward"], c["eval_reward"])
    assert (a["mismatch_mean"] > 0).all()


def test_token_log_is_readable_and_complete(ckpt, tmp_path):
    cfg = LabConfig(objective="dppo_tv", precision="fp8", steps=2, seed=3)
    path = tmp_path / "tokens.parquet"
    with TokenLogWriter(path, metadata={"config": cfg.flat()}) as w:
        df = train(cfg, ckpt, w)
    batches = list(read_token_log(path))
    assert batches
    tb = load_token_log(path)
    assert set(tb.columns) == set(ALL_COLUMNS)
    task = ckpt.task
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


# --------------------------------------------------------------------------------------------
# pretraining cache


def test_pretrain_is_cached_and_deterministic(tmp_path):
    cfg = PretrainConfig(steps=3, seed=7)
    a = pretrain(cfg, tmp_path)
    assert a.path is not None and a.path.exists() and cfg.key() in a.path.name
    b = pretrain(cfg, tmp_path)  # loaded, not trained
    fresh = pretrain(cfg)  # trained again, no cache
    for k in a.state_dict:
        assert torch.equal(a.state_dict[k], b.state_dict[k]) and torch.equal(a.state_dict[k], fresh.state_dict[k])
    assert load_checkpoint(a.path).config == cfg
    assert PretrainConfig(steps=4, seed=7).key() != cfg.key()
    (tmp_path / "bad.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="bad.pt"):
        load_checkpoint(tmp_path / "bad.pt")


# --------------------------------------------------------------------------------------------
# experiment and CLI


def test_compare_tiny_profile_end_to_end(tmp_path, ckpt):
    out = tmp_path / "out"
    records = compare(objectives=("pg_is", "drpo"), precisions=("fp32", "bf16"), seeds=2, profile="quick",
                      out=out, jobs=2, steps=3, cache_dir=ckpt.path.parent)
    assert [r.figure for r in records] == ["lm_reward", "lm_mismatch"]
    for r in records:
        for f in r.files:
            assert (out / f).stat().st_size > 0
        assert (out / r.data).exists()
        json.dumps(r.config)  # goes into MANIFEST.json
        assert r.seeds == [0, 1] and r.job == "lm.experiment.compare"
    df, meta = read_results(out / "lm_compare.parquet")
    assert len(df) == 2 * 2 * 2 * 3
    assert {"method", "precision", "seed", "step", "eval_reward", "mismatch_mean"} <= set(df.columns)
    assert (df.loc[df.precision == "fp32", "mismatch_mean"] == 0).all()
    assert (df.loc[df.precision == "bf16", "mismatch_mean"] > 0).all()
    assert meta["objectives"] == ["pg_is", "drpo"] and meta["seeds"] == [0, 1]
    summary = pd.read_csv(out / "lm_summary.csv")
    assert len(summary) == 4 and {"final_iqm", "final_low", "final_high", "final", "mismatch_mean"} <= set(summary.columns)
    logs = sorted(p.name for p in (out / "lm_tokens").iterdir())
    assert logs == ["drpo_bf16_seed0.parquet", "drpo_fp32_seed0.parquet", "pg_is_bf16_seed0.parquet", "pg_is_fp32_seed0.parquet"]
    assert len(load_token_log(out / "lm_tokens" / logs[0])) > 0
    with pytest.raises(ValueError, match="unknown precision"):
        compare(precisions=("fp4",), out=out)
    with pytest.raises(ValueError, match="profile"):
        compare(profile="medium", out=out)


def _cli(argv):
    parser = argparse.ArgumentParser(prog="drpo-sim")
    lm_cli.add_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


def test_cli_pretrain_and_train(tmp_path, ckpt, capsys):
    assert _cli(["lm", "pretrain", "--out", str(ckpt.path.parent), "--no-progress"]) == 0
    assert "cached" in capsys.readouterr().out
    code = _cli(["lm", "train", "--objective", "drpo", "--param", "drpo.delta=2.5", "--precision", "bf16", "--seed", "1",
                 "--steps", "2", "--out", str(tmp_path), "--checkpoint", str(ckpt.path), "--save-tokens", "--no-progress"])
    assert code == 0
    df, meta = read_results(tmp_path / "lm_drpo_bf16_seed1.parquet")
    assert len(df) == 2 and json.loads(df["method_params"].iloc[0]) == {"delta": 2.5}
    assert pq.read_metadata(tmp_path / "lm_drpo_bf16_seed1_tokens.parquet").num_rows > 0
    with pytest.raises(ValueError, match="objective is 'drpo'"):
        _cli(["lm", "train", "--objective", "drpo", "--param", "ppo.eps_low=0.1", "--out", str(tmp_path)])
    with pytest.raises(ValueError, match="no parameter"):
        _cli(["lm", "train", "--param", "drpo.eps=1", "--out", str(tmp_path)])
    with pytest.raises(ValueError, match="precision"):
        _cli(["lm", "compare", "--precisions", "fp4", "--out", str(tmp_path)])
    with pytest.raises(ValueError, match="formats"):
        _cli(["lm", "compare", "--formats", "gif", "--out", str(tmp_path)])


def test_benchmark_script_writes_its_table(tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    out = tmp_path / "lm.csv"
    script = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_lm.py"
    res = subprocess.run([sys.executable, str(script), "--steps", "1", "--precisions", "fp32,fp8", "--csv", str(out)],
                         capture_output=True, text=True, check=True)
    assert "x floor" in res.stdout
    table = pd.read_csv(out)
    assert list(table["precision"]) == ["fp32", "fp8"] and (table["step_ms"] > 0).all()
