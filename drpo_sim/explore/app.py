"""The explorer as a Bokeh server app: controls on the left, three views in tabs.

Every change of a control recomputes the views in Python (:meth:`GeometryViews.fill`, through
:mod:`drpo_sim.explore.data`) and sends the new arrays to the page; the browser only draws. The live
run (:class:`drpo_sim.explore.live.LiveRun`) advances in a periodic callback, a few steps per
tick, and streams the new points; a change of its settings (objectives, thresholds, engine)
starts it over. BokehJS is served by the Bokeh server from the installed package, so the app
needs no internet connection.
"""

from __future__ import annotations

import logging
import time
import webbrowser
from collections.abc import Callable
from functools import partial
from typing import Any

from bokeh.application import Application
from bokeh.application.handlers.function import FunctionHandler
from bokeh.document import Document
from bokeh.layouts import column, row
from bokeh.models import Div, TabPanel, Tabs
from bokeh.server.server import Server

from drpo_sim.config import PAPER_METHODS
from drpo_sim.explore import controls as ctl
from drpo_sim.explore.live import LiveRun
from drpo_sim.explore.views import build_geometry, build_live, section

TICK_MS = 150
"""Shortest period of the live run's periodic callback."""
STEPS_PER_TICK = 4
"""Steps of the first tick; later ticks take as many steps as fit in ``TICK_BUDGET_MS``."""
TICK_BUDGET_MS = 60.0
MAX_STEPS_PER_TICK = 10
REDRAW_DELAY_MS = 30
IDLE_FACTOR = 3.0
"""The callback's period is at least this many times a tick's duration: the server stays free for the
controls however many objectives train (the period is re-timed when a tick runs long)."""
TITLE = "drpo_sim: trust-region explorer"

INTRO = ("<h3 style='margin:4px 0'>Trust-region explorer</h3>Each objective's gradient is importance-weighted "
         "policy gradient times a weight <i>w</i> (dJ/dlogp = A r w). Move <i>mu</i> towards 0 to see how PPO's "
         "ratio clip, DPPO's probability mask and DRPO's smooth weight treat a rare token. Move the engine gap "
         "<i>b</i> to see the objectives of three policies and the corrections (grpo+tis, grpo+icepop, ...) react "
         "to a trainer that disagrees with the engine.")


LIVE_NOTE = ("The objectives selected on the left, with their thresholds, train on the long-tailed bandit "
             "(drpo_sim.sim: group-relative advantages, Adam), all on the same seeds. A change of the objectives, "
             "their thresholds or the engine starts the run over.")


