"""The service's limits as named, frozen objects, each handed whole to the part that enforces it.

- `RequestLimits`: what one request may ask (the request path checks them);
- `QueueLimits`: what the engine admits (by time, against the request's deadline);
- `CacheLimits`: how much the embedding cache holds;
- `ConnectionLimits`: how long a client may take to send, and how many connections stay open.

How model runs are formed (`BatchPolicy`) is the core's (edge_embed/core/batching.py): the
offline corpus job cuts runs exactly as the engine does.

Every default is a named constant with the reason for its number, so that an operator changing
one knows what they trade. Settings (flags and `EDGE_EMBED_*`) build these objects; nothing else
reads the flags.
"""

from __future__ import annotations

from dataclasses import dataclass

# ---- one request ---------------------------------------------------------------------------
# OpenAI's own limit on inputs per request; clients (LangChain, the SDKs) chunk to it.
MAX_INPUTS = 2048
# OpenAI's limit on tokens summed over one request's inputs (a rerank request's pairs too).
MAX_REQUEST_TOKENS = 300_000
# Documents one rerank request may score: Cohere's own ceiling (its API documents 1,000 as the
# most it takes per request), and a reranker's use (the top hits of a search, 20-100) is far
# below it. Each document is a pair with the query through the whole model: 1,000 pairs of a
# few hundred tokens are already most of the request timeout on a 2-core box.
MAX_RERANK_DOCUMENTS = 1000
# A character bound checked before tokenizing, so that a hostile 100 MB string costs nothing:
# 64 Ki characters is far beyond any model's token limit (MiniLM: 256 tokens ~ 1-2 K characters)
# yet leaves room for documents that are meant to be cut with a warning.
MAX_INPUT_CHARS = 65_536
# 2048 inputs of ~1 K characters each, JSON-quoted, with room to spare; larger bodies are
# refused with 413 before they are read whole.
MAX_BODY_BYTES = 16 * 1024 * 1024
# A request is answered within this many seconds (queue + model) or gets 408. Shorter than the
# drain timeout, so every request in flight when SIGTERM arrives ends inside the drain.
REQUEST_TIMEOUT_S = 15.0
# Bodies of at least LARGE_BODY_BYTES (or of no declared length) read and parsed at once; the
# next gets 429 with Retry-After before its body is read. 2 held at once keep the server inside
# a 512 MiB container, and the parse has one thread, so more at once would only wait
# (figures: docs/measurements.md#max_large_bodies).
MAX_LARGE_BODIES = 2
# Smaller bodies are not counted: 2048 sentences fit in less, and their memory is small.
LARGE_BODY_BYTES = 1024 * 1024


@dataclass(frozen=True)
class RequestLimits:
    max_inputs: int = MAX_INPUTS
    max_request_tokens: int = MAX_REQUEST_TOKENS
    max_input_chars: int = MAX_INPUT_CHARS
    max_body_bytes: int = MAX_BODY_BYTES
    timeout_s: float = REQUEST_TIMEOUT_S
    max_large_bodies: int = MAX_LARGE_BODIES
    max_rerank_documents: int = MAX_RERANK_DOCUMENTS
    # Over-long inputs: cut and warn (True), or 400 (False); a request's `truncate` wins.
    truncate: bool = True


# ---- admission -----------------------------------------------------------------------------
# Memory bounds on what waits, whatever the time estimate says: about one largest request
# (OpenAI's 300 K tokens) of work. Admission by time refuses long before these on a busy box;
# they keep a server whose throughput estimate is off from holding unbounded bodies.
QUEUE_INPUTS = 8192
QUEUE_TOKENS = 300_000
# Admission by time: admit only if the work ahead plus this request's, at the measured
# throughput, ends within this share of its time left; the rest is margin for what the estimate
# cannot see (a neighbour taking a core, its lag, costlier long inputs): the box may get twice
# as slow after admission. Figures: docs/measurements.md#admit_deadline_share
ADMIT_DEADLINE_SHARE = 0.5


