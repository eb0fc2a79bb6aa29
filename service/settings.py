"""Settings: one frozen object built from CLI flags and `EDGE_EMBED_*` environment variables.

Every flag has an environment variable (`--max-inputs` <-> `EDGE_EMBED_MAX_INPUTS`); a flag given
on the command line wins over the environment. Every limit is a named default below with the
reason for its number, so that an operator changing one knows what they trade.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .runtime import PROVIDERS, SPINNING, RuntimeOptions

ENV_PREFIX = "EDGE_EMBED_"

DEFAULT_HOST = "127.0.0.1"  # loopback: exposing the server is an explicit choice
DEFAULT_PORT = 8000
# OpenAI's own limit on inputs per request; clients (LangChain, the SDKs) chunk to it.
MAX_INPUTS = 2048
# OpenAI's limit on tokens summed over one request's inputs.
MAX_REQUEST_TOKENS = 300_000
# A character bound checked before tokenizing, so that a hostile 100 MB string costs nothing:
# 64 Ki characters is far beyond any model's token limit (MiniLM: 256 tokens ~ 1-2 K characters)
# yet leaves room for documents that are meant to be cut with a warning.
MAX_INPUT_CHARS = 65_536
# 2048 inputs of ~1 K characters each, JSON-quoted, with room to spare; larger bodies are
# refused with 413 before they are read whole.
MAX_BODY_BYTES = 16 * 1024 * 1024
# Padded tokens per model run (longest x count): 4 texts of 256 tokens, 32 of 32. Smaller runs
# keep a single-threaded run's activations in cache (one 1024 x 1536 FFN tensor is 6 MB) and
# bound the arena; short requests still batch 32 at a time (their throughput peaks there).
# `make bench-sweep` against 8192 (two runs): 2048 gave long8 1.06-1.08x, mixed the same; then
# against 2048: 1024 gave long8 1.06x and mixed 1.12x. `make bench` at 2048: RSS after all
# workloads 393 MB instead of 567 MB at 8192.
BATCH_TOKENS = 1024
# Short inputs gain up to batch 32 and drop at 64 (int8 MiniLM, 2 cores: 1260 to 2437/s).
BATCH_INPUTS = 32
# Extra wait to fill a batch when the worker is free. 0: never wait; batches form from what
# queues while a run is in flight, so an idle server answers at once.
BATCH_DELAY_MS = 0.0
# Queue bounds: about one largest request (OpenAI's 300 K tokens) of work; at ~25 K tokens/s
# (int8 MiniLM, 2 cores, long inputs) that is ~12 s, under the request timeout. Past it: 429.
QUEUE_INPUTS = 8192
QUEUE_TOKENS = 300_000
# A request waits at most this long (queue + model) before 408. Shorter than the drain timeout,
# so every request in flight when SIGTERM arrives ends (answered or timed out) inside the drain.
REQUEST_TIMEOUT_S = 15.0
# Kubernetes gives 30 s between SIGTERM and SIGKILL by default; 20 s leaves room to exit.
DRAIN_TIMEOUT_S = 20.0
# Embedding cache: 10 K vectors of 384 floats ~ 15 MB; the byte bound caps larger models.
CACHE_ENTRIES = 10_000
CACHE_BYTES = 64 * 1024 * 1024
CACHE_TTL_S = 3600.0
# Pad batch widths up to a multiple of this (fewer distinct shapes for onnxruntime's arena).
# 1, measured by `make bench`: 16 rounded ~21-token short batches up to 32 and made 46-51 % of
# their computed tokens padding (0.73x raw throughput); the arena levels off anyway (~650 MB),
# and --arena-shrink is the memory knob. A lone input is never padded.
PAD_MULTIPLE = 1
# Tokenizer threads: `tokenizers` parallelizes encode_batch itself; one thread keeps the event
# loop free without competing with onnxruntime for the cores.
TOKENIZER_THREADS = 1
# A batching worker that dies is restarted this many times within WORKER_RESTART_WINDOW_S; past
# that the engine is marked dead (/health and /ready 503) so the supervisor restarts the process.
WORKER_RESTARTS = 5
WORKER_RESTART_WINDOW_S = 60.0


@dataclass(frozen=True)
class Settings:
    models: tuple[Path, ...] = ()
    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT
    api_keys: tuple[str, ...] = field(default=(), repr=False)  # never printed
    api_keys_file: Path | None = None
    max_inputs: int = MAX_INPUTS
    max_request_tokens: int = MAX_REQUEST_TOKENS
    max_input_chars: int = MAX_INPUT_CHARS
    max_body_bytes: int = MAX_BODY_BYTES
    batch_tokens: int = BATCH_TOKENS
    batch_inputs: int = BATCH_INPUTS
    batch_delay_ms: float = BATCH_DELAY_MS
    queue_inputs: int = QUEUE_INPUTS
    queue_tokens: int = QUEUE_TOKENS
    request_timeout: float = REQUEST_TIMEOUT_S
    drain_timeout: float = DRAIN_TIMEOUT_S
    cache_entries: int = CACHE_ENTRIES
    cache_bytes: int = CACHE_BYTES
    cache_ttl: float = CACHE_TTL_S
    truncate: bool = True
    providers: tuple[str, ...] = ("cpu",)
    provider_fallback: bool = False
    threads: int | None = None  # intra-op threads per run; None: usable CPUs / concurrent runs
    concurrent_runs: int | None = None  # runs at once, all models; None: see cpus.plan_threads
    graph_optimization: str = "auto"
    cpu_arena: bool = True
    arena_shrink: bool = False  # shrink the arena after every run (flat RSS, slower long batches)
    spinning: bool = SPINNING  # onnxruntime's intra-op threads spin between runs (runtime.py)
    pad_multiple: int = PAD_MULTIPLE
    tokenizer_threads: int = TOKENIZER_THREADS
    worker_restarts: int = WORKER_RESTARTS
    log_level: str = "info"
    access_log: bool = True

    def runtime_options(self, intra_op_threads: int) -> RuntimeOptions:
        return RuntimeOptions(providers=self.providers, provider_fallback=self.provider_fallback,
                              intra_op_threads=intra_op_threads,
                              graph_optimization=self.graph_optimization,
                              cpu_arena=self.cpu_arena, spinning=self.spinning)

    def limits(self) -> dict[str, Any]:
        """The limits a client may run into (for /info and the start-up log)."""
        return {k: v for k, v in asdict(self).items() if k in _LIMIT_KEYS}


_LIMIT_KEYS = ("max_inputs", "max_request_tokens", "max_input_chars", "max_body_bytes",
               "batch_tokens", "batch_inputs", "batch_delay_ms", "queue_inputs", "queue_tokens",
               "request_timeout", "drain_timeout", "cache_entries", "cache_bytes", "cache_ttl",
               "truncate", "pad_multiple")


def _positive_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise ValueError("must be positive")
    return value


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise ValueError("must be >= 0")
    return value


def _port(text: str) -> int:
    value = int(text)
    if not 0 <= value <= 65535:
        raise ValueError("must be a port number, 0-65535")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0 or value == float("inf"):
        raise ValueError("must be a positive number")
    return value


def _non_negative_float(text: str) -> float:
    value = float(text)
    if not value >= 0 or value == float("inf"):
        raise ValueError("must be a number >= 0")
    return value


def _bool(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off", ""):
        return False
    raise ValueError("must be true or false")


def _on_off(text: str) -> bool:
    # A value, not --x/--no-x: onnxruntime's own setting is a switch, and the benchmark sweeps it
    # as `--spinning on|off` like every other knob's value.
    lowered = text.strip().lower()
    if lowered not in ("on", "off"):
        raise ValueError("must be on or off")
    return lowered == "on"


def _providers(text: str) -> list[str]:
    names = [p.strip().lower() for p in text.split(",") if p.strip()]
    for name in names:
        if name not in PROVIDERS:
            raise ValueError(f"unknown provider '{name}' (choose from {', '.join(PROVIDERS)})")
    return names


def _typed(fn: Callable[[str], Any], name: str) -> Callable[[str], Any]:
    def convert(text: str) -> Any:
        try:
            return fn(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(f"{text!r}: {exc}") from None
    convert.__name__ = name  # argparse names the type in its message
    return convert


# (flag, type, help); the env variable is derived from the flag.
_SCALARS: tuple[tuple[str, Callable[[str], Any], str], ...] = (
    ("--host", str, "address to listen on"),
    ("--port", _port, "port to listen on (0: any free port)"),
    ("--api-keys-file", Path, "file of API keys, one per line: KEY [model,model,...]"),
    ("--max-inputs", _positive_int, "inputs per request (OpenAI: 2048)"),
    ("--max-request-tokens", _positive_int, "tokens per request, summed over its inputs"),
    ("--max-input-chars", _positive_int, "characters (or token ids) per input, before tokenizing"),
    ("--max-body-bytes", _positive_int, "request body size; larger bodies get 413"),
    ("--batch-tokens", _positive_int, "padded tokens (longest x count) per model run"),
    ("--batch-inputs", _positive_int, "inputs per model run"),
    ("--batch-delay-ms", _non_negative_float, "wait to fill a batch when the worker is idle"),
    ("--queue-inputs", _positive_int, "inputs waiting per model before 429"),
    ("--queue-tokens", _positive_int, "tokens waiting per model before 429"),
    ("--request-timeout", _positive_float, "seconds before a request gets 408"),
    ("--drain-timeout", _non_negative_float, "seconds to finish in-flight requests on SIGTERM"),
    ("--cache-entries", _non_negative_int, "embedding cache entries (0: no cache)"),
    ("--cache-bytes", _non_negative_int, "embedding cache size in bytes"),
    ("--cache-ttl", _non_negative_float, "seconds a cached vector lives"),
    ("--threads", _positive_int, "onnxruntime intra-op threads per run (default: CPUs / runs)"),
    ("--concurrent-runs", _positive_int, "model runs at once, all models together (default: "
     "CPUs, at most 4, or CPUs / --threads)"),
    ("--graph-optimization", str, "auto|disable|basic|extended|all"),
    ("--spinning", _on_off, "on|off: onnxruntime's threads spin between runs (lower batch-1 "
     "latency, CPU burnt while idle)"),
    ("--pad-multiple", _positive_int, "pad batch widths to a multiple of this"),
    ("--tokenizer-threads", _positive_int, "threads that tokenize"),
    ("--worker-restarts", _non_negative_int, "batching-worker restarts per minute before dead"),
    ("--log-level", str, "debug|info|warning|error"),
)
_BOOLS: tuple[tuple[str, str], ...] = (
    ("--truncate", "cut over-long inputs and warn (default); --no-truncate: 400 instead"),
    ("--provider-fallback", "fall back to the CPU when a requested provider is missing"),
    ("--cpu-arena", "onnxruntime's CPU memory arena (default on)"),
    ("--arena-shrink", "shrink the arena after each run: flat RSS, slower long batches"),
    ("--access-log", "one JSON line per request (default on)"),
)
_GRAPH_LEVELS = ("auto", "disable", "basic", "extended", "all")
_LOG_LEVELS = ("debug", "info", "warning", "error")


def env_name(flag: str) -> str:
    return ENV_PREFIX + flag.lstrip("-").replace("-", "_").upper()


def build_parser(prog: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=prog, description="Serve edge-embed bundles behind the OpenAI embeddings API. "
        "Every flag can also be set as EDGE_EMBED_<FLAG> (e.g. EDGE_EMBED_PORT=8080); "
        "list flags take a comma-separated value there.")
    p.add_argument("--model", action="append", type=Path, metavar="BUNDLE",
                   help="bundle folder to serve (repeatable); env EDGE_EMBED_MODEL")
    p.add_argument("--api-key", action="append", metavar="KEY",
                   help="accepted Bearer key (repeatable); env EDGE_EMBED_API_KEY")
    p.add_argument("--provider", action="append", type=_typed(_providers, "provider"),
                   help="execution provider(s) in order of preference: cpu, cuda, openvino "
                   "(repeatable or comma-separated); env EDGE_EMBED_PROVIDER")
    for flag, kind, help_ in _SCALARS:
        p.add_argument(flag, type=_typed(kind, flag.lstrip("-")) if kind is not str else str,
                       help=f"{help_}; env {env_name(flag)}")
    for flag, help_ in _BOOLS:
        p.add_argument(flag, action=argparse.BooleanOptionalAction, default=None,
                       help=f"{help_}; env {env_name(flag)}")
    return p


def parse_settings(argv: Sequence[str] | None, prog: str = "edge-embed serve",
                   environ: Mapping[str, str] | None = None) -> Settings:
    """Flags first, then `EDGE_EMBED_*`, then the defaults. argparse errors exit with 2."""
    env = os.environ if environ is None else environ
    parser = build_parser(prog)
    ns = parser.parse_args(list(argv) if argv is not None else None)
    values: dict[str, Any] = {}

    def from_env(flag: str, convert: Callable[[str], Any]) -> Any:
        name = env_name(flag)
        if name not in env:
            return None
        try:
            return convert(env[name])
        except (ValueError, argparse.ArgumentTypeError) as exc:
            parser.error(f"{name}: {exc}")
            raise  # unreachable: parser.error exits

    models = ns.model or from_env("--model", lambda s: [Path(x) for x in s.split(",") if x])
    if not models:
        parser.error("at least one --model BUNDLE is required (or EDGE_EMBED_MODEL)")
    values["models"] = tuple(models)
    keys = ns.api_key or from_env("--api-key", lambda s: [k for k in s.split(",") if k])
    values["api_keys"] = tuple(keys or ())
    providers = ([p for group in ns.provider for p in group] if ns.provider
                 else from_env("--provider", _providers))
    if providers:
        values["providers"] = tuple(dict.fromkeys(providers))
    parsers = [(flag, kind) for flag, kind, _ in _SCALARS] + [(flag, _bool) for flag, _ in _BOOLS]
    for flag, kind in parsers:
        key = flag.lstrip("-").replace("-", "_")
        value = getattr(ns, key)
        if value is None:
            value = from_env(flag, kind)
        if value is not None:
            values[key] = value
    if values.get("graph_optimization", "auto") not in _GRAPH_LEVELS:
        parser.error(f"--graph-optimization must be one of {', '.join(_GRAPH_LEVELS)}")
    level = str(values.get("log_level", "info")).lower()
    if level not in _LOG_LEVELS:
        parser.error(f"--log-level must be one of {', '.join(_LOG_LEVELS)}")
    values["log_level"] = level
    return Settings(**values)
