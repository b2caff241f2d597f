"""The interactive trust-region explorer (``drpo-sim explore``).

A Bokeh app in the browser with three views of the objectives of :mod:`drpo_sim.objectives`: each
selected objective's gradient weight against ``pi`` at a chosen ``mu`` with its region boundaries
marked, the ``(mu, pi)`` plane coloured by region (masked, attenuated, corrective, amplified), and
a live bandit run of the selected objectives. Bokeh was chosen over Panel for its smaller install
(Bokeh and Tornado only; Panel adds param, markdown, bleach, ...) and because a plain Bokeh server
and ``file_html`` pages are easy to drive from Selenium.

Modules: :mod:`.controls` (the values each control offers, and which objective parameter it
sets), :mod:`.data` (every number shown, from drpo_sim's functions), :mod:`.views` (the Bokeh
models), :mod:`.live` (the live run), :mod:`.app` (the server app), :mod:`.export` (the standalone
page). Bokeh is imported only by ``views``, ``app`` and ``export``. The ``explore`` subcommand is
:mod:`drpo_sim.cli.explore`.
"""

from __future__ import annotations

__all__ = ["app", "controls", "data", "export", "live", "views"]