@dataclass(frozen=True)
class QueueLimits:
    max_inputs: int = QUEUE_INPUTS
    max_tokens: int = QUEUE_TOKENS
    deadline_share: float = ADMIT_DEADLINE_SHARE


# ---- the embedding cache -------------------------------------------------------------------
# 10 K vectors of 384 floats ~ 15 MB; the byte bound caps larger models.
CACHE_ENTRIES = 10_000
CACHE_BYTES = 64 * 1024 * 1024
CACHE_TTL_S = 3600.0
# The longest a request's `cache_control.ttl` may keep a vector (longer is cut to this): a day
# covers a daily re-index, and entries of a model replaced since do not outlive it much.
CACHE_MAX_TTL_S = 86_400.0


@dataclass(frozen=True)
class CacheLimits:
    entries: int = CACHE_ENTRIES
    bytes: int = CACHE_BYTES
    ttl_s: float = CACHE_TTL_S
    max_ttl_s: float = CACHE_MAX_TTL_S

    @property
    def enabled(self) -> bool:
        return self.entries > 0 and self.bytes > 0 and self.ttl_s > 0


# ---- connections ---------------------------------------------------------------------------
# A request's headers (a few hundred bytes) arrive in one packet from any real client; 10 s
# covers retransmits on a bad link. Counted from a connection's opening, then from the first
# byte of each later request: a client trickling its headers holds a connection this long.
HEADER_TIMEOUT_S = 10.0
# The whole body must arrive within this many seconds of the request's start (408 otherwise,
# and the connection closed); the request timeout starts after it. A full request (2048 inputs,
# ~2 MB) needs 1.6 Mbit/s, a 16 MiB body 13 Mbit/s: far below any link a server is fed over.
BODY_TIMEOUT_S = 10.0
# An idle keep-alive connection is closed after this long. Longer than the 60 s idle timeout
# of common load balancers, so that they close first (no request raced onto a closing socket);
# nginx's default too. aiohttp's own (3630 s) kept idle connections for an hour.
KEEPALIVE_TIMEOUT_S = 75.0
# Open connections at once; past it a connection is answered 503 and closed at accept. Above
# the flood test's 600 clients at once, which admission, not the socket count, must answer
# (429 with Retry-After); the start raises the open-file limit to fit it where it is lower.
MAX_CONNECTIONS = 1024
# Open files besides the connections: bundle files, the log, the threads' and /proc's.
FILES_BESIDE_CONNECTIONS = 256
# After an early answer (413, 408) the rest of a body is read and dropped this long before the
# connection closes, so that a client still sending reads the answer instead of a reset; short,
# so that a slow sender is not kept past its timeout for long (aiohttp's own: 10 s).
LINGER_S = 2.0


@dataclass(frozen=True)
class ConnectionLimits:
    header_timeout_s: float = HEADER_TIMEOUT_S
    body_timeout_s: float = BODY_TIMEOUT_S
    keepalive_timeout_s: float = KEEPALIVE_TIMEOUT_S
    max_connections: int = MAX_CONNECTIONS


# One core and 256 MiB (a small edge box, or a container run with `--cpuset-cpus 0 --memory
# 256m`): the flags that keep the server's peak inside the box (figures: docs/measurements.md,
# "One core, 256 MiB"). One run at a time on one thread (what one usable CPU plans anyway); a
# batch of at most 512 padded tokens (two 256-token inputs: its arena and buffers are half the
# default's, and long inputs run as fast per token); an 8 MiB cache instead of 64; bodies of at
# most 4 MiB, one large one parsed at a time (a 16 MiB body parses into up to ~100 MB).
SMALL_BOX_FLAGS: tuple[str, ...] = (
    "--threads=1", "--concurrent-runs=1", "--batch-tokens=512", "--cache-bytes=8388608",
    "--max-body-bytes=4194304", "--max-large-bodies=1",
)
