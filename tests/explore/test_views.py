"""The explorer's Bokeh views (:mod:`drpo_sim.explore.views`), Python side: what the server sends."""

from __future__ import annotations

import numpy as np

from drpo_sim import objectives
from drpo_sim.explore import controls as ctl
from drpo_sim.explore import data
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
