"""The report: ``paper/README.md``, a short paper generated from the result files of a run.

:func:`write_report` reads a results directory (normally ``figures/``, what ``drpo-sim reproduce``
writes: ``claims.json``, ``MANIFEST.json``, the figures' CSVs and PNGs, the replays' JSON) and writes
a Markdown report for a reader who has never seen the issue tracker: what DRPO is, how the toolkit
tests it, one section per claim of ``../shared/REFERENCE.md`` with its verdict, figure, numbers and
reason, what the results do not show, and how to reproduce them.

The rule it keeps: **no number in the report is typed by hand**; every number it shows is read from
a result file. :func:`check_numbers` enforces the rule on any Markdown text (the generated report,
or one edited by hand) against the numbers of a results directory, and :func:`write_report` runs it
on what it wrote (``check=True``). The exact rules are in :func:`check_numbers`'s docstring; the
numbers the report itself shows are formatted by :func:`format_number`, whose output the check
always accepts for the value it came from.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import quote

import numpy as np
import pandas as pd

from drpo_sim._io import write_text

__all__ = ["CLAIM_NUMBERS", "NumberPool", "NumericLiteral", "VERDICTS", "check_numbers", "checked_text",
           "format_number", "format_percent", "load_claims", "load_manifest", "number_pool", "numeric_literals",
           "render_report", "total_wall_time", "write_report"]

VERDICTS = ("supported", "not supported", "inconclusive")

#: The claims of REFERENCE.md ("Claims the toolkit must be able to test"); each gets a section,
#: the ones absent from ``claims.json`` a "not tested in this run" one.
CLAIM_NUMBERS = tuple(range(1, 13))

#: Numbers always accepted by :func:`check_numbers`: zero and the claim numbers (they are how the
#: report names claims, and they cover the small constants of symbolic formulas such as ``(r-1)^2``).
STRUCTURAL_NUMBERS = (0, *CLAIM_NUMBERS)

SIGNIFICANT_DIGITS = 4

# ----------------------------------------------------------------------------------------------
# numeric literals in text

_ALNUM = r"[^\W_]"  # a letter or digit (a word character other than the underscore)

#: A numeric literal as the report shows it: an optional minus sign attached to the digits, digits
#: with optional thousands commas (``1,024``) and decimals, an optional exponent (``1.2e-03``) and
#: an optional percent sign. It must not be glued to a letter, a digit or a dot on either side
#: (``fp8``, ``bf16``, ``e4m3``, ``delta12.5_max``, a git hash, a version ``0.1.0`` are not numeric
#: literals), nor to an underscore that joins it to a word (``ratio_099_to_080``); an underscore
#: alone is Markdown emphasis (``_0.5_`` is checked). ``400x400`` and ``3x3`` are two literals.
_NUM = re.compile(
    rf"(?:(?<!{_ALNUM})(?<!\.)(?<!{_ALNUM}_)|(?<=\dx))"
    r"(?P<sign>[-\u2212](?=\.?\d))?"
    r"(?P<body>\d{1,3}(?:,\d{3})+(?!\d)(?:\.\d+)?|\d+(?:\.\d+)?|\.\d+)"
    r"(?P<exp>[eE][-+\u2212]?\d+)?"
    r"(?P<pct>\s?%)?"
    rf"(?!(?!x){_ALNUM}|_{_ALNUM}|\.{_ALNUM})"
)

#: Dotted multi-part numbers (versions such as ``3.11.7``): checked as whole strings against the
#: strings of the results' JSON files, never as numbers.
_DOTTED = re.compile(rf"(?<!{_ALNUM})(?<!\.)\d+(?:\.\d+){{2,}}(?!{_ALNUM}|\.\d)")


@dataclasses.dataclass(frozen=True)
class NumericLiteral:
    """One number as written in a text, with the precision it shows.

    ``value`` is the signed number shown (``13.1`` for ``13.1%``); ``tolerance`` is half a unit in
    its last shown digit (``0.0005`` for ``0.884``, ``5e-5`` for ``1.2e-03``), or 0 for an integer
    shown without decimals, exponent or percent sign, which must match exactly.
    """

    text: str
    value: float
    tolerance: float
    percent: bool
    start: int
    end: int

    def candidates(self) -> list[tuple[float, float]]:
        """The ``(value, tolerance)`` pairs a known number may match: a percentage matches its
        value as shown or divided by 100 (``13.1%`` matches 13.1 and 0.131)."""
        pairs = [(self.value, self.tolerance)]
        if self.percent:
            pairs.append((self.value / 100.0, self.tolerance / 100.0))
        return pairs


def numeric_literals(text: str) -> Iterator[NumericLiteral]:
    """Every numeric literal of ``text`` (see ``_NUM`` above for what counts as one), in order."""
    for m in _NUM.finditer(text):
        body, exp, pct = m["body"].replace(",", ""), m["exp"] or "", bool(m["pct"])
        sign = "-" if m["sign"] else ""
        value = float(sign + body + exp.replace("\u2212", "-"))
        decimals = len(body.partition(".")[2])
        exponent = int(exp[1:].replace("\u2212", "-")) if exp else 0
        exact = not (decimals or exp or pct)
        tolerance = 0.0 if exact else 0.5 * 10.0 ** (exponent - decimals)
        yield NumericLiteral(m.group(0), value, tolerance, pct, m.start(), m.end())


def _dotted(text: str) -> Iterator[re.Match]:
    return _DOTTED.finditer(text)


# ----------------------------------------------------------------------------------------------
# formatting: one rule for every number the report shows


def format_number(x: float, digits: int = SIGNIFICANT_DIGITS) -> str:
    """Format a number the one way the report shows numbers.

    - an integer value (``24.0``, ``65536``) in full, with thousands commas: ``24``, ``65,536``;
    - otherwise ``digits`` significant digits, trailing zeros dropped but at least one decimal kept
      (so a non-integer never reads as an integer): ``0.9975``, ``0.35``, ``-1.01``, ``7999.9``;
    - in scientific notation below ``1e-3`` or from ``1e4`` on: ``5.277e-15``, ``3e-4``;
    - ``nan`` as ``n/a``, infinities as ``inf`` / ``-inf``.

    :func:`check_numbers` accepts the result for ``x`` by construction (tested).
    """
    x = float(x)
    if math.isnan(x):
        return "n/a"
    if math.isinf(x):
        return "inf" if x > 0 else "-inf"
    if x.is_integer() and abs(x) < 1e15:
        return f"{int(x):,}"
    ax = abs(x)
    if 1e-3 <= ax < 1e4:
        decimals = max(1, digits - 1 - math.floor(math.log10(ax)))
        text = f"{x:.{decimals}f}".rstrip("0")
        return text + "0" if text.endswith(".") else text
    mantissa, _, exponent = f"{x:.{digits - 1}e}".partition("e")
    if "." in mantissa:
        mantissa = mantissa.rstrip("0").rstrip(".")
    return f"{mantissa}e{int(exponent)}"


def format_percent(x: float, digits: int = SIGNIFICANT_DIGITS - 1) -> str:
    """A fraction as a percentage with ``digits`` significant digits: ``0.1308`` as ``13.1%``."""
    if not math.isfinite(float(x)):
        return format_number(x)
    return format_number(round(100.0 * float(x), 10), digits) + "%"


# ----------------------------------------------------------------------------------------------
# the pool of known numbers


@dataclasses.dataclass(frozen=True)
class NumberPool:
    """The numbers of a results directory: ``values`` sorted, unique and finite, and the dotted
    strings (versions) of its JSON files."""

    values: np.ndarray
    dotted: frozenset[str]

    def matches(self, literals: Sequence[NumericLiteral]) -> np.ndarray:
        """For each literal, whether a known number lies within its shown precision (vectorised)."""
        out = np.zeros(len(literals), dtype=bool)
        if not literals or not self.values.size:
            return out
        owner, centre, tol = [], [], []
        for i, lit in enumerate(literals):
            for value, t in lit.candidates():
                owner.append(i)
                centre.append(value)
                tol.append(t)
        centre_a, tol_a = np.asarray(centre), np.asarray(tol)
        # inclusive half-unit bounds, widened by a relative 1e-9 for binary floating point
        slack = tol_a * 1e-9 + np.abs(centre_a) * 1e-12
        low, high = centre_a - tol_a - slack, centre_a + tol_a + slack
        idx = np.searchsorted(self.values, low, side="left")
        hit = (idx < self.values.size) & (self.values[np.minimum(idx, self.values.size - 1)] <= high)
        np.logical_or.at(out, np.asarray(owner), hit)
        return out


def number_pool(results: Path | str, include: Sequence[str] | None = None) -> NumberPool:
    """Every number the results directory ``results`` holds (its top level, not subdirectories):

    - every number in every ``*.json`` file, recursively through objects and lists (``claims.json``
      and ``MANIFEST.json`` included, configurations and seeds included), the length of every JSON
      list (so "24 seeds" matches a 24-element ``seeds`` list), and every numeric literal inside a
      JSON string (the claims' ``reason`` and ``statement``, parameter strings like ``eps=0.2``);
    - every numeric cell of every ``*.csv`` file, and every numeric literal inside its text cells
      (``"0.467 [0.465, 0.468]"``), read column-wise with pandas (text cells: unique values only);
    - the manifest's total wall time (:func:`total_wall_time`), which the report's first line shows;
    - zero and the claim numbers 1-12 (``STRUCTURAL_NUMBERS``).

    Percentages in strings enter as shown and divided by 100. ``include`` narrows the files read to
    those matching any of its glob patterns (``["claims.json", "MANIFEST.json", "*_summary.csv"]``):
    the full pool of a real run is dense (tens of thousands of curve points in ``[0, 1]``), so that
    almost any short decimal is near one of them; a narrower pool makes the check bite.
    """
    results = Path(results)
    chunks: list[np.ndarray] = [np.asarray(STRUCTURAL_NUMBERS, dtype=float)]
    dotted: set[str] = set()
    json_files, csv_files = _pool_files(results, "*.json", include), _pool_files(results, "*.csv", include)
    for path in json_files:
        data = _read_json(path)
        numbers, strings = _json_numbers(data)
        chunks.append(np.asarray(numbers, dtype=float))
        text = "\n".join(strings)
        chunks.append(_string_numbers(text))
        dotted.update(m.group(0) for m in _dotted(text))
        if path.name == "MANIFEST.json" and isinstance(data, dict):
            chunks.append(np.asarray([total_wall_time(data)], dtype=float))
    for path in csv_files:
        chunks.extend(_csv_numbers(path))
    values = np.concatenate([np.ravel(c).astype(float) for c in chunks])
    values = np.unique(values[np.isfinite(values)])
    return NumberPool(values, frozenset(dotted))


def _pool_files(results: Path, kind: str, include: Sequence[str] | None) -> list[Path]:
    """The top-level files of ``results`` matching ``kind``, and one of ``include`` if given."""
    files = sorted(p for p in results.glob(kind) if p.is_file())
    if include is None:
        return files
    return [p for p in files if any(p.match(pattern) for pattern in include)]


def _json_numbers(data: Any) -> tuple[list[float], list[str]]:
    """The numbers (list lengths included) and the strings of a JSON document, walked iteratively."""
    numbers: list[float] = []
    strings: list[str] = []
    stack = [data]
    while stack:
        item = stack.pop()
        if isinstance(item, bool) or item is None:
            continue
        if isinstance(item, (int, float)):
            numbers.append(float(item))
        elif isinstance(item, str):
            strings.append(item)
        elif isinstance(item, dict):
            strings.extend(k for k in item if isinstance(k, str))
            stack.extend(item.values())
        elif isinstance(item, list):
            numbers.append(float(len(item)))
            stack.extend(item)
    return numbers, strings


def _string_numbers(text: str) -> np.ndarray:
    """The values of the numeric literals in ``text`` (a percentage also divided by 100)."""
    values = [v for lit in numeric_literals(text) for v, _ in lit.candidates()]
    return np.asarray(values, dtype=float)


def _csv_numbers(path: Path) -> list[np.ndarray]:
    """A CSV's numeric cells, as whole columns, and the numbers written inside its text cells."""
    try:
        frame = pd.read_csv(path, low_memory=False)
    except pd.errors.EmptyDataError:
        return []
    except (pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path}: not a readable CSV ({exc})") from None
    numeric = frame.select_dtypes(include="number")
    out = [numeric.to_numpy(dtype=float).ravel()]
    text = frame.select_dtypes(include=["object", "string"])
    if text.shape[1]:
        uniques = pd.unique(text.to_numpy().ravel())
        joined = "\n".join(str(u) for u in uniques if isinstance(u, str))
        out.append(_string_numbers(joined))
    return out


# ----------------------------------------------------------------------------------------------
# the check


def _blank(text: str, start: int, end: int) -> str:
    """``text`` with ``[start, end)`` replaced by spaces (newlines kept, so line numbers hold)."""
    return text[:start] + re.sub(r"[^\n]", " ", text[start:end]) + text[end:]


def _blank_all(text: str, pattern: re.Pattern, group: int | str = 0) -> str:
    for m in reversed(list(pattern.finditer(text))):
        if m.group(group) is not None:
            text = _blank(text, m.start(group), m.end(group))
    return text


_FENCE = re.compile(r"^ {0,3}(```|~~~)")
_COMMENT = re.compile(r"<!--.*?-->", re.S)
_LINK_TARGET = re.compile(r"\]\((?P<t>[^)\s]*(?:\s+\"[^\"]*\")?)\)")
_REF_DEFINITION = re.compile(r"^ {0,3}\[[^\]]+\]:\s*(?P<t>\S+.*)$", re.M)
_URL = re.compile(r"<?(?P<t>https?://[^\s>)]+)>?")
_HEADING_NUMBER = re.compile(r"^(?: {0,3}#{1,6}[ \t]+)(?P<t>\d+(?:\.\d+)*\.?)(?=[ \t])", re.M)
_CLAIM_NUMBER = re.compile(r"\b[Cc]laims?[ \t]+(?P<t>\d+)(?![\d.]\d)")


def _without_fences(text: str) -> str:
    """``text`` with fenced code blocks (fences included) blanked to spaces (an unclosed fence runs
    to the end, as in CommonMark)."""
    lines = text.split("\n")
    fence: str | None = None
    for i, line in enumerate(lines):
        inside = fence is not None
        m = _FENCE.match(line)
        if not inside and m:
            fence = m.group(1)
        elif inside and line.strip().startswith(fence):
            fence = None
        elif not inside:
            continue
        lines[i] = " " * len(line)
    return "\n".join(lines)


def checked_text(markdown: str) -> str:
    """The part of ``markdown`` that :func:`check_numbers` checks, other parts blanked to spaces:
    fenced code blocks, HTML comments, link and image targets, URLs, heading numbers (``## 3.``)
    and the number that follows the word "claim" ("Claim 7", "claims 4")."""
    text = _without_fences(markdown)
    text = _blank_all(text, _COMMENT)
    text = _blank_all(text, _LINK_TARGET, "t")
    text = _blank_all(text, _REF_DEFINITION, "t")
    text = _blank_all(text, _URL, "t")
    text = _blank_all(text, _HEADING_NUMBER, "t")
    return _blank_all(text, _CLAIM_NUMBER, "t")


def check_numbers(markdown: str, results: Path | str, *, pool: NumberPool | None = None,
                  include: Sequence[str] | None = None) -> list[str]:
    """The numbers of ``markdown`` that are not in the result files of ``results``; empty when fine.

    **What is checked.** All of the text, Markdown tables, inline code spans and ``$...$`` math
    included, except (:func:`checked_text`): fenced code blocks (the commands to run), HTML comments,
    link and image targets (``](../figures/x.png)``; the link text is checked), URLs, heading
    numbers (``## 3.``) and the number right after the word "claim" ("Claim 7"). Symbolic formulas
    are checked too: their constants (``1 - sign(A)(pi - mu)/delta``, ``(r-1)^2``) are small
    integers, always known (see below).

    **What a numeric literal is.** An optional minus sign attached to the digits (``-1.01``, not
    the ``- 1`` of ``1 - x`` nor the ``-1`` of ``r-1``), digits with optional thousands commas and
    decimals, an optional exponent and an optional percent sign, not glued to a letter, digit,
    dot, or to an underscore joining it to a word: ``fp8``, ``e4m3``, ``delta12.5_max``,
    ``ratio_099_to_080`` and git hashes hold none. Dotted versions (``3.11.7``) must appear as such
    in a string of the results' JSON files.

    **The known numbers** are :func:`number_pool`'s: every number of every top-level ``*.json``
    (recursively, with list lengths and the numbers written inside strings such as the claims'
    reasons) and ``*.csv`` (every cell), the manifest's total wall time, zero and the claim numbers
    1-12.

    **Matching respects the shown precision**: a literal matches a known number within half a unit
    of its last shown digit (``0.884`` matches 0.88445; ``1.2e-03`` matches 0.00123); an integer
    shown without decimals, exponent or percent sign must match exactly (``1,024`` is 1024, ``24``
    does not match 24.3); a percentage matches its value as shown or divided by 100 (``13.1%``
    matches 0.131 or 13.1); signs must agree (``-0.3`` does not match 0.3).

    Each problem is one line: ``line N: '0.777' is not in the result files (... context ...)``.
    ``pool`` reuses a :func:`number_pool` already built for ``results``; ``include`` narrows the
    files the pool is read from (see :func:`number_pool`: the full pool of a real run is so dense
    that short decimals in ``[0, 1]`` nearly always match something).
    """
    pool = number_pool(results, include) if pool is None else pool
    text = checked_text(markdown)
    literals = list(numeric_literals(text))
    found = pool.matches(literals)
    problems = [(lit.start, lit.text.strip()) for lit, ok in zip(literals, found) if not ok]
    problems += [(m.start(), m.group(0)) for m in _dotted(text) if m.group(0) not in pool.dotted]
    return [_problem(markdown, start, shown) for start, shown in sorted(problems)]


def _problem(markdown: str, start: int, shown: str) -> str:
    line = markdown.count("\n", 0, start) + 1
    context = markdown[max(0, start - 40):start + len(shown) + 40].replace("\n", " ").strip()
    return f"line {line}: {shown!r} is not in the result files (... {context} ...)"


# ----------------------------------------------------------------------------------------------
# reading the result files


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno})") from None