class Explorer:
    """One browser session of the explorer: its widgets, views and live run."""

    def __init__(self, doc: Document, selected: list[str]):
        self.doc = doc
        self.geo = build_geometry(ctl.GEOMETRY_CONTROLS, selected)
        self.live_choices = ctl.by_name(ctl.LIVE_CONTROLS)
        self.live_views = build_live(ctl.LIVE_CONTROLS)
        self.run: LiveRun | None = None
        self.callback: Any = None
        self.period_ms = TICK_MS
        self._refresh_pending = False
        self.geo.fill()
        self.live_views.show(self.geo.selected())
        self._status("stopped")
        self._wire()
        doc.title = TITLE
        doc.add_root(self.layout())

    # layout ----------------------------------------------------------------------------------
    def layout(self) -> Any:
        lv = self.live_views
        live = row(column(section("Live bandit run"), Div(text=LIVE_NOTE, width=280), *lv.widgets(), width=300),
                   lv.panel())
        tabs = Tabs(tabs=[*self.geo.panels(), TabPanel(child=live, title="Live bandit run")], name="views")
        return row(self.geo.controls_column(INTRO), tabs)

    # callbacks -------------------------------------------------------------------------------
    def _wire(self) -> None:
        g, lv = self.geo, self.live_views
        for s in g.sliders.values():
            s.on_change("value", self._on_geometry)
        g.objectives.on_change("active", self._on_geometry)
        g.adv_sign.on_change("active", self._on_geometry)
        for s in lv.sliders.values():
            s.on_change("value", self._on_live_setting)
        lv.precision.on_change("value", self._on_live_setting)
        lv.start.on_click(self.start)
        lv.stop.on_click(self.stop)
        lv.reset.on_click(self.reset)

    def _on_geometry(self, attr: str, old: Any, new: Any) -> None:
        """A geometry control moved: redraw (a burst of moves, e.g. a slider drag, redraws once)."""
        if self.doc.session_context is None:  # no server (tests): redraw at once
            self._refresh()
        elif not self._refresh_pending:
            self._refresh_pending = True
            self.doc.add_timeout_callback(self._refresh, REDRAW_DELAY_MS)

    def _refresh(self) -> None:
        """Redraw the geometry views; start the live run over if its objectives or thresholds changed."""
        self._refresh_pending = False
        self.geo.fill()
        self.live_views.show(self.geo.selected())
        if self.run is not None and dict(self.run.objs) != self.geo.objectives_shown():
            self._on_live_setting("", None, None)  # objectives or their thresholds changed (mu and A do not matter)

    def _on_live_setting(self, attr: str, old: Any, new: Any) -> None:
        """The run's settings changed: start it over (it keeps running if it was)."""
        if self.run is not None:
            self.run = None
            self._clear()
            self._status("running" if self.callback is not None else "stopped")

    # the live run ----------------------------------------------------------------------------
    def new_run(self) -> LiveRun:
        return LiveRun(self.geo.objectives_shown(), self.live_views.values(self.live_choices))

    def start(self) -> None:
        if self.callback is None:
            self.callback = self.doc.add_periodic_callback(self.tick, self.period_ms)
        self._status("running")

    def stop(self) -> None:
        if self.callback is not None:
            self.doc.remove_periodic_callback(self.callback)
            self.callback = None
        self._status("stopped")

    def reset(self) -> None:
        self.stop()
        self.run = None
        self._clear()
        self._status("stopped")

    def tick(self) -> None:
        """One periodic callback: a few steps of every selected objective, streamed to the page."""
        if not self._connected():  # the browser went away: stop instead of streaming into the void
            self.stop()
            return
        t0 = time.perf_counter()
        if self.run is None:
            self.run = self.new_run()
        new = self.run.advance(self._steps_per_tick())
        for name, pts in new.items():
            if pts["step"]:
                self.live_views.sources[name].stream(pts)
        if self.run.done:
            self.stop()
            return
        self._status("running")
        self._retime(1000.0 * (time.perf_counter() - t0))

    def _steps_per_tick(self) -> int:
        run = self.run
        if run is None or run.step == 0:
            return STEPS_PER_TICK
        per_step_ms = 1000.0 * run.seconds / run.step
        return int(min(MAX_STEPS_PER_TICK, max(1, TICK_BUDGET_MS // max(per_step_ms, 1e-3))))

    def _retime(self, tick_ms: float) -> None:
        """Lengthen (or shorten back) the callback's period to ``IDLE_FACTOR`` times a tick's duration."""
        want = max(TICK_MS, int(IDLE_FACTOR * tick_ms))
        if self.callback is not None and abs(want - self.period_ms) > 0.25 * self.period_ms:
            self.doc.remove_periodic_callback(self.callback)
            self.period_ms = want
            self.callback = self.doc.add_periodic_callback(self.tick, want)

    def _connected(self) -> bool:
        """False once the session has no browser connected (or is gone); True outside a server."""
        ctx = self.doc.session_context
        session = getattr(ctx, "session", None)
        return session is None or (not session.destroyed and session.connection_count > 0)

    def _clear(self) -> None:
        for src in self.live_views.sources.values():
            src.data = {"step": [], "reward": [], "shift": []}

    def _status(self, state: str) -> None:
        run = self.run
        what = run.describe() if run is not None else "new run: " + ", ".join(
            f"{k} {v}" for k, v in self.live_views.values(self.live_choices).items())
        self.live_views.status.text = f"<b>{state}</b> \u00b7 {', '.join(self.geo.selected())} \u00b7 {what}"


def make_document(doc: Document, selected: list[str]) -> None:
    """Bokeh application handler: build the explorer into ``doc``."""
    Explorer(doc, selected)


def serve(port: int = 5006, *, open_browser: bool = True, selected: list[str] | None = None,
          announce: Callable[[str], None] = print) -> int:
    """Serve the explorer on ``localhost:port`` (0: a free port) until interrupted; announce its address."""

    if not (isinstance(port, int) and 0 <= port <= 65535):
        raise ValueError(f"--port must be an integer in 0..65535, got {port!r}")
    chosen = ctl.check_objectives(list(selected or PAPER_METHODS))
    app = Application(FunctionHandler(partial(make_document, selected=chosen)))
    # Bokeh warns once per queued message after a browser closes its tab; harmless ("on_close() is / will be
    # called anyway", bokeh.server.views.ws), but a running live run would print hundreds of lines
    logging.getLogger("bokeh.server.views.ws").setLevel(logging.ERROR)
    try:
        server = Server({"/": app}, port=port, address="localhost", num_procs=1)
    except OSError as err:
        raise OSError(f"cannot listen on localhost:{port} ({err.strerror or err})") from None
    server.start()
    url = f"http://localhost:{server.port}/"
    announce(f"drpo-sim explore: serving the trust-region explorer at {url} (Ctrl+C to stop)")
    if open_browser:
        server.io_loop.add_callback(webbrowser.open, url)
    try:
        server.io_loop.start()
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
    return 0
