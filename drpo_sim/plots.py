"""Figure functions, one per figure kind. Each takes a tidy table and writes image files atomically.

The tables come from :mod:`drpo_sim.geometry`, the simulations, :mod:`drpo_sim.dynamics` and the
token-log replay (:mod:`drpo_sim.analysis`); no plot computes an objective itself.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402
from matplotlib.colors import TwoSlopeNorm  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402
from matplotlib.ticker import FuncFormatter, LogLocator  # noqa: E402

from drpo_sim._io import atomic_path  # noqa: E402

# One look per objective, shared by every figure.
STYLE: dict[str, dict] = {
    "pg_is": {"color": "0.45", "ls": ":", "lw": 1.6},
    "ppo": {"color": "#1f77b4", "ls": "-", "lw": 1.6},
    "grpo": {"color": "#17becf", "ls": "--", "lw": 1.6},
    "cispo": {"color": "#9467bd", "ls": "-.", "lw": 1.6},
    "spo": {"color": "#ff7f0e", "ls": "-", "lw": 1.8},
    "dppo_tv": {"color": "#2ca02c", "ls": "-", "lw": 1.6},
    "dppo_kl": {"color": "#98df8a", "ls": "--", "lw": 1.6},
    "drpo": {"color": "#d62728", "ls": "-", "lw": 2.6},
    "mask_drpo": {"color": "#e377c2", "ls": "--", "lw": 1.8},
    "drpo_no_abs_adv": {"color": "#8c564b", "ls": "--", "lw": 1.8},
    "drpo_kl": {"color": "#bcbd22", "ls": "-.", "lw": 1.8},
    "drpo_tv": {"color": "#7f7f7f", "ls": "-", "lw": 1.6},
    "drpo_k3": {"color": "#1f77b4", "ls": ":", "lw": 2.0},
    "ppo_rare_exempt": {"color": "#1f77b4", "ls": "-.", "lw": 1.8},
    "minirl": {"color": "#9467bd", "ls": "--", "lw": 2.0},
    "decoupled_ppo": {"color": "#ff7f0e", "ls": ":", "lw": 2.2},
    "gspo": {"color": "#8c564b", "ls": "-", "lw": 1.4},
    "dppo_topk_tv": {"color": "#d62728", "ls": ":", "lw": 2.2},
    "dppo_topk_kl": {"color": "#98df8a", "ls": ":", "lw": 2.2},
    "gspo_token": {"color": "#8c564b", "ls": "--", "lw": 1.4},
    "dppo_tv_recompute": {"color": "#2ca02c", "ls": "--", "lw": 1.6},
    "dppo_kl_recompute": {"color": "#98df8a", "ls": "-.", "lw": 1.6},
}
MASK_COLORS = {"ppo": "#1f77b4", "grpo": "#17becf", "dppo_tv": "#2ca02c"}
SIGN_LABEL = {1.0: "A > 0", -1.0: "A < 0"}
PI_TICKS = (0.001, 0.01, 0.1, 0.5, 0.9, 0.99, 0.999)


@contextlib.contextmanager
def paper_style() -> Iterator[None]:
    """Seaborn's paper context with a light grid, for every figure."""
    with sns.axes_style("whitegrid"), sns.plotting_context("paper", font_scale=1.25):
        yield


def save(fig: plt.Figure, stem: str | Path, formats: Sequence[str] = ("png",), dpi: int = 150) -> list[Path]:
    """Save ``fig`` as ``stem.<fmt>`` for each format, atomically, and close it."""
    out = []
    for fmt in formats:
        path = Path(f"{stem}.{fmt}")
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format=fmt, dpi=dpi, bbox_inches="tight")
        out.append(path)
    plt.close(fig)
    return out


def weight_curves_figure(
    curves: pd.DataFrame, stem: str | Path, *, names: Sequence[str], title: str, ylim=(-1.5, 2.5), formats=("png",)
) -> list[Path]:
    """Weight against ``pi`` for each fixed ``mu`` (columns) and advantage sign (rows)."""
    mus = sorted(curves["mu"].unique())
    with paper_style():
        fig, axes = plt.subplots(2, len(mus), figsize=(3.3 * len(mus), 7.0), sharex="col", sharey=True)
        for i, sign in enumerate((1.0, -1.0)):
            for j, mu in enumerate(mus):
                ax = axes[i, j]
                sel = curves[(curves["mu"] == mu) & (curves["adv_sign"] == sign)]
                for name in names:
                    d = sel[sel["name"] == name]
                    for k, (size, dd) in enumerate(d.groupby("abs_adv", sort=False)):
                        label = dd["objective"].iloc[0] + ("" if size == 1.0 else f", |A| = {size:g}")
                        style = (
                            STYLE[name]
                            if k == 0
                            else {**STYLE[name], "lw": 1.0, "alpha": 0.75, "ls": (":", "-.")[k % 2]}
                        )
                        ax.plot(dd["pi"], dd["weight"], label=label, **style)
                ax.axvline(mu, color="k", lw=0.8, ls=":")
                ax.axhline(0.0, color="k", lw=0.6)
                ax.axhline(1.0, color="k", lw=0.4, ls="--")
                ax.set_xscale("logit")
                ax.set_xlim(curves["pi"].min(), curves["pi"].max())
                ax.set_xticks(PI_TICKS, [f"{t:g}" for t in PI_TICKS], rotation=45)
                ax.minorticks_off()
                ax.set_ylim(*ylim)
                if i == 0:
                    ax.set_title(f"mu = {mu:g}")
                if i == 1:
                    ax.set_xlabel("pi (trained policy's probability)")
                if j == 0:
                    ax.set_ylabel(f"weight w, {SIGN_LABEL[sign]}")
        handles, labels = axes[0, 0].get_legend_handles_labels()
        handles.append(Line2D([], [], color="k", lw=0.8, ls=":"))
        labels.append("pi = mu (on-policy)")
        fig.legend(
            handles, labels, loc="lower center", ncol=min(5, len(labels)), frameon=False, bbox_to_anchor=(0.5, -0.07)
        )
        fig.suptitle(title, y=1.0)
        fig.tight_layout()
    return save(fig, stem, formats)


