"""`edge-embed embed` in-process: formats, ids, truncation, bad input, reruns, the service's
vectors."""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from edge_embed.core.encoder import BundleModel
from edge_embed.corpus.cli import main
from tests.fixtures.corpus import (
    documents,
    embed_corpus,
    read_output,
    service_vectors,
    write_jsonl,
)
from tests.fixtures.server import live_server

N = 300
SHARD = 64


def test_jsonl_to_parquet(tmp_path: Path, tiny_bundle: Path) -> None:
    texts = documents(N)
    src = write_jsonl(tmp_path / "docs.jsonl", texts)
    out = tmp_path / "out"
    assert embed_corpus(src, "--model", tiny_bundle, "--out", out, "--shard-rows", SHARD) == 0
    ids, vectors, manifest = read_output(out)
    assert ids == list(range(N))
    schema = pq.read_schema(out / "part-00000.parquet")
    assert schema.field("vector").type == pa.list_(pa.float32(), 32)
    assert [s["rows"] for s in manifest["shards"]] == [64, 64, 64, 64, 44]
    model = BundleModel(tiny_bundle)
    cut = sum(t.truncated for t in model.tokenizer.encode(texts))
    assert cut > 0
    assert manifest["counts"]["documents"] == N
    assert manifest["truncation"]["truncated"] == cut
    assert manifest["bundle"]["id"] == "tiny"
    assert manifest["bundle"]["files"]["model.onnx"]["sha256"] == \
        json.loads((tiny_bundle / "bundle.json").read_text())["files"]["model.onnx"]["sha256"]
    assert manifest["inputs"][0]["size"] == src.stat().st_size
    np.testing.assert_allclose(vectors, model.embed(texts), atol=1e-5)
    table = pq.read_table(out / "part-00000.parquet")
    assert table["truncated"].to_pylist() == [t.truncated for t in
                                              model.tokenizer.encode(texts[:SHARD])]


def test_formats_agree_and_id_field(tmp_path: Path, tiny_bundle: Path) -> None:
    texts = documents(50, seed=3)
    keys = [f"doc-{i}" for i in range(50)]
    write_jsonl(tmp_path / "a.jsonl", texts, keys)
    with (tmp_path / "a.csv").open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["doc", "body"])
        w.writerows(zip(keys, texts, strict=True))
    pq.write_table(pa.table({"doc": keys, "body": texts}), tmp_path / "a.parquet")
    (tmp_path / "a.txt").write_text("\n".join(texts) + "\n", encoding="utf-8")
    runs = {
        "jsonl": ["--id-field", "doc"],
        "csv": ["--id-field", "doc", "--text-field", "body"],
        "parquet": ["--id-field", "doc", "--text-field", "body"],
        "txt": [],
    }
    results = {}
    for suffix, extra in runs.items():
        out = tmp_path / f"out-{suffix}"
        assert embed_corpus(tmp_path / f"a.{suffix}", "--model", tiny_bundle, "--out", out,
                     *extra) == 0
        results[suffix] = read_output(out)
    for suffix in ("csv", "parquet"):
        assert results[suffix][0] == keys
        assert np.array_equal(results[suffix][1], results["jsonl"][1])
    assert results["txt"][0] == list(range(50))
    assert np.array_equal(results["txt"][1], results["jsonl"][1])


@pytest.mark.parametrize(("content", "suffix", "extra", "message"), [
    ('{"text": "fine"}\n{"txt": "typo"}\n', "jsonl", [], "line 2: has no field 'text'"),
    ('{"text": "fine"}\n{"text": "broken\n', "jsonl", [], "line 2: is not valid JSON"),
    ('{"text": "fine"}\n{"text": "   "}\n', "jsonl", [], "line 2: field 'text' is an empty"),
    ('[1, 2]\n', "jsonl", [], "line 1: must be a JSON object"),
    ('{"text": "a", "id": 1}\n{"text": "b"}\n', "jsonl", ["--id-field", "id"],
     "line 2: has no id field 'id'"),
    ("one\n\nthree\n", "txt", [], "line 2: is an empty document"),
    ("body\nfine\n\"\"\n", "csv", [], "has no column 'text'"),
    ("text\nfine\n\"\"\n", "csv", [], "row 2: field 'text' is an empty document"),
])
def test_bad_input_names_file_and_row(tmp_path: Path, tiny_bundle: Path,
                                      capsys: pytest.CaptureFixture[str], content: str,
                                      suffix: str, extra: list[str], message: str) -> None:
    src = tmp_path / f"bad.{suffix}"
    src.write_text(content, encoding="utf-8")
    out = tmp_path / "out"
    assert embed_corpus(src, "--model", tiny_bundle, "--out", out, *extra) == 2
    err = capsys.readouterr().err
    assert f"{src}: {message}" in err
    assert "Traceback" not in err
    assert not out.exists()


