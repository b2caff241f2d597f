"""The report: ``paper/README.md``, a short paper generated from the result files of a run.

:func:`write_report` reads a results directory (normally ``figures/``, what ``drpo-sim reproduce``
writes: ``claims.json``, ``MANIFEST.json``, the figures' CSVs and PNGs, the replays' JSON) and writes
a Markdown report for a reader who has never seen the issue tracker: what DRPO is, how the toolkit
tests it, one section per claim of the reference (``docs/reference.md``) with its verdict, figure,
numbers and reason, what the results do not show, and how to reproduce them.

The rule it keeps: **no number in the report is typed by hand**; every number it shows is read from
a result file, and :func:`write_report` checks what it wrote with
:func:`drpo_sim.paper.numbers.check_numbers`. The objectives' formulas come from the registry
(:attr:`drpo_sim.objectives.Objective.formula`), the file and figure names from the analyses'
specs.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import quote

import numpy as np
import pandas as pd

from drpo_sim import gradients, objectives
from drpo_sim._io import write_text
from drpo_sim.config import REPLAY_OBJECTIVES
from drpo_sim.paper.analyses import (
    arena,
    arena_reward_scales,
    arena_three_policies,
    gradient_diagnostics,
    replay_sim,
    weight_table,
)
from drpo_sim.paper.claims import CLAIMS_FILE, STATEMENTS, load_claims
from drpo_sim.paper.manifest import MANIFEST_FILE, load_manifest, read_json, total_wall_time
from drpo_sim.paper.numbers import (
    CLAIM_NUMBERS,
    STRUCTURAL_NUMBERS,
    check_numbers,
    checked_text,
    format_number,
    format_percent,
    numeric_literals,
)

__all__ = ["objectives_table", "render_report", "report_inputs", "write_report"]

REPORT_FILE = "README.md"


def _read_csv(path: Path) -> pd.DataFrame | None:
    try:
        return pd.read_csv(path) if path.is_file() else None
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError):
        return None


# ----------------------------------------------------------------------------------------------
# Markdown helpers


def _cell(text: Any) -> str:
    """Text for a Markdown table cell: pipes escaped, newlines folded."""
    return str(text).replace("|", "\\|").replace("\n", " ")


def _table(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _values(xs: Iterable[Any]) -> str:
    """A list of configuration values: numbers formatted, strings as they are."""
    return ", ".join(format_number(x) if _is_number(x) else str(x) for x in xs)


def _is_number(x: Any) -> bool:
    return isinstance(x, (int, float, np.integer, np.floating)) and not isinstance(x, bool)


def _short_statement(statement: str, limit: int = 90) -> str:
    """A claim's statement for the summary table: parentheses dropped, first clause, at most
    ``limit`` characters cut at a word."""
    text = re.sub(r"\s+\([^()]*\)", "", statement)
    text = re.split(r";\s", text, maxsplit=1)[0].strip().rstrip(".")
    if len(text) > limit:
        text = text[:limit].rsplit(" ", 1)[0].rstrip(",;:") + " ..."
    return text


@dataclasses.dataclass
class _Context:
    """What every section needs: the directories, the loaded files and the figures already shown."""

    results: Path
    paper: Path
    claims: list[dict]
    manifest: dict
    shown: set[str] = dataclasses.field(default_factory=set)

    @property
    def link_base(self) -> str:
        rel = Path(os.path.relpath(self.results.resolve(), self.paper.resolve())).as_posix()
        return "" if rel == "." else rel + "/"

    def link(self, name: str) -> str:
        return quote(self.link_base + name)

    def figure(self, name: str, caption: str | None = None) -> str:
        """A figure's embedded PNG, or a note when its file is absent; records it as shown."""
        name = name.removesuffix(".png")
        self.shown.add(name)
        if not (self.results / f"{name}.png").is_file():
            return f"*(figure `{name}` is not in this run's results)*"
        return f"![{caption or name}]({self.link(name + '.png')})"

    def source(self, name: str) -> str:
        """A source: a link when it is a file of the results, else its name as code."""
        if (self.results / name).is_file():
            return f"[{name}]({self.link(name)})"
        return f"`{name}`"

    def records(self) -> list[dict]:
        return self.manifest.get("figures", [])

    def has_png(self, name: str) -> bool:
        return (self.results / f"{name}.png").is_file()


# ----------------------------------------------------------------------------------------------
# sections


def _header(ctx: _Context) -> str:
    m = ctx.manifest
    version = m.get("version") or "unknown"
    commit = m.get("git_commit") or "unknown"
    profile = m.get("profile") or "unknown"
    python = m.get("python")
    line = (f"`drpo_sim` version `{version}`, commit `{commit}`, profile **{profile}**"
            + (f", Python `{python}`" if python else "")
            + f"; total wall time {format_number(total_wall_time(m))} s (the figures' jobs, from `MANIFEST.json`)."
            + _older_commits(ctx.records(), commit))
    return "\n\n".join([
        "<!-- Generated by drpo_sim.paper.report.write_report from the result files; do not edit by hand. -->",
        "# Which policy objectives keep LLM RL stable off-policy? DRPO and its neighbours, tested",
        line,
        ("Every number on this page is read from the result files of the run named above; "
         "`drpo_sim.paper.numbers.check_numbers` verifies that none is typed by hand."),
    ])


