"""drpo_sim.integrations.nemo_rl against NeMo RL's published interface.

The PyPI package ``nemo-rl`` is a placeholder (0.0.0, no ``nemo_rl.algorithms``), so these tests do
not import NeMo RL: they drive the loss the way NeMo RL's policy workers do, with NeMo RL's field
names and shapes, and hold it against formulas re-stated from NeMo RL's source at commit
``7ea279abfbeb698b092856d0dab61e7cf39bc909`` of github.com/NVIDIA-NeMo/RL (each helper cites its
file). Checked: the loss and gradient are ``policy_loss``'s on one rank; summed over simulated
data-parallel ranks and micro-batches as NeMo RL sums them, they are the whole batch's, where
``policy_loss`` called per rank is off by 583/496 and 583/670; with drpo_sim's PPO anchored to
``pi_old`` the loss, gradient and metrics are ``ClippedPGLossFn``'s; sequence packing's per-sequence
calls add up to the batch's; the configuration, the errors and the import without NeMo RL.
"""

from __future__ import annotations

import importlib
import math
import pickle
import sys
import types
import warnings

import pytest
import torch

from drpo_sim import objectives
from drpo_sim.integrations import nemo_rl as it
from drpo_sim.objectives import policy_loss

VOCAB, PROMPT, WIDTH = 16, 3, 3 + 64

# ---------------------------------------------------------------------------------------------
# NeMo RL, re-stated from its source (commit above)


def nemo_next_token_logprobs(logits: torch.Tensor, input_ids: torch.Tensor) -> torch.Tensor:
    """``get_next_token_logprobs_from_logits``, its branch without model parallelism
    (``nemo_rl/distributed/model_utils.py``), as ``prepare_loss_input`` calls it for a loss of
    ``input_type`` LOGPROB (``nemo_rl/algorithms/loss/utils.py``): the logits of every position but the
    last, log-softmaxed, at ``input_ids[:, 1:]``. NeMo RL casts the logits to float32 first; here
    they stay float64, for comparisons to 1e-6 and below."""
    return torch.log_softmax(logits[:, :-1], dim=-1).gather(-1, input_ids[:, 1:].unsqueeze(-1)).squeeze(-1)


def nemo_global_counts(batches: list[dict]) -> tuple[torch.Tensor, torch.Tensor]:
    """``process_global_batch`` (``nemo_rl/models/automodel/data.py``): the sequences (``sample_mask``)
    and tokens (``token_mask[:, 1:] * sample_mask``) in the loss, all-reduced over the ranks."""
    seqs = sum(b["sample_mask"].sum() for b in batches)
    toks = sum((b["token_mask"][:, 1:] * b["sample_mask"].unsqueeze(-1)).sum() for b in batches)
    return seqs, toks


def nemo_masked_mean(values, mask, dim=None, global_normalization_factor=None):
    """``masked_mean`` (``nemo_rl/algorithms/utils.py``): ``sum(values * mask) / (factor + 1e-8)``, the
    factor the mask's own sum unless a global one is given."""
    factor = mask.sum(dim=dim) if global_normalization_factor is None else global_normalization_factor
    return (values * mask).sum(dim=dim) / (factor + 1e-8)


def nemo_calculate_kl(logprobs, logprobs_reference, kl_type="k3", input_clamp_value=20.0, output_clamp_value=10.0,
                      importance_sampling_weights=None):
    """``calculate_kl`` (``nemo_rl/algorithms/utils.py``)."""
    logr = logprobs_reference - logprobs
    if input_clamp_value is not None:
        clamped = logr.clamp(min=-input_clamp_value, max=input_clamp_value)
        if importance_sampling_weights is not None:
            importance_sampling_weights = torch.where(logr == clamped, importance_sampling_weights,
                                                      importance_sampling_weights.detach())
        logr = clamped
    kl = {"k1": lambda: -logr, "k2": lambda: logr.square() / 2, "k3": lambda: logr.exp() - 1 - logr}[kl_type]()
    if importance_sampling_weights is not None:
        kl = importance_sampling_weights * kl
    if output_clamp_value is not None:
        kl = kl.clamp(min=-output_clamp_value, max=output_clamp_value)
    return kl


