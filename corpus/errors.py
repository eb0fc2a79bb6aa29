"""The corpus job's one user-facing failure: a line naming the file, the row and the reason."""

from __future__ import annotations

from pathlib import Path

from edge_embed.core.tooling import ToolError


class CorpusError(ToolError):
    """Bad input or output folder: printed as one line, exit code 2, nothing half-written."""


def at(path: Path | str, row: int | None, reason: str, unit: str = "row") -> CorpusError:
    """`path: row N: reason` (rows and lines count from 1, as editors and `sed -n` do)."""
    where = f"{path}" if row is None else f"{path}: {unit} {row}"
    return CorpusError(f"{where}: {reason}")


CORPUS_HINT = ("`edge-embed embed` writes Parquet with pyarrow and shows progress with tqdm, "
               "which the serving install leaves out: pip install 'edge-embed[corpus]'")
RAY_HINT = "`edge-embed embed --ray` needs Ray Data: pip install 'edge-embed[ray]'"


def need_corpus_extra() -> None:
    try:
        import pyarrow  # noqa: F401
        import tqdm  # noqa: F401
    except ImportError:
        raise CorpusError(CORPUS_HINT) from None
