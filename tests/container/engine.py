"""Drives a container engine (podman, or docker where its daemon answers; both take docker's
command line) for the image tests: run an image on the host's network, ask it things, stop it.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

# The Makefile (deploy/container/image.mk) says which engine built the images and their name.
ENGINE_ENV = "EDGE_EMBED_ENGINE"
IMAGE_ENV = "EDGE_EMBED_IMAGE"
# One engine command (inspect, exec, healthcheck) on a 2-core machine shared with other work.
COMMAND_TIMEOUT_S = 60.0
# /ready is polled this often while timing the start: finer than the 2 s bound by far.
READY_POLL_S = 0.01
PROBE_TIMEOUT_S = 2.0
# /proc/<pid>/stat counts CPU time in clock ticks; Linux reports 100 per second to user space.
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def engine() -> str:
    return os.environ.get(ENGINE_ENV, "podman")


def image() -> str:
    name = os.environ.get(IMAGE_ENV)
    if not name:
        raise RuntimeError(f"{IMAGE_ENV} is not set: run these tests with `make image-test` or "
                           "`make test-arm64`, which build the images and name them")
    return name


def command(*args: str, timeout: float = COMMAND_TIMEOUT_S,
            check: bool = True) -> subprocess.CompletedProcess[str]:
    done = subprocess.run([engine(), *args], capture_output=True, text=True, timeout=timeout,
                          check=False)
    if check and done.returncode != 0:
        raise RuntimeError(f"{engine()} {' '.join(args)}: exit {done.returncode}\n{done.stderr}")
    return done


def image_size(name: str) -> int:
    """Bytes of the image's layers, as the engine counts them (`images` shows the same)."""
    return int(command("image", "inspect", "--format", "{{.Size}}", name).stdout.strip())


def status(url: str) -> int | None:
    try:
        with urllib.request.urlopen(url, timeout=PROBE_TIMEOUT_S) as response:
            code: int = response.status
            return code
    except urllib.error.HTTPError as exc:
        return exc.code
    except OSError:
        return None


@dataclass
class Container:
    name: str
    port: int

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def inspect(self, template: str) -> str:
        return command("inspect", "--format", template, self.name).stdout.strip()

    def started_at(self) -> float:
        """When the engine started the container's process (Unix time)."""
        if engine() == "podman":  # a Go time.Time: its method gives nanoseconds
            return int(self.inspect("{{.State.StartedAt.UnixNano}}")) / 1e9
        stamp = self.inspect("{{.State.StartedAt}}")  # docker: RFC 3339 with nanoseconds
        whole, _, rest = stamp.rstrip("Z").partition(".")
        return datetime.fromisoformat(whole + "+00:00").timestamp() + float("0." + (rest or "0"))

    def wait_ready(self, timeout: float) -> float:
        """Unix time at which /ready first answered 200."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if status(self.url + "/ready") == 200:
                return time.time()
            if self.inspect("{{.State.Running}}") != "true":
                raise RuntimeError(f"{self.name} exited before /ready:\n{self.logs()}")
            time.sleep(READY_POLL_S)
        raise TimeoutError(f"{self.name}: /ready not 200 within {timeout} s\n{self.logs()}")

    def cpu_seconds(self) -> float:
        """CPU time the server (PID 1, all its threads) has used: start-up work without the wait
        for a busy machine's cores, which the wall time includes."""
        fields = self.exec("cat", "/proc/1/stat").stdout.rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS

    def exec(self, *args: str) -> subprocess.CompletedProcess[str]:
        return command("exec", self.name, *args, check=False)

    def logs(self) -> str:
        done = command("logs", self.name, check=False)
        return done.stdout + done.stderr

    def signal(self, name: str) -> None:
        command("kill", "--signal", name, self.name)

    def wait(self, timeout: float) -> int:
        """The exit code, waiting at most `timeout` seconds for the container to stop."""
        return int(command("wait", self.name, timeout=timeout).stdout.strip().splitlines()[-1])

    def remove(self) -> None:
        command("rm", "--force", self.name, check=False)


@contextmanager
def running(image_name: str, port: int, env: Mapping[str, str] | None = None,
            mounts: Sequence[tuple[Path, str]] = (), extra: Sequence[str] = ()) -> Iterator[
                Container]:
    """The image started detached on the host's network (what works on every host this runs
    on), with a read-only root and, on podman, without the tmpfs it adds there by default: the
    server must need nothing writable. Bundles are mounted read-only; removed on exit."""
    name = f"edge-embed-test-{uuid.uuid4().hex[:8]}"
    args = ["run", "--detach", "--name", name, "--network", "host", "--read-only"]
    if engine() == "podman":
        args.append("--read-only-tmpfs=false")
    for key, value in {"EDGE_EMBED_PORT": str(port), **(env or {})}.items():
        args += ["--env", f"{key}={value}"]
    for source, target in mounts:
        args += ["--volume", f"{source}:{target}:ro"]
    command(*args, *extra, image_name)
    try:
        yield Container(name, port)
    finally:
        Container(name, port).remove()


def copy_out(image_name: str, path: str, dest: Path) -> Path:
    """`path` from the image's file system, copied to `dest` (which must not exist yet) through a
    container created from it and never started."""
    name = f"edge-embed-copy-{uuid.uuid4().hex[:8]}"
    command("create", "--name", name, image_name)
    try:
        command("cp", f"{name}:{path}", str(dest))
    finally:
        command("rm", "--force", name, check=False)
    return dest


def manifest_id(bundle: Path) -> str:
    data = json.loads((bundle / "bundle.json").read_text(encoding="utf-8"))
    model_id: str = data["id"]
    return model_id