def _older_commits(records: list[dict], commit: str) -> str:
    """The analyses a merged manifest kept from runs at other commits, by commit ("" if none)."""
    older: dict[str, list[str]] = {}
    for rec in records:
        c = rec.get("git_commit")
        if c and c != commit:
            name = str(rec.get("script") or rec.get("figure"))
            if name not in older.setdefault(c, []):
                older[c].append(name)
    if not older:
        return ""
    return " Kept from earlier runs: " + "; ".join(f"{', '.join(n)} at commit `{c}`" for c, n in older.items()) + "."


def _claims_by_number(ctx: _Context) -> dict[int, dict]:
    return {c["number"]: c for c in ctx.claims}


def _all_claim_numbers(ctx: _Context) -> list[int]:
    return sorted(set(CLAIM_NUMBERS) | set(_claims_by_number(ctx)))


def _statement(ctx: _Context, number: int) -> str | None:
    """A claim's statement: from ``claims.json``; for a claim it does not hold, from
    :data:`drpo_sim.paper.claims.STATEMENTS`, but only if that statement quotes no number beyond the
    structural ones (0 to 12): its numbers would be typed by hand, in no result file."""
    claim = _claims_by_number(ctx).get(number)
    if claim is not None:
        return claim["statement"]
    statement = STATEMENTS.get(number)
    if statement is None or not _only_structural_numbers(statement):
        return None
    return statement


def _only_structural_numbers(text: str) -> bool:
    """Whether every numeric literal of ``text`` is an exact integer among ``STRUCTURAL_NUMBERS``."""
    return all(lit.tolerance == 0 and lit.value in STRUCTURAL_NUMBERS
               for lit in numeric_literals(checked_text(text)))


def _anchor(number: int, statement: str | None) -> str:
    """GitHub's anchor for a claim's heading (lower case, punctuation dropped, spaces to hyphens)."""
    heading = _claim_heading(number, statement).lower()
    return "#" + re.sub(r"\s", "-", re.sub(r"[^\w\- ]", "", heading))


def _claim_heading(number: int, statement: str | None) -> str:
    return f"Claim {number}: {statement.rstrip('.')}" if statement else f"Claim {number}"


def _summary(ctx: _Context) -> str:
    by_number = _claims_by_number(ctx)
    rows = []
    for n in _all_claim_numbers(ctx):
        statement = _statement(ctx, n)
        short = _short_statement(statement) if statement else ""
        name = f"[{n}]({_anchor(n, statement)})"
        claim = by_number.get(n)
        if claim is None:
            rows.append([name, short, "not tested", "-", "not tested in this run"])
        else:
            rows.append([name, short, f"**{claim['verdict']}**", _tested_in(claim), claim["reason"]])
    intro = ("The claims of the project's reference (`docs/reference.md`, \"Claims the toolkit tests\"), each "
             "put to a test by `drpo_sim.paper.claims`: supported, not supported, inconclusive (neither a "
             "difference nor an equivalence is shown), or not testable here (the world it ran in lacks the "
             "mechanism the claim is about), with the reason measured and the world and profile it comes from.")
    return "\n\n".join(["## Summary", intro,
                         _table(["Claim", "Statement (short)", "Verdict", "Tested in", "Why"], rows)])


def _tested_in(claim: dict) -> str:
    """Where a verdict comes from: the world and the run's profile (older claim files: unknown)."""
    world = claim.get("world")
    if not world:
        return "not recorded"
    profile = claim.get("profile")
    return f"{world} ({profile} profile)" if profile and profile != "unknown" else world


def _how_this_claim_was_tested(claim: dict) -> str:
    """One paragraph: the world and profile, the test, its margin and level, seeds and cells, the
    corrected p-value, and for "not testable here" the mechanisms the world lacks."""
    if "test" not in claim:
        return "This claim file does not record how the claim was tested (it predates those fields)."
    parts = [f"**Tested in** the {_tested_in(claim)}, with {claim['test']}"]
    if claim.get("margin") is not None:
        parts.append(f"equivalence margin {format_number(claim['margin'])} (declared before the run)")
    if claim.get("confidence") is not None:
        parts.append(f"intervals at {format_percent(claim['confidence'])}")
    if claim.get("n_seeds"):
        cells = claim.get("n_cells") or 0
        parts.append(f"{claim['n_seeds']} seeds" + (f", {cells} {'cell' if cells == 1 else 'cells'}" if cells else ""))
    if claim.get("p_value") is not None:
        parts.append(f"decisive corrected p-value {format_number(claim['p_value'])}")
    text = "; ".join(parts) + "."
    if claim.get("needs"):
        text += " It needs: " + ", ".join(f"`{m}`" for m in claim["needs"]) + "."
    return text