def _required_json(results: Path, name: str) -> Any:
    path = results / name
    if not path.is_file():
        raise FileNotFoundError(f"{path}: not found; `drpo-sim reproduce --out {results}` writes it")
    return _read_json(path)


def load_claims(results: Path | str) -> list[dict]:
    """``results/claims.json``, validated: a list of claims, each with an integer ``number``
    (unique), a ``verdict`` among :data:`VERDICTS`, a ``reason`` and a ``statement`` (strings),
    ``numbers`` (name to number), ``sources`` (names) and optionally ``figures`` (figure names).
    Missing file: :class:`FileNotFoundError`; anything malformed: :class:`ValueError`, one line
    naming the file and the claim."""
    results = Path(results)
    path = results / "claims.json"
    data = _required_json(results, "claims.json")
    if not isinstance(data, list):
        raise ValueError(f"{path}: expected a list of claims, got {type(data).__name__}")
    seen: set[int] = set()
    for i, claim in enumerate(data):
        where = f"{path}: entry {i}"
        if not isinstance(claim, dict):
            raise ValueError(f"{where}: expected an object, got {type(claim).__name__}")
        for key, kind in (("number", int), ("verdict", str), ("reason", str), ("statement", str),
                          ("numbers", dict), ("sources", list)):
            if key not in claim:
                raise ValueError(f"{where}: missing {key!r}")
            if not isinstance(claim[key], kind) or isinstance(claim[key], bool):
                raise ValueError(f"{where}: {key!r} should be {kind.__name__}, got {type(claim[key]).__name__}")
        where = f"{path}: claim {claim['number']}"
        if claim["number"] in seen:
            raise ValueError(f"{where}: appears twice")
        seen.add(claim["number"])
        if claim["verdict"] not in VERDICTS:
            raise ValueError(f"{where}: verdict {claim['verdict']!r} is not one of {VERDICTS}")
        bad = [k for k, v in claim["numbers"].items() if isinstance(v, bool) or not isinstance(v, (int, float))]
        if bad:
            raise ValueError(f"{where}: numbers {bad} are not numbers")
        figures = claim.get("figures", [])
        if not isinstance(figures, list) or not all(isinstance(f, str) for f in figures):
            raise ValueError(f"{where}: 'figures' should be a list of figure names")
    return data


