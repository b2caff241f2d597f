"""Supervised pretraining of the tiny transformer on the task, with a checkpoint cache.

Next-token cross-entropy on the response tokens only (the prompt's digits are random and not
predictable), teacher forcing on ``prompt + sorted digits + EOS``:

    L(theta) = - (1 / (B (n+1))) sum_b sum_{t >= prompt_len} log pi_theta(x_{b,t} | x_{b,<t})

minimised with AdamW (Loshchilov and Hutter 2019) for a deliberately *limited* number of steps,
with a linear warm-up and a cosine decay of the learning rate. The budget of the default
:class:`PretrainConfig` (about 1 s on one core) leaves the model clearly imperfect at sorting six
digits: expected partial reward about 0.34 at temperature 1 (greedy about 0.8), the starting
point RL then improves.

The checkpoint (``state_dict``, the configuration, the final metrics) is saved under
``cache_dir/pretrain-<hash>.pt``, keyed by a hash of the configuration, so every RL run of an
experiment reuses one pretrained model. The run is deterministic given ``seed``: the
initialisation and every batch come from one ``torch.Generator``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from drpo_sim._io import atomic_path
from drpo_sim.lm.model import ModelConfig, TinyTransformer, generate, token_logprobs
from drpo_sim.lm.task import EOS, PAD, SortTask

FORMAT_VERSION = 1
"""Part of the cache key: bump it when the model or the training code changes the result."""


@dataclass(frozen=True)
class PretrainConfig:
    """Task, model and the supervised budget (defaults: 6 digits, 2 x 64 model, 60 steps of 64 sequences)."""

    n_digits: int = 6
    d_model: int = 64
    n_layers: int = 2
    n_heads: int = 4
    d_mlp: int = 256
    steps: int = 60
    batch_size: int = 64
    lr: float = 1e-3
    warmup: int = 10
    weight_decay: float = 0.01
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size"):
            v = getattr(self, name)
            if not (isinstance(v, int) and v >= 1):
                raise ValueError(f"PretrainConfig.{name} must be a positive integer, got {v!r}")
        if not (isinstance(self.warmup, int) and self.warmup >= 0):
            raise ValueError(f"PretrainConfig.warmup must be an integer >= 0, got {self.warmup!r}")
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise ValueError(f"PretrainConfig.lr must be > 0, got {self.lr!r}")
        self.task  # validates n_digits
        self.model_config  # validates the sizes

    @property
    def task(self) -> SortTask:
        return SortTask(n_digits=self.n_digits)

    @property
    def model_config(self) -> ModelConfig:
        return ModelConfig(
            vocab_size=self.task.vocab_size, max_len=self.task.seq_len, d_model=self.d_model,
            n_layers=self.n_layers, n_heads=self.n_heads, d_mlp=self.d_mlp,
        )

    def key(self) -> str:
        """A short hash of the configuration and :data:`FORMAT_VERSION` (the cache key)."""
        text = json.dumps({"format": FORMAT_VERSION, **dataclasses.asdict(self)}, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclass
class Checkpoint:
    """A pretrained model: its configuration, weights and final metrics."""

    config: PretrainConfig
    state_dict: dict[str, torch.Tensor]
    metrics: dict[str, float]
    path: Path | None = None

    @property
    def task(self) -> SortTask:
        return self.config.task

    def model(self) -> TinyTransformer:
        """A fresh float32 model holding the checkpoint's weights."""
        model = TinyTransformer(self.config.model_config)
        model.load_state_dict(self.state_dict)
        return model


def checkpoint_path(cfg: PretrainConfig, cache_dir: str | os.PathLike) -> Path:
    return Path(cache_dir) / f"pretrain-{cfg.key()}.pt"


def pretrain(cfg: PretrainConfig = PretrainConfig(), cache_dir: str | os.PathLike | None = None,
             *, progress: bool = False) -> Checkpoint:
    """The pretrained checkpoint for ``cfg``: loaded from ``cache_dir`` if there, else trained
    (and saved there, atomically, when ``cache_dir`` is given)."""
    if cache_dir is not None:
        path = checkpoint_path(cfg, cache_dir)
        if path.exists():
            return load_checkpoint(path)
    ckpt = _train(cfg, progress)
    if cache_dir is not None:
        ckpt.path = save_checkpoint(ckpt, checkpoint_path(cfg, cache_dir))
    return ckpt