def objectives_table(names: Sequence[str] = REPLAY_OBJECTIVES, *, sources: bool = False) -> str:
    """A Markdown table of the objectives ``names`` with their surrogate, weight and idea (and
    their source, with ``sources``), from the registry (:attr:`drpo_sim.objectives.Objective.formula`).
    The report shows the papers' objectives without sources (their years are numbers no result
    file holds); ``docs/reference.md`` shows every objective with its source."""
    rows = []
    for name in names:
        f = objectives.get(name).formula
        rows.append([f"`{name}`", f"`{f.surrogate}`", f"`{f.weight}`", f.idea, *([f.source] if sources else [])])
    return _table(["objective", "surrogate `J`", "weight `w`", "idea", *(["source"] if sources else [])], rows)


def _what_drpo_is(ctx: _Context) -> str:
    parts = [
        "## What DRPO is",
        ("Reinforcement learning of language models is off-policy in practice. The inference engine that "
         "samples a response reports a probability `mu` for each sampled token; the trainer computes its own "
         "probability `pi` of the same token, and the two differ: the engine runs in lower precision with other "
         "kernels, its weights may be several updates old, and one batch of rollouts serves several optimiser "
         "updates. Every objective below is a per-token surrogate `J` to maximise, with the importance ratio "
         "`r = pi / mu` and the token's advantage `A`."),
        ("**The weight lens.** Each objective's gradient with respect to the token's log-probability is "
         "`dJ/dlog pi = A * r * w`: importance-weighted policy gradient times a weight `w` that is the only "
         "thing that differs between methods (the DRPO paper's Table 1). `w = 1` is unregularised; `w = 0` "
         "masks the token; `0 < w < 1` attenuates it; `w < 0` reverses its update and pulls `pi` back towards "
         "`mu` (corrective)."),
        objectives_table(),
        ("`sg` is stop-gradient. Over the tokens sampled from `mu`, SPO's penalty is in expectation a "
         "chi-square divergence, `sum_a abs(A) (pi(a) - mu(a))^2 / mu(a)`, and DRPO's a squared l2 distance, "
         "`sum_a abs(A) (pi(a) - mu(a))^2`: the `1/mu` is gone. SPO's weight therefore grows without bound as "
         "`mu -> 0`, while DRPO's stays in `[1 - 1/delta, 1 + 1/delta]` for every token, decreases linearly "
         "with the shift in the direction the advantage pushes, and turns corrective past "
         "`sign(A)(pi - mu) = delta`."),
        ("**Why ratio clipping treats rare tokens differently.** A clip on the ratio, `abs(r - 1) <= eps`, is "
         "a clip on the absolute shift `abs(pi - mu) <= eps * mu`: for a rare token (small `mu`) a minute "
         "change of probability already leaves the clip and the token's gradient is masked, while a frequent "
         "token (`mu` near `1`) can lose a large amount of probability with its ratio still inside the clip. "
         "DPPO masks by the absolute shift instead, and DRPO replaces that hard mask by its smooth, bounded "
         "weight."),
    ]
    geometry = weight_table.SPEC
    for name, caption in (
        (geometry.weight_figure, "Every objective's weight against pi at fixed mu"),
        (geometry.plane_figure, "SPO's and DRPO's weight over the (mu, pi) plane with the hard masks"),
        (geometry.gap_figure, "The objectives of three policies and the corrections against the engine's gap "
                              "b = pi_old / mu, at the first update"),
    ):
        if ctx.has_png(name):
            parts.append(ctx.figure(name, caption))
    parts.append(_delta_range(ctx))
    parts.append(_rare_tokens(ctx))
    parts.append(_gradient_diagnostics(ctx))
    return "\n\n".join(p for p in parts if p)


def _gradient_diagnostics(ctx: _Context) -> str:
    """The gradient sweep's figures and the equivalence verdicts of its question against pg_is."""
    spec = gradient_diagnostics.SPEC
    parts = []
    for env in spec.full:
        stem = spec.stem(env)
        if not ctx.has_png(stem):
            continue
        parts.append(ctx.figure(stem, f"Sampled gradients against the exact one ({env}): cosine, bias, variance "
                                      "over mismatch size and staleness"))
        verdicts = _read_csv(ctx.results / f"{stem}_equivalence.csv")
        if verdicts is not None and {"verdict", "diff_rel"} <= set(verdicts.columns) and not verdicts.empty:
            counts = verdicts["verdict"].value_counts()
            summary = ", ".join(f"{counts[v]} {v}" for v in ("equivalent", "undecided", "different") if v in counts)
            parts.append(f"**{spec.question} against pg_is ({env})**, paired on the same batches, margin "
                         f"{format_percent(gradients.EQUIVALENCE_MARGIN)} of `||grad J||`: {summary} of "
                         f"{len(verdicts)} cells; `||E[g - g_pg_is]|| / ||grad J||` from "
                         f"{format_percent(verdicts['diff_rel'].min())} to "
                         f"{format_percent(verdicts['diff_rel'].max())}.")
        every = _read_csv(ctx.results / f"{stem}_all_objectives.csv")
        cols = ["label", "cosine", "relative_bias", "norm_ratio", "variance", "batch_cosine"]
        if every is not None and set(cols) <= set(every.columns) and not every.empty:
            first = every.iloc[0]
            parts.append(f"**Every objective in one cell ({env})**, engine noise {format_number(first['noise_std'])} "
                         f"(KL(mu || pi_old) {format_number(first['kl_engine'])}) and "
                         f"{format_number(first['staleness'])} updates since the rollout (KL(pi_old || pi) "
                         f"{format_number(first['kl_stale'])}), on the sweep's batches "
                         f"(`{stem}_all_objectives.csv`):")
            rows = [[f"`{r['label']}`", *(format_number(r[c]) for c in cols[1:])] for r in every.to_dict("records")]
            parts.append(_table(["objective", "cosine of E[g] with grad J", "relative bias", "length kept",
                                 "variance", "one batch's cosine"], rows))
    return "\n\n".join(parts)


