"""The arena's base model: supervised pretraining on the task's long-tailed demonstrations.

Next-token cross-entropy on the response tokens of :meth:`drpo_sim.arena.task.WalkTask.demonstrations`
(teacher forcing, float32), minimised with AdamW (Loshchilov and Hutter 2019), weight decay 0.01,
a linear warm-up over the first tenth of the steps and a constant rate after it:

    L(theta) = - (1 / (B H)) sum_b sum_{j=1..H} log pi_theta(y_{b,j} | prompt_b, y_{b,<j}).

Every run of an arena experiment starts from this one model (the base model RL fine-tunes); the
budget ``steps`` is one of the knobs the calibration fixes (:mod:`drpo_sim.arena.calibration`):
a short budget leaves the rule half-learnt and the policy uncertain, a long one leaves only the
data's own long tail. Deterministic given ``seed``; cached in the process (the cells of one
experiment reuse it), about a second per hundred steps on one core.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from drpo_sim.arena.model import ArenaModel, Params, init_params, logits
from drpo_sim.arena.task import WalkTask
from drpo_sim.config import check_positive_ints


@dataclass(frozen=True)
class BaseModelConfig:
    """The base model: its sizes, its task and its supervised budget."""

    model: ArenaModel = ArenaModel()
    task: WalkTask = WalkTask()
    steps: int = 200
    batch_size: int = 64
    lr: float = 3e-3
    weight_decay: float = 0.01
    seed: int = 0

    def __post_init__(self) -> None:
        check_positive_ints(self, "steps", "batch_size")
        if not (isinstance(self.lr, (int, float)) and self.lr > 0):
            raise ValueError(f"BaseModelConfig.lr must be > 0, got {self.lr!r}")
        if self.model.vocab_size != self.task.vocab_size:
            raise ValueError(f"the task's vocabulary ({self.task.vocab_size} tokens) is not the model's "
                             f"({self.model.vocab_size}): the model cannot represent the task")
        if self.model.max_len < self.task.seq_len:
            raise ValueError(f"the task's sequences ({self.task.seq_len} tokens) do not fit the model's "
                             f"max_len {self.model.max_len}: the model cannot represent the task")


    @classmethod
    def from_flat(cls, d: dict) -> BaseModelConfig:
        """The configuration from :func:`dataclasses.asdict` of one (nested model and task as dicts)."""
        return cls(**{**d, "model": ArenaModel(**d["model"]), "task": WalkTask(**d["task"])})


def pretrain(config: BaseModelConfig) -> Params:
    """The base model's parameters ``[1, ...]`` (module docstring); a copy of the cached result."""
    return {k: v.clone() for k, v in _pretrain(config).items()}


@functools.lru_cache(maxsize=8)
@torch.enable_grad()
def _pretrain(config: BaseModelConfig) -> Params:
    gen = torch.Generator().manual_seed(config.seed)
    params = init_params(config.model, gen)
    for p in params.values():
        p.requires_grad_(True)
    opt = torch.optim.AdamW(params.values(), lr=config.lr, weight_decay=config.weight_decay)
    warmup = max(1, config.steps // 10)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / warmup))
    task, plen = config.task, config.task.prompt_len
    for _ in range(config.steps):
        seqs = task.demonstrations(config.batch_size, gen)[None]  # [1, B, T]
        z, _ = logits(params, config.model, seqs[..., :-1])
        loss = F.cross_entropy(z[0, :, plen - 1:].reshape(-1, z.shape[-1]), seqs[0, :, plen:].reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    return {k: v.detach() for k, v in params.items()}
