"""The training-inference mismatch between the float32 trainer and its engine copy, measured.

Two uses, one set of definitions:

* :func:`token_statistics`: the statistics of one rollout's sampled tokens, which the RL loop
  (:mod:`drpo_sim.lm.rl`) records at every step;
* :func:`engine_statistics`: the same statistics of a fresh rollout of a pretrained model by an
  engine in a given precision, before any RL step. A calibration compares them with
  :data:`PUBLISHED`, the sizes real runs report (docs/reference.md, "Published sizes of the
  mismatch"), at initialisation only, so no knob is ever tuned on the dynamics it is used to
  study.

All statistics run over the valid sampled tokens (``mask``), with ``pi`` the trainer's and ``mu``
the engine's probability of the token the engine sampled:

* ``mismatch_mean``, ``mismatch_max``: ``abs(pi - mu)``;
* ``pi_minus_mu_mean``, ``_min``, ``_max``: the signed shift;
* ``log_ratio_mean``: ``log pi - log mu`` per token (nats);
* ``seq_log_ratio_per_token``: each response's summed log-ratio divided by its length, averaged
  over responses (how the FP16 paper, Qi et al. 2025, reports the drift);
* ``kl_k3``: the k3 estimate of ``KL(mu || pi)`` from the engine's own samples, the mean of
  ``r - 1 - log r`` with ``r = pi / mu`` (Schulman 2020, "Approximating KL divergence"):
  unbiased, and never negative;
* ``rare_share``: the share of sampled tokens with ``mu <= RARE_MU``.
"""

from __future__ import annotations

import torch

from drpo_sim.lm.model import generate, token_logprobs
from drpo_sim.lm.precision import PRECISIONS, engine_copy
from drpo_sim.lm.pretrain import Checkpoint
from drpo_sim.lm.task import EOS, PAD

RARE_MU = 0.01
"""A sampled token counts as rare when the engine gave it at most this probability."""

PUBLISHED: dict[str, dict[str, float]] = {
    "bf16": {"mismatch_mean": 0.004, "seq_log_ratio_per_token": -1e-3, "rare_share": 0.078},
    "fp16": {"seq_log_ratio_per_token": -7e-5},
}
"""What real runs report at the start of training, by engine precision (docs/reference.md):
mean ``abs(pi - mu)`` about 0.004 at the first step of DPPO's sanity test (Qi et al. 2026);
a log-ratio drift of about -1e-3 nats per token with BF16 rollouts and -7e-5 with FP16 (Qi et
al. 2025); about 7.8% of sampled tokens with ``mu <= 0.01``."""


def token_statistics(logp_pi: torch.Tensor, logp_mu: torch.Tensor, mask: torch.Tensor) -> dict[str, float]:
    """The statistics of the module docstring for ``[B, R]`` log-probs of the sampled tokens
    under the trainer (``logp_pi``) and the engine (``logp_mu``), over ``mask``; computed in
    float64. A mask with no valid token is a ``ValueError``."""
    if not bool(mask.any()):
        raise ValueError("no valid token: the mismatch of an empty rollout is undefined")
    return {k: float(v) for k, v in run_statistics(logp_pi, logp_mu, mask).items()}


def run_statistics(logp_pi: torch.Tensor, logp_mu: torch.Tensor, mask: torch.Tensor) -> dict[str, torch.Tensor]:
    """:func:`token_statistics` for many runs at once: inputs ``[..., B, R]``, one float64 value
    per leading index ``[...]`` (NaN for a run with no valid token); the one definition of the
    statistics."""
    m = mask.bool()
    lp, lm = logp_pi.double(), logp_mu.double()
    zero = torch.zeros((), dtype=torch.float64)
    n = m.sum(dim=(-1, -2)).double()
    diff = torch.where(m, lp.exp() - lm.exp(), zero)
    log_r = torch.where(m, lp - lm, zero)

    def mean(x: torch.Tensor) -> torch.Tensor:
        return x.sum(dim=(-1, -2)) / n

    def extreme(x: torch.Tensor, fn, fill: float) -> torch.Tensor:
        v = fn(torch.where(m, x, torch.full((), fill, dtype=torch.float64)).flatten(-2), dim=-1)
        return torch.where(n > 0, v, torch.full((), float("nan"), dtype=torch.float64))

    lengths = m.sum(dim=-1).double()
    per_token = torch.where(lengths > 0, log_r.sum(dim=-1) / lengths.clamp_min(1), zero)
    return {
        "mismatch_mean": mean(diff.abs()),
        "mismatch_max": extreme(diff.abs(), torch.amax, float("-inf")),
        "pi_minus_mu_mean": mean(diff),
        "pi_minus_mu_min": extreme(diff, torch.amin, float("inf")),
        "pi_minus_mu_max": extreme(diff, torch.amax, float("-inf")),
        "log_ratio_mean": mean(log_r),
        "seq_log_ratio_per_token": per_token.sum(dim=-1) / (lengths > 0).sum(dim=-1).double(),
        "kl_k3": mean(torch.where(m, torch.expm1(log_r) - log_r, zero)),
        "rare_share": mean((m & (lm.exp() <= RARE_MU)).double()),
    }


@torch.no_grad()
def engine_statistics(checkpoint: Checkpoint, precision: str, *, n_prompts: int = 256,
                      seed: int = 0) -> dict[str, float]:
    """:func:`token_statistics` of one response to each of ``n_prompts`` prompts, sampled by the
    checkpoint's model in the engine ``precision`` and scored by its float32 copy: the mismatch
    at initialisation. Adds ``tokens`` and ``responses``, the counts it rests on."""
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; valid: {', '.join(PRECISIONS)}")
    if isinstance(n_prompts, bool) or not isinstance(n_prompts, int) or n_prompts < 1:
        raise ValueError(f"n_prompts must be a positive integer, got {n_prompts!r}")
    model, task = checkpoint.model(), checkpoint.task
    digits = task.sample_digits(n_prompts, torch.Generator().manual_seed(seed))
    roll = generate(engine_copy(model, precision), task.prompts(digits), task.response_len, eos_id=EOS,
                    pad_id=PAD, generator=torch.Generator().manual_seed(seed + 1))
    logp_pi = token_logprobs(model, roll.seqs, task.prompt_len)
    return {**token_statistics(logp_pi, roll.logp, roll.mask), "tokens": int(roll.mask.sum()),
            "responses": n_prompts}