def nemo_clipped_pg(curr, data, global_valid_seqs, global_valid_toks, *, token_level, eps=0.2, beta=0.0):
    """``ClippedPGLossFn.__call__`` (``nemo_rl/algorithms/loss/loss_functions.py``) in its default
    configuration but for the flags given: PPO's clipped ratio to ``prev_logprobs`` (no importance
    sampling correction, no dual clip), NeMo RL's KL penalty (k3, clamps 20 and 10, off-policy-free
    weights ``exp(x - sg(x))``), normalised by the global counts; and the metrics it returns."""
    token_mask, sample_mask = data["token_mask"][:, 1:], data["sample_mask"]
    adv, prev = data["advantages"][:, 1:], data["prev_logprobs"][:, 1:]
    gen = data["generation_logprobs"][:, 1:]
    mask = token_mask * sample_mask.unsqueeze(-1)

    def reduce(x):
        if token_level:
            return nemo_masked_mean(x, mask, global_normalization_factor=global_valid_toks)
        return nemo_masked_mean(nemo_masked_mean(x, token_mask, dim=-1), sample_mask,
                                global_normalization_factor=global_valid_seqs)

    ratios = (curr - prev).exp()
    clip_loss = torch.max(-adv * ratios, -adv * ratios.clamp(1 - eps, 1 + eps))
    kl = torch.tensor(0.0, dtype=curr.dtype)
    if beta:
        w = torch.nan_to_num(torch.exp(curr - curr.detach()), nan=0.0, posinf=0.0, neginf=0.0)
        kl = beta * reduce(nemo_calculate_kl(curr, data["reference_policy_logprobs"][:, 1:],
                                             importance_sampling_weights=w))
    loss = reduce(clip_loss) + kl

    def tok(x):
        return float(nemo_masked_mean(x, mask, global_normalization_factor=global_valid_toks))

    log_mix = torch.log(0.5 * prev.exp() + 0.5 * gen.exp())
    js = 0.5 * ((prev - log_mix).exp() - (prev - log_mix) - 1) + 0.5 * ((gen - log_mix).exp() - (gen - log_mix) - 1)
    c = curr.detach()
    metrics = {
        "loss": float(loss.detach()), "probs_ratio": tok(ratios.detach()),
        "probs_ratio_min": float(ratios.detach()[mask.bool()].min()),
        "probs_ratio_max": float(ratios.detach()[mask.bool()].max()),
        "kl_penalty": float(kl.detach()) / beta if beta else 0.0,
        "token_mult_prob_error": tok(torch.exp((gen - prev).abs() * mask)),
        "gen_kl_error": tok(nemo_calculate_kl(gen, prev, input_clamp_value=None, output_clamp_value=None)),
        "policy_kl_error": tok(nemo_calculate_kl(prev, gen, input_clamp_value=None, output_clamp_value=None)),
        "js_divergence_error": tok(js), "sampling_importance_ratio": tok((prev - gen).exp()),
        "num_valid_samples": float(sample_mask.sum()), "approx_entropy": -tok((c - gen).exp() * c),
    }
    return loss, metrics


def nemo_sequence_packing(loss_fn, logits, data, global_valid_seqs, global_valid_toks):
    """``SequencePackingLossWrapper.__call__`` (``nemo_rl/algorithms/loss/wrapper.py``), unpacked: the
    loss called on each sequence alone, its tensors cut to its length (those of 2 dimensions or more
    and width > 1), the losses and metrics summed (the ``probs_ratio`` extrema by min and max)."""
    total, metrics = 0, {}
    for i, length in enumerate(data["input_lengths"].tolist()):
        one = {k: (v[i:i + 1, :length] if v.ndim > 1 and v.shape[1] > 1 else v[i:i + 1]) for k, v in data.items()}
        lp = nemo_next_token_logprobs(logits[i:i + 1, :length], one["input_ids"])
        loss, m = loss_fn(data=one, global_valid_seqs=global_valid_seqs, global_valid_toks=global_valid_toks,
                          next_token_logprobs=lp)
        total = total + loss
        for k, v in m.items():
            if k.endswith("_min"):
                metrics[k] = min(metrics.get(k, math.inf), v)
            elif k.endswith("_max"):
                metrics[k] = max(metrics.get(k, -math.inf), v)
            else:
                metrics[k] = metrics.get(k, 0.0) + v
    return total, metrics


# ---------------------------------------------------------------------------------------------
# a tiny language model and NeMo RL's batches


