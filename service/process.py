"""The service as a child process: `python -m edge_embed.service` on a free loopback port.

Start, wait for /ready, probe, read its log, signal and stop it. The benchmark harness
(bench/server.py) and the tests' live server (tests/fixtures/server.py) both stand on this.
Standard library only: whoever drives the process must stay light.
"""

from __future__ import annotations

import contextlib
import http.client
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Collection, Mapping, Sequence
from functools import partial
from pathlib import Path
from typing import TypeVar

HOST = "127.0.0.1"
# Loading a model and warming it up takes about a second; 120 s on a busy 2-core box means hung.
READY_TIMEOUT_S = 120.0
# How often /ready is polled: often enough against a start of a few tenths of a second, rarely
# enough not to take CPU from the service warming up. A caller timing the start polls finer.
POLL_INTERVAL_S = 0.05
# A draining service finishes its queue first. Its default drain is 20 s (service/settings.py,
# DRAIN_TIMEOUT_S); stop waits that plus a margin to exit, then SIGKILLs.
STOP_TIMEOUT_S = 25.0
# One probe of a running service (status()): an answer takes milliseconds; a server that takes
# this long to answer /health is as good as down.
PROBE_TIMEOUT_S = 5.0
# Lines of the service's log quoted when it fails to start: a Python traceback fits.
TAIL_LINES = 40

P = TypeVar("P", bound="ServiceProcess")


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


class ServiceProcess:
    """One `python -m edge_embed.service` process on a free loopback port, its output in a log file.

    Started by the constructor; `wait_ready()` waits for /ready. The service runs in its own
    process group, so that `kill()` also reaches anything it started, and so that a Ctrl-C meant
    for the caller does not stop it behind the caller's back.
    """

    def __init__(self, bundle: Path | str | Sequence[Path | str], log_path: Path | None = None,
                 extra_args: Sequence[str] = (), *, env: Mapping[str, str] | None = None,
                 python: str = sys.executable, cwd: Path | None = None,
                 program: Sequence[str] | None = None,
                 cpus: Collection[int] | None = None) -> None:
        bundles = [bundle] if isinstance(bundle, (str, os.PathLike)) else list(bundle)
        self.models = tuple(str(b) for b in bundles)
        self.host = HOST
        self.port = free_port()
        self.url = f"http://{HOST}:{self.port}"
        self.log_path = log_path or Path(tempfile.gettempdir()) / f"edge-embed-{self.port}.log"
        self.extra_args = tuple(extra_args)
        # `program`: another server taking --host and --port (the benchmark's peers), run
        # and probed the same way; its bundles are then its own arguments.
        serving = (list(program) if program is not None else
                   [python, "-m", "edge_embed.service",
                    *(a for m in self.models for a in ("--model", m))])
        self.command = [*serving, "--host", HOST, "--port", str(self.port), *self.extra_args]
        # Unbuffered: the log is read while the service runs (failure tails, tests searching it
        # for what a request printed), so every line must be in the file when it is written.
        environ = {"PYTHONUNBUFFERED": "1", **os.environ, **(env or {})}
        self.started = time.perf_counter()
        # stdout and stderr into one file: a failure tail, and a test looking for a leaked key,
        # must see every byte the service printed. The child keeps its own descriptor.
        with self.log_path.open("wb") as log:
            # `cpus`: the only CPUs it may run on (a one-core box), set before it starts, so
            # that it plans its threads for them as it would under taskset or a cpuset.
            pin = None if cpus is None else partial(os.sched_setaffinity, 0, set(cpus))
            self.proc = subprocess.Popen(self.command, cwd=cwd, env=environ, stdout=log,
                                         stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         start_new_session=True, preexec_fn=pin)

    def request(self, method: str, path: str, body: bytes | None = None,
                timeout: float = 30.0) -> tuple[int, bytes]:
        """One request over a fresh connection: the status and the body."""
        conn = http.client.HTTPConnection(HOST, self.port, timeout=timeout)
        try:
            headers = {"Content-Type": "application/json"} if body is not None else {}
            conn.request(method, path, body=body, headers=headers)
            resp = conn.getresponse()
            return resp.status, resp.read()
        finally:
            conn.close()

    def poll(self, method: str, path: str, body: bytes | None, timeout: float,
             poll_s: float) -> float:
        """Seconds from process start to the first 200 answer; kills the service on failure."""
        deadline = time.perf_counter() + timeout
        last = ""
        while (left := deadline - time.perf_counter()) > 0:
            if self.proc.poll() is not None:
                raise ServerError(f"the service exited with {self.proc.returncode}: "
                                  f"{' '.join(self.command)}{self._failure_tail()}")
            try:
                status, _ = self.request(method, path, body, timeout=left)
                if status == 200:
                    return time.perf_counter() - self.started
                last = f"HTTP {status}"
            except (OSError, http.client.HTTPException) as exc:
                last = type(exc).__name__
            time.sleep(poll_s)
        # Never ready: nothing to drain, and a hung process must not outlive the caller.
        self.kill()
        raise ServerError(f"the service was not ready within {timeout:g} s ({last})"
                          f"{self._failure_tail()}")

    def wait_ready(self, timeout: float = READY_TIMEOUT_S,
                   poll_s: float = POLL_INTERVAL_S) -> float:
        """Seconds from process start until /ready answered 200."""
        return self.poll("GET", "/ready", None, timeout, poll_s)

    def status(self, path: str, timeout: float = PROBE_TIMEOUT_S) -> int:
        """Status of GET `path`, or 0 when nothing answered (refused, reset, timed out)."""
        try:
            return self.request("GET", path, timeout=timeout)[0]
        except (OSError, http.client.HTTPException):
            return 0

    def rss(self) -> int:
        """Resident set size in bytes of the service and anything it started."""
        return process_rss(self.proc.pid)

    def peak_rss(self) -> int:
        """The service process's highest resident set size so far (VmHWM), in bytes."""
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
        raise ServerError("no VmHWM in /proc/PID/status")

    def log_text(self) -> str:
        """Everything the service has printed so far."""
        try:
            return self.log_path.read_bytes().decode("utf-8", "replace")
        except FileNotFoundError:
            return ""

    def tail(self, lines: int = TAIL_LINES) -> str:
        return "\n".join(self.log_text().strip().splitlines()[-lines:])

    def _failure_tail(self) -> str:
        text = self.tail()
        return (":\n  " + text.replace("\n", "\n  ")) if text else ""

    def sigterm(self) -> None:
        """Ask the service to drain and exit (what an orchestrator does); returns at once."""
        self.proc.send_signal(signal.SIGTERM)

    def wait(self, timeout: float) -> int | None:
        """The exit code, or None if the process still runs after `timeout` seconds."""
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return None

    def kill(self) -> None:
        """SIGKILL the service's whole process group, at once."""
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def stop(self, timeout: float = STOP_TIMEOUT_S) -> None:
        """SIGTERM (the service finishes what it has queued), SIGKILL after `timeout` seconds.

        A no-op once the process has exited, so tests that stop it themselves can still call it.
        """
        if self.proc.poll() is None:
            self.sigterm()
            if self.wait(timeout) is None:
                self.kill()

    def __enter__(self: P) -> P:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