def gap_weight_figure(curves: pd.DataFrame, stem: str | Path, *, ylim=(-1.5, 2.5), formats=("png",)) -> list[Path]:
    """Weight against the engine's gap ``b = pi_old / mu`` (:func:`drpo_sim.geometry.gap_curves`):
    columns the two panels (objectives, corrections), rows the advantage sign, legends below."""
    panels = list(dict.fromkeys(curves["panel"]))
    mu = float(curves["mu"].iloc[0])
    with paper_style():
        fig = plt.figure(figsize=(6.2 * len(panels), 11.0))
        grid = fig.add_gridspec(3, len(panels), height_ratios=(1.0, 1.0, 0.42))
        axes = np.array([[fig.add_subplot(grid[i, j]) for j in range(len(panels))] for i in range(2)])
        for j, panel in enumerate(panels):
            sub = curves[curves["panel"] == panel]
            labels = list(dict.fromkeys(sub["objective"]))
            colours = sns.color_palette("tab10", len(labels))
            base = ""
            if panel == "corrections":  # "grpo(...)+tis(cap=2.0)": the base once, in the title
                base = labels[0].split("+")[0]
            for i, sign in enumerate((1.0, -1.0)):
                ax = axes[i, j]
                sel = sub[sub["adv_sign"] == sign]
                for k, label in enumerate(labels):
                    d = sel[sel["objective"] == label]
                    shown = label[len(base) + 1:] if base else label
                    ax.plot(d["b"], d["weight"], color=colours[k], ls=("-", "--", "-.", ":")[k % 4],
                            lw=2.6 - 0.2 * k, label=shown)
                gaps = np.sort(sel["b"].unique())
                ax.plot(gaps, 1.0 / gaps, color="0.55", lw=0.9, ls=(0, (1, 2)),
                        label="1 / b: no importance weight to mu")
                ax.axvline(1.0, color="k", lw=0.8, ls=":")
                ax.axhline(0.0, color="k", lw=0.6)
                ax.axhline(1.0, color="k", lw=0.4, ls="--")
                ax.set_xscale("log")
                ax.set_ylim(*ylim)
                if i == 0:
                    ax.set_title(f"corrections c(b) of {base}" if base else "objectives (one anchor or three policies)")
                else:
                    ax.set_xlabel(f"engine's gap b = pi_old / mu (pi = pi_old, mu = {mu:g})")
                if j == 0:
                    ax.set_ylabel(f"weight w, {SIGN_LABEL[sign]}")
            leg = fig.add_subplot(grid[2, j])
            leg.axis("off")
            handles, shown = axes[1, j].get_legend_handles_labels()
            leg.legend(handles, shown, loc="upper center", ncol=1, frameon=False, fontsize=10)
        fig.suptitle("Gradient weight w = (dJ/dlogp) / (A r) against the training-inference gap at the first update\n"
                     "(r = pi / mu = b; w = 1 keeps the full importance weight to mu, w = 0 masks the token)", y=0.995)
        fig.tight_layout()
    return save(fig, stem, formats)


def weight_plane_figure(
    plane: pd.DataFrame, stem: str | Path, *, labels: dict[str, str], formats=("png",)
) -> list[Path]:
    """Weight maps over ``(mu, pi)`` (columns: the weighted objectives) and the hard masks as regions (last column)."""
    weight_cols = [c for c in plane.columns if c.startswith("weight_")]
    mask_cols = [c for c in plane.columns if c.startswith("masked_")]
    axis = np.sort(plane["mu"].unique())
    n = len(axis)
    norm = TwoSlopeNorm(vmin=-2.0, vcenter=1.0, vmax=4.0)
    with paper_style():
        fig, axes = plt.subplots(
            2, len(weight_cols) + 1, figsize=(4.6 * (len(weight_cols) + 1), 9.0), sharex=True, sharey=True
        )
        for i, sign in enumerate((1.0, -1.0)):
            sel = plane[plane["adv_sign"] == sign].sort_values(["pi", "mu"])
            grids = {c: sel[c].to_numpy().reshape(n, n) for c in weight_cols + mask_cols}
            for j, col in enumerate(weight_cols):
                ax = axes[i, j]
                mesh = ax.pcolormesh(
                    axis,
                    axis,
                    np.clip(grids[col], -2.0, 4.0),
                    cmap="RdBu",
                    norm=norm,
                    shading="nearest",
                    rasterized=True,
                )
                ax.contour(axis, axis, grids[col], levels=[0.0], colors="k", linewidths=1.4)
                for m in mask_cols:
                    ax.contour(
                        axis,
                        axis,
                        grids[m].astype(float),
                        levels=[0.5],
                        colors=MASK_COLORS[m[7:]],
                        linewidths=1.1,
                        linestyles="--",
                    )
                ax.set_title(f"{labels[col[7:]]}, {SIGN_LABEL[sign]}")
            ax = axes[i, -1]
            for m in mask_cols:
                g = grids[m].astype(float)
                ax.contourf(axis, axis, g, levels=[0.5, 1.5], colors=[MASK_COLORS[m[7:]]], alpha=0.28)
                ax.contour(axis, axis, g, levels=[0.5], colors=MASK_COLORS[m[7:]], linewidths=1.4)
            ax.set_title(f"masked regions (w = 0), {SIGN_LABEL[sign]}")
            for ax in axes[i]:
                ax.plot([0, 1], [0, 1], color="k", lw=0.6, ls=":")
                ax.set_aspect("equal")
            axes[i, 0].set_ylabel("pi (trained policy)")
        for ax in axes[-1]:
            ax.set_xlabel("mu (behaviour policy)")
        cbar = fig.colorbar(
            mesh, ax=axes.ravel().tolist(), orientation="horizontal", fraction=0.035, pad=0.07, extend="both", aspect=50
        )
        cbar.set_label("gradient weight w (clipped to [-2, 4]; black line: w = 0, corrective beyond)")
        legend = [
            Patch(facecolor=MASK_COLORS[m[7:]], alpha=0.5, edgecolor=MASK_COLORS[m[7:]], label=f"{labels[m[7:]]} masks")
            for m in mask_cols
        ]
        legend.append(Line2D([], [], color="k", lw=0.6, ls=":", label="pi = mu"))
        fig.legend(handles=legend, loc="upper center", ncol=len(legend), frameon=False, bbox_to_anchor=(0.5, 0.02))
        fig.suptitle(
            "Trust-region geometry over the (mu, pi) plane: smooth weights (SPO, DRPO) against hard masks (PPO, "
            "GRPO, DPPO-TV)\n"
            "dashed lines on the maps: the mask boundaries of the last column",
            y=0.99,
        )
    return save(fig, stem, formats)


