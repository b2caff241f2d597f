"""Loaders that turn LLM-RL training dumps into :class:`~drpo_sim.tokens.TokenBatch` es, with validation.

One entry point, :func:`open_log`::

    from drpo_sim.logs import open_log
    src = open_log(["run/logs"], fmt="auto", on_invalid="drop", batch_size=65536)
    for batch in src:            # TokenBatch, at most batch_size rows, never spanning two files (steps)
        ...
    print(src.report)            # what was dropped, per file and reason
    src.describe()               # format(s), files, mapping, derived columns: for result metadata

Formats (:data:`FORMATS`; one module each, whose docstring states the fields and their source):

================  ===================================================================================
``tokens``        our token logs (Parquet in the schema of :mod:`drpo_sim.tokens`): :mod:`.token_log`
``nemo_rl``       NeMo RL ``train_data_step{N}.jsonl``: :mod:`.nemo_rl`
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
each directory is loaded and recognised by its keys (``slime`` or ``trainer_dump``).

Paths: files, or directories meaning the files in them that the format reads (a NeMo RL log
directory contributes its ``train_data_step*.jsonl`` only; hidden files are skipped). All files
are read in natural order of their paths (``step2`` before ``step10``), whatever order they were
given in. Iteration streams: files are opened one at a time when the iterator reaches them, and
memory is bounded by ``batch_size`` for JSONL and Parquet, and by one file (one step; for slime
the files of one rollout id) for the torch ``.pt`` formats. Each ``iter(src)`` starts a fresh pass
(and a fresh report).

Ids: ``sample_id`` and derived ``group_id`` are numbered across the whole log in reading order
(unique over the log) unless the format has its own (slime's sample and group indices, our token
logs); each loader's docstring states its rule. ``group_size`` (default 1: each sample its own
group) groups consecutive samples when a format has no group field (NeMo RL: set it to
``num_generations_per_prompt``).

Validation (:mod:`.validate`): errors are one-line ``ValueError`` s naming the file, the field
and the first offending rows (``rows [..]`` from the start of a Parquet file, ``line N`` in
JSONL, ``sample N`` in torch files). ``on_invalid="drop"`` drops bad rows, or whole samples for
per-sample problems (length mismatch, truncated or invalid JSON line, non-numeric values), and
counts them in ``src.report`` per file and reason; structural problems (missing field or column,
empty or unreadable file, unknown format, columns that change between files) raise in both modes.
"""

from __future__ import annotations

import errno
import json
import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from drpo_sim.logs import generic, nemo_rl, slime, token_log, trainer_dump
from drpo_sim.logs._stream import iter_lines, load_torch, natural_key
from drpo_sim.logs.validate import ON_INVALID, Context, DropReport, did_you_mean
from drpo_sim.tokens import ALL_COLUMNS, TokenBatch

__all__ = ["FORMATS", "DropReport", "LogSource", "detect_format", "open_log", "parse_mapping"]

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


