"""The typed experiment specifications (drpo_sim.paper.specs): profiles, variant labels, and a
panel spec's validation, so a misnamed variant or setting fails where it is declared."""

from __future__ import annotations

import dataclasses
import re

import pytest

from drpo_sim.config import NOISE_PRESETS, PROFILES
from drpo_sim.paper import specs
from drpo_sim.paper.specs import (
    ConvergenceSpec,
    GridProfile,
    LabProfile,
    LabSpec,
    PanelFigure,
    PanelSpec,
    PhaseSpec,
    Profile,
    ReplaySpec,
    SensitivitySpec,
    Setting,
    Variant,
    param_suffix,
)

QUICK, FULL = Profile(steps=6, seeds=3), Profile(steps=20, seeds=8)


def _panel(**changes) -> PanelSpec:
    fields = dict(
        name="tiny",
        config={"vocab_size": 16},
        settings=(Setting("a", "clean"), Setting("b", "noisy", {"noise_std": 0.5})),
        variants=(Variant("drpo"), Variant("drpo", {"delta": 0.15}), Variant("dppo_tv")),
        figures=(PanelFigure("tiny_fig", "t", ("drpo", "drpo (delta 0.15)"), ("b",)),),
        quick=QUICK,
        full=FULL,
    )
    return PanelSpec(**{**fields, **changes})


# --------------------------------------------------------------------------------------------
# profiles


def test_profiles_and_their_seed_lists():
    assert Profile(steps=6, seeds=3).seed_list == [0, 1, 2]
    grid = GridProfile(steps=6, seeds=2, noise_std=(0.0, 0.3), staleness=(0, 8))
    assert grid.seed_list == [0, 1] and grid.noise_std == (0.0, 0.3) and grid.staleness == (0, 8)
    assert isinstance(grid, Profile)
    assert GridProfile(steps=1, seeds=1).noise_std == () == GridProfile(steps=1, seeds=1).staleness
    lab = LabProfile(steps=30, seeds=2, token_log_objectives=("pg_is", "drpo"))
    assert lab.seed_list == [0, 1] and lab.token_log_objectives == ("pg_is", "drpo")
    assert LabProfile(steps=1, seeds=1).token_log_objectives is None  # None: every objective keeps a log
    with pytest.raises(dataclasses.FrozenInstanceError):
        QUICK.steps = 7


def test_every_spec_has_a_quick_and_a_full_profile_and_nothing_else():
    spec = _panel()
    assert PROFILES == ("quick", "full")
    assert spec.profile("quick") is QUICK and spec.profile("full") is FULL
    with pytest.raises(ValueError, match="unknown profile 'huge'; valid: quick, full"):
        spec.profile("huge")
    others = [
        ConvergenceSpec("c", ("drpo",), {}, QUICK, FULL),
        PhaseSpec(("drpo",), {}, GridProfile(6, 3, (0.0,), (0,)), GridProfile(20, 8, (0.0,), (0,))),
        SensitivitySpec({}, (0.1,), {"drpo": (12.5,)}, QUICK, FULL),
        ReplaySpec("drpo", {}, QUICK, FULL),
        LabSpec(LabProfile(30, 2), LabProfile(100, 8)),
    ]
    for other in others:
        assert other.profile("full") is other.full
        with pytest.raises(ValueError, match="unknown profile 'huge'; valid: quick, full"):
            other.profile("huge")


# --------------------------------------------------------------------------------------------
# variants and their labels


@pytest.mark.parametrize("params, suffix", [
    ({}, ""), ({"delta": 0.15}, " (delta 0.15)"), ({"delta": 12.5}, " (delta 12.5)"),
    ({"delta": 0.5, "delta_high": 1e9}, " (delta 0.5, delta_high 1e+09)"),
])
def test_param_suffix(params, suffix):
    assert param_suffix(params) == suffix


def test_a_variant_label_defaults_to_its_method_and_parameters():
    assert Variant("drpo").label == "drpo"
    assert Variant("drpo", {"delta": 0.15}).label == "drpo (delta 0.15)"
    assert Variant("dppo_tv", {"delta_high": 1e9}, label="dppo_tv (A<0 only)").label == "dppo_tv (A<0 only)"
    assert Variant("drpo", {"delta": 0.15}) == Variant("drpo", {"delta": 0.15}, label="drpo (delta 0.15)")


# --------------------------------------------------------------------------------------------
# panel specs


