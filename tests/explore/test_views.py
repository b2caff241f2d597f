"""The explorer's Bokeh views (:mod:`drpo_sim.explore.views`), Python side: what the server sends."""

from __future__ import annotations

import re

import numpy as np

from drpo_sim import geometry, objectives
from drpo_sim.explore import controls as ctl
from drpo_sim.explore import data, views
from drpo_sim.explore.views import build_geometry


def test_geometry_views_show_the_selected_objectives_at_the_chosen_controls_on_cpu():
    g = build_geometry(ctl.GEOMETRY_CONTROLS, ["drpo", "ppo"])
    choices = ctl.by_name(ctl.GEOMETRY_CONTROLS)
    g.sliders["drpo_delta"].value = choices["drpo_delta"].values.index(0.5)
    g.sliders["mu"].value = choices["mu"].values.index(0.3)
    g.adv_sign.active = 1
    g.fill()
    src = g.curves["drpo"].data
    pi = np.asarray(src["pi"])
    np.testing.assert_array_equal(src["w"], objectives.get("drpo", delta=0.5).weight(np.log(pi), np.log(0.3), -1.0))
    np.testing.assert_allclose(src["x"], data.to_logit(pi))
    assert g.lines["drpo"].visible and g.lines["ppo"].visible and not g.lines["spo"].visible
    assert not g.plane_figs["spo"].visible
    assert np.isclose(g.mu_line.location, data.to_logit(0.3))
    rows = g.bounds.data
    drpo_b = [p for p, o in zip(rows["pi"], rows["objective"]) if o == "drpo"]
    assert drpo_b == []  # pi* = mu - delta = 0.3 - 0.5 < 0: DRPO's weight stays positive over the whole axis
    ppo_b = [p for p, o in zip(rows["pi"], rows["objective"]) if o == "ppo"]
    np.testing.assert_allclose(ppo_b, [0.3 * 0.8], rtol=1e-9)
    img = g.planes["drpo"].data["image"][0]
    np.testing.assert_array_equal(img, data.plane_codes(objectives.get("drpo", delta=0.5), np.array([-1.0]))[0])


def test_views_at_b_1_are_todays_for_every_entry_on_cpu():
    """The gap control at its default (b = 1): every curve and plane as without it (pi_old = mu)."""
    g = build_geometry(ctl.GEOMETRY_CONTROLS, ctl.entries())
    g.fill()
    vals = g.values()
    assert vals["gap"] == 1.0 and not g.old_line.visible
    mu = vals["mu"]
    for name in ctl.entries():
        obj = ctl.build_objective(name, vals)
        src = g.curves[name].data
        pi = np.asarray(src["pi"])
        np.testing.assert_array_equal(pi, data.pi_axis(mu))
        want = geometry.single_token_weight(obj, np.log(pi), np.full_like(pi, np.log(mu)), 1.0)  # logp_old: mu
        np.testing.assert_array_equal(src["w"], want, err_msg=name)
        np.testing.assert_array_equal(g.planes[name].data["image"][0], data.plane_codes(obj, np.array([1.0]))[0])


def test_gap_control_moves_the_objectives_that_read_pi_old_on_cpu():
    names = ["grpo", "minirl", "grpo+tis", "grpo+icepop"]
    g = build_geometry(ctl.GEOMETRY_CONTROLS, names)
    choices = ctl.by_name(ctl.GEOMETRY_CONTROLS)
    g.sliders["gap"].value = choices["gap"].values.index(4.0)
    g.fill()
    mu = choices["mu"].default
    before = {}
    for name in names:
        obj = ctl.build_objective(name, g.values())
        pi = np.asarray(g.curves[name].data["pi"])
        want = geometry.single_token_weight(obj, np.log(pi), np.log(mu), 1.0, logp_old=np.log(4.0 * mu))
        np.testing.assert_array_equal(g.curves[name].data["w"], want, err_msg=name)
        before[name] = np.asarray(g.curves[name].data["w"])
    assert np.isclose(np.max(before["grpo+tis"]), 0.5, rtol=1e-12)  # TIS's cap 2 at b = 4
    assert g.old_line.visible and np.isclose(g.old_line.location, data.to_logit(4.0 * mu))
    assert "pi_old</i> = 0.04" in g.gap_text.text
    img = g.planes["minirl"].data["image"][0]
    np.testing.assert_array_equal(img, data.plane_codes(objectives.get("minirl"), np.array([1.0]), gap=4.0)[0])
    assert np.any(img == data.NOT_DRAWN)  # mu >= 1/4: no pi_old < 1
    # b mu >= 1: the objectives that read pi_old are not drawn; GRPO is
    g.sliders["mu"].value = choices["mu"].values.index(0.5)
    g.fill()
    assert "not drawn" in g.gap_text.text and not g.old_line.visible
    for name in ("minirl", "grpo+tis", "grpo+icepop"):
        assert all(len(v) == 0 for v in g.curves[name].data.values()), name
    assert len(g.curves["grpo"].data["w"]) == len(data.pi_axis(0.5))
    assert "minirl" not in g.bounds_text.text
    named = set(re.findall(r"[a-z_+]+", views.gap_help_html(ctl.entries()).split("every other")[0]))
    assert [n for n in ctl.entries() if n in named] == [n for n in ctl.entries() if ctl.reads_gap(n)]
