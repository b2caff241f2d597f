"""The Bokeh models of the explorer: its widgets, the three views, and filling them from Python.

Shared by the server app (:mod:`drpo_sim.explore.app`, which refills the views in Python on every
change) and the exported page (:mod:`drpo_sim.explore.export`, which fills them once in Python
and then switches among precomputed arrays in the browser). Every model a test or a callback
needs has a ``name``, unique in the document:

* widgets: ``objectives`` (CheckboxGroup over :func:`drpo_sim.explore.controls.entries`: the
  registry's objectives and GRPO with each correction), ``adv_sign`` (RadioButtonGroup), one Slider
  per geometry control of :mod:`drpo_sim.explore.controls` (its value is an index into the
  control's values; ``gap`` is the engine's ``b = pi_old / mu``), ``gap_text`` (Div: ``pi_old`` at
  the chosen ``mu`` and gap, or why the objectives reading it are not drawn), and for the live run
  ``noise_std``, ``staleness``, ``vocab_size``, ``lr`` (Sliders over indices), ``precision``
  (Select), ``start`` / ``stop`` / ``reset`` (Buttons);
* data: ``curve_<objective>`` (columns ``x`` = logit(pi), ``pi``, ``w``), ``bounds`` (one row per
  boundary: ``x``, ``pi``, ``objective``, ``label``, ...), ``plane_<objective>`` (``image``: region
  codes, rows ``pi``, columns ``mu``), ``live_<objective>`` (``step``, ``reward``, ``shift``);
* figures: ``weight_view`` (its line renderers are named after the objectives, for the hover; the
  dotted ``mu_line`` at ``pi = mu``, the dash-dotted ``old_line`` at ``pi = pi_old = b mu``, hidden at
  ``b = 1`` and where ``b mu >= 1``),
  ``plane_view_<objective>``, ``live_reward``, ``live_shift``; the tabs: ``views``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import numpy as np
from bokeh.layouts import column, row
from bokeh.models import (
    Button,
    CheckboxGroup,
    ColumnDataSource,
    CustomJSTickFormatter,
    Div,
    FixedTicker,
    GlyphRenderer,
    HoverTool,
    LayoutDOM,
    Legend,
    LegendItem,
    LinearColorMapper,
    RadioButtonGroup,
    Range1d,
    Select,
    Slider,
    Span,
    TabPanel,
)
from bokeh.plotting import figure
from matplotlib.colors import to_hex

from drpo_sim import objectives
from drpo_sim.explore import controls as ctl
from drpo_sim.explore import data
from drpo_sim.plots import STYLE

_DASH = {"-": "solid", "--": "dashed", ":": "dotted", "-.": "dashdot"}
BOUND_Y = 1e4  # boundary segments run from -BOUND_Y to BOUND_Y (the weight axis is a fixed range)
PLANE_TICKS = (0.001, 0.1, 0.9, 0.999)
CORRECTION_STYLES: dict[str, dict[str, Any]] = {
    "is": {"color": "#1b9e77", "dash": "solid", "width": 2.0},
    "tis": {"color": "#d95f02", "dash": "solid", "width": 2.2},
    "seq_tis": {"color": "#d95f02", "dash": "dotted", "width": 2.2},  # at one token the same curve as tis
    "seq_mis": {"color": "#7570b3", "dash": "dashed", "width": 2.0},
    "geo_mis": {"color": "#666666", "dash": "dashdot", "width": 2.0},
    "icepop": {"color": "#e7298a", "dash": "solid", "width": 2.0},
}
"""Line styles of the corrected entries (``grpo+tis``, ...), by correction."""


@lru_cache(maxsize=1)
def styles() -> dict[str, dict[str, Any]]:
    """Colour, dash and width of each entry: :data:`drpo_sim.plots.STYLE` in Bokeh's terms for the
    registry's objectives, :data:`CORRECTION_STYLES` for the corrected ones."""

    out = {}
    for i, name in enumerate(objectives.available()):
        st = STYLE.get(name, {"color": f"C{i % 10}", "ls": "-", "lw": 1.6})
        out[name] = {"color": to_hex(st["color"]), "dash": _DASH.get(st["ls"], "solid"), "width": float(st["lw"])}
    for name in ctl.CORRECTED:
        out[name] = dict(CORRECTION_STYLES.get(ctl.split(name)[1] or "", {"color": "#000000", "dash": "solid",
                                                                            "width": 1.6}))
    return out