def drpo_range_figure(ranges: pd.DataFrame, curves: pd.DataFrame, stem: str | Path, *, formats=("png",)) -> list[Path]:
    """DRPO's weight against the shift for several ``delta``, and the weight range measured over the plane."""
    deltas = list(ranges["delta"])
    palette = dict(zip(deltas, sns.color_palette("viridis", len(deltas))))
    with paper_style():
        fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12.5, 4.6), gridspec_kw={"width_ratios": [1.4, 1.0]})
        for d in deltas:
            for sign, ls in ((1.0, "-"), (-1.0, "--")):
                sel = curves[(curves["delta"] == d) & (curves["adv_sign"] == sign)]
                ax1.plot(sel["shift"], sel["weight"], color=palette[d], ls=ls, lw=1.8,
                         label=f"delta = {d:g}" if sign > 0 else None)
        ax1.axhline(0.0, color="k", lw=0.6)
        ax1.axhline(1.0, color="k", lw=0.4, ls=":")
        ax1.set_ylim(-3.0, 6.8)
        ax1.set_xlabel(f"pi - mu (mu = {curves['mu'].iloc[0]:g})")
        ax1.set_ylabel("DRPO weight w")
        ax1.set_title("weight against the shift (solid: A > 0, dashed: A < 0)")
        ax1.legend(frameon=False, loc="upper center", ncol=3, fontsize="small")
        x = np.arange(len(deltas))
        for k, row in ranges.iterrows():
            ax2.vlines(x[k], row["weight_min"], row["weight_max"], color=palette[row["delta"]], lw=8)
            ax2.plot([x[k] - 0.25, x[k] + 0.25], [row["bound_low"]] * 2, color="k", lw=1.0)
            ax2.plot([x[k] - 0.25, x[k] + 0.25], [row["bound_high"]] * 2, color="k", lw=1.0)
            ax2.annotate(f"[{row['weight_min']:.2f}, {row['weight_max']:.2f}]", (x[k], row["weight_max"]),
                         xytext=(0, 6), textcoords="offset points", ha="center", fontsize=9)
        ax2.axhline(0.0, color="k", lw=0.6)
        ax2.margins(y=0.12)
        ax2.set_xticks(x, [f"{d:g}" for d in deltas])
        ax2.set_xlabel("delta")
        ax2.set_ylabel("weight range over the (mu, pi) plane")
        ax2.set_title("measured range (bars) and bounds 1 -+ 1/delta (ticks)")
        fig.suptitle("DRPO's weight is bounded by 1 -+ 1/delta; at delta = 12.5 it never leaves [0.92, 1.08]", y=1.02)
        fig.tight_layout()
    return save(fig, stem, formats)


def curves_figure(
    panels: Sequence[tuple[str, pd.DataFrame]],
    stem: str | Path,
    *,
    title: str,
    formats=("png",),
    logy: Sequence[bool] | None = None,
    band_label: str = "IQM over seeds, 95% bootstrap band",
) -> list[Path]:
    """Curves against ``step`` with confidence bands, one panel per ``(ylabel, bands)``.

    ``bands`` is the table of :func:`drpo_sim.stats.curve_bands` (``method, step, iqm, low,
    high``); one line per method in the toolkit's style, its band shaded.
    """
    logy = list(logy or [False] * len(panels))
    with paper_style():
        fig, axes = plt.subplots(1, len(panels), figsize=(5.6 * len(panels), 4.4), squeeze=False)
        for ax, (ylabel, bands), log in zip(axes[0], panels, logy):
            for method, d in bands.groupby("method", sort=False):
                style = STYLE.get(method, {"lw": 1.6})
                n = int(d["n_seeds"].iloc[0])
                dropped = int(d["n_dropped"].iloc[0]) if "n_dropped" in d else 0
                label = f"{method} ({n} seeds" + (f", {dropped} non-finite left out)" if dropped else ")")
                ax.plot(d["step"], d["iqm"], label=label, **style)
                ax.fill_between(d["step"], d["low"], d["high"], color=style.get("color"), alpha=0.18, lw=0)
            ax.set_xlabel("step")
            ax.set_ylabel(ylabel)
            if log:
                ax.set_yscale("log")
        axes[0, 0].legend(loc="best", fontsize="small", frameon=True)
        fig.suptitle(f"{title}\n({band_label})", y=1.02)
        fig.tight_layout()
    return save(fig, stem, formats)


_VARIANT_DASHES = ((0, (5, 1, 1, 1)), (0, (1, 1)), (0, (4, 2)), (0, (3, 1, 1, 1, 1, 1)))


def variant_style(label: str, method: str, k: int = 0, nth: int | None = None) -> dict:
    """A variant's look: its objective's :data:`STYLE`; a second parameter set of one objective
    (``label != method``) keeps the colour with a thinner, dash-dotted line. ``nth``, where the
    caller counts the labels of each objective (0 for the first): the first keeps the objective's
    look, each later one a darker shade of its colour and a dash pattern of its own, so that
    several parameter sets of one objective stay apart."""
    style = dict(STYLE.get(method, {"lw": 1.6}))
    if "color" not in style and (nth or (nth is None and label != method)):
        style["color"] = sns.color_palette("colorblind", 10)[k % 10]
    if nth is None:
        if label != method:
            style.update(ls=(0, (5, 1, 1, 1)), lw=1.5)
    elif nth > 0:
        r, g, b = matplotlib.colors.to_rgb(style["color"])
        shade = 0.62 ** nth
        style.update(color=(r * shade, g * shade, b * shade), ls=_VARIANT_DASHES[(nth - 1) % len(_VARIANT_DASHES)],
                     lw=1.5)
    return style


