"""drpo_sim.config: the one precedence rule (``resolve``), the parsers of values given as text, and
the checks of the declared defaults."""

from __future__ import annotations

import math
import re

import pytest

from drpo_sim import config, objectives
from drpo_sim.config import (
    IMAGE_FORMATS,
    NOISE_PRESETS,
    PROFILES,
    check_profile,
    parse_formats,
    parse_names,
    parse_param,
    parse_params,
    parse_value,
    resolve,
)
from drpo_sim.offpolicy import OffPolicyConfig
from drpo_sim.sim import SimConfig

# ---------------------------------------------------------------------------------------------
# resolve: defaults < file < preset < flags


def test_resolve_precedence_file_then_preset_then_flags():
    file = {"noise_std": 0.3, "precision": "fp16", "staleness": 2, "lr": 0.01}
    # nothing given: no overrides, the configuration class's own defaults apply
    assert resolve() == {} and resolve(None, None, None) == {}
    assert SimConfig.from_flat(resolve()) == SimConfig()
    # the file alone
    assert resolve(file) == file
    # the preset overrides the file's fields it names and keeps the others
    fp8 = NOISE_PRESETS["fp8"]
    assert resolve(file, "fp8") == {**file, **fp8}
    assert resolve(file, "fp8")["precision"] == "fp8_e4m3" and resolve(file, "fp8")["staleness"] == 2
    # flags override both
    got = resolve(file, "fp8", {"noise_std": 0.7, "top_k": 5})
    assert got == {**file, **fp8, "noise_std": 0.7, "top_k": 5}
    # a preset alone, flags alone
    assert resolve(preset="bf16") == NOISE_PRESETS["bf16"]
    assert resolve(flags={"lr": 0.5}) == {"lr": 0.5}
    # built into a configuration, every field no source names keeps the class's default
    cfg = SimConfig.from_flat(resolve({"staleness": 2, "noise_std": 0.3}, "fp8", {"lr": 0.5}))
    default = SimConfig()
    assert (cfg.offpolicy.staleness, cfg.offpolicy.noise_std, cfg.offpolicy.precision, cfg.train.lr) == (
        2, fp8["noise_std"], fp8["precision"], 0.5)
    assert cfg.train.steps == default.train.steps and cfg.env == default.env
    assert cfg.offpolicy.top_k == default.offpolicy.top_k


def test_resolve_a_none_flag_is_unset():
    file = {"noise_std": 0.3, "staleness": 2}
    got = resolve(file, "bf16", {"noise_std": None, "staleness": None, "lr": None, "top_k": 0})
    # None never overrides, and never appears; a falsy value that is not None does override
    assert got == {"noise_std": NOISE_PRESETS["bf16"]["noise_std"], "precision": "bf16", "staleness": 2, "top_k": 0}
    assert "lr" not in got


def test_resolve_does_not_modify_its_inputs():
    file, flags = {"noise_std": 0.3}, {"noise_std": 0.4}
    before = {k: dict(v) for k, v in NOISE_PRESETS.items()}
    resolve(file, "fp8", flags)
    assert file == {"noise_std": 0.3} and flags == {"noise_std": 0.4}
    assert NOISE_PRESETS == before


def test_resolve_unknown_preset_names_the_valid_ones_and_where():
    with pytest.raises(ValueError) as info:
        resolve({}, "fp4")
    msg = str(info.value)
    assert msg == "--preset 'fp4': valid presets are " + ", ".join(NOISE_PRESETS)
    with pytest.raises(ValueError, match=r"^sweep\.toml: preset 'fp4': valid presets are bf16, fp8$"):
        resolve({"noise_std": 0.1}, "fp4", where="sweep.toml: preset")


def test_noise_presets_are_valid_offpolicy_configurations():
    """Every preset names only off-policy fields and builds a configuration (calibration against
    the published sizes: tests/test_offpolicy.py)."""
    assert set(NOISE_PRESETS) == {"bf16", "fp8"}
    for name, fields in NOISE_PRESETS.items():
        cfg = OffPolicyConfig(**fields)
        assert not cfg.on_policy, name
        assert SimConfig.from_flat(resolve(preset=name)).offpolicy == cfg


# ---------------------------------------------------------------------------------------------
# parsing