def _logit_axis(fig: Any, dim: str, ticks: tuple[float, ...]) -> None:
    """Ticks at ``logit(t)`` labelled with ``t``: the axis reads in probabilities."""
    labels = {float(data.to_logit(t)): f"{t:g}" for t in ticks}
    axis = fig.xaxis if dim == "x" else fig.yaxis
    axis.ticker = FixedTicker(ticks=list(labels))
    axis.major_label_overrides = labels


def index_slider(choice: ctl.Choice, width: int = 280) -> Slider:
    """A slider over the indices of ``choice.values``, showing the value (a label picked by index)."""
    fmt = CustomJSTickFormatter(args={"labels": choice.labels()}, code="return labels[Math.round(tick)]")
    return Slider(start=0, end=max(len(choice.values) - 1, 1), step=1, value=choice.default_index, title=choice.title,
                  name=choice.name, format=fmt, width=width, disabled=len(choice.values) < 2)


@dataclass
class GeometryViews:
    """The geometry widgets and views (weight against ``pi``; the ``(mu, pi)`` plane)."""

    choices: dict[str, ctl.Choice]
    names: list[str]
    objectives: CheckboxGroup
    adv_sign: RadioButtonGroup
    sliders: dict[str, Slider]
    weight_fig: Any
    curves: dict[str, ColumnDataSource]
    lines: dict[str, GlyphRenderer]
    legend_items: dict[str, LegendItem]
    bounds: ColumnDataSource
    bounds_text: Div
    mu_line: Span
    old_line: Span
    gap_text: Div
    planes: dict[str, ColumnDataSource]
    plane_figs: dict[str, Any]
    plane_mu: dict[str, Span]
    region_legend: Div
    weight_panel: LayoutDOM = field(init=False)
    plane_panel: LayoutDOM = field(init=False)

    def __post_init__(self) -> None:
        note = Div(text="Dashed vertical lines: where an objective's region changes (its clip, mask or DRPO's "
                   "zero), found on the registry's weight; dotted: <i>pi = mu</i>; dash-dotted purple: "
                   "<i>pi = pi_old = b mu</i> (at a gap b \u2260 1). Weights beyond the axis: scroll to zoom.",
                   width=760)
        self.weight_panel = column(self.weight_fig, note, self.bounds_text)
        grid = row(list(self.plane_figs.values()), styles={"flex-wrap": "wrap"}, width=1030)
        self.plane_panel = column(self.region_legend, grid)

    # reading the controls -----------------------------------------------------------------
    def selected(self) -> list[str]:
        return [self.names[i] for i in sorted(self.objectives.active)]

    def values(self) -> dict[str, Any]:
        """Control name -> the chosen value (sliders hold indices into the control's values)."""
        out = {name: self.choices[name].values[round(s.value)] for name, s in self.sliders.items()}
        out["adv_sign"] = ctl.ADV_SIGNS[self.adv_sign.active]
        return out

    # filling the views from Python ----------------------------------------------------------
    def controls_column(self, intro: str) -> LayoutDOM:
        """The left column: an introduction, then the objectives, the token, the engine's gap and the thresholds."""
        token, gap = ("mu", "adv_size"), ("gap",)
        return column(
            Div(text=intro, width=280),
            section("Objectives shown"), self.objectives,
            section("Token"), self.adv_sign, *[self.sliders[n] for n in token],
            section("Engine gap (three policies)"), *[self.sliders[n] for n in gap if n in self.sliders],
            Div(text=gap_help_html(self.names), width=280), self.gap_text,
            section("Thresholds"), *[s for n, s in self.sliders.items() if n not in token + gap],
            width=300,
        )

    def panels(self) -> list[TabPanel]:
        """The two geometry views as tabs."""
        return [TabPanel(child=self.weight_panel, title="Weight against pi"),
                TabPanel(child=self.plane_panel, title="(mu, pi) plane")]

    def objectives_shown(self) -> dict[str, objectives.Objective]:
        """The selected objectives, with the parameters the controls set."""
        vals = self.values()
        return {name: ctl.build_objective(name, vals) for name in self.selected()}

    def fill(self) -> None:
        """Recompute every view for the current controls (drpo_sim's functions, in Python)."""
        vals = self.values()
        mu, adv, gap = vals["mu"], vals["adv_sign"] * vals["adv_size"], vals.get("gap", 1.0)
        chosen = set(self.selected())
        x_mu = float(data.to_logit(mu))
        self.mu_line.location = x_mu
        x_old = old_location(mu, gap)
        self.old_line.visible = x_old is not None
        self.old_line.location = x_mu if x_old is None else x_old
        self.gap_text.text = gap_status_html(mu, gap)
        bound_rows: dict[str, list] = {k: [] for k in self.bounds.data}
        texts = []
        for name in self.names:
            show = name in chosen
            self.lines[name].visible = show
            self.legend_items[name].visible = show
            self.plane_figs[name].visible = show
            self.plane_mu[name].location = x_mu
            if not show:
                continue
            obj = ctl.build_objective(name, vals)
            c = data.curve(obj, mu, adv, gap)
            self.curves[name].data = {"x": data.to_logit(c.pi), "pi": c.pi, "w": c.w}
            _append_bounds(bound_rows, name, c.bounds, styles()[name])
            texts += c.bounds.labels(name)
            self.planes[name].data = plane_data(data.plane_codes(obj, np.array([adv]), gap=gap)[0])
            self.plane_figs[name].title.text = short_label(obj)
        self.region_legend.text = region_legend_html(adv_label(vals["adv_sign"], vals["adv_size"]))
        self.bounds.data = bound_rows
        self.bounds_text.text = bounds_html(texts)


