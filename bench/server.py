"""The service under test, in a subprocess on 127.0.0.1: start, readiness, RSS, /metrics, stop.

Talks to it with the standard library only (the orchestrator must stay light: the load comes
from the client process, not from here).
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

HOST = "127.0.0.1"
# Loading MiniLM and warming it up takes about a second; 120 s on a busy 2-core box means hung.
READY_TIMEOUT_S = 120.0
# Cold-start polling: fine enough that the poll interval is small against a ~0.3 s start.
POLL_INTERVAL_S = 0.002
# A draining service finishes its queue first; after this, stop waiting.
STOP_TIMEOUT_S = 15.0


class ServerError(RuntimeError):
    pass


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        port: int = s.getsockname()[1]
        return port


def process_rss(pid: int) -> int:
    """Resident set size in bytes of `pid` and its descendants (from /proc; no psutil)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    total = 0
    todo = [pid]
    while todo:
        p = todo.pop()
        todo.extend(children.get(p, []))
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) * 1024
        except OSError:
            continue
    return total


@dataclass(frozen=True)
class BatchCounters:
    """Cumulative engine counters from /metrics; subtract two snapshots for one workload."""

    real_tokens: float = 0.0
    padding_tokens: float = 0.0
    batches: float = 0.0
    batch_inputs: float = 0.0

    def __add__(self, other: BatchCounters) -> BatchCounters:
        return BatchCounters(self.real_tokens + other.real_tokens,
                             self.padding_tokens + other.padding_tokens,
                             self.batches + other.batches, self.batch_inputs + other.batch_inputs)

    def __sub__(self, other: BatchCounters) -> BatchCounters:
        return BatchCounters(self.real_tokens - other.real_tokens,
                             self.padding_tokens - other.padding_tokens,
                             self.batches - other.batches, self.batch_inputs - other.batch_inputs)

    @property
    def padding_share(self) -> float | None:
        total = self.real_tokens + self.padding_tokens
        return self.padding_tokens / total if total else None

    @property
    def mean_batch(self) -> float | None:
        return self.batch_inputs / self.batches if self.batches else None


def parse_counters(text: str) -> BatchCounters:
    real = padding = batches = inputs = 0.0
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == "edge_embed_batch_tokens_total":
                if s.labels.get("kind") == "real":
                    real += s.value
                elif s.labels.get("kind") == "padding":
                    padding += s.value
            elif s.name == "edge_embed_batch_size_count":
                batches += s.value
            elif s.name == "edge_embed_batch_size_sum":
                inputs += s.value
    return BatchCounters(real, padding, batches, inputs)


class Server:
    def __init__(self, bundle: Path, log_path: Path, extra_args: Sequence[str] = ()) -> None:
        self.port = free_port()
        self.url = f"http://{HOST}:{self.port}"
        self.log_path = log_path
        self.extra_args = tuple(extra_args)
        argv = [sys.executable, "-m", "service", "--model", str(bundle), "--host", HOST,
                "--port", str(self.port), *extra_args]
        self._log = log_path.open("wb")
        self.started = time.perf_counter()
        self.proc = subprocess.Popen(argv, stdout=self._log, stderr=subprocess.STDOUT,
                                     start_new_session=True)

    def _request(self, method: str, path: str, body: bytes | None = None,
                 timeout: float = 30.0) -> tuple[int, bytes]:
        conn = http.client.HTTPConnection(HOST, self.port, timeout=timeout)
        try:
            headers = {"Content-Type": "application/json"} if body is not None else {}
            conn.request(method, path, body=body, headers=headers)
            resp = conn.getresponse()
            return resp.status, resp.read()
        finally:
            conn.close()

    def _poll(self, method: str, path: str, body: bytes | None, timeout: float) -> float:
        """Seconds from process start to the first 200 answer."""
        deadline = time.perf_counter() + timeout
        last = ""
        while time.perf_counter() < deadline:
            if self.proc.poll() is not None:
                raise ServerError(f"the service exited with {self.proc.returncode}{self.tail()}")
            try:
                status, _ = self._request(method, path, body, timeout=timeout)
                if status == 200:
                    return time.perf_counter() - self.started
                last = f"HTTP {status}"
            except OSError as exc:
                last = type(exc).__name__
            time.sleep(POLL_INTERVAL_S)
        raise ServerError(f"the service was not ready within {timeout:.0f} s ({last}){self.tail()}")

    def wait_ready(self, timeout: float = READY_TIMEOUT_S) -> float:
        return self._poll("GET", "/ready", None, timeout)

    def first_embedding(self, model: str, text: str, timeout: float = READY_TIMEOUT_S) -> float:
        body = json.dumps({"model": model, "input": text}).encode()
        return self._poll("POST", "/v1/embeddings", body, timeout)

    def rss(self) -> int:
        return process_rss(self.proc.pid)

    def counters(self) -> BatchCounters:
        status, payload = self._request("GET", "/metrics")
        if status != 200:
            raise ServerError(f"/metrics answered {status}")
        return parse_counters(payload.decode())

    def tail(self, lines: int = 8) -> str:
        self._log.flush()
        text = self.log_path.read_text(errors="replace").strip().splitlines()[-lines:]
        return (":\n  " + "\n  ".join(text)) if text else ""

    def stop(self) -> None:
        if self._log.closed:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self._log.close()

    def __enter__(self) -> Server:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
