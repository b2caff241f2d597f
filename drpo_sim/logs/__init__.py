"""Loaders that turn LLM-RL training dumps into :class:`~drpo_sim.tokens.TokenBatch` es, with validation.

One entry point, :func:`open_log`::

    from drpo_sim.logs import open_log
    src = open_log(["run/logs"], fmt="auto", on_invalid="drop", batch_size=65536)
    for batch in src:            # TokenBatch, at most batch_size rows, never spanning two files (steps)
        ...
    print(src.report)            # what was dropped, per file and reason
    src.describe()               # format(s), files, mapping, derived columns: for result metadata
    src.has_column("logp_old")   # True / False from the files' schemas; None where only the rows tell

Formats (:data:`FORMATS`; one module each, whose docstring states the fields and their source):

================  ===================================================================================
``tokens``        our token logs (Parquet in the schema of :mod:`drpo_sim.tokens`): :mod:`.token_log`
``nemo_rl``       NeMo RL ``train_data_step{N}.jsonl`` (pre-v0.6.0: mismatch only): :mod:`.nemo_rl`
``slime``         slime ``--save-debug-rollout-data`` / ``--save-debug-train-data`` ``.pt`` files: :mod:`.slime`
``generic``       any Parquet or JSONL file with a column mapping (ours -> theirs): :mod:`.generic`
``trainer_dump``  per-step ``.pt`` files written from verl or TRL with :data:`.trainer_dump.SNIPPET`
                  (see ``docs/trainer_dumps.md``): :mod:`.trainer_dump`
``auto``          by name, extension and content (below); a clear ``ValueError`` when it cannot tell
================  ===================================================================================

``auto``: ``.parquet`` holding the token-log columns -> ``tokens`` (``generic`` when a mapping
is given); ``train_data_step{N}.jsonl``, or JSONL whose first line has ``generation_logprobs``
and ``prev_logprobs`` -> ``nemo_rl``; other ``.parquet``/``.jsonl`` with a mapping ->
``generic``; ``drpo_dump_step*.pt`` -> ``trainer_dump``; other ``.pt``: the first such file of
each directory is loaded and recognised by its keys (``slime`` or ``trainer_dump``). JSONL and
``.pt`` files may be gzip- or zstd-compressed (``.jsonl.gz``, ``.jsonl.zst``, ``.pt.gz``; zstd
needs the optional ``zstandard`` package, ``pip install 'drpo_sim[zstd]'``, and says so, naming
the file, when it is missing).

Paths (:func:`open_log`, :class:`Listing`): files; folders, searched with all their subfolders
(a run's parent folder such as NeMo RL's ``logs/`` with ``exp_001/``, ``exp_002/``, or slime's
``--dump-details`` folder with ``rollout_data/``, ``train_data/`` and ``tokenizer/``); and globs
(``"logs/exp_*/train_data_step*.jsonl.gz"``, ``**`` for any depth), expanded here when the shell
did not (a quoted pattern). In a searched folder each subfolder is classified on its own: one
holding NeMo RL step files contributes those only (its ``val_data_step*.jsonl`` are skipped), any
other its ``.parquet``/``.jsonl``/``.pt`` files (with ``--format``: the files of that format).
Hidden files and folders, files of other extensions, slime evaluation dumps (skipped even when
named) and, in ``auto`` mode, searched files whose format cannot be told are skipped and listed
with the reason in ``src.listing`` (:meth:`LogSource.listing_lines` for the terminal,
``describe()["skipped"]`` for ``replay.json``); a named file whose format cannot be told is an
error. All files are read in natural order of their paths (``step2`` before ``step10``), whatever
order they were given in. Iteration streams: files are opened one at a time when the iterator
reaches them, and memory is bounded by ``batch_size`` for JSONL and Parquet, and by one file (one
step; for slime the files of one rollout id) for the torch ``.pt`` formats. Each ``iter(src)``
starts a fresh pass (and a fresh report).

Ids: ``sample_id`` and derived ``group_id`` are numbered across the whole log in reading order
(unique over the log) unless the format has its own (slime's sample and group indices, our token
logs); each loader's docstring states its rule. ``group_size`` (default 1: each sample its own
group) groups consecutive samples when a format has no group field (NeMo RL: set it to
``num_generations_per_prompt``).

Mismatch-only logs: a NeMo RL log written before v0.6.0 holds both log-probs but no advantages.
It is read with ``advantage`` 0, ``src.mismatch_only`` is ``True`` and ``src.note`` says why;
:func:`drpo_sim.analysis.replay_log` then computes the mismatch tables only (no objective
weights) and says so once in ``replay.json``.

Validation (:mod:`.validate`): errors are one-line ``ValueError`` s naming the file, the field
and the first offending rows (``rows [..]`` from the start of a Parquet file, ``line N`` in
JSONL, ``sample N`` in torch files), and what to do. ``on_invalid="drop"`` drops bad rows, or
whole samples for per-sample problems (length mismatch, truncated or invalid JSON line, a
compressed file cut short, non-numeric values), or whole step files that hold no sample (0 bytes,
or no line, row or sample), and counts them in ``src.report`` per file and reason (rows, samples
and files); other structural problems (missing field or column, unreadable or truncated ``.pt``
or Parquet file, unknown format, columns that change between files) raise in both modes. Samples
read once although several files hold them (slime's tensor- and pipeline-parallel rank copies)
are counted apart, as de-duplicated (``src.report.dedup``), not as drops. ``.pt`` files are
loaded with ``torch.load(weights_only=True)``; one holding other objects (a NumPy scalar, say)
is an error naming the object, and ``weights_only=False`` (``drpo-sim replay --trust-pickles``)
reads it, for files you trust.
"""