def adv_label(sign: float, size: float) -> str:
    """``A = +1``, ``A = -0.25``, ..."""
    return f"A = {sign * size:+g}"


def short_label(obj: objectives.Objective) -> str:
    """``name(p=v, ...)`` with only the parameters the explorer's controls set (all of them if none is);
    a corrected objective: its base's label, then ``+`` and the correction, ``grpo(...)+tis(cap=2.0)``."""
    if isinstance(obj, objectives.Corrected):
        return f"{short_label(obj.base)}+{obj.correction}"
    keys = ctl.PARAM_CONTROLS.get(obj.name)
    if not keys:
        return str(obj)
    return f"{obj.name}(" + ", ".join(f"{k}={obj.params[k]:g}" for k in keys) + ")"


BOUNDS_NONE = "<b>Boundaries</b>: none (each selected objective keeps one region on either side of mu)."
BOUNDS_HEAD = "<b>Boundaries</b> (region on the side of mu \u2192 region beyond):<br>"


def bounds_html(lines: list[str]) -> str:
    """The boundary list under the weight view."""
    return BOUNDS_HEAD + "<br>".join(lines) if lines else BOUNDS_NONE


def gap_help_html(names: list[str]) -> str:
    """What the gap control does, naming the entries that read ``pi_old`` (``Objective.needs_old``)."""
    plain = [n for n in names if not ctl.split(n)[1] and ctl.reads_gap(n)]
    corrected = [n for n in names if ctl.split(n)[1] and ctl.reads_gap(n)]
    read = ", ".join(plain) + (f" and GRPO with a correction ({', '.join(corrected)})" if corrected else "")
    return ("<i>b = pi_old / mu</i>: the trainer recomputes the sampled token as <i>pi_old = b mu</i> "
            f"before the update. Read (Objective.needs_old) by {read}; every other objective ignores <i>b</i>. "
            "Where <i>b mu</i> \u2265 1 there is no <i>pi_old</i> &lt; 1: those curves are not drawn (no "
            "clamping), and in their planes those columns are lavender.")


