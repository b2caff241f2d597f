"""Files and batches: natural step order, the step number in a file name, compressed JSONL, bounded batches."""

from __future__ import annotations

import gzip
import io
import json
import pickle
import re
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from drpo_sim.logs.validate import Context, SampleError
from drpo_sim.tokens import TokenBatch

#: Compression suffixes read transparently (``run.jsonl.gz``, ``rollout_3.pt.zst``): gzip from the
#: standard library, zstd through the optional ``zstandard`` package.
COMPRESSIONS = {".gz": "gzip", ".zst": "zstd", ".zstd": "zstd"}
#: How to get ``zstandard`` (named in the error when it is missing).
ZSTD_INSTALL = "pip install zstandard (or pip install 'drpo_sim[zstd]')"
_CHUNK = 1 << 20

_DIGITS = re.compile(r"(\d+)")


def natural_key(path: Path | str) -> list:
    """Sort key that orders ``step2`` before ``step10`` (digit runs compare as numbers)."""
    parts = _DIGITS.split(str(path))
    return [int(p) if i % 2 else p for i, p in enumerate(parts)]


def split_suffix(path: Path | str) -> tuple[str, str | None]:
    """``(".jsonl", "gzip")`` for ``x.jsonl.gz``, ``(".jsonl", None)`` for ``x.jsonl``: the suffix that
    says the format, and the compression (``None``, ``"gzip"`` or ``"zstd"``)."""
    path = Path(path)
    comp = COMPRESSIONS.get(path.suffix.lower())
    if comp is None:
        return path.suffix, None
    return Path(path.stem).suffix, comp


def log_suffix(path: Path | str) -> str:
    """The suffix that says a file's format, compression suffixes aside (``.jsonl`` for ``x.jsonl.zst``)."""
    return split_suffix(path)[0]


def log_stem(path: Path | str) -> str:
    """The file name without its format and compression suffixes (``train_data_step3`` for
    ``train_data_step3.jsonl.gz``)."""
    name = Path(path).name
    suffix, comp = split_suffix(path)
    if comp is not None:
        name = Path(name).stem
    return name[: len(name) - len(suffix)] if suffix else name


def _zstandard(path: Path) -> Any:
    try:
        import zstandard
    except ImportError:
        raise ValueError(f"{path}: reading zstd-compressed files needs the zstandard package: {ZSTD_INSTALL}") from None
    return zstandard


def _zstd_chunks(path: Path, raw: Any) -> Iterator[bytes]:
    """Decompressed chunks of a zstd file (frames one after another, as ``zstd`` and ``pzstd`` write
    them); a file that ends inside a frame raises ``EOFError`` (the ``zstandard`` stream reader would
    end silently there)."""
    zstd = _zstandard(path)
    dctx = zstd.ZstdDecompressor()
    obj, fed = dctx.decompressobj(), False
    while data := raw.read(_CHUNK):
        while data:
            fed = True
            out = obj.decompress(data)
            if out:
                yield out
            if obj.eof:
                data = obj.unused_data
                obj, fed = dctx.decompressobj(), False
            else:
                data = b""
    if fed:
        raise EOFError("the file ends inside a zstd frame")


def _split_lines(chunks: Iterator[bytes]) -> Iterator[bytes]:
    """Lines (with their newline; the last one without, if the data ends mid-line) from byte chunks;
    a line longer than a chunk is joined once (linear in its length)."""
    pending: list[bytes] = []
    for chunk in chunks:
        start = 0
        while (end := chunk.find(b"\n", start)) != -1:
            pending.append(chunk[start:end + 1])
            yield b"".join(pending)
            pending, start = [], end + 1
        if start < len(chunk):
            pending.append(chunk[start:])
    if pending:
        yield b"".join(pending)


def _raw_lines(path: Path, f: Any, comp: str | None) -> Iterator[bytes]:
    if comp is None:
        return iter(f)
    if comp == "gzip":
        return iter(gzip.GzipFile(fileobj=f, mode="rb"))
    return _split_lines(_zstd_chunks(path, f))


def _decompress_errors() -> tuple[type[BaseException], ...]:
    errors: tuple[type[BaseException], ...] = (EOFError, OSError, zlib.error)
    try:
        import zstandard
    except ImportError:
        return errors
    return (*errors, zstandard.ZstdError)


def iter_lines(path: Path) -> Iterator[tuple[int, Any]]:
    """``(line number, parsed object or SampleError)`` for each non-blank line (1-based numbers).

    ``.gz`` and ``.zst`` files are decompressed on the fly (one line at a time in memory). A
    compressed file that is corrupt from its start raises a one-line ``ValueError``; one that ends
    early (cut while being written) yields one ``SampleError`` for the first line it lost (a zstd
    block holds up to 128 KiB, so several lines may be lost: the drop report counts one sample,
    a lower bound, under its own reason).
    """
    comp = split_suffix(path)[1]
    errors = _decompress_errors() if comp else ()
    lineno = 0
    with open(path, "rb") as f:
        lines = _raw_lines(path, f, comp)
        while True:
            try:
                raw = next(lines)
            except StopIteration:
                return
            except errors as e:
                what = f"{comp}-compressed data"
                if lineno == 0:
                    raise ValueError(f"{path}: not readable as {what} ({e}); check the file, or decompress it and "
                                     "pass the plain file") from None
                yield lineno + 1, SampleError(
                    f"truncated {what} ({e}): this line and any after it are lost (the file was cut while being "
                    "written?)", "compressed file cut short (the lines after the last whole one are lost)")
                return
            lineno += 1
            if not raw.strip():
                continue
            try:
                yield lineno, json.loads(raw)
            except ValueError as e:  # JSONDecodeError, UnicodeDecodeError
                if not raw.endswith(b"\n"):
                    yield lineno, SampleError(f"truncated line (the file ends mid-line: {e})", "truncated line")
                else:
                    yield lineno, SampleError(f"invalid JSON ({e})", "invalid JSON")