from __future__ import annotations

import errno
import glob
import json
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from drpo_sim.logs import generic, nemo_rl, slime, token_log, trainer_dump
from drpo_sim.logs._stream import UNREADABLE_ADVICE, iter_lines, load_torch, log_suffix, natural_key, split_suffix
from drpo_sim.logs.validate import ON_INVALID, Context, DropReport, did_you_mean
from drpo_sim.tokens import ALL_COLUMNS, OPTIONAL_COLUMNS, TokenBatch

__all__ = ["FORMATS", "DropReport", "Listing", "LogSource", "UnknownFormat", "detect_format", "open_log",
           "parse_mapping"]

#: Accepted values of ``fmt``.
FORMATS: tuple[str, ...] = ("auto", "tokens", "nemo_rl", "slime", "generic", "trainer_dump")

_LOADERS = {"tokens": token_log, "nemo_rl": nemo_rl, "slime": slime, "generic": generic,
            "trainer_dump": trainer_dump}
#: How formats fill schema columns their dumps do not hold (reported by describe()).
_DERIVED = {
    "nemo_rl": {"logp": "prev_logprobs (pi_old: the dump holds no post-update policy)",
                "group_id": "consecutive samples in groups of group_size"},
    "slime": {"logp": "log_probs (pi_old: the dump holds no post-update policy)"},
    "trainer_dump": {"logp": "logp_old unless the dump has logp"},
}
#: Optional columns a format's loader gives every row, whatever the dump holds (for has_column).
_ALWAYS = {"nemo_rl": ("logp_old", "step"), "slime": ("logp_old",), "trainer_dump": ("logp_old", "step")}
_EXTENSIONS = {"tokens": (".parquet",), "nemo_rl": (".jsonl",), "slime": (".pt",),
               "generic": (".parquet", ".jsonl"), "trainer_dump": (".pt",)}



def parse_mapping(spec: str | Mapping[str, str] | None) -> dict[str, str]:
    """``"logp=trainer_lp,logp_behavior=engine_lp,advantage=adv"`` -> ``{ours: theirs}``.

    Keys are schema column names (:data:`drpo_sim.tokens.ALL_COLUMNS`); an unknown one is a
    ``ValueError`` suggesting the closest valid name and listing them all. A dict is checked the
    same way. ``None`` or ``""`` gives ``{}``.
    """
    if spec is None:
        return {}
    if isinstance(spec, Mapping):
        items = [(str(k), str(v)) for k, v in spec.items()]
    else:
        items = []
        for part in str(spec).split(","):
            part = part.strip()
            if not part:
                continue
            ours, sep, theirs = part.partition("=")
            if not sep or not ours.strip() or not theirs.strip():
                raise ValueError(f"mapping entry {part!r} is not of the form ours=theirs (e.g. logp=trainer_lp)")
            items.append((ours.strip(), theirs.strip()))
    out: dict[str, str] = {}
    for ours, theirs in items:
        if ours not in ALL_COLUMNS:
            raise ValueError(f"unknown schema column {ours!r} in the mapping{did_you_mean(ours, ALL_COLUMNS)}; "
                             f"valid names are {list(ALL_COLUMNS)}")
        if ours in out:
            raise ValueError(f"schema column {ours!r} is mapped twice ({out[ours]!r} and {theirs!r})")
        out[ours] = theirs
    return out