def gap_status_html(mu: float, gap: float) -> str:
    """One line under the gap slider: ``pi_old`` at ``mu`` and ``gap``, or why it has none."""
    if gap * mu < 1.0:
        return f"b = {gap:g}: <i>pi_old</i> = {gap * mu:.4g} at <i>mu</i> = {mu:g}."
    return (f"b = {gap:g}, <i>mu</i> = {mu:g}: <i>b mu</i> = {gap * mu:.4g} \u2265 1, no <i>pi_old</i> &lt; 1; "
            "the objectives that read it are not drawn at this <i>mu</i>.")


def old_location(mu: float, gap: float) -> float | None:
    """Where the ``pi = pi_old`` line goes on the weight view (logit of ``b mu``); ``None``: hidden
    (``b = 1``, where it is the ``pi = mu`` line, or ``b mu >= 1``)."""
    if gap == 1.0 or gap * mu >= 1.0:
        return None
    return float(data.to_logit(gap * mu))


def plane_data(codes: np.ndarray) -> dict[str, list]:
    """A plane image's data source columns."""
    start, width = data.plane_extent()
    return {"image": [codes], "x": [start], "y": [start], "dw": [width], "dh": [width]}


def _append_bounds(rows: dict[str, list], name: str, b: data.Boundaries, style: dict[str, Any]) -> None:
    x = data.to_logit(b.pi)
    n = len(x)
    rows["x"] += list(x)
    rows["pi"] += list(b.pi)
    rows["y0"] += [-BOUND_Y] * n
    rows["y1"] += [BOUND_Y] * n
    rows["color"] += [style["color"]] * n
    rows["objective"] += [name] * n
    rows["label"] += b.labels(name)


def empty_bounds() -> dict[str, list]:
    return {"x": [], "pi": [], "y0": [], "y1": [], "color": [], "objective": [], "label": []}


def region_legend_html(adv: str) -> str:
    """The colour key above the planes, naming the advantage ``adv`` they are drawn at."""
    swatches = "".join(
        f'<span style="display:inline-block;width:14px;height:14px;background:{c};border:1px solid #999;'
        f'margin:0 4px 0 14px;vertical-align:middle"></span>{t}'
        for c, t in zip(data.PALETTE, (*data.REGION_HELP, data.NOT_DRAWN_HELP))
    )
    return (f"<b>Regions of the (mu, pi) plane at {adv}</b> (Objective.regions; diagonal: pi = mu; "
            "dotted: the chosen mu):<br>" + swatches)


def build_geometry(choices: tuple[ctl.Choice, ...], selected: list[str]) -> GeometryViews:
    """Widgets and (empty) views for ``choices``; call :meth:`GeometryViews.fill` to draw them."""
    names = ctl.entries()
    ctl.check_objectives(selected)
    box = CheckboxGroup(labels=names, active=[names.index(n) for n in selected], name="objectives")
    sign = RadioButtonGroup(labels=list(ctl.SIGN_LABELS), active=0, name="adv_sign", width=280)
    fig, curves, lines, items, bounds, mu_line, old_line = _weight_figure(names)
    planes, plane_figs, plane_mu = _plane_figures(names)
    return GeometryViews(
        choices={c.name: c for c in choices}, names=names, objectives=box, adv_sign=sign,
        sliders={c.name: index_slider(c) for c in choices},
        weight_fig=fig, curves=curves, lines=lines, legend_items=items, bounds=bounds,
        bounds_text=Div(text="", name="bounds_text", width=760), mu_line=mu_line, old_line=old_line,
        gap_text=Div(text="", name="gap_text", width=280),
        planes=planes, plane_figs=plane_figs, plane_mu=plane_mu,
        region_legend=Div(text="", width=1030, name="region_legend"),
    )


