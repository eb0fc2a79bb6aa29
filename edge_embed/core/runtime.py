"""Building the onnxruntime session: provider, threads, arena, graph optimization, in one place.

Every default here is chosen from measurements on a 2-core machine (docs/measurements.md,
"onnxruntime sessions on 2 cores"); each is overridable from settings.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import onnxruntime as ort

from edge_embed.core.errors import BundleError, ProviderError

from .bundle import Manifest
from .cpus import usable_cpus
from .shared_weights import ProtoError, as_ort_values, shareable

log = logging.getLogger("edge_embed.runtime")

PROVIDERS: dict[str, str] = {
    "cpu": "CPUExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "openvino": "OpenVINOExecutionProvider",
}
# What to install when a provider is missing: each build replaces `onnxruntime` in its venv.
PROVIDER_EXTRAS: dict[str, str] = {
    "cpu": "pip install onnxruntime (the base install)",
    "cuda": "pip install 'edge-embed[gpu]' in a venv of its own (make install-gpu)",
    "openvino": "pip install 'edge-embed[openvino]' in a venv of its own (make install-openvino)",
}
_LEVELS = {
    "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}
# Intra-op threads spin a while after a run instead of sleeping: lower batch-1 latency, batch
# throughput unchanged. The cost is CPU burnt while idle between requests, which a box shared
# with other work may prefer to give back (--spinning off).
SPINNING = True
ALLOW_SPINNING_KEY = "session.intra_op.allow_spinning"


@dataclass(frozen=True)
class RuntimeOptions:
    providers: tuple[str, ...] = ("cpu",)
    provider_fallback: bool = False
    # None: every CPU this process may use (one run alone is faster on more threads). The
    # service passes its thread plan (core/cpus.py: plan_threads) instead.
    intra_op_threads: int | None = None
    # "auto": BASIC for a bundle already fused by the transformer optimizer, ALL otherwise: the
    # faster of the two for each graph.
    graph_optimization: str = "auto"
    # The arena keeps peak buffers for reuse: fast for long batches, but RSS grows with every
    # new shape. Kept on; the engine bounds shapes by its token budget (--arena-shrink also
    # shrinks the arena after every run).
    cpu_arena: bool = True
    spinning: bool = SPINNING
    extra_session_config: dict[str, str] = field(default_factory=dict)
    # Intra-op threads of a second session that a run alone in flight uses (the service passes
    # every usable CPU: core/cpus.py, plan_threads). None, or the same as intra_op_threads:
    # one session for every run.
    lone_threads: int | None = None
    # Leave the lone session to `Sessions.complete` (the service: after start-up, so that the
    # first embedding does not wait for a second session).
    defer_lone: bool = False


@dataclass(frozen=True)
class ProviderChoice:
    requested: tuple[str, ...]
    used: tuple[str, ...]  # onnxruntime provider names, in order, as the session reports
    fell_back: bool
    message: str = ""


# OpenVINO cannot run per-token int8 graphs: it turns their QuantizeLinear with a scale per row
# into a FakeQuantize whose shape check rejects it, and the first run fails ("Argument shapes
# are inconsistent"; onnxruntime-openvino 1.24.1, MiniLM and the tiny model alike).
PERTOKEN_ON_OPENVINO = ("OpenVINO cannot run per-token int8 graphs (its FakeQuantize rejects a "
                        "scale per row); serve the fp32 bundle with --provider openvino")


def refused_providers(manifest: Manifest) -> dict[str, str]:
    """{provider: why} for providers that cannot run this bundle's graph at all."""
    if manifest.quantization is not None and manifest.quantization.method == "pertoken":
        return {"openvino": PERTOKEN_ON_OPENVINO}
    return {}


def resolve_providers(requested: tuple[str, ...], fallback: bool,
                      available: list[str] | None = None,
                      refused: dict[str, str] | None = None,
                      ) -> tuple[list[str], ProviderChoice]:
    available = ort.get_available_providers() if available is None else available
    refused = refused or {}
    chosen: list[str] = []
    missing: list[str] = []
    for name in requested:
        if name not in PROVIDERS:
            raise ProviderError(f"unknown provider '{name}' (choose from {', '.join(PROVIDERS)})")
        if PROVIDERS[name] in available and name not in refused:
            chosen.append(PROVIDERS[name])
        else:
            missing.append(name)
    absent = [m for m in missing if m not in refused]
    reasons = "; ".join(f"{m}: {refused[m]}" for m in missing if m in refused)
    if missing and not fallback:
        if absent:
            hints = "; ".join(f"{m}: {PROVIDER_EXTRAS[m]}" for m in absent)
            raise ProviderError(
                f"provider {', '.join(absent)} is not in the installed onnxruntime "
                f"(available: {', '.join(available)}). Install it ({hints}) or pass "
                f"--provider-fallback to fall back to the CPU.")
        raise ProviderError(f"{reasons} (or pass --provider-fallback to run it on the CPU)")
    if "CPUExecutionProvider" not in chosen:
        chosen.append("CPUExecutionProvider")
    message = ""
    if absent:
        message = (f"requested provider(s) {', '.join(absent)} not available; "
                   f"falling back to {', '.join(chosen)}")
    if reasons:
        message = "; ".join(filter(None, [message, f"running on {', '.join(chosen)}: {reasons}"]))
    return chosen, ProviderChoice(requested, tuple(chosen), bool(missing), message)