def test_parse_formats():
    assert parse_formats("png") == ("png",)
    assert parse_formats("png,pdf") == ("png", "pdf")
    assert parse_formats(" PNG , svg ,") == ("png", "svg")
    assert set(IMAGE_FORMATS) == {"png", "pdf", "svg"}
    with pytest.raises(ValueError, match=r"^--formats: unsupported tiff; choose from png, pdf, svg$"):
        parse_formats("png,tiff")
    with pytest.raises(ValueError, match=r"^--formats: unsupported gif, jpg; choose from"):
        parse_formats("gif,jpg")
    for empty in ("", ",", " , "):
        with pytest.raises(ValueError, match="unsupported empty list"):
            parse_formats(empty)


def test_parse_names():
    assert parse_names("pg_is,drpo") == ["pg_is", "drpo"]
    assert parse_names(" pg_is , ,drpo, ") == ["pg_is", "drpo"]
    assert parse_names("") == [] and parse_names([]) == []
    assert parse_names(("grpo", " spo ", "")) == ["grpo", "spo"]
    assert parse_names(iter(["a"])) == ["a"]
    assert parse_names("drpo,drpo") == ["drpo", "drpo"]  # duplicates are the caller's to refuse


@pytest.mark.parametrize(
    "text, expected",
    [
        ("3", 3), ("-2", -2), (" 7 ", 7), ("2.5", 2.5), ("1e3", 1000.0), ("-0.25", -0.25),
        ("true", True), ("False", False), ("TRUE", True),
        ("none", None), ("None", None), ("null", None),
        ("drpo", "drpo"), ("fp8_e4m3", "fp8_e4m3"), ("", ""),
    ],
)
def test_parse_value(text, expected):
    got = parse_value(text)
    assert got == expected and type(got) is type(expected)


def test_parse_value_special_floats():
    assert math.isnan(parse_value("nan")) and parse_value("inf") == math.inf


def test_parse_param_and_params():
    assert parse_param("drpo.delta=2.5") == ("drpo", "delta", 2.5)
    assert parse_param(" ppo.dual_clip = none") == ("ppo", "dual_clip", None)
    assert parse_param("dppo_tv.delta_low=1") == ("dppo_tv", "delta_low", 1)
    for bad in ("drpo.delta", "delta=2.5", "drpo=2.5", ".delta=1", "drpo.=1", "=1"):
        with pytest.raises(ValueError, match=r"expected METHOD\.NAME=VALUE, e\.g\. drpo\.delta=2\.5") as info:
            parse_param(bad)
        assert repr(bad) in str(info.value)
    assert parse_params(None) == {} and parse_params([]) == {}
    assert parse_params(["drpo.delta=2.5", "spo.eps=5", "drpo.delta=0.5", "ppo.eps_low=0.1"]) == {
        "drpo": {"delta": 0.5},  # the last value of a repeated parameter wins
        "spo": {"eps": 5},
        "ppo": {"eps_low": 0.1},
    }
    # what parse_params gives is what the registry takes
    for method, params in parse_params(["drpo.delta=2.5", "ppo.dual_clip=3"]).items():
        objectives.get(method, **params)


# ---------------------------------------------------------------------------------------------
# profiles and the declared defaults


def test_check_profile():
    assert PROFILES == ("quick", "full")
    for name in PROFILES:
        assert check_profile(name) == name
    with pytest.raises(ValueError, match=r"^unknown profile 'huge'; valid: quick, full$"):
        check_profile("huge")


def test_default_objective_lists_are_registered_objectives():
    registered = set(objectives.available())
    for name in ("PAPER_METHODS", "REPLAY_OBJECTIVES", "LAB_OBJECTIVES"):
        names = getattr(config, name)
        assert names and set(names) <= registered and len(set(names)) == len(names), name
    assert config.PAPER_METHODS == ("pg_is", "grpo", "spo", "dppo_tv", "drpo")
    assert config.LAB_PRECISIONS[0] == "fp32"  # the on-policy control
    assert config.VERDICTS == ("supported", "not supported", "inconclusive", "not testable here")


def test_check_positive_ints_names_the_class_and_field():
    from dataclasses import dataclass

    from drpo_sim.config import check_positive_ints

    @dataclass
    class Sizes:
        a: object = 1
        b: object = 2

    check_positive_ints(Sizes(), "a", "b")
    for bad in (0, -3, 1.0, True, "2", None):
        with pytest.raises(ValueError, match=rf"^Sizes\.b must be a positive integer, got {re.escape(repr(bad))}$"):
            check_positive_ints(Sizes(b=bad), "a", "b")