def _check_format(fmt: str) -> None:
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}{did_you_mean(fmt, FORMATS)}; formats are {list(FORMATS)}")


class UnknownFormat(ValueError):
    """A file whose format :func:`detect_format` cannot tell (skipped when a folder is searched)."""


def detect_format(path: str | os.PathLike, mapping: Mapping[str, str] | None = None, *,
                  weights_only: bool = True) -> str:
    """The format of one file, by name, extension and (for JSONL, Parquet, ``.pt``) content.

    Compressed files (``.jsonl.gz``, ``.jsonl.zst``, ``.pt.gz``, ...) are told by the suffix
    before the compression's. A file it cannot place raises :class:`UnknownFormat` (a
    ``ValueError``) saying what to do.
    """
    path = Path(path)
    suffix, comp = split_suffix(path)
    if suffix == ".parquet":
        if comp is not None:
            raise UnknownFormat(f"{path}: a compressed Parquet file is not read (Parquet compresses its columns "
                                "itself): decompress it and pass the .parquet file")
        try:
            schema = pq.read_schema(path)
        except (pa.ArrowException, OSError) as e:
            raise ValueError(f"{path}: not a readable Parquet file ({e}){UNREADABLE_ADVICE}") from None
        if mapping:
            return "generic"
        if token_log.sniff(schema):
            return "tokens"
        raise UnknownFormat(
            f"{path}: cannot detect the format: a Parquet file without the token-log columns; "
            "read it with --format generic and a mapping, e.g. --map logp=...,logp_behavior=...,advantage=..."
        )
    if suffix == ".jsonl":
        if nemo_rl.matches(path):
            return "nemo_rl"
        first = next(iter_lines(path), None)
        if first is not None and isinstance(first[1], dict) and nemo_rl.sniff(first[1]):
            return "nemo_rl"
        if mapping:
            return "generic"
        raise UnknownFormat(
            f"{path}: cannot detect the format: JSONL that is not a NeMo RL train_data_step*.jsonl dump; "
            "read it with --format generic and a mapping, e.g. --map logp=...,logp_behavior=...,advantage=..."
        )
    if suffix == ".pt":
        if path.name.startswith("drpo_dump_step"):
            return "trainer_dump"
        obj = load_torch(path, weights_only, mmap=True)
        if trainer_dump.sniff(obj):
            return "trainer_dump"
        if slime.sniff(obj):
            return "slime"
        found = list(obj) if isinstance(obj, dict) else type(obj).__name__
        raise UnknownFormat(f"{path}: cannot detect the format: a torch file that is neither a slime debug dump nor "
                            f"a drpo_sim trainer dump (found {found}); leave it out")
    shown = "".join(path.suffixes[-2:]) if comp else suffix
    raise UnknownFormat(
        f"{path}: cannot detect the format (unknown extension {shown or '(none)'}); formats are "
        f"{list(FORMATS)}: .parquet (tokens, generic), .jsonl (nemo_rl, generic), .pt (slime, trainer_dump), "
        "JSONL and .pt also gzip- or zstd-compressed (.gz, .zst)"
    )


# ----------------------------------------------------------------------------------------------
# finding the files: paths, globs, run folders


@dataclass
class Listing:
    """What the given paths hold: the files to read, and what was skipped and why.

    ``found``: files to read, in natural order; ``searched``: the files among them found by
    searching a folder or expanding a glob (as opposed to named); ``skipped``: ``(path, why)``
    for files (and hidden folders) not read; ``empty``: files of 0 bytes (an error, or skipped
    and counted as dropped with ``on_invalid="drop"``); ``folders``: the folders searched;
    ``patterns``: the globs expanded.
    """

    found: list[Path] = field(default_factory=list)
    searched: set[Path] = field(default_factory=set)
    skipped: list[tuple[Path, str]] = field(default_factory=list)
    empty: list[Path] = field(default_factory=list)
    folders: list[Path] = field(default_factory=list)
    patterns: list[str] = field(default_factory=list)

    def skip(self, path: Path, why: str) -> None:
        self.skipped.append((path, why))


