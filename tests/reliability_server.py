"""A live `python -m service` in a subprocess, for the reliability tests (issue 5).

The reliability tests need what aiohttp's in-process test client cannot give: a real listening
socket (raw bytes, huge headers, half-sent bodies), a real process to send SIGTERM to and whose
exit code and RSS we read, and its log output captured whole so that we can search it for keys
and request ids.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from bench.server import free_port

ROOT = Path(__file__).resolve().parent.parent
# Start-up of a tiny bundle takes well under 2 s (FINDINGS: a process to its first MiniLM
# embedding in 0.24 s); 60 s leaves room for a machine shared with several busy test runs.
START_TIMEOUT_S = 60.0
# How often the starter polls /ready while the process loads and warms up.
POLL_INTERVAL_S = 0.05
# A process that does not exit this long after SIGKILL is a bug in the OS, not in the service.
KILL_WAIT_S = 10.0


def http_status(url: str, timeout: float = 5.0, headers: dict[str, str] | None = None) -> int:
    """Status of a GET, or 0 when nothing answered (refused, reset, timed out)."""
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            status: int = response.status
            return status
    except urllib.error.HTTPError as err:
        return err.code
    except (OSError, urllib.error.URLError):
        return 0


class LiveServer:
    """One `python -m service` process on a free loopback port, its output in a log file."""

    def __init__(self, models: Sequence[Path | str], args: Sequence[str] = (),
                 env: dict[str, str] | None = None, log_path: Path | None = None,
                 python: str | None = None) -> None:
        self.port = free_port()
        self.host = "127.0.0.1"
        self.base = f"http://{self.host}:{self.port}"
        self.models = [str(m) for m in models]
        self.args = list(args)
        self.env = {**os.environ, **(env or {})}
        self.env.setdefault("PYTHONUNBUFFERED", "1")
        self.python = python or _venv_python()
        self.log_path = log_path or Path(f"/tmp/edge-embed-live-{self.port}.log")
        self.proc: subprocess.Popen[bytes] | None = None
        self._log_file: object = None

    @property
    def command(self) -> list[str]:
        cmd = [self.python, "-m", "service"]
        for model in self.models:
            cmd += ["--model", model]
        return [*cmd, "--host", self.host, "--port", str(self.port), *self.args]

    @property
    def pid(self) -> int:
        assert self.proc is not None, "server not started"
        return self.proc.pid

    def start(self, timeout: float = START_TIMEOUT_S) -> LiveServer:
        log = self.log_path.open("wb")
        self._log_file = log
        # stdout and stderr into one file: the key-leak test must see every byte it printed.
        self.proc = subprocess.Popen(self.command, cwd=ROOT, env=self.env, stdout=log,
                                     stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode} before it was "
                                   f"ready: {' '.join(self.command)}\n{self.log_text()[-4000:]}")
            if http_status(f"{self.base}/ready", timeout=1.0) == 200:
                return self
            time.sleep(POLL_INTERVAL_S)
        self.stop()
        raise RuntimeError(f"server not ready after {timeout} s\n{self.log_text()[-4000:]}")

    def log_text(self) -> str:
        try:
            return self.log_path.read_bytes().decode("utf-8", "replace")
        except FileNotFoundError:
            return ""

    def rss_kib(self) -> int:
        """Resident set size (VmRSS) of the server process, from /proc."""
        return read_rss_kib(self.pid)

    def sigterm(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)

    def wait(self, timeout: float) -> int | None:
        """The exit code, or None if the process still runs after `timeout` seconds."""
        assert self.proc is not None
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return None

    def stop(self) -> None:
        """Kill the process if it still runs (tests that test shutdown do it themselves)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=KILL_WAIT_S)
        log = self._log_file
        if log is not None and hasattr(log, "close"):
            log.close()
            self._log_file = None


def read_rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS in /proc/{pid}/status")


def _venv_python() -> str:
    venv = ROOT / ".venv" / "bin" / "python"
    return str(venv) if venv.exists() else sys.executable


@contextmanager
def live_server(models: Sequence[Path | str], args: Sequence[str] = (),
                env: dict[str, str] | None = None,
                log_path: Path | None = None) -> Iterator[LiveServer]:
    server = LiveServer(models, args, env, log_path)
    try:
        yield server.start()
    finally:
        server.stop()


# --- what the tests read back -----------------------------------------------------------------


def scrape(base: str, headers: dict[str, str] | None = None) -> str:
    request = urllib.request.Request(f"{base}/metrics", headers=headers or {})
    with urllib.request.urlopen(request, timeout=10) as response:
        text: str = response.read().decode("utf-8")
        return text


def metric_sum(text: str, name: str, **labels: str) -> float:
    """Sum of the samples called `name` whose labels include `labels` (0.0 when none)."""
    from prometheus_client.parser import text_string_to_metric_families

    total = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                total += sample.value
    return total


def metric_labels(text: str, name: str, label: str) -> dict[str, float]:
    """`name`'s samples summed by the value of one label."""
    from prometheus_client.parser import text_string_to_metric_families

    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and label in sample.labels:
                key = sample.labels[label]
                out[key] = out.get(key, 0.0) + sample.value
    return out


def assert_openai_error(body: object, status: int, *, type_: str | None = None,
                        code: str | None = None) -> dict[str, object]:
    """`{"error": {"message", "type", "param", "code"}}`, a non-empty message; returns `error`."""
    assert isinstance(body, dict) and set(body) >= {"error"}, f"{status}: not an error body: {body}"
    error = body["error"]
    assert isinstance(error, dict), f"{status}: error is not an object: {body}"
    assert {"message", "type", "param", "code"} <= set(error), f"{status}: fields missing: {error}"
    assert isinstance(error["message"], str) and error["message"].strip(), error
    assert isinstance(error["type"], str) and error["type"], error
    assert "Traceback" not in error["message"], error
    if type_ is not None:
        assert error["type"] == type_, f"{status}: type {error['type']!r}, wanted {type_!r}"
    if code is not None:
        assert error["code"] == code, f"{status}: code {error['code']!r}, wanted {code!r}"
    return error


def words_text(i: int, words: int) -> str:
    """A unique text (its number first) of `words` words from the tiny tokenizer's own corpus,
    so that every word is known to it (a few tokens per word at most)."""
    from tests.fixtures.tiny import CORPUS

    vocab = " ".join(CORPUS).split()
    return f"{i} " + " ".join(vocab[(i * 7 + k) % len(vocab)] for k in range(words))


def http(method: str, url: str, *, headers: dict[str, str] | None = None,
         body: object = None, timeout: float = 30.0) -> tuple[int, dict[str, str], object]:
    """(status, headers, parsed JSON body or the raw text) of one request; errors included."""
    import json

    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method, headers={
        **({"Content-Type": "application/json"} if data is not None else {}), **(headers or {})})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            status, head, raw = response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as err:
        status, head, raw = err.code, dict(err.headers), err.read()
    try:
        parsed: object = json.loads(raw)
    except ValueError:
        parsed = raw.decode("utf-8", "replace")
    return status, head, parsed
