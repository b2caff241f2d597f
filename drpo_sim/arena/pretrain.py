"""The arena's base model: supervised pretraining on the task's long-tailed demonstrations.

Next-token cross-entropy on the response tokens of :meth:`drpo_sim.arena.task.WalkTask.demonstrations`
(teacher forcing, float32), minimised with AdamW (Loshchilov and Hutter 2019), weight decay 0.01,
a linear warm-up over the first tenth of the steps and a constant rate after it:

    L(theta) = - (1 / (B H)) sum_b sum_{j=1..H} log pi_theta(y_{b,j} | prompt_b, y_{b,<j}).

Every run of an arena experiment starts from this one model (the base model RL fine-tunes); the
budget ``steps`` is one of the knobs the calibration fixes (:mod:`drpo_sim.arena.calibration`):
a short budget leaves the rule half-learnt and the policy uncertain, a long one leaves only the
data's own long tail. Deterministic given ``seed``; the calibrated base (1,500 steps) takes about
a minute on one core, the mixture of experts about two.

**Cache.** Every cell of an experiment, every worker process and every later run starts from the
same base, so the trained parameters are kept twice: in the process (``functools.lru_cache``) and
on disk, one ``torch.save`` file per base in :func:`cache_dir` named by :func:`cache_key` (the
configuration, the code that trains it, :func:`drpo_sim.provenance.code_digest`, and the torch
version), written atomically; a lock file beside it makes a second process that needs the same
base wait for the first one's file instead of training it again. A file that cannot be read is
reported in a warning naming it and trained again; a folder that cannot be written is reported
once and left alone. The cache changes no number: training runs on one torch thread, whoever
calls it, so a loaded base is bit for bit the one training would return.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
import pickle
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from drpo_sim._io import atomic_path
from drpo_sim.arena.model import ArenaModel, Params, init_params, logits
from drpo_sim.arena.task import WalkTask
from drpo_sim.config import check_positive_ints
from drpo_sim.lm.model import torch_threads
from drpo_sim.provenance import code_digest

CACHE_ENV = "DRPO_SIM_CACHE"
"""Environment variable naming the cache folder (``off``: no disk cache)."""


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


def cache_dir() -> Path | None:
    """The folder of the base-model cache: ``$DRPO_SIM_CACHE`` (``off`` or empty: none), else
    ``$XDG_CACHE_HOME/drpo_sim`` or ``~/.cache/drpo_sim``; the bases go to ``arena_bases/`` in it."""
    env = os.environ.get(CACHE_ENV)
    if env is not None:
        return None if env.strip().lower() in ("", "off") else Path(env) / "arena_bases"
    root = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(root) / "drpo_sim" / "arena_bases"


def cache_key(config: BaseModelConfig) -> str:
    """What determines the base's parameters: the configuration, the code and torch's version
    (first 16 hex digits of a SHA-256)."""
    what = {"config": dataclasses.asdict(config), "code": code_digest(__name__), "torch": torch.__version__}
    return hashlib.sha256(json.dumps(what, sort_keys=True).encode()).hexdigest()[:16]


@functools.lru_cache(maxsize=8)
def _pretrain(config: BaseModelConfig) -> Params:
    folder = cache_dir()
    if folder is None:
        return _train(config)
    path = folder / f"{cache_key(config)}.pt"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        lock = open(path.with_name(path.name + ".lock"), "a")  # noqa: SIM115 (closed by the with below)
    except OSError as e:
        _warn_unwritable(str(folder), str(e))
        return _train(config)
    with lock:
        _lock(lock)  # another process training this base: wait for its file rather than train it twice
        if path.is_file():
            try:
                return _load(path, config)
            except (OSError, RuntimeError, EOFError, KeyError, ValueError, pickle.UnpicklingError) as e:
                warnings.warn(f"{path}: unreadable cached arena base ({e}); training it again and replacing "
                              "the file", stacklevel=3)
        params = _train(config)
        try:
            with atomic_path(path) as tmp:
                torch.save({"config": dataclasses.asdict(config), "params": params}, tmp)
        except OSError as e:
            _warn_unwritable(str(folder), str(e))
        return params


def _lock(file: Any) -> None:
    """An exclusive lock on ``file``, released when it is closed (none where ``fcntl`` is missing)."""
    try:
        import fcntl
    except ImportError:  # not POSIX: two processes may train the same base, each writing it atomically
        return
    fcntl.flock(file, fcntl.LOCK_EX)


@functools.cache
def _warn_unwritable(folder: str, error: str) -> None:
    warnings.warn(f"{folder}: cannot write the arena base cache ({error}); every process will train its "
                  f"own base. Set {CACHE_ENV} to a writable folder, or to 'off'", stacklevel=4)


def _load(path: Path, config: BaseModelConfig) -> Params:
    payload = torch.load(path, map_location="cpu", weights_only=True)
    if payload["config"] != dataclasses.asdict(config):
        raise ValueError("it holds another configuration")
    shapes = {k: tuple(v.shape) for k, v in init_params(config.model, torch.Generator().manual_seed(0)).items()}
    params = payload["params"]
    if {k: tuple(v.shape) for k, v in params.items()} != shapes:
        raise ValueError("its parameters do not have the model's names and shapes")
    return params


@torch.enable_grad()
def _train(config: BaseModelConfig) -> Params:
    with torch_threads(1):  # the same bits whoever trains it first (a worker, the CLI or a benchmark)
        return _train_on_one_thread(config)


def _train_on_one_thread(config: BaseModelConfig) -> Params:
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
