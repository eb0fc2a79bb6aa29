"""Settings: one frozen object built from CLI flags and `EDGE_EMBED_*` environment variables.

Every flag has an environment variable (`--max-inputs` <-> `EDGE_EMBED_MAX_INPUTS`); a flag given
on the command line wins over the environment. The limits live in their own frozen objects
(service/limits.py, each default named there with the reason for its number); Settings holds
one of each and hands it whole to the part that enforces it.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from edge_embed.core.batching import BatchPolicy
from edge_embed.core.canary import CANARY_FAILURES, CanaryFailure
from edge_embed.core.files import VERIFY_MODES, VerifyMode
from edge_embed.core.runtime import PROVIDERS, SPINNING, RuntimeOptions

from .address import DEFAULT_HOST, DEFAULT_PORT, env_name
from .limits import CacheLimits, ConnectionLimits, QueueLimits, RequestLimits

# Kubernetes gives 30 s between SIGTERM and SIGKILL by default; 20 s leaves room to exit.
DRAIN_TIMEOUT_S = 20.0
# Tokenizer threads: `tokenizers` parallelizes encode_batch itself; one thread keeps the event
# loop free without competing with onnxruntime for the cores.
TOKENIZER_THREADS = 1
# A batching worker that dies is restarted this many times within a minute; past that the
# engine is marked dead (/health and /ready 503) so the supervisor restarts the process.
WORKER_RESTARTS = 5


@dataclass(frozen=True)
class Settings:
    models: tuple[Path, ...] = ()
    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT
    api_keys: tuple[str, ...] = field(default=(), repr=False)  # never printed
    api_keys_file: Path | None = None
    requests: RequestLimits = field(default_factory=RequestLimits)
    queue: QueueLimits = field(default_factory=QueueLimits)
    batching: BatchPolicy = field(default_factory=BatchPolicy)
    cache: CacheLimits = field(default_factory=CacheLimits)
    connections: ConnectionLimits = field(default_factory=ConnectionLimits)
    drain_timeout: float = DRAIN_TIMEOUT_S
    providers: tuple[str, ...] = ("cpu",)
    provider_fallback: bool = False
    threads: int | None = None  # intra-op threads per run; None: usable CPUs / concurrent runs
    concurrent_runs: int | None = None  # runs at once, all models; None: see cpus.plan_threads
    lone_threads: int | None = None  # threads of a run alone in flight; None: no lone session
    graph_optimization: str = "auto"
    cpu_arena: bool = True
    arena_shrink: bool = False  # shrink the arena after every run (flat RSS, slower long batches)
    spinning: bool = SPINNING  # onnxruntime's intra-op threads spin between runs (runtime.py)
    tokenizer_threads: int = TOKENIZER_THREADS
    worker_restarts: int = WORKER_RESTARTS
    log_level: str = "info"
    access_log: bool = True
    verify_files: VerifyMode = "sha256"  # what start-up checks of each file (core/files.py)
    # a model whose canaries disagree at start-up (core/canary.py): refuse it, or serve loudly
    canary_failure: CanaryFailure = "refuse"
    otlp_endpoint: str | None = None  # OTLP/HTTP collector for traces (service/tracing.py)
    docs: bool = True  # the interactive API page at /docs (service/docs.py)

    def runtime_options(self, intra_op_threads: int,
                        lone_threads: int | None = None) -> RuntimeOptions:
        return RuntimeOptions(providers=self.providers, provider_fallback=self.provider_fallback,
                              intra_op_threads=intra_op_threads, lone_threads=lone_threads,
                              defer_lone=True,
                              graph_optimization=self.graph_optimization,
                              cpu_arena=self.cpu_arena, spinning=self.spinning)

    def limits(self) -> dict[str, Any]:
        """The limits a client may run into, by group (for /info and the start-up log)."""
        return {"requests": asdict(self.requests), "queue": asdict(self.queue),
                "batching": asdict(self.batching), "cache": asdict(self.cache),
                "connections": asdict(self.connections), "drain_timeout": self.drain_timeout}


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


def _share(text: str) -> float:
    value = float(text)
    if not 0 < value <= 1:
        raise ValueError("must be a number in (0, 1]")
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


def _verify_mode(text: str) -> VerifyMode:
    for mode in VERIFY_MODES:
        if text.strip().lower() == mode:
            return mode
    raise ValueError(f"must be one of {', '.join(VERIFY_MODES)}")


def _canary_failure(text: str) -> CanaryFailure:
    for mode in CANARY_FAILURES:
        if text.strip().lower() == mode:
            return mode
    raise ValueError(f"must be one of {', '.join(CANARY_FAILURES)}")


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
    ("--max-large-bodies", _positive_int, "bodies of 1 MiB or more read and parsed at once; "
     "the next gets 429 with Retry-After before it is read"),
    ("--batch-tokens", _positive_int, "padded tokens (longest x count) per model run"),
    ("--batch-inputs", _positive_int, "inputs per model run"),
    ("--batch-delay-ms", _non_negative_float, "wait to fill a batch when the worker is idle"),
    ("--queue-inputs", _positive_int, "inputs waiting per model before 429"),
    ("--queue-tokens", _positive_int, "tokens waiting per model before 429"),
    ("--request-timeout", _positive_float, "seconds before a request gets 408"),
    ("--admit-deadline-share", _share, "admit a request only if the work ahead of it and its "
     "own end within this share of its timeout, at the measured throughput (else 429)"),
    ("--header-timeout", _positive_float, "seconds for a connection's request headers to "
     "arrive (from its opening, then from a request's first byte) before it is closed"),
    ("--body-timeout", _positive_float, "seconds for a request's whole body to arrive before "
     "408 and the connection closed"),
    ("--keepalive-timeout", _positive_float, "seconds an idle keep-alive connection stays open"),
    ("--max-connections", _positive_int, "open connections at once; more are answered 503 and "
     "closed"),
    ("--drain-timeout", _non_negative_float, "seconds to finish in-flight requests on SIGTERM"),
    ("--cache-entries", _non_negative_int, "embedding cache entries (0: no cache)"),
    ("--cache-bytes", _non_negative_int, "embedding cache size in bytes"),
    ("--cache-ttl", _non_negative_float, "seconds a cached vector lives"),
    ("--cache-max-ttl", _non_negative_float, "longest cache_control.ttl a request may ask "
     "(longer is cut to this)"),
    ("--threads", _positive_int, "onnxruntime intra-op threads per run (default: CPUs / runs)"),
    ("--concurrent-runs", _positive_int, "model runs at once, all models together (default: "
     "CPUs, at most 4, or CPUs / --threads)"),
    ("--lone-threads", _positive_int, "intra-op threads of a run alone in flight, on a second "
     "session sharing the weights (default: no second session, nor at or below --threads)"),
    ("--graph-optimization", str, "auto|disable|basic|extended|all"),
    ("--spinning", _on_off, "on|off: onnxruntime's threads spin between runs (lower batch-1 "
     "latency, CPU burnt while idle)"),
    ("--pad-multiple", _positive_int, "pad batch widths to a multiple of this"),
    ("--tokenizer-threads", _positive_int, "threads that tokenize"),
    ("--worker-restarts", _non_negative_int, "batching-worker restarts per minute before dead"),
    ("--log-level", str, "debug|info|warning|error"),
    ("--verify-files", _verify_mode, "sha256|size: at start-up, check each bundle file's size "
     "and sha256 against bundle.json (default), or its size alone (multi-GB bundles on CPUs "
     "without SHA extensions)"),
    ("--canary-failure", _canary_failure, "refuse|serve: a model whose canaries (fixed inputs "
     "with reference vectors in its bundle) disagree with this machine's vectors at start-up is "
     "refused (default), or served with a warning and /health saying failed-serving"),
    ("--otlp-endpoint", str, "send traces over OTLP/HTTP to this collector URL (e.g. "
     "http://collector:4318); needs the otel extra"),
)
_BOOLS: tuple[tuple[str, str], ...] = (
    ("--truncate", "cut over-long inputs and warn (default); --no-truncate: 400 instead"),
    ("--provider-fallback", "fall back to the CPU when a requested provider is missing"),
    ("--cpu-arena", "onnxruntime's CPU memory arena (default on)"),
    ("--arena-shrink", "shrink the arena after each run: flat RSS, slower long batches"),
    ("--access-log", "one JSON line per request (default on)"),
    ("--docs", "the interactive API page at /docs (default on); --no-docs: no page"),
)
# Flags that set a field of one of the limit objects (service/limits.py): flag -> (group, field).
# The rest set the Settings field of the flag's own name.
_GROUPED: dict[str, tuple[str, str]] = {
    "--max-inputs": ("requests", "max_inputs"),
    "--max-request-tokens": ("requests", "max_request_tokens"),
    "--max-input-chars": ("requests", "max_input_chars"),
    "--max-body-bytes": ("requests", "max_body_bytes"),
    "--max-large-bodies": ("requests", "max_large_bodies"),
    "--request-timeout": ("requests", "timeout_s"),
    "--truncate": ("requests", "truncate"),
    "--queue-inputs": ("queue", "max_inputs"),
    "--queue-tokens": ("queue", "max_tokens"),
    "--admit-deadline-share": ("queue", "deadline_share"),
    "--batch-tokens": ("batching", "max_tokens"),
    "--batch-inputs": ("batching", "max_inputs"),
    "--batch-delay-ms": ("batching", "delay_ms"),
    "--pad-multiple": ("batching", "pad_multiple"),
    "--cache-entries": ("cache", "entries"),
    "--cache-bytes": ("cache", "bytes"),
    "--cache-ttl": ("cache", "ttl_s"),
    "--cache-max-ttl": ("cache", "max_ttl_s"),
    "--header-timeout": ("connections", "header_timeout_s"),
    "--body-timeout": ("connections", "body_timeout_s"),
    "--keepalive-timeout": ("connections", "keepalive_timeout_s"),
    "--max-connections": ("connections", "max_connections"),
}
_GROUPS: dict[str, Any] = {"requests": RequestLimits(), "queue": QueueLimits(),
                           "batching": BatchPolicy(), "cache": CacheLimits(),
                           "connections": ConnectionLimits()}
_GRAPH_LEVELS = ("auto", "disable", "basic", "extended", "all")
_LOG_LEVELS = ("debug", "info", "warning", "error")


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
    # Every comma-separated item, empty ones too: an empty key is refused, never dropped (an
    # empty EDGE_EMBED_API_KEY must not turn auth off unnoticed).
    keys = ns.api_key if ns.api_key is not None else from_env("--api-key", lambda s: s.split(","))
    values["api_keys"] = tuple(keys or ())
    providers = ([p for group in ns.provider for p in group] if ns.provider
                 else from_env("--provider", _providers))
    if providers:
        values["providers"] = tuple(dict.fromkeys(providers))
    parsers = [(flag, kind) for flag, kind, _ in _SCALARS] + [(flag, _bool) for flag, _ in _BOOLS]
    grouped: dict[str, dict[str, Any]] = {group: {} for group in _GROUPS}
    for flag, kind in parsers:
        key = flag.lstrip("-").replace("-", "_")
        value = getattr(ns, key)
        if value is None:
            value = from_env(flag, kind)
        if value is None:
            continue
        if flag in _GROUPED:
            group, name = _GROUPED[flag]
            grouped[group][name] = value
        else:
            values[key] = value
    for group, default in _GROUPS.items():
        values[group] = replace(default, **grouped[group])
    if values.get("graph_optimization", "auto") not in _GRAPH_LEVELS:
        parser.error(f"--graph-optimization must be one of {', '.join(_GRAPH_LEVELS)}")
    level = str(values.get("log_level", "info")).lower()
    if level not in _LOG_LEVELS:
        parser.error(f"--log-level must be one of {', '.join(_LOG_LEVELS)}")
    values["log_level"] = level
    return Settings(**values)