_LOG_SUFFIXES = (".parquet", ".jsonl", ".pt")


def _why_not(f: Path, fmt: str) -> str | None:
    """Why a file met in a folder or a glob is not a log file of ``fmt`` (``None``: it is a candidate)."""
    suffix, comp = split_suffix(f)
    if suffix == ".pt" and fmt in ("auto", "slime") and slime.is_eval(f):
        return slime.EVAL_REASON
    if fmt != "auto":
        return None if _LOADERS[fmt].matches(f) else f"not a {fmt} file"
    if suffix == ".parquet" and comp is not None:
        return "compressed Parquet (Parquet compresses its columns itself: decompress it)"
    if suffix not in _LOG_SUFFIXES:
        return f"not a log file ({''.join(f.suffixes[-2:]) if comp else suffix or 'no extension'})"
    return None


def _classify(files: list[Path], fmt: str, listing: Listing) -> None:
    """Sort the files of one folder (met by a search or a glob) into found and skipped."""
    candidates = []
    for f in files:
        if f.name.startswith("."):
            listing.skip(f, "hidden file")
        else:
            candidates.append(f)
    if fmt == "auto" and any(nemo_rl.matches(f) for f in candidates):
        for f in candidates:
            why = nemo_rl.skip_reason(f)
            if why is not None:
                why = _why_not(f, "auto") or why
            if why is None:
                listing.found.append(f)
                listing.searched.add(f)
            else:
                listing.skip(f, why)
        return
    for f in candidates:
        why = _why_not(f, fmt)
        if why is None:
            listing.found.append(f)
            listing.searched.add(f)
        else:
            listing.skip(f, why)


def _search(top: Path, fmt: str, listing: Listing) -> None:
    """Every folder under ``top`` (hidden ones left out, and listed), each classified on its own."""
    listing.folders.append(top)
    for root, dirs, names in os.walk(top):
        hidden = [d for d in dirs if d.startswith(".")]
        for d in hidden:
            listing.skip(Path(root) / d, "hidden folder (not searched)")
        dirs[:] = sorted((d for d in dirs if not d.startswith(".")), key=natural_key)
        files = [Path(root) / n for n in sorted(names, key=natural_key)]
        _classify([f for f in files if f.is_file()], fmt, listing)


def _expand(paths: Any, fmt: str) -> Listing:
    """Files, folders (searched recursively) and globs (``*``, ``?``, ``[..]``, ``**``) to a :class:`Listing`."""
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    listing = Listing()
    named: list[Path] = []
    for given in paths:
        text = os.fspath(given)
        p = Path(text)
        if p.exists():
            targets = [p]
        elif glob.has_magic(text):
            targets = [Path(m) for m in sorted(glob.glob(os.path.expanduser(text), recursive=True), key=natural_key)]
            if not targets:
                raise FileNotFoundError(errno.ENOENT, "no file or folder matches this pattern", text)
            listing.patterns.append(text)
            by_folder: dict[Path, list[Path]] = {}
            for t in targets:
                if t.is_file():
                    by_folder.setdefault(t.parent, []).append(t)
            for files in by_folder.values():
                _classify(files, fmt, listing)
            targets = [t for t in targets if t.is_dir()]
        else:
            raise FileNotFoundError(errno.ENOENT, "no such log file or directory", text)
        for t in targets:
            if t.is_dir():
                before = len(listing.found)
                _search(t, fmt, listing)
                if len(listing.found) == before:
                    what = "log" if fmt == "auto" else fmt
                    raise ValueError(f"{t}: no {what} files in this folder or below{_skipped_hint(listing, t)}")
            elif fmt in ("auto", "slime") and log_suffix(t) == ".pt" and slime.is_eval(t):
                listing.skip(t, slime.EVAL_REASON)
            else:
                named.append(t)
    listing.found.extend(named)
    if not listing.found:
        if listing.skipped:
            raise ValueError(f"no log files to read{_skipped_hint(listing)}")
        raise ValueError("open_log: no paths given")
    listing.found = sorted(dict.fromkeys(listing.found), key=natural_key)
    return listing