def load_manifest(results: Path | str) -> dict:
    """``results/MANIFEST.json``, validated: an object whose ``figures`` is a list of records with
    at least a ``figure`` name. Missing file: :class:`FileNotFoundError`; malformed:
    :class:`ValueError` naming the file."""
    results = Path(results)
    path = results / "MANIFEST.json"
    data = _required_json(results, "MANIFEST.json")
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected an object, got {type(data).__name__}")
    figures = data.get("figures")
    if not isinstance(figures, list):
        raise ValueError(f"{path}: 'figures' should be a list of figure records")
    for i, rec in enumerate(figures):
        if not isinstance(rec, dict) or not isinstance(rec.get("figure"), str):
            raise ValueError(f"{path}: figures[{i}] has no 'figure' name")
    return data


def total_wall_time(manifest: Mapping) -> float:
    """The run's wall time: the manifest's ``wall_time_s`` if it records one, else the sum of its
    figures' ``wall_time_s`` (each job books its time once, on its first figure)."""
    total = manifest.get("wall_time_s")
    if isinstance(total, (int, float)) and not isinstance(total, bool):
        return float(total)
    times = [rec.get("wall_time_s") for rec in manifest.get("figures", []) if isinstance(rec, dict)]
    return float(sum(t for t in times if isinstance(t, (int, float)) and not isinstance(t, bool)))


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
            + f"; total wall time {format_number(total_wall_time(m))} s (the figures' jobs, from `MANIFEST.json`).")
    return "\n\n".join([
        "<!-- Generated by drpo_sim.report.write_report from the result files; do not edit by hand. -->",
        "# Which policy objectives keep LLM RL stable off-policy? DRPO and its neighbours, tested",
        line,
        ("Every number on this page is read from the result files of the run named above; "
         "`drpo_sim.report.check_numbers` verifies that none is typed by hand."),
    ])


