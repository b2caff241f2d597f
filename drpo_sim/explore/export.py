"""``drpo-sim explore --export FILE.html``: the geometry views as one self-contained page.

Every curve, boundary and region image the page can show is computed here, in Python, by
:mod:`drpo_sim.explore.data`, for every combination of the export's control values
(:func:`drpo_sim.explore.controls.export_controls`) that reaches each objective: its own
thresholds, ``mu``, the sign and size of ``A``, and for the objectives that read ``pi_old`` (those
of three policies, the corrected ones) the engine's gap ``b`` on the export's small grid of gaps.
Identical arrays are stored once (PPO and GRPO at the same clip, every objective whose weight
ignores ``abs(A)``, the corrections that agree at a gap, every curve not drawn at ``b mu >= 1``).
The page's one CustomJS callback only computes an index from the widgets and picks the precomputed
arrays; it evaluates no formula. BokehJS is inlined (``bokeh.resources.INLINE``), so the page opens
from disk with no server and no internet connection.
"""

from __future__ import annotations

import itertools
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from bokeh.embed import file_html
from bokeh.layouts import row
from bokeh.models import ColumnDataSource, CustomJS, Tabs
from bokeh.resources import INLINE

from drpo_sim._io import atomic_path
from drpo_sim.config import PAPER_METHODS
from drpo_sim.explore import controls as ctl
from drpo_sim.explore import data
from drpo_sim.explore.views import (
    BOUND_Y,
    BOUNDS_HEAD,
    BOUNDS_NONE,
    GeometryViews,
    adv_label,
    build_geometry,
    gap_status_html,
    old_location,
    region_legend_html,
    short_label,
    styles,
)

NOTE = ("<h3 style='margin:4px 0'>Trust-region explorer (static page)</h3>Precomputed by <code>drpo-sim explore "
        f"--export</code> on a grid of the controls (the engine gap <i>b</i> at {len(ctl.EXPORT_VALUES['gap'])} "
        "values). Run <code>drpo-sim explore</code> for every value and the live bandit run.")


@dataclass
class Store:
    """Unique arrays and the index tables that pick them (see the module docstring)."""

    curves: list[np.ndarray] = field(default_factory=list)
    bounds_x: list[list[float]] = field(default_factory=list)
    bounds_pi: list[list[float]] = field(default_factory=list)
    bounds_label: list[list[str]] = field(default_factory=list)
    planes: list[np.ndarray] = field(default_factory=list)
    curve_ids: list[int] = field(default_factory=list)
    plane_ids: list[int] = field(default_factory=list)
    _curve_key: dict[bytes, int] = field(default_factory=dict)
    _plane_key: dict[bytes, int] = field(default_factory=dict)

    def add_curve(self, w: np.ndarray, b: data.Boundaries) -> None:
        w32 = np.ascontiguousarray(w, dtype=np.float32)
        key = w32.tobytes() + np.asarray(b.pi, np.float64).tobytes()
        if key not in self._curve_key:
            self._curve_key[key] = len(self.curves)
            self.curves.append(w32)
            self.bounds_x.append([float(x) for x in data.to_logit(b.pi)])
            self.bounds_pi.append([float(p) for p in b.pi])
            self.bounds_label.append(b.descriptions())
        self.curve_ids.append(self._curve_key[key])

    def add_plane(self, codes: np.ndarray) -> None:
        codes = np.ascontiguousarray(codes, dtype=np.uint8)
        key = codes.tobytes()
        if key not in self._plane_key:
            self._plane_key[key] = len(self.planes)
            self.planes.append(codes)
        self.plane_ids.append(self._plane_key[key])


def _stacked_pi(mus: tuple[float, ...]) -> tuple[np.ndarray, np.ndarray]:
    """The ``pi`` grids of every ``mu`` as one rectangular array (shorter ones padded with their last
    point, which adds no boundary), and each grid's own length."""
    grids = [data.pi_axis(m) for m in mus]
    n = max(len(g) for g in grids)
    padded = np.stack([np.concatenate([g, np.full(n - len(g), g[-1])]) for g in grids])
    return padded, np.array([len(g) for g in grids])


@dataclass(frozen=True)
class Cases:
    """The cases of every curve (rows) and plane (entries) of one objective, in the page's order:
    curves ``(mu, sign, size, gap)``, planes ``(sign, size, gap)``, the gap varying fastest (one gap,
    ``None``: ``pi_old = mu``, for an objective that does not read it)."""

    mu: np.ndarray
    adv: np.ndarray
    gap: np.ndarray | None
    pi: np.ndarray
    n: np.ndarray
    plane_adv: np.ndarray
    plane_gap: np.ndarray | None

    @classmethod
    def of(cls, mus: tuple[float, ...], sizes: tuple[float, ...], gaps: tuple[float, ...] | None) -> Cases:
        g = (1.0,) if gaps is None else gaps
        mu, sign, size, gap = (a.ravel() for a in np.meshgrid(mus, ctl.ADV_SIGNS, sizes, g, indexing="ij"))
        per_mu = len(ctl.ADV_SIGNS) * len(sizes) * len(g)
        pi_mu, n_mu = _stacked_pi(mus)
        p_sign, p_size, p_gap = (a.ravel() for a in np.meshgrid(ctl.ADV_SIGNS, sizes, g, indexing="ij"))
        return cls(mu=mu, adv=sign * size, gap=None if gaps is None else gap, pi=np.repeat(pi_mu, per_mu, axis=0),
                   n=np.repeat(n_mu, per_mu), plane_adv=p_sign * p_size, plane_gap=None if gaps is None else p_gap)