def _delta_range(ctx: _Context) -> str:
    """DRPO's weight range against delta, from the geometry's delta-range table."""
    name = weight_table.SPEC.delta_range_file
    frame = _read_csv(ctx.results / name)
    need = {"delta", "weight_min", "weight_max"}
    if frame is None or not need <= set(frame.columns) or frame.empty:
        return ""
    corrective = "corrective_fraction" in frame.columns
    rows = []
    for rec in frame.to_dict("records"):
        row = [format_number(rec["delta"]), f"[{format_number(rec['weight_min'])}, {format_number(rec['weight_max'])}]"]
        if {"bound_low", "bound_high"} <= set(frame.columns):
            row.append(f"[{format_number(rec['bound_low'])}, {format_number(rec['bound_high'])}]")
        if corrective:
            row.append(format_percent(rec["corrective_fraction"]))
        rows.append(row)
    header = ["`delta`", "weight over the plane, measured"]
    if {"bound_low", "bound_high"} <= set(frame.columns):
        header.append("`[1 - 1/delta, 1 + 1/delta]`")
    if corrective:
        header.append("share of the plane with `w < 0`")
    text = [(f"**How large the weight's range is** (`{name}`, over the `(mu, pi)` plane, both signs "
             "of `A`):"), _table(header, rows)]
    big = frame.loc[frame["delta"].idxmax()]
    sentence = (f"At the largest `delta` drawn, {format_number(big['delta'])}, DRPO's weight never leaves "
                f"[{format_number(big['weight_min'])}, {format_number(big['weight_max'])}]")
    if big["delta"] > 1 and (not corrective or big["corrective_fraction"] == 0):
        sentence += (": a probability shift is at most `1`, smaller than `delta`, so the trust-region boundary "
                     "is never reached and no token is corrected; DRPO there only re-weights each token slightly")
    text.append(sentence + ".")
    figure = weight_table.SPEC.delta_range_figure
    if ctx.has_png(figure):
        text.append(ctx.figure(figure, "DRPO's weight against the shift for several delta"))
    return "\n\n".join(text)


def _replay_prefix(results: Path) -> str | None:
    """The replay to quote on rare tokens: the simulator's if present, else the first one."""
    prefixes = sorted(p.name.removesuffix("replay.json") for p in results.glob("*_replay.json"))
    prefixes = [p for p in prefixes if (results / f"{p}objectives.csv").is_file()]
    if not prefixes:
        return None
    return next((p for p in prefixes if p == replay_sim.SPEC.prefix), prefixes[0])


def _rare_tokens(ctx: _Context) -> str:
    """Masked shares on all tokens and on rare ones, from a replay's ``objectives.csv``."""
    prefix = _replay_prefix(ctx.results)
    if prefix is None:
        return ""
    totals = read_json(ctx.results / f"{prefix}replay.json")
    frame = _read_csv(ctx.results / f"{prefix}objectives.csv")
    cols = {"objective", "masked_frac", "rare_masked_frac"}
    if frame is None or not cols <= set(frame.columns) or not isinstance(totals, dict):
        return ""
    share, threshold = totals.get("rare_share"), totals.get("rare_threshold")
    rare = f"`mu <= {format_number(threshold)}`" if _is_number(threshold) else "rare"
    lead = f"**Rare tokens in a replayed token log** (`{prefix}objectives.csv`"
    if _is_number(share):
        lead += f"; {format_percent(share)} of its tokens have {rare}"
    lead += "): the share of tokens each objective masks (`w = 0`)."
    rows = [[f"`{r['objective']}`", format_percent(r["masked_frac"]), format_percent(r["rare_masked_frac"])]
            for r in frame.to_dict("records")]
    more = frame.loc[frame["rare_masked_frac"] > frame["masked_frac"], "objective"].tolist()
    text = [lead, _table(["objective", "masked, all tokens", f"masked, tokens with {rare}"], rows)]
    if more:
        text.append("Objectives that mask rare tokens more often than tokens overall in this log: "
                    + ", ".join(f"`{m}`" for m in more) + ".")
    else:
        text.append("No objective masks rare tokens more often than tokens overall in this log.")
    return "\n\n".join(text)


#: Configuration keys the experiments table quotes, in this order, wherever they sit in a job's
#: configuration (the first occurrence, searching breadth first).
SETTING_KEYS = ("env", "vocab_size", "n_prompts", "horizon", "reward", "noise_std", "precision", "precisions",
                "staleness", "updates_per_batch", "anchor", "steps", "group_size", "lr", "methods", "objectives", "mus",
                "deltas",
                "tokens", "confidence")