def _claims_by_number(ctx: _Context) -> dict[int, dict]:
    return {c["number"]: c for c in ctx.claims}


def _all_claim_numbers(ctx: _Context) -> list[int]:
    return sorted(set(CLAIM_NUMBERS) | set(_claims_by_number(ctx)))


def _statement(ctx: _Context, number: int) -> str | None:
    """A claim's statement: from ``claims.json``; for a claim it does not hold, from
    :data:`drpo_sim.claims.STATEMENTS`, but only if that statement quotes no number beyond the
    structural ones (0 to 12): its numbers would be typed by hand, in no result file."""
    claim = _claims_by_number(ctx).get(number)
    if claim is not None:
        return claim["statement"]
    try:
        from drpo_sim.claims import STATEMENTS
    except ImportError:  # pragma: no cover - the package always ships claims.py
        return None
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
            rows.append([name, short, "not tested", "not tested in this run"])
        else:
            rows.append([name, short, f"**{claim['verdict']}**", claim["reason"]])
    intro = ("The claims of the project's reference (`shared/REFERENCE.md`, \"Claims the toolkit must be able "
             "to test\"), each put to a test by `drpo_sim.claims` (supported, not supported or inconclusive, "
             "with the reason measured).")
    return "\n\n".join(["## Summary", intro, _table(["Claim", "Statement (short)", "Verdict", "Why"], rows)])


