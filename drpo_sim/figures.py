"""Figure jobs: compute a figure's data with the library, write it as CSV, draw it, record it.

``drpo-sim geometry`` runs :func:`geometry_figures`; ``drpo-sim reproduce`` runs every job and
writes ``MANIFEST.json`` beside the figures (figure, producing job, configuration, package
version, git commit, wall time).
"""

from __future__ import annotations

import dataclasses
import json
import platform
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from drpo_sim import __version__, geometry, plots
from drpo_sim._io import write_csv, write_text


@dataclasses.dataclass
class FigureRecord:
    """One figure written by a job: its files and what produced them."""

    figure: str
    files: list[str]
    data: str
    job: str
    config: dict
    wall_time_s: float
    seeds: list[int] | None = None
    script: str | None = None  # the analyses/ script that ran the job (set by drpo_sim.reproduce)


def geometry_figures(out: str | Path, cfg: geometry.GeometryConfig | None = None, formats: Sequence[str] = ("png",)) -> list[FigureRecord]:
    """The trust-region geometry figures (DRPO paper's Table 1 drawn out, Figure 1, delta range)."""
    cfg = cfg or geometry.GeometryConfig()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    labels = {name: str(obj) for name, obj in cfg.build().items()}
    config = _jsonable(dataclasses.asdict(cfg))
    records = []

    t0 = time.perf_counter()
    curves = geometry.weight_curves(cfg)
    write_csv(curves, out / "weight_vs_pi.csv")
    main = [n for n, _ in cfg.objectives if n not in cfg.ablations]
    files = plots.weight_curves_figure(
        curves, out / "weight_vs_pi", names=main, formats=formats,
        title="Gradient weight w = (dJ/dlogp) / (A r) against pi at fixed mu, A = +-1 (DRPO paper, Table 1); "
        "lines leaving the frame keep going",
    )
    records.append(FigureRecord("weight_vs_pi", _names(files), "weight_vs_pi.csv", "geometry.weight_curves", config, time.perf_counter() - t0))

    t0 = time.perf_counter()
    ablations = ["drpo"] + [n for n, _ in cfg.objectives if n in cfg.ablations]
    files = plots.weight_curves_figure(
        curves, out / "weight_vs_pi_ablations", names=ablations, formats=formats,
        title="DRPO and its ablations (no abs(A) factor; KL, TV, K3 penalties of the sampled token), A = +-1",
    )
    records.append(FigureRecord("weight_vs_pi_ablations", _names(files), "weight_vs_pi.csv", "geometry.weight_curves", config, time.perf_counter() - t0))

    t0 = time.perf_counter()
    plane = geometry.weight_plane(cfg)
    write_csv(plane, out / "weight_plane.csv")
    files = plots.weight_plane_figure(plane, out / "weight_plane", labels=labels, formats=formats)
    records.append(FigureRecord("weight_plane", _names(files), "weight_plane.csv", "geometry.weight_plane", config, time.perf_counter() - t0))

    t0 = time.perf_counter()
    ranges, range_curves = geometry.drpo_weight_range(cfg)
    write_csv(ranges, out / "drpo_delta_range.csv")
    write_csv(range_curves, out / "drpo_delta_curves.csv")
    files = plots.drpo_range_figure(ranges, range_curves, out / "drpo_delta_range", formats=formats)
    records.append(FigureRecord("drpo_delta_range", _names(files), "drpo_delta_range.csv", "geometry.drpo_weight_range", config, time.perf_counter() - t0))
    return records


#: The tabular task of the simulation figures: 8 prompts of 4 tokens, V = 256, prefix reward, the
#: batch split into 4 mini-batch updates. On the bandit every method locks onto one token within
#: ~50 steps and nothing separates; on this sequence task methods do (README). The analyses in
#: ``analyses/`` start from it and state what they change.
TABULAR_TASK = {"env": "tabular", "vocab_size": 256, "n_prompts": 8, "horizon": 4, "updates_per_batch": 4}
PROFILES = ("quick", "full")


