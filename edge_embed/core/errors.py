"""The exceptions of the core: what stops a bundle from loading or a graph from being fed.

`StartupError` is what stops the server before it serves (one line on stderr naming the file and
field, exit code 2); the service's own start-up failures (service/errors.py) subclass it too.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path


class StartupError(Exception):
    """The server cannot start as configured; the message says what to fix."""


class BundleError(StartupError, ValueError):
    """A bundle that cannot be served; the message names the file and, where known, the field."""

    def __init__(self, path: Path | str, message: str, field_name: str | None = None) -> None:
        self.path = Path(path)
        self.field = field_name
        where = f"{self.path}" + (f": field '{field_name}'" if field_name else "")
        super().__init__(f"{where}: {message}")


class BundleFileError(BundleError):
    """A file of a bundle that is not the one its manifest lists: missing, truncated, replaced."""


class CanaryFailed(StartupError):
    """A bundle's canaries, embedded on this machine, disagree with their reference vectors."""

    def __init__(self, bundle: Path | str, agreement: float, gate: float) -> None:
        self.bundle = Path(bundle)
        self.agreement = agreement
        self.gate = gate
        # the flag is spelled here rather than imported: errors.py imports nothing of ours
        super().__init__(
            f"{self.bundle}: canary check failed: the canaries' agreement with their reference "
            f"vectors on this machine is {agreement:.6f}, below the bundle's gate {gate:.6f}; "
            "this machine's kernels (or a changed runtime) do not reproduce the vectors the "
            "bundle was built and measured with. Rebuild or re-quantize the bundle on this "
            "kind of CPU, or start with --canary-failure serve (EDGE_EMBED_CANARY_FAILURE=serve) "
            "to serve it anyway")


class ProviderError(StartupError, RuntimeError):
    """A requested execution provider is not in the installed onnxruntime (or did not start)."""


class UnsupportedGraphInput(ValueError):
    """The graph declares an input the feed builder (core/feeds.py) has no value for.

    Raised where a graph is read (export, quantize, loading a bundle); each caller turns it into
    its own refusal naming the file.
    """

    def __init__(self, name: str, filled: Sequence[str]) -> None:
        self.name = name
        super().__init__(f"the model's graph declares the input '{name}', which edge-embed cannot "
                         f"fill (it fills {', '.join(filled)})")