def panels_figure(bands: pd.DataFrame, stem: str | Path, *, settings: dict[str, str], variants: Sequence[str],
                  methods: dict[str, str], metrics: Sequence[tuple[str, str, bool]], title: str,
                  formats=("png",)) -> list[Path]:
    """Curves of several variants in several settings: one column per setting (``settings``:
    name to panel title), one row per metric (``(metric, ylabel, logy)``), IQM lines with 95%
    bootstrap bands, from :func:`drpo_sim.stats.curve_bands` tables with ``setting``, ``variant``
    and ``metric`` columns. ``methods`` maps each variant label to its objective (for the style).
    """
    cols = [s for s in settings if s in set(bands["setting"])]
    with paper_style():
        fig, axes = plt.subplots(len(metrics), len(cols), figsize=(max(4.2 * len(cols), 8.0), 3.3 * len(metrics)),
                                 sharex=True, squeeze=False)
        for j, setting in enumerate(cols):
            for i, (metric, ylabel, logy) in enumerate(metrics):
                ax = axes[i, j]
                d = bands[(bands["setting"] == setting) & (bands["metric"] == metric)]
                for k, label in enumerate(variants):
                    c = d[d["variant"] == label]
                    if c.empty:
                        continue
                    style = variant_style(label, methods[label], k)
                    ax.plot(c["step"], c["iqm"], label=label, **style)
                    ax.fill_between(c["step"], c["low"], c["high"], color=style.get("color"), alpha=0.15, lw=0)
                if logy:
                    ax.set_yscale("log")
                if i == 0:
                    ax.set_title(settings[setting], fontsize="medium")
                if j == 0:
                    ax.set_ylabel(ylabel)
                if i == len(metrics) - 1:
                    ax.set_xlabel("step")
        handles, labels = axes[0, 0].get_legend_handles_labels()
        ncol = min(len(labels), max(3, 2 * len(cols)))  # no wider than the panels
        rows = -(-len(labels) // ncol)
        fig.legend(handles, labels, loc="lower center", ncol=ncol, frameon=False, bbox_to_anchor=(0.5, -0.03 * rows))
        fig.suptitle(f"{title}\n(IQM over seeds, 95% bootstrap band)", y=1.0)
        fig.tight_layout(rect=(0, 0.04, 1, 1))
    return save(fig, stem, formats)


def flow_figure(
    field: pd.DataFrame, rest: pd.DataFrame, stem: str | Path, *, title: str, formats=("png",)
) -> list[Path]:
    """The frozen-``mu`` flow of ``pi`` over the ``(mu, pi)`` plane, one column per objective.

    Colour: the direction and speed of ``pi`` (``dpi``, signed, compressed by a cube root and
    normalised per panel); black dots: where the iteration from ``pi = mu`` comes to rest (its last
    point where it runs off); white dashed line: the predicted rest curve (``docs/reference.md``); dotted:
    ``pi = mu``. Rows: ``A > 0`` and ``A < 0``.
    """
    objs = list(dict.fromkeys(field["objective"]))
    with paper_style():
        fig, axes = plt.subplots(2, len(objs), figsize=(3.2 * len(objs), 6.6), sharex=True, sharey=True, squeeze=False)
        for j, obj in enumerate(objs):
            for i, sign in enumerate((1.0, -1.0)):
                ax = axes[i, j]
                d = field[(field["objective"] == obj) & (field["adv_sign"] == sign)]
                mus, pis = np.sort(d["mu"].unique()), np.sort(d["pi"].unique())
                grid = d.pivot(index="pi", columns="mu", values="dpi").loc[pis, mus].to_numpy()
                shown = np.cbrt(grid / max(np.abs(grid).max(), 1e-300))
                ax.pcolormesh(mus, pis, shown, cmap="RdBu", vmin=-1, vmax=1, shading="auto")
                ax.plot(mus, mus, color="k", lw=0.8, ls=":")
                rs = rest[(rest["objective"] == obj) & (rest["adv_sign"] == sign)]
                ex = rs[(rs["expected_pi"] > 0) & (rs["expected_pi"] < 1)]
                r = rs.iloc[::4]
                ax.scatter(
                    r["mu"],
                    np.clip(r["pi_rest"], pis[0], pis[-1]),
                    s=9,
                    c=np.where(r["converged"], "k", "0.5"),
                    zorder=3,
                )
                ax.plot(ex["mu"], ex["expected_pi"], color="w", lw=1.3, ls="--", zorder=4)
                ax.set_xscale("logit")
                ax.set_yscale("logit")
                ax.set_xticks(PI_TICKS, [f"{t:g}" for t in PI_TICKS], rotation=45)
                ax.set_yticks(PI_TICKS, [f"{t:g}" for t in PI_TICKS])
                ax.minorticks_off()
                ax.set_xlim(mus[0], mus[-1])
                ax.set_ylim(pis[0], pis[-1])
                ax.grid(False)
                if i == 0:
                    ax.set_title(obj, fontsize="small")
                if i == 1:
                    ax.set_xlabel("mu (frozen behaviour)")
                if j == 0:
                    ax.set_ylabel(f"pi, {SIGN_LABEL[sign]}")
        handles = [
            Patch(color=plt.get_cmap("RdBu")(0.9), label="pi rises"),
            Patch(color=plt.get_cmap("RdBu")(0.1), label="pi falls"),
            Line2D([], [], color="k", marker="o", ls="", ms=4, label="rest point reached from pi = mu"),
            Line2D([], [], color="0.5", marker="o", ls="", ms=4, label="no rest: runs to the edge (last point)"),
            Line2D([], [], color="0.3", lw=2.2, ls="--", label="predicted rest curve (white)"),
            Line2D([], [], color="k", lw=0.8, ls=":", label="pi = mu"),
        ]
        fig.legend(handles=handles, loc="lower center", ncol=3, frameon=False, bbox_to_anchor=(0.5, -0.08))
        fig.suptitle(title, y=1.0)
        fig.tight_layout()
    return save(fig, stem, formats)


def phase_figure(
    summary: pd.DataFrame,
    stem: str | Path,
    *,
    x: str,
    y: str,
    title: str,
    methods: Sequence[str] | None = None,
    formats=("png",),
) -> list[Path]:
    """Heatmaps over ``x`` (columns) and ``y`` (rows) per method: collapse rate (top row) and
    final-reward IQM with its 95% interval (bottom row), each row on one colour scale.

    ``summary`` has one row per method and grid point with ``final_iqm``, ``final_low``,
    ``final_high`` and ``collapse_rate`` (:func:`drpo_sim.stats.summarize_runs` grouped by method,
    ``x`` and ``y``). A cell with a thick outline is in the method's stable region
    (``stable`` column).
    """
    methods = list(methods or dict.fromkeys(summary["method"]))
    xs, ys = sorted(summary[x].unique()), sorted(summary[y].unique())
    with paper_style():
        fig, axes = plt.subplots(2, len(methods), figsize=(2.9 * len(methods) + 1.2, 6.4), squeeze=False)
        for j, m in enumerate(methods):
            d = summary[summary["method"] == m].set_index([y, x])
            for i, (col, cmap, vmin, vmax) in enumerate(
                (("collapse_rate", "Reds", 0.0, 1.0), ("final_iqm", "viridis", 0.0, 1.0))
            ):
                ax = axes[i, j]
                grid = np.array([[d.loc[(yy, xx), col] for xx in xs] for yy in ys], dtype=float)
                im = ax.imshow(grid, origin="lower", cmap=cmap, vmin=vmin, vmax=vmax, aspect="auto")
                for a, yy in enumerate(ys):
                    for b, xx in enumerate(xs):
                        row = d.loc[(yy, xx)]
                        text = (f"{row['collapse_rate']:.2f}" if col == "collapse_rate"
                                else f"{row['final_iqm']:.2f}\n[{row['final_low']:.2f}, {row['final_high']:.2f}]")
                        shade = grid[a, b] if col == "collapse_rate" else 1 - grid[a, b]
                        ax.text(b, a, text, ha="center", va="center", fontsize=7, color="w" if shade > 0.55 else "k")
                        if col == "final_iqm" and bool(row.get("stable", False)):
                            ax.add_patch(plt.Rectangle((b - 0.5, a - 0.5), 1, 1, fill=False, lw=2.0, ec="w"))
                ax.set_xticks(range(len(xs)), [f"{v:g}" for v in xs])
                ax.set_yticks(range(len(ys)), [f"{v:g}" for v in ys])
                ax.grid(False)
                if i == 0:
                    ax.set_title(m)
                if i == 1:
                    ax.set_xlabel(x.replace("_", " "))
                if j == 0:
                    ax.set_ylabel(f"{'collapse rate' if i == 0 else 'final reward IQM'}\n{y.replace('_', ' ')}")
                if j == len(methods) - 1:
                    fig.colorbar(im, ax=ax, fraction=0.05)
        fig.suptitle(title, y=1.02)
        fig.tight_layout()
    return save(fig, stem, formats)


def sensitivity_figure(summary: pd.DataFrame, stem: str | Path, *, title: str, formats=("png",),
                       legend: str = "engine noise") -> list[Path]:
    """Final-reward IQM (95% interval as error bars) against each method's threshold ``delta``.

    ``summary`` has ``method``, ``delta``, ``level`` (the noise setting or another condition, one
    line each; ``legend`` titles them), ``final_iqm``, ``final_low``, ``final_high``; one panel
    per method, log-scaled ``delta``.
    """
    methods = list(dict.fromkeys(summary["method"]))
    levels = list(dict.fromkeys(summary["level"]))
    markers = ("o", "s", "^", "D")
    with paper_style():
        fig, axes = plt.subplots(1, len(methods), figsize=(5.2 * len(methods), 4.2), sharey=True, squeeze=False)
        for ax, m in zip(axes[0], methods):
            for k, lev in enumerate(levels):
                d = summary[(summary["method"] == m) & (summary["level"] == lev)].sort_values("delta")
                err = np.vstack([d["final_iqm"] - d["final_low"], d["final_high"] - d["final_iqm"]])
                ax.errorbar(d["delta"], d["final_iqm"], yerr=err, marker=markers[k % 4], capsize=3,
                            color=STYLE.get(m, {}).get("color"), alpha=1.0 - 0.3 * k, label=str(lev))
            ax.set_xscale("log")
            deltas = np.sort(summary.loc[summary["method"] == m, "delta"].unique())
            ax.set_xticks(deltas, [f"{v:g}" for v in deltas])
            ax.minorticks_off()
            ax.set_xlabel(f"{m} delta")
            ax.set_title(m)
            ax.legend(title=legend, fontsize="x-small", loc="best", framealpha=0.6)
        axes[0, 0].set_ylabel("final reward (IQM, 95% CI)")
        fig.suptitle(title, y=1.03)
        fig.tight_layout()
    return save(fig, stem, formats)


# ----------------------------------------------------------------------------------------------
# replay of token logs (tables of drpo_sim.analysis.ReplayResult)

_MU_XLABEL = r"$\mu$ (behaviour probability of the sampled token)"


def _mu_axis(ax: plt.Axes, rare: float | None = 0.01) -> None:
    ax.set_xscale("log")
    ax.set_xlabel(_MU_XLABEL)
    if rare is not None:
        ax.axvline(rare, color="0.6", lw=0.8, ls="--")


def mismatch_figure(mismatch: pd.DataFrame, stem: str | Path, *, title: str, formats=("png",)) -> list[Path]:
    """The training-inference mismatch picture (DPPO paper, Figure 2), from binned quantiles.

    Left: the ratio ``pi / mu`` against ``mu``: median, 25-75% and 5-95% bands, mean. Right:
    ``abs(pi - mu)`` against ``mu``: mean and maximum per bin, and the 5-95% band of the signed
    shift's magnitude. ``mismatch`` is :attr:`drpo_sim.analysis.ReplayResult.mismatch`; empty
    bins are left out. The dashed line marks ``mu = 0.01``.
    """
    d = mismatch[mismatch["tokens"] > 0]
    with paper_style():
        fig, (a1, a2) = plt.subplots(1, 2, figsize=(12.0, 4.4))
        x = d["mu_mid"]
        a1.fill_between(x, d["ratio_q05"], d["ratio_q95"], color="#1f77b4", alpha=0.15, lw=0, label="5-95%")
        a1.fill_between(x, d["ratio_q25"], d["ratio_q75"], color="#1f77b4", alpha=0.35, lw=0, label="25-75%")
        a1.plot(x, d["ratio_q50"], color="#1f77b4", marker="o", ms=3, label="median")
        a1.plot(x, d["ratio_mean"], color="k", ls=":", lw=1.2, label="mean")
        a1.axhline(1.0, color="0.3", lw=0.8)
        _mu_axis(a1)
        a1.set_ylabel(r"ratio $\pi/\mu$")
        a1.set_title("importance ratio")
        a1.legend(fontsize=8, loc="best")
        lo = np.minimum(d["shift_q05"].abs(), d["shift_q95"].abs())
        hi = np.maximum(d["shift_q05"].abs(), d["shift_q95"].abs())
        crosses = (d["shift_q05"] < 0) & (d["shift_q95"] > 0)
        a2.fill_between(
            x,
            np.where(crosses, 0, lo),
            hi,
            color="#d62728",
            alpha=0.15,
            lw=0,
            label=r"5-95% interval of $\pi-\mu$, in magnitude",
        )
        a2.plot(x, d["abs_shift_mean"], color="#d62728", marker="o", ms=3, label="mean")
        a2.plot(x, d["abs_shift_max"], color="#d62728", ls="--", lw=1.0, label="max")
        _mu_axis(a2)
        a2.set_yscale("symlog", linthresh=1e-6)
        a2.set_ylim(0, 1.05)
        a2.set_ylabel(r"$|\pi-\mu|$")
        a2.set_title("probability shift")
        a2.legend(fontsize=8, loc="upper left")
        fig.suptitle(title, y=1.02)
        fig.tight_layout()
    return save(fig, stem, formats)


def regions_figure(regions: pd.DataFrame, stem: str | Path, *, title: str, formats=("png",)) -> list[Path]:
    """How each objective treats the tokens of a log, against ``mu``, for each advantage sign.

    Rows: fraction masked (``w = 0``), attenuated (``0 < w < 1``), corrective (``w < 0``), and
    the share of the importance-sampled gradient mass ``sum abs(A r w) / sum abs(A r)`` kept;
    columns: ``A > 0`` and ``A < 0``. ``regions`` is :attr:`ReplayResult.regions`.
    """
    rows = (("masked_frac", "fraction masked (w = 0)"), ("attenuated_frac", "fraction attenuated (0 < w < 1)"),
            ("corrective_frac", "fraction corrective (w < 0)"), ("grad_mass_share", "gradient mass kept"))
    signs = ("A>0", "A<0")
    names = list(dict.fromkeys(regions["objective"]))
    d = regions[regions["tokens"] > 0]
    with paper_style():
        fig, axes = plt.subplots(len(rows), 2, figsize=(11.5, 3.0 * len(rows)), sharex=True, squeeze=False)
        for j, sign in enumerate(signs):
            for i, (col, label) in enumerate(rows):
                ax = axes[i, j]
                for name in names:
                    dd = d[(d["objective"] == name) & (d["adv_sign"] == sign)]
                    ax.plot(dd["mu_mid"], dd[col], marker="o", ms=2.5, label=name, **STYLE.get(name, {}))
                _mu_axis(ax)
                if col == "grad_mass_share":
                    ax.axhline(1.0, color="0.3", lw=0.8)
                else:
                    ax.set_ylim(-0.02, 1.02)
                if j == 0:
                    ax.set_ylabel(label)
                if i == 0:
                    ax.set_title(sign.replace(">", " > ").replace("<", " < "))
                if i < len(rows) - 1:
                    ax.set_xlabel("")
        axes[0, 1].legend(fontsize=8, loc="upper right", ncol=2)
        fig.suptitle(title, y=1.01)
        fig.tight_layout()
    return save(fig, stem, formats)


def replay_weights_figure(regions: pd.DataFrame, stem: str | Path, *, title: str, formats=("png",),
                          linthresh: float = 1e-5) -> list[Path]:
    """Each objective's weight distribution against ``mu``: median and 5-95% band of ``w - 1``.

    ``w - 1`` is the objective's departure from the plain importance-sampled gradient (``pg_is``,
    ``w = 1``): ``-1`` is a masked token, below ``-1`` a corrective one. The y axis is symlog,
    linear within ``linthresh``, so DRPO's small bounded departures and SPO's ``1 / mu`` growth
    show on one scale. ``regions`` is :attr:`ReplayResult.regions`.
    """
    names = [n for n in dict.fromkeys(regions["objective"]) if n != "pg_is"]
    d = regions[regions["tokens"] > 0]
    with paper_style():
        fig, axes = plt.subplots(1, 2, figsize=(12.0, 4.8), sharey=True, squeeze=False)
        for ax, sign in zip(axes[0], ("A>0", "A<0")):
            for name in names:
                dd = d[(d["objective"] == name) & (d["adv_sign"] == sign)]
                style = STYLE.get(name, {})
                ax.plot(dd["mu_mid"], dd["weight_q50"] - 1, marker="o", ms=2.5, label=name, **style)
                ax.fill_between(
                    dd["mu_mid"], dd["weight_q05"] - 1, dd["weight_q95"] - 1, color=style.get("color"), alpha=0.12, lw=0
                )
            ax.axhline(0.0, color="0.3", lw=0.8)
            ax.axhline(-1.0, color="0.6", lw=0.8, ls=":")
            _mu_axis(ax)
            ax.set_yscale("symlog", linthresh=linthresh)
            ax.set_title(sign.replace(">", " > ").replace("<", " < "))
        axes[0, 0].set_ylabel("w - 1 (median, 5-95% band)")
        axes[0, 1].legend(fontsize=8, ncol=2)
        fig.suptitle(title, y=1.02)
        fig.tight_layout()
    return save(fig, stem, formats)


def rare_tokens_figure(objectives: pd.DataFrame, stem: str | Path, *, title: str, formats=("png",)) -> list[Path]:
    """Rare tokens (``mu <= 0.01``) against all tokens, per objective.

    Left: the range of ``w - 1`` on rare tokens (min-max as a thin bar, 5-95% as a thick bar,
    median as a dot; symlog, linear within ``1e-5``), with the same for all tokens beside it:
    ``-1`` is a masked token, below it a corrective one. Right: the fraction of
    tokens masked and the gradient mass kept, rare against all. ``objectives`` is
    :attr:`ReplayResult.objectives`.
    """
    names = list(objectives["objective"])
    y = np.arange(len(names))
    with paper_style():
        fig, (a1, a2) = plt.subplots(1, 2, figsize=(12.5, 0.45 * len(names) + 2.2))
        for off, prefix, label in ((-0.17, "", "all tokens"), (0.17, "rare_", r"$\mu \leq 0.01$")):
            color = "0.45" if not prefix else "#d62728"
            r = objectives
            a1.hlines(y + off, r[f"{prefix}weight_min"] - 1, r[f"{prefix}weight_max"] - 1, color=color, lw=1.0)
            a1.hlines(
                y + off,
                r[f"{prefix}weight_q05"] - 1,
                r[f"{prefix}weight_q95"] - 1,
                color=color,
                lw=5.0,
                alpha=0.6,
                label=label,
            )
            a1.plot(r[f"{prefix}weight_q50"] - 1, y + off, "o", color=color, ms=4)
            a2.barh(y + off, r[f"{prefix}masked_frac"], height=0.3, color=color, alpha=0.7, label=f"masked, {label}")
            a2.plot(
                r[f"{prefix}grad_mass_share"],
                y + off,
                "D",
                color=color,
                ms=5,
                mfc="w",
                label=f"gradient mass kept, {label}",
            )
        a1.axvline(0.0, color="0.3", lw=0.8)
        a1.set_xscale("symlog", linthresh=1e-5)
        a1.set_yticks(y, names)
        a1.invert_yaxis()
        a1.set_xlabel("w - 1 (min-max, 5-95%, median)")
        a1.legend(fontsize=8, loc="lower right")
        a2.set_yticks(y, names)
        a2.invert_yaxis()
        a2.set_xlabel("fraction of tokens / share of gradient mass")
        a2.axvline(1.0, color="0.3", lw=0.8)
        a2.legend(fontsize=8, loc="lower right")
        fig.suptitle(title, y=1.02)
        fig.tight_layout()
    return save(fig, stem, formats)


def by_step_figure(by_step: pd.DataFrame, stem: str | Path, *, title: str, formats=("png",)) -> list[Path]:
    """Mismatch and masking over training: mean and max ``abs(pi - mu)`` per step (left), and
    each objective's masked fraction per step (right; for a mismatch-only replay, which has no
    objectives, the mean log-ratio ``log(pi / mu)`` per step instead). ``by_step`` is
    :attr:`ReplayResult.by_step`."""
    masked = [c for c in by_step.columns if c.endswith("_masked_frac")]
    with paper_style():
        fig, (a1, a2) = plt.subplots(1, 2, figsize=(12.0, 4.2))
        a1.plot(by_step["step"], by_step["abs_shift_mean"], color="#d62728", label="mean")
        a1.plot(by_step["step"], by_step["abs_shift_max"], color="#d62728", ls="--", lw=1.0, label="max")
        a1.set_yscale("log")
        a1.set_xlabel("step")
        a1.set_ylabel(r"$|\pi-\mu|$")
        a1.legend(fontsize=8)
        if masked:
            for c in masked:
                name = c[: -len("_masked_frac")]
                a2.plot(by_step["step"], by_step[c], label=name, **STYLE.get(name, {}))
            a2.set_ylabel("fraction of tokens masked")
            a2.legend(fontsize=8, ncol=2)
        else:  # a mismatch-only replay: no objectives to mask anything
            a2.plot(by_step["step"], by_step["log_ratio_mean"], color="#1f77b4")
            a2.axhline(0.0, color="0.6", lw=0.8)
            a2.set_ylabel(r"mean $\log(\pi/\mu)$")
        a2.set_xlabel("step")
        fig.suptitle(title, y=1.02)
        fig.tight_layout()
    return save(fig, stem, formats)


def _smoothed(d: pd.DataFrame, column: str, window: int) -> pd.DataFrame:
    """Per step: the mean over seeds of ``column``'s ``window``-step moving average, and its range
    over seeds (NaN rows, such as steps without an evaluation, are left out first)."""
    d = d.dropna(subset=[column]).sort_values(["seed", "step"])
    rolled = d.groupby("seed")[column].transform(lambda x: x.rolling(window, min_periods=1).mean())
    g = d.assign(_v=rolled).groupby("step")["_v"]
    return pd.DataFrame({"mean": g.mean(), "lo": g.min(), "hi": g.max()}).reset_index()


def arena_curves_figure(df: pd.DataFrame | Sequence[pd.DataFrame], stem: str | Path, *,
                        panels: Sequence[tuple[str, Sequence[str], bool]],
                        hue: str, order: Sequence[str], methods: dict[str, str] | None = None, title: str,
                        window: int = 10, formats=("png",), ncols: int = 2) -> list[Path]:
    """Arena runs against the step, one panel per ``(ylabel, columns, log y)`` (a ylabel
    ``"what: quantity"`` titles its panel ``what``): for each value of
    ``hue`` (in ``order``), the mean over seeds of each column's moving average (``window``
    steps), its range over seeds shaded; a second column of a panel is drawn dashed. ``methods``
    maps a hue value to its objective, for the toolkit's colours. ``df`` may also be one table
    per panel."""
    n = len(panels)
    frames = [df] * n if isinstance(df, pd.DataFrame) else list(df)
    nrows = -(-n // ncols)
    palette = sns.color_palette("colorblind", max(len(order), 3))
    with paper_style():
        fig, axes = plt.subplots(nrows, ncols, figsize=(6.2 * ncols, 4.2 * nrows), squeeze=False)
        for ax, (ylabel, columns, log), frame in zip(axes.flat, panels, frames):
            for k, name in enumerate(order):
                d = frame[frame[hue] == name]
                if d.empty:
                    continue
                method = (methods or {}).get(name, name)
                nth = sum((methods or {}).get(o, o) == method for o in order[:k])  # earlier labels of its objective
                style = variant_style(name, method, k, nth) if methods else {"color": palette[k], "lw": 1.8}
                style.setdefault("color", palette[k])
                for i, col in enumerate(columns):
                    s = _smoothed(d, col, window)
                    if s.empty:
                        continue
                    line = {**style, "ls": "--" if i else style.get("ls", "-")}
                    ax.plot(s["step"], s["mean"], label=name if i == 0 else None, **line)
                    ax.fill_between(s["step"], s["lo"], s["hi"], color=style["color"], alpha=0.10, lw=0)
            ax.set_xlabel("step")
            head, _, quantity = ylabel.rpartition(": ")  # "what: quantity" titles the panel with "what"
            ax.set_ylabel(quantity)
            if head:
                ax.set_title(head, fontsize="medium")
            if log:
                ax.set_yscale("log")
        for ax in list(axes.flat)[n:]:
            ax.set_visible(False)
        handles, labels = axes.flat[0].get_legend_handles_labels()
        fig.legend(handles, labels, loc="upper center", ncol=min(len(labels), 5), fontsize="small",
                   bbox_to_anchor=(0.5, 0.0), frameon=False)
        fig.suptitle(title, y=1.01)
        fig.tight_layout()
    return save(fig, stem, formats)


def grad_share_figure(shares: pd.DataFrame, stem: str | Path, *, title: str, formats=("png",)) -> list[Path]:
    """Stacked horizontal bars: for each row of ``shares`` (index: contestant), the share of the
    gradient coefficients carried by each (mu bin, sign of A) column; positive advantages in
    warm colours, negative in cool ones."""
    cols = list(shares.columns)
    pos = [c for c in cols if c.endswith("_pos")]
    neg = [c for c in cols if c.endswith("_neg")]
    colors = dict(zip(pos, sns.color_palette("OrRd", len(pos) + 1)[1:])) | dict(
        zip(neg, sns.color_palette("PuBu", len(neg) + 1)[1:]))
    with paper_style():
        fig, ax = plt.subplots(figsize=(10, 0.5 * len(shares) + 2))
        left = np.zeros(len(shares))
        for c in pos + neg:
            ax.barh(shares.index, shares[c], left=left, color=colors[c],
                    label=c.replace("grad_share_", "").replace("_pos", ", A > 0").replace("_neg", ", A < 0"))
            left += shares[c].to_numpy()
        ax.invert_yaxis()
        ax.set_xlim(0, 1)
        ax.set_xlabel("share of a step's sum |c_t dJ_t/dlogp_t| (mu bin, sign of A)")
        ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.15), ncol=4, fontsize="small", frameon=False)
        ax.set_title(title)
        fig.tight_layout()
    return save(fig, stem, formats)