def _profile(spec: dict, profile: str) -> dict:
    """The ``profile`` entry (``seeds``, ``steps``, ...) of an analysis configuration."""
    if profile not in PROFILES:
        raise ValueError(f"unknown profile {profile!r}; valid: {', '.join(PROFILES)}")
    return spec[profile]


def convergence_figures(out: str | Path, spec: dict, profile: str = "quick", formats: Sequence[str] = ("png",), *,
                        progress: bool = False) -> list[FigureRecord]:
    """Reward, mismatch and masked share against step with 95% bootstrap bands, one setting.

    ``spec``: ``name`` (the figure), ``methods``, ``config`` (flat configuration fields) and per
    profile ``{"steps", "seeds"}``. Writes ``<name>.csv`` (bands) and ``<name>_summary.csv``
    (:func:`drpo_sim.stats.summarize_runs` against ``pg_is``).
    """
    from drpo_sim import stats
    from drpo_sim.sim import SimConfig, simulate

    run = _profile(spec, profile)
    name, methods = spec["name"], tuple(spec["methods"])
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    seeds = list(range(run["seeds"]))
    t0 = time.perf_counter()
    cfg = SimConfig.from_flat({**spec["config"], "steps": run["steps"]})
    df = simulate(cfg, methods, seeds, progress=progress)
    panels = {
        "expected_reward": "expected reward of pi",
        "shift_mean": "mean abs(pi - mu), sampled tokens",
        "masked_frac": "share of sampled tokens masked (w = 0)",
    }
    bands = {m: stats.curve_bands(df, m) for m in panels}
    write_csv(pd.concat([b.assign(metric=m) for m, b in bands.items()], ignore_index=True), out / f"{name}.csv")
    summary = stats.summarize_runs(df, reference="pg_is", nan_policy="omit")
    write_csv(summary, out / f"{name}_summary.csv")
    o, e = cfg.offpolicy, cfg.env
    title = (
        f"Tabular task ({e.n_prompts} prompts x {e.horizon} tokens, V = {e.vocab_size}, prefix reward): {o.precision} engine "
        f"+ logit noise {o.noise_std:g},\nrollouts {o.staleness} optimiser updates stale, {o.updates_per_batch} mini-batch updates per batch"
    )
    files = plots.curves_figure(
        [(label, bands[m]) for m, label in panels.items()],
        out / name, title=title, formats=formats, logy=[False, True, False],
    )
    config = {**cfg.flat(), "methods": list(methods)}
    return [FigureRecord(name, _names(files), f"{name}.csv", "sim.simulate", config, time.perf_counter() - t0, seeds)]


def dynamics_figures(out: str | Path, objectives: Sequence[tuple[str, dict]], formats: Sequence[str] = ("png",)) -> list[FigureRecord]:
    """The frozen-mu rest-point table and the flow figure (REFERENCE.md's per-token maximisers)."""
    from drpo_sim import dynamics

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    cfg = dynamics.FlowConfig()
    table = dynamics.rest_point_table(cfg=cfg)
    write_csv(table, out / "rest_points.csv")
    field, rest = dynamics.flow_field(objectives, cfg=cfg)
    write_csv(rest, out / "fixed_point_rest_curves.csv")
    files = plots.flow_figure(
        field, rest, out / "fixed_point_flows", formats=formats,
        title="Where pi comes to rest when mu is frozen (exact expected update of one token; colour: direction and speed of pi)",
    )
    config = {"flow": dataclasses.asdict(cfg), "objectives": [f"{n}{p}" for n, p in objectives]}
    return [FigureRecord("fixed_point_flows", _names(files), "rest_points.csv", "dynamics.rest_point_table", config, time.perf_counter() - t0)]


STABLE_FRACTION = 0.9  # a cell is in a method's stable region: no collapse, and >= 90% of its on-policy final reward


