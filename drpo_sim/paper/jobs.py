"""Figure jobs: run a spec with the library, write its tables as CSV, draw it, record it.

Each job takes a spec of :mod:`drpo_sim.paper.specs`, a profile, the image formats and, where it
trains anything, a :class:`~drpo_sim.run.executor.Runner`, and returns one
:class:`~drpo_sim.paper.manifest.FigureRecord` per figure. Every simulation runs as cells
(:mod:`drpo_sim.run.cells`) through the runner, so an interrupted ``drpo-sim reproduce`` resumes
from its cell store; the statistics come from :mod:`drpo_sim.stats` and
:mod:`drpo_sim.summaries`, the drawing from :mod:`drpo_sim.plots`.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from drpo_sim import analysis, dynamics, geometry, gradients, logs, objectives, plots, stats, summaries
from drpo_sim._io import write_csv
from drpo_sim.arena import calibration
from drpo_sim.arena.train import COLLAPSE, GRAD_SHARES
from drpo_sim.paper.manifest import FigureRecord
from drpo_sim.paper.specs import (
    ArenaComparisonSpec,
    ArenaSetting,
    ArenaSpec,
    ConvergenceSpec,
    FlowSpec,
    GeometrySpec,
    GradientArenaProfile,
    GradientSpec,
    LabSpec,
    PanelSpec,
    PhaseSpec,
    ReplaySpec,
    SensitivitySpec,
    TuningSpec,
)
from drpo_sim.results import write_results
from drpo_sim.run import lab, sweep
from drpo_sim.run.cells import Cell, arena_cell, sim_cell
from drpo_sim.run.executor import Runner
from drpo_sim.sim import SimConfig, simulate, with_param_columns
from drpo_sim.tokens import TokenLogWriter

Formats = Sequence[str]


def _names(files: list[Path]) -> list[str]:
    return [f.name for f in files]


def _jsonable(obj):
    if isinstance(obj, dict):
        return {k: _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, set, frozenset)):
        items = [_jsonable(v) for v in obj]
        return sorted(items) if isinstance(obj, (set, frozenset)) else items
    return obj


# ----------------------------------------------------------------------------------------------
# geometry and flows (no training)


def geometry_figures(
    out: str | Path, spec: GeometrySpec | None = None, formats: Formats = ("png",)
) -> list[FigureRecord]:
    """The trust-region geometry figures (DRPO paper's Table 1 drawn out, Figure 1, delta range)."""
    spec = spec or GeometrySpec(geometry.GeometryConfig())
    cfg = spec.config
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    labels = {name: str(obj) for name, obj in cfg.build().items()}
    config = _jsonable(dataclasses.asdict(cfg))
    records = []

    t0 = time.perf_counter()
    curves = geometry.weight_curves(cfg)
    write_csv(curves, out / spec.weight_file)
    main = [n for n, _ in cfg.objectives if n not in cfg.ablations and n not in cfg.more]
    files = plots.weight_curves_figure(
        curves, out / spec.weight_figure, names=main, formats=formats,
        title="Gradient weight w = (dJ/dlogp) / (A r) against pi at fixed mu, A = +-1 (DRPO paper, Table 1); "
        "lines leaving the frame keep going",
    )
    records.append(FigureRecord(spec.weight_figure, _names(files), spec.weight_file, "geometry.weight_curves", config,
                                time.perf_counter() - t0))

    t0 = time.perf_counter()
    ablations = ["drpo"] + [n for n, _ in cfg.objectives if n in cfg.ablations]
    files = plots.weight_curves_figure(
        curves, out / spec.ablations_figure, names=ablations, formats=formats,
        title="DRPO and its ablations (no abs(A) factor; KL, TV, K3 penalties of the sampled token), A = +-1",
    )
    records.append(FigureRecord(spec.ablations_figure, _names(files), spec.weight_file, "geometry.weight_curves",
                                config, time.perf_counter() - t0))

    t0 = time.perf_counter()
    more = ["grpo", "dppo_tv"] + [n for n, _ in cfg.objectives if n in cfg.more]
    files = plots.weight_curves_figure(
        curves, out / spec.more_figure, names=more, formats=formats,
        title="Objectives that read more than one token, drawn for one token: pi_old = mu (no engine gap), "
        "a sequence of one token, Top-K at K = 1 (beside GRPO and DPPO-TV), A = +-1",
    )
    records.append(FigureRecord(spec.more_figure, _names(files), spec.weight_file, "geometry.weight_curves",
                                config, time.perf_counter() - t0))

    t0 = time.perf_counter()
    plane = geometry.weight_plane(cfg)
    write_csv(plane, out / spec.plane_file)
    files = plots.weight_plane_figure(plane, out / spec.plane_figure, labels=labels, formats=formats)
    records.append(FigureRecord(spec.plane_figure, _names(files), spec.plane_file, "geometry.weight_plane", config,
                                time.perf_counter() - t0))

    t0 = time.perf_counter()
    ranges, range_curves = geometry.drpo_weight_range(cfg)
    write_csv(ranges, out / spec.delta_range_file)
    write_csv(range_curves, out / spec.delta_curves_file)
    files = plots.drpo_range_figure(ranges, range_curves, out / spec.delta_range_figure, formats=formats)
    records.append(
        FigureRecord(
            spec.delta_range_figure,
            _names(files),
            spec.delta_range_file,
            "geometry.drpo_weight_range",
            config,
            time.perf_counter() - t0,
        )
    )

    t0 = time.perf_counter()
    gap_cfg = spec.gap_config or geometry.GapConfig()
    gap = geometry.gap_curves(gap_cfg)
    write_csv(gap, out / spec.gap_file)
    files = plots.gap_weight_figure(gap, out / spec.gap_figure, formats=formats)
    gap_config = {**_jsonable(dataclasses.asdict(gap_cfg)), "mus": [gap_cfg.mu],
                  "objectives": list(dict.fromkeys(gap["objective"]))}
    records.append(FigureRecord(spec.gap_figure, _names(files), spec.gap_file, "geometry.gap_curves",
                                gap_config, time.perf_counter() - t0))
    return records


def gradient_figures(out: str | Path, spec: GradientSpec, profile: str,
                     formats: Formats = ("png",)) -> list[FigureRecord]:
    """Every objective's sampled gradient against the exact one over mismatch size and staleness, in
    each world of the profile (:func:`drpo_sim.gradients.gradient_sweep`); writes
    ``<stem>.csv``, the figure ``<stem>`` and ``<stem>_equivalence.csv``, the pre-registered test of
    ``spec.question`` against ``pg_is`` (:func:`drpo_sim.gradients.equivalence`)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    methods = gradients.SWEEP_OBJECTIVES if spec.methods is None else spec.methods
    records = []
    for env, world in spec.profile(profile).items():
        t0 = time.perf_counter()
        if isinstance(world, GradientArenaProfile):
            records.append(_arena_gradient_figure(out, spec, env, world, methods, formats))
            continue
        old, rewards = gradients.world(env, world.vocab)
        table = gradients.gradient_sweep(old, rewards, methods=methods, noise_stds=world.noise,
                                         staleness=world.staleness, step_kl=spec.step_kl,
                                         n_samples=world.samples, n_batches=world.batches,
                                         rng=np.random.default_rng(spec.seed), reference="pg_is")
        table.insert(0, "env", env)
        stem = spec.stem(env)
        write_csv(table, out / f"{stem}.csv")
        write_csv(gradients.equivalence(table, spec.question), out / f"{stem}_equivalence.csv")
        files = plots.gradient_sweep_figure(table, out / stem, question=spec.question, formats=formats)
        noise, k = spec.table_at  # every objective in one cell, on the sweep's engine and batches
        every = gradients.gradient_sweep(old, rewards, methods=spec.every_objective(), noise_stds=[noise],
                                         staleness=[k], step_kl=spec.step_kl, n_samples=world.samples,
                                         n_batches=world.batches, rng=np.random.default_rng(spec.seed),
                                         reference="pg_is")
        every.insert(0, "env", env)
        write_csv(every, out / f"{stem}_all_objectives.csv")
        config = {"env": env, "vocab_size": world.vocab, "noise_std": list(world.noise),
                  "staleness": list(world.staleness), "group_size": world.samples, "batches": world.batches,
                  "step_kl": spec.step_kl, "seed": spec.seed, "methods": list(methods),
                  "objectives_of": {k: [n, dict(p)] for k, (n, p) in methods.items()},
                  "equivalence_margin": gradients.EQUIVALENCE_MARGIN}
        records.append(FigureRecord(stem, _names(files), f"{stem}.csv", "gradients.gradient_sweep", _jsonable(config),
                                    time.perf_counter() - t0, [spec.seed]))
    return records


def _arena_gradient_figure(out: Path, spec: GradientSpec, env: str, world: GradientArenaProfile, methods,
                           formats: Formats) -> FigureRecord:
    """The small arena's sweep over engine precisions and staleness (:func:`gradients.arena_gradient_sweep`):
    its table, figure and equivalence verdicts, as :func:`gradient_figures` writes the other worlds'."""
    t0 = time.perf_counter()
    table = gradients.arena_gradient_sweep(world.precisions, methods=methods, n_prompts=world.prompts,
                                           staleness=world.staleness, step_kl=spec.step_kl, n_samples=world.samples,
                                           n_batches=world.batches, rng=np.random.default_rng(spec.seed),
                                           reference="pg_is")
    table.insert(0, "env", env)
    stem = spec.stem(env)
    write_csv(table, out / f"{stem}.csv")
    write_csv(gradients.equivalence(table, spec.question), out / f"{stem}_equivalence.csv")
    files = plots.gradient_sweep_figure(table, out / stem, question=spec.question, x_column="precision",
                                        formats=formats)
    config = {"env": env, "precisions": list(world.precisions), "staleness": list(world.staleness),
              "group_size": world.samples, "batches": world.batches, "n_prompts": world.prompts,
              "base": _jsonable(dataclasses.asdict(gradients.ARENA_BASE)), "step_kl": spec.step_kl,
              "seed": spec.seed, "methods": list(methods), "equivalence_margin": gradients.EQUIVALENCE_MARGIN}
    return FigureRecord(stem, _names(files), f"{stem}.csv", "gradients.arena_gradient_sweep", config,
                        time.perf_counter() - t0, [spec.seed])


def flow_figures(out: str | Path, spec: FlowSpec, formats: Formats = ("png",)) -> list[FigureRecord]:
    """The frozen-``mu`` rest-point table and the flow figure (the per-token maximisers)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    cfg = dynamics.FlowConfig()
    table = dynamics.rest_point_table(cfg=cfg)
    write_csv(table, out / spec.rest_points_file)
    objs = [(v.method, dict(v.params)) for v in spec.objectives]
    field, rest = dynamics.flow_field(objs, cfg=cfg)
    write_csv(rest, out / spec.rest_curves_file)
    files = plots.flow_figure(
        field,
        rest,
        out / spec.figure,
        formats=formats,
        title="Where pi comes to rest when mu is frozen (exact expected update of one token; colour: direction and "
              "speed of pi)",
    )
    config = {"flow": dataclasses.asdict(cfg), "objectives": [f"{n}{p}" for n, p in objs]}
    return [FigureRecord(spec.figure, _names(files), spec.rest_points_file, "dynamics.rest_point_table", config,
                         time.perf_counter() - t0)]


# ----------------------------------------------------------------------------------------------
# simulations


def _full_config(flat: dict) -> dict:
    return SimConfig.from_flat(flat).flat()


def _convergence_config(spec: ConvergenceSpec, profile: str) -> SimConfig:
    return SimConfig.from_flat({**spec.config, "steps": spec.profile(profile).steps})


def convergence_cells(spec: ConvergenceSpec, profile: str) -> list[Cell]:
    """One ``sim`` cell per method, in the spec's one setting."""
    run = spec.profile(profile)
    cfg = _convergence_config(spec, profile).flat()
    return [sim_cell(cfg, m, objectives.get(m).params, run.seed_list) for m in spec.methods]


def convergence_figures(out: str | Path, spec: ConvergenceSpec, profile: str, runner: Runner,
                        formats: Formats = ("png",)) -> list[FigureRecord]:
    """Reward, mismatch and masked share against step with 95% bootstrap bands, one setting.

    Writes ``spec.data_file`` (bands) and ``spec.summary_file``
    (:func:`drpo_sim.stats.summarize_runs` against ``pg_is``).
    """
    run = spec.profile(profile)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    cfg = _convergence_config(spec, profile)
    cells = convergence_cells(spec, profile)
    df = with_param_columns(pd.concat(runner.run(cells, desc=spec.name), ignore_index=True))
    panels = {
        "expected_reward": "expected reward of pi",
        "shift_mean": "mean abs(pi - mu), sampled tokens",
        "masked_frac": "share of sampled tokens masked (w = 0)",
    }
    bands = {m: stats.curve_bands(df, m) for m in panels}
    write_csv(pd.concat([b.assign(metric=m) for m, b in bands.items()], ignore_index=True), out / spec.data_file)
    summary = stats.summarize_runs(df, reference="pg_is", nan_policy="omit")
    write_csv(summary, out / spec.summary_file)
    write_csv(summaries.seed_table(df, ["method"], at_end=("shift_mean",)), out / spec.seeds_file)
    o, e = cfg.offpolicy, cfg.env
    title = (
        f"Tabular task ({e.n_prompts} prompts x {e.horizon} tokens, V = {e.vocab_size}, prefix reward): "
        f"{o.precision} engine "
        f"+ logit noise {o.noise_std:g},\nrollouts {o.staleness} optimiser updates stale, {o.updates_per_batch} "
        "mini-batch "
        "updates per batch"
    )
    files = plots.curves_figure(
        [(label, bands[m]) for m, label in panels.items()],
        out / spec.name, title=title, formats=formats, logy=[False, True, False],
    )
    config = {**cfg.flat(), "methods": list(spec.methods)}
    return [FigureRecord(spec.name, _names(files), spec.data_file, "sim.simulate", config, time.perf_counter() - t0,
                         run.seed_list)]


def _sweep_spec(doc: dict, source: str) -> sweep.SweepSpec:
    """A sweep over flat configuration fields (``doc["config"]``) and a grid."""
    where = SimConfig.field_sections()
    sections: dict = {}
    for k, v in doc.pop("config").items():
        sections.setdefault(where[k], {})[k] = v
    return sweep.parse_sweep({**doc, **sections}, source=source)


def _run_sweep(sw: sweep.SweepSpec, runner: Runner, desc: str) -> pd.DataFrame:
    cells = sw.cells()
    return sweep.table(cells, runner.run(cells, desc=desc))


def phase_sweep(spec: PhaseSpec, profile: str) -> sweep.SweepSpec:
    """The phase diagram's grid: engine noise x staleness, every method."""
    ph = spec.profile(profile)
    return _sweep_spec({"methods": list(spec.methods), "seeds": ph.seeds, "config": {**spec.config, "steps": ph.steps},
                        "grid": {"noise_std": list(ph.noise_std), "staleness": list(ph.staleness)}},
                       source=f"phase diagram ({profile})")


def phase_figures(out: str | Path, spec: PhaseSpec, profile: str, runner: Runner,
                  formats: Formats = ("png",)) -> list[FigureRecord]:
    """Collapse rate and final reward over engine noise x staleness; writes ``spec.data_file``."""
    ph = spec.profile(profile)
    out = Path(out)
    t0 = time.perf_counter()
    sw = phase_sweep(spec, profile)
    df = _run_sweep(sw, runner, spec.name)
    summary = stats.summarize_runs(df, group=("method", "noise_std", "staleness"), nan_policy="omit")
    summary = summary.merge(summaries.stable_region(summary), on=["method", "noise_std", "staleness"])
    write_csv(summary, out / spec.data_file)
    files = plots.phase_figure(
        summary, out / spec.name, x="noise_std", y="staleness", methods=list(spec.methods), formats=formats,
        title=(f"Tabular task, {ph.seeds} seeds x {ph.steps} steps per cell: collapse rate and final reward over "
               f"engine logit noise and staleness (optimiser updates);\nwhite frame: the method's stable region "
               f"(no collapse, final reward >= {summaries.STABLE_FRACTION:.0%} of its own on-policy value)"),
    )
    return [FigureRecord(spec.name, _names(files), spec.data_file, "sweep.run_sweep", sw.describe(),
                         time.perf_counter() - t0, list(sw.seeds))]


def sensitivity_sweep(spec: SensitivitySpec, profile: str) -> sweep.SweepSpec:
    """The threshold-sensitivity grid: engine noise x each method's thresholds."""
    se = spec.profile(profile)
    grid = {"noise_std": list(spec.noise_std), **{f"{m}.delta": list(d) for m, d in spec.deltas.items()}}
    return _sweep_spec({"methods": list(spec.deltas), "seeds": se.seeds, "config": {**spec.config, "steps": se.steps},
                        "grid": grid}, source=f"threshold sensitivity ({profile})")


def sensitivity_figures(out: str | Path, spec: SensitivitySpec, profile: str, runner: Runner,
                        formats: Formats = ("png",)) -> list[FigureRecord]:
    """Each method's final reward against its threshold ``delta`` at several noise levels (DRPO
    paper Figures 9 and 10; claim 7); writes ``spec.data_file``."""
    se = spec.profile(profile)
    out = Path(out)
    t0 = time.perf_counter()
    sw = sensitivity_sweep(spec, profile)
    df = _run_sweep(sw, runner, spec.name)
    summary = stats.summarize_runs(df, group=("method", "noise_std", "param_delta"), nan_policy="omit")
    summary = summary.rename(columns={"param_delta": "delta"}).assign(
        level=lambda d: [f"noise {v:g}" for v in d["noise_std"]]
    )
    write_csv(summary, out / spec.data_file)
    seeds = summaries.seed_table(df, ["method", "noise_std", "param_delta"]).rename(columns={"param_delta": "delta"})
    write_csv(seeds, out / spec.seeds_file)
    files = plots.sensitivity_figure(
        summary, out / spec.name, formats=formats,
        title=(f"Final reward against the trust-region threshold, tabular task, staleness "
               f"{spec.config.get('staleness', 0)} updates, {se.seeds} seeds x {se.steps} steps (DRPO paper Figures 9, "
               "10; claim 7)"),
    )
    return [FigureRecord(spec.name, _names(files), spec.data_file, "sweep.run_sweep", sw.describe(),
                         time.perf_counter() - t0, list(sw.seeds))]


def panel_cells(spec: PanelSpec | TuningSpec, profile: str) -> list[Cell]:
    """One ``sim`` cell per setting and variant, all on the profile's seeds."""
    run = spec.profile(profile)
    cells = []
    for setting in spec.settings:
        cfg = _full_config({**spec.config, **setting.fields, "steps": run.steps})
        for v in spec.variants:
            params = objectives.get(v.method, **v.params).params
            cells.append(sim_cell(cfg, v.method, params, run.seed_list, setting=setting.name, variant=v.label))
    return cells


def panel_table(spec: PanelSpec | TuningSpec, profile: str, runner: Runner) -> pd.DataFrame:
    """Every variant trained in every setting on the same seeds; one tidy table with columns
    ``setting`` and ``variant`` added to :func:`drpo_sim.sim.simulate`'s."""
    cells = panel_cells(spec, profile)
    tables = runner.run(cells, desc=spec.name)
    return pd.concat(
        [t.assign(setting=c.labels["setting"], variant=c.labels["variant"]) for c, t in zip(cells, tables)],
        ignore_index=True,
    )


PANEL_METRICS = (("expected_reward", "expected reward of pi", False), ("shift_mean", "mean abs(pi - mu)", True))


def panel_figures(out: str | Path, spec: PanelSpec, profile: str, runner: Runner,
                  formats: Formats = ("png",)) -> list[FigureRecord]:
    """Run :func:`panel_table` and draw one figure per :class:`~drpo_sim.paper.specs.PanelFigure`.

    Writes ``spec.data_file`` (IQM bands per setting, variant, metric and step) and
    ``spec.summary_file`` (:func:`drpo_sim.summaries.panel_summary`); each figure shows its
    variants, one column per setting, rows reward and mismatch (:data:`PANEL_METRICS`).
    """
    run = spec.profile(profile)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    df = panel_table(spec, profile, runner)
    bands = pd.concat([stats.curve_bands(df, m, group=("setting", "variant")).assign(metric=m)
                       for m, _, _ in PANEL_METRICS], ignore_index=True)
    write_csv(bands, out / spec.data_file)
    write_csv(summaries.panel_summary(df), out / spec.summary_file)
    write_csv(summaries.seed_table(df, ["setting", "variant", "method"], at_end=("shift_mean",)), out / spec.seeds_file)
    compute = time.perf_counter() - t0
    titles = {s.name: s.title for s in spec.settings}
    methods = {v.label: v.method for v in spec.variants}
    config = spec.describe(run)
    records = []
    for fig in spec.figures:
        t = time.perf_counter()
        files = plots.panels_figure(
            bands[bands["variant"].isin(fig.variants)], out / fig.name,
            settings={k: titles[k] for k in (fig.settings or titles)}, variants=list(fig.variants),
            methods=methods, metrics=PANEL_METRICS, formats=formats,
            title=f"{fig.title} ({run.seeds} seeds x {run.steps} steps)",
        )
        records.append(FigureRecord(fig.name, _names(files), spec.data_file, "paper.jobs.panel_table",
                                    {**config, "shown": list(fig.variants)}, time.perf_counter() - t, run.seed_list))
    records[0].wall_time_s += compute
    return records


def tuning_figures(out: str | Path, spec: TuningSpec, profile: str, runner: Runner,
                   formats: Formats = ("png",)) -> list[FigureRecord]:
    """A tuning run: every variant (one method at several ``delta``) in every setting, on the
    profile's seeds (tuning seeds, apart from any comparison's); writes ``spec.summary_file``
    (:func:`drpo_sim.summaries.panel_summary` with the variant's ``delta``) and ``spec.seeds_file``,
    and one figure, ``spec.name``: final reward against ``delta`` per method, one line per setting."""
    run = spec.profile(profile)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    df = panel_table(spec, profile, runner)
    delta = {v.label: v.params["delta"] for v in spec.variants}
    summary = summaries.panel_summary(df).assign(delta=lambda d: d["variant"].map(delta))
    write_csv(summary, out / spec.summary_file)
    write_csv(summaries.seed_table(df, ["setting", "variant", "method"], at_end=("shift_mean",)).assign(
        delta=lambda d: d["variant"].map(delta)), out / spec.seeds_file)
    titles = {s.name: s.title for s in spec.settings}
    files = plots.sensitivity_figure(
        summary.assign(level=summary["setting"].map(titles)), out / spec.figure, formats=formats, legend="setting",
        title=f"Tuning each penalty's delta on its own seeds ({run.seeds} seeds from {run.first_seed} x {run.steps} "
              "steps, tabular task; claim 10)")
    return [FigureRecord(spec.figure, _names(files), spec.summary_file, "paper.jobs.panel_table", spec.describe(run),
                         time.perf_counter() - t0, run.seed_list)]


# ----------------------------------------------------------------------------------------------
# token-log replays


def replay_figures(result: analysis.ReplayResult, out: str | Path, *, label: str, prefix: str = "",
                   formats: Formats = ("png",), wall_time_s: float = 0.0) -> list[FigureRecord]:
    """Write a :class:`drpo_sim.analysis.ReplayResult`'s tables and draw its figures into ``out``.

    Figures (each ``{prefix}<name>.<fmt>``): ``mismatch`` (ratio and ``abs(pi - mu)`` against
    ``mu``), ``regions`` (masked / attenuated / corrective fractions and gradient mass kept per
    objective against ``mu``), ``weights`` (weight distributions against ``mu``), ``rare_tokens``
    (``mu <= 0.01`` against all tokens) and, for logs with several steps, ``by_step``. ``label``
    names the log in the titles. A mismatch-only result (a log without advantages) draws
    ``mismatch`` and ``by_step`` only.
    """
    out = Path(out)
    t0 = time.perf_counter()
    result.write(out, prefix)
    totals = result.totals
    n = totals["tokens"]
    head = f"{label}: {n:,} tokens" + ("; mismatch only (no advantages in the log)" if result.mismatch_only else "")
    config = {"source": totals.get("source", {}), "objectives": totals["objectives"], "tokens": n,
              "excluded_tokens": totals["excluded_tokens"], "device": totals["device"]}
    jobs = [
        ("mismatch", "mismatch_by_mu.csv", lambda stem: plots.mismatch_figure(
            result.mismatch, stem, formats=formats,
            title=f"{head}; mean |pi-mu| {totals['abs_shift_mean']:.2g}, max {totals['abs_shift_max']:.2g}")),
    ]
    if not result.mismatch_only:  # the objectives' figures need advantages
        jobs += [
            ("regions", "regions_by_mu.csv", lambda stem: plots.regions_figure(result.regions, stem, formats=formats,
                                                                               title=head)),
            ("weights", "regions_by_mu.csv", lambda stem: plots.replay_weights_figure(
                result.regions, stem, formats=formats, title=head)),
            ("rare_tokens", "objectives.csv", lambda stem: plots.rare_tokens_figure(
                result.objectives, stem, formats=formats,
                title=f"{head}; {totals['rare_share']:.1%} of them have mu <= {totals['rare_threshold']:g}")),
        ]
    if len(result.by_step) > 1:
        jobs.append(("by_step", "by_step.csv", lambda stem: plots.by_step_figure(result.by_step, stem, formats=formats,
                                                                                 title=head)))
    records = []
    for name, data, draw in jobs:
        t = time.perf_counter()
        files = draw(out / f"{prefix}{name}")
        records.append(FigureRecord(f"{prefix}{name}", _names(files), f"{prefix}{data}", "analysis.replay", config,
                                    time.perf_counter() - t))
    # the replay itself and the tables are booked on the first figure
    records[0].wall_time_s += wall_time_s + (time.perf_counter() - t0) - sum(r.wall_time_s for r in records)
    return records


def replay_sim_figures(
    out: str | Path, spec: ReplaySpec, profile: str, formats: Formats = ("png",)
) -> list[FigureRecord]:
    """Save a simulator run's token log and replay it like a real one (one code path).

    The log is written to ``out/token_logs/sim_<method>.parquet`` with
    :class:`~drpo_sim.tokens.TokenLogWriter`, read back with :func:`drpo_sim.logs.open_log` and
    analysed by :func:`drpo_sim.analysis.replay`; figures ``<spec.prefix>*``.
    """
    run = spec.profile(profile)
    out = Path(out)
    t0 = time.perf_counter()
    cfg = SimConfig.from_flat({**spec.config, "steps": run.steps})
    seeds = run.seed_list
    log = out / "token_logs" / f"sim_{spec.method}.parquet"
    meta = {"config": cfg.flat(), "method": spec.method, "seeds": seeds}
    with TokenLogWriter(log, metadata=meta) as writer:
        simulate(cfg, [spec.method], seeds, token_sink_for=lambda m: writer.write)
    result = analysis.replay_log(logs.open_log(log, fmt="tokens"))
    result.totals["source"]["simulation"] = meta
    o = cfg.offpolicy
    label = (f"simulator, {spec.method} trained with a {o.precision} engine, logit noise {o.noise_std:g}, staleness "
             f"{o.staleness} ({len(seeds)} seeds)")
    records = replay_figures(result, out, label=label, prefix=spec.prefix, formats=formats,
                             wall_time_s=time.perf_counter() - t0)
    for r in records:
        r.seeds = seeds
    return records


# ----------------------------------------------------------------------------------------------
# the tiny transformer lab


def lab_figures(out: str | Path, comparison: lab.Comparison, formats: Formats = ("png",), *,
                wall_time_s: float = 0.0, summary_file: str = "lm_summary.csv") -> list[FigureRecord]:
    """The lab's summary (:func:`drpo_sim.summaries.lab_summary`, to ``summary_file``) and figures:
    ``lm_reward`` (one panel per precision, the held-out reward of each objective against the
    step, IQM over seeds with a 95% bootstrap band) and, when a reduced precision is among them,
    ``lm_mismatch`` (the rollout-time ``mean abs(pi - mu)`` per reduced precision)."""
    out = Path(out)
    t0 = time.perf_counter()
    df, config, seeds = comparison.table, comparison.config, comparison.seeds
    pcfg, pre = comparison.checkpoint.config, comparison.checkpoint.metrics
    precisions = config["precisions"]
    steps = int(df["step"].max())
    write_csv(summaries.lab_summary(df), out / summary_file)

    # step 0: the pretrained model, the common starting point of every curve
    start = df[df["step"] == 1].assign(step=0, eval_reward=lambda d: d["initial_eval_reward"])
    bands = stats.curve_bands(pd.concat([start, df], ignore_index=True), "eval_reward", group=("precision", "method"))
    write_csv(bands, out / "lm_reward.csv")
    labcfg = config["lab"]
    task = (f"tiny transformer ({pcfg.n_layers} layers, d_model {pcfg.d_model}, {pcfg.n_heads} heads) sorting "
            f"{pcfg.n_digits} digits, pretrained {pcfg.steps} steps (held-out reward {pre['eval_reward']:.2f})")
    setup = (
        f"{labcfg['prompts_per_step']} prompts x G = {labcfg['group_size']}, {labcfg['updates_per_batch']} "
        f"mini-batch updates anchored to the engine's mu, AdamW lr {labcfg['lr']:g}; {len(seeds)} seeds x {steps} steps"
    )
    panels = [(f"{p} engine: held-out reward", bands[bands["precision"] == p]) for p in precisions]
    files = plots.curves_figure(panels, out / "lm_reward", formats=formats,
                                title=f"RL from reduced-precision rollouts, {task};\n{setup}; held-out reward: "
                                f"fp32 trainer, one sample per prompt at T = 1")
    config = {**config, "summary": summary_file}
    records = [FigureRecord("lm_reward", _names(files), "lm_reward.csv", "run.lab.compare", config,
                            wall_time_s + time.perf_counter() - t0, list(seeds))]

    low = [p for p in precisions if p != "fp32"]
    if low:
        t1 = time.perf_counter()
        mm = stats.curve_bands(df[df["precision"].isin(low)], "mismatch_mean", group=("precision", "method"))
        write_csv(mm, out / "lm_mismatch.csv")
        panels = [(f"{p} engine: mean abs(pi - mu)", mm[mm["precision"] == p]) for p in low]
        files = plots.curves_figure(
            panels,
            out / "lm_mismatch",
            formats=formats,
            logy=[True] * len(panels),
            title=f"Training-inference mismatch at rollout (fp32 trainer vs engine copy, sampled tokens),\n{task}",
        )
        records.append(FigureRecord("lm_mismatch", _names(files), "lm_mismatch.csv", "run.lab.compare", config,
                                    time.perf_counter() - t1, list(seeds)))
    return records


def _lab_arguments(spec: LabSpec, profile: str, out: Path) -> tuple[tuple, dict]:
    """The arguments of :func:`drpo_sim.run.lab.plan` and ``compare`` for ``spec`` in ``profile``."""
    run = spec.profile(profile)
    return (spec.objectives, spec.precisions, run.seeds, run.steps, out), {
        "token_log_objectives": run.token_log_objectives}


def lab_cells(spec: LabSpec, profile: str, out: str | Path) -> list[Cell]:
    """The lab's cells (:func:`drpo_sim.run.lab.plan`; pretrains the model first, or loads it
    from ``out``'s cache)."""
    args, kwargs = _lab_arguments(spec, profile, Path(out))
    return lab.plan(*args, **kwargs).cells


def lab_experiment_figures(out: str | Path, spec: LabSpec, profile: str, runner: Runner,
                           formats: Formats = ("png",)) -> list[FigureRecord]:
    """The lab's comparison in ``profile`` (:func:`drpo_sim.run.lab.compare`), its figures, and the
    replay of the token logs of seed 0 of ``spec.replay_objective`` with each of
    ``spec.replay_precisions``, first mini-batch update of each step only (``updates=[0]``:
    ``logp`` is then the fp32 trainer at rollout time, so the ratio is the real
    training-inference mismatch of the reduced-precision engine, as in a NeMo RL or slime dump);
    figures ``replay_lm_<precision>_*``."""
    out = Path(out)
    t0 = time.perf_counter()
    args, kwargs = _lab_arguments(spec, profile, out)
    comparison = lab.compare(*args, runner=runner, **kwargs)
    comparison.config["profile"] = profile
    records = lab_figures(out, comparison, formats, wall_time_s=time.perf_counter() - t0,
                          summary_file=spec.summary_file)
    for precision in spec.replay_precisions:
        t1 = time.perf_counter()
        log = out / lab.TOKENS_DIR / lab.token_log_name(spec.replay_objective, precision, comparison.seeds[0])
        result = analysis.replay_log(logs.open_log(log, fmt="tokens"), updates=[0])
        label = (
            f"tiny LM lab, {spec.replay_objective} with {precision} rollouts (fp32 trainer), first update of each step"
        )
        records += replay_figures(result, out, label=label, prefix=spec.replay_prefix(precision), formats=formats,
                                  wall_time_s=time.perf_counter() - t1)
    return records


# ----------------------------------------------------------------------------------------------
# the arena


def arena_cells(spec: ArenaSpec | ArenaComparisonSpec, profile: str) -> list[Cell]:
    """One cell per setting of the arena: its contestants x its seeds (:meth:`ArenaProfile.seeds_for`)."""
    prof = spec.profile(profile)
    return [arena_cell(spec.config_for(s, profile), spec.contestants_for(s, profile), prof.seeds_for(s),
                       setting=s.name) for s in spec.settings]


def arena_calibration(spec: ArenaSpec, profile: str) -> dict:
    """The calibration record of the spec's base model. The full profile reruns the whole
    calibration (:func:`drpo_sim.arena.calibration.calibrate`) and stops if it would choose other
    knobs than the spec declares; the quick one measures the declared base model only."""
    knobs = {"d_model": spec.base.model.d_model, "steps": spec.base.steps, "zipf": spec.base.task.zipf,
             "misread": spec.base.task.misread}
    if profile == "full":
        result = calibration.calibrate()
        chosen = {k: result["knobs"][k] for k in knobs}
        if chosen != knobs:
            raise RuntimeError(f"the calibration now chooses {chosen}, the arena's spec declares {knobs}: "
                               "recalibrate, say so in the report, and rerun every arena experiment")
    else:
        result = {"knobs": {**knobs, "temperature": spec.config.temperature},
                  "measured": calibration.init_statistics(spec.base), "targets": calibration.TARGETS,
                  "rule": calibration.RULE, "grid": None}
    return {**result, "profile": profile}


def arena_figures(out: str | Path, spec: ArenaSpec, profile: str, runner: Runner,
                  formats: Formats = ("png",)) -> list[FigureRecord]:
    """The arena's calibration record, its runs (:func:`arena_cells`), the summary
    (:func:`drpo_sim.summaries.arena_summary`), the order of events of every collapsed run
    (:func:`drpo_sim.summaries.order_of_events`) and the figures: ``sanity_test`` (the bf16
    setting, every contestant), ``arena_precision``, ``arena_lr``, ``arena_moe`` (the control
    contestants across settings) and ``arena_grad_share``."""
    out = Path(out)
    t0 = time.perf_counter()
    cal = arena_calibration(spec, profile)
    calibration.write(cal, out)
    cells = arena_cells(spec, profile)
    tables = runner.run(cells, desc="arena")
    df = pd.concat([t.assign(setting=c.labels["setting"]) for c, t in zip(cells, tables)], ignore_index=True)
    prof = spec.profile(profile)
    base, cfg = spec.base, spec.config
    world = (f"arena: 1-layer transformer (d_model {base.model.d_model}) per run, walk task V = {base.task.vocab_size},"
             f" H = {base.task.response_len}; {cfg.prompts_per_step} prompts x G = {cfg.group_size}, "
             f"{cfg.updates_per_batch} updates/step, AdamW lr {cfg.lr:g}; {prof.seeds} seeds x {prof.steps} steps"
             + (f" (controls: {prof.control_seeds} seeds)" if prof.control_seeds else ""))
    config = {"profile": profile, "methods": [c.label for c in spec.contestants], "precisions": sorted(
              {s.precision for s in spec.settings}), "lr": cfg.lr, "group_size": cfg.group_size,
              "steps": prof.steps, "summary": spec.summary_file, "events": spec.events_file, "seeds": spec.seeds_file,
              "calibration": spec.calibration_file, "data": spec.data_file, "settings": [s.name for s in spec.settings],
              "collapse": dataclasses.asdict(COLLAPSE)}
    write_results(df, out / spec.data_file, config)
    write_csv(summaries.arena_summary(df), out / spec.summary_file)
    write_csv(summaries.seed_table(df, ["setting", "method", "objective", "variant", "precision", "lr"],
                                   metric="heldout_reward", at_end=("mismatch_mean",)), out / spec.seeds_file)
    events = summaries.order_of_events(df)
    write_csv(events, out / spec.events_file)
    seeds = prof.seed_list
    labels = [c.label for c in spec.contestants]
    methods = {c.label: c.objective for c in spec.contestants}
    records = []

    def record(name: str, files: list[Path], started: float) -> None:
        records.append(FigureRecord(name, _names(files), spec.summary_file, "arena_figures", config,
                                    time.perf_counter() - started, seeds))

    sanity = df[df["setting"] == spec.settings[0].name]
    panels = [("training reward", ["reward"], False), ("held-out reward (fp32 trainer)", ["heldout_reward"], False),
              ("mean abs(pi - mu)", ["mismatch_mean"], True), ("max (solid) and min (dashed) of pi - mu",
                                                               ["pi_minus_mu_max", "pi_minus_mu_min"], False)]
    files = plots.arena_curves_figure(sanity, out / spec.sanity_figure, panels=panels, hue="method", order=labels,
                                      methods=methods, formats=formats,
                                      title=f"DPPO's sanity test in the arena, {spec.settings[0].title}\n{world}")
    record(spec.sanity_figure, files, t0)

    for name, chosen in spec.control_figures:
        t1 = time.perf_counter()
        settings = [spec.setting(n) for n in chosen]
        extra = [("flip rate", ["flip_rate"], False)] if any(s.moe for s in settings) else []
        controls = [c.label for c in spec.contestants if all(c in spec.contestants_for(s, profile) for s in settings)]
        files = _arena_settings_figure(df, out / name, settings, controls, extra, formats,
                                       title=f"The arena's controls: {', '.join(s.title for s in settings)}\n{world}")
        record(name, files, t1)

    t1 = time.perf_counter()
    shares = summaries.gradient_shares(sanity, by="method").reindex(labels)[list(GRAD_SHARES)]
    files = plots.grad_share_figure(shares, out / spec.grad_share_figure, formats=formats,
                                    title=f"Where each objective's gradient goes, {spec.settings[0].title}\n"
                                    "each step's shares normalised to 1, mean over the steps with a gradient")
    record(spec.grad_share_figure, files, t1)

    t1 = time.perf_counter()
    files = plots.order_of_events_figure(events, out / spec.events_figure, formats=formats,
                                         title="The order of events in every collapsed run")
    record(spec.events_figure, files, t1)
    return records


def arena_comparison_figures(out: str | Path, spec: ArenaComparisonSpec, profile: str, runner: Runner,
                             formats: Formats = ("png",)) -> list[FigureRecord]:
    """Every contestant of ``spec`` in every one of its settings (:func:`arena_cells`): their
    per-step table, the summary (:func:`drpo_sim.summaries.arena_summary` per setting), the per-seed table
    (:func:`drpo_sim.summaries.seed_table` of the held-out reward) and one figure, a row per
    setting: held-out reward, mean ``abs(pi - mu)`` and the gradient norm before clipping."""
    out = Path(out)
    t0 = time.perf_counter()
    cells = arena_cells(spec, profile)
    tables = runner.run(cells, desc=spec.name)
    df = pd.concat([t.assign(setting=c.labels["setting"]) for c, t in zip(cells, tables)], ignore_index=True)
    prof = spec.profile(profile)
    labels = [c.label for c in spec.contestants]
    by = ["setting", "reward_scale_spread"]
    config = {"profile": profile, "methods": labels, "settings": [s.name for s in spec.settings],
              "lr": spec.config.lr, "steps": prof.steps, "summary": spec.summary_file, "seeds": spec.seeds_file,
              "data": spec.data_file, "collapse": dataclasses.asdict(COLLAPSE), "world": spec.world.name}
    write_results(df, out / spec.data_file, config)
    write_csv(summaries.arena_summary(df, by=by), out / spec.summary_file)
    write_csv(summaries.seed_table(df, [*by, "method", "objective", "variant", "precision", "lr"],
                                   metric="heldout_reward", at_end=("mismatch_mean",)), out / spec.seeds_file)
    panels, frames = [], []
    for setting in spec.settings:
        sub = df[df["setting"] == setting.name]
        for ylabel, cols, log in [("held-out reward", ["heldout_reward"], False),
                                  ("mean abs(pi - mu)", ["mismatch_mean"], True),
                                  ("gradient norm before clipping", ["grad_norm"], True)]:
            panels.append((f"{setting.title}: {ylabel}", cols, log))
            frames.append(sub)
    files = plots.arena_curves_figure(frames, out / spec.name, panels=panels, hue="method", order=labels,
                                      methods={c.label: c.objective for c in spec.contestants}, ncols=3,
                                      formats=formats, title=f"{spec.title}\n{prof.seeds} seeds x {prof.steps} steps, "
                                      f"AdamW lr {spec.config.lr:g}, {spec.world.description}")
    return [FigureRecord(spec.name, _names(files), spec.summary_file, "arena_comparison_figures", config,
                         time.perf_counter() - t0, prof.seed_list)]


def _arena_settings_figure(df: pd.DataFrame, stem: Path, settings: list[ArenaSetting], controls: list[str],
                           extra: list, formats: Formats, title: str) -> list[Path]:
    """One row per control contestant: its held-out reward, its mean ``abs(pi - mu)`` and the
    ``extra`` panels, one line per setting."""
    sub = df[df["setting"].isin([s.name for s in settings]) & df["method"].isin(controls)]
    titles = {s.name: s.title for s in settings}
    sub = sub.assign(setting_title=sub["setting"].map(titles))
    panels, frames = [], []
    for label in controls:
        for ylabel, cols, log in [("held-out reward", ["heldout_reward"], False),
                                  ("mean abs(pi - mu)", ["mismatch_mean"], True), *extra]:
            panels.append((f"{label}: {ylabel}", cols, log))
            frames.append(sub[sub["method"] == label])
    return plots.arena_curves_figure(frames, stem, panels=panels, hue="setting_title",
                                     order=[titles[s.name] for s in settings], ncols=2 + len(extra), title=title,
                                     formats=formats)


# ----------------------------------------------------------------------------------------------
# the cells of a spec, before its job runs


def _sim_cost(cell: Cell) -> float:
    """A rough cost of a ``sim`` cell, for ordering only: steps x seeds x states x vocabulary x
    mini-batch updates (lab cells, a few seconds each, count as the largest)."""
    if cell.kind != "sim":
        return float("inf")
    c = cell.spec["config"]
    return (c["steps"] * len(cell.spec["seeds"]) * c["n_prompts"] * c["horizon"] * c["vocab_size"]
            * c["updates_per_batch"])


def base_models_first(cells: Sequence[Cell]) -> list[Cell]:
    """``cells`` with one arena cell per distinct base model in front (the mixture of experts
    first), the others in their order. The base models are trained once and kept on disk
    (:mod:`drpo_sim.arena.pretrain`): about a minute for the dense one and two for the mixture,
    each on one core. Handed out first, they are trained side by side while the driver draws
    the first figures, not one after the other, with a core idle, when the arena's turn comes;
    no number changes, since a cell's result depends only on its spec."""
    first: dict[str, Cell] = {}
    for c in cells:
        if c.kind == "arena":
            first.setdefault(json.dumps(c.spec["config"]["base"], sort_keys=True), c)
    front = sorted(first.values(), key=lambda c: c.spec["config"]["base"]["model"]["n_experts"], reverse=True)
    ids = {c.id for c in front}
    return front + [c for c in cells if c.id not in ids]


def planned_cells(spec: object, profile: str, out: str | Path) -> list[Cell]:
    """The cells the job of ``spec`` will ask its runner for, costliest first (none for the specs
    whose jobs train nothing), so a driver can hand them to the runner early
    (:meth:`~drpo_sim.run.executor.Runner.prefetch`). Built by the same functions the jobs use."""
    if isinstance(spec, (PanelSpec, TuningSpec)):
        cells = panel_cells(spec, profile)
    elif isinstance(spec, ConvergenceSpec):
        cells = convergence_cells(spec, profile)
    elif isinstance(spec, PhaseSpec):
        cells = phase_sweep(spec, profile).cells()
    elif isinstance(spec, SensitivitySpec):
        cells = sensitivity_sweep(spec, profile).cells()
    elif isinstance(spec, LabSpec):
        cells = lab_cells(spec, profile, out)
    elif isinstance(spec, (ArenaSpec, ArenaComparisonSpec)):
        cells = arena_cells(spec, profile)
    else:
        return []
    return sorted(cells, key=_sim_cost, reverse=True)
