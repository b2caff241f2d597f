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


# The convergence figure of `make reproduce`: fp8-like engine noise plus staleness (issue 3).
# The channel levels are offpolicy.NOISE_PRESETS["fp8"], calibrated against the published
# mismatch sizes; rollouts are 8 optimiser updates (2 steps of 4 mini-batch updates) stale. The
# environment was chosen so that the figure separates methods: on the bandit every method locks
# onto one token within ~50 steps and nothing separates; on the tabular sequence task GRPO's
# clip-higher zeroes the updates of targets being learned and it falls behind (README).
# The tabular task of the simulation figures: 8 prompts of 4 tokens, V = 256, prefix reward, the
# batch split into 4 mini-batch updates.
TABULAR_TASK = {"env": "tabular", "vocab_size": 256, "n_prompts": 8, "horizon": 4, "updates_per_batch": 4}
CONVERGENCE_METHODS = ("pg_is", "grpo", "spo", "dppo_tv", "drpo")
CONVERGENCE = {
    "base": {**TABULAR_TASK, "noise_std": 0.1, "precision": "fp8_e4m3", "staleness": 8},
    "quick": {"steps": 200, "seeds": 24},
    "full": {"steps": 300, "seeds": 96},
}


def convergence_figures(out: str | Path, profile: str = "quick", formats: Sequence[str] = ("png",), *, progress: bool = False) -> list[FigureRecord]:
    """Reward against step with 95% bootstrap bands under fp8-like noise plus staleness."""
    from drpo_sim import stats
    from drpo_sim.sim import SimConfig, simulate

    if profile not in ("quick", "full"):
        raise ValueError(f"unknown profile {profile!r}; valid: quick, full")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    spec = {**CONVERGENCE["base"], **{k: v for k, v in CONVERGENCE[profile].items() if k != "seeds"}}
    seeds = list(range(CONVERGENCE[profile]["seeds"]))
    t0 = time.perf_counter()
    cfg = SimConfig.from_flat(spec)
    df = simulate(cfg, CONVERGENCE_METHODS, seeds, progress=progress)
    panels = {
        "expected_reward": "expected reward of pi",
        "shift_mean": "mean abs(pi - mu), sampled tokens",
        "masked_frac": "share of sampled tokens masked (w = 0)",
    }
    bands = {m: stats.curve_bands(df, m) for m in panels}
    write_csv(pd.concat([b.assign(metric=m) for m, b in bands.items()], ignore_index=True), out / "convergence_fp8_stale.csv")
    summary = stats.summarize_runs(df, reference="pg_is", nan_policy="omit")
    write_csv(summary, out / "convergence_fp8_stale_summary.csv")
    o = cfg.offpolicy
    e = cfg.env
    title = (
        f"Tabular task ({e.n_prompts} prompts x {e.horizon} tokens, V = {e.vocab_size}, prefix reward): fp8 e4m3 engine "
        f"+ logit noise {o.noise_std:g},\nrollouts {o.staleness} optimiser updates stale, {o.updates_per_batch} mini-batch updates per batch"
    )
    files = plots.curves_figure(
        [(label, bands[m]) for m, label in panels.items()],
        out / "convergence_fp8_stale", title=title, formats=formats, logy=[False, True, False],
    )
    config = {**cfg.flat(), "methods": list(CONVERGENCE_METHODS)}
    return [FigureRecord("convergence_fp8_stale", _names(files), "convergence_fp8_stale.csv", "sim.simulate", config,
                         time.perf_counter() - t0, seeds)]


FLOW_OBJECTIVES = (
    ("pg_is", {}), ("grpo", {}), ("dppo_tv", {}), ("spo", {"eps": 0.2}), ("drpo", {"delta": 0.15}), ("drpo", {}),
)


def dynamics_figures(out: str | Path, formats: Sequence[str] = ("png",)) -> list[FigureRecord]:
    """The frozen-mu rest-point table and the flow figure (REFERENCE.md's per-token maximisers)."""
    from drpo_sim import dynamics

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    cfg = dynamics.FlowConfig()
    table = dynamics.rest_point_table(cfg=cfg)
    write_csv(table, out / "rest_points.csv")
    field, rest = dynamics.flow_field(FLOW_OBJECTIVES, cfg=cfg)
    write_csv(rest, out / "fixed_point_rest_curves.csv")
    files = plots.flow_figure(
        field, rest, out / "fixed_point_flows", formats=formats,
        title="Where pi comes to rest when mu is frozen (exact expected update of one token; colour: direction and speed of pi)",
    )
    config = {"flow": dataclasses.asdict(cfg), "objectives": [f"{n}{p}" for n, p in FLOW_OBJECTIVES]}
    return [FigureRecord("fixed_point_flows", _names(files), "rest_points.csv", "dynamics.rest_point_table", config, time.perf_counter() - t0)]


