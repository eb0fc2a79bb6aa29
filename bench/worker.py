"""A measuring process and its driver: one JSON line per command on stdin, one per answer on stdout.

Every system under test runs in a process of its own (the HTTP client apart from the server it
drives; onnxruntime and torch apart from each other and from the orchestrator), started once and
kept for the whole run, so that windows of different systems can be interleaved without paying a
process start each time: on a shared, noisy machine only interleaved ratios are trustworthy.
"""

from __future__ import annotations

import json
import os
import select
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO, Any

from .stats import Window
from .workloads import Workload, load

# Loading a model and importing torch takes a few seconds on 2 busy cores; 120 s means hung.
START_TIMEOUT_S = 120.0
# A window is bounded by its own time limit; this only catches a worker that stopped answering.
ANSWER_GRACE_S = 120.0
Measure = Callable[[Workload, float, int, int], Window]


class WorkerError(RuntimeError):
    pass


def serve(workloads_file: Path, measure: Measure, out: IO[str] | None = None) -> int:
    """Child side: answer measure commands until stdin closes or says quit."""
    out = out or sys.stdout
    workloads = load(workloads_file)
    out.write(json.dumps({"ready": True, "pid": os.getpid()}) + "\n")
    out.flush()
    for line in sys.stdin:
        cmd = json.loads(line)
        if cmd.get("op") == "quit":
            break
        try:
            result = measure(workloads[cmd["workload"]], float(cmd["seconds"]),
                             int(cmd["max_requests"]), int(cmd.get("warmup", 0)))
            answer: dict[str, Any] = {"window": result.to_json()}
        except Exception as exc:  # reported to the orchestrator, which names the system
            answer = {"error": f"{type(exc).__name__}: {exc}"}
        out.write(json.dumps(answer) + "\n")
        out.flush()
    return 0


class Worker:
    """Parent side: start a worker command, wait for it to be ready, send it windows to measure."""

    def __init__(self, name: str, argv: Sequence[str], log_path: Path,
                 env: dict[str, str] | None = None) -> None:
        self.name = name
        self.log_path = log_path
        self._log = log_path.open("wb")
        self.proc = subprocess.Popen(list(argv), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=self._log, env=env)
        self._buffer = b""
        self.info: dict[str, Any] | None = None

    def wait_ready(self, timeout: float = START_TIMEOUT_S) -> dict[str, Any]:
        """Block until the worker has loaded its model (started in parallel with others)."""
        if self.info is None:
            self.info = self._read(timeout)
        return self.info

    def _read(self, timeout: float) -> dict[str, Any]:
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        deadline = time.monotonic() + timeout
        while b"\n" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0:
                raise WorkerError(f"{self.name}: no answer within {timeout:.0f} s{self._tail()}")
            readable, _, _ = select.select([fd], [], [], left)
            if readable:
                chunk = os.read(fd, 1 << 16)
                if not chunk:
                    raise WorkerError(f"{self.name}: exited with {self.proc.wait()}{self._tail()}")
                self._buffer += chunk
        line, self._buffer = self._buffer.split(b"\n", 1)
        data: dict[str, Any] = json.loads(line)
        return data

    def _tail(self) -> str:
        self._log.flush()
        text = self.log_path.read_text(errors="replace").strip().splitlines()[-5:]
        return (": " + " | ".join(text)) if text else ""

    def measure(self, workload: str, seconds: float, max_requests: int, warmup: int) -> Window:
        self.wait_ready()
        assert self.proc.stdin is not None
        cmd = {"op": "measure", "workload": workload, "seconds": seconds,
               "max_requests": max_requests, "warmup": warmup}
        self.proc.stdin.write((json.dumps(cmd) + "\n").encode())
        self.proc.stdin.flush()
        answer = self._read(seconds + ANSWER_GRACE_S)
        if "error" in answer:
            raise WorkerError(f"{self.name} on {workload}: {answer['error']}")
        w = answer["window"]
        w.pop("throughput", None)
        return Window(**w)

    def close(self) -> None:
        if self._log.closed:
            return
        if self.proc.poll() is None:
            try:
                assert self.proc.stdin is not None
                self.proc.stdin.write(b'{"op": "quit"}\n')
                self.proc.stdin.close()
                self.proc.wait(timeout=10)
            except (OSError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait()
        self._log.close()
