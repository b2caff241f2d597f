"""drpo_sim.integrations.trl against TRL 1.16 itself: the loss and gradient are policy_loss's, the
normalisation is TRL's own _compute_loss's for every simulated process count and accumulation, the
global normaliser is right across data-parallel ranks, and a real GRPO run on the CPU (the documented
snippet) dumps tokens that `drpo-sim replay` reads, with numbers equal to the tensors the trainer held."""

from __future__ import annotations

import importlib
import json
import re
import sys
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from drpo_sim import objectives
from drpo_sim.objectives import policy_loss

DOC = Path(__file__).resolve().parents[2] / "docs" / "integrations.md"
WORDS = ["<pad>", "<eos>", "<unk>"] + [f"w{i}" for i in range(61)]


def test_import_without_trl_is_a_one_line_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "trl", None)  # `import trl` raises ImportError
    monkeypatch.delitem(sys.modules, "drpo_sim.integrations.trl", raising=False)
    import drpo_sim

    assert drpo_sim.integrations.__all__ == []  # the package itself never needs TRL
    with pytest.raises(ModuleNotFoundError) as err:  # an ImportError, which pytest.importorskip skips on
        importlib.import_module("drpo_sim.integrations.trl")
    message = str(err.value)
    assert "pip install 'drpo_sim[trl]'" in message and "\n" not in message


@pytest.fixture(scope="module")
def it():
    pytest.importorskip("trl", reason="TRL is not installed (pip install 'drpo_sim[trl]')")
    return importlib.import_module("drpo_sim.integrations.trl")


def tiny_model_and_tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    backend = Tokenizer(models.WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok = PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<pad>", eos_token="<eos>", unk_token="<unk>")
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(
        vocab_size=len(WORDS), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=128, pad_token_id=0, eos_token_id=1, bos_token_id=None))
    return model, tok


def make_trainer(it, tmp_path, objective="drpo", objective_params=None, **config):
    from datasets import Dataset
    from trl import GRPOConfig

    model, tok = tiny_model_and_tokenizer()
    settings = dict(output_dir=str(tmp_path / "out"), use_cpu=True, bf16=False, gradient_checkpointing=False, seed=0,
                    max_steps=2, per_device_train_batch_size=4, num_generations=4, max_completion_length=64,
                    report_to="none", save_strategy="no", disable_tqdm=True)
    settings.update(config)
    data = Dataset.from_dict({"prompt": [f"w{i} w{i + 1} w{i + 2}" for i in range(8)]})
    return it.DrpoSimGRPOTrainer(model=model, reward_funcs=lambda completions, **kw: [0.0] * len(completions),
                                 args=GRPOConfig(**settings), train_dataset=data, processing_class=tok,
                                 objective=objective, objective_params=objective_params)


@pytest.fixture(scope="module")
def trainer(it, tmp_path_factory):
    t = make_trainer(it, tmp_path_factory.mktemp("trl"), num_iterations=2)
    t.current_gradient_accumulation_steps = 1  # set by Trainer's training loop
    t.model.train()
    return t


def micro_batch(trainer, lengths, *, seed, engine=True, width=64):
    """A micro-batch as `_generate_and_score_completions` hands it on: right-padded completions of
    `lengths` tokens, the trainer's recomputed pi_old and (with `engine`) the engine's log-probs, one
    of them NaN (a token vLLM could not score)."""
    g = torch.Generator().manual_seed(seed)
    b = len(lengths)
    mask = (torch.arange(width)[None, :] < torch.tensor(lengths)[:, None]).long()
    batch = {"prompt_ids": torch.randint(3, len(WORDS), (b, 3), generator=g), "prompt_mask": torch.ones(b, 3).long(),
             "completion_ids": torch.randint(3, len(WORDS), (b, width), generator=g) * mask, "completion_mask": mask,
             "advantages": torch.randn(b, generator=g), "num_items_in_batch": mask.sum()}
    with torch.no_grad():
        now = logps(trainer, batch)
    batch["old_per_token_logps"] = (now + 0.3 * torch.randn(now.shape, generator=g)).clamp(max=-1e-3)
    if engine:
        mu = (batch["old_per_token_logps"] + 0.3 * torch.randn(now.shape, generator=g)).clamp(max=-1e-3)
        mu[0, 1] = float("nan")
        batch["sampling_per_token_logps"] = mu
    return batch


def engine_mu(batch):
    """mu as the subclass takes it: the engine's log-probs, pi_old's where the engine gave none."""
    mu = batch["sampling_per_token_logps"]
    return torch.where(torch.isnan(mu), batch["old_per_token_logps"], mu)