# Phase diagram and threshold sensitivity (issue 4): the tabular task of the convergence figure,
# Gaussian engine noise on the logits (no rounding, so the corner (0, 0) is exactly on-policy)
# against staleness (optimiser updates; 4 mini-batch updates per batch).
PHASE_METHODS = CONVERGENCE_METHODS
PHASE = {
    "quick": {"steps": 150, "seeds": 8, "noise_std": [0.0, 0.3, 1.0], "staleness": [0, 8, 16]},
    "full": {"steps": 200, "seeds": 32, "noise_std": [0.0, 0.1, 0.3, 0.6, 1.0], "staleness": [0, 4, 8, 16, 32]},
}
SENSITIVITY = {
    "quick": {"steps": 150, "seeds": 8},
    "full": {"steps": 200, "seeds": 32},
    "staleness": 8,
    "noise_std": [0.1, 1.0],
    "dppo_tv.delta": [0.05, 0.1, 0.15, 0.3, 0.6],
    "drpo.delta": [12.5, 5.0, 2.5, 1.0, 0.5, 0.15],
}
STABLE_FRACTION = 0.9  # a cell is in a method's stable region: no collapse, and >= 90% of its on-policy final reward


def phase_figures(out: str | Path, profile: str = "quick", formats: Sequence[str] = ("png",), *, n_jobs: int | None = None) -> list[FigureRecord]:
    """Collapse rate and final reward over engine noise x staleness, and DPPO's / DRPO's threshold
    sensitivity at two noise levels (REFERENCE.md claim 7), each from a resumable sweep whose cell
    store is kept under ``out/sweeps/`` (:func:`_sweep_dir`)."""
    from drpo_sim import stats, sweep

    if profile not in PHASE:
        raise ValueError(f"unknown profile {profile!r}; valid: {', '.join(PHASE)}")
    out = Path(out)
    records = []

    t0 = time.perf_counter()
    ph = PHASE[profile]
    doc = {"methods": list(PHASE_METHODS), "seeds": ph["seeds"], **_sections({**TABULAR_TASK, "steps": ph["steps"]}),
           "grid": {"noise_std": ph["noise_std"], "staleness": ph["staleness"]}}
    spec = sweep.parse_sweep(doc, source=f"phase diagram ({profile})")
    df = sweep.run_sweep(spec, _sweep_dir(out, f"phase_{profile}"), n_jobs=n_jobs, progress=False)
    summary = stats.summarize_runs(df, group=("method", "noise_std", "staleness"), nan_policy="omit")
    summary = summary.merge(stable_region(summary), on=["method", "noise_std", "staleness"])
    write_csv(summary, out / "phase_diagram.csv")
    files = plots.phase_figure(
        summary, out / "phase_diagram", x="noise_std", y="staleness", methods=PHASE_METHODS, formats=formats,
        title=(f"Tabular task, {ph['seeds']} seeds x {ph['steps']} steps per cell: collapse rate and final reward over "
               f"engine logit noise and staleness (optimiser updates);\nwhite frame: the method's stable region "
               f"(no collapse, final reward >= {STABLE_FRACTION:.0%} of its own on-policy value)"),
    )
    records.append(FigureRecord("phase_diagram", _names(files), "phase_diagram.csv", "sweep.run_sweep", spec.describe(),
                                time.perf_counter() - t0, list(spec.seeds)))

    t0 = time.perf_counter()
    se = SENSITIVITY[profile]
    doc = {"methods": ["dppo_tv", "drpo"], "seeds": se["seeds"],
           **_sections({**TABULAR_TASK, "steps": se["steps"], "staleness": SENSITIVITY["staleness"]}),
           "grid": {"noise_std": SENSITIVITY["noise_std"], "dppo_tv.delta": SENSITIVITY["dppo_tv.delta"], "drpo.delta": SENSITIVITY["drpo.delta"]}}
    spec = sweep.parse_sweep(doc, source=f"threshold sensitivity ({profile})")
    df = sweep.run_sweep(spec, _sweep_dir(out, f"sensitivity_{profile}"), n_jobs=n_jobs, progress=False)
    summary = stats.summarize_runs(df, group=("method", "noise_std", "param_delta"), nan_policy="omit")
    summary = summary.rename(columns={"param_delta": "delta"}).assign(level=lambda d: [f"noise {v:g}" for v in d["noise_std"]])
    write_csv(summary, out / "threshold_sensitivity.csv")
    files = plots.sensitivity_figure(
        summary, out / "threshold_sensitivity", formats=formats,
        title=(f"Final reward against the trust-region threshold, tabular task, staleness {SENSITIVITY['staleness']} updates, "
               f"{se['seeds']} seeds x {se['steps']} steps (REFERENCE.md claim 7)"),
    )
    records.append(FigureRecord("threshold_sensitivity", _names(files), "threshold_sensitivity.csv", "sweep.run_sweep",
                                spec.describe(), time.perf_counter() - t0, list(spec.seeds)))
    return records


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


def write_manifest(out: str | Path, records: list[FigureRecord], *, profile: str) -> Path:
    """``MANIFEST.json``: every figure, its job and configuration, the package version and git commit."""
    manifest = {
        "package": "drpo_sim",
        "version": __version__,
        "git_commit": _git_commit(),
        "profile": profile,
        "python": platform.python_version(),
        "created_unix": time.time(),
        "figures": [dataclasses.asdict(r) for r in records],
    }
    return write_text(json.dumps(manifest, indent=2) + "\n", Path(out) / "MANIFEST.json")


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


