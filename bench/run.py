"""The whole benchmark: cold start, interleaved workload windows, memory run, install size.

Order matters on a small shared machine: cold starts first and alone; then every system's
process is started (in parallel) and kept; windows are interleaved (round -> workload ->
system) so that a burst of load from elsewhere hits every system alike; the summary takes the
median over rounds.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tokenizers import Tokenizer

from edge_embed.core.bundle import load_manifest
from edge_embed.core.cpus import usable_cpus
from edge_embed.core.tooling import measured_on

from . import fastembed_peer as fastembed
from . import install_size, workloads
from .fastembed_peer import FASTEMBED_VENV
from .peer import peer_bundle
from .server import BatchCounters, Server
from .stats import Window, median
from .targets import Target, evaluate
from .worker import Worker

MB = 1e6


@dataclass(frozen=True)
class Plan:
    """How long each part runs; `quick` is a seconds-long smoke run for tests."""

    # One system on one workload, per round. Short windows, more rounds: on a shared machine a
    # burst of load from elsewhere then spoils one pair of windows, not a whole system.
    window_s: float = 1.5
    rounds: int = 3  # interleaved rounds; the summary is the median
    # A window also stops after this many requests: bounds the c=1 workload on a fast box.
    max_requests: int = 100_000
    warmup: int = 8  # untimed requests (or in-process batches) before each window
    memory_s: float = 120.0  # 2 minutes of mixed lengths: time for the arena to grow or settle
    memory_sample_s: float = 5.0  # RSS sampled between windows of this length
    cold_runs: int = 5  # cold starts; the median is reported
    create_runtime_venv: bool = True  # build .venv-runtime when missing

    @staticmethod
    def quick() -> Plan:
        return Plan(window_s=0.25, rounds=1, max_requests=200, warmup=2, memory_s=1.0,
                    memory_sample_s=0.25, cold_runs=1, create_runtime_venv=False)


@dataclass
class Config:
    int8: Path
    out: Path
    fp32: Path | None = None
    source: Path | None = None  # sentence-transformers folder for the torch baseline
    plan: Plan = field(default_factory=Plan)
    quick: bool = False
    server_args: Sequence[str] = ()  # passed to every service started (tuning runs)
    memory_reference_args: Sequence[str] | None = None
    only: Sequence[str] = ()  # measure just these workloads (tuning runs); empty: all
    encoding: str = "base64"
    runtime_venv: Path = install_size.RUNTIME_VENV
    # Where the peers' int8 graph is cached (bench/peer.py); None: beside the fp32 bundle.
    peer_cache: Path | None = None
    # Serve the int8 bundle a second time with the lone session (a second session with every
    # CPU for a run alone in flight, --lone-threads), measured beside the default in the same
    # rounds: whether it pays on this machine.
    lone_layout: bool = True
    # A real fastembed server (bench/fastembed_peer.py) from this venv, beside ours; skipped, with a
    # line saying so, where the venv is absent.
    fastembed_venv: Path = FASTEMBED_VENV
    # Another checkout's interpreter serving the same int8 bundle (its venv's python), measured
    # beside ours in the same rounds: the "before" of a change.
    baseline_python: Path | None = None



def add_run_options(p: argparse.ArgumentParser, *, int8: str, fp32: str, window: str,
                    rounds: str) -> None:
    """The options every measuring command takes (bench, bench sweep), with their own help."""
    p.add_argument("--int8", type=Path, required=True, metavar="BUNDLE", help=int8)
    p.add_argument("--fp32", type=Path, metavar="BUNDLE", help=fp32)
    p.add_argument("--out", type=Path, default=Path("bench/results"))
    p.add_argument("--quick", action="store_true",
                   help="a seconds-long smoke run (tests); figures are not meaningful")
    p.add_argument("--window", type=float, help=window)
    p.add_argument("--rounds", type=int, help=rounds)

def lone_layout_args() -> tuple[str, ...]:
    """The flags that give the lone session: a second session with every usable CPU."""
    return (f"--lone-threads={usable_cpus()}",)


Say = Callable[[str], None]


def _say(message: str) -> None:
    print(f"bench: {message}", file=sys.stderr, flush=True)


def _mb(value: int) -> float:
    return round(value / MB, 1)


def _summary(windows: list[Window]) -> dict[str, Any]:
    return {
        "throughput": round(median([w.throughput for w in windows]), 2),
        "p50_ms": round(median([w.p50_ms for w in windows]), 3),
        "p90_ms": round(median([w.p90_ms for w in windows]), 3),
        "p99_ms": round(median([w.p99_ms for w in windows]), 3),
        "requests": sum(w.requests for w in windows),
        "inputs": sum(w.inputs for w in windows),
        "errors": sum(w.errors for w in windows),
        "first_error": next((w.first_error for w in windows if w.first_error), ""),
        "windows": [round(w.throughput, 2) for w in windows],
    }


def cold_start(start: Callable[[Path], Server], model_id: str, runs: int, logs: Path,
               tag: str) -> dict[str, Any]:
    """Process start -> first embedding, `runs` times; `start(log)` starts the server."""
    times = []
    for i in range(runs):
        with start(logs / f"cold-{tag}-{i}.log") as server:
            times.append(server.first_embedding(model_id, "How long does a cold start take?"))
    return {"runs_s": [round(t, 3) for t in times], "median_s": round(median(times), 3)}


def memory_run(server: Server, warm: int, model_id: str, plan: Plan, wl_file: Path,
               logs: Path, encoding: str, tag: str, say: Say) -> dict[str, Any]:
    """A fresh server under the mixed stream; RSS at ready (`warm`), between windows, at the end."""
    client = _client(server, model_id, wl_file, logs, f"memory-{tag}", encoding)
    try:
        samples: list[tuple[float, float]] = [(0.0, _mb(warm))]
        inputs, seconds = 0, 0.0
        while seconds < plan.memory_s:
            w = client.measure("mixed", plan.memory_sample_s, plan.max_requests * 100, 0)
            if w.errors:
                say(f"memory run ({tag}): {w.errors} failed requests: {w.first_error}")
            inputs += w.inputs
            seconds += w.seconds
            samples.append((round(seconds, 2), _mb(server.rss())))
    finally:
        client.close()
    after = server.rss()
    return {"args": list(server.extra_args), "seconds": round(seconds, 1),
            "rss_warm_mb": _mb(warm), "rss_after_mb": _mb(after),
            "rss_peak_mb": max(s[1] for s in samples),
            "throughput": round(inputs / seconds, 2) if seconds else 0.0, "samples": samples}


def fresh_memory_run(bundle: Path, model_id: str, plan: Plan, wl_file: Path, logs: Path,
                     extra: Sequence[str], encoding: str, tag: str, say: Say) -> dict[str, Any]:
    with Server(bundle, logs / f"memory-{tag}.log", extra) as server:
        server.wait_ready()
        return memory_run(server, server.rss(), model_id, plan, wl_file, logs, encoding, tag, say)


def _client(server: Server, model_id: str, wl_file: Path, logs: Path, name: str,
            encoding: str) -> Worker:
    return Worker(name, [sys.executable, "-m", "edge_embed.bench.client", "--url", server.url,
                         "--model", model_id, "--workloads", str(wl_file),
                         "--encoding", encoding], logs / f"{name}.log")


def _inproc(kind: str, model: Path, wl_file: Path, logs: Path, name: str) -> Worker:
    return Worker(name, [sys.executable, "-m", "edge_embed.bench.inproc", "--kind", kind, "--model",
                         str(model), "--workloads", str(wl_file)], logs / f"{name}.log")


def run(cfg: Config, say: Say = _say) -> dict[str, Any]:
    plan = cfg.plan
    started = time.time()
    manifest8 = load_manifest(cfg.int8)
    manifest32 = load_manifest(cfg.fp32) if cfg.fp32 else None
    tokenizer = Tokenizer.from_file(str(cfg.int8 / manifest8.tokenizer_file))
    tokenizer.no_truncation()
    tokenizer.no_padding()
    wls = workloads.build(tokenizer, manifest8.max_tokens, quick=cfg.quick)
    machine = measured_on()
    isa = machine["isa"] if isinstance(machine["isa"], list) else []
    say(f"CPU: {machine['cpu']}; instruction sets: {', '.join(isa) or '-'}; "
        f"onnxruntime {machine['onnxruntime']}")
    with tempfile.TemporaryDirectory(prefix="edge-embed-bench-") as tmp:
        logs = Path(tmp)
        wl_file = logs / "workloads.json"
        workloads.save(wls, wl_file)
        result: dict[str, Any] = {
            "machine": machine,
            "quick": cfg.quick, "plan": plan.__dict__, "encoding": cfg.encoding,
            "server_args": list(cfg.server_args),
            "bundles": {"int8": str(cfg.int8), "fp32": str(cfg.fp32) if cfg.fp32 else None,
                        "source": str(cfg.source) if cfg.source else None},
            "workloads": workloads.describe(
                [w for w in wls if not cfg.only or w.name in cfg.only], tokenizer),
        }

        fe_python = fastembed.python(cfg.fastembed_venv)
        fe_folder: Path | None = None
        if cfg.fp32 and fe_python is not None:
            say("fastembed: the peers' int8 graph through TextEmbedding's custom-model API")
            fe_folder = fastembed.model_folder(peer_bundle(cfg.fp32, cfg.peer_cache))
        elif cfg.fp32:
            say(f"fastembed: skipped: {cfg.fastembed_venv} is absent (make install-fastembed)")

        def start_fastembed(log: Path) -> Server:
            assert fe_folder is not None and fe_python is not None
            return fastembed.server(fe_folder, manifest8.dimensions, manifest8.id, log,
                                    fe_python)

        result["cold_start"] = None
        result["cold_start_fastembed"] = None
        if plan.cold_runs:
            say(f"cold start: {plan.cold_runs} run(s) of the int8 bundle")
            result["cold_start"] = cold_start(
                lambda log: Server(cfg.int8, log, cfg.server_args), manifest8.id,
                plan.cold_runs, logs, "service")
            if fe_folder is not None:
                result["cold_start_fastembed"] = cold_start(start_fastembed, manifest8.id,
                                                            plan.cold_runs, logs, "fastembed")
        measured = [w for w in wls if not cfg.only or w.name in cfg.only]

        say("starting the services and baselines")
        servers = {"service_int8": Server(cfg.int8, logs / "service_int8.log", cfg.server_args)}
        if cfg.lone_layout:
            servers["service_int8_lone"] = Server(cfg.int8, logs / "service_int8_lone.log",
                                                  [*cfg.server_args, *lone_layout_args()])
        if cfg.baseline_python is not None:
            # Started outside this checkout: from here, `python -m` would put this checkout's
            # edge_embed/ first on the other build's path, and mix the two builds' code.
            servers["service_int8_base"] = Server(cfg.int8.resolve(),
                                                  logs / "service_int8_base.log",
                                                  cfg.server_args,
                                                  python=str(cfg.baseline_python),
                                                  env={"PYTHONDONTWRITEBYTECODE": "1"},
                                                  cwd=logs)
        if fe_folder is not None:
            servers["fastembed"] = start_fastembed(logs / "fastembed.log")
        # The memory run's server starts now, in parallel with the others, and idles until its
        # turn: RSS "after warm-up" is taken the moment it reports ready.
        mem_server = (Server(cfg.int8, logs / "memory-default.log", cfg.server_args)
                      if plan.memory_s else None)
        memory: dict[str, Any] | None = None
        if cfg.fp32 and manifest32:
            servers["service_fp32"] = Server(cfg.fp32, logs / "service_fp32.log",
                                             cfg.server_args)
        ids = {"service_int8": manifest8.id, "service_int8_lone": manifest8.id,
               "service_int8_base": manifest8.id, "fastembed": manifest8.id,
               "service_fp32": manifest32.id if manifest32 else ""}
        workers: dict[str, Worker] = {}
        try:
            for name, server in servers.items():
                workers[name] = _client(server, ids[name], wl_file, logs, f"client_{name}",
                                        cfg.encoding)
            workers["ort_int8"] = _inproc("ort", cfg.int8, wl_file, logs, "ort_int8")
            if cfg.fp32:
                say("the peers' int8 graph (quantize_dynamic of the fp32 graph, per channel)")
                peer = peer_bundle(cfg.fp32, cfg.peer_cache)
                workers["peer_int8"] = _inproc("peer", peer, wl_file, logs, "peer_int8")
            if cfg.source:
                workers["st_fp32"] = _inproc("st", cfg.source, wl_file, logs, "st_fp32")
            rss: dict[str, dict[str, float]] = {}
            for name, server in servers.items():
                server.wait_ready()
                rss[name] = {"ready_mb": _mb(server.rss())}
            mem_warm = 0
            if mem_server:
                mem_server.wait_ready()
                mem_warm = mem_server.rss()
            for worker in workers.values():
                worker.wait_ready()
            result["systems"] = list(workers)

            windows: dict[str, dict[str, list[Window]]] = {n: {} for n in workers}
            counters: dict[str, BatchCounters] = {}
            for r in range(plan.rounds):
                for wl in measured:
                    say(f"round {r + 1}/{plan.rounds}: {wl.name}")
                    for name, worker in workers.items():
                        if wl.cached and (name not in servers or name == "fastembed"):
                            continue  # no cache in-process, nor in fastembed
                        counted = servers["service_int8"] if name == "service_int8" else None
                        before = counted.counters() if counted else None
                        w = worker.measure(wl.name, plan.window_s, plan.max_requests,
                                           plan.warmup)
                        if before is not None and counted is not None:
                            diff = counted.counters() - before
                            counters[wl.name] = diff + counters.get(wl.name, BatchCounters())
                        if w.errors:
                            say(f"  {name}: {w.errors} failed requests: {w.first_error}")
                        windows[name].setdefault(wl.name, []).append(w)
            for name, server in servers.items():
                rss[name]["after_load_mb"] = _mb(server.rss())
            for worker in workers.values():
                worker.close()
            for server in servers.values():
                server.stop()
            if mem_server:
                say(f"memory run: {plan.memory_s:.0f} s of the mixed stream on a fresh int8 "
                    "service")
                memory = memory_run(mem_server, mem_warm, manifest8.id, plan, wl_file, logs,
                                    cfg.encoding, "default", say)
        finally:
            for worker in workers.values():
                worker.close()
            for server in servers.values():
                server.stop()
            if mem_server:
                mem_server.stop()

        result["results"] = {n: {wl: _summary(ws) for wl, ws in by_wl.items()}
                             for n, by_wl in windows.items()}
        result["ratios"] = _paired_ratios(windows)
        result["rss"] = rss
        result["batches"] = {wl: {"padding_share": _round(c.padding_share),
                                  "mean_batch_inputs": _round(c.mean_batch),
                                  "real_tokens": c.real_tokens,
                                  "padding_tokens": c.padding_tokens, "batches": c.batches}
                             for wl, c in counters.items()}

        if memory is not None and cfg.memory_reference_args is not None:
            say(f"memory run, reference: {' '.join(cfg.memory_reference_args)}")
            memory["reference"] = fresh_memory_run(
                cfg.int8, manifest8.id, plan, wl_file, logs,
                [*cfg.server_args, *cfg.memory_reference_args], cfg.encoding, "reference", say)
        result["memory"] = memory

    result["install"] = _install(cfg, say)
    result["targets"] = [t.to_json() for t in _targets(result)]
    result["seconds"] = round(time.time() - started, 1)
    return result


# The ratios the report and the targets use: the int8 service against each other system.
PAIRS = (("service_int8", "ort_int8"), ("service_int8", "st_fp32"),
         ("service_int8", "service_fp32"), ("service_int8", "service_int8_lone"),
         ("service_int8", "peer_int8"), ("service_int8", "fastembed"),
         ("service_int8", "service_int8_base"))


def _paired_ratios(windows: dict[str, dict[str, list[Window]]]) -> dict[str, dict[str, float]]:
    """Median over rounds of a/b measured back to back: robust to load from elsewhere."""
    out: dict[str, dict[str, float]] = {}
    for a, b in PAIRS:
        for wl, mine in windows.get(a, {}).items():
            theirs = windows.get(b, {}).get(wl, [])
            per_round = [x.throughput / y.throughput for x, y in zip(mine, theirs, strict=False)
                         if y.throughput > 0]
            if per_round:
                out.setdefault(wl, {})[f"{a}/{b}"] = round(median(per_round), 4)
    return out


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 4)


def _install(cfg: Config, say: Say) -> dict[str, Any] | None:
    venv = cfg.runtime_venv
    if not (venv / "bin" / "python").exists():
        if not cfg.plan.create_runtime_venv:
            return None
        say(f"creating {venv} (the runtime install, no extras) to measure its size")
        try:
            install_size.create(venv)
        except (subprocess.SubprocessError, OSError) as exc:
            say(f"could not create {venv}: {exc}")
            return {"error": str(exc)}
    return install_size.measure(venv)


def _targets(result: dict[str, Any]) -> list[Target]:
    res = result["results"]
    p50 = {n: {wl: s["p50_ms"] for wl, s in by.items()} for n, by in res.items()}
    padding = result["batches"].get("mixed", {}).get("padding_share")
    install = result["install"]
    p99 = {n: {wl: s["p99_ms"] for wl, s in by.items()} for n, by in res.items()}
    cold, cold_fe = result["cold_start"], result.get("cold_start_fastembed")
    return evaluate(result["ratios"], p50, padding, result["memory"],
                    cold["median_s"] if cold else None,
                    install.get("runtime_mb") if install else None,
                    p99_ms=p99, rss=result["rss"],
                    cold_start_fastembed_s=cold_fe["median_s"] if cold_fe else None)
