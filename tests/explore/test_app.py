"""The explorer's server app (:mod:`drpo_sim.explore.app`): one session, driven without a browser."""

from __future__ import annotations

import numpy as np
from bokeh.document import Document

from drpo_sim.explore import controls as ctl
from drpo_sim.explore.app import MAX_STEPS_PER_TICK, STEPS_PER_TICK, Explorer


def test_app_session_streams_the_run_and_restarts_it_when_its_settings_change():
    ex = Explorer(Document(), ["drpo", "grpo"])

    def steps() -> int:
        return len(ex.live_views.sources["drpo"].data["step"])

    ex.start()
    ex.tick()
    assert steps() == STEPS_PER_TICK
    ex.tick()  # later ticks take as many steps as fit the time budget
    assert STEPS_PER_TICK < steps() == ex.run.step <= STEPS_PER_TICK + MAX_STEPS_PER_TICK
    assert "running" in ex.live_views.status.text
    assert ex.live_views.lines["drpo"][0].visible and not ex.live_views.lines["spo"][0].visible
    ex.geo.sliders["mu"].value = 0  # mu is no setting of the run: it goes on
    assert steps() == ex.run.step > 0
    ex.geo.sliders["drpo_delta"].value = 5  # DRPO's delta is: the run starts over
    assert steps() == 0 and ex.run is None
    ex.tick()
    assert steps() == STEPS_PER_TICK
    assert ex.run.objs["drpo"].delta == ctl.by_name(ctl.GEOMETRY_CONTROLS)["drpo_delta"].values[5]
    ex.live_views.precision.value = "bf16"
    assert steps() == 0 and ex.run is None
    ex.stop()
    assert ex.callback is None and "stopped" in ex.live_views.status.text


def test_gap_redraws_the_curves_but_leaves_the_live_run_going():
    ex = Explorer(Document(), ["grpo", "grpo+tis", "minirl"])
    gap = ctl.by_name(ctl.GEOMETRY_CONTROLS)["gap"]
    w0 = {n: np.asarray(ex.geo.curves[n].data["w"]) for n in ("grpo", "grpo+tis", "minirl")}
    ex.start()
    ex.tick()
    ex.geo.sliders["gap"].value = gap.values.index(4.0)  # no setting of the run: it goes on
    assert ex.run is not None and ex.run.step == STEPS_PER_TICK
    np.testing.assert_array_equal(ex.geo.curves["grpo"].data["w"], w0["grpo"])  # grpo does not read pi_old
    for name in ("grpo+tis", "minirl"):
        assert not np.array_equal(ex.geo.curves[name].data["w"], w0[name]), name
    assert "b = 4" in ex.geo.gap_text.text
    ex.stop()