class TinyLM(torch.nn.Module):
    """Token embedding and output layer, float64: logits ``[B, T, V]`` of ``input_ids`` ``[B, T]``."""

    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.embed = torch.nn.Parameter(torch.randn(VOCAB, 8, generator=g, dtype=torch.float64))
        self.out = torch.nn.Parameter(torch.randn(8, VOCAB, generator=g, dtype=torch.float64))

    def forward(self, input_ids):
        return self.embed[input_ids] @ self.out


MODEL = TinyLM()


def nemo_batch(lengths, *, seed, sample_mask=None, width=WIDTH, nan_padding=False):
    """A micro-batch as ``grpo_train`` builds it (``nemo_rl/algorithms/grpo.py``): ``[B, T]`` tensors over
    prompt and response, right-padded, ``token_mask`` 1 on the ``lengths`` response tokens, log-probs at
    the position of their token (0 at the first), one advantage per sequence spread over its tokens;
    ``prev_logprobs`` near the model's, ``generation_logprobs`` near those (NaN in the right padding
    with ``nan_padding``: never read)."""
    g = torch.Generator().manual_seed(seed)
    b = len(lengths)
    pos = torch.arange(width)[None, :]
    n = torch.tensor(lengths)[:, None]
    token_mask = ((pos >= PROMPT) & (pos < PROMPT + n)).long()
    input_ids = torch.randint(0, VOCAB, (b, width), generator=g)
    with torch.no_grad():
        now = nemo_next_token_logprobs(MODEL(input_ids), input_ids)

    def near(x, scale):
        return (x + scale * torch.randn(x.shape, generator=g, dtype=x.dtype)).clamp(max=-1e-3)

    def at_tokens(x):  # [B, T - 1] -> [B, T], the first token's entry 0
        return torch.cat([torch.zeros(b, 1, dtype=x.dtype), x], dim=1)

    prev = near(now, 0.3)
    gen = near(prev, 0.3)
    if nan_padding:
        gen[pos[:, 1:] >= PROMPT + n] = float("nan")
    return {
        "input_ids": input_ids,
        "input_lengths": (PROMPT + n[:, 0]).clamp(max=width),
        "advantages": torch.randn(b, 1, generator=g, dtype=torch.float64).expand(b, width).clone(),
        "prev_logprobs": at_tokens(prev),
        "generation_logprobs": at_tokens(gen),
        "reference_policy_logprobs": at_tokens(near(now, 0.2)),
        "token_mask": token_mask,
        "sample_mask": torch.ones(b, dtype=torch.float64) if sample_mask is None else
        torch.tensor(sample_mask, dtype=torch.float64),
    }


def concat(batches):
    return {k: torch.cat([b[k] for b in batches]) for k in batches[0]}


def call(loss_fn, logits, batch, global_valid_seqs, global_valid_toks):
    """The loss as a NeMo RL worker calls it: ``prepare_loss_input``, then keywords."""
    loss_input = {"next_token_logprobs": nemo_next_token_logprobs(logits, batch["input_ids"])}
    return loss_fn(data=batch, global_valid_seqs=global_valid_seqs, global_valid_toks=global_valid_toks,
                   **loss_input)


def drpo_sim_inputs(batch, logits, needs_old):
    """``policy_loss``'s inputs for the same tokens: mu the engine's log-probs, pi_old the trainer's."""
    mask = (batch["token_mask"][:, 1:] != 0) & (batch["sample_mask"] != 0)[:, None]
    return dict(logp=nemo_next_token_logprobs(logits, batch["input_ids"]),
                logp_behavior=batch["generation_logprobs"][:, 1:], advantage=batch["advantages"][:, 1:], mask=mask,
                logp_old=batch["prev_logprobs"][:, 1:] if needs_old else None)


def grads(fn):
    MODEL.zero_grad()
    loss = fn()
    loss.backward()
    return loss.detach(), [p.grad.clone() for p in MODEL.parameters()]


MODES = ("token-mean", "seq-mean-token-mean")

# ---------------------------------------------------------------------------------------------
# the loss


@pytest.mark.parametrize("name, params", [("drpo", {"delta": 2.5}), ("grpo", {}), ("ppo", {}), ("dppo_tv", {}),
                                          ("minirl", {}), ("gspo", {"eps_low": 0.05, "eps_high": 0.05})])