def logps(trainer, batch):
    ids = torch.cat([batch["prompt_ids"], batch["completion_ids"]], 1)
    attention = torch.cat([batch["prompt_mask"], batch["completion_mask"]], 1)
    return trainer._get_per_token_logps_and_entropies(trainer.model, ids, attention, batch["completion_ids"].size(1))[0]


def loss_and_grads(trainer, fn):
    trainer.model.zero_grad()
    loss = fn()
    loss.backward()
    return loss.detach(), [p.grad.clone() for p in trainer.model.parameters()]


def assert_same(got, want, rtol=1e-5):
    (loss, grads), (loss_want, grads_want) = got, want
    torch.testing.assert_close(loss, loss_want, rtol=rtol, atol=1e-7)
    for g, w in zip(grads, grads_want):
        torch.testing.assert_close(g, w, rtol=rtol, atol=1e-7)


@pytest.mark.parametrize("name", ["drpo", "minirl", "gspo"])
@pytest.mark.parametrize("loss_type", ["dapo", "bnpo", "grpo", "dr_grpo", "luspo"])
def test_loss_and_gradient_are_policy_loss_on_one_rank_on_cpu(trainer, name, loss_type, monkeypatch):
    """One process, no accumulation: the subclass's loss is policy_loss in the aggregation of TRL's
    normaliser, mu the engine's log-probs (pi_old where it gave none), logp_old TRL's recomputed ones."""
    obj = objectives.get(name)
    monkeypatch.setattr(trainer, "drpo_objective", obj)
    monkeypatch.setattr(trainer, "loss_type", loss_type)
    batch = micro_batch(trainer, [9, 64, 30, 1], seed=1)
    got = loss_and_grads(trainer, lambda: trainer._compute_loss(trainer.model, batch))
    mu = engine_mu(batch)
    assert mu[0, 1] == batch["old_per_token_logps"][0, 1]
    mode = {"dapo": "token-mean", "bnpo": "token-mean", "grpo": "seq-mean-token-mean",
            "dr_grpo": "seq-mean-token-sum-norm", "luspo": "seq-mean-token-sum"}[loss_type]
    want = loss_and_grads(trainer, lambda: policy_loss(
        obj, logps(trainer, batch), mu, batch["advantages"], batch["completion_mask"], agg_mode=mode, horizon=64,
        logp_old=batch["old_per_token_logps"])[0])
    assert_same(got, want)
    assert trainer._metrics["train"]["drpo_sim/mu_unscored_frac"][-1] == pytest.approx(1 / 104)


class SimulatedRanks:
    """The trainer's accelerator as one of `n` data-parallel processes sees it (gathers and reductions
    stay this process's: the metrics are not under test here)."""

    def __init__(self, accelerator, n):
        self._accelerator, self.num_processes = accelerator, n

    def __getattr__(self, name):
        return getattr(self._accelerator, name)


@pytest.mark.parametrize("loss_type", ["dapo", "grpo", "bnpo", "dr_grpo", "luspo"])
@pytest.mark.parametrize("processes, accumulation, per_generation", [(1, 1, 1), (2, 2, 2), (4, 2, 4)])
def test_normalisation_is_trls_own_on_cpu(it, trainer, loss_type, processes, accumulation, per_generation,
                                          monkeypatch):
    """With drpo_sim's PPO (TRL's clipped surrogate, epsilon 0.2) and mu = pi_old (TRL's anchor without an
    engine), the subclass's loss and gradient are TRL 1.16's _compute_loss's, KL penalty included, for
    any number of processes, accumulation steps and steps per generation, an empty row included."""
    from trl import GRPOTrainer

    monkeypatch.setattr(trainer, "drpo_objective", objectives.get("ppo", eps_low=0.2, eps_high=0.2))
    monkeypatch.setattr(trainer, "loss_type", loss_type)
    monkeypatch.setattr(trainer, "beta", 0.04)
    monkeypatch.setattr(trainer, "accelerator", SimulatedRanks(trainer.accelerator, processes))
    monkeypatch.setattr(trainer, "current_gradient_accumulation_steps", accumulation)
    monkeypatch.setattr(trainer.args, "steps_per_generation", per_generation)
    batch = micro_batch(trainer, [12, 0, 64, 5], seed=2, engine=False)
    batch["num_items_in_batch"] = torch.tensor(3 * 81 + 7)  # the generation batch's tokens on every process
    with torch.no_grad():
        batch["ref_per_token_logps"] = (logps(trainer, batch) - 0.1).clamp(max=-1e-3)
    with pytest.warns(it.MuFallbackWarning, match="mu .logp_behavior. is TRL's old_per_token_logps"):
        monkeypatch.setattr(trainer, "mu_source", None)  # warns again
        got = loss_and_grads(trainer, lambda: trainer._compute_loss(trainer.model, batch))
    want = loss_and_grads(trainer, lambda: GRPOTrainer._compute_loss(trainer, trainer.model, batch))
    assert_same(got, want)


