"""Objectives x engine precisions x seeds on the tiny transformer: a miniature of the DRPO paper's Figure 3.

:func:`compare` pretrains (or loads from the cache) one model, fine-tunes it with every
combination of objective, engine precision and seed (:func:`drpo_sim.lm.rl.train`, one process
per run, one torch thread each), and writes to ``out``:

* ``lm_compare.parquet``: the tidy result table (``method, precision, seed, step`` and the
  metrics of :data:`drpo_sim.lm.rl.METRICS`), configuration in its metadata
  (:func:`drpo_sim.results.write_results`);
* ``lm_reward.{png,pdf}`` and ``lm_reward.csv``: one panel per precision, the held-out reward of
  each objective against the step, IQM over seeds with a 95% bootstrap band
  (:func:`drpo_sim.stats.curve_bands`, :func:`drpo_sim.plots.curves_figure`);
* ``lm_mismatch.{png,pdf}`` and ``lm_mismatch.csv``: the rollout-time mismatch
  ``mean abs(pi - mu)`` per reduced precision (log scale; fp32 is exactly 0);
* ``lm_summary.csv``: per objective and precision, the final held-out reward (IQM over seeds of
  the mean of the last ``SUMMARY_LAST`` steps) with its 95% bootstrap interval, the probability
  of improvement over ``pg_is``, the collapse rate, and the mean mismatch and masked fraction;
* ``lm_tokens/<objective>_<precision>_seed<k>.parquet``: token logs of one seed per combination
  (the quick profile: ``pg_is`` and ``drpo`` only), one :class:`~drpo_sim.tokens.TokenBatch` per
  optimiser update, for ``drpo-sim replay``;
* ``lm_cache/pretrain-<hash>.pt``: the pretrained checkpoint, reused by later calls.

Profiles (:data:`PROFILES`): ``"quick"`` runs inside ``make reproduce --quick`` and the tests
(about a minute on two cores, pretraining included); ``"full"`` has the seeds for honest bands.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd
from tqdm.auto import tqdm

from drpo_sim import plots, stats
from drpo_sim._io import write_csv
from drpo_sim.figures import FigureRecord
from drpo_sim.lm.precision import PRECISIONS
from drpo_sim.lm.pretrain import PretrainConfig, pretrain
from drpo_sim.lm.rl import LabConfig, train
from drpo_sim.results import write_results
from drpo_sim.tokens import TokenLogWriter

DEFAULT_OBJECTIVES = ("pg_is", "grpo", "dppo_tv", "drpo")
DEFAULT_PRECISIONS = ("fp32", "bf16", "fp8")
PROFILES: dict[str, dict[str, Any]] = {
    "quick": {"steps": 40, "seeds": 2, "token_log_objectives": ("pg_is", "drpo")},
    "full": {"steps": 150, "seeds": 8, "token_log_objectives": None},  # None: every objective
}
SUMMARY_LAST = 10
"""Final reward of a seed: the mean held-out reward over its last this many steps."""
RESULTS_FILE = "lm_compare.parquet"


def compare(
    objectives: Sequence[str] = DEFAULT_OBJECTIVES,
    precisions: Sequence[str] = DEFAULT_PRECISIONS,
    seeds: int | Iterable[int] | None = None,
    profile: str = "quick",
    out: str | os.PathLike = "figures",
    jobs: int | None = None,
    *,
    params: Mapping[str, Mapping[str, Any]] | None = None,
    steps: int | None = None,
    lab: Mapping[str, Any] | None = None,
    pretrain_config: PretrainConfig | None = None,
    cache_dir: str | os.PathLike | None = None,
    formats: Sequence[str] = ("png",),
    progress: bool = False,
) -> list[FigureRecord]:
    """Run every (objective, precision, seed), write the files of the module docstring, and
    return one :class:`~drpo_sim.figures.FigureRecord` per figure (``lm_reward``, and
    ``lm_mismatch`` when a reduced precision is among ``precisions``) for ``MANIFEST.json``.

    ``seeds``: a number of seeds (``range(n)``), explicit seeds, or ``None`` for the profile's.
    ``params``: objective parameters per objective name, e.g. ``{"drpo": {"delta": 2.5}}``.
    ``steps`` overrides the profile's number of RL steps; ``lab`` any other
    :class:`~drpo_sim.lm.rl.LabConfig` field (``lr``, ``group_size``, ...). ``jobs``: worker
    processes (default: the number of CPUs). Bad input: ``ValueError`` before any work.
    """
    t0 = time.perf_counter()
    if profile not in PROFILES:
        raise ValueError(f"unknown profile {profile!r}; valid: {', '.join(PROFILES)}")
    prof = PROFILES[profile]
    objectives, precisions = _names(objectives, "objectives"), _names(precisions, "precisions")
    bad = [p for p in precisions if p not in PRECISIONS]
    if bad:
        raise ValueError(f"unknown precision(s) {', '.join(bad)}; valid: {', '.join(PRECISIONS)}")
    seeds = _seeds(prof["seeds"] if seeds is None else seeds)
    params = {k: dict(v) for k, v in (params or {}).items()}
    unused = sorted(set(params) - set(objectives))
    if unused:
        raise ValueError(f"parameters given for {', '.join(unused)}, which is not among the objectives {', '.join(objectives)}")
    lab = dict(lab or {})
    reserved = {"objective", "params", "precision", "seed"} & set(lab)
    if reserved:
        raise ValueError(f"lab fields {sorted(reserved)} are set by compare itself")
    lab["steps"] = int(steps if steps is not None else lab.get("steps", prof["steps"]))
    if jobs is not None and (isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 1):
        raise ValueError(f"jobs must be a number of processes >= 1, got {jobs!r}")
    configs = [
        LabConfig(objective=o, params=params.get(o, {}), precision=p, seed=s, **lab)
        for o in objectives for p in precisions for s in seeds
    ]  # validates every objective, parameter and field up front

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    pcfg = pretrain_config or PretrainConfig()
    ckpt = pretrain(pcfg, out / "lm_cache" if cache_dir is None else cache_dir, progress=progress)
    logged = set(objectives if prof["token_log_objectives"] is None else prof["token_log_objectives"])
    token_dir = out / "lm_tokens"
    tasks = []
    for cfg in configs:
        path = None
        if cfg.objective in logged and cfg.seed == seeds[0]:
            path = token_dir / f"{cfg.objective}_{cfg.precision}_seed{cfg.seed}.parquet"
        tasks.append((cfg, path))

    n_jobs = min(jobs or os.cpu_count() or 1, len(tasks))
    frames = list(tqdm(_run_all(tasks, ckpt.path, n_jobs), total=len(tasks), desc="lm compare", unit="run",
                       disable=not progress))
    df = pd.concat(frames, ignore_index=True).sort_values(["method", "precision", "seed", "step"], ignore_index=True)

    config = {
        "profile": profile,
        "objectives": list(objectives),
        "precisions": list(precisions),
        "method_params": {c.objective: c.build_objective().params for c in configs},
        "lab": {k: v for k, v in dataclasses.asdict(configs[0]).items() if k not in ("objective", "params", "precision", "seed")},
        "pretrain": dataclasses.asdict(pcfg),
        "pretrain_metrics": ckpt.metrics,
        "results": RESULTS_FILE,
        "summary": "lm_summary.csv",
        "token_logs": sorted(str(p.relative_to(out)) for _, p in tasks if p is not None),
        "jobs": n_jobs,
    }
    write_results(df, out / RESULTS_FILE, {**config, "seeds": list(seeds)})
    records = _figures(df, out, config, seeds, pcfg, ckpt.metrics, formats, t0)
    return records


# --------------------------------------------------------------------------------------------
# runs


def _run_all(tasks: list[tuple[LabConfig, Path | None]], ckpt_path: Path, n_jobs: int) -> Iterator[pd.DataFrame]:
    """Every run, on ``n_jobs`` processes (in this process when 1), yielded as each finishes."""
    if n_jobs == 1:
        for cfg, path in tasks:
            yield run_one(cfg, ckpt_path, path)
        return
    from joblib import Parallel, delayed

    parallel = Parallel(n_jobs=n_jobs, return_as="generator_unordered")
    yield from parallel(delayed(run_one)(cfg, ckpt_path, path) for cfg, path in tasks)


def run_one(config: LabConfig, checkpoint: str | os.PathLike, token_log: str | os.PathLike | None = None) -> pd.DataFrame:
    """One run (a worker's unit of work), writing its token log if asked."""
    with contextlib.ExitStack() as stack:
        writer = None
        if token_log is not None:
            meta = {"source": "drpo_sim.lm", "config": config.flat(), "checkpoint": Path(checkpoint).name}
            writer = stack.enter_context(TokenLogWriter(token_log, metadata=meta))
        return train(config, checkpoint, writer)


# --------------------------------------------------------------------------------------------
# figures and summary


def _figures(df: pd.DataFrame, out: Path, config: dict, seeds: list[int], pcfg: PretrainConfig,
             pre: dict[str, float], formats: Sequence[str], t0: float) -> list[FigureRecord]:
    precisions = config["precisions"]
    steps = int(df["step"].max())
    summary = _summary(df, steps)
    write_csv(summary, out / "lm_summary.csv")

    # step 0: the pretrained model, the common starting point of every curve
    start = df[df["step"] == 1].assign(step=0, eval_reward=lambda d: d["initial_eval_reward"])
    bands = stats.curve_bands(pd.concat([start, df], ignore_index=True), "eval_reward", group=("precision", "method"))
    write_csv(bands, out / "lm_reward.csv")
    lab = config["lab"]
    task = (f"tiny transformer ({pcfg.n_layers} layers, d_model {pcfg.d_model}, {pcfg.n_heads} heads) sorting "
            f"{pcfg.n_digits} digits, pretrained {pcfg.steps} steps (held-out reward {pre['eval_reward']:.2f})")
    setup = (f"{lab['prompts_per_step']} prompts x G = {lab['group_size']}, {lab['updates_per_batch']} mini-batch updates "
             f"anchored to the engine's mu, AdamW lr {lab['lr']:g}; {len(seeds)} seeds x {steps} steps")
    panels = [(f"{p} engine: held-out reward", bands[bands["precision"] == p]) for p in precisions]
    files = plots.curves_figure(panels, out / "lm_reward", formats=formats,
                                title=f"RL from reduced-precision rollouts, {task};\n{setup}; held-out reward: "
                                f"fp32 trainer, one sample per prompt at T = 1")
    records = [FigureRecord("lm_reward", [f.name for f in files], "lm_reward.csv", "lm.experiment.compare", config,
                            time.perf_counter() - t0, list(seeds))]

    low = [p for p in precisions if p != "fp32"]
    if low:
        t1 = time.perf_counter()
        mm = stats.curve_bands(df[df["precision"].isin(low)], "mismatch_mean", group=("precision", "method"))
        write_csv(mm, out / "lm_mismatch.csv")
        panels = [(f"{p} engine: mean abs(pi - mu)", mm[mm["precision"] == p]) for p in low]
        files = plots.curves_figure(panels, out / "lm_mismatch", formats=formats, logy=[True] * len(panels),
                                    title=f"Training-inference mismatch at rollout (fp32 trainer vs engine copy, sampled tokens),\n{task}")
        records.append(FigureRecord("lm_mismatch", [f.name for f in files], "lm_mismatch.csv", "lm.experiment.compare",
                                    config, time.perf_counter() - t1, list(seeds)))
    return records


def _summary(df: pd.DataFrame, steps: int) -> pd.DataFrame:
    """Final held-out reward IQM [95% CI] per objective and precision, with mismatch statistics."""
    methods = df["method"].unique()
    summary = stats.summarize_runs(
        df, metric="eval_reward", group=("method", "precision"), last=min(SUMMARY_LAST, steps),
        reference="pg_is" if "pg_is" in methods and len(methods) > 1 else None, nan_policy="omit",
    )
    keys = ["method", "precision"]
    extra = df.groupby(keys).agg(
        initial_eval_reward=("initial_eval_reward", "first"),
        mismatch_mean=("mismatch_mean", "mean"),
        mismatch_max=("mismatch_max", "max"),
        log_ratio_mean=("log_ratio_mean", "mean"),
        shift_mean=("shift_mean", "mean"),
        masked_frac=("masked_frac", "mean"),
        nonfinite_steps=("nonfinite", "sum"),
    ).reset_index()
    last = df[df["step"] > steps - min(SUMMARY_LAST, steps)]
    extra = extra.merge(last.groupby(keys)["reward"].mean().rename("final_sample_reward").reset_index(), on=keys)
    summary = summary.merge(extra, on=keys)
    summary.insert(2, "final", [f"{m:.3f} [{lo:.3f}, {hi:.3f}]" for m, lo, hi in
                                zip(summary["final_iqm"], summary["final_low"], summary["final_high"])])
    return summary


def _names(values: Sequence[str] | str, what: str) -> list[str]:
    names = [v.strip() for v in values.split(",")] if isinstance(values, str) else [str(v).strip() for v in values]
    names = [n for n in names if n]
    if not names:
        raise ValueError(f"{what}: give at least one")
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ValueError(f"{what}: {', '.join(dup)} listed twice")
    return names


def _seeds(seeds: int | Iterable[int]) -> list[int]:
    if isinstance(seeds, bool):
        raise ValueError(f"seeds must be a number of seeds or a list of seeds, got {seeds!r}")
    if isinstance(seeds, int):
        if seeds < 1:
            raise ValueError(f"seeds must be >= 1, got {seeds}")
        return list(range(seeds))
    out = [int(s) for s in seeds]
    if not out or any(s < 0 for s in out) or len(set(out)) != len(out):
        raise ValueError(f"seeds must be distinct non-negative integers, got {out}")
    return out
