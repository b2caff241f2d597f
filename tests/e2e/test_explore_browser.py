"""The trust-region explorer in a real headless Chromium (Debian's ``chromium`` and ``chromium-driver``).

The app is served by ``python -m drpo_sim.cli explore --port 0 --no-browser`` in a subprocess; the
tests move controls in the page (a real key press on a slider handle, a real click on a toggle,
model values set through BokehJS), read the plotted data back out of the page's data sources and
hold it against the registry computed here, start and stop the live run with real clicks, and open
the exported page from disk. A screenshot of each view goes to ``$DRPO_SIM_ARTIFACTS`` (default
``test-artifacts/explore/`` under the repository root).

Without Chromium these tests fail (they do not skip): ``make test`` installs it.
"""

from __future__ import annotations

import json
import os
import queue
import re
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from bokeh.embed import file_html
from bokeh.resources import INLINE

from drpo_sim import cli, geometry, objectives
from drpo_sim.config import PAPER_METHODS
from drpo_sim.explore import controls as ctl
from drpo_sim.explore import data
from drpo_sim.explore.export import build_page

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
FLAGS = ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-quic",
         "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--window-size=1500,1250")
CHOICES = ctl.by_name(ctl.GEOMETRY_CONTROLS)

# helpers defined in the page before every script: the document, a model by name, a view by model name
PRELUDE = """
const doc = window.Bokeh ? Bokeh.documents[0] : undefined;
const M = (n) => doc.get_model_by_name(n);
function* walk(v) { yield v; for (const c of v.children()) yield* walk(c) }
const V = (n) => {
  for (const r of Bokeh.index.roots) for (const v of walk(r)) if (v.model.name === n) return v
  return null
};
"""
READY = ("return !!(window.Bokeh && Bokeh.documents.length && Bokeh.index.roots.length "
         "&& Bokeh.documents[0].get_model_by_name('weight_view'))")


def artifacts() -> Path:
    out = Path(os.environ.get("DRPO_SIM_ARTIFACTS", REPO / "test-artifacts" / "explore"))
    out.mkdir(parents=True, exist_ok=True)
    return out


class Page:
    """A Selenium driver with the helpers the tests use."""

    def __init__(self, driver: Any):
        self.d = driver

    def js(self, code: str, *args: Any) -> Any:
        return self.d.execute_script(PRELUDE + code, *args)

    def wait(self, code: str, timeout: float = 30.0, what: str = "") -> Any:
        end = time.monotonic() + timeout
        while True:
            value = self.js(code)
            if value:
                return value
            if time.monotonic() > end:
                raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what or code}")
            time.sleep(0.1)

    def load(self, url: str) -> None:
        self.d.get(url)
        self.wait(READY, 60, "the Bokeh document")
        self.wait("return V('weight_view') !== null && V('weight_view').canvas_view !== undefined", 30, "the plots")
        self.d.get_log("browser")  # start the console log afresh

    def curve(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        pi, w = self.js(f"const d = M('curve_{name}').data; return [Array.from(d.pi), Array.from(d.w)]")
        return np.asarray(pi, float), np.asarray(w, float)

    def set(self, model: str, attr: str, value: Any) -> None:
        self.js(f"M('{model}').{attr} = arguments[0]", value)

    def shot(self, name: str) -> Path:
        self.d.execute_script("window.scrollTo(0, 0)")
        time.sleep(0.6)  # let the canvas repaint
        path = artifacts() / name
        assert self.d.save_screenshot(str(path)), path
        assert path.stat().st_size > 20_000, f"{path} looks empty"
        return path

    def severe(self) -> list[dict]:
        return [e for e in self.d.get_log("browser") if e.get("level") == "SEVERE"]


@pytest.fixture(scope="module")
def page(tmp_path_factory) -> Iterator[Page]:
    missing = [str(p) for p in (CHROMIUM, CHROMEDRIVER) if not p.exists()]
    if missing:
        pytest.fail(f"{' and '.join(missing)} not found: `make test` installs chromium and chromium-driver",
                    pytrace=False)
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        pytest.fail("selenium is not installed: `make test` installs it", pytrace=False)
    opts = webdriver.ChromeOptions()
    for flag in FLAGS:
        opts.add_argument(flag)
    opts.add_argument(f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}")
    opts.binary_location = str(CHROMIUM)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=opts)
    try:
        yield Page(driver)
    finally:
        driver.quit()


