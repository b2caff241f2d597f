"""``drpo-sim gradients``: each objective's sampled gradient against the exact gradient of the
expected reward (:mod:`drpo_sim.gradients`), in the long-tail bandit or the tabular task, with an
engine off by Gaussian logit noise and a trainer some updates past the rollout.

One setting prints the table (``--csv`` writes it); ``--sweep --out DIR`` runs the grid of
mismatch size and staleness and writes ``DIR/gradient_diagnostics.csv``, the figure
``DIR/gradient_diagnostics.png`` and ``DIR/gradient_diagnostics_equivalence.csv``, the
pre-registered test of DRPO at ``delta = 12.5`` against ``pg_is``
(:func:`drpo_sim.gradients.equivalence`); with ``--env tabular`` the names end in ``_tabular``.
``--quick`` (the default) takes a few seconds; ``--full`` is the committed figures' setting
(``docs/figures/gradient_diagnostics*``: about a minute of sweep for each world on two cores).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.ticker import FuncFormatter, LogLocator

from drpo_sim import analysis, gradients
from drpo_sim._io import write_csv
from drpo_sim.config import REPLAY_OBJECTIVES, parse_formats, parse_names, parse_params
from drpo_sim.envs.bandit import LongTailBandit
from drpo_sim.envs.tabular import TabularSequence
from drpo_sim.plots import paper_style, plt, save

#: The sweep's settings per profile and world: vocabulary, responses per prompt (the bandit: tokens
#: per batch), batches, engine noise stds and staleness (updates since the rollout).
SWEEP_PROFILES: dict[str, dict[str, dict]] = {
    "quick": {
        "bandit": {"vocab": 64, "samples": 16, "batches": 200, "noise": (0.0, 0.3), "staleness": (0, 2)},
        "tabular": {"vocab": 16, "samples": 4, "batches": 100, "noise": (0.0, 0.3), "staleness": (0, 2)},
    },
    "full": {
        "bandit": {"vocab": 1024, "samples": 64, "batches": 20000, "noise": (0.0, 0.05, 0.1, 0.3, 0.6, 1.0),
                   "staleness": (0, 2, 8)},
        "tabular": {"vocab": 64, "samples": 8, "batches": 2000, "noise": (0.0, 0.05, 0.1, 0.3, 0.6, 1.0),
                    "staleness": (0, 2, 8)},
    },
}
#: One setting's defaults per world (without ``--sweep``).
SINGLE: dict[str, dict[str, int]] = {"bandit": {"vocab": 1024, "samples": 64, "batches": 2000},
                                     "tabular": {"vocab": 64, "samples": 8, "batches": 500}}
#: The per-update KL of the trainer's steps since the rollout (:func:`drpo_sim.gradients.after_updates`).
STEP_KL = 1e-3
#: The objective whose equivalence with the reference the sweep reports (issue 16).
QUESTION = "drpo (delta 12.5)"
#: Line colours of the sweep's objectives, in order (red and black are kept for DRPO-12.5 and pg_is).
PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22", "#7f7f7f")
PANELS = (("cosine", "cosine of E[g] with grad J", "linear"),
          ("relative_bias", "||E[g] - grad J|| / ||grad J||", "log"),
          ("variance", "variance: E||g - E[g]||^2", "log"),
          ("batch_cosine", "one batch: mean cosine of g with grad J", "linear"))


def configure_gradients(p: argparse.ArgumentParser) -> None:
    p.add_argument("--env", choices=("bandit", "tabular"), default="bandit",
                   help="the world: the long-tail bandit or the tabular task (default %(default)s)")
    p.add_argument("--objectives", default=None,
                   help=f"comma-separated objectives (default {','.join(REPLAY_OBJECTIVES)}; with --sweep: "
                   f"{', '.join(gradients.SWEEP_OBJECTIVES)})")
    p.add_argument("--param", action="append", metavar="OBJ.NAME=VALUE",
                   help="an objective's parameter, e.g. drpo.delta=0.15 (repeatable)")
    p.add_argument("--vocab", type=int, default=None, help="the vocabulary (default: 1024 bandit, 64 tabular; "
                   "--sweep: the profile's)")
    p.add_argument("--zipf", type=float, default=LongTailBandit.zipf_exponent,
                   help="Zipf exponent of the initial policy (default %(default)s)")
    p.add_argument("--prompts", type=int, default=TabularSequence.n_prompts,
                   help="the tabular task's prompts (default %(default)s)")
    p.add_argument("--horizon", type=int, default=TabularSequence.horizon,
                   help="the tabular task's response length (default %(default)s)")
    p.add_argument("--engine-noise", type=float, default=0.3, metavar="STD",
                   help="std of the Gaussian noise on the engine's logits; 0: a bit-exact engine (default %(default)s)")
    p.add_argument("--staleness", type=int, default=0, metavar="K",
                   help="updates the trainer made since the rollout (pi_old -> pi; default %(default)s)")
    p.add_argument("--step-kl", type=float, default=STEP_KL,
                   help="KL(pi_before || pi_after) per token of each update (default %(default)s)")
    p.add_argument("--samples", type=int, default=None,
                   help="tokens per batch in the bandit, responses per prompt in the tabular task "
                   "(default: 64 bandit, 8 tabular; --sweep: the profile's)")
    p.add_argument("--batches", type=int, default=None,
                   help="independent batches (default: 2000 bandit, 500 tabular; --sweep: the profile's)")
    p.add_argument("--seed", type=int, default=0, help="seed of the engine's noise and of the batches")
    p.add_argument("--csv", help="also write the table here")
    sweep = p.add_argument_group("the sweep over mismatch size and staleness")
    sweep.add_argument("--sweep", action="store_true", help="run the grid and write the CSV and the figure to --out")
    sweep.add_argument("--out", help="the sweep's output directory")
    profile = sweep.add_mutually_exclusive_group()
    profile.add_argument("--quick", dest="profile", action="store_const", const="quick",
                         help="a few seconds: a small vocabulary, few batches, a 2 x 2 grid (default)")
    profile.add_argument("--full", dest="profile", action="store_const", const="full",
                         help="the committed figures' setting (about a minute per world on two cores)")
    sweep.add_argument("--noise-grid", help="comma-separated engine noise stds (default: the profile's)")
    sweep.add_argument("--staleness-grid", help="comma-separated staleness values (default: the profile's)")
    sweep.add_argument("--formats", default="png", help="the figure's image formats: png, pdf, svg (default png)")
    p.set_defaults(func=run_gradients, profile=None)


def _world(args: argparse.Namespace, vocab: int):
    """``(pi_old's logits, rewards or the task)`` of the chosen world."""
    if args.env == "bandit":
        env = LongTailBandit(vocab_size=vocab, zipf_exponent=args.zipf)
        return env.initial_logits()[0], env.token_rewards()
    env = TabularSequence(vocab_size=vocab, n_prompts=args.prompts, horizon=args.horizon, zipf_exponent=args.zipf)
    return env.initial_logits(), env


def _methods(args: argparse.Namespace, default):
    if args.objectives is None and args.param is None and default is not None:
        return default
    names = parse_names(args.objectives if args.objectives is not None else ",".join(REPLAY_OBJECTIVES))
    return analysis.objective_specs(names, parse_params(args.param))


def _grid(text: str | None, default, cast, flag: str) -> list:
    if text is None:
        return list(default)
    try:
        values = [cast(v) for v in parse_names(text)]
    except ValueError:
        raise ValueError(f"{flag}: not a comma-separated list of numbers: {text!r}") from None
    if not values:
        raise ValueError(f"{flag}: empty list")
    return values


def run_gradients(args: argparse.Namespace) -> int:
    if not (np.isfinite(args.engine_noise) and args.engine_noise >= 0):
        raise ValueError(f"--engine-noise must be a finite number >= 0, got {args.engine_noise}")
    if args.staleness < 0:
        raise ValueError(f"--staleness must be >= 0, got {args.staleness}")
    if not (np.isfinite(args.step_kl) and args.step_kl > 0):
        raise ValueError(f"--step-kl must be a finite number > 0, got {args.step_kl}")
    if args.sweep:
        return _run_sweep(args)
    if args.out is not None or args.noise_grid is not None or args.staleness_grid is not None or args.profile:
        raise ValueError("--out, --quick, --full, --noise-grid and --staleness-grid belong to --sweep")
    d = SINGLE[args.env]
    vocab, samples, batches = (v if v is not None else d[k] for k, v in
                               (("vocab", args.vocab), ("samples", args.samples), ("batches", args.batches)))
    objs = _methods(args, None)
    old, rewards = _world(args, vocab)
    rng = np.random.default_rng(args.seed)
    engine = old + rng.normal(0.0, args.engine_noise, old.shape)
    logits = gradients.after_updates(old, rewards, updates=args.staleness, step_kl=args.step_kl)
    table = gradients.gradient_diagnostics(list(objs.values()), logits, engine, rewards, n_samples=samples,
                                           n_batches=batches, rng=rng, old_logits=old)
    where = (f"the long-tail bandit, V={vocab}" if args.env == "bandit"
             else f"the tabular task, V={vocab}, {args.prompts} prompts x {args.horizon} positions")
    print(f"# {where}, engine logit noise {args.engine_noise:g}, {args.staleness} updates since the rollout "
          f"(KL {args.step_kl:g} each); {batches} batches of {samples} "
          f"{'tokens' if args.env == 'bandit' else 'responses per prompt'}; ||grad J|| = "
          f"{np.linalg.norm(gradients.exact_gradient(logits, rewards)):.4g}")
    with pd.option_context("display.width", 200, "display.max_columns", 50):
        print(table[["objective", *gradients.DIAGNOSTICS]].to_string(index=False, float_format=lambda x: f"{x:.4g}"))
    if args.csv:
        print(f"wrote {write_csv(table, args.csv)}")
    return 0


def _run_sweep(args: argparse.Namespace) -> int:
    if args.out is None:
        raise ValueError("--sweep needs --out DIR")
    if args.csv is not None:
        raise ValueError("--csv is for one setting; --sweep writes DIR/gradient_diagnostics.csv")
    prof = SWEEP_PROFILES[args.profile or "quick"][args.env]
    formats = parse_formats(args.formats)
    noise = _grid(args.noise_grid, prof["noise"], float, "--noise-grid")
    stale = _grid(args.staleness_grid, prof["staleness"], int, "--staleness-grid")
    if any(k < 0 for k in stale):
        raise ValueError(f"--staleness-grid: values must be >= 0, got {stale}")
    vocab, samples, batches = (v if v is not None else prof[k] for k, v in
                               (("vocab", args.vocab), ("samples", args.samples), ("batches", args.batches)))
    methods = _methods(args, gradients.SWEEP_OBJECTIVES)
    reference = "pg_is" if "pg_is" in methods else None
    old, rewards = _world(args, vocab)
    start = time.perf_counter()
    table = gradients.gradient_sweep(old, rewards, methods=methods, noise_stds=noise, staleness=stale,
                                     step_kl=args.step_kl, n_samples=samples, n_batches=batches,
                                     rng=np.random.default_rng(args.seed), reference=reference)
    elapsed = time.perf_counter() - start
    out, stem = Path(args.out), "gradient_diagnostics" + ("" if args.env == "bandit" else f"_{args.env}")
    table.insert(0, "env", args.env)
    print(f"# {args.env}, V={vocab}, {batches} batches of {samples}, noise {noise}, staleness {stale} "
          f"(KL {args.step_kl:g} per update): {elapsed:.1f} s")
    print(f"wrote {write_csv(table, out / f'{stem}.csv')}")
    for path in sweep_figure(table, out / stem, formats=formats):
        print(f"wrote {path}")
    if reference is not None and QUESTION in set(table["label"]):
        verdict = gradients.equivalence(table, QUESTION)
        print(f"# {QUESTION} against pg_is, paired: ||E[g - g_pg_is]|| / ||grad J|| against the margin "
              f"{gradients.EQUIVALENCE_MARGIN:g}")
        print(verdict.to_string(index=False, float_format=lambda x: f"{x:.3g}"))
        print(f"wrote {write_csv(verdict, out / f'{stem}_equivalence.csv')}")
    return 0


def sweep_figure(table: pd.DataFrame, stem: str | Path, *, formats=("png",)) -> list[Path]:
    """The sweep's figure: columns :data:`PANELS`, one row per staleness, engine noise std on x (its
    KL(mu || pi_old) beneath), one line per objective; written as ``stem.<fmt>``."""
    stale = sorted(table["staleness"].unique())
    noise = sorted(table["noise_std"].unique())
    labels = list(dict.fromkeys(table["label"]))
    styles = {lab: {"color": PALETTE[i % len(PALETTE)], "ls": ("-", "--", "-.")[(i // len(PALETTE)) % 3], "lw": 1.6,
                    "marker": "o", "ms": 3.5} for i, lab in enumerate(labels)}
    if "pg_is" in styles:
        styles["pg_is"] = {"color": "k", "ls": ":", "lw": 2.4, "marker": None, "zorder": 5}
    if QUESTION in styles:
        styles[QUESTION] = {**styles[QUESTION], "color": "#d62728", "marker": "x", "ms": 7, "lw": 1.2}
    x = np.arange(len(noise))
    with paper_style():
        fig, axes = plt.subplots(len(stale), len(PANELS), figsize=(4.2 * len(PANELS), 3.3 * len(stale) + 0.8),
                                 sharex=True, squeeze=False)
        for i, k in enumerate(stale):
            cell = table[table["staleness"] == k]
            kl_engine = cell.groupby("noise_std")["kl_engine"].first().reindex(noise)
            for j, (col, title, scale) in enumerate(PANELS):
                ax = axes[i, j]
                for lab in labels:
                    line = cell[cell["label"] == lab].set_index("noise_std")[col].reindex(noise)
                    ax.plot(x, line.to_numpy(), label=lab, **styles[lab])
                if col == "relative_bias":
                    ax.axhline(1.0 / cell["n_samples"].iloc[0], color="0.5", lw=0.9, ls="--",
                               label="1/G: the group-mean baseline's bias")
                ax.set_yscale(scale)
                if scale == "log":
                    ax.yaxis.set_major_locator(LogLocator(base=10.0, subs=(1.0, 2.0, 5.0)))
                    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:.2g}"))
                    ax.yaxis.set_minor_formatter(FuncFormatter(lambda v, _: ""))
                if i == 0:
                    ax.set_title(title, fontsize=11)
                if j == 0:
                    ax.set_ylabel(f"k = {k} updates\nKL(pi_old||pi) = {cell['kl_stale'].iloc[0]:.2g}")
                if i == len(stale) - 1:
                    ax.set_xticks(x, [f"{s:g}\n{kl:.1g}" for s, kl in zip(noise, kl_engine, strict=True)])
                    ax.set_xlabel("engine noise std (KL(mu||pi_old) beneath)")
        handles, names = axes[0, 1].get_legend_handles_labels()
        fig.legend(handles, names, loc="lower center", ncol=min(5, len(names)), frameon=False,
                   bbox_to_anchor=(0.5, -0.02 - 0.012 * (len(names) > 5)))
        env = table["env"].iloc[0] if "env" in table.columns else "bandit"
        fig.suptitle(f"Sampled gradients against the exact one ({env}): same batches for every objective", y=1.0)
        fig.tight_layout(rect=(0, 0.06, 1, 1))
    return save(fig, stem, formats)