def graph_level_name(manifest: Manifest, setting: str) -> str:
    """The level a setting means for this bundle: "auto" resolved, any other level as given."""
    if setting != "auto":
        return setting
    fused = manifest.quantization is not None and manifest.quantization.fused
    return "basic" if fused else "all"


def graph_level(manifest: Manifest, setting: str) -> ort.GraphOptimizationLevel:
    return _LEVELS[graph_level_name(manifest, setting)]


def session_options(manifest: Manifest, opts: RuntimeOptions,
                    threads: int | None = None) -> ort.SessionOptions:
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads or opts.intra_op_threads or usable_cpus()
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = graph_level(manifest, opts.graph_optimization)
    so.enable_cpu_mem_arena = opts.cpu_arena
    so.log_severity_level = 3  # errors only: onnxruntime's warnings are noise to a user
    # Set both ways ("1" is onnxruntime's own default) so that the session says what was chosen.
    so.add_session_config_entry(ALLOW_SPINNING_KEY, "1" if opts.spinning else "0")
    for key, value in opts.extra_session_config.items():
        so.add_session_config_entry(key, value)
    return so


def create_session(folder: Path, manifest: Manifest, opts: RuntimeOptions,
                   shared: dict[str, ort.OrtValue] | None = None,
                   threads: int | None = None) -> tuple[ort.InferenceSession, ProviderChoice]:
    """One session; `shared`: initializers to take from these values, not from the file."""
    providers, choice = resolve_providers(opts.providers, opts.provider_fallback,
                                          refused=refused_providers(manifest))
    provider_options: list[dict[str, Any]] = [{} for _ in providers]
    so = session_options(manifest, opts, threads)
    for name, value in (shared or {}).items():
        so.add_initializer(name, value)
    session = ort.InferenceSession(str(folder / manifest.model_file), sess_options=so,
                                   providers=providers, provider_options=provider_options)
    used = tuple(session.get_providers())
    requested_names = [PROVIDERS[p] for p in opts.providers]
    # onnxruntime falls back to the CPU with only a warning when a provider fails to initialise
    # (OpenVINO refusing bf16, CUDA without a driver): report what the session really uses.
    fell_back = choice.fell_back or any(r not in used for r in requested_names)
    message = choice.message
    if fell_back and not message:
        missing = ", ".join(r for r in requested_names if r not in used)
        message = f"onnxruntime did not start {missing}; running on {', '.join(used)}"
    if fell_back and not opts.provider_fallback:
        raise ProviderError(message + " (pass --provider-fallback to accept this)")
    return session, ProviderChoice(choice.requested, used, fell_back, message)


class Sessions:
    """A model's sessions: `side` for runs side by side, `lone` for a run alone in flight.

    One session (the same object twice) unless the options ask for a lone session with more
    threads. The two then share the weights that onnxruntime does not repack per session (the
    embedding tables), so the second costs the repacked matmul weights and its buffers, not a
    second model. Building it takes as long as the first (0.44 s of MiniLM int8's start-up on a
    busy 2-core machine), so the service builds it after start-up (`complete`); until then
    every run takes `side`.
    """

    def __init__(self, side: ort.InferenceSession,
                 build_lone: Callable[[], ort.InferenceSession] | None = None,
                 shared: dict[str, ort.OrtValue] | None = None, shared_bytes: int = 0) -> None:
        self.side = side
        self.lone = side
        self._build = build_lone
        self._lock = threading.Lock()
        # The weights the sessions take from memory rather than from the file; they must
        # outlive the sessions, hence held here.
        self.shared = shared or {}
        self.shared_bytes = shared_bytes

    def complete(self) -> None:
        """Build the lone session if it is still to be built (idempotent, thread-safe)."""
        with self._lock:
            if self._build is not None:
                self.lone = self._build()
                self._build = None

    @property
    def layered(self) -> bool:
        return self.lone is not self.side

    def threads(self) -> dict[str, int]:
        """Intra-op threads of each, as built so far."""
        side = int(self.side.get_session_options().intra_op_num_threads)
        lone = int(self.lone.get_session_options().intra_op_num_threads)
        return {"side_by_side": side, "lone": lone}


def wants_lone_session(opts: RuntimeOptions) -> bool:
    """Only on the CPU provider: another provider's own threads are not onnxruntime's pool."""
    side = opts.intra_op_threads or usable_cpus()
    return (opts.lone_threads is not None and opts.lone_threads > side
            and opts.providers == ("cpu",))


def create_sessions(folder: Path, manifest: Manifest,
                    opts: RuntimeOptions) -> tuple[Sessions, ProviderChoice]:
    """The side-by-side session and, where the options ask for one, the lone session (built
    now, or by `Sessions.complete` where `opts.defer_lone`)."""
    if not wants_lone_session(opts):
        session, choice = create_session(folder, manifest, opts)
        return Sessions(session), choice
    path = folder / manifest.model_file
    try:
        arrays = shareable(path)
    except (ProtoError, UnicodeDecodeError, OSError) as exc:
        raise BundleError(path, f"cannot read its weights to share them between sessions "
                                f"({exc})") from None
    values = as_ort_values(arrays)
    side, choice = create_session(folder, manifest, opts, values)

    def build_lone() -> ort.InferenceSession:
        return create_session(folder, manifest, opts, values, threads=opts.lone_threads)[0]

    sessions = Sessions(side, build_lone, values, sum(a.nbytes for a in arrays.values()))
    if not opts.defer_lone:
        sessions.complete()
    return sessions, choice
