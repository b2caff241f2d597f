"""The engine's gap control in a real headless Chromium: the server app and an exported page.

The browser, the server and the page helpers are those of ``tests/e2e/test_explore_browser.py``
(its module-scoped ``page``, ``server`` and ``app`` fixtures, here a browser and a server of this
module's own): the tests move the gap slider (a real key press on its handle, then model values set
through BokehJS), read the plotted weights back out of the page and hold them against the registry
at ``logp_old = log(b mu)``. Without Chromium they fail, as those do.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from bokeh.embed import file_html
from bokeh.resources import INLINE
from e2e import test_explore_browser as browser

from drpo_sim import geometry
from drpo_sim.explore import controls as ctl
from drpo_sim.explore.export import build_page

pytestmark = pytest.mark.slow(seconds=25)

# the fixtures of the explorer's browser tests (module scope: one browser and one server for this module)
page = browser.page
server = browser.server
app = browser.app

CHOICES = ctl.by_name(ctl.GEOMETRY_CONTROLS)
SHOWN = ("grpo", "minirl", "grpo+tis")


def registry_weight(name: str, pi: np.ndarray, mu: float, adv: float, b: float) -> np.ndarray:
    """The registry's weight of entry ``name`` (controls at their defaults) at ``pi_old = b mu``."""
    obj = ctl.build_objective(name, ctl.default_values(ctl.GEOMETRY_CONTROLS))
    return geometry.single_token_weight(obj, np.log(pi), np.log(mu), adv, logp_old=np.log(b * mu))


def show(p: Any, names: tuple[str, ...]) -> None:
    entries = ctl.entries()
    p.set("objectives", "active", [entries.index(n) for n in names])
    for n in names:
        p.wait(f"return M('{n}').visible", 20, f"the {n} curve")


def test_gap_slider_redraws_the_curves_that_read_pi_old(app):
    from selenium.webdriver.common.keys import Keys

    p = app
    p.set("views", "active", 0)
    show(p, SHOWN)
    mu = CHOICES["mu"].default
    p.wait("return M('curve_minirl').data.w.length > 0", 20, "the minirl curve")
    grpo_pi, grpo_w = p.curve("grpo")
    pi, w = p.curve("minirl")
    np.testing.assert_allclose(w, registry_weight("minirl", pi, mu, 1.0, 1.0), rtol=1e-12)

    # a real key press on the gap slider moves b one value up
    i0 = CHOICES["gap"].default_index
    b = CHOICES["gap"].values[i0 + 1]
    handle = p.js("return V('gap').shadow_el.querySelector('.noUi-handle')")
    handle.send_keys(Keys.ARROW_RIGHT)
    p.wait(f"return M('gap').value === {i0 + 1}", 10, "the slider to move")
    p.wait(f"return M('gap_text').text.includes('b = {b:g}:')", 20, "the views at the new gap")
    pi, w_b = p.curve("minirl")
    assert not np.array_equal(w_b, w)
    np.testing.assert_allclose(w_b, registry_weight("minirl", pi, mu, 1.0, b), rtol=1e-12)

    # b = 4 through the page's model: TIS with cap 2 halves GRPO's weight; GRPO itself does not move
    p.set("gap", "value", CHOICES["gap"].values.index(4.0))
    p.wait("return M('gap_text').text.includes('b = 4:')", 20, "the views at b = 4")
    pi, w = p.curve("grpo+tis")
    np.testing.assert_allclose(w, registry_weight("grpo+tis", pi, mu, 1.0, 4.0), rtol=1e-12)
    assert np.isclose(w.max(), 0.5, rtol=1e-12)
    np.testing.assert_array_equal(p.curve("grpo")[1], grpo_w)
    assert p.js("return M('old_line').visible")
    p.shot("app_gap_view.png")

    # mu = 0.5: b mu = 2, no pi_old < 1; the objectives that read it are not drawn
    p.set("mu", "value", CHOICES["mu"].values.index(0.5))
    p.wait("return M('curve_minirl').data.w.length === 0 && M('curve_grpo+tis').data.w.length === 0", 20,
           "the curves that read pi_old to go")
    assert len(p.curve("grpo")[1]) > 0 and not p.js("return M('old_line').visible")
    assert "not drawn" in p.js("return M('gap_text').text")
    assert p.severe() == []


def test_exported_page_switches_to_the_gap(page, tmp_path):
    keep = {"mu": (0.01, 0.5), "adv_size": (1.0,), "gap": (1.0, 4.0, 10.0), "eps_low": (0.2,), "eps_high": (0.28,),
            "spo_eps": (0.2,), "delta_low": (0.15,), "delta_high": (0.15,), "kl_delta": (0.05,), "drpo_delta": (0.15,)}
    choices = tuple(c.subset(keep[c.name]) for c in ctl.GEOMETRY_CONTROLS)
    layout, _ = build_page(list(SHOWN), choices)
    out = tmp_path / "explorer.html"
    out.write_text(file_html(layout, INLINE, title="gap"), encoding="utf-8")
    page.load(out.as_uri())
    gaps = ctl.by_name(choices)["gap"].values
    mu = 0.01
    pi, w1 = page.curve("minirl")
    np.testing.assert_allclose(w1, registry_weight("minirl", pi, mu, 1.0, 1.0), rtol=1e-6)  # stored as float32
    for b in (10.0, 4.0):
        page.set("gap", "value", gaps.index(b))
        page.wait(f"return M('gap_text').text.includes('b = {b:g}:')", 10, f"the exported views at b = {b:g}")
        for name in ("minirl", "grpo+tis"):
            pi, w = page.curve(name)
            np.testing.assert_allclose(w, registry_weight(name, pi, mu, 1.0, b), rtol=1e-6, err_msg=name)
    assert not np.array_equal(page.curve("minirl")[1], w1)
    page.set("views", "active", 1)  # the planes at b = 4: columns with mu >= 1/4 not drawn for minirl, grpo+tis
    page.shot("export_gap_plane_view.png")
    page.set("views", "active", 0)
    page.set("mu", "value", 1)  # mu = 0.5, b = 4: not drawn
    page.wait("return M('curve_minirl').data.w.length === 0", 10, "the exported curve to go")
    assert page.js("return M('curve_minirl').data.pi.length") == 0 and len(page.curve("grpo")[1]) > 0
    assert page.severe() == [], "errors in the browser console"