_OBJECTIVES_TABLE = [
    ("`pg_is`", "`r*A`", "`1`", "plain importance-sampled policy gradient"),
    ("`ppo`, `grpo`", "`min(r*A, clip(r, 1-eps_low, 1+eps_high)*A)`",
     "`1` inside the clip, `0` where it is active", "ratio clipping (GRPO: clip-higher, group-relative advantages)"),
    ("`cispo`", "`sg(min(r, 1+eps_high)) * A * log pi`", "`min(r, 1+eps_high) / r`", "clipped, stop-gradient weight"),
    ("`spo`", "`r*A - abs(A) * (r-1)^2 / (2*eps)`", "`1 - sign(A)(r-1)/eps`", "quadratic penalty on the ratio"),
    ("`dppo_tv`", "`sg(r) * M * A * log pi`", "`M`: `0` where `sign(A)(pi - mu) > delta`, else `1`",
     "hard mask on the absolute shift"),
    ("`drpo`", "`r*A - abs(A) * mu * (r-1)^2 / (2*delta)`", "`1 - sign(A)(pi - mu)/delta`",
     "quadratic penalty on the absolute shift"),
]


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
        _table(["objective", "surrogate `J`", "weight `w`", "idea"], _OBJECTIVES_TABLE),
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
    for name, caption in (("weight_vs_pi", "Every objective's weight against pi at fixed mu"),
                          ("weight_plane", "SPO's and DRPO's weight over the (mu, pi) plane with the hard masks")):
        if ctx.has_png(name):
            parts.append(ctx.figure(name, caption))
    parts.append(_delta_range(ctx))
    parts.append(_rare_tokens(ctx))
    return "\n\n".join(p for p in parts if p)