def phase_figures(out: str | Path, spec: dict, profile: str = "quick", formats: Sequence[str] = ("png",), *,
                  n_jobs: int | None = None) -> list[FigureRecord]:
    """Collapse rate and final reward over engine noise x staleness, from a resumable sweep whose
    cell store is kept under ``out/sweeps/`` (:func:`_sweep_dir`).

    ``spec``: ``methods``, ``config`` (flat fields) and per profile ``{"steps", "seeds",
    "noise_std": [...], "staleness": [...]}``. Writes ``phase_diagram.csv``.
    """
    from drpo_sim import stats, sweep

    ph = _profile(spec, profile)
    out = Path(out)
    methods = list(spec["methods"])
    t0 = time.perf_counter()
    doc = {"methods": methods, "seeds": ph["seeds"], **_sections({**spec["config"], "steps": ph["steps"]}),
           "grid": {"noise_std": ph["noise_std"], "staleness": ph["staleness"]}}
    sw = sweep.parse_sweep(doc, source=f"phase diagram ({profile})")
    df = sweep.run_sweep(sw, _sweep_dir(out, f"phase_{profile}"), n_jobs=n_jobs, progress=False)
    summary = stats.summarize_runs(df, group=("method", "noise_std", "staleness"), nan_policy="omit")
    summary = summary.merge(stable_region(summary), on=["method", "noise_std", "staleness"])
    write_csv(summary, out / "phase_diagram.csv")
    files = plots.phase_figure(
        summary, out / "phase_diagram", x="noise_std", y="staleness", methods=methods, formats=formats,
        title=(f"Tabular task, {ph['seeds']} seeds x {ph['steps']} steps per cell: collapse rate and final reward over "
               f"engine logit noise and staleness (optimiser updates);\nwhite frame: the method's stable region "
               f"(no collapse, final reward >= {STABLE_FRACTION:.0%} of its own on-policy value)"),
    )
    return [FigureRecord("phase_diagram", _names(files), "phase_diagram.csv", "sweep.run_sweep", sw.describe(),
                         time.perf_counter() - t0, list(sw.seeds))]


def sensitivity_figures(out: str | Path, spec: dict, profile: str = "quick", formats: Sequence[str] = ("png",), *,
                        n_jobs: int | None = None) -> list[FigureRecord]:
    """DPPO's and DRPO's final reward against their threshold ``delta`` at several noise levels
    (DRPO paper Figures 9 and 10; REFERENCE.md claim 7), from a resumable sweep.

    ``spec``: ``config`` (flat fields), ``noise_std`` (the levels), ``dppo_tv.delta`` and
    ``drpo.delta`` (the thresholds) and per profile ``{"steps", "seeds"}``. Writes
    ``threshold_sensitivity.csv``.
    """
    from drpo_sim import stats, sweep

    se = _profile(spec, profile)
    out = Path(out)
    t0 = time.perf_counter()
    doc = {"methods": ["dppo_tv", "drpo"], "seeds": se["seeds"], **_sections({**spec["config"], "steps": se["steps"]}),
           "grid": {"noise_std": spec["noise_std"], "dppo_tv.delta": spec["dppo_tv.delta"], "drpo.delta": spec["drpo.delta"]}}
    sw = sweep.parse_sweep(doc, source=f"threshold sensitivity ({profile})")
    df = sweep.run_sweep(sw, _sweep_dir(out, f"sensitivity_{profile}"), n_jobs=n_jobs, progress=False)
    summary = stats.summarize_runs(df, group=("method", "noise_std", "param_delta"), nan_policy="omit")
    summary = summary.rename(columns={"param_delta": "delta"}).assign(level=lambda d: [f"noise {v:g}" for v in d["noise_std"]])
    write_csv(summary, out / "threshold_sensitivity.csv")
    files = plots.sensitivity_figure(
        summary, out / "threshold_sensitivity", formats=formats,
        title=(f"Final reward against the trust-region threshold, tabular task, staleness {spec['config'].get('staleness', 0)} "
               f"updates, {se['seeds']} seeds x {se['steps']} steps (DRPO paper Figures 9, 10; REFERENCE.md claim 7)"),
    )
    return [FigureRecord("threshold_sensitivity", _names(files), "threshold_sensitivity.csv", "sweep.run_sweep",
                         sw.describe(), time.perf_counter() - t0, list(sw.seeds))]