#: Nested configurations searched first: the run's own settings (a sweep's ``base``, the lab's
#: ``lab``, a replayed simulation's ``simulation.config``) before a job's bookkeeping fields.
_PREFERRED = ("simulation", "config", "base", "lab")

#: Objects whose own values describe how a job read its input, not the run (a replay's ``source``:
#: its ``group_size`` is the loader's grouping); their nested objects are still searched.
_BOOKKEEPING = ("source",)


def _find_keys(config: Any, keys: Sequence[str]) -> dict[str, Any]:
    """The first value of each key in a nested configuration: in each object, first the objects
    named in ``_PREFERRED``, then its own values, then its other objects (a sweep's ``grid`` is
    left to :func:`_describe_config`; the own values of ``_BOOKKEEPING`` objects are skipped)."""
    found: dict[str, Any] = {}

    def visit(item: Any, name: str) -> None:
        if not isinstance(item, dict):
            return
        children = {k: v for k, v in item.items() if isinstance(v, dict) and k != "grid"}
        for k in _PREFERRED:
            if k in children:
                visit(children[k], k)
        if name not in _BOOKKEEPING:
            for k, v in item.items():
                if k in keys and k not in found and not isinstance(v, dict):
                    found[k] = v
        for k, v in children.items():
            if k not in _PREFERRED:
                visit(v, k)

    visit(config, "")
    return found


def _describe_config(config: Any) -> str:
    """A job's setting in one line: the :data:`SETTING_KEYS` it has, and a sweep's grid; for a
    panel experiment (``settings`` and ``variants``, :func:`drpo_sim.paper.jobs.panel_figures`) the
    shared configuration, then each setting's title and the variants shown."""
    if isinstance(config, dict) and isinstance(config.get("settings"), dict):
        shared = {k: v for k, v in config.items() if k not in ("settings", "variants", "shown")}
        shown = config.get("shown") or list(config.get("variants") or [])
        return "; ".join(p for p in (
            _describe_config(shared),
            "settings: " + " / ".join(str(v.get("title", k)) if isinstance(v, dict) else k
                                      for k, v in config["settings"].items()),
            "variants: " + ", ".join(str(v) for v in shown),
        ) if p)
    found = _find_keys(config, SETTING_KEYS)
    parts = []
    for key in SETTING_KEYS:
        if key not in found or found[key] is None:
            continue
        value = found[key]
        if isinstance(value, list):
            if not all(_is_number(v) or isinstance(v, str) for v in value):
                continue
            parts.append(f"{key} {{{_values(value)}}}")
        else:
            parts.append(f"{key} {_values([value])}")
    grid = config.get("grid") if isinstance(config, dict) else None
    if isinstance(grid, dict):
        axes = [f"{k} {{{_values(v)}}}" for k, v in grid.items() if isinstance(v, list)]
        parts.append("grid: " + " x ".join(axes))
    return "; ".join(parts)


def _describe_seeds(seeds: Any) -> str:
    if not isinstance(seeds, list) or not seeds:
        return "-"
    if all(isinstance(s, int) for s in seeds) and seeds == list(range(seeds[0], seeds[0] + len(seeds))):
        return f"{len(seeds)} (seeds {seeds[0]}\u2013{seeds[-1]})" if len(seeds) > 1 else f"1 (seed {seeds[0]})"
    return f"{len(seeds)} ({_values(seeds)})"


def _jobs(ctx: _Context) -> list[dict]:
    """The manifest's figures grouped by job and configuration, in the manifest's order."""
    groups: dict[str, dict] = {}
    for rec in ctx.records():
        key = json.dumps([rec.get("job"), rec.get("config")], sort_keys=True, default=str)
        group = groups.setdefault(key, {"job": rec.get("job") or "?", "config": rec.get("config"),
                                        "seeds": rec.get("seeds"), "figures": []})
        group["figures"].append(rec["figure"])
    return list(groups.values())