@pytest.mark.parametrize("loss_type, global_mode", [("dapo", "token-mean"), ("grpo", "seq-mean-token-mean")])
def test_data_parallel_gradient_is_the_global_batchs_on_cpu(trainer, loss_type, global_mode, monkeypatch):
    """Two ranks holding 248 and 335 tokens, two micro-batches each (gradient accumulation): summing the
    micro-batches' gradients and averaging over the ranks, as DDP does, gives the gradient of policy_loss
    over the whole batch, the token mean (dapo, TRL's default) or the sequence mean (grpo); policy_loss
    called on each micro-batch would not (the trap of issue 17)."""
    obj = objectives.get("drpo", delta=2.5)
    monkeypatch.setattr(trainer, "drpo_objective", obj)
    monkeypatch.setattr(trainer, "loss_type", loss_type)
    monkeypatch.setattr(trainer, "accelerator", SimulatedRanks(trainer.accelerator, 2))
    monkeypatch.setattr(trainer, "current_gradient_accumulation_steps", 2)
    monkeypatch.setattr(trainer.args, "steps_per_generation", 2)
    ranks = [[[60, 3, 40, 21], [64, 10, 2, 48]], [[64, 64, 50, 7], [33, 64, 1, 52]]]
    assert [sum(map(sum, r)) for r in ranks] == [248, 335]
    batches = [[micro_batch(trainer, lengths, seed=10 + 2 * r + k) for k, lengths in enumerate(rank)]
               for r, rank in enumerate(ranks)]
    total = sum(int(b["completion_mask"].sum()) for rank in batches for b in rank)
    grads = []
    for rank in batches:
        for b in rank:
            b["num_items_in_batch"] = torch.tensor(total)
        grads.append(loss_and_grads(trainer, lambda: sum(trainer._compute_loss(trainer.model, b) for b in rank))[1])
    ddp = [(g0 + g1) / 2 for g0, g1 in zip(*grads)]
    every = {k: torch.cat([b[k] for rank in batches for b in rank]) for k in batches[0][0]
             if k not in ("num_items_in_batch",)}
    _, want = loss_and_grads(trainer, lambda: policy_loss(
        obj, logps(trainer, every), engine_mu(every), every["advantages"], every["completion_mask"],
        agg_mode=global_mode)[0])
    for g, w in zip(ddp, want):
        torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-8)

    def naive(rank):
        return sum(policy_loss(obj, logps(trainer, b), engine_mu(b), b["advantages"], b["completion_mask"],
                               agg_mode=global_mode)[0] for b in rank) / 2

    naive_grads = [loss_and_grads(trainer, lambda: naive(rank))[1] for rank in batches]
    naive_ddp = torch.cat([((g0 + g1) / 2).flatten() for g0, g1 in zip(*naive_grads)])
    if loss_type == "dapo":  # per-micro-batch token means weigh a token by its micro-batch's size
        assert not torch.allclose(naive_ddp, torch.cat([w.flatten() for w in want]), rtol=1e-3)


def test_objective_reading_pi_old_is_refused_when_trl_does_not_recompute_it_on_cpu(it, tmp_path):
    with pytest.raises(ValueError, match=r"minirl.*reads pi_old.*Set num_iterations > 1"):
        make_trainer(it, tmp_path, objective="minirl")  # num_iterations=1, no vLLM: TRL keeps no pi_old
    assert make_trainer(it, tmp_path, objective="minirl", num_iterations=2).recomputes_old
    with pytest.raises(ValueError, match="choose 'gspo'"):
        make_trainer(it, tmp_path, importance_sampling_level="sequence")
    with pytest.raises(ValueError, match="entropy bonus"):
        make_trainer(it, tmp_path, entropy_coef=0.01)