def _train(cfg: PretrainConfig, progress: bool) -> Checkpoint:
    task = cfg.task
    gen = torch.Generator().manual_seed(cfg.seed)
    model = TinyTransformer(cfg.model_config, generator=gen)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: _lr_factor(s, cfg.warmup, cfg.steps))
    loss = torch.zeros(())
    for _ in tqdm(range(cfg.steps), desc="pretrain", unit="step", disable=not progress, leave=False):
        seqs = task.sequences(task.sample_digits(cfg.batch_size, gen))
        loss = -token_logprobs(model, seqs, task.prompt_len).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
    model.eval()
    metrics = {"final_loss": float(loss.detach()), **evaluate(model, task)}
    return Checkpoint(cfg, {k: v.detach().clone() for k, v in model.state_dict().items()}, metrics)


def _lr_factor(step: int, warmup: int, total: int) -> float:
    """Linear warm-up over ``warmup`` steps, then cosine decay to 10% of the peak."""
    if step < warmup:
        return (step + 1) / warmup
    frac = (step - warmup) / max(total - warmup, 1)
    return 0.1 + 0.45 * (1.0 + math.cos(math.pi * min(frac, 1.0)))


EVAL_SEED = 1_000_003
"""Seed of the fixed held-out prompt set and of its evaluation samples (generators of their own;
training never draws from them)."""


def eval_digits(task: SortTask, n: int = 64, seed: int = EVAL_SEED) -> torch.Tensor:
    """The fixed evaluation prompts' digits, ``[n, n_digits]``."""
    return task.sample_digits(n, torch.Generator().manual_seed(seed))


@torch.no_grad()
def evaluate(model: torch.nn.Module, task: SortTask, digits: torch.Tensor | None = None, *,
             sampled: bool = True, greedy: bool = True, reward_mode: str = "partial",
             seed: int = EVAL_SEED) -> dict[str, float]:
    """The policy's quality on the held-out prompts.

    * ``eval_reward`` (if ``sampled``): mean reward (``reward_mode``) of one response per prompt
      sampled at temperature 1, an estimate of the expected reward ``E_{y ~ pi}[R(y)]`` that RL
      maximises. The samples are drawn with a generator seeded afresh with ``seed`` at every call
      (common random numbers), so successive evaluations differ by the change of the policy, not
      by the luck of the draw;
    * ``eval_greedy`` and ``eval_exact`` (if ``greedy``): partial reward and exact-match rate of
      greedy decoding.
    """
    digits = eval_digits(task) if digits is None else digits
    prompts = task.prompts(digits)
    out = {}
    if sampled:
        gen = torch.Generator().manual_seed(seed)
        roll = generate(model, prompts, task.response_len, eos_id=EOS, pad_id=PAD, generator=gen)
        out["eval_reward"] = float(task.reward(roll.seqs[:, task.prompt_len :], digits, reward_mode).mean())
    if greedy:
        roll = generate(model, prompts, task.response_len, eos_id=EOS, pad_id=PAD, greedy=True)
        resp = roll.seqs[:, task.prompt_len :]
        out["eval_greedy"] = float(task.reward(resp, digits, "partial").mean())
        out["eval_exact"] = float(task.reward(resp, digits, "exact").mean())
    return out


def save_checkpoint(ckpt: Checkpoint, path: str | os.PathLike) -> Path:
    """Write ``{"config", "state_dict", "metrics", "format"}`` with ``torch.save``, atomically."""
    path = Path(path)
    payload: dict[str, Any] = {
        "format": FORMAT_VERSION,
        "config": dataclasses.asdict(ckpt.config),
        "state_dict": ckpt.state_dict,
        "metrics": ckpt.metrics,
    }
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)
    return path


def load_checkpoint(path: str | os.PathLike) -> Checkpoint:
    """Read a checkpoint written by :func:`save_checkpoint` (``ValueError`` naming the file if not one)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such checkpoint")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
        cfg = PretrainConfig(**payload["config"])
        return Checkpoint(cfg, payload["state_dict"], dict(payload["metrics"]), path)
    except (KeyError, TypeError, RuntimeError, EOFError, pickle.UnpicklingError, ValueError) as e:
        raise ValueError(f"{path}: not a drpo_sim LM checkpoint ({e})") from e
