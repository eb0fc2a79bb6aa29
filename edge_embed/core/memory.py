"""Handing freed memory back to the system: glibc's malloc keeps what a process frees.

Loading a model frees a lot (onnxruntime parses the graph's protobuf, copies and prepacks the
weights, then drops the parse), and so does a warm-up; glibc keeps those pages in its heaps,
one heap per thread that allocated (the executors' threads each get one), and they count in RSS
as if in use. `trim()` returns them (malloc_trim); `tune()` sets, before anything large is
allocated, the two malloc options that keep later growth in check. Figures:
docs/measurements.md, "Memory".

Elsewhere than glibc (musl, macOS) both do nothing: those allocators behave otherwise, and the
process serves the same.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging

log = logging.getLogger("edge_embed.memory")

# mallopt's parameters (malloc.h).
_M_MMAP_THRESHOLD = -3
_M_ARENA_MAX = -8
# Allocations from this size up get pages of their own, returned to the system when freed. glibc
# starts at 128 KiB but raises the bar to the largest block freed so far (up to 32 MiB), after
# which a batch's buffers (a 4 x 256-token batch's are MiBs) stay in the heap for good; a fixed
# bar turns that off. 256 KiB: a short batch's arrays stay below it (no system call per run).
MMAP_THRESHOLD_BYTES = 256 * 1024
# Heaps glibc may create for threads (default 8 per core): each executor thread's frees would
# otherwise stay in a heap of its own. Two: the event loop's and the workers' share the rest.
ARENA_MAX = 2

_libc: ctypes.CDLL | None = None
_loaded = False


def _glibc() -> ctypes.CDLL | None:
    global _libc, _loaded
    if not _loaded:
        _loaded = True
        name = ctypes.util.find_library("c")
        try:
            lib = ctypes.CDLL(name or "libc.so.6")
            lib.malloc_trim.argtypes = [ctypes.c_size_t]
            lib.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
            _libc = lib
        except (OSError, AttributeError):  # not glibc: no malloc_trim / mallopt
            _libc = None
    return _libc


def tune() -> bool:
    """Set the malloc options above; True where they were set (glibc)."""
    libc = _glibc()
    if libc is None:
        return False
    ok = bool(libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES))
    ok = bool(libc.mallopt(_M_ARENA_MAX, ARENA_MAX)) and ok
    return ok


def trim() -> bool:
    """Return the free pages of every heap to the system; True where glibc released any."""
    libc = _glibc()
    if libc is None:
        return False
    return bool(libc.malloc_trim(0))