def _sweep_dir(out: Path, name: str) -> Path:
    """``out/sweeps/<name>-<code>``: a cell store that resumes an interrupted ``reproduce`` but is
    never reused by different code. ``<code>`` hashes the package's source files, so an edit that
    changes the numbers starts a fresh store (stores of other code versions are removed)."""
    import hashlib
    import shutil

    digest = hashlib.sha256()
    for f in sorted(Path(__file__).parent.rglob("*.py")):
        digest.update(f.relative_to(Path(__file__).parent).as_posix().encode() + b"\0" + f.read_bytes())
    path = out / "sweeps" / f"{name}-{digest.hexdigest()[:12]}"
    for stale in (out / "sweeps").glob(f"{name}-*"):
        if stale != path and stale.is_dir():
            shutil.rmtree(stale)
    return path


def _sections(flat: dict) -> dict:
    """Flat configuration fields as the ``[env]``, ``[offpolicy]``, ``[train]`` tables of a sweep file."""
    from drpo_sim.sim import SimConfig

    where = SimConfig.field_sections()
    doc: dict = {}
    for k, v in flat.items():
        doc.setdefault(where[k], {})[k] = v
    return doc


def stable_region(summary: pd.DataFrame) -> pd.DataFrame:
    """Per method and grid cell: ``stable`` when nothing collapsed and the final-reward IQM keeps at
    least ``STABLE_FRACTION`` of the method's own value at zero noise and zero staleness."""
    ref = summary[(summary["noise_std"] == 0) & (summary["staleness"] == 0)].set_index("method")["final_iqm"]
    keep = summary["method"].map(ref) * STABLE_FRACTION
    stable = (summary["collapse_rate"] == 0) & (summary["final_iqm"] >= keep)
    return summary[["method", "noise_std", "staleness"]].assign(stable=stable.to_numpy())


def write_manifest(out: str | Path, records: list[FigureRecord], *, profile: str, merge: bool = False) -> Path:
    """``MANIFEST.json``: every figure, its script, job and configuration, the package version and git commit.

    With ``merge``, figures already listed in an existing manifest and not among ``records`` are
    kept (one analysis script run on its own updates its own entries); the profile is then
    ``"mixed"`` if the two differ.
    """
    path = Path(out) / "MANIFEST.json"
    entries = [dataclasses.asdict(r) for r in records]
    if merge and path.is_file():
        old = json.loads(path.read_text())
        mine = {e["figure"] for e in entries}
        entries = [e for e in old.get("figures", []) if e["figure"] not in mine] + entries
        if old.get("profile") not in (None, profile):
            profile = "mixed"
    manifest = {
        "package": "drpo_sim",
        "version": __version__,
        "git_commit": _git_commit(),
        "profile": profile,
        "python": platform.python_version(),
        "created_unix": time.time(),
        "figures": entries,
    }
    return write_text(json.dumps(manifest, indent=2) + "\n", path)


def _names(files: list[Path]) -> list[str]:
    return [f.name for f in files]


def _jsonable(obj):
    if isinstance(obj, dict):
        return {k: _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, set, frozenset)):
        items = [_jsonable(v) for v in obj]
        return sorted(items) if isinstance(obj, (set, frozenset)) else items
    return obj


def _git_commit() -> str | None:
    try:
        return subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True, cwd=Path(__file__).parent
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


# ----------------------------------------------------------------------------------------------
# token-log replay


