"""`edge-embed embed --ray` on a local one-node Ray (`ray.init(num_cpus=2)`): the same vectors
as the local mode and the service, and a restart that writes only the missing rows."""

from __future__ import annotations

import contextlib
import csv
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import ray

from edge_embed.corpus.cli import main
from edge_embed.corpus.errors import CorpusError
from edge_embed.corpus.ray_reading import (
    PATH,
    ROW,
    FileRows,
    NumberingError,
    file_key,
    numbered,
)
from tests.fixtures.corpus import (
    by_id,
    documents,
    embed_corpus,
    interruptible,
    read_output,
    service_vectors,
    write_jsonl,
)
from tests.fixtures.server import ROOT, live_server

pytestmark = pytest.mark.ray
N = 400


@pytest.fixture(scope="module")
def local_ray() -> Iterator[None]:
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def test_ray_local_and_service_agree(tmp_path: Path, tiny_bundle: Path, local_ray: None,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    texts = documents(N, seed=5)
    src = write_jsonl(tmp_path / "d.jsonl", texts)
    assert embed_corpus(src, "--model", tiny_bundle, "--out", tmp_path / "local") == 0
    assert embed_corpus(src, "--model", tiny_bundle, "--out", tmp_path / "ray", "--ray") == 0
    local_ids, local, local_manifest = read_output(tmp_path / "local")
    ray_ids, on_ray, ray_manifest = read_output(tmp_path / "ray")
    assert sorted(ray_ids) == list(range(N))
    ray_by_id = by_id(ray_ids, on_ray)
    in_order = np.stack([ray_by_id[i] for i in local_ids])
    assert np.array_equal(in_order, local)
    with live_server([tiny_bundle], ["--cache-entries", "0"]) as live:
        assert np.array_equal(service_vectors(live.url, "tiny", texts), local)
    for key in ("counts", "truncation", "bundle", "inputs"):
        if key == "counts":
            assert ray_manifest[key]["documents"] == local_manifest[key]["documents"]
        else:
            assert ray_manifest[key] == local_manifest[key]
    assert main([str(src), "--model", str(tiny_bundle), "--out", str(tmp_path / "ray"),
                 "--ray"]) == 0
    assert "nothing to do" in capsys.readouterr().err


def test_ray_restart_writes_only_the_missing_rows(tmp_path: Path, tiny_bundle: Path,
                                                  local_ray: None) -> None:
    texts = documents(N, seed=9)
    src = write_jsonl(tmp_path / "d.jsonl", texts)
    out = tmp_path / "ray"
    args = ("--model", tiny_bundle, "--out", out, "--ray", "--shard-rows", 100)
    assert embed_corpus(src, *args) == 0
    _, full, _ = read_output(out)
    ids_full, _, manifest = read_output(out)
    files = [out / s["file"] for s in manifest["shards"]]
    assert len(files) >= 2
    # What a killed run leaves: the manifest not yet written, one shard never written and one
    # cut off mid-write (no Parquet footer).
    (out / "manifest.json").unlink()
    files[0].unlink()
    files[1].write_bytes(files[1].read_bytes()[:100])
    kept = {f.name: f.stat().st_mtime_ns for f in files[2:]}
    assert embed_corpus(src, *args) == 0
    ids, vectors, _ = read_output(out)
    assert sorted(ids) == list(range(N))  # every row exactly once
    assert {f.name: f.stat().st_mtime_ns for f in files[2:]} == kept
    again = by_id(ids, vectors)
    assert all(np.array_equal(again[i], full[k]) for k, i in enumerate(ids_full))


def test_ray_shards_holding_a_row_twice_are_refused(tmp_path: Path, tiny_bundle: Path,
                                                    local_ray: None,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    """The end-of-run check counts every row of the whole shards: a copied shard (rows that are
    all present, twice) is refused rather than reported as done."""
    src = write_jsonl(tmp_path / "d.jsonl", documents(N, seed=9))
    out = tmp_path / "ray"
    args = ("--model", tiny_bundle, "--out", out, "--ray", "--shard-rows", 100)
    assert embed_corpus(src, *args) == 0
    manifest = read_output(out)[2]
    first = out / manifest["shards"][0]["file"]
    (out / "manifest.json").unlink()
    (first.parent / f"copy-{first.name}").write_bytes(first.read_bytes())
    assert embed_corpus(src, *args) == 2
    err = capsys.readouterr().err
    assert f"the shards hold {N + 100} rows for {N} inputs (a row written twice)" in err
    assert not (out / "manifest.json").exists()


@pytest.mark.parametrize("suffix", ["csv", "ndjson"])
def test_ray_keeps_ids_and_texts_as_written(tmp_path: Path, tiny_bundle: Path,
                                            local_ray: None, suffix: str) -> None:
    texts = [*documents(30, seed=13), "007", "1.50"]  # texts a type-guessing reader changes
    keys = [f"{i:03d}" for i in range(len(texts))]  # ids with leading zeros, likewise
    if suffix == "csv":
        src = tmp_path / "d.csv"
        with src.open("w", newline="", encoding="utf-8") as f:
            w = csv.writer(f)
            w.writerow(["doc", "text"])
            w.writerows(zip(keys, texts, strict=True))
    else:
        src = write_jsonl(tmp_path / "d.ndjson", texts, keys)
    for mode in ("local", "ray"):
        extra = ["--ray"] if mode == "ray" else []
        assert embed_corpus(src, "--model", tiny_bundle, "--out", tmp_path / mode, "--id-field",
                     "doc", *extra) == 0
    local_ids, local, _ = read_output(tmp_path / "local")
    ray_ids, on_ray, _ = read_output(tmp_path / "ray")
    assert local_ids == keys
    assert sorted(ray_ids) == keys
    ray_by_id = by_id(ray_ids, on_ray)
    assert np.array_equal(np.stack([ray_by_id[k] for k in keys]), local)


def test_file_rows_number_each_file_from_the_rows_before_it(tmp_path: Path) -> None:
    a, b, c = tmp_path / "a.jsonl", tmp_path / "b.jsonl", tmp_path / "c.jsonl"
    rows = FileRows.of([a, b, c], [3, 5, 2])
    assert [rows.first[file_key(p)] for p in (a, b, c)] == [0, 3, 8]
    assert rows.rows[file_key(b)] == 5
    with pytest.raises(CorpusError, match="given twice"):
        FileRows.of([a, b, tmp_path / "." / "a.jsonl"], [3, 5, 3])


def write_inputs(folder: Path, fmt: str, parts: list[list[str]]) -> list[Path]:
    paths = []
    for k, texts in enumerate(parts):
        path = folder / f"part{k}.{fmt}"
        if fmt == "txt":
            path.write_text("".join(t + "\n" for t in texts), encoding="utf-8")
        else:
            pq.write_table(pa.table({"text": texts}), path)
        paths.append(path)
    return paths


@pytest.mark.parametrize("fmt", ["txt", "parquet"])
def test_ray_numbers_rows_across_several_inputs(tmp_path: Path, tiny_bundle: Path,
                                                local_ray: None, fmt: str) -> None:
    """Rows are numbered where Ray reads them (file's first row + place in the file), with no
    order kept downstream: over several files of different sizes, every row exactly once with
    the local mode's id and vector, also after a restart that lost some shards."""
    texts = documents(700, seed=21)
    parts = [texts[:50], texts[50:420], texts[420:421], texts[421:]]
    srcs = write_inputs(tmp_path, fmt, parts)
    assert embed_corpus(*srcs, "--model", tiny_bundle, "--out", tmp_path / "local") == 0
    local_ids, local, _ = read_output(tmp_path / "local")
    out = tmp_path / "ray"
    args = ("--model", tiny_bundle, "--out", out, "--ray", "--shard-rows", 100)
    assert embed_corpus(*srcs, *args) == 0
    ids, vectors, manifest = read_output(out)
    assert sorted(ids) == local_ids == list(range(len(texts)))
    on_ray = by_id(ids, vectors)
    assert np.array_equal(np.stack([on_ray[i] for i in local_ids]), local)
    # A restart after a kill that lost the manifest and some shards writes just those rows.
    files = [out / s["file"] for s in manifest["shards"]]
    (out / "manifest.json").unlink()
    lost = files[::3]
    for f in lost:
        f.unlink()
    assert embed_corpus(*srcs, *args) == 0
    again_ids, again, _ = read_output(out)
    assert sorted(again_ids) == local_ids
    after = by_id(again_ids, again)
    assert np.array_equal(np.stack([after[i] for i in local_ids]), local)


def test_ray_refuses_an_input_given_twice(tmp_path: Path, tiny_bundle: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    src = write_jsonl(tmp_path / "d.jsonl", documents(5))
    assert main([str(src), str(src), "--model", str(tiny_bundle), "--out", str(tmp_path / "o"),
                 "--ray"]) == 2
    assert "given twice" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_ray_line_that_ray_would_split_is_refused_up_front(
        tmp_path: Path, tiny_bundle: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Ray's text reader splits lines at U+2028 as well (str.splitlines); the local mode only at
    newlines. The validation pass refuses such a line under --ray, naming file and line, before
    Ray starts or anything is written (the local mode embeds it as one document)."""
    src = tmp_path / "d.txt"
    src.write_text("one line\nsplit\u2028here\nlast line\n", encoding="utf-8")
    out = tmp_path / "o"
    assert main([str(src), "--model", str(tiny_bundle), "--out", str(out),
                 "--ray", "--quiet"]) == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last == (f"edge-embed embed: error: {src}: line 2: holds U+2028, where Ray's text "
                    "reader starts a new line; run without --ray, or give the text as JSON Lines")
    assert not out.exists()
    assert embed_corpus(src, "--model", tiny_bundle, "--out", tmp_path / "local") == 0


def _path_table(path: str, rows: int) -> pa.Table:
    return pa.table({"text": [f"t{i}" for i in range(rows)], PATH: [path] * rows})


def test_numbered_reads_check_each_file_against_the_validation_count(tmp_path: Path) -> None:
    """The safety net behind validation: a read task whose file yields more or fewer rows than
    the validation pass counted fails, naming the file; one that agrees numbers its rows from
    the file's first row number on."""
    a, b = tmp_path / "a.txt", tmp_path / "b.txt"
    files = FileRows.of([a, b], [3, 2])

    def rows_of(*tables: pa.Table) -> list[int]:
        read = numbered(lambda: iter(tables), files, [file_key(b)], "text", None)
        return [r for t in read() for r in t.column(ROW).to_pylist()]

    assert rows_of(_path_table(str(b), 1), _path_table(str(b), 1)) == [3, 4]
    with pytest.raises(NumberingError, match=f"{file_key(b)}: Ray's reader read at least 3 "
                       "rows where the validation pass read 2"):
        rows_of(_path_table(str(b), 3))
    with pytest.raises(NumberingError, match=f"{file_key(b)}: Ray's reader read 1 rows where "
                       "the validation pass read 2"):
        rows_of(_path_table(str(b), 1))


# A driver killed outright mid-run: enough rows that the kill lands between Ray's writes.
KILL_ROWS = 20_000
KILL_SHARD = 500
POLL_S = 0.01
KILL_DEADLINE_S = 300.0


def whole_rows(folder: Path) -> int:
    """Rows in the whole Parquet files of `folder` (a file still being written has no footer)."""
    rows = 0
    for path in folder.glob("*.parquet"):
        with contextlib.suppress(pa.ArrowInvalid, OSError):
            rows += pq.read_metadata(path).num_rows
    return rows


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGINT])
def test_ray_driver_killed_and_restarted(tmp_path: Path, tiny_bundle: Path, local_ray: None,
                                         sig: signal.Signals) -> None:
    """The job's driver in its own process on the test's Ray (so the cluster outlives it)."""
    src = write_jsonl(tmp_path / "d.jsonl", documents(KILL_ROWS, seed=17))
    out = tmp_path / "out"
    address = ray.get_runtime_context().gcs_address
    cmd = [sys.executable, "-m", "edge_embed.service.cli", "embed", str(src), "--model",
           str(tiny_bundle), "--out", str(out), "--shard-rows", str(KILL_SHARD), "--quiet",
           "--ray", address]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            preexec_fn=interruptible)
    deadline = time.monotonic() + KILL_DEADLINE_S
    while whole_rows(out / "shards") < 2 * KILL_SHARD:
        assert proc.poll() is None, "the run ended before it could be stopped"
        assert time.monotonic() < deadline
        time.sleep(POLL_S)
    proc.send_signal(sig)
    proc.communicate(timeout=120)
    assert proc.returncode != 0
    assert not (out / "manifest.json").exists()
    assert 0 < whole_rows(out / "shards") < KILL_ROWS  # stopped midway
    subprocess.run(cmd, cwd=ROOT, check=True, capture_output=True)
    ids, vectors, manifest = read_output(out)
    assert sorted(ids) == list(range(KILL_ROWS))  # every row exactly once
    assert manifest["counts"]["documents"] == KILL_ROWS
    local = tmp_path / "local"
    assert embed_corpus(src, "--model", tiny_bundle, "--out", local) == 0
    _, reference, _ = read_output(local)
    again = by_id(ids, vectors)
    assert np.array_equal(np.stack([again[i] for i in range(KILL_ROWS)]), reference)


def test_a_shard_that_fails_to_read_is_deleted_only_when_unfinished(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A killed writer's file (no footer) is removed; a whole shard whose read fails on an I/O
    error is kept, and the run stops naming it: its rows are done work."""
    import errno

    from edge_embed.corpus.ray_runner import _done_rows

    shards = tmp_path / "shards"
    shards.mkdir()
    pq.write_table(pa.table({"row": [0, 1, 2]}), shards / "a.parquet")
    pq.write_table(pa.table({"row": [3]}), shards / "b.parquet")
    (shards / "c.parquet").write_bytes((shards / "a.parquet").read_bytes()[:-10])  # cut short
    (shards / "d.parquet").write_bytes(b"")
    real = pq.read_table

    def flaky(path: Any, *args: Any, **kwargs: Any) -> Any:
        if Path(path).name == "b.parquet":
            raise OSError(errno.EIO, "Input/output error")
        return real(path, *args, **kwargs)

    monkeypatch.setattr(pq, "read_table", flaky)
    with pytest.raises(CorpusError, match=r"b\.parquet: cannot be read .*kept"):
        _done_rows(shards)
    assert (shards / "b.parquet").is_file() and (shards / "a.parquet").is_file()
    monkeypatch.setattr(pq, "read_table", real)  # the file system is back
    done, files, rows = _done_rows(shards)
    assert [f.name for f in files] == ["a.parquet", "b.parquet"]
    assert done.tolist() == [0, 1, 2, 3] and rows == 4
    assert sorted(p.name for p in shards.iterdir()) == ["a.parquet", "b.parquet"]