@pytest.mark.parametrize("agg_mode", MODES)
def test_loss_and_gradient_are_policy_loss_on_one_rank_on_cpu(name, params, agg_mode):
    """One rank, one micro-batch (a sequence out of the loss, ``sample_mask`` 0): the loss and its
    gradient in the logits are ``policy_loss``'s, mu ``generation_logprobs``, pi_old ``prev_logprobs``."""
    batch = nemo_batch([9, 64, 30, 1, 12], seed=1, sample_mask=[1, 1, 1, 1, 0], nan_padding=True)
    loss_fn = it.DrpoSimLossFn(name, params, agg_mode=agg_mode)
    obj = objectives.get(name, **params)
    logits = MODEL(batch["input_ids"]).detach().requires_grad_()
    loss, metrics = call(loss_fn, logits, batch, *nemo_global_counts([batch]))
    (got,) = torch.autograd.grad(loss, logits)
    want_loss, want_metrics = policy_loss(obj, **drpo_sim_inputs(batch, logits, obj.needs_old), agg_mode=agg_mode,
                                          metrics="full")
    (want,) = torch.autograd.grad(want_loss, logits)
    torch.testing.assert_close(loss, want_loss, rtol=1e-12, atol=0)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-15)
    assert float(got[4].abs().sum()) == 0.0 and float(got[:4].abs().sum()) > 0  # the masked sequence: no gradient
    assert loss_fn.mu_source == "generation_logprobs"
    assert metrics["loss"] == pytest.approx(float(loss.detach()), rel=1e-12)
    for key in ("masked_frac", "weight_mean", "ratio_mean", "abs_shift_mean"):
        assert metrics[f"drpo_sim/{key}"] == pytest.approx(want_metrics[f"actor/{key}"], rel=1e-9)
    assert metrics["probs_ratio_max"] == pytest.approx(want_metrics["actor/ratio_max"], rel=1e-9)
    assert metrics["num_valid_samples"] == 4 and metrics["drpo_sim/valid_tokens"] == 9 + 64 + 30 + 1


RANKS = [[[60, 3, 40, 21], [64, 10, 2, 48]], [[64, 64, 57], [33, 64, 1, 52, 30]]]  # the last row: sample_mask 0
RANK_MASKS = [[None, None], [None, [1, 1, 1, 1, 0]]]


def data_parallel_batches():
    batches = [[nemo_batch(lengths, seed=10 + 2 * r + k, sample_mask=RANK_MASKS[r][k], nan_padding=True)
                for k, lengths in enumerate(rank)] for r, rank in enumerate(RANKS)]
    tokens = [int(sum(nemo_global_counts([b])[1] for b in rank)) for rank in batches]
    seqs = [int(sum(nemo_global_counts([b])[0] for b in rank)) for rank in batches]
    assert tokens == [248, 335] and seqs == [8, 7]
    return batches