def replay_figures(result, out: str | Path, *, label: str, prefix: str = "", formats: Sequence[str] = ("png",),
                   wall_time_s: float = 0.0) -> list[FigureRecord]:
    """Write a :class:`drpo_sim.analysis.ReplayResult`'s tables and draw its figures into ``out``.

    Figures (each ``{prefix}<name>.<fmt>``): ``mismatch`` (ratio and ``abs(pi - mu)`` against
    ``mu``), ``regions`` (masked / attenuated / corrective fractions and gradient mass kept per
    objective against ``mu``), ``weights`` (weight distributions against ``mu``), ``rare_tokens``
    (``mu <= 0.01`` against all tokens) and, for logs with several steps, ``by_step``. ``label``
    names the log in the titles.
    """
    out = Path(out)
    t0 = time.perf_counter()
    result.write(out, prefix)
    totals = result.totals
    n = totals["tokens"]
    head = f"{label}: {n:,} tokens"
    config = {"source": totals.get("source", {}), "objectives": totals["objectives"], "tokens": n,
              "excluded_tokens": totals["excluded_tokens"], "device": totals["device"]}
    jobs = [
        ("mismatch", "mismatch_by_mu.csv", lambda stem: plots.mismatch_figure(
            result.mismatch, stem, formats=formats,
            title=f"{head}; mean |pi-mu| {totals['abs_shift_mean']:.2g}, max {totals['abs_shift_max']:.2g}")),
        ("regions", "regions_by_mu.csv", lambda stem: plots.regions_figure(result.regions, stem, formats=formats, title=head)),
        ("weights", "regions_by_mu.csv", lambda stem: plots.replay_weights_figure(result.regions, stem, formats=formats, title=head)),
        ("rare_tokens", "objectives.csv", lambda stem: plots.rare_tokens_figure(
            result.objectives, stem, formats=formats,
            title=f"{head}; {totals['rare_share']:.1%} of them have mu <= {totals['rare_threshold']:g}")),
    ]
    if len(result.by_step) > 1:
        jobs.append(("by_step", "by_step.csv", lambda stem: plots.by_step_figure(result.by_step, stem, formats=formats, title=head)))
    records = []
    for name, data, draw in jobs:
        t = time.perf_counter()
        files = draw(out / f"{prefix}{name}")
        records.append(FigureRecord(f"{prefix}{name}", _names(files), f"{prefix}{data}", "analysis.replay", config,
                                    time.perf_counter() - t))
    # the replay itself and the tables are booked on the first figure
    records[0].wall_time_s += wall_time_s + (time.perf_counter() - t0) - sum(r.wall_time_s for r in records)
    return records


def replay_sim_figures(out: str | Path, spec: dict, profile: str = "quick", formats: Sequence[str] = ("png",)) -> list[FigureRecord]:
    """Save a simulator run's token log and replay it like a real one (one code path).

    ``spec``: ``method``, ``config`` (flat fields) and per profile ``{"steps", "seeds"}``. The log
    is written to ``out/token_logs/sim_<method>.parquet`` with
    :class:`~drpo_sim.tokens.TokenLogWriter`, read back with :func:`drpo_sim.logs.open_log` and
    analysed by :func:`drpo_sim.analysis.replay`; figures ``replay_sim_*``.
    """
    from drpo_sim import analysis, logs
    from drpo_sim.sim import SimConfig, simulate
    from drpo_sim.tokens import TokenLogWriter

    run = _profile(spec, profile)
    out = Path(out)
    t0 = time.perf_counter()
    method = spec["method"]
    cfg = SimConfig.from_flat({**spec["config"], "steps": run["steps"]})
    seeds = list(range(run["seeds"]))
    log = out / "token_logs" / f"sim_{method}.parquet"
    meta = {"config": cfg.flat(), "method": method, "seeds": seeds}
    with TokenLogWriter(log, metadata=meta) as writer:
        simulate(cfg, [method], seeds, token_sink_for=lambda m: writer.write)
    result = analysis.replay_log(logs.open_log(log, fmt="tokens"))
    result.totals["source"]["simulation"] = meta
    o = cfg.offpolicy
    label = (f"simulator, {method} trained with a {o.precision} engine, logit noise {o.noise_std:g}, staleness "
             f"{o.staleness} ({len(seeds)} seeds)")
    records = replay_figures(result, out, label=label, prefix="replay_sim_", formats=formats,
                             wall_time_s=time.perf_counter() - t0)
    for r in records:
        r.seeds = seeds
    return records