def _delta_range(ctx: _Context) -> str:
    """DRPO's weight range against delta, from ``drpo_delta_range.csv``."""
    frame = _read_csv(ctx.results / "drpo_delta_range.csv")
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
    text = [("**How large the weight's range is** (`drpo_delta_range.csv`, over the `(mu, pi)` plane, both signs "
             "of `A`):"), _table(header, rows)]
    big = frame.loc[frame["delta"].idxmax()]
    sentence = (f"At the largest `delta` drawn, {format_number(big['delta'])}, DRPO's weight never leaves "
                f"[{format_number(big['weight_min'])}, {format_number(big['weight_max'])}]")
    if big["delta"] > 1 and (not corrective or big["corrective_fraction"] == 0):
        sentence += (": a probability shift is at most `1`, smaller than `delta`, so the trust-region boundary "
                     "is never reached and no token is corrected; DRPO there only re-weights each token slightly")
    text.append(sentence + ".")
    if ctx.has_png("drpo_delta_range"):
        text.append(ctx.figure("drpo_delta_range", "DRPO's weight against the shift for several delta"))
    return "\n\n".join(text)


def _replay_prefix(results: Path) -> str | None:
    """The replay to quote on rare tokens: the simulator's if present, else the first one."""
    prefixes = sorted(p.name.removesuffix("replay.json") for p in results.glob("*_replay.json"))
    prefixes = [p for p in prefixes if (results / f"{p}objectives.csv").is_file()]
    if not prefixes:
        return None
    return next((p for p in prefixes if p == "replay_sim_"), prefixes[0])