def order_of_events_figure(events: pd.DataFrame, stem: str | Path, *, title: str, formats=("png",)) -> list[Path]:
    """Each collapsed run as a point: the step its mismatch started to climb against the step its
    reward started to fall (:func:`drpo_sim.summaries.order_of_events`); below the diagonal, the
    mismatch moved first. Runs without a fall step sit on the right edge at their collapse step."""
    with paper_style():
        fig, ax = plt.subplots(figsize=(6.4, 5.4))
        if events.empty:
            ax.text(0.5, 0.5, "no run collapsed", ha="center", va="center", transform=ax.transAxes)
            ax.set_xticks([])
            ax.set_yticks([])
        else:
            fall = events["fall_step"].fillna(events["collapse_step"])
            top = float(np.nanmax([fall.max(), events["climb_step"].max(), 1.0]))
            ax.plot([0, top], [0, top], color="0.6", lw=1, ls="--")
            palette = sns.color_palette("colorblind", 10)
            for k, (method, d) in enumerate(events.groupby("method", sort=False)):
                ax.scatter(fall[d.index], d["climb_step"], color=palette[k % 10], s=40, edgecolor="k", lw=0.5,
                           label=f"{method} ({d['precision'].iloc[0]})")
            ax.set_xlabel("step the training reward started to fall")
            ax.set_ylabel("step the mismatch started to climb")
            ax.legend(loc="best", fontsize="small")
        ax.set_title(title)
        fig.tight_layout()
    return save(fig, stem, formats)