def lm_figures(out: str | Path, spec: dict, profile: str = "quick", formats: Sequence[str] = ("png",)) -> list[FigureRecord]:
    """The tiny transformer lab (:func:`drpo_sim.lm.experiment.compare`) and the replay of its logs.

    ``spec``: ``objectives``, ``precisions``, per profile ``{"seeds", "steps"}``,
    ``replay_objective`` and ``replay_precisions``. After the comparison (figures
    ``lm_reward``, ``lm_mismatch``), the token logs of seed 0 of that objective with each of those
    rollout precisions are replayed, first mini-batch update of each step only (``updates=[0]``:
    ``logp`` is then the fp32 trainer at rollout time, so the ratio is the real
    training-inference mismatch of the reduced-precision engine, as in a NeMo RL or slime dump);
    figures ``replay_lm_<precision>_*``.
    """
    from drpo_sim import analysis, logs
    from drpo_sim.lm import experiment

    run = _profile(spec, profile)
    out = Path(out)
    records = experiment.compare(spec["objectives"], spec["precisions"], seeds=run["seeds"], steps=run["steps"],
                                 profile=profile, out=out, formats=formats)
    objective = spec["replay_objective"]
    for precision in spec["replay_precisions"]:
        t0 = time.perf_counter()
        log = out / "lm_tokens" / f"{objective}_{precision}_seed0.parquet"
        result = analysis.replay_log(logs.open_log(log, fmt="tokens"), updates=[0])
        label = f"tiny LM lab, {objective} with {precision} rollouts (fp32 trainer), first update of each step"
        records += replay_figures(result, out, label=label, prefix=f"replay_lm_{precision}_", formats=formats,
                                  wall_time_s=time.perf_counter() - t0)
    return records


# ----------------------------------------------------------------------------------------------
# panels: several settings x several objectives (DRPO paper Figures 3, 4, 5, 11; the anchor question)


def _simulate_variant(flat: dict, method: str, params: dict, seeds: list[int], setting: str, variant: str) -> pd.DataFrame:
    from drpo_sim.sim import SimConfig, simulate

    df = simulate(SimConfig.from_flat(flat), [method], seeds, method_params={method: params})
    return df.assign(setting=setting, variant=variant)


def panel_experiment(spec: dict, profile: str = "quick", *, n_jobs: int | None = None) -> pd.DataFrame:
    """Train every variant in every setting on the same seeds; one tidy table.

    ``spec``: ``config`` (flat fields shared by all), ``settings`` (``{name: {"title": ...,
    **fields}}``: what each setting changes), ``variants`` (``{label: [method, {params}]}``: an
    objective with its parameters, so one objective can appear with two parameter sets) and per
    profile ``{"steps", "seeds"}``. Runs are independent simulations spread over ``n_jobs``
    joblib processes (default: the usable CPUs); columns ``setting`` and ``variant`` are added to
    :func:`drpo_sim.sim.simulate`'s table.
    """
    from joblib import Parallel, cpu_count, delayed

    run = _profile(spec, profile)
    seeds = list(range(run["seeds"]))
    tasks = []
    for setting, fields in spec["settings"].items():
        flat = {**spec["config"], **{k: v for k, v in fields.items() if k != "title"}, "steps": run["steps"]}
        for variant, (method, params) in spec["variants"].items():
            tasks.append((flat, method, dict(params), seeds, setting, variant))
    jobs = min(n_jobs or cpu_count(only_physical_cores=False), len(tasks))
    frames = Parallel(n_jobs=jobs)(delayed(_simulate_variant)(*t) for t in tasks)
    return pd.concat(frames, ignore_index=True)


