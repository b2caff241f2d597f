"""Result files: tidy tables (one row per method, seed and step) as Parquet, with metadata.

The run's configuration, methods, objective parameters, seeds and the package version travel in
the file's key-value metadata under ``drpo_sim`` (JSON), so a result file says how it was made.
Files are written atomically: a failed or interrupted write leaves no file behind.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from drpo_sim import __version__
from drpo_sim._io import atomic_path

META_KEY = b"drpo_sim"


def write_results(df: pd.DataFrame, path: str | os.PathLike, metadata: dict[str, Any] | None = None) -> Path:
    """Write the tidy table ``df`` to ``path`` (Parquet) with ``metadata`` and the package version."""
    if df.empty:
        raise ValueError(f"{path}: refusing to write an empty result table")
    meta = {"version": __version__, **(metadata or {})}
    table = pa.Table.from_pandas(df, preserve_index=False)
    table = table.replace_schema_metadata(
        {**(table.schema.metadata or {}), META_KEY: json.dumps(meta, sort_keys=True).encode()}
    )
    path = Path(path)
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp, compression="zstd")
    return path


def read_results(path: str | os.PathLike) -> tuple[pd.DataFrame, dict[str, Any]]:
    """The table and the ``drpo_sim`` metadata of a result file; a clear error for anything else."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such result file")
    try:
        table = pq.read_table(path)
    except (pa.ArrowInvalid, OSError) as err:
        raise ValueError(f"{path}: not a readable Parquet file ({err})") from None
    raw = (table.schema.metadata or {}).get(META_KEY)
    meta = json.loads(raw) if raw else {}
    df = table.to_pandas()
    missing = [c for c in ("method", "seed", "step") if c not in df.columns]
    if missing:
        raise ValueError(f"{path}: not a drpo_sim result table: missing column(s) {', '.join(missing)}")
    return df, meta
