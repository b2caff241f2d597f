"""The analyses (drpo_sim.paper.analyses): each a package module with a docstring naming its
figures, a SPEC and run(out, profile, formats, runner); and every name the claims read from them
(result files, variant labels, settings) is declared in their specs, so a renamed variant fails
at import, not at the end of an hour-long run."""

from __future__ import annotations

import inspect
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import drpo_sim
from drpo_sim.paper import claims
from drpo_sim.paper.analyses import (
    ORDER,
    ablations,
    anchor,
    arena,
    convergence,
    divergence_tuning,
    replay_sim,
    settings,
    thresholds,
)
from drpo_sim.paper.specs import (
    ArenaComparisonSpec,
    ArenaSpec,
    ConvergenceSpec,
    FlowSpec,
    GeometrySpec,
    GradientSpec,
    LabSpec,
    PanelSpec,
    PhaseSpec,
    ReplaySpec,
    SensitivitySpec,
    TuningSpec,
)

ROOT = Path(__file__).resolve().parents[2]

#: The tables a replay writes (drpo_sim.analysis.ReplayResult.write) and the figures it draws
#: (drpo_sim.paper.jobs.replay_figures), each under the replay's prefix.
REPLAY_TABLES = ("mismatch_by_mu.csv", "regions_by_mu.csv", "objectives.csv", "by_step.csv", "replay.json")
REPLAY_FIGURES = ("mismatch", "regions", "weights", "rare_tokens", "by_step")


def figures_of(spec) -> list[str]:
    """The figures an analysis's spec draws."""
    if isinstance(spec, PanelSpec):
        return [f.name for f in spec.figures]
    if isinstance(spec, (ConvergenceSpec, PhaseSpec, SensitivitySpec, TuningSpec)):
        return [spec.name]
    if isinstance(spec, GeometrySpec):
        return [spec.weight_figure, spec.ablations_figure, spec.plane_figure, spec.delta_range_figure]
    if isinstance(spec, FlowSpec):
        return [spec.figure]
    if isinstance(spec, ReplaySpec):
        return [spec.prefix + f for f in REPLAY_FIGURES]
    if isinstance(spec, (ArenaSpec, ArenaComparisonSpec)):
        return list(spec.figures)
    if isinstance(spec, GradientSpec):
        return list(spec.figures("full"))
    if isinstance(spec, LabSpec):
        return ["lm_reward", "lm_mismatch", *(spec.replay_prefix(p) + f for p in spec.replay_precisions
                                              for f in REPLAY_FIGURES)]
    raise AssertionError(f"unknown spec type {type(spec).__name__}")


def files_of(spec) -> set[str]:
    """The data and summary files an analysis's spec writes."""
    names = {getattr(spec, attr) for attr in ("data_file", "summary_file", "seeds_file") if hasattr(spec, attr)}
    if isinstance(spec, GeometrySpec):
        names |= set(spec.data_files)
    if isinstance(spec, GradientSpec):
        names |= set(spec.data_files("full"))
    if isinstance(spec, FlowSpec):
        names |= {spec.rest_points_file, spec.rest_curves_file}
    if isinstance(spec, ReplaySpec):
        names |= {spec.file(t) for t in REPLAY_TABLES}
    if isinstance(spec, LabSpec):
        names |= {spec.replay_prefix(p) + t for p in spec.replay_precisions for t in REPLAY_TABLES}
    if isinstance(spec, ArenaSpec):
        names |= {spec.events_file, spec.calibration_file}
    return names


def test_the_analyses_run_in_their_order():
    assert list(ORDER) == ["weight_table", "fixed_points", "gradient_diagnostics", "convergence", "settings", "phase",
                           "thresholds", "divergence_tuning", "ablations", "reward_scales", "anchor", "replay_sim",
                           "tiny_lm", "arena", "arena_reward_scales", "arena_three_policies"]
    assert all(module.__name__ == f"drpo_sim.paper.analyses.{name}" for name, module in ORDER.items())


@pytest.mark.parametrize("name", list(ORDER))
def test_every_analysis_has_a_docstring_naming_its_figures_a_spec_and_run(name):
    module = ORDER[name]
    doc = inspect.getdoc(module)
    assert doc, f"{name}: says what it reproduces"
    assert re.search(r"^Figures?: ", doc, re.M), f"{name}: a 'Figure(s):' line"
    figures = figures_of(module.SPEC)
    assert figures
    for figure in figures:
        # a group of figures may be named by its prefix (replay_sim_mismatch, _regions, ...; replay_lm_bf16_*)
        assert figure in doc or any(figure.startswith(p) for p in re.findall(r"(\w+_)\*", doc)) or (
            isinstance(module.SPEC, ReplaySpec) and f"_{figure.removeprefix(module.SPEC.prefix)}" in doc
        ), f"{name}: the docstring does not name {figure}"
    assert callable(module.run)
    assert list(inspect.signature(module.run).parameters) == ["out", "profile", "formats", "runner"]
    if isinstance(module.SPEC, GradientSpec):
        quick, full = module.SPEC.profile("quick"), module.SPEC.profile("full")
        assert quick.keys() == full.keys()
        assert all(quick[w].batches <= full[w].batches and getattr(quick[w], "vocab", 0) <= getattr(full[w], "vocab", 0)
                   for w in quick)
    elif not isinstance(module.SPEC, (GeometrySpec, FlowSpec)):
        quick, full = module.SPEC.profile("quick"), module.SPEC.profile("full")
        assert quick.steps <= full.steps and quick.seeds <= full.seeds  # quick is the lighter profile