def detect_format(path: str | os.PathLike, mapping: Mapping[str, str] | None = None, *,
                  weights_only: bool = True) -> str:
    """The format of one file, by name, extension and (for JSONL, Parquet, ``.pt``) content."""
    path = Path(path)
    suffix = path.suffix
    if suffix == ".parquet":
        try:
            schema = pq.read_schema(path)
        except (pa.ArrowException, OSError) as e:
            raise ValueError(f"{path}: not a readable Parquet file ({e})") from None
        if mapping:
            return "generic"
        if token_log.sniff(schema):
            return "tokens"
        raise ValueError(
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
        raise ValueError(
            f"{path}: cannot detect the format: JSONL that is not a NeMo RL train_data_step*.jsonl dump; "
            "read it with --format generic and a mapping, e.g. --map logp=...,logp_behavior=...,advantage=..."
        )
    if suffix == ".pt":
        if path.name.startswith("drpo_dump_step"):
            return "trainer_dump"
        obj = load_torch(path, weights_only)
        if trainer_dump.sniff(obj):
            return "trainer_dump"
        if slime.sniff(obj):
            return "slime"
        found = list(obj) if isinstance(obj, dict) else type(obj).__name__
        raise ValueError(f"{path}: cannot detect the format: a torch file that is neither a slime debug dump nor a "
                         f"drpo_sim trainer dump (found {found})")
    raise ValueError(
        f"{path}: cannot detect the format (unknown extension {suffix or '(none)'}); formats are "
        f"{list(FORMATS)}: .parquet (tokens, generic), .jsonl (nemo_rl, generic), .pt (slime, trainer_dump)"
    )


def _dir_files(directory: Path, fmt: str) -> list[Path]:
    files = [f for f in directory.iterdir() if f.is_file() and not f.name.startswith(".")]
    if fmt == "auto":
        nemo = [f for f in files if nemo_rl.matches(f)]
        files = nemo or [f for f in files if f.suffix in (".parquet", ".jsonl") or slime.matches(f)]
    else:
        files = [f for f in files if _LOADERS[fmt].matches(f)]
    if not files:
        what = "log" if fmt == "auto" else fmt
        raise ValueError(f"{directory}: no {what} files in this directory")
    return files


def _expand(paths: Any, fmt: str) -> list[Path]:
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    out: list[Path] = []
    for p in map(Path, paths):
        if not p.exists():
            raise FileNotFoundError(errno.ENOENT, "no such log file or directory", str(p))
        out.extend(_dir_files(p, fmt) if p.is_dir() else [p])
    if not out:
        raise ValueError("open_log: no paths given")
    return sorted(dict.fromkeys(out), key=natural_key)


class LogSource:
    """An iterable of :class:`TokenBatch` es over one log; see :func:`open_log`."""

    def __init__(self, plan: list[tuple[str, list[Path]]], given: list[str], mapping: dict[str, str] | None,
                 on_invalid: str, batch_size: int, group_size: int, weights_only: bool) -> None:
        self.plan = plan
        self.given = given
        self.mapping = mapping
        self.on_invalid = on_invalid
        self.batch_size = batch_size
        self.group_size = group_size
        self.weights_only = weights_only
        #: What ``on_invalid="drop"`` dropped in the current (or last) pass.
        self.report = DropReport()
        self._derived: dict[str, str] = {}
        for fmt, _ in plan:
            self._derived.update(_DERIVED.get(fmt, {}))
        if "generic" in dict(plan):
            self._peek_generic(dict(plan)["generic"][0])

    @property
    def files(self) -> list[Path]:
        return [f for _, files in self.plan for f in files]

    def _context(self) -> Context:
        return Context(on_invalid=self.on_invalid, batch_size=self.batch_size, group_size=self.group_size,
                       mapping=self.mapping, weights_only=self.weights_only, report=self.report)

    def _peek_generic(self, path: Path) -> None:
        """Which columns the generic loader will derive (for describe(), before any pass)."""
        ctx = self._context()
        generic.peek(path, ctx)
        self._derived.update(ctx.derived)

    def __iter__(self) -> Iterator[TokenBatch]:
        self.report.clear()
        ctx = self._context()
        for fmt, files in self.plan:
            yield from _LOADERS[fmt].iter_files(files, ctx)
        self._derived.update(ctx.derived)

    def describe(self) -> dict[str, Any]:
        """A short, JSON-serialisable description for result metadata."""
        files = self.files
        formats = [fmt for fmt, _ in self.plan]
        out: dict[str, Any] = {
            "format": formats[0] if len(formats) == 1 else formats,
            "paths": self.given,
            "files": len(files),
            "first_file": str(files[0]),
            "last_file": str(files[-1]),
            "mapping": dict(self.mapping) if self.mapping else None,
            "on_invalid": self.on_invalid,
            "group_size": self.group_size,
        }
        if self._derived:
            out["derived"] = dict(self._derived)
        if self.report:
            out["dropped"] = {"rows": self.report.total, "samples": self.report.total_samples}
        json.dumps(out)
        return out

    def __repr__(self) -> str:
        return f"LogSource({self.describe()['format']!r}, files={len(self.files)}, on_invalid={self.on_invalid!r})"


def open_log(paths: str | os.PathLike | list, fmt: str = "auto", mapping: str | Mapping[str, str] | None = None,
             on_invalid: str = "raise", batch_size: int = 65536, *, group_size: int = 1,
             weights_only: bool = True) -> LogSource:
    """Open a training log for streaming as token batches (see the module docstring).

    ``paths``: a file or directory, or a list of them. ``fmt``: one of :data:`FORMATS`.
    ``mapping``: for the generic format, ``"ours=theirs,..."`` or a dict (see
    :func:`parse_mapping`). ``on_invalid``: ``"raise"`` (first bad row or sample is an error) or
    ``"drop"`` (dropped and counted in ``.report``). ``batch_size``: most rows per batch.
    ``group_size``: consecutive samples per group where the format has no group field.
    ``weights_only``: passed to ``torch.load`` for ``.pt`` files (``False`` only for trusted files).

    Files are listed, and formats detected, here (auto detection reads a Parquet schema, a first
    JSONL line, or the first ``.pt`` file of a directory); rows are read only while iterating.
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
    given = [str(p) for p in ([paths] if isinstance(paths, (str, os.PathLike)) else paths)]
    files = _expand(paths, fmt)
    by_format: dict[str, list[Path]] = {}
    pt_cache: dict[Path, str] = {}
    for f in files:
        if fmt == "auto":
            if f.suffix == ".pt" and not f.name.startswith("drpo_dump_step"):
                if f.parent not in pt_cache:
                    pt_cache[f.parent] = detect_format(f, mapping, weights_only=weights_only)
                this = pt_cache[f.parent]
            else:
                this = detect_format(f, mapping)
        else:
            this = fmt
            if f.suffix not in _EXTENSIONS[fmt]:
                raise ValueError(f"{f}: the {fmt} format reads {' or '.join(_EXTENSIONS[fmt])} files, not "
                                 f"{f.suffix or 'files without an extension'}")
        by_format.setdefault(this, []).append(f)
    if mapping and "generic" not in by_format:
        raise ValueError(f"a column mapping applies to the generic format only; these files are {list(by_format)}")
    return LogSource(list(by_format.items()), given, mapping, on_invalid, int(batch_size), int(group_size),
                     weights_only)