def _how_tested(ctx: _Context) -> str:
    parts = [
        "## How the toolkit tests it",
        ("**Geometry.** The weights of the table above are evaluated in closed form over grids of `(mu, pi)` "
         "and over whole vocabularies; the tests hold each closed form against torch autograd of its surrogate."),
        ("**The simulator.** Small tasks where the distance between the engine `mu` and the trainer `pi` is set "
         "exactly: a long-tailed bandit and tabular softmax policies answering prompts with short token sequences "
         "under a verifiable reward. The engine's probabilities are made off-policy by injected logit noise, "
         "rounding to reduced precision (bf16, fp8 through torch's own formats), stale parameters and several "
         "mini-batch updates per batch of rollouts. Every seed trains at once, so many seeds are cheap."),
        ("**The tiny transformer lab.** A small causal transformer, pretrained locally on a toy task with a "
         "verifiable reward, then trained with RL by each objective while its rollouts are sampled by a copy of "
         "the model in real bf16 or fp8 arithmetic: the training-inference mismatch is produced by the number "
         "formats, not injected."),
        ("**The arena.** A world where the engine is a second numerical pass, in bf16, fp16 or fp8, over the very "
         "parameters the float32 trainer updates, so the mismatch moves with the parameters as training goes; "
         "responses are long, what is right depends on the prefix, and every objective and seed trains as one "
         "slice of a batch of models. Its knobs were calibrated from statistics at initialisation only, before "
         "any comparison (`docs/arena.md`)."),
        ("**Token-log replay.** Any token log (the simulator's, the lab's, or a real training dump) is replayed "
         "through every objective's weight, token by token, to see what each would mask, attenuate or correct."),
        ("**Statistics.** The figures and summaries show a method's interquartile mean (IQM) over seeds with a "
         "stratified bootstrap interval (runs resampled within each method)."
         + _confidence_sentence(ctx)
         + " The verdicts use other rules (`drpo_sim.stats.compare`), since every method runs on the same seeds: "
         "paired per-seed differences with a sign-flip permutation test and a paired bootstrap interval, Holm's "
         "correction over each claim's cells, an equivalence test (TOST) within a margin declared before the run "
         "wherever a claim says two methods are alike, and, for stability, collapse rates with exact intervals "
         "and the log-rank test of time to collapse (a trimmed mean would drop exactly the seeds that collapse). "
         "A claim also declares the mechanism it needs; a world without it gives \"not testable here\"."),
        "The jobs of this run, with their configurations as recorded in `MANIFEST.json`:",
    ]
    rows = [[", ".join(f"`{f}`" for f in g["figures"]), f"`{g['job']}`", _describe_seeds(g["seeds"]),
             _describe_config(g["config"])] for g in _jobs(ctx)]
    parts.append(_table(["figures", "job", "seeds", "setting"], rows))
    return "\n\n".join(parts)


def _confidence_sentence(ctx: _Context) -> str:
    level = _find_keys({"figures": {str(i): r.get("config") for i, r in enumerate(ctx.records())}},
                       ["confidence"]).get("confidence")
    return f" The intervals are at the {format_percent(level)} level." if _is_number(level) else ""


def _claim_section(ctx: _Context, number: int) -> str:
    claim = _claims_by_number(ctx).get(number)
    statement = _statement(ctx, number)
    parts = [f"## {_claim_heading(number, statement)}"]
    if claim is None:
        parts.append("**Not tested in this run**: `claims.json` holds no result for this claim"
                     + ("." if statement else "; its statement is in `docs/reference.md`."))
        return "\n\n".join(parts)
    parts.append(f"**Verdict: {claim['verdict']}.** Why: {claim['reason']}.")
    parts.append(_how_this_claim_was_tested(claim))
    parts += [ctx.figure(name) for name in claim.get("figures", [])]
    numbers = claim["numbers"]
    if numbers:
        parts.append("The numbers behind the verdict:")
        parts.append(_table(["measured", "value"], [[f"`{k}`", format_number(v)] for k, v in numbers.items()]))
    how = (f"How it is tested and when each verdict is given: the docstring of `drpo_sim.paper.claims.claim_{number}`")
    if claim["sources"]:
        how += "; it reads " + ", ".join(ctx.source(s) for s in claim["sources"])
    parts.append(how + ".")
    return "\n\n".join(parts)


def _arena(ctx: _Context) -> str:
    """DPPO's sanity test in the arena: the calibration, the figure, the bf16 table and the controls."""
    spec = arena.SPEC
    summary = _read_csv(ctx.results / spec.summary_file)
    if summary is None or not ctx.has_png(spec.sanity_figure):
        return ""
    summary["variant"] = summary["variant"].fillna("")
    parts = ["## The arena: DPPO's sanity test"]
    cal_path = ctx.results / spec.calibration_file
    if cal_path.is_file():
        cal = read_json(cal_path)
        m, t = cal["measured"], cal["targets"]
        parts.append(
            "The arena's knobs were fixed from statistics at initialisation before any comparison "
            f"({ctx.source(spec.calibration_file)}): under bf16 the mean `abs(pi - mu)` of sampled tokens is "
            f"{format_number(m['bf16']['mismatch_mean'])} (published: about {format_number(t['mismatch_mean'])}), "
            f"{format_percent(m['bf16']['rare_share'])} of sampled tokens have `mu <= 0.01` (published: about "
            f"{format_percent(t['rare_share'])}), the log-ratio drift is "
            f"{format_number(m['bf16']['seq_log_ratio_per_token'])} nats per token (published: about "
            f"{format_number(t['seq_log_ratio_per_token'])}), and fp16's mismatch is "
            f"{format_number(m['fp16']['mismatch_mean'])}.")
    parts.append(ctx.figure(spec.sanity_figure, "DPPO's sanity test in the arena"))

    def name(row) -> str:
        return f"{row.objective} ({row.variant})" if row.variant else row.objective

    def interval(row) -> str:
        return (f"{format_percent(row.collapse_rate)} [{format_percent(row.collapse_lo)}, "
                f"{format_percent(row.collapse_hi)}]")

    # the sanity test: bf16 at the spec's own learning rate (the controls run it divided and multiplied)
    main = summary[(summary["precision"] == "bf16") & np.isclose(summary["lr"], spec.config.lr)
                   & ~summary["variant"].str.contains("moe")]
    rows = [[name(r), interval(r), format_number(r.median_collapse_step), format_number(r.peak_train_reward),
             format_number(r.final_heldout_reward),
             " / ".join(format_number(x) for x in (r.mismatch_step0, r.mismatch_peak, r.mismatch_final)),
             format_number(r.max_abs_shift_final)] for r in main.itertuples()]
    seeds, steps = int(main["seeds"].max()), int(main["steps"].max())
    parts.append(f"Under bf16, {format_number(seeds)} seeds x {format_number(steps)} steps each (collapse: the "
                 "held-out reward falls below half its best after reaching 0.5; exact 95% interval over seeds):")
    parts.append(_table(["objective", "collapse rate", "median collapse step", "peak train reward",
                         "final held-out reward", "mean abs(pi - mu): first step / peak / final",
                         "max abs(pi - mu), final"], rows))
    controls = summary.drop(main.index)
    if len(controls):
        rows = [[name(r), r.precision, format_number(r.lr), interval(r), format_number(r.final_heldout_reward),
                 f"{format_number(r.mismatch_step0)} / {format_number(r.mismatch_final)}"]
                for r in controls.itertuples()]
        parts.append("The controls: the same contestants with other engines, a lower and a higher learning rate, "
                     "and a mixture of experts with and without routing replay:")
        parts.append(_table(["objective", "engine", "lr", "collapse rate", "final held-out reward",
                             "mean abs(pi - mu): first step / final"], rows))
    parts.append(f"The order of events of every collapsed run is in {ctx.source(spec.events_file)}.")
    parts += [ctx.figure(f) for f in spec.figures[1:] if ctx.has_png(f)]
    return "\n\n".join(parts)