def _skipped_hint(listing: Listing, under: Path | None = None) -> str:
    skipped = [(f, why) for f, why in listing.skipped if under is None or under in f.parents or f == under]
    if not skipped:
        return ""
    by_reason: dict[str, int] = {}
    for _, why in skipped:
        by_reason[why] = by_reason.get(why, 0) + 1
    reasons = "; ".join(f"{_n(k, 'file')}: {why}" for why, k in by_reason.items())
    return f" (skipped {reasons}); name the files, or pass --format"


def _n(k: int, noun: str) -> str:
    return f"{k} {noun}" if k == 1 else f"{k} {noun}s"


def _grouped(paths: list[Path]) -> list[tuple[Path, list[Path]]]:
    out: dict[Path, list[Path]] = {}
    for f in paths:
        out.setdefault(f.parent, []).append(f)
    return list(out.items())


class LogSource:
    """An iterable of :class:`TokenBatch` es over one log; see :func:`open_log`."""

    def __init__(self, plan: list[tuple[str, list[Path]]], given: list[str], mapping: dict[str, str] | None,
                 on_invalid: str, batch_size: int, group_size: int, weights_only: bool,
                 listing: Listing | None = None) -> None:
        self.plan = plan
        self.given = given
        self.mapping = mapping
        self.on_invalid = on_invalid
        self.batch_size = batch_size
        self.group_size = group_size
        self.weights_only = weights_only
        #: The files found, skipped (and why) and empty (see :class:`Listing`).
        self.listing = listing if listing is not None else Listing(found=self.files)
        #: What ``on_invalid="drop"`` dropped in the current (or last) pass.
        self.report = DropReport()
        #: ``True`` for a log without advantages (NeMo RL before v0.6.0): only the mismatch
        #: analysis applies; ``note`` says why.
        self.mismatch_only = False
        self.note: str | None = None
        self._advantage_file: Path | None = None
        self._derived: dict[str, str] = {}
        for fmt, _ in plan:
            self._derived.update(_DERIVED.get(fmt, {}))
        formats = dict(plan)
        if "generic" in formats:
            self._peek_generic(formats["generic"][0])
        if "nemo_rl" in formats:
            self._peek_nemo_rl(formats["nemo_rl"])

    @property
    def files(self) -> list[Path]:
        return [f for _, files in self.plan for f in files]

    def _context(self) -> Context:
        ctx = Context(on_invalid=self.on_invalid, batch_size=self.batch_size, group_size=self.group_size,
                      mapping=self.mapping, weights_only=self.weights_only, report=self.report)
        if self._advantage_file is not None:
            ctx.has_advantage, ctx.has_advantage_file = not self.mismatch_only, self._advantage_file
        return ctx

    def _peek_generic(self, path: Path) -> None:
        """Which columns the generic loader will derive (for describe(), before any pass)."""
        ctx = self._context()
        generic.peek(path, ctx)
        self._derived.update(ctx.derived)

    def _peek_nemo_rl(self, files: list[Path]) -> None:
        """Whether the log holds advantages (NeMo RL logs them from v0.6.0 on), from its first line."""
        nemo_rl.check_steps(files)
        first = nemo_rl.peek(files)
        if first is None:
            return
        path, lineno, obj = first
        self._advantage_file = path
        if nemo_rl.has_advantages(obj):
            return
        others = [fmt for fmt, _ in self.plan if fmt != "nemo_rl"]
        if others:
            raise ValueError(f"{path}: a NeMo RL log without advantages (mismatch-only) cannot be replayed "
                             f"together with {', '.join(others)} files: replay them separately")
        self.mismatch_only, self.note = True, nemo_rl.NO_ADVANTAGE_NOTE
        ctx = self._context()
        nemo_rl._fields(path, lineno, obj, ctx)
        self._derived.update(ctx.derived)

    def __iter__(self) -> Iterator[TokenBatch]:
        self.report.clear()
        ctx = self._context()
        for f in self.listing.empty:
            ctx.empty_file(f, "empty file, 0 bytes")
        for fmt, files in self.plan:
            yield from _LOADERS[fmt].iter_files(files, ctx)
        self._derived.update(ctx.derived)

    def has_column(self, name: str) -> bool | None:
        """Whether this log's batches will hold the schema column ``name``, told without reading rows.

        ``True`` or ``False`` where the files tell: the required columns always, a name outside the
        schema (:data:`drpo_sim.tokens.ALL_COLUMNS`) never; a token log's (``tokens``) optional
        columns from its first file's Parquet schema, a ``generic`` log's from its first file's
        columns (Parquet schema or first JSONL line) and the mapping (every file of a log must give
        the same columns); ``logp_old`` (and ``step``) from the formats that always give them (NeMo
        RL, slime, trainer dumps). ``None`` where only reading the rows would tell, or a file cannot
        be read (reading it reports why). Lets a replay refuse an objective whose column the log
        lacks before reading it (:func:`drpo_sim.analysis.replay_log`).
        """
        if name not in ALL_COLUMNS:
            return False
        if name not in OPTIONAL_COLUMNS:
            return True
        answers = []
        for fmt, files in self.plan:
            if name in _ALWAYS.get(fmt, ()):
                answers.append(True)
            elif fmt == "tokens":
                try:
                    answers.append(name in pq.read_schema(files[0]).names)
                except (pa.ArrowException, OSError):
                    answers.append(None)
            elif fmt == "generic":
                cols = generic.columns(files[0], self.mapping)
                answers.append(None if cols is None else name in cols)
            else:
                answers.append(None)
        if False in answers:
            return False
        return True if answers and all(answers) else None

    def listing_lines(self, limit: int = 8) -> list[str]:
        """What was found (per folder) and what was skipped, and why, for the terminal."""
        files = self.files
        formats = ", ".join(fmt for fmt, _ in self.plan)
        lines = [(f"reading {_n(len(files), 'file')} ({formats})" if files else "reading no file")
                 + (f" found under {', '.join(map(str, self.listing.folders))}" if self.listing.folders else "")
                 + (f" matching {', '.join(self.listing.patterns)}" if self.listing.patterns else "") + ":"]
        groups = _grouped(files)
        for folder, fs in groups[:limit]:
            names = fs[0].name if len(fs) == 1 else f"{fs[0].name} .. {fs[-1].name}"
            lines.append(f"  {folder}: {_n(len(fs), 'file')}, {names}")
        if len(groups) > limit:
            lines.append(f"  ... and {len(groups) - limit} more folders")
        if self.listing.empty:
            action = "counted as dropped (--on-invalid drop)" if self.on_invalid == "drop" else "an error"
            lines.append(f"empty (0 bytes), {action}: " + ", ".join(map(str, self.listing.empty[:limit]))
                         + (", ..." if len(self.listing.empty) > limit else ""))
        if self.listing.skipped:
            lines.append(f"skipped {_n(len(self.listing.skipped), 'file')}:")
            by: dict[tuple[Path, str], list[Path]] = {}
            for f, why in self.listing.skipped:
                by.setdefault((f.parent, why), []).append(f)
            items = list(by.items())
            for (folder, why), fs in items[:limit]:
                if len(fs) == 1:
                    lines.append(f"  {fs[0]}: {why}")
                else:
                    shown = ", ".join(f.name for f in fs[:3]) + (", ..." if len(fs) > 3 else "")
                    lines.append(f"  {folder}: {_n(len(fs), 'file')} ({shown}): {why}")
            if len(items) > limit:
                lines.append(f"  ... and {len(items) - limit} more (replay.json lists them by reason)")
        return lines

    def describe(self) -> dict[str, Any]:
        """A short, JSON-serialisable description for result metadata."""
        files = self.files
        formats = [fmt for fmt, _ in self.plan]
        out: dict[str, Any] = {
            "format": formats[0] if len(formats) == 1 else formats or None,
            "paths": self.given,
            "files": len(files),
            "first_file": str(files[0]) if files else None,
            "last_file": str(files[-1]) if files else None,
            "mapping": dict(self.mapping) if self.mapping else None,
            "on_invalid": self.on_invalid,
            "group_size": self.group_size,
        }
        if self.listing.folders:
            out["searched"] = [str(f) for f in self.listing.folders]
        if self.listing.patterns:
            out["patterns"] = list(self.listing.patterns)
        if self.listing.skipped:
            by_reason: dict[str, list[str]] = {}
            for f, why in self.listing.skipped:
                by_reason.setdefault(why, []).append(str(f))
            out["skipped"] = {why: {"files": len(fs), "first": fs[:5]} for why, fs in by_reason.items()}
        if self.listing.empty:
            out["empty_files"] = [str(f) for f in self.listing.empty]
        if self.mismatch_only:
            out["mismatch_only"] = True  # why: self.note (stated once, in replay.json's "note")
        if self._derived:
            out["derived"] = dict(self._derived)
        if self.report:
            out["dropped"] = {"rows": self.report.total, "samples": self.report.total_samples}
            if self.report.total_files:
                out["dropped"]["files"] = self.report.total_files
        if self.report.dedup:
            out["deduplicated"] = {"samples": self.report.dedup_samples}
        json.dumps(out)
        return out

    def __repr__(self) -> str:
        return f"LogSource({self.describe()['format']!r}, files={len(self.files)}, on_invalid={self.on_invalid!r})"