def test_panel_spec_names_its_files_settings_and_labels():
    spec = _panel()
    assert spec.data_file == "tiny.csv" and spec.summary_file == "tiny_summary.csv"
    assert spec.setting("b") == Setting("b", "noisy", {"noise_std": 0.5})
    with pytest.raises(KeyError, match="tiny: no setting 'c'; declared: a, b"):
        spec.setting("c")
    assert spec.label("drpo") == "drpo" and spec.label("drpo", delta=0.15) == "drpo (delta 0.15)"
    assert spec.label("dppo_tv") == "dppo_tv"
    with pytest.raises(KeyError, match=r"tiny: no variant runs drpo \(delta 0.5\)"):
        spec.label("drpo", delta=0.5)
    with pytest.raises(KeyError, match="tiny: no variant runs grpo"):
        spec.label("grpo")
    described = spec.describe(QUICK)
    assert described["settings"] == {"a": {"title": "clean"}, "b": {"title": "noisy", "noise_std": 0.5}}
    assert described["variants"] == {"drpo": ["drpo", {}], "drpo (delta 0.15)": ["drpo", {"delta": 0.15}],
                                     "dppo_tv": ["dppo_tv", {}]}
    assert described["methods"] == ["dppo_tv", "drpo"] and described["steps"] == 6 and described["seeds"] == 3
    assert described["config"] == {"vocab_size": 16}


def test_a_variant_label_declared_twice_is_an_error():
    with pytest.raises(ValueError, match=r"tiny: variant drpo \(delta 0.15\) declared twice"):
        _panel(variants=(Variant("drpo"), Variant("drpo", {"delta": 0.15}),
                         Variant("drpo_kl", label="drpo (delta 0.15)")))


def test_a_setting_declared_twice_is_an_error():
    with pytest.raises(ValueError, match="tiny: setting a declared twice"):
        _panel(settings=(Setting("a", "clean"), Setting("b", "noisy"), Setting("a", "again", {"staleness": 2})))


@pytest.mark.parametrize("figure, undeclared", [
    (PanelFigure("f", "t", ("drpo", "drpo (delta 0.5)")), "drpo (delta 0.5)"),
    (PanelFigure("f", "t", ("drpo",), ("a", "c")), "c"),
    (PanelFigure("f", "t", ("grpo",), ("z",)), "grpo, z"),
])
def test_a_figure_showing_an_undeclared_variant_or_setting_is_an_error(figure, undeclared):
    with pytest.raises(ValueError, match=re.escape(f"tiny: figure f shows undeclared {undeclared}") + "$"):
        _panel(figures=(figure,))


def test_the_shared_conditions():
    assert specs.BF16 == NOISE_PRESETS["bf16"] and specs.FP8 == NOISE_PRESETS["fp8"]
    assert specs.FP8_STALE == {**NOISE_PRESETS["fp8"], "staleness": 8}
    assert specs.TABULAR_TASK["env"] == "tabular" and specs.TABULAR_TASK["vocab_size"] == 256
    assert ReplaySpec("drpo", {}, QUICK, FULL).file("regions_by_mu.csv") == "replay_sim_regions_by_mu.csv"
    assert LabSpec(LabProfile(30, 2), LabProfile(100, 8)).replay_prefix("fp8") == "replay_lm_fp8_"


def test_an_arena_comparison_runs_every_contestant_in_every_setting():
    import dataclasses

    from drpo_sim.paper.analyses import arena_reward_scales as ars
    from drpo_sim.paper.specs import ArenaSetting

    spec = ars.SPEC
    assert spec.figures == (spec.name,) and spec.data_file == f"{spec.name}.parquet"
    assert spec.seeds_file == f"{spec.name}_seeds.csv" and spec.world.name == "arena, mixed reward scales"
    for setting in spec.settings:
        assert spec.contestants_for(setting, "full") == spec.contestants
        config = spec.config_for(setting, "full")
        assert config.reward_scale_spread == setting.reward_scale_spread and config.steps == spec.full.steps
        assert config.lr == ars.arena.SPEC.config.lr and config.base == ars.arena.SPEC.base  # the sanity test's
    assert [s.reward_scale_spread for s in spec.settings] == [0.0, 1.0, 2.0]
    with pytest.raises(ValueError, match="runs every contestant"):
        dataclasses.replace(spec, settings=(ArenaSetting("x", "x"),))  # a control setting
    with pytest.raises(ValueError, match="duplicate setting names"):
        dataclasses.replace(spec, settings=(ArenaSetting("x", "x", controls=False),) * 2)
    with pytest.raises(ValueError, match="duplicate contestant labels"):
        dataclasses.replace(spec, contestants=spec.contestants[:1] * 2)