def _labelled_summary(ctx: _Context, spec: Any) -> pd.DataFrame | None:
    """An arena comparison's summary with each row's contestant label (``label``), or None when the
    run has not written it or its figure."""
    summary = _read_csv(ctx.results / spec.summary_file)
    if summary is None or not ctx.has_png(spec.name):
        return None
    labels = {(c.objective, c.variant): c.label for c in spec.contestants}
    summary["variant"] = summary["variant"].fillna("")
    summary["label"] = [labels.get((o, v), f"{o} ({v})") for o, v in zip(summary["objective"], summary["variant"])]
    return summary


def _arena_reward_scales(ctx: _Context) -> str:
    """Claim 8's runs in the arena: the figure and the final held-out reward per contestant and spread."""
    spec = arena_reward_scales.SPEC
    summary = _labelled_summary(ctx, spec)
    if summary is None:
        return ""
    settings = [s for s in spec.settings if s.name in set(summary["setting"])]
    table = summary.pivot_table(index="label", columns="setting", values="final_heldout_reward", sort=False)
    rows = [[label, *(format_number(table.loc[label, s.name]) for s in settings)] for label in table.index]
    seeds, steps = int(summary["seeds"].max()), int(summary["steps"].max())
    return "\n\n".join([
        "## The arena with mixed reward scales (claim 8)",
        (f"The sanity test's bf16 arena with the learner's reward scales spread over the task's keys, "
         f"{format_number(seeds)} seeds x {format_number(steps)} steps; the final held-out reward, on the task's own "
         f"scale, mean over seeds ({ctx.source(spec.summary_file)}):"),
        _table(["contestant", *(s.title for s in settings)], rows),
        (f"Its figure, `{spec.name}`, is under claim 8 above." if spec.name in ctx.shown
         else ctx.figure(spec.name, "DRPO against its fair ablation as the reward scales spread, in the arena")),
    ])


def _arena_three_policies(ctx: _Context) -> str:
    """The other objectives of the trust-region map in the sanity test's arena: one row per contestant."""
    spec = arena_three_policies.SPEC
    summary = _labelled_summary(ctx, spec)
    if summary is None:
        return ""
    rows = [[r.label,
             f"{format_percent(r.collapse_rate)} [{format_percent(r.collapse_lo)}, {format_percent(r.collapse_hi)}]",
             format_number(r.peak_train_reward), format_number(r.final_heldout_reward),
             " / ".join(format_number(x) for x in (r.mismatch_step0, r.mismatch_peak, r.mismatch_final))]
            for r in summary.itertuples()]
    seeds, steps = int(summary["seeds"].max()), int(summary["steps"].max())
    return "\n\n".join([
        "## The arena: the objectives of three policies, the corrections, GSPO and Top-K DPPO",
        (f"The sanity test's bf16 setting, {format_number(seeds)} seeds x {format_number(steps)} steps, every "
         f"parameter its source's default ({ctx.source(spec.summary_file)}; collapse as in the sanity test, exact "
         "95% interval over seeds):"),
        _table(["contestant", "collapse rate", "peak train reward", "final held-out reward",
                "mean abs(pi - mu): first step / peak / final"], rows),
        ctx.figure(spec.name, spec.title),
    ])


def _other_figures(ctx: _Context) -> str:
    """Every figure of the manifest not shown above, grouped by job."""
    parts = []
    for group in _jobs(ctx):
        names = [f for f in group["figures"] if f not in ctx.shown and ctx.has_png(f)]
        if names:
            parts.append(f"**`{group['job']}`**: " + ", ".join(f"`{n}`" for n in names))
            parts += [ctx.figure(n) for n in names]
    if not parts:
        return ""
    return "\n\n".join(["## Other figures of this run",
                        "The remaining figures of the run, by the job that drew them (their data are the CSVs "
                        "beside them):", *parts])