def _weight_figure(names: list[str]) -> tuple:
    """The weight-against-pi figure: one line per objective, the boundary segments, the ``pi = mu`` and
    ``pi = pi_old`` lines."""
    start, width = data.plane_extent()
    fig = figure(name="weight_view", width=760, height=460, x_range=Range1d(start, start + width),
                 y_range=Range1d(-2.0, 3.0), tools="pan,wheel_zoom,box_zoom,reset,save",
                 title="Gradient weight w against pi at the chosen mu",
                 x_axis_label="pi (trained policy's probability of the token; logit scale)",
                 y_axis_label="weight w  (dJ/dlogp = A r w)")
    _logit_axis(fig, "x", data.PI_TICKS)
    for level, dash in ((0.0, "solid"), (1.0, "dashed")):
        fig.add_layout(Span(location=level, dimension="width", line_color="black", line_width=0.8, line_dash=dash))
    mu_line = Span(location=0.0, dimension="height", line_color="black", line_width=1.2, line_dash="dotted",
                   name="mu_line")
    fig.add_layout(mu_line)
    old_line = Span(location=0.0, dimension="height", line_color="#6a3d9a", line_width=1.4, line_dash="dashdot",
                    name="old_line", visible=False)
    fig.add_layout(old_line)
    curves, lines, items = {}, {}, {}
    for name in names:
        st = styles()[name]
        src = ColumnDataSource({"x": [], "pi": [], "w": []}, name=f"curve_{name}")
        r = fig.line("x", "w", source=src, line_color=st["color"], line_dash=st["dash"], line_width=st["width"],
                     name=name)
        curves[name], lines[name] = src, r
        items[name] = LegendItem(label=name, renderers=[r], name=f"legend_{name}")
    bounds = ColumnDataSource(empty_bounds(), name="bounds")
    fig.segment("x", "y0", "x", "y1", source=bounds, line_color="color", line_dash="dashed", line_width=1.3,
                line_alpha=0.9, name="bound_lines")
    fig.add_layout(Legend(items=list(items.values()), location="top_left", click_policy="hide"), "right")
    fig.add_tools(HoverTool(renderers=list(lines.values()),
                            tooltips=[("objective", "$name"), ("pi", "@pi{0.00000}"), ("w", "@w{0.0000}")]))
    return fig, curves, lines, items, bounds, mu_line, old_line


def _plane_figures(names: list[str]) -> tuple[dict, dict, dict]:
    """One region image per objective over the ``(mu, pi)`` plane (logit axes, shared ranges)."""
    start, width = data.plane_extent()
    mapper = LinearColorMapper(palette=list(data.PALETTE), low=-0.5, high=len(data.PALETTE) - 0.5)
    px, py = Range1d(start, start + width), Range1d(start, start + width)  # shared: the planes zoom together
    planes, plane_figs, plane_mu = {}, {}, {}
    for name in names:
        p = figure(name=f"plane_view_{name}", width=340, height=335, x_range=px, y_range=py, tools="pan,wheel_zoom",
                   active_scroll="wheel_zoom", toolbar_location=None, x_axis_label="mu", y_axis_label="pi",
                   title=name)
        p.title.text_font_size = "7.5pt"
        _logit_axis(p, "x", PLANE_TICKS)
        _logit_axis(p, "y", PLANE_TICKS)
        src = ColumnDataSource({"image": [], "x": [], "y": [], "dw": [], "dh": []}, name=f"plane_{name}")
        p.image("image", x="x", y="y", dw="dw", dh="dh", source=src, color_mapper=mapper)
        p.line([start, start + width], [start, start + width], line_color="black", line_width=0.8)
        span = Span(location=0.0, dimension="height", line_color="black", line_width=1.0, line_dash="dotted",
                    name=f"plane_mu_{name}")
        p.add_layout(span)
        p.grid.visible = False
        planes[name], plane_figs[name], plane_mu[name] = src, p, span
    return planes, plane_figs, plane_mu