class Batcher:
    """Collect validated columns of one file and hand them out as batches of at most ``batch_size`` rows.

    Memory is bounded by ``batch_size`` plus one added piece. Batches never span files (call
    :meth:`flush` at the end of each file), so each batch holds one training step. Every batch of a
    log must have the same columns: the first one fixes them.
    """

    def __init__(self, ctx: Context, path: Path) -> None:
        self.ctx, self.path = ctx, path
        self.parts: list[dict[str, np.ndarray]] = []
        self.n = 0

    def add(self, arrays: dict[str, np.ndarray]) -> Iterator[TokenBatch]:
        names = tuple(arrays)
        if self.ctx.columns is None:
            self.ctx.columns, self.ctx.first_file = names, self.path
        elif names != self.ctx.columns:
            raise ValueError(
                f"{self.path}: gives columns {list(names)} but {self.ctx.first_file} gave {list(self.ctx.columns)}; "
                "every file of one log needs the same fields"
            )
        k = len(arrays["logp"])
        if k == 0:
            return
        self.parts.append(arrays)
        self.n += k
        while self.n >= self.ctx.batch_size:
            yield self._take(self.ctx.batch_size)

    def flush(self) -> Iterator[TokenBatch]:
        while self.n:
            yield self._take(min(self.n, self.ctx.batch_size))

    def _take(self, k: int) -> TokenBatch:
        names = self.parts[0].keys()
        whole = self.parts[0] if len(self.parts) == 1 else {
            n: np.concatenate([p[n] for p in self.parts]) for n in names}
        out = {n: a[:k] for n, a in whole.items()}
        rest = {n: a[k:] for n, a in whole.items()}
        self.n -= k
        self.parts = [rest] if self.n else []
        return TokenBatch._trusted(out)


#: What to do about a file that ``torch.load`` cannot read (slime's and trainers' ``torch.save``
#: is not atomic: a run stopped while saving leaves a truncated file).
TRUNCATED_ADVICE = ("a run stopped while saving leaves such a file (torch.save does not write atomically): move it out "
                    "of the log, or pass the other files")
#: What to do about a Parquet file that cannot be read (appended to the error).
UNREADABLE_ADVICE = ("; a run stopped while writing it leaves such a file: move it out of the log, or pass the other "
                     "files")
#: What to do about a file ``torch.load(weights_only=True)`` refuses.
TRUST_ADVICE = "if you trust the file, pass --trust-pickles (open_log(..., weights_only=False))"


def load_torch(path: Path, weights_only: bool = True, *, mmap: bool = False) -> Any:
    """``torch.load`` one file to CPU; unreadable, truncated or refused files raise a one-line ``ValueError``
    naming the file and what to do.

    ``weights_only=True`` (the default) unpickles tensors, lists, dicts and plain numbers and
    strings only, so a file cannot run code when loaded; pass ``weights_only=False`` only for
    files you trust (the command line's ``--trust-pickles``). ``.pt.gz`` and ``.pt.zst`` files are
    decompressed into memory first. ``mmap=True`` maps the tensors' storage instead of reading it
    (for a quick look at a file's small entries; ignored for compressed and legacy files).
    """
    try:
        comp = split_suffix(path)[1]
        if comp is not None:
            source: Any = io.BytesIO(_decompressed(path, comp))
        else:
            source = path
            if path.stat().st_size == 0:
                raise ValueError(f"{path}: no tokens (empty file, 0 bytes); {TRUNCATED_ADVICE}")
        if mmap and comp is None:
            try:
                return torch.load(source, map_location="cpu", weights_only=weights_only, mmap=True)
            except RuntimeError as e:
                if "mmap" not in str(e):
                    raise
        return torch.load(source, map_location="cpu", weights_only=weights_only)
    except pickle.UnpicklingError as e:
        msg = str(e)
        detail = (
            msg.split("WeightsUnpickler error:", 1)[-1].strip().split("\n")[0] if "WeightsUnpickler" in msg else msg
        )
        if "Unsupported global" in msg:
            detail = detail.split(" was not an allowed")[0]
            raise ValueError(
                f"{path}: torch.load(weights_only=True) refused an object in it ({detail}); {TRUST_ADVICE}"
            ) from None
        raise ValueError(f"{path}: not a readable torch file (truncated or corrupt: {_first(detail)}); "
                         f"{TRUNCATED_ADVICE}") from None
    except (FileNotFoundError, PermissionError, IsADirectoryError) as e:
        raise ValueError(f"{path}: cannot open it ({e.strerror or e}); check the path and its permissions") from None
    except ValueError as e:
        if str(e).startswith(f"{path}: "):
            raise
        raise ValueError(f"{path}: not a readable torch file (truncated or corrupt: {_first(str(e))}); "
                         f"{TRUNCATED_ADVICE}") from None
    except Exception as e:  # RuntimeError, EOFError, OSError ([Errno 22] for some cuts), zlib or zstd errors, ...
        detail = _first(str(e)) or type(e).__name__
        raise ValueError(f"{path}: not a readable torch file (truncated or corrupt: {detail}); "
                         f"{TRUNCATED_ADVICE}") from None


def _first(msg: str) -> str:
    return msg.split("\n")[0].split(". ")[0].strip()


def _decompressed(path: Path, comp: str) -> bytes:
    with open(path, "rb") as f:
        if comp == "gzip":
            return gzip.GzipFile(fileobj=f, mode="rb").read()
        return b"".join(_zstd_chunks(path, f))