def _limits(ctx: _Context) -> str:
    text = [
        "## What this does not show",
        ("Every result here comes from toy settings: bandits and small tabular tasks, and a tiny transformer "
         "on a toy task, trained for few steps over few seeds. They isolate one mechanism at a time (how each "
         "objective weights a token whose engine and trainer probabilities differ) under mismatch that is "
         "either injected at calibrated sizes or produced by real low-precision arithmetic at tiny scale. They "
         "do not show how the objectives behave in large models with long responses, large vocabularies, "
         "distributed inference engines and months of compute; a claim \"not supported\" or \"inconclusive\" "
         "here says the effect is not visible at this scale, not that it is absent at scale, and a "
         "\"supported\" one is evidence for the mechanism, not for a benchmark result. Claims marked \"not "
         "tested\" have no analysis in this run."),
    ]
    if ctx.manifest.get("profile") == "quick":
        text.append("This run used the **quick** profile (fewer seeds and steps, wider intervals); "
                    "`drpo-sim reproduce --full` runs the full one.")
    return "\n\n".join(text)


def _reproduce(ctx: _Context) -> str:
    return "\n\n".join([
        "## Reproduce",
        "From a checkout, with Python and the package registries only:",
        ("```sh\n"
         "make reproduce PROFILE=full   # set up .venv, then regenerate figures/ and this page (two and a half hours)\n"
         "drpo-sim reproduce --full     # the same with an installed package; --quick for a first result in minutes\n"
         "```"),
        "and this page from the results:",
        ("```python\n"
         "from drpo_sim.paper.report import write_report\n"
         "write_report(\"figures\", \"paper\")   # writes paper/README.md and checks its numbers\n"
         "```"),
    ])


def render_report(results: Path | str, paper: Path | str) -> str:
    """The report's Markdown for the result files in ``results``, with links relative to ``paper``."""
    results, paper = Path(results), Path(paper)
    ctx = _Context(results, paper, load_claims(results), load_manifest(results))
    sections = [_header(ctx), _summary(ctx), _what_drpo_is(ctx), _how_tested(ctx)]
    sections += [_claim_section(ctx, n) for n in _all_claim_numbers(ctx)]
    sections += [_arena(ctx), _arena_reward_scales(ctx), _arena_three_policies(ctx), _other_figures(ctx), _limits(ctx),
                 _reproduce(ctx)]
    return "\n\n".join(s for s in sections if s) + "\n"


def report_inputs(results: Path | str) -> list[str]:
    """The result files the report quotes from: ``claims.json``, ``MANIFEST.json``, the DRPO
    weight-range table, the replay quoted on rare tokens, the gradient diagnostics' verdicts and
    one-cell tables, and each tested claim's source files.
    :func:`write_report` checks the report's numbers against these alone: against every file of a
    run (~10^5 numbers) almost any short decimal would be found somewhere."""
    results = Path(results)
    names = [CLAIMS_FILE, MANIFEST_FILE, weight_table.SPEC.delta_range_file]
    prefix = _replay_prefix(results)
    if prefix is not None:
        names += [f"{prefix}objectives.csv", f"{prefix}replay.json"]
    names += [f for f in (arena.SPEC.summary_file, arena.SPEC.calibration_file, arena_reward_scales.SPEC.summary_file,
                          arena_three_policies.SPEC.summary_file)
              if (results / f).is_file()]
    grad = gradient_diagnostics.SPEC  # the verdicts and the one-cell tables the report quotes
    sweeps = {f"{grad.stem(env)}.csv" for env in grad.full}  # the sweeps themselves are not quoted
    names += [f for f in grad.data_files("full") if f not in sweeps and (results / f).is_file()]
    for claim in load_claims(results):
        names += [s for s in claim.get("sources", []) if (results / s).is_file()]
    return list(dict.fromkeys(names))


def write_report(results: Path | str, paper: Path | str, *, check: bool = True) -> Path:
    """Write ``paper/README.md`` from the result files in ``results`` (atomically) and return its path.

    Figures are embedded as PNGs with links relative to ``paper``, only where the file exists. With
    ``check`` (the default) the report's numbers are first checked against the result files
    (:func:`~drpo_sim.paper.numbers.check_numbers`, restricted to :func:`report_inputs`) and a
    :class:`ValueError` lists the first problems if any is not there, leaving no file written. A
    missing ``claims.json`` or ``MANIFEST.json`` is a :class:`FileNotFoundError` naming the file; a
    malformed one a :class:`ValueError`.
    """
    results, paper = Path(results), Path(paper)
    markdown = render_report(results, paper)
    if check:
        problems = check_numbers(markdown, results, include=report_inputs(results))
        if problems:
            shown = "; ".join(problems[:5]) + (f"; and {len(problems) - 5} more" if len(problems) > 5 else "")
            raise ValueError(f"report for {results}: numbers not in the result files: {shown}")
    return write_text(markdown, paper / REPORT_FILE)