def precompute(choices: tuple[ctl.Choice, ...]) -> tuple[Store, dict[str, Any]]:
    """Every curve, boundary set and plane image the page can show; ``(store, spec)``.

    Cases are ordered ``(mu, sign, size, gap)`` (:class:`Cases`; the gap only for the objectives
    that read it, ``gap: true`` in the spec); an objective's parameter combinations follow its
    controls (:func:`controls_of`) in row-major order. ``spec`` (JSON) tells the page's callback
    where each objective's entries begin in the index tables.
    """
    by = ctl.by_name(choices)
    mus, sizes, gaps = by["mu"].values, by["adv_size"].values, by["gap"].values
    cases = {False: Cases.of(mus, sizes, None), True: Cases.of(mus, sizes, gaps)}
    store = Store()
    spec_obj: dict[str, Any] = {}
    for name in ctl.entries():
        names = ctl.controls_of(name)
        grids = [by[c].values for c in names]
        reads = ctl.reads_gap(name)
        k = cases[reads]
        entry = {"controls": list(names), "sizes": [len(g) for g in grids], "curve_base": len(store.curve_ids),
                 "plane_base": len(store.plane_ids), "titles": [], "gap": reads}
        for combo in itertools.product(*grids):
            obj = ctl.build_objective(name, dict(zip(names, combo)))
            entry["titles"].append(short_label(obj))
            w = data.weights(obj, k.pi, k.mu, k.adv, k.gap)
            b = data.boundaries(obj, k.pi, k.mu, k.adv, w=w, gap=k.gap)
            ok = data.drawable(obj, k.mu, k.gap)
            for c in range(len(k.mu)):
                store.add_curve(w[c, : k.n[c] if ok[c] else 0], b.of(c))
            for codes in data.plane_codes(obj, k.plane_adv, gap=k.plane_gap):
                store.add_plane(codes)
        spec_obj[name] = entry
    start, width = data.plane_extent()
    spec = {
        "names": ctl.entries(), "n_mu": len(mus), "n_size": len(sizes), "n_gap": len(gaps), "objectives": spec_obj,
        "curve_ids": store.curve_ids, "plane_ids": store.plane_ids, "plane_x": start, "plane_w": width,
        "legends": [region_legend_html(adv_label(s, a)) for s in ctl.ADV_SIGNS for a in sizes],
        "bounds_head": BOUNDS_HEAD, "bounds_none": BOUNDS_NONE,
        # per (mu, gap): the line under the gap slider and where the pi = pi_old line goes (null: hidden)
        "gap_texts": [gap_status_html(m, g) for m in mus for g in gaps],
        "old_x": [old_location(m, g) for m in mus for g in gaps],
    }
    return store, spec


JS = """
const S = JSON.parse(spec)
const val = (name) => Math.round(sliders[S.slider_names.indexOf(name)].value)
const mu_i = val("mu"), size_i = val("adv_size"), sign_i = adv_sign.active, gap_i = val("gap")
const active = new Set(objectives.active)
const B = {x: [], pi: [], y0: [], y1: [], color: [], objective: [], label: []}
const xmu = pi_store.data.xmu[mu_i]
mu_line.location = xmu
const xold = S.old_x[mu_i * S.n_gap + gap_i]
old_line.visible = xold !== null
old_line.location = xold === null ? xmu : xold
gap_text.text = S.gap_texts[mu_i * S.n_gap + gap_i]
for (let j = 0; j < S.names.length; j++) {
  const name = S.names[j], o = S.objectives[name], show = active.has(j)
  lines[j].visible = show
  items[j].visible = show
  plane_figs[j].visible = show
  plane_mu[j].location = xmu
  if (!show) continue
  let p = 0
  for (let k = 0; k < o.controls.length; k++) p = p * o.sizes[k] + val(o.controls[k])
  const n_g = o.gap ? S.n_gap : 1, g_i = o.gap ? gap_i : 0
  const cid = S.curve_ids[o.curve_base + (((p * S.n_mu + mu_i) * 2 + sign_i) * S.n_size + size_i) * n_g + g_i]
  const w = curve_store.data.w[cid], drawn = w.length > 0  // empty: not drawn (b mu >= 1)
  curves[j].data = {x: drawn ? pi_store.data.x[mu_i] : [], pi: drawn ? pi_store.data.pi[mu_i] : [], w: w}
  const bx = curve_store.data.bx[cid], bp = curve_store.data.bpi[cid], bl = curve_store.data.blabel[cid]
  for (let b = 0; b < bx.length; b++) {
    B.x.push(bx[b]); B.pi.push(bp[b]); B.y0.push(-S.bound_y); B.y1.push(S.bound_y)
    B.color.push(S.colors[j]); B.objective.push(name); B.label.push(name + ": " + bl[b])
  }
  const pid = S.plane_ids[o.plane_base + ((p * 2 + sign_i) * S.n_size + size_i) * n_g + g_i]
  planes[j].data = {image: [plane_store.data.image[pid]], x: [S.plane_x], y: [S.plane_x],
                    dw: [S.plane_w], dh: [S.plane_w]}
  plane_figs[j].title.text = o.titles[p]
}
region_legend.text = S.legends[sign_i * S.n_size + size_i]
bounds.data = B
bounds_text.text = B.label.length ? S.bounds_head + B.label.join("<br>") : S.bounds_none
"""