def _rare_tokens(ctx: _Context) -> str:
    """Masked shares on all tokens and on rare ones, from a replay's ``objectives.csv``."""
    prefix = _replay_prefix(ctx.results)
    if prefix is None:
        return ""
    totals = _read_json(ctx.results / f"{prefix}replay.json")
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
    panel experiment (``settings`` and ``variants``, :func:`drpo_sim.figures.panel_figures`) the
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
        ("**Token-log replay.** Any token log (the simulator's, the lab's, or a real training dump) is replayed "
         "through every objective's weight, token by token, to see what each would mask, attenuate or correct."),
        ("**Statistics.** A method's result is the interquartile mean (IQM) over seeds, with a stratified "
         "bootstrap confidence interval (runs resampled within each method); two methods differ measurably when "
         "their intervals do not overlap."
         + _confidence_sentence(ctx)),
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
                     + ("." if statement else "; its statement is in `shared/REFERENCE.md`."))
        return "\n\n".join(parts)
    parts.append(f"**Verdict: {claim['verdict']}.** Why: {claim['reason']}.")
    parts += [ctx.figure(name) for name in claim.get("figures", [])]
    numbers = claim["numbers"]
    if numbers:
        parts.append("The numbers behind the verdict:")
        parts.append(_table(["measured", "value"], [[f"`{k}`", format_number(v)] for k, v in numbers.items()]))
    how = (f"How it is tested and when each verdict is given: the docstring of `drpo_sim.claims.claim_{number}`")
    if claim["sources"]:
        how += "; it reads " + ", ".join(ctx.source(s) for s in claim["sources"])
    parts.append(how + ".")
    return "\n\n".join(parts)


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
         "make reproduce                # set up .venv, then regenerate figures/ from the built-in defaults\n"
         "drpo-sim reproduce --quick    # the same with an installed package; --full for more seeds and steps\n"
         "```"),
        "and this page from the results:",
        ("```python\n"
         "from drpo_sim.report import write_report, check_numbers\n"
         "write_report(\"figures\", \"paper\")   # writes paper/README.md and checks its numbers\n"
         "```"),
    ])