#: The simulator run whose token log ``replay_sim`` replays: DRPO trained in the convergence
#: figure's setting (fp8-like engine, rollouts 8 updates stale, 4 mini-batch updates per batch).
REPLAY_SIM = {"method": "drpo", "quick": {"steps": 100, "seeds": 4}, "full": {"steps": 300, "seeds": 16}}


def replay_sim_figures(out: str | Path, profile: str = "quick", formats: Sequence[str] = ("png",)) -> list[FigureRecord]:
    """Save a simulator run's token log and replay it like a real one (one code path).

    The log is written to ``out/token_logs/sim_fp8_stale_drpo.parquet`` with
    :class:`~drpo_sim.tokens.TokenLogWriter`, read back with :func:`drpo_sim.logs.open_log` and
    analysed by :func:`drpo_sim.analysis.replay`; figures ``replay_sim_*``.
    """
    from drpo_sim import analysis, logs
    from drpo_sim.sim import SimConfig, simulate
    from drpo_sim.tokens import TokenLogWriter

    if profile not in ("quick", "full"):
        raise ValueError(f"unknown profile {profile!r}; valid: quick, full")
    out = Path(out)
    t0 = time.perf_counter()
    method, run = REPLAY_SIM["method"], REPLAY_SIM[profile]
    cfg = SimConfig.from_flat({**CONVERGENCE["base"], "steps": run["steps"]})
    seeds = list(range(run["seeds"]))
    log = out / "token_logs" / f"sim_fp8_stale_{method}.parquet"
    meta = {"config": cfg.flat(), "method": method, "seeds": seeds}
    with TokenLogWriter(log, metadata=meta) as writer:
        simulate(cfg, [method], seeds, token_sink_for=lambda m: writer.write)
    result = analysis.replay_log(logs.open_log(log, fmt="tokens"))
    result.totals["source"]["simulation"] = meta
    label = f"simulator, {method} trained with an fp8-like engine and staleness {cfg.offpolicy.staleness} ({len(seeds)} seeds)"
    records = replay_figures(result, out, label=label, prefix="replay_sim_", formats=formats,
                             wall_time_s=time.perf_counter() - t0)
    for r in records:
        r.seeds = seeds
    return records


#: The lab run whose token logs ``lm_figures`` replays (``lm_tokens/<objective>_<precision>_seed0``).
REPLAY_LM = {"objective": "drpo", "precisions": ("bf16", "fp8")}


def lm_figures(out: str | Path, profile: str = "quick", formats: Sequence[str] = ("png",)) -> list[FigureRecord]:
    """The tiny transformer lab (:func:`drpo_sim.lm.experiment.compare`) and the replay of its logs.

    After the comparison (figures ``lm_reward``, ``lm_mismatch``), the token logs of one seed of
    DRPO with bf16 and with fp8 rollouts are replayed, first mini-batch update of each step only
    (``updates=[0]``: ``logp`` is then the fp32 trainer at rollout time, so the ratio is the real
    training-inference mismatch of the reduced-precision engine, as in a NeMo RL or slime dump);
    figures ``replay_lm_bf16_*`` and ``replay_lm_fp8_*``.
    """
    from drpo_sim import analysis, logs
    from drpo_sim.lm import experiment

    out = Path(out)
    records = experiment.compare(profile=profile, out=out, formats=formats)
    for precision in REPLAY_LM["precisions"]:
        t0 = time.perf_counter()
        log = out / "lm_tokens" / f"{REPLAY_LM['objective']}_{precision}_seed0.parquet"
        result = analysis.replay_log(logs.open_log(log, fmt="tokens"), updates=[0])
        label = f"tiny LM lab, {REPLAY_LM['objective']} with {precision} rollouts (fp32 trainer), first update of each step"
        records += replay_figures(result, out, label=label, prefix=f"replay_lm_{precision}_", formats=formats,
                                  wall_time_s=time.perf_counter() - t0)
    return records


def claims_file(out: str | Path) -> list:
    """Test the claims that are implemented (:mod:`drpo_sim.claims`) and write ``out/claims.json``.

    Claim 5 reads the simulator replay's ``replay_sim_regions_by_mu.csv`` (:func:`replay_sim_figures`),
    claim 7 ``threshold_sensitivity.csv`` (:func:`phase_figures`) and claim 12
    ``convergence_fp8_stale_summary.csv`` (:func:`convergence_figures`), from the same directory.
    """
    from drpo_sim import claims

    out = Path(out)
    results = [claims.claim_1(), claims.claim_2(), claims.claim_3(),
               claims.claim_5(out / "replay_sim_regions_by_mu.csv"),
               claims.claim_7(out / "threshold_sensitivity.csv"),
               claims.claim_12(out / "convergence_fp8_stale_summary.csv")]
    claims.write_claims(results, out / "claims.json")
    return results