@dataclass
class LiveViews:
    """Widgets and curves of the live bandit run."""

    sliders: dict[str, Slider]
    precision: Select
    start: Button
    stop: Button
    reset: Button
    status: Div
    sources: dict[str, ColumnDataSource]
    lines: dict[str, list[GlyphRenderer]]
    legend_items: dict[str, list[LegendItem]]
    reward_fig: Any
    shift_fig: Any

    def widgets(self) -> list[LayoutDOM]:
        return [*self.sliders.values(), self.precision, row(self.start, self.stop, self.reset)]

    def panel(self) -> LayoutDOM:
        return column(self.status, self.reward_fig, self.shift_fig)

    def values(self, choices: dict[str, ctl.Choice]) -> dict[str, Any]:
        """Live control name -> the chosen value."""
        out = {name: choices[name].values[round(s.value)] for name, s in self.sliders.items()}
        out["precision"] = self.precision.value
        return out

    def show(self, selected: list[str]) -> None:
        """Show the curves (and legend entries) of the ``selected`` objectives only."""
        for name, lines in self.lines.items():
            for r in (*lines, *self.legend_items[name]):
                r.visible = name in selected


def build_live(choices: tuple[ctl.Choice, ...]) -> LiveViews:
    """The live run's controls (sliders, precision, buttons) and its reward and shift figures."""
    sliders = {c.name: index_slider(c) for c in choices if c.name != "precision"}
    prec = next(c for c in choices if c.name == "precision")
    select = Select(title=prec.title, options=list(prec.values), value=prec.default, name="precision", width=280)
    start = Button(label="Start", button_type="success", name="start", width=85)
    stop = Button(label="Stop", button_type="warning", name="stop", width=85)
    reset = Button(label="Reset", button_type="default", name="reset", width=85)
    reward = figure(name="live_reward", width=760, height=300, title="Expected reward of pi (mean over seeds)",
                    x_axis_label="step", y_axis_label="expected reward", tools="pan,wheel_zoom,box_zoom,reset,save")
    shift = figure(name="live_shift", width=760, height=300, x_range=reward.x_range,
                   title="Mean abs(pi - mu) over the sampled tokens (mean over seeds)",
                   x_axis_label="step", y_axis_label="mean abs(pi - mu)", tools="pan,wheel_zoom,box_zoom,reset,save")
    sources, lines, items, items_r, items_s = {}, {}, {}, [], []
    for name in ctl.entries():
        st = styles()[name]
        src = ColumnDataSource({"step": [], "reward": [], "shift": []}, name=f"live_{name}")
        kw = {"line_color": st["color"], "line_dash": st["dash"], "line_width": st["width"]}
        r1 = reward.line("step", "reward", source=src, name=f"live_reward_{name}", **kw)
        r2 = shift.line("step", "shift", source=src, name=f"live_shift_{name}", **kw)
        sources[name], lines[name] = src, [r1, r2]
        items[name] = [LegendItem(label=name, renderers=[r1]), LegendItem(label=name, renderers=[r2])]
        items_r.append(items[name][0])
        items_s.append(items[name][1])
    for fig in (reward, shift):  # an invisible point at (0, 0): the axes have a range before the first step
        fig.scatter([0.0], [0.0], alpha=0.0, size=1)
    reward.add_layout(Legend(items=items_r, location="top_left", click_policy="hide"), "right")
    shift.add_layout(Legend(items=items_s, location="top_left", click_policy="hide"), "right")
    return LiveViews(sliders=sliders, precision=select, start=start, stop=stop, reset=reset,
                     status=Div(text="", name="live_status", width=760), sources=sources, lines=lines,
                     legend_items=items,
                     reward_fig=reward, shift_fig=shift)


def section(title: str) -> Div:
    return Div(text=f"<b>{title}</b>", width=280)
