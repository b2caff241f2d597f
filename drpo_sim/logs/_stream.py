"""Files and batches: natural step order, the step number in a file name, bounded batches."""

from __future__ import annotations

import json
import pickle
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from drpo_sim.logs.validate import Context, SampleError
from drpo_sim.tokens import TokenBatch

_DIGITS = re.compile(r"(\d+)")


def natural_key(path: Path | str) -> list:
    """Sort key that orders ``step2`` before ``step10`` (digit runs compare as numbers)."""
    parts = _DIGITS.split(str(path))
    return [int(p) if i % 2 else p for i, p in enumerate(parts)]


def first_number(name: str) -> int | None:
    """The first run of digits in ``name`` (the step or rollout id of most dump names)."""
    m = _DIGITS.search(name)
    return int(m.group(1)) if m else None


def iter_lines(path: Path) -> Iterator[tuple[int, Any]]:
    """``(line number, parsed object or SampleError)`` for each non-blank line (1-based numbers)."""
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, start=1):
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


def load_torch(path: Path, weights_only: bool = True) -> Any:
    """``torch.load`` one file to CPU; unreadable, truncated or refused files raise a one-line ``ValueError``.

    ``weights_only=True`` (the default) unpickles tensors, lists, dicts and plain numbers and
    strings only, so a file cannot run code when loaded; pass ``weights_only=False`` only for
    files you trust.
    """
    try:
        return torch.load(path, map_location="cpu", weights_only=weights_only)
    except pickle.UnpicklingError as e:
        msg = str(e)
        detail = (
            msg.split("WeightsUnpickler error:", 1)[-1].strip().split("\n")[0] if "WeightsUnpickler" in msg else msg
        )
        if "Unsupported global" in msg:
            detail = detail.split(" was not an allowed")[0]
            raise ValueError(
                f"{path}: torch.load(weights_only=True) refused an object in it ({detail}); if you trust the file, "
                "open it with weights_only=False"
            ) from None
        raise ValueError(f"{path}: not a readable torch file (truncated or corrupt: {detail})") from None
    except (RuntimeError, EOFError, ValueError, TypeError) as e:
        detail = str(e).split(". ")[0]
        raise ValueError(f"{path}: not a readable torch file (truncated or corrupt: {detail})") from None
