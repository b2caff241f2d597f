"""The explorer's controls (:mod:`drpo_sim.explore.controls`): every one sets a real parameter."""

from __future__ import annotations

import numpy as np
import pytest

from drpo_sim import objectives
from drpo_sim.config import PAPER_METHODS
from drpo_sim.explore import controls as ctl


def test_every_control_maps_onto_a_real_parameter():
    names = {c.name for c in ctl.GEOMETRY_CONTROLS}
    for obj_name, mapping in ctl.PARAM_CONTROLS.items():
        assert obj_name in objectives.available()
        fields = set(objectives.get(obj_name).params)
        assert set(mapping) <= fields, obj_name
        assert set(mapping.values()) <= names, obj_name
    values = ctl.default_values()
    for name in objectives.available():
        obj = ctl.build_objective(name, values)
        for param, control in ctl.PARAM_CONTROLS.get(name, {}).items():
            assert obj.params[param] == values[control]
    assert ctl.build_objective("drpo", {**values, "drpo_delta": 2.5}) == objectives.get("drpo", delta=2.5)


def test_export_values_are_a_subset_with_the_defaults():
    full = ctl.by_name(ctl.GEOMETRY_CONTROLS)
    for c in ctl.export_controls():
        assert set(c.values) <= set(full[c.name].values) and c.default == full[c.name].default
    with pytest.raises(ValueError, match="unknown objective.*available: pg_is"):
        ctl.check_objectives(["drpo", "nope"])


def test_the_default_selection_is_the_papers_methods():
    # the explorer's default (was explore.controls.DEFAULT_OBJECTIVES) is drpo_sim.config.PAPER_METHODS
    assert ctl.check_objectives(list(PAPER_METHODS)) == list(PAPER_METHODS)


def test_corrected_entries_are_the_registry_corrections_of_grpo():
    assert ctl.entries()[: len(objectives.available())] == objectives.available()
    assert [ctl.split(n) for n in ctl.CORRECTED] == [("grpo", c) for c in objectives.corrections()]
    values = {**ctl.default_values(), "eps_low": 0.1, "eps_high": 0.4}
    for name in ctl.CORRECTED:
        correction = ctl.split(name)[1]
        obj = ctl.build_objective(name, values)
        assert obj == objectives.get("grpo", correction=correction, eps_low=0.1, eps_high=0.4)
        assert ctl.controls_of(name) == ("eps_low", "eps_high") and ctl.reads_gap(name)
    assert ctl.check_objectives(["drpo", "grpo+tis"]) == ["drpo", "grpo+tis"]
    # the gap is read exactly by the objectives that read pi_old
    assert [n for n in objectives.available() if ctl.reads_gap(n)] == [
        n for n in objectives.available() if objectives.get(n).needs_old]
    gap = ctl.by_name(ctl.GEOMETRY_CONTROLS)["gap"]
    assert gap.default == 1.0 and min(gap.values) == 0.1 and max(gap.values) == 10.0
    assert np.all(np.diff(np.log10(gap.values)) < 0.11)  # log10 b from -1 to 1 in steps of about 0.1
    assert 9 <= len(ctl.EXPORT_VALUES["gap"]) <= 13 and 1.0 in ctl.EXPORT_VALUES["gap"]