def open_log(paths: str | os.PathLike | list, fmt: str = "auto", mapping: str | Mapping[str, str] | None = None,
             on_invalid: str = "raise", batch_size: int = 65536, *, group_size: int = 1,
             weights_only: bool = True) -> LogSource:
    """Open a training log for streaming as token batches (see the module docstring).

    ``paths``: a file, a folder (searched with its subfolders) or a glob (``"logs/*/train_data_step*.jsonl"``,
    ``**`` for any depth), or a list of them. ``fmt``: one of :data:`FORMATS`.
    ``mapping``: for the generic format, ``"ours=theirs,..."`` or a dict (see
    :func:`parse_mapping`). ``on_invalid``: ``"raise"`` (first bad row or sample is an error) or
    ``"drop"`` (dropped and counted in ``.report``). ``batch_size``: most rows per batch.
    ``group_size``: consecutive samples per group where the format has no group field.
    ``weights_only``: passed to ``torch.load`` for ``.pt`` files (``False`` only for trusted files).

    Files are listed, and formats detected, here (auto detection reads a Parquet schema, a first
    JSONL line, or the first ``.pt`` file of a directory); rows are read only while iterating.
    ``.listing`` (and :meth:`LogSource.listing_lines`) says what was found and what was skipped.
    """
    _check_format(fmt)
    if on_invalid not in ON_INVALID:
        raise ValueError(f"on_invalid must be one of {list(ON_INVALID)}, got {on_invalid!r}")
    if int(batch_size) < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if int(group_size) < 1:
        raise ValueError(f"group_size must be >= 1, got {group_size}")
    mapping = parse_mapping(mapping) or None
    if mapping and fmt not in ("auto", "generic"):
        raise ValueError(f"a column mapping applies to the generic format only, not {fmt!r}")
    given = [os.fspath(p) for p in ([paths] if isinstance(paths, (str, os.PathLike)) else paths)]
    listing = _expand(paths, fmt)
    by_format: dict[str, list[Path]] = {}
    pt_cache: dict[Path, str] = {}
    found = []
    for f in listing.found:
        if f.stat().st_size == 0:
            Context(on_invalid=on_invalid).empty_file(f, "empty file, 0 bytes")  # raises unless dropping
            listing.empty.append(f)
            continue
        try:
            if fmt == "auto":
                if log_suffix(f) == ".pt" and not f.name.startswith("drpo_dump_step"):
                    if f.parent not in pt_cache:
                        pt_cache[f.parent] = detect_format(f, mapping, weights_only=weights_only)
                    this = pt_cache[f.parent]
                else:
                    this = detect_format(f, mapping)
            else:
                this = fmt
                suffix, comp = split_suffix(f)
                if suffix not in _EXTENSIONS[fmt] or (suffix == ".parquet" and comp is not None):
                    shown = "".join(f.suffixes[-2:]) if comp else f.suffix
                    raise ValueError(f"{f}: the {fmt} format reads {' or '.join(_EXTENSIONS[fmt])} files, not "
                                     f"{shown or 'files without an extension'}; pass --format auto, or another format")
        except UnknownFormat as e:
            if f not in listing.searched:
                raise
            listing.skip(f, str(e).removeprefix(f"{f}: "))
            continue
        by_format.setdefault(this, []).append(f)
        found.append(f)
    listing.found = found
    if not by_format:
        if listing.empty:
            return LogSource([], given, mapping, on_invalid, int(batch_size), int(group_size), weights_only, listing)
        raise ValueError(f"no log files to read{_skipped_hint(listing)}")
    if mapping and "generic" not in by_format:
        raise ValueError(f"a column mapping applies to the generic format only; these files are {list(by_format)}")
    return LogSource(list(by_format.items()), given, mapping, on_invalid, int(batch_size), int(group_size),
                     weights_only, listing)