def render_report(results: Path | str, paper: Path | str) -> str:
    """The report's Markdown for the result files in ``results``, with links relative to ``paper``."""
    results, paper = Path(results), Path(paper)
    ctx = _Context(results, paper, load_claims(results), load_manifest(results))
    sections = [_header(ctx), _summary(ctx), _what_drpo_is(ctx), _how_tested(ctx)]
    sections += [_claim_section(ctx, n) for n in _all_claim_numbers(ctx)]
    sections += [_other_figures(ctx), _limits(ctx), _reproduce(ctx)]
    return "\n\n".join(s for s in sections if s) + "\n"


def report_inputs(results: Path | str) -> list[str]:
    """The result files the report quotes from: ``claims.json``, ``MANIFEST.json``, the DRPO
    weight-range table, the replay quoted on rare tokens, and each tested claim's source files.
    :func:`write_report` checks the report's numbers against these alone: against every file of a
    run (~10^5 numbers) almost any short decimal would be found somewhere."""
    results = Path(results)
    names = ["claims.json", "MANIFEST.json", "drpo_delta_range.csv"]
    prefix = _replay_prefix(results)
    if prefix is not None:
        names += [f"{prefix}objectives.csv", f"{prefix}replay.json"]
    for claim in load_claims(results):
        names += [s for s in claim.get("sources", []) if (results / s).is_file()]
    return list(dict.fromkeys(names))


def write_report(results: Path | str, paper: Path | str, *, check: bool = True) -> Path:
    """Write ``paper/README.md`` from the result files in ``results`` (atomically) and return its path.

    Figures are embedded as PNGs with links relative to ``paper``, only where the file exists. With
    ``check`` (the default) the report's numbers are first checked against the result files
    (:func:`check_numbers`, restricted to :func:`report_inputs`) and a :class:`ValueError` lists the first problems if any is not there,
    leaving no file written. A missing ``claims.json`` or ``MANIFEST.json`` is a
    :class:`FileNotFoundError` naming the file; a malformed one a :class:`ValueError`.
    """
    results, paper = Path(results), Path(paper)
    markdown = render_report(results, paper)
    if check:
        problems = check_numbers(markdown, results, include=report_inputs(results))
        if problems:
            shown = "; ".join(problems[:5]) + (f"; and {len(problems) - 5} more" if len(problems) > 5 else "")
            raise ValueError(f"report for {results}: numbers not in the result files: {shown}")
    return write_text(markdown, paper / "README.md")