def attach(views: GeometryViews, store: Store, spec: dict[str, Any]) -> None:
    """Wire the widgets to the one CustomJS callback that picks among the precomputed arrays."""

    by = views.choices
    mus = by["mu"].values
    pi_mu = [data.pi_axis(m) for m in mus]
    pi_store = ColumnDataSource({"pi": pi_mu, "x": [data.to_logit(p) for p in pi_mu],
                                 "xmu": [float(data.to_logit(m)) for m in mus]}, name="pi_store")
    curve_store = ColumnDataSource({"w": store.curves, "bx": store.bounds_x, "bpi": store.bounds_pi,
                                    "blabel": store.bounds_label}, name="curve_store")
    plane_store = ColumnDataSource({"image": store.planes}, name="plane_store")
    names = views.names
    spec = {**spec, "slider_names": list(views.sliders), "bound_y": BOUND_Y,
            "colors": [styles()[n]["color"] for n in names]}
    cb = CustomJS(code=JS, args={
        "spec": json.dumps(spec), "sliders": list(views.sliders.values()), "adv_sign": views.adv_sign,
        "objectives": views.objectives, "lines": [views.lines[n] for n in names],
        "items": [views.legend_items[n] for n in names], "plane_figs": [views.plane_figs[n] for n in names],
        "plane_mu": [views.plane_mu[n] for n in names], "curves": [views.curves[n] for n in names],
        "planes": [views.planes[n] for n in names], "bounds": views.bounds, "bounds_text": views.bounds_text,
        "region_legend": views.region_legend,
        "mu_line": views.mu_line, "old_line": views.old_line, "gap_text": views.gap_text,
        "pi_store": pi_store, "curve_store": curve_store, "plane_store": plane_store,
    })
    for s in views.sliders.values():
        s.js_on_change("value", cb)
    views.objectives.js_on_change("active", cb)
    views.adv_sign.js_on_change("active", cb)


def build_page(selected: list[str], choices: tuple[ctl.Choice, ...] | None = None) -> tuple[Any, GeometryViews]:
    """The page's layout: the geometry controls and two tabs (weight against pi; the plane), over
    ``choices`` (default :func:`drpo_sim.explore.controls.export_controls`; the tests pass fewer)."""

    choices = ctl.export_controls() if choices is None else choices
    views = build_geometry(choices, selected)
    views.fill()
    store, spec = precompute(choices)
    attach(views, store, spec)
    return row(views.controls_column(NOTE), Tabs(tabs=views.panels(), name="views")), views


def check_writable(path: Path) -> None:
    """Fail early, before the precomputation, if ``path`` cannot be written (``OSError``)."""
    if path.is_dir():
        raise IsADirectoryError(f"--export {path}: is a directory; give a file name such as explorer.html")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path.parent / f".{path.name}.probe") as tmp:
            tmp.write_bytes(b"")
        (path.parent / f".{path.name}.probe").unlink()
    except OSError as err:
        raise OSError(f"--export {path}: cannot write there ({err.strerror or err})") from None


def export_page(path: str | os.PathLike, selected: list[str] | None = None) -> tuple[Path, int]:
    """Write the self-contained page to ``path``; return the path and its size in bytes.

    ``OSError`` when ``path`` cannot be written (its directory is created if missing).
    """

    path = Path(path)
    check_writable(path)
    layout, _ = build_page(ctl.check_objectives(list(selected or PAPER_METHODS)))
    html = file_html(layout, INLINE, title="drpo_sim: trust-region explorer")
    try:
        with atomic_path(path) as tmp:
            tmp.write_text(html, encoding="utf-8")
    except OSError as err:
        raise OSError(f"--export {path}: cannot write ({err.strerror or err})") from None
    return path, path.stat().st_size
