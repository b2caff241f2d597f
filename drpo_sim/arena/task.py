"""The arena's verifiable task: a long walk through residue classes, with many right answers.

The vocabulary is ``0 .. V-1``; token ``t`` belongs to the class ``t mod m`` (``m`` classes of
``V / m`` tokens each). A prompt is two tokens, ``(k, s)``: a key ``k`` in ``0 .. m-1`` and a
start token ``s``. A response ``y_1 .. y_H`` (``H >= 64``) is right at position ``j`` when

    y_j mod m == (y_{j-1} + k) mod m,        with y_0 = s,

so what is right at every position depends on the prefix (the previous token, and the key read
from the prompt), every position has ``V / m`` right tokens, and a policy can solve the task
completely while keeping real uncertainty among them. The reward is checked, not learned: the
share of right positions, ``R(y) = (1/H) sum_j 1[y_j right]`` in ``{0, 1/H, ..., 1}``. A wrong
token does not make the later ones wrong: each is checked against its own predecessor.

**The supervised data** stands in for a pretraining corpus with a long tail: within the right
class, the ``i``-th of its tokens (``c + i m`` for class ``c``, ``i = 0 .. V/m - 1``) is drawn with
probability proportional to ``(i + 1)^-zipf``. A model fitted on it puts most of its mass on the
head of each class and a little on the tail, and before it has learnt the rule, some on wrong
classes: the rare tokens a real run samples.

**Misreads.** A share ``misread`` of the demonstrations reads the key wrong: it walks with another
key (uniform over the other ``m - 1``) from its first token to its last, a consistent walk that is
wrong at every position. A base model fitted on such data commits, response by response, to a key,
mostly the right one: its wrong responses follow a wrong approach throughout, as a base language
model's wrong solutions do, and the sequence reward tells them apart from the right ones, so RL's
work is to choose the right key more often. Without misreads the base model's errors are
independent from position to position; 64 of them then share one sequence reward, each token's
credit is a sixty-fourth of it under the noise of the other 63, and policy gradient learns slowly
and, at a learning rate of 1e-3, drifts into a state that solves two keys of eight, even with no
mismatch at all (measured in fp32 from a base model at 0.97 held-out reward: 0.57 after 25 steps).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from drpo_sim.config import check_positive_ints


@dataclass(frozen=True)
class WalkTask:
    """Walk ``response_len`` tokens through ``n_classes`` residue classes of a ``vocab_size`` vocabulary."""

    vocab_size: int = 64
    n_classes: int = 8
    response_len: int = 64
    zipf: float = 1.5
    """Exponent of the long tail of the supervised data within each class (module docstring)."""
    misread: float = 0.0
    """Share of the supervised demonstrations that walk with a wrong key throughout (module docstring)."""

    def __post_init__(self) -> None:
        check_positive_ints(self, "vocab_size", "n_classes", "response_len")
        if self.n_classes < 2 or self.vocab_size % self.n_classes or self.vocab_size == self.n_classes:
            raise ValueError(f"WalkTask: vocab_size ({self.vocab_size}) must be a multiple of n_classes "
                             f"({self.n_classes}), with at least 2 classes of at least 2 tokens each")
        if not (isinstance(self.zipf, (int, float)) and 0 <= self.zipf < 100):
            raise ValueError(f"WalkTask.zipf must be a number in [0, 100), got {self.zipf!r}")
        if isinstance(self.misread, bool) or not (isinstance(self.misread, (int, float)) and 0 <= self.misread < 1):
            raise ValueError(f"WalkTask.misread must be a share in [0, 1), got {self.misread!r}")

    prompt_len = 2
    """The key and the start token."""

    @property
    def seq_len(self) -> int:
        return self.prompt_len + self.response_len

    @property
    def class_size(self) -> int:
        return self.vocab_size // self.n_classes

    def tail_probs(self) -> torch.Tensor:
        """The supervised data's probabilities of the ``class_size`` tokens of a class, head first."""
        p = (torch.arange(1, self.class_size + 1, dtype=torch.float64)) ** -float(self.zipf)
        return (p / p.sum()).float()

    # data ------------------------------------------------------------------------------------
    def prompts(self, n: int, generator: torch.Generator) -> torch.Tensor:
        """``n`` prompts ``[n, 2]`` (int64): a uniform key and a uniform start token."""
        key = torch.randint(0, self.n_classes, (n,), generator=generator)
        start = torch.randint(0, self.vocab_size, (n,), generator=generator)
        return torch.stack([key, start], dim=1)

    def demonstrations(self, n: int, generator: torch.Generator) -> torch.Tensor:
        """``n`` supervised sequences ``[n, seq_len]``: prompt, then a walk whose members are
        drawn from the long tail, with the prompt's key or, for a share ``misread`` of them,
        another key throughout (module docstring)."""
        prompts = self.prompts(n, generator)
        members = torch.multinomial(self.tail_probs(), n * self.response_len, replacement=True,
                                    generator=generator).view(n, self.response_len)
        key, start = prompts[:, 0:1], prompts[:, 1:2]
        if self.misread > 0:
            wrong = torch.rand(n, 1, generator=generator) < self.misread
            other = (key + torch.randint(1, self.n_classes, (n, 1), generator=generator)) % self.n_classes
            key = torch.where(wrong, other, key)
        # class of y_j = (s + j k) mod m; the member index picks the token within it
        j = torch.arange(1, self.response_len + 1)
        cls = (start + j * key) % self.n_classes
        return torch.cat([prompts, cls + self.n_classes * members], dim=1)

    # reward ----------------------------------------------------------------------------------
    def right(self, seqs: torch.Tensor) -> torch.Tensor:
        """``[..., response_len]`` bool: each response position is right (module docstring).
        ``seqs [..., seq_len]`` holds prompt and response."""
        if seqs.shape[-1] != self.seq_len:
            raise ValueError(f"sequences must have length {self.seq_len}, got {seqs.shape[-1]}")
        key = seqs[..., 0:1]
        prev, cur = seqs[..., 1:-1], seqs[..., 2:]
        return (cur % self.n_classes) == ((prev + key) % self.n_classes)

    def reward(self, seqs: torch.Tensor) -> torch.Tensor:
        """``R(y)``, the share of right positions ``[...]`` (float32)."""
        return self.right(seqs).float().mean(dim=-1)
