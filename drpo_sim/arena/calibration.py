"""The arena's calibration: its free knobs fixed against static statistics at initialisation only.

The knobs are the base model's size (``d_model``), its supervised budget (``steps``, how sharp the
policy RL starts from is) and the tail of its supervised data (``zipf``, how rare the rare right
tokens are). Fixed beforehand and not calibrated, because they set what RL has to learn rather
than how the engine errs: the temperature (1), the precision recipe (:mod:`drpo_sim.arena.model`),
the share of misread demonstrations (:data:`MISREAD`, :class:`drpo_sim.arena.task.WalkTask`) and
the learning rate (the arena's spec). For each point of :data:`GRID`, the base model's engines
sample one response to each of ``n_prompts`` fresh prompts and
:func:`drpo_sim.lm.mismatch.run_statistics` measures, before any RL step:

* mean ``abs(pi - mu)`` under bf16, target :data:`drpo_sim.lm.mismatch.PUBLISHED` 0.004;
* the share of sampled tokens with ``mu <= 0.01``, target 7.8%;
* the bf16 log-ratio drift per token, target -1e-3 (reported, not matched: the size of the
  mismatch fixes it);
* fp16's mean ``abs(pi - mu)``, required to be at most a quarter of bf16's.

The chosen point minimises ``abs(log(mismatch / 0.004)) + abs(log(rare / 0.078))`` among the
points whose fp16 mismatch is below a quarter of bf16's and whose expected reward leaves room to
learn (:data:`REWARD_RANGE`). The rule and the grid are declared here before any run that compares
objectives; the result is written to ``figures/arena_calibration.json`` with the knobs, every
point's statistics and the targets, and the arena's experiments read the knobs from that file.
Nothing about training dynamics enters it.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
from pathlib import Path
from typing import Any

import torch

from drpo_sim._io import atomic_path
from drpo_sim.arena.model import ArenaModel, Engine, response_logprobs
from drpo_sim.arena.pretrain import BaseModelConfig, pretrain
from drpo_sim.arena.task import WalkTask
from drpo_sim.lm.mismatch import PUBLISHED, run_statistics
from drpo_sim.lm.model import torch_threads

CALIBRATION_FILE = "arena_calibration.json"
GRID = {"d_model": (32, 64), "steps": (1500, 3000), "zipf": (1.5, 2.5)}
"""The knobs' candidate values: the base model's width, its supervised budget, and how long the
tail of its supervised data is (:class:`drpo_sim.arena.task.WalkTask`)."""
MISREAD = 0.25
"""The share of the supervised demonstrations that walk with a wrong key (fixed, not calibrated):
the base model then answers about a quarter of the prompts with a consistently wrong walk, which
RL learns to avoid within tens of steps (:mod:`drpo_sim.arena.task`)."""
REWARD_RANGE = (0.2, 0.8)
"""The base model's expected reward must leave room to learn and not start near chance."""
FP16_RATIO_MAX = 0.25
TARGETS = {"mismatch_mean": PUBLISHED["bf16"]["mismatch_mean"], "rare_share": PUBLISHED["bf16"]["rare_share"],
           "seq_log_ratio_per_token": PUBLISHED["bf16"]["seq_log_ratio_per_token"],
           "fp16_over_bf16_max": FP16_RATIO_MAX}
RULE = ("minimise abs(log(bf16 mismatch_mean / 0.004)) + abs(log(bf16 rare_share / 0.078)) over the grid, "
        "among points with fp16 mismatch_mean <= 0.25 x bf16's and bf16 expected reward in [0.2, 0.8]")
STATISTICS = ("mismatch_mean", "mismatch_max", "seq_log_ratio_per_token", "kl_k3", "rare_share")