def test_every_result_file_a_claim_reads_is_written_by_some_analysis():
    written = {f: name for name, module in ORDER.items() for f in files_of(module.SPEC)}
    for number, names in claims.CLAIM_FILES.items():
        for f in names:
            assert f in written, f"claim {number} reads {f}, which no analysis's spec declares"
    assert claims.CLAIM_FILES[7] == (thresholds.SPEC.seeds_file,)
    assert written["threshold_sensitivity.csv"] == "thresholds"
    assert written[claims.CLAIM_FILES[5][0]] == "replay_sim"
    assert written[claims.CLAIM_FILES[12][0]] == "convergence"
    assert [written[f] for f in claims.CLAIM_FILES[8]] == ["reward_scales", "arena_reward_scales"]


def _default(function, parameter: str):
    return inspect.signature(function).parameters[parameter].default


def test_the_labels_the_claims_default_to_exist_in_the_specs():
    # claim 4: the arena's contestants without a trust region, and the trust region
    arena_labels = {c.label for c in arena.SPEC.contestants}
    assert set(_default(claims.claim_4, "free")) | {_default(claims.claim_4, "trust_region")} <= arena_labels
    assert arena.SPEC.setting(_default(claims.claim_4, "setting"))
    # claim 6: DRPO at the paper's delta and at DPPO-TV's, against DPPO-TV
    settings_labels = {v.label for v in settings.SPEC.variants}
    assert {_default(claims.claim_6, k) for k in ("drpo_paper", "drpo_same", "dppo")} <= settings_labels
    # claims 8, 9: each ablation at the paper's threshold and at the binding delta; claim 10: every
    # divergence at every delta its tuning run may choose
    ablation_labels = {v.label for v in ablations.SPEC.variants}
    assert _default(claims.claim_9, "deltas") == (12.5, ablations.BINDING_DELTA)
    for method in ("drpo", "drpo_no_abs_adv", "mask_drpo"):
        for delta in (12.5, ablations.BINDING_DELTA):
            assert claims._ablation_label(method, delta) in ablation_labels
    for method in ablations.DIVERGENCES:
        for delta in divergence_tuning.SPEC.deltas:
            assert claims._ablation_label(method, delta) in ablation_labels
    assert set(_default(claims.claim_10, "others")) <= set(divergence_tuning.SPEC.methods)
    assert divergence_tuning.SPEC.settings == ablations.SPEC.settings
    assert not set(divergence_tuning.SPEC.full.seed_list) & set(ablations.SPEC.full.seed_list)
    # claim 11: both anchors of each condition are settings of the anchor analysis
    for _, rollout, recompute in anchor.PAIRS:
        assert anchor.SPEC.setting(rollout.name) == rollout and anchor.SPEC.setting(recompute.name) == recompute
    # claim 7: DPPO-TV's and DRPO's thresholds are swept; claim 12: DRPO against pg_is
    assert _default(claims.claim_7, "dppo") in thresholds.SPEC.deltas
    assert set(_default(claims.claim_7, "drpo_deltas")) <= set(thresholds.SPEC.deltas["drpo"])
    assert {"drpo", "pg_is"} <= set(convergence.SPEC.methods)
    assert replay_sim.SPEC.method == "drpo"


def test_a_variant_the_claims_need_fails_at_import_when_it_is_gone(tmp_path):
    """The claims take their labels from the specs (a renamed label follows), and a variant they
    need that a spec no longer runs is a KeyError when they are imported."""
    script = textwrap.dedent("""
        import dataclasses
        from drpo_sim.paper.analyses import settings
        spec = settings.SPEC
        relabelled = dataclasses.replace(spec, variants=tuple(dataclasses.replace(v, label=v.label.upper())
                                                              for v in spec.variants), figures=())
        settings.SPEC = dataclasses.replace(spec, variants=tuple(v for v in spec.variants if v.method != "dppo_tv"),
                                            figures=())
        try:
            import drpo_sim.paper.claims
        except KeyError as err:
            print("KeyError", err)
        else:
            print("imported")
        settings.SPEC = relabelled
        import importlib
        claims = importlib.import_module("drpo_sim.paper.claims")
        import inspect
        print(inspect.signature(claims.claim_6).parameters["dppo"].default)
    """)
    res = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    assert lines[0].startswith("KeyError") and "settings: no variant runs dppo_tv" in lines[0]
    assert lines[1] == "DPPO_TV"


def test_the_analyses_ship_inside_the_package():
    package = Path(drpo_sim.__file__).resolve().parent
    for name, module in ORDER.items():
        assert Path(module.__file__).resolve().is_relative_to(package / "paper" / "analyses"), name
    assert not (ROOT / "analyses").exists()  # no top-level directory a non-editable install would miss