def panel_summary(df: pd.DataFrame) -> pd.DataFrame:
    """Per setting and variant: :func:`drpo_sim.stats.summarize_runs` (final reward, AUC, collapse
    rate, with intervals); the mismatch ``mean abs(pi - mu)`` at the last step, IQM over seeds
    with its bootstrap interval (``shift_final_iqm, shift_final_low, shift_final_high``); and the
    seed means of the mismatch's peak (``shift_peak``), the reward's peak (``reward_peak``) and
    the final reward as a share of each seed's own peak (``kept_of_peak``)."""
    from drpo_sim import stats

    group = ["setting", "variant"]
    summary = stats.summarize_runs(df, group=group, nan_policy="omit")
    last = df[df["step"] == df["step"].max()].set_index([*group, "seed"])
    per_seed = df.groupby([*group, "seed"]).agg(shift_peak=("shift_mean", "max"), reward_peak=("expected_reward", "max"))
    per_seed["shift_final"] = last["shift_mean"]
    per_seed["kept_of_peak"] = last["expected_reward"] / per_seed["reward_peak"]
    rows = []
    for keys, d in per_seed.groupby(level=group, sort=True):
        x = d["shift_final"].to_numpy()
        x = x[np.isfinite(x)]
        point, low, high = stats.bootstrap_ci(x) if x.size else (np.nan, np.nan, np.nan)
        rows.append({**dict(zip(group, keys)), "shift_final_iqm": point, "shift_final_low": low, "shift_final_high": high,
                     **d[["shift_peak", "reward_peak", "kept_of_peak"]].mean().to_dict()})
    method = {v: m for v, m in df[["variant", "method"]].drop_duplicates().itertuples(index=False)}
    return summary.merge(pd.DataFrame(rows), on=group).assign(method=lambda d: d["variant"].map(method))


PANEL_METRICS = (("expected_reward", "expected reward of pi", False), ("shift_mean", "mean abs(pi - mu)", True))


def panel_figures(out: str | Path, spec: dict, profile: str = "quick", formats: Sequence[str] = ("png",), *,
                  n_jobs: int | None = None) -> list[FigureRecord]:
    """Run :func:`panel_experiment` and draw one figure per entry of ``spec["figures"]``.

    ``spec["name"]`` names the data files: ``<name>.csv`` (IQM bands per setting, variant,
    metric and step) and ``<name>_summary.csv`` (:func:`panel_summary`). ``spec["figures"]``
    maps a figure name to ``{"title", "variants": [labels]}`` and optionally ``"settings":
    [names]`` (default: all): each figure shows those variants, one column per setting, rows
    reward and mismatch (:data:`PANEL_METRICS`).
    """
    from drpo_sim import stats

    run = _profile(spec, profile)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    df = panel_experiment(spec, profile, n_jobs=n_jobs)
    bands = pd.concat([stats.curve_bands(df, m, group=("setting", "variant")).assign(metric=m) for m, _, _ in PANEL_METRICS],
                      ignore_index=True)
    name = spec["name"]
    write_csv(bands, out / f"{name}.csv")
    write_csv(panel_summary(df), out / f"{name}_summary.csv")
    compute = time.perf_counter() - t0
    settings = {k: v.get("title", k) for k, v in spec["settings"].items()}
    methods = {label: m for label, (m, _) in spec["variants"].items()}
    seeds = list(range(run["seeds"]))
    config = {"config": spec["config"], "settings": spec["settings"], "variants": spec["variants"],
              "methods": sorted(set(methods.values())), **run}
    records = []
    for fig, what in spec["figures"].items():
        t = time.perf_counter()
        files = plots.panels_figure(
            bands[bands["variant"].isin(what["variants"])], out / fig,
            settings={k: settings[k] for k in what.get("settings", settings)}, variants=what["variants"],
            methods=methods, metrics=PANEL_METRICS, formats=formats,
            title=f"{what['title']} ({run['seeds']} seeds x {run['steps']} steps)",
        )
        records.append(FigureRecord(fig, _names(files), f"{name}.csv", "figures.panel_experiment",
                                    {**config, "shown": what["variants"]}, time.perf_counter() - t, seeds))
    records[0].wall_time_s += compute
    return records