@torch.no_grad()
def init_statistics(base: BaseModelConfig, precisions: tuple[str, ...] = ("bf16", "fp16", "fp8"), *,
                    n_prompts: int = 256, seed: int = 12345) -> dict[str, Any]:
    """The base model's mismatch at initialisation, per engine precision, and its expected reward."""
    with torch_threads(1):
        params = pretrain(base)
        task = base.task
        gen = torch.Generator().manual_seed(seed)
        prompts = task.prompts(n_prompts, gen)[None]
        draws = torch.rand(task.response_len, 1, n_prompts, generator=gen)
        out: dict[str, Any] = {}
        for precision in precisions:
            roll = Engine(params, base.model, precision).rollout(prompts, task.response_len, lambda j: draws[j],
                                                                 trainer=params)
            logp = response_logprobs(params, base.model, roll.seqs, task.prompt_len)[1]
            st = run_statistics(logp, roll.logp, torch.ones_like(logp, dtype=torch.bool))
            out[precision] = {k: float(st[k][0]) for k in STATISTICS}
            out[precision]["reward"] = float(task.reward(roll.seqs).mean())
        out["tokens"] = n_prompts * task.response_len
        return out


def score(stats_: dict[str, Any]) -> float:
    """The calibration's distance to the targets (module docstring); inf when a requirement fails."""
    bf16, fp16 = stats_["bf16"], stats_["fp16"]
    lo, hi = REWARD_RANGE
    if not (fp16["mismatch_mean"] <= FP16_RATIO_MAX * bf16["mismatch_mean"] and lo <= bf16["reward"] <= hi):
        return math.inf
    return (abs(math.log(bf16["mismatch_mean"] / TARGETS["mismatch_mean"]))
            + abs(math.log(max(bf16["rare_share"], 1e-12) / TARGETS["rare_share"])))


def calibrate(*, progress: bool = False) -> dict[str, Any]:
    """Measure every point of :data:`GRID` and choose one (module docstring)."""
    points = []
    for knobs in itertools.product(*GRID.values()):
        k = dict(zip(GRID, knobs))
        st = init_statistics(base_model(**k))
        points.append({**k, "score": score(st), **st})
        if progress:
            print(f"{k}: bf16 {st['bf16']['mismatch_mean']:.5f} fp16 {st['fp16']['mismatch_mean']:.5f} "
                  f"rare {st['bf16']['rare_share']:.4f} reward {st['bf16']['reward']:.3f} "
                  f"score {points[-1]['score']:.3f}", flush=True)
    best = min(points, key=lambda p: p["score"])
    if not math.isfinite(best["score"]):
        raise RuntimeError("no point of the calibration grid meets the requirements")
    knobs = {k: best[k] for k in GRID}
    chosen = base_model(**knobs)
    return {"knobs": {**knobs, "temperature": 1.0, "misread": MISREAD},
            "base": dataclasses.asdict(chosen), "measured": {k: best[k] for k in ("bf16", "fp16", "fp8", "tokens")},
            "targets": TARGETS, "rule": RULE,
            "grid": points}


def base_model(d_model: int, steps: int, zipf: float) -> BaseModelConfig:
    """The base model at one point of the grid (the MLP four times as wide as the model)."""
    return BaseModelConfig(model=ArenaModel(d_model=d_model, d_mlp=4 * d_model),
                           task=WalkTask(zipf=zipf, misread=MISREAD), steps=steps)


def write(result: dict[str, Any], out: str | Path) -> Path:
    """``out/arena_calibration.json`` (strict JSON: a point that fails a requirement has score null)."""
    path = Path(out) / CALIBRATION_FILE
    grid = [{**p, "score": p["score"] if math.isfinite(p["score"]) else None} for p in result.get("grid") or []]
    result = {**result, "grid": grid or result.get("grid")}
    with atomic_path(path) as tmp:
        Path(tmp).write_text(json.dumps(result, indent=2, sort_keys=True, allow_nan=False) + "\n")
    return path


def load(path: str | Path) -> BaseModelConfig:
    """The calibrated base model of a calibration file."""
    path = Path(path)
    try:
        base = json.loads(path.read_text())["base"]
    except (OSError, ValueError, KeyError) as e:
        raise ValueError(f"{path}: not an arena calibration file ({e}); run `drpo-sim arena calibrate`") from None
    return BaseModelConfig.from_flat(base)