class AppServer:
    """``python -m drpo_sim.cli explore --port 0 --no-browser`` in a subprocess, started at once."""

    def __init__(self) -> None:
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "drpo_sim.cli", "explore", "--port", "0", "--no-browser"],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=REPO,
        )
        self.lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=lambda: [self.lines.put(line) for line in self.proc.stdout], daemon=True).start()
        self._url: str | None = None

    @property
    def url(self) -> str:
        """The address the server prints (waits for it, at most 90 s)."""
        seen, end = [], time.monotonic() + 90
        while self._url is None:
            try:
                line = self.lines.get(timeout=max(0.1, end - time.monotonic()))
            except queue.Empty:
                raise AssertionError(f"the explorer printed no address within 90 s: {seen}") from None
            seen.append(line)
            m = re.search(r"http://\S+", line)
            self._url = m.group(0) if m else None
        return self._url

    def close(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture(scope="module")
def server() -> Iterator[AppServer]:
    s = AppServer()
    try:
        yield s
    finally:
        s.close()


@pytest.fixture
def app(server, page) -> Page:
    """The app in the browser (the server boots while the browser starts; loaded once, kept across tests)."""
    if not page.d.current_url.startswith(server.url):
        page.load(server.url)
    page.d.get_log("browser")
    return page


def registry_weight(name: str, pi: np.ndarray, mu: float, adv: float, **params: Any) -> np.ndarray:
    return objectives.get(name, **params).weight(np.log(pi), np.log(mu), adv)


def test_app_controls_redraw_the_views(app):
    from selenium.webdriver.common.keys import Keys

    page = app
    page.set("views", "active", 0)
    mu0 = CHOICES["mu"].default
    pi, w = page.curve("drpo")
    assert mu0 in pi
    delta0 = CHOICES["drpo_delta"].default
    np.testing.assert_allclose(w, registry_weight("drpo", pi, mu0, 1.0, delta=delta0), rtol=1e-12)

    # a real key press on DRPO's delta slider moves it one value to the right
    i0 = CHOICES["drpo_delta"].default_index
    handle = page.js("return V('drpo_delta').shadow_el.querySelector('.noUi-handle')")
    handle.send_keys(Keys.ARROW_RIGHT)
    page.wait(f"return M('drpo_delta').value === {i0 + 1}", 10, "the slider to move")
    delta = CHOICES["drpo_delta"].values[i0 + 1]
    last = float(w[-1])
    page.wait(f"const w = M('curve_drpo').data.w; return w[w.length - 1] !== {last!r}", 20, "the DRPO curve to change")
    pi, w = page.curve("drpo")
    np.testing.assert_allclose(w, registry_weight("drpo", pi, mu0, 1.0, delta=delta), rtol=1e-12)

    # mu set through the page's model
    mu = 0.5
    page.set("mu", "value", CHOICES["mu"].values.index(mu))
    page.wait(f"return Array.from(M('curve_drpo').data.pi).includes({mu})", 20, "the curves at the new mu")
    pi, w = page.curve("drpo")
    np.testing.assert_allclose(w, registry_weight("drpo", pi, mu, 1.0, delta=delta), rtol=1e-12)
    ppo_pi, ppo_w = page.curve("grpo")
    np.testing.assert_array_equal(ppo_w, registry_weight("grpo", ppo_pi, mu, 1.0, eps_low=0.2, eps_high=0.28))

    # a real click on "A < 0"
    page.js("return V('adv_sign').shadow_el.querySelectorAll('.bk-btn')[1]").click()
    page.wait("return M('adv_sign').active === 1", 10, "the sign toggle")
    page.wait("return M('curve_drpo').data.w[0] < 1", 20, "the curves for A < 0")
    pi, w = page.curve("drpo")
    np.testing.assert_allclose(w, registry_weight("drpo", pi, mu, -1.0, delta=delta), rtol=1e-12)
    bounds = page.js("const d = M('bounds').data; return [Array.from(d.objective), Array.from(d.pi)]")
    drpo_b = [p for o, p in zip(*bounds) if o == "drpo"]
    np.testing.assert_allclose(drpo_b, [mu - delta], rtol=1e-9)  # DRPO's weight turns corrective at mu - delta
    assert "drpo: pi = 0.2" in page.js("return M('bounds_text').text")
    page.shot("app_weight_view.png")

    page.set("views", "active", 1)
    img, shape = page.js("const im = M('plane_drpo').data.image[0]; return [Array.from(im), Array.from(im.shape)]")
    want = data.plane_codes(objectives.get("drpo", delta=delta), np.array([-1.0]))[0]
    assert tuple(shape) == want.shape
    np.testing.assert_array_equal(np.asarray(img).reshape(shape), want)
    assert page.js("return M('plane_view_drpo').visible && !M('plane_view_ppo').visible")
    page.shot("app_plane_view.png")
    assert page.severe() == []


def test_live_run_starts_and_stops(app):
    page = app
    page.set("views", "active", 2)
    page.wait("return V('start') !== null && V('start').button_el.offsetParent !== null", 10, "the live tab")
    page.js("return V('start').button_el").click()
    shown = list(PAPER_METHODS)
    counts = ", ".join(f"M('live_{n}').data.step.length" for n in shown)
    lengths = f"return [{counts}]"
    page.wait(f"return Math.min({counts}) >= 25", 60, "the live curves to grow")
    assert "running" in page.js("return M('live_status').text")
    reward = page.js("return Array.from(M('live_drpo').data.reward)")
    assert np.all(np.isfinite(reward)) and np.all((np.asarray(reward) >= 0) & (np.asarray(reward) <= 1))
    page.shot("app_live_run.png")
    page.js("return V('stop').button_el").click()
    page.wait("return M('live_status').text.includes('stopped')", 10, "the run to stop")
    time.sleep(0.5)  # a tick already under way may still land
    before = page.js(lengths)
    time.sleep(1.5)
    after = page.js(lengths)
    assert before == after and min(after) >= 25, (before, after)
    assert page.js("return M('live_reward_spo').visible && !M('live_reward_ppo').visible")
    assert page.severe() == []


def test_exported_page_renders_from_disk(page, tmp_path, capsys):
    out = tmp_path / "explorer.html"
    assert cli.main(["explore", "--export", str(out)]) == 0  # `drpo-sim explore --export FILE`
    size = out.stat().st_size
    # 3.49 MB before the gap control and the corrected entries, 4.20 MB with them
    assert f"({size / 1e6:.1f} MB)" in capsys.readouterr().out and size < 6e6
    html = out.read_text()
    labels = ctl.by_name(ctl.export_controls())["gap"].labels()  # the gap grid the page holds
    assert labels == ["0.1", "0.2", "0.25", "0.5", "0.8", "1", "1.25", "2", "4", "5", "10"]
    assert '"labels",' + json.dumps(labels, separators=(",", ":")) in html
    assert f'\\"n_gap\\": {len(labels)}' in html and "grpo+icepop" in html
    assert not re.search(r"<(script|link)[^>]+(src|href)\s*=\s*[\"']?(https?:)?//", html, re.IGNORECASE), "an external"

    page.load(out.as_uri())
    for name in ("weight_view", "plane_view_drpo", "plane_view_spo"):
        assert page.js(f"return V('{name}') !== null && V('{name}').canvas_view !== undefined"), name
    export = ctl.by_name(ctl.export_controls())
    delta = 2.5
    page.set("drpo_delta", "value", export["drpo_delta"].values.index(delta))
    mu = 0.1
    page.set("mu", "value", export["mu"].values.index(mu))
    page.wait(f"return Array.from(M('curve_drpo').data.pi).includes({mu})", 10, "the exported curves to switch")
    pi, w = page.curve("drpo")
    np.testing.assert_allclose(w, registry_weight("drpo", pi, mu, 1.0, delta=delta), rtol=1e-6)  # stored as float32
    page.js("return V('adv_sign').shadow_el.querySelectorAll('.bk-btn')[1]").click()
    page.wait("return M('curve_drpo').data.w[0] < 1", 10, "the exported curves for A < 0")
    page.set("spo_eps", "value", export["spo_eps"].values.index(1.0))
    pi, w = page.curve("spo")
    np.testing.assert_allclose(w, registry_weight("spo", pi, mu, -1.0, eps=1.0), rtol=1e-6)
    assert page.js("return M('plane_view_spo').title.text") == "spo(eps=1)"
    assert "A = -1" in page.js("return M('region_legend').text")
    page.shot("export_weight_view.png")
    page.set("views", "active", 1)
    page.shot("export_plane_view.png")
    assert page.severe() == [], "errors in the browser console"


# ---------------------------------------------------------------------------------------------
# the engine's gap b = pi_old / mu, in the app and in an exported page

GAP_CHOICES = ctl.by_name(ctl.GEOMETRY_CONTROLS)
GAP_SHOWN = ("grpo", "minirl", "grpo+tis")


def gap_weight(name: str, pi: np.ndarray, mu: float, adv: float, b: float) -> np.ndarray:
    """The registry's weight of entry ``name`` (controls at their defaults) at ``pi_old = b mu``."""
    obj = ctl.build_objective(name, ctl.default_values(ctl.GEOMETRY_CONTROLS))
    return geometry.single_token_weight(obj, np.log(pi), np.log(mu), adv, logp_old=np.log(b * mu))


def show_entries(p: Any, names: tuple[str, ...]) -> None:
    entries = ctl.entries()
    p.set("objectives", "active", [entries.index(n) for n in names])
    for n in names:
        p.wait(f"return M('{n}').visible", 20, f"the {n} curve")


def test_gap_slider_redraws_the_curves_that_read_pi_old(app):
    from selenium.webdriver.common.keys import Keys

    p = app
    p.set("views", "active", 0)
    show_entries(p, GAP_SHOWN)
    mu = GAP_CHOICES["mu"].default
    p.wait("return M('curve_minirl').data.w.length > 0", 20, "the minirl curve")
    grpo_pi, grpo_w = p.curve("grpo")
    pi, w = p.curve("minirl")
    np.testing.assert_allclose(w, gap_weight("minirl", pi, mu, 1.0, 1.0), rtol=1e-12)

    # a real key press on the gap slider moves b one value up
    i0 = GAP_CHOICES["gap"].default_index
    b = GAP_CHOICES["gap"].values[i0 + 1]
    handle = p.js("return V('gap').shadow_el.querySelector('.noUi-handle')")
    handle.send_keys(Keys.ARROW_RIGHT)
    p.wait(f"return M('gap').value === {i0 + 1}", 10, "the slider to move")
    p.wait(f"return M('gap_text').text.includes('b = {b:g}:')", 20, "the views at the new gap")
    pi, w_b = p.curve("minirl")
    assert not np.array_equal(w_b, w)
    np.testing.assert_allclose(w_b, gap_weight("minirl", pi, mu, 1.0, b), rtol=1e-12)

    # b = 4 through the page's model: TIS with cap 2 halves GRPO's weight; GRPO itself does not move
    p.set("gap", "value", GAP_CHOICES["gap"].values.index(4.0))
    p.wait("return M('gap_text').text.includes('b = 4:')", 20, "the views at b = 4")
    pi, w = p.curve("grpo+tis")
    np.testing.assert_allclose(w, gap_weight("grpo+tis", pi, mu, 1.0, 4.0), rtol=1e-12)
    assert np.isclose(w.max(), 0.5, rtol=1e-12)
    np.testing.assert_array_equal(p.curve("grpo")[1], grpo_w)
    assert p.js("return M('old_line').visible")
    p.shot("app_gap_view.png")

    # mu = 0.5: b mu = 2, no pi_old < 1; the objectives that read it are not drawn
    p.set("mu", "value", GAP_CHOICES["mu"].values.index(0.5))
    p.wait("return M('curve_minirl').data.w.length === 0 && M('curve_grpo+tis').data.w.length === 0", 20,
           "the curves that read pi_old to go")
    assert len(p.curve("grpo")[1]) > 0 and not p.js("return M('old_line').visible")
    assert "not drawn" in p.js("return M('gap_text').text")
    assert p.severe() == []


def test_exported_page_switches_to_the_gap(page, tmp_path):
    keep = {"mu": (0.01, 0.5), "adv_size": (1.0,), "gap": (1.0, 4.0, 10.0), "eps_low": (0.2,), "eps_high": (0.28,),
            "spo_eps": (0.2,), "delta_low": (0.15,), "delta_high": (0.15,), "kl_delta": (0.05,), "drpo_delta": (0.15,)}
    choices = tuple(c.subset(keep[c.name]) for c in ctl.GEOMETRY_CONTROLS)
    layout, _ = build_page(list(GAP_SHOWN), choices)
    out = tmp_path / "explorer.html"
    out.write_text(file_html(layout, INLINE, title="gap"), encoding="utf-8")
    page.load(out.as_uri())
    gaps = ctl.by_name(choices)["gap"].values
    mu = 0.01
    pi, w1 = page.curve("minirl")
    np.testing.assert_allclose(w1, gap_weight("minirl", pi, mu, 1.0, 1.0), rtol=1e-6)  # stored as float32
    for b in (10.0, 4.0):
        page.set("gap", "value", gaps.index(b))
        page.wait(f"return M('gap_text').text.includes('b = {b:g}:')", 10, f"the exported views at b = {b:g}")
        for name in ("minirl", "grpo+tis"):
            pi, w = page.curve(name)
            np.testing.assert_allclose(w, gap_weight(name, pi, mu, 1.0, b), rtol=1e-6, err_msg=name)
    assert not np.array_equal(page.curve("minirl")[1], w1)
    page.set("views", "active", 1)  # the planes at b = 4: columns with mu >= 1/4 not drawn for minirl, grpo+tis
    page.shot("export_gap_plane_view.png")
    page.set("views", "active", 0)
    page.set("mu", "value", 1)  # mu = 0.5, b = 4: not drawn
    page.wait("return M('curve_minirl').data.w.length === 0", 10, "the exported curve to go")
    assert page.js("return M('curve_minirl').data.pi.length") == 0 and len(page.curve("grpo")[1]) > 0
    assert page.severe() == [], "errors in the browser console"
