"""Handing freed memory back to the system: glibc's malloc keeps what a process frees.

Loading a model frees a lot (onnxruntime parses the graph's protobuf, copies and prepacks the
weights, then drops the parse), and so do the canaries and the warm-up; glibc keeps those pages
in its heaps, one per thread that allocated, and they count in RSS as if in use. `trim()`
returns them (malloc_trim). Figures: docs/measurements.md, "Memory".

Elsewhere than glibc (musl, macOS) it does nothing: those allocators behave otherwise, and the
process serves the same.
"""

from __future__ import annotations

import ctypes
import ctypes.util
from functools import cache


@cache
def _glibc() -> ctypes.CDLL | None:
    try:
        lib = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        lib.malloc_trim.argtypes = [ctypes.c_size_t]
        return lib
    except (OSError, AttributeError):  # not glibc: no malloc_trim
        return None


def trim() -> bool:
    """Return the free pages of every heap to the system; True where glibc released any."""
    libc = _glibc()
    return libc is not None and bool(libc.malloc_trim(0))