def test_trl_aggregate_matches_the_table_on_cpu(it):
    v, m = torch.randn(3, 5, dtype=torch.float64), torch.tensor([[1, 1, 0, 0, 0], [0] * 5, [1] * 5])
    norm = dict(max_completion_length=8, num_items_in_batch=torch.tensor(40), num_processes=2,
                gradient_accumulation_steps=4, steps_per_generation=8)
    s = (v * m).sum()
    want = {"grpo": ((v * m).sum(1) / m.sum(1).clamp(min=1)).mean() / 4, "bnpo": s / 7 / 4, "dr_grpo": s / 24 / 4,
            "dapo": s / (40 / 2 * 4 / 8), "luspo": (v * m).sum(1).mean() / 4}
    for loss_type, value in want.items():
        torch.testing.assert_close(it.trl_aggregate(v, m, loss_type, **norm), value, rtol=1e-6, atol=0)
    assert float(it.trl_aggregate(v, m, "dapo", **{**norm, "training": False})) == pytest.approx(float(s) / 20)


# ---------------------------------------------------------------------------------------------
# real runs


def snippet_from_doc() -> str:
    m = re.search(r"<!-- snippet: trl_cpu_run.*?-->\n```python\n(.*?)```", DOC.read_text(), re.S)
    assert m, "the trl_cpu_run snippet block is missing from docs/integrations.md"
    return m.group(1)


def spy_on_dumps(it, monkeypatch):
    """What the loss saw at each micro-batch: the tensors handed to the dump."""
    held = []
    dump = it.DrpoSimLossMixin._dump_tokens

    def spy(self, inputs, logp, mu, old, advantages, mask):
        valid = mask != 0
        adv = advantages[:, None].expand_as(logp)
        held.append({k: x[valid].detach().double().numpy() for k, x in
                     dict(logp=logp, logp_behavior=mu, logp_old=old, advantage=adv).items() if x is not None})
        return dump(self, inputs, logp, mu, old, advantages, mask)

    monkeypatch.setattr(it.DrpoSimLossMixin, "_dump_tokens", spy)
    return held


def test_documented_run_dumps_tokens_that_replay_reads_on_cpu(it, tmp_path, monkeypatch):
    """The snippet of docs/integrations.md, verbatim: four GRPO steps of a tiny random Llama with DRPO
    (delta 12.5) as the loss; mu falls back to TRL's old_per_token_logps with a warning; `drpo-sim
    replay` reads the dump (exit 0, its tables written) and its numbers are those of the tensors the
    trainer held."""
    from drpo_sim.tokens import load_token_log

    monkeypatch.chdir(tmp_path)
    held = spy_on_dumps(it, monkeypatch)
    ns: dict = {}
    with pytest.warns(it.MuFallbackWarning, match="mu .logp_behavior. is TRL's old_per_token_logps"):
        exec(compile(snippet_from_doc(), str(DOC), "exec"), ns)
    assert ns["status"] == 0
    run = tmp_path / "grpo-cpu"
    files = sorted((run / "tokens").glob("*.parquet"))
    assert [f.name for f in files] == [f"step{s:05d}_update{u:03d}_rank0.parquet" for s in (0, 2) for u in (0, 1)]
    dumped = pd.concat([load_token_log(f).to_pandas() for f in files])
    trained = {k: np.concatenate([h[k] for h in held]) for k in held[0]}
    for column, values in trained.items():
        np.testing.assert_array_equal(np.sort(dumped[column].to_numpy()), np.sort(values))
    assert dumped.groupby(["step", "update", "sample_id"]).size().shape[0] == 4 * 4  # 4 optimizer steps of 4 samples
    # the replay's tables, against the tensors the trainer held
    for table in ("objectives.csv", "regions_by_mu.csv", "mismatch_by_mu.csv", "by_step.csv", "replay.json"):
        assert (run / "replay" / table).stat().st_size > 0
    totals = json.loads((run / "replay" / "replay.json").read_text())
    logp, mu, adv, old = (trained[k] for k in ("logp", "logp_behavior", "advantage", "logp_old"))
    assert totals["tokens"] == len(logp) == sum(int(h["logp"].size) for h in held)
    assert totals["abs_shift_mean"] == pytest.approx(np.abs(np.exp(logp) - np.exp(mu)).mean(), rel=1e-6)
    assert totals["abs_shift_max"] > 0  # the second update of each round moved the policy from mu = pi_old
    table = pd.read_csv(run / "replay" / "objectives.csv").set_index("objective")
    for name, obj in (("drpo", objectives.get("drpo", delta=12.5)), ("minirl", objectives.get("minirl"))):
        w = obj.weight(logp, mu, adv, logp_old=old)
        # objectives.csv holds 8 significant digits
        assert table.loc[name, "masked_frac"] == pytest.approx(np.mean(w == 0), rel=1e-7, abs=1e-12)
        assert table.loc[name, "attenuated_frac"] == pytest.approx(np.mean((w > 0) & (w < 1)), rel=1e-7, abs=1e-12)
    logged = ns["trainer"].state.log_history
    assert {"reward", "entropy", "drpo_sim/attenuated_frac", "drpo_sim/ratio_max"} <= set(logged[0])