@pytest.mark.parametrize("agg_mode", MODES)
def test_data_parallel_gradient_is_the_global_batchs_on_cpu(agg_mode):
    """Two ranks of 248 and 335 tokens (8 and 7 sequences), two micro-batches each: each rank's
    micro-batch losses times ``dp_size``, backpropagated and accumulated, then averaged over the
    ranks as FSDP does (``automodel_forward_backward``), give the gradient of ``policy_loss`` over the
    whole batch, and the summed metrics are the whole batch's; ``policy_loss`` called on each rank
    instead weighs a rank's tokens by ``N / (2 n_rank)``: 583/496 = 1.18 and 583/670 = 0.87 for the
    token mean, 15/16 and 15/14 for the sequence mean."""
    obj = objectives.get("drpo", delta=2.5)
    loss_fn = it.DrpoSimLossFn(obj, agg_mode=agg_mode)
    batches = data_parallel_batches()
    gvs, gvt = nemo_global_counts([b for rank in batches for b in rank])
    assert (int(gvs), int(gvt)) == (15, 583)
    dp_size = len(batches)
    rank_grads, summed = [], {}
    for rank in batches:
        MODEL.zero_grad()
        for b in rank:
            loss, metrics = call(loss_fn, MODEL(b["input_ids"]), b, gvs, gvt)
            (loss * dp_size).backward()
            for k, v in metrics.items():
                summed[k] = (min if k.endswith("_min") else max if k.endswith("_max") else float.__add__)(
                    summed.get(k, math.inf if k.endswith("_min") else -math.inf if k.endswith("_max") else 0.0), v)
        rank_grads.append([p.grad.clone() for p in MODEL.parameters()])
    fsdp = [sum(gs) / dp_size for gs in zip(*rank_grads)]
    every = concat([b for rank in batches for b in rank])
    (want_loss, want_metrics) = policy_loss(obj, **drpo_sim_inputs(every, MODEL(every["input_ids"]), False),
                                            agg_mode=agg_mode, metrics="full")
    _, want = grads(lambda: policy_loss(obj, **drpo_sim_inputs(every, MODEL(every["input_ids"]), False),
                                        agg_mode=agg_mode)[0])
    for g, w in zip(fsdp, want):
        torch.testing.assert_close(g, w, rtol=1e-6, atol=1e-12)
    assert summed["loss"] == pytest.approx(float(want_loss.detach()), rel=1e-9)
    assert summed["drpo_sim/valid_tokens"] == 583 and summed["num_valid_samples"] == 15
    for key in ("masked_frac", "attenuated_frac", "weight_mean", "ratio_mean", "abs_shift_mean"):
        assert summed[f"drpo_sim/{key}"] == pytest.approx(want_metrics[f"actor/{key}"], rel=1e-9)
    assert summed["probs_ratio"] == pytest.approx(want_metrics["actor/ratio_mean"], rel=1e-9)
    assert summed["probs_ratio_max"] == pytest.approx(want_metrics["actor/ratio_max"], rel=1e-12)

    # the trap: policy_loss on each rank, averaged over ranks, weighs each rank's tokens differently
    naive_ratio = []
    for rank in batches:
        here = concat(rank)
        logp = nemo_next_token_logprobs(MODEL(here["input_ids"]), here["input_ids"]).detach().requires_grad_()
        inputs = {**drpo_sim_inputs(here, MODEL(here["input_ids"]), False), "logp": logp}
        (naive,) = torch.autograd.grad(policy_loss(obj, **inputs, agg_mode=agg_mode)[0] / dp_size, logp)
        right = torch.autograd.grad(sum(
            loss_fn(data={k: v[i:j] for k, v in here.items()}, global_valid_seqs=gvs, global_valid_toks=gvt,
                    next_token_logprobs=logp[i:j])[0]
            for i, j in ((0, len(rank[0]["sample_mask"])), (len(rank[0]["sample_mask"]), len(here["sample_mask"])))),
            logp)[0]
        seen = right.abs() > 1e-14
        naive_ratio.append((naive[seen] / right[seen]))
    counts = (496, 670) if agg_mode == "token-mean" else (16, 14)
    total = 583 if agg_mode == "token-mean" else 15
    for ratio, n in zip(naive_ratio, counts):
        torch.testing.assert_close(ratio, torch.full_like(ratio, total / n), rtol=1e-9, atol=0)
    if agg_mode == "token-mean":
        assert [round(total / n, 2) for n in counts] == [1.18, 0.87]


@pytest.mark.parametrize("token_level", [True, False])
def test_ppo_anchored_to_pi_old_is_nemo_rls_clipped_pg_loss_on_cpu(token_level):
    """drpo_sim's PPO (clip 0.2) with ``mu="prev_logprobs"`` and NeMo RL's KL penalty is
    ``ClippedPGLossFn`` in its default configuration: loss, gradient and metrics, with global counts
    of a larger batch (other ranks), a kept sequence with no response token (NeMo RL's
    ``global_valid_seqs`` counts it) and a sequence out of the loss."""
    batch = nemo_batch([9, 0, 30, 64, 12], seed=3, sample_mask=[1, 1, 1, 1, 0])
    gvs, gvt = torch.tensor(11.0, dtype=torch.float64), torch.tensor(400.0, dtype=torch.float64)
    agg = "token-mean" if token_level else "seq-mean-token-mean"
    loss_fn = it.DrpoSimLossFn("ppo", {"eps_low": 0.2, "eps_high": 0.2}, agg_mode=agg, mu="prev_logprobs",
                               reference_policy_kl_penalty=0.01)
    logits = MODEL(batch["input_ids"]).detach().requires_grad_()
    loss, metrics = call(loss_fn, logits, batch, gvs, gvt)
    (got,) = torch.autograd.grad(loss, logits)
    curr = nemo_next_token_logprobs(logits, batch["input_ids"])
    want_loss, want_metrics = nemo_clipped_pg(curr, batch, gvs, gvt, token_level=token_level, beta=0.01)
    (want,) = torch.autograd.grad(want_loss, logits)
    torch.testing.assert_close(loss, want_loss, rtol=1e-7, atol=0)
    torch.testing.assert_close(got, want, rtol=1e-7, atol=1e-14)
    assert loss_fn.mu_source == "prev_logprobs"
    for key, value in want_metrics.items():
        assert metrics[key] == pytest.approx(value, rel=1e-7), key
    assert metrics["kl_penalty"] > 0
    assert set(metrics) <= set(loss_fn.metric_normalizations)
    assert all(isinstance(v, float) for v in metrics.values())