def test_unreadable_and_unknown_inputs(tmp_path: Path, tiny_bundle: Path,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    assert embed_corpus(tmp_path / "missing.jsonl", "--model", tiny_bundle, "--out", out) == 2
    assert "missing.jsonl: no such file" in capsys.readouterr().err
    (tmp_path / "x.docx").write_text("hello\n")
    assert embed_corpus(tmp_path / "x.docx", "--model", tiny_bundle, "--out", out) == 2
    assert "unknown format '.docx'" in capsys.readouterr().err
    (tmp_path / "empty.jsonl").write_text("")
    assert embed_corpus(tmp_path / "empty.jsonl", "--model", tiny_bundle, "--out", out) == 2
    assert "empty.jsonl: no documents to embed" in capsys.readouterr().err
    (tmp_path / "bad.parquet").write_bytes(b"not parquet at all")
    assert embed_corpus(tmp_path / "bad.parquet", "--model", tiny_bundle, "--out", out) == 2
    assert "bad.parquet: is not a readable Parquet file" in capsys.readouterr().err
    assert not out.exists()


def test_no_truncate_refuses_before_writing(tmp_path: Path, tiny_bundle: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    texts = ["short one", "word " * 200, "another"]
    src = write_jsonl(tmp_path / "d.jsonl", texts)
    out = tmp_path / "out"
    assert embed_corpus(src, "--model", tiny_bundle, "--out", out, "--no-truncate") == 2
    err = capsys.readouterr().err
    assert f"{src}: line 2: has" in err and "over the model's limit of 64" in err
    assert not out.exists()
    assert main([str(src), "--model", str(tiny_bundle), "--out", str(out)]) == 0
    assert "1 input(s) were cut to the model's limit of 64 tokens" in capsys.readouterr().err
    _, _, manifest = read_output(out)
    assert manifest["truncation"]["truncated"] == 1


def test_rerun_does_nothing_and_changes_are_refused(tmp_path: Path, tiny_bundle: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    src = write_jsonl(tmp_path / "d.jsonl", documents(40))
    out = tmp_path / "out"
    assert embed_corpus(src, "--model", tiny_bundle, "--out", out, "--shard-rows", "16") == 0
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    assert main([str(src), "--model", str(tiny_bundle), "--out", str(out),
                 "--shard-rows", "16"]) == 0
    assert "nothing to do" in capsys.readouterr().err
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == before
    write_jsonl(src, documents(41))
    assert embed_corpus(src, "--model", tiny_bundle, "--out", out, "--shard-rows", "16") == 2
    assert "d.jsonl (its size or sha256 changed)" in capsys.readouterr().err
    assert embed_corpus(src, "--model", tiny_bundle, "--out", out, "--shard-rows", "16",
                 "--overwrite") == 0
    ids, _, _ = read_output(out)
    assert ids == list(range(41))


def test_bit_identical_to_the_service(tmp_path: Path, tiny_bundle: Path) -> None:
    texts = documents(200, seed=11)
    src = write_jsonl(tmp_path / "d.jsonl", texts)
    out = tmp_path / "out"
    assert embed_corpus(src, "--model", tiny_bundle, "--out", out) == 0
    _, local, _ = read_output(out)
    with live_server([tiny_bundle], ["--cache-entries", "0"]) as live:
        served = service_vectors(live.url, "tiny", texts)
    assert local.dtype == served.dtype == np.float32
    assert np.array_equal(local, served)


def test_missing_extra_says_what_to_install(tmp_path: Path, tiny_bundle: Path,
                                            monkeypatch: pytest.MonkeyPatch,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    src = write_jsonl(tmp_path / "d.jsonl", ["hello"])
    monkeypatch.setitem(sys.modules, "pyarrow", None)  # what an install without it sees
    assert embed_corpus(src, "--model", tiny_bundle, "--out", tmp_path / "out") == 2
    assert "pip install 'edge-embed[corpus]'" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