def bf16_engine(prompts, trainer):
    """A `rollout_func` standing in for vLLM on the CPU: the policy's weights in bfloat16 sample the
    completions and report their own log-probs, so mu differs from the trainer's pi_old."""
    tok = trainer.processing_class
    policy = trainer.accelerator.unwrap_model(trainer.model)
    engine = type(policy)(policy.config).to(torch.bfloat16).eval()
    engine.load_state_dict(policy.state_dict())  # the weight sync, rounded to bfloat16
    x = torch.tensor([tok(p)["input_ids"] for p in prompts])
    prompt_ids = x.tolist()
    completions, logprobs = [[] for _ in prompts], [[] for _ in prompts]
    done = torch.zeros(len(prompts), dtype=torch.bool)
    with torch.no_grad():
        for _ in range(trainer.max_completion_length):
            lp = torch.log_softmax(engine(x).logits[:, -1].float(), dim=-1)
            token = torch.multinomial(lp.exp(), 1).squeeze(1)
            for i in (~done).nonzero().flatten().tolist():
                completions[i].append(int(token[i]))
                logprobs[i].append(float(lp[i, token[i]]))
            done |= token == tok.eos_token_id
            if bool(done.all()):
                break
            x = torch.cat([x, token[:, None]], dim=1)
    bf16_engine.sampled.extend(logprobs)
    return {"prompt_ids": prompt_ids, "completion_ids": completions, "logprobs": logprobs}


def test_engine_logprobs_are_mu_and_pi_old_is_trls_on_cpu(it, tmp_path, monkeypatch):
    """With an engine that reports log-probs (a rollout_func, as vLLM does), mu is the engine's and no
    fallback is warned of; MiniRL reads TRL's recomputed pi_old (num_iterations=2); the dump holds both."""
    from datasets import Dataset
    from trl import GRPOConfig

    from drpo_sim.tokens import load_token_log, read_token_log_metadata

    monkeypatch.setenv("TRL_EXPERIMENTAL_SILENCE", "1")
    held = spy_on_dumps(it, monkeypatch)
    bf16_engine.sampled = []
    model, tok = tiny_model_and_tokenizer()
    args = GRPOConfig(output_dir=str(tmp_path / "out"), use_cpu=True, bf16=False, gradient_checkpointing=False,
                      seed=0, max_steps=2, per_device_train_batch_size=4, num_generations=4, max_completion_length=8,
                      num_iterations=2, learning_rate=1e-2, report_to="none", save_strategy="no", disable_tqdm=True)
    trainer = it.DrpoSimGRPOTrainer(
        model=model, reward_funcs=lambda completions, **kw: [c.count("w2") / 4.0 for c in completions], args=args,
        train_dataset=Dataset.from_dict({"prompt": [f"w{i} w{i + 1}" for i in range(8)]}), processing_class=tok,
        rollout_func=bf16_engine, objective="minirl", token_log_dir=tmp_path / "tokens")
    with warnings.catch_warnings():
        warnings.simplefilter("error", it.MuFallbackWarning)
        trainer.train()
    assert trainer.mu_source == "sampling_per_token_logps"
    dumped = pd.concat([load_token_log(f).to_pandas() for f in sorted((tmp_path / "tokens").glob("*.parquet"))])
    engine = np.concatenate([np.asarray(s, dtype=np.float32) for s in bf16_engine.sampled]).astype(np.float64)
    first = dumped[dumped["update"] == 0]  # one rollout, two updates: each token twice
    assert len(dumped) == 2 * len(first) == 2 * len(engine)
    np.testing.assert_array_equal(np.sort(first["logp_behavior"].to_numpy()), np.sort(engine))
    old = np.concatenate([h["logp_old"] for h in held])
    np.testing.assert_array_equal(np.sort(dumped["logp_old"].to_numpy()), np.sort(old))
    assert np.abs(dumped["logp_old"] - dumped["logp_behavior"]).max() > 1e-4  # bf16 engine against fp32 trainer
    np.testing.assert_allclose(first["logp"], first["logp_old"], rtol=0, atol=1e-5)  # pi = pi_old at update 0
    meta = read_token_log_metadata(sorted((tmp_path / "tokens").glob("*.parquet"))[0])
    assert meta["mu"] == "sampling_per_token_logps" and meta["objective"] == "minirl"
