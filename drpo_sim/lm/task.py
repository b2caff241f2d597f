"""The verifiable task of the tiny LM lab: sort a short list of digits.

A prompt is ``BOS d_1 ... d_n SEP`` with ``n`` digits drawn uniformly from ``0 .. 9`` (with
repetition); the answer is the same digits in ascending order followed by ``EOS``::

    BOS 3 1 4 1 5 9 SEP  ->  1 1 3 4 5 9 EOS

The reward is checked, not learned. ``"partial"`` (the default) gives credit per position:
with the target ``y* = (sorted(d), EOS)`` of length ``n + 1`` and the response ``y`` (``PAD``
after its first ``EOS``, so stopping early loses every later position),

    R(y) = (1 / (n + 1)) * sum_i 1[y_i = y*_i]          in {0, 1/(n+1), ..., 1},

a dense signal for a group of 8 samples. ``"exact"`` gives ``1[y = y*]``; it is always reported
as ``eval_exact`` next to the partial reward.

Why sorting: the answer is unique and cheap to verify, its difficulty is set by ``n`` alone,
and a small transformer learns the easy part (the multiset of digits, their rough order) long
before it is sure of runs of repeated digits and of the middle positions. The lab's default
supervised budget (:class:`drpo_sim.lm.pretrain.PretrainConfig`: 60 steps of 64 sequences, six
digits) leaves it clearly imperfect: its expected partial reward when sampling at temperature 1
is about 0.34 (greedy decoding, which hides its uncertainty, about 0.8), and RL from group
samples lifts the expected reward to about 0.6 within 100-150 steps.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

N_VALUES = 10
SEP, BOS, EOS, PAD = 10, 11, 12, 13
VOCAB = ("0", "1", "2", "3", "4", "5", "6", "7", "8", "9", ">", "^", "$", ".")
"""Token id -> printed symbol (``>`` SEP, ``^`` BOS, ``$`` EOS, ``.`` PAD)."""
REWARD_MODES = ("partial", "exact")


@dataclass(frozen=True)
class SortTask:
    """Sort ``n_digits`` digits; prompt ``BOS digits SEP``, answer ``sorted digits EOS``."""

    n_digits: int = 6
    reward_mode: str = "partial"

    def __post_init__(self) -> None:
        if not (isinstance(self.n_digits, int) and 1 <= self.n_digits <= 32):
            raise ValueError(f"n_digits must be an integer in [1, 32], got {self.n_digits!r}")
        if self.reward_mode not in REWARD_MODES:
            raise ValueError(f"unknown reward_mode {self.reward_mode!r}; valid: {', '.join(REWARD_MODES)}")

    # sizes -----------------------------------------------------------------------------------
    @property
    def vocab_size(self) -> int:
        return len(VOCAB)

    @property
    def prompt_len(self) -> int:
        """``BOS``, the digits, ``SEP``."""
        return self.n_digits + 2

    @property
    def response_len(self) -> int:
        """The sorted digits and ``EOS``: the fixed horizon ``H`` of the loss aggregation."""
        return self.n_digits + 1

    @property
    def seq_len(self) -> int:
        return self.prompt_len + self.response_len

    # data ------------------------------------------------------------------------------------
    def sample_digits(self, n: int, generator: torch.Generator) -> torch.Tensor:
        """``n`` digit lists ``[n, n_digits]`` (int64), uniform over ``0..9`` with repetition."""
        return torch.randint(0, N_VALUES, (n, self.n_digits), generator=generator)

    def prompts(self, digits: torch.Tensor) -> torch.Tensor:
        """``[n, n_digits]`` digits -> prompts ``[n, prompt_len]``: ``BOS digits SEP``."""
        n = digits.shape[0]
        bos = torch.full((n, 1), BOS, dtype=torch.long)
        sep = torch.full((n, 1), SEP, dtype=torch.long)
        return torch.cat([bos, digits.long(), sep], dim=1)

    def targets(self, digits: torch.Tensor) -> torch.Tensor:
        """The correct responses ``[n, response_len]``: ``sorted(digits) EOS``."""
        n = digits.shape[0]
        return torch.cat([digits.long().sort(dim=1).values, torch.full((n, 1), EOS, dtype=torch.long)], dim=1)

    def sequences(self, digits: torch.Tensor) -> torch.Tensor:
        """Prompt and correct response, ``[n, seq_len]``: the supervised data."""
        return torch.cat([self.prompts(digits), self.targets(digits)], dim=1)

    def digits_of(self, prompts: torch.Tensor) -> torch.Tensor:
        """The digits of prompts ``[n, prompt_len]`` (or of whole sequences)."""
        return prompts[:, 1 : 1 + self.n_digits]

    # reward ----------------------------------------------------------------------------------
    def correct(self, responses: torch.Tensor, digits: torch.Tensor) -> torch.Tensor:
        """Per-position correctness ``[n, response_len]`` (bool); positions after the first ``EOS``
        are taken as ``PAD`` whatever they hold."""
        if responses.shape != (digits.shape[0], self.response_len):
            raise ValueError(f"responses must have shape [n, {self.response_len}], got {tuple(responses.shape)}")
        return truncate_after_eos(responses) == self.targets(digits)

    def reward(self, responses: torch.Tensor, digits: torch.Tensor, mode: str | None = None) -> torch.Tensor:
        """Rewards ``[n]`` (float32) of responses ``[n, response_len]`` (module docstring)."""
        mode = self.reward_mode if mode is None else mode
        if mode not in REWARD_MODES:
            raise ValueError(f"unknown reward mode {mode!r}; valid: {', '.join(REWARD_MODES)}")
        ok = self.correct(responses, digits)
        return (ok.float().mean(dim=1) if mode == "partial" else ok.all(dim=1).float())

    def text(self, tokens: torch.Tensor) -> list[str]:
        """Token rows as strings, e.g. ``'^314159>113459$'``."""
        return ["".join(VOCAB[int(t)] for t in row) for row in tokens]


def truncate_after_eos(responses: torch.Tensor) -> torch.Tensor:
    """Responses with every token after the first ``EOS`` replaced by ``PAD``."""
    return torch.where(after_eos(responses), torch.full_like(responses, PAD), responses)


def after_eos(responses: torch.Tensor) -> torch.Tensor:
    """``[n, T]`` bool: the position comes after the row's first ``EOS``."""
    is_eos = (responses == EOS).long()
    return (torch.cumsum(is_eos, dim=1) - is_eos) > 0


def response_mask(responses: torch.Tensor) -> torch.Tensor:
    """``[n, T]`` bool: the tokens the policy chose, up to and including the first ``EOS``."""
    return ~after_eos(responses)