@pytest.mark.parametrize("kl_type", ["k1", "k2", "k3"])
def test_kl_penalty_is_nemo_rls_with_its_clamps_on_cpu(kl_type):
    """The KL term alone (loss with beta minus loss without), clamps acting on some tokens: NeMo RL's
    ``calculate_kl`` with its score-function weights, aggregated as the loss."""
    batch = nemo_batch([20, 5, 64], seed=4)
    batch["reference_policy_logprobs"][0, PROMPT + 2] = -40.0  # the input clamp acts (log-ratio < -20)
    batch["reference_policy_logprobs"][1, PROMPT + 1] = -1e-3  # the output clamp may act
    gvs, gvt = nemo_global_counts([batch])
    logits = MODEL(batch["input_ids"]).detach().requires_grad_()
    kw = dict(reference_policy_kl_type=kl_type, kl_input_clamp_value=20.0, kl_output_clamp_value=2.0)
    with_kl, metrics = call(it.DrpoSimLossFn("drpo", reference_policy_kl_penalty=0.3, **kw), logits, batch, gvs, gvt)
    without, _ = call(it.DrpoSimLossFn("drpo", **kw), logits, batch, gvs, gvt)
    (got,) = torch.autograd.grad(with_kl - without, logits)
    curr = nemo_next_token_logprobs(logits, batch["input_ids"])
    w = torch.exp(curr - curr.detach())
    kl = nemo_calculate_kl(curr, batch["reference_policy_logprobs"][:, 1:], kl_type, 20.0, 2.0, w)
    mask = batch["token_mask"][:, 1:] * batch["sample_mask"][:, None]
    want_kl = nemo_masked_mean(kl, mask, global_normalization_factor=gvt)
    (want,) = torch.autograd.grad(0.3 * want_kl, logits)
    torch.testing.assert_close(with_kl - without, 0.3 * want_kl, rtol=1e-7, atol=1e-15)
    torch.testing.assert_close(got, want, rtol=1e-7, atol=1e-14)
    assert metrics["kl_penalty"] == pytest.approx(float(want_kl.detach()), rel=1e-7)


@pytest.mark.parametrize("name, agg_mode", [("drpo", "token-mean"), ("gspo", "seq-mean-token-mean"),
                                            ("grpo", "seq-mean-token-sum")])
def test_sequence_packing_calls_add_up_to_the_batchs_on_cpu(name, agg_mode):
    """NeMo RL's sequence packing calls the loss once per unpadded sequence with the global counts and
    sums: the same loss, gradient and summed metrics as one call on the padded batch."""
    batch = nemo_batch([9, 64, 30, 1], seed=5)
    gvs, gvt = nemo_global_counts([batch])
    loss_fn = it.DrpoSimLossFn(name, agg_mode=agg_mode)
    logits = MODEL(batch["input_ids"]).detach().requires_grad_()
    loss, metrics = call(loss_fn, logits, batch, gvs, gvt)
    (got,) = torch.autograd.grad(loss, logits)
    packed, packed_metrics = nemo_sequence_packing(loss_fn, logits, batch, gvs, gvt)
    (want,) = torch.autograd.grad(packed, logits)
    torch.testing.assert_close(loss, packed, rtol=1e-12, atol=1e-15)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-15)
    for key, value in packed_metrics.items():
        assert metrics[key] == pytest.approx(value, rel=1e-9, abs=1e-15), key


def test_split_api_placeholder_counts_give_raw_sums_on_cpu():
    """Split-API trainers pass ``global_valid_* = 1`` and divide afterwards by each metric's
    ``metric_normalizations`` denominator: the loss is then the raw sum."""
    batch = nemo_batch([9, 64, 30], seed=6)
    gvs, gvt = nemo_global_counts([batch])
    loss_fn = it.DrpoSimLossFn("drpo")
    logits = MODEL(batch["input_ids"])
    normalised, m1 = call(loss_fn, logits, batch, gvs, gvt)
    raw, m2 = call(loss_fn, logits, batch, 1, 1)
    torch.testing.assert_close(raw / gvt, normalised, rtol=1e-12, atol=0)
    for key, kind in loss_fn.metric_normalizations.items():
        if key in m1 and kind is it.MetricNormalizer.TOKENS:
            assert m2[key] / float(gvt) == pytest.approx(m1[key], rel=1e-9), key


