"""Parquet shards: written whole or not at all, read back for the manifest and for resume.

A shard holds `id`, `vector` (fixed_size_list<float32>[dimensions]), `tokens` (what the model
saw), `original_tokens` (before the cut) and `truncated`. Its rows are checked before a byte is
written; it is written to a hidden temporary name, fsynced, then renamed: a reader (or a
restart) sees a whole shard or none. Temporaries a killed run left are removed on the next
start.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

SHARD_RE = re.compile(r"^part-(\d{5,})\.parquet$")
TMP_PREFIX = ".tmp-"
# Ray mode's shards: a folder of their own, since Ray's writer names its files itself.
RAY_SHARDS_DIR = "shards"


def shard_name(index: int) -> str:
    return f"part-{index:05d}.parquet"


@dataclass(frozen=True)
class ShardRows:
    ids: list[int] | list[str]
    vectors: npt.NDArray[np.float32]  # [rows, dimensions]
    tokens: npt.NDArray[np.int32]
    original_tokens: npt.NDArray[np.int32]

    def check(self, dimensions: int) -> None:
        """A shard that would be wrong is never written: every column the same length, the
        vectors of the bundle's width and finite."""
        n = len(self.ids)
        if self.vectors.shape != (n, dimensions) or self.vectors.dtype != np.float32:
            raise ValueError(f"shard vectors are {self.vectors.shape} {self.vectors.dtype}, "
                             f"expected ({n}, {dimensions}) float32")
        if len(self.tokens) != n or len(self.original_tokens) != n:
            raise ValueError("shard columns differ in length")
        if n and not np.isfinite(self.vectors).all():
            raise ValueError("the model returned non-finite values")


def table(rows: ShardRows, dimensions: int) -> Any:
    import pyarrow as pa

    flat = pa.array(rows.vectors.reshape(-1), type=pa.float32())
    id_type = pa.string() if rows.ids and isinstance(rows.ids[0], str) else pa.int64()
    return pa.table({
        "id": pa.array(rows.ids, type=id_type),
        "vector": pa.FixedSizeListArray.from_arrays(flat, dimensions),
        "tokens": pa.array(rows.tokens, type=pa.int32()),
        "original_tokens": pa.array(rows.original_tokens, type=pa.int32()),
        "truncated": pa.array(rows.original_tokens > rows.tokens, type=pa.bool_()),
    })


def write_atomic(folder: Path, name: str, data: Any) -> Path:
    import pyarrow.parquet as pq

    final = folder / name
    tmp = folder / f"{TMP_PREFIX}{name}"
    try:
        with tmp.open("wb") as f:
            pq.write_table(data, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, final)
    finally:
        tmp.unlink(missing_ok=True)
    return final


def write_shard(folder: Path, index: int, rows: ShardRows, dimensions: int) -> Path:
    rows.check(dimensions)
    return write_atomic(folder, shard_name(index), table(rows, dimensions))


def remove_temporaries(folder: Path) -> None:
    for path in folder.glob(f"{TMP_PREFIX}*"):
        path.unlink(missing_ok=True)


def shard_stats(out: Path, name: str) -> dict[str, Any]:
    """A written shard's entry in the manifest: its path under `out`, rows, tokens, truncation."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    t = pq.read_table(out / name, columns=["tokens", "original_tokens", "truncated"])
    rows = t.num_rows
    return {"file": name, "rows": rows,
            "tokens": int(pc.sum(t["tokens"]).as_py() or 0) if rows else 0,
            "truncated": int(pc.sum(pc.cast(t["truncated"], "int64")).as_py() or 0)
            if rows else 0,
            "max_original_tokens": int(pc.max(t["original_tokens"]).as_py() or 0)
            if rows else 0}


def shard_rows(path: Path) -> int:
    import pyarrow.parquet as pq

    return int(pq.ParquetFile(path).metadata.num_rows)