#: Line colours of the gradient sweep's objectives, in order (red and black are kept for the question
#: and pg_is).
GRADIENT_PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22", "#7f7f7f")
#: The gradient sweep figure's columns: (diagnostic, title, y scale).
GRADIENT_PANELS = (("cosine", "cosine of E[g] with grad J", "linear"),
                   ("relative_bias", "||E[g] - grad J|| / ||grad J||", "log"),
                   ("variance", "variance: E||g - E[g]||^2", "log"),
                   ("batch_cosine", "one batch: mean cosine of g with grad J", "linear"))


def gradient_sweep_figure(table: pd.DataFrame, stem: str | Path, *, question: str | None = None,
                          x_column: str = "noise_std", formats=("png",)) -> list[Path]:
    """The gradient sweep's figure (:func:`drpo_sim.gradients.gradient_sweep`): columns
    :data:`GRADIENT_PANELS`, one row per staleness, ``x_column`` on x (the engine noise std, sorted,
    or the arena's engine ``precision``, in the table's order; its KL(mu || pi_old) beneath), one line
    per objective (``question`` in red, ``pg_is`` in black); written as ``stem.<fmt>``."""
    stale = sorted(table["staleness"].unique())
    noise = (sorted(table[x_column].unique()) if x_column == "noise_std"
             else list(dict.fromkeys(table[x_column])))
    labels = list(dict.fromkeys(table["label"]))
    n_colours = len(GRADIENT_PALETTE)
    styles = {lab: {"color": GRADIENT_PALETTE[i % n_colours], "ls": ("-", "--", "-.")[(i // n_colours) % 3], "lw": 1.6,
                    "marker": "o", "ms": 3.5} for i, lab in enumerate(labels)}
    if "pg_is" in styles:
        styles["pg_is"] = {"color": "k", "ls": ":", "lw": 2.4, "marker": None, "zorder": 5}
    if question in styles:
        styles[question] = {**styles[question], "color": "#d62728", "marker": "x", "ms": 7, "lw": 1.2}
    x = np.arange(len(noise))
    with paper_style():
        n_panels = len(GRADIENT_PANELS)
        fig, axes = plt.subplots(len(stale), n_panels, figsize=(4.2 * n_panels, 3.3 * len(stale) + 0.8),
                                 sharex=True, squeeze=False)
        for i, k in enumerate(stale):
            cell = table[table["staleness"] == k]
            kl_engine = cell.groupby(x_column)["kl_engine"].first().reindex(noise)
            for j, (col, title, scale) in enumerate(GRADIENT_PANELS):
                ax = axes[i, j]
                for lab in labels:
                    line = cell[cell["label"] == lab].set_index(x_column)[col].reindex(noise)
                    ax.plot(x, line.to_numpy(), label=lab, **styles[lab])
                if col == "relative_bias":
                    ax.axhline(1.0 / cell["n_samples"].iloc[0], color="0.5", lw=0.9, ls="--",
                               label="1/G: the group-mean baseline's bias")
                ax.set_yscale(scale)
                if scale == "log":
                    ax.yaxis.set_major_locator(LogLocator(base=10.0, subs=(1.0, 2.0, 5.0)))
                    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:.3g}"))
                    ax.yaxis.set_minor_formatter(FuncFormatter(lambda v, _: ""))
                if i == 0:
                    ax.set_title(title, fontsize=11)
                if j == 0:
                    ax.set_ylabel(f"k = {k} updates\nKL(pi_old||pi) = {cell['kl_stale'].iloc[0]:.2g}")
                if i == len(stale) - 1:
                    ax.set_xticks(x, [f"{s:g}\n{kl:.1g}" if x_column == "noise_std" else f"{s}\n{kl:.1g}"
                                      for s, kl in zip(noise, kl_engine, strict=True)])
                    ax.set_xlabel("engine noise std (KL(mu||pi_old) beneath)" if x_column == "noise_std"
                                  else f"engine {x_column} (KL(mu||pi_old) beneath)")
        handles, names = axes[0, 1].get_legend_handles_labels()
        fig.legend(handles, names, loc="lower center", ncol=min(5, len(names)), frameon=False,
                   bbox_to_anchor=(0.5, -0.02 - 0.012 * (len(names) > 5)))
        env = table["env"].iloc[0] if "env" in table.columns else "bandit"
        fig.suptitle(f"Sampled gradients against the exact one ({env}): same batches for every objective", y=1.0)
        fig.tight_layout(rect=(0, 0.06, 1, 1))
    return save(fig, stem, formats)