# ---------------------------------------------------------------------------------------------
# mu, configuration and errors


def test_mu_falls_back_to_prev_logprobs_with_a_warning_on_cpu():
    batch = nemo_batch([9, 64, 30], seed=7)
    del batch["generation_logprobs"]
    loss_fn = it.DrpoSimLossFn("drpo")
    logits = MODEL(batch["input_ids"])
    with pytest.warns(it.MuFallbackWarning, match="no generation_logprobs.*mu .logp_behavior. is prev_logprobs"):
        loss, metrics = call(loss_fn, logits, batch, *nemo_global_counts([batch]))
    assert loss_fn.mu_source == "prev_logprobs"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # once per change
        call(loss_fn, logits, batch, *nemo_global_counts([batch]))
    inputs = drpo_sim_inputs({**batch, "generation_logprobs": batch["prev_logprobs"]}, logits, False)
    torch.testing.assert_close(loss, policy_loss("drpo", **inputs)[0], rtol=1e-12, atol=0)
    assert metrics["token_mult_prob_error"] == pytest.approx(1.0) and metrics["gen_kl_error"] == 0.0


def test_missing_fields_are_named_on_cpu():
    batch = nemo_batch([9, 64], seed=8)
    logits = MODEL(batch["input_ids"])
    counts = nemo_global_counts([batch])
    for field, loss_fn in [("advantages", it.DrpoSimLossFn("drpo")), ("token_mask", it.DrpoSimLossFn("drpo")),
                           ("sample_mask", it.DrpoSimLossFn("drpo")), ("prev_logprobs", it.DrpoSimLossFn("minirl")),
                           ("reference_policy_logprobs", it.DrpoSimLossFn("drpo", reference_policy_kl_penalty=0.1))]:
        with pytest.raises(it.MissingField, match=f"no '{field}'") as err:
            call(loss_fn, logits, {k: v for k, v in batch.items() if k != field}, *counts)
        assert err.value.field == field and "\n" not in str(err.value)
    with pytest.raises(it.MissingField, match="no 'generation_logprobs'"):  # no mu at all
        call(it.DrpoSimLossFn("drpo"), logits,
             {k: v for k, v in batch.items() if k not in ("generation_logprobs", "prev_logprobs")}, *counts)
    with pytest.raises(ValueError, match="next_token_logprobs must be .B, T - 1.*prepare_loss_input"):
        it.DrpoSimLossFn("drpo")(logits, batch, *counts)  # logits, as NeMo RL before 0.6 passed them
    with pytest.raises(ValueError, match="'advantages' has shape .2, 5.*should be .B, T."):
        call(it.DrpoSimLossFn("drpo"), logits, {**batch, "advantages": batch["advantages"][:, :5]}, *counts)


def test_objectives_nemo_rl_cannot_feed_are_refused_on_cpu():
    for name, column in [("dppo_topk_tv", "topk_tv"), ("dppo_topk_kl", "topk_kl")]:
        with pytest.raises(ValueError, match=f"needs {column}, which NeMo RL does not compute") as err:
            it.DrpoSimLossFn(name)
        assert "\n" not in str(err.value)
    with pytest.raises(ValueError, match="statistic of the whole batch"):
        it.DrpoSimLossFn("drpo_no_abs_adv", {"adv_scale": "batch"})
    with pytest.raises(ValueError, match="needs horizon"):
        it.DrpoSimLossFn("drpo", agg_mode="seq-mean-token-sum-norm")
    with pytest.raises(ValueError, match="mu must be one of"):
        it.DrpoSimLossFn("drpo", mu="reference_policy_logprobs")


