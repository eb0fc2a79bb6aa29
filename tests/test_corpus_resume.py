"""`edge-embed embed` stopped midway (SIGKILL, SIGINT) and started again: every input exactly
once, and the same vectors as a run that was never stopped."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from tests.fixtures.corpus import documents, interruptible, read_output, write_jsonl
from tests.fixtures.server import ROOT

# Enough rows that the tiny bundle takes seconds on a shared 2-core machine, in small shards so
# that the kill lands between many shard writes.
ROWS = 12_000
SHARD = 300
# The run is stopped once this many shards are written: well before its end.
STOP_AFTER_SHARDS = 3
POLL_S = 0.005
DEADLINE_S = 120.0


def command(src: Path, bundle: Path, out: Path) -> list[str]:
    return [sys.executable, "-m", "edge_embed.service.cli", "embed", str(src), "--model",
            str(bundle), "--out", str(out), "--shard-rows", str(SHARD), "--quiet"]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_jsonl(tmp_path_factory.mktemp("corpus") / "docs.jsonl", documents(ROWS))


@pytest.fixture(scope="module")
def reference(corpus: Path, tiny_bundle: Path, tmp_path_factory: pytest.TempPathFactory
              ) -> np.ndarray:
    out = tmp_path_factory.mktemp("ref") / "out"
    subprocess.run(command(corpus, tiny_bundle, out), cwd=ROOT, check=True)
    return read_output(out)[1]


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGINT])
def test_stopped_and_restarted(tmp_path: Path, corpus: Path, tiny_bundle: Path,
                               reference: np.ndarray, sig: signal.Signals) -> None:
    out = tmp_path / "out"
    proc = subprocess.Popen(command(corpus, tiny_bundle, out), cwd=ROOT,
                            stderr=subprocess.PIPE, text=True, preexec_fn=interruptible)
    deadline = time.monotonic() + DEADLINE_S
    while len(list(out.glob("part-*.parquet"))) < STOP_AFTER_SHARDS:
        assert proc.poll() is None, "the run ended before it could be stopped"
        assert time.monotonic() < deadline
        time.sleep(POLL_S)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode != 0
    assert not (out / "manifest.json").exists()
    if sig == signal.SIGINT:
        assert "interrupted" in err and "Traceback" not in err
    written = {p.name: p.stat().st_mtime_ns for p in out.glob("part-*.parquet")}
    partial = len(written)
    assert STOP_AFTER_SHARDS <= partial < ROWS // SHARD
    again = subprocess.run(command(corpus, tiny_bundle, out)[:-1], cwd=ROOT,
                           capture_output=True, text=True, check=True)
    assert f"resuming: {partial} shard(s)" in again.stderr
    ids, vectors, manifest = read_output(out)
    assert ids == list(range(ROWS))  # every input once, in order
    assert manifest["counts"]["documents"] == ROWS
    assert not list(out.glob(".tmp-*"))
    # The shards written before the stop were kept, not embedded again.
    assert {name: (out / name).stat().st_mtime_ns for name in written} == written
    assert np.array_equal(vectors, reference)


# A run holding --out, as the lock file says one does: the file locked (flock) with its pid in
# it. Written without the package's own code so that it holds the same way against any version.
HOLDER = ("import fcntl, os, sys, time\n"
          "os.makedirs(sys.argv[1], exist_ok=True)\n"
          "fd = os.open(os.path.join(sys.argv[1], '.edge-embed-embed.lock'), "
          "os.O_RDWR | os.O_CREAT)\n"
          "fcntl.flock(fd, fcntl.LOCK_EX)\n"
          "os.write(fd, str(os.getpid()).encode())\n"
          "print('held', flush=True)\ntime.sleep(300)\n")
CLI_TIMEOUT_S = 120


def test_a_second_run_on_the_same_out_is_refused_and_a_dead_holder_taken_over(
        tiny_bundle: Path, tmp_path: Path) -> None:
    src = write_jsonl(tmp_path / "docs.jsonl", documents(40))
    out = tmp_path / "out"
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(out)], cwd=ROOT,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        for extra in ([], ["--ray"]):  # both modes; Ray's is refused before Ray starts
            done = subprocess.run([*command(src, tiny_bundle, out), *extra], cwd=ROOT,
                                  capture_output=True, text=True, timeout=CLI_TIMEOUT_S)
            lines = done.stderr.strip().splitlines()
            assert done.returncode == 2 and len(lines) == 1, done.stderr
            assert str(out) in lines[0] and f"pid {holder.pid}" in lines[0], lines[0]
            assert not (out / "run.json").exists()  # nothing of the refused run written
    finally:
        holder.kill()  # SIGKILL: the lock file stays behind, its lock gone with the process
        holder.wait()
    lock = out / ".edge-embed-embed.lock"
    assert lock.read_text(encoding="ascii").strip() == str(holder.pid)
    done = subprocess.run(command(src, tiny_bundle, out), cwd=ROOT, capture_output=True,
                          text=True, timeout=CLI_TIMEOUT_S)
    assert done.returncode == 0, done.stderr
    assert "taking over" in done.stderr and str(holder.pid) in done.stderr, done.stderr
    assert len(read_output(out)[0]) == 40 and not lock.exists()
