"""The number check: no number in a report is typed by hand.

:func:`check_numbers` takes any Markdown text (the generated report, or one edited by hand) and a
results directory, and lists every number of the text that is in none of the result files, at
the precision the text shows it. The exact rules are in :func:`check_numbers`'s docstring. The
numbers the report shows are formatted by :func:`format_number`, whose output the check always
accepts for the value it came from; :mod:`drpo_sim.paper.report` runs the check on what it
writes.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from drpo_sim.paper.manifest import read_json, total_wall_time

__all__ = ["CLAIM_NUMBERS", "NumberPool", "NumericLiteral", "check_numbers", "checked_text", "format_number",
           "format_percent", "number_pool", "numeric_literals"]

#: The claims of ``docs/reference.md`` ("Claims the toolkit tests"); each gets a section,
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
        data = read_json(path)
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