def test_from_nemo_config_reads_the_loss_fn_section_on_cpu():
    """NeMo RL's ``loss_fn`` section of ``examples/configs/grpo_math_1B.yaml`` (its defaults), with a
    ``drpo_sim`` entry (``ClippedPGLossConfig`` allows extra keys)."""
    section = dict(reference_policy_kl_penalty=0.01, reference_policy_kl_type="k3", kl_input_clamp_value=20.0,
                   kl_output_clamp_value=10.0, ratio_clip_min=0.2, ratio_clip_max=0.2, ratio_clip_c=None,
                   use_on_policy_kl_approximation=False, use_importance_sampling_correction=False,
                   truncated_importance_sampling_type=None, truncated_importance_sampling_ratio=None,
                   truncated_importance_sampling_ratio_min=None, sequence_level_importance_ratios=False,
                   token_level_loss=True, force_on_policy_ratio=False, use_kl_in_reward=False, use_cispo=False,
                   disable_ppo_ratio=False, positive_example_nll_weight=0.0,
                   drpo_sim={"objective": "drpo", "objective_params": {"delta": 12.5}})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        loss_fn = it.DrpoSimLossFn.from_nemo_config(section)
    assert loss_fn.objective == objectives.get("drpo", delta=12.5) and loss_fn.agg_mode == "token-mean"
    assert loss_fn.loss_type is it.LossType.TOKEN_LEVEL and loss_fn.input_type is it.LossInputType.LOGPROB
    assert loss_fn.reference_policy_kl_penalty == 0.01 and loss_fn.mu == "generation_logprobs"
    seq = it.DrpoSimLossFn.from_nemo_config(types.SimpleNamespace(**{**section, "token_level_loss": False}),
                                            objective="gspo", objective_params={})
    assert seq.agg_mode == "seq-mean-token-mean" and seq.loss_type is it.LossType.SEQUENCE_LEVEL
    assert seq.objective.name == "gspo"
    assert it.DrpoSimLossFn.from_nemo_config({**section, "use_kl_in_reward": True}).reference_policy_kl_penalty == 0
    with pytest.raises(ValueError, match="use_cispo=True.*choose the cispo objective"):
        it.DrpoSimLossFn.from_nemo_config({**section, "use_cispo": True})
    with pytest.raises(ValueError, match="force_on_policy_ratio=True.*zeros"):
        it.DrpoSimLossFn.from_nemo_config({**section, "force_on_policy_ratio": True})
    with pytest.raises(ValueError, match="disagrees with loss_fn.token_level_loss"):
        it.DrpoSimLossFn.from_nemo_config(section, agg_mode="seq-mean-token-mean")
    with pytest.warns(UserWarning, match="ratio_clip_max=0.28 not used"):
        it.DrpoSimLossFn.from_nemo_config({**section, "ratio_clip_max": 0.28})


def test_imports_without_nemo_rl_and_uses_its_enums_when_present_on_cpu(monkeypatch):
    """Without NeMo RL (or with the PyPI placeholder, which has no ``nemo_rl.algorithms``) the module
    imports and defines NeMo RL's enums with their values; with NeMo RL it uses NeMo RL's own, which
    NeMo RL's workers compare by identity."""
    monkeypatch.setattr(sys.modules["drpo_sim.integrations"], "nemo_rl", it)  # restored afterwards, as sys.modules
    monkeypatch.setitem(sys.modules, "nemo_rl", None)
    monkeypatch.delitem(sys.modules, "drpo_sim.integrations.nemo_rl")
    bare = importlib.import_module("drpo_sim.integrations.nemo_rl")
    assert not bare.HAVE_NEMO_RL
    assert {e.name: e.value for e in bare.LossType} == {"TOKEN_LEVEL": "token_level",
                                                        "SEQUENCE_LEVEL": "sequence_level"}
    assert bare.LossInputType.LOGPROB.value == "logprob" and bare.MetricNormalizer.TOKENS.value == "tokens"
    assert pickle.loads(pickle.dumps(bare.DrpoSimLossFn("minirl"))).objective == objectives.get("minirl")

    interfaces = types.ModuleType("nemo_rl.algorithms.loss.interfaces")  # a stand-in for NeMo RL's module
    interfaces.LossType = bare.LossType
    interfaces.LossInputType = bare.LossInputType
    interfaces.MetricNormalizer = bare.MetricNormalizer
    for name in ("nemo_rl", "nemo_rl.algorithms", "nemo_rl.algorithms.loss"):
        monkeypatch.setitem(sys.modules, name, types.ModuleType(name))
    monkeypatch.setitem(sys.modules, "nemo_rl.algorithms.loss.interfaces", interfaces)
    monkeypatch.delitem(sys.modules, "drpo_sim.integrations.nemo_rl")
    real = importlib.import_module("drpo_sim.integrations.nemo_rl")
    assert real.HAVE_NEMO_RL and real.LossType is bare.LossType
    assert real.DrpoSimLossFn("drpo").loss_type is bare.LossType.TOKEN_LEVEL
