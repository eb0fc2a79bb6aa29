"""Reproducible builds: the same source gives byte-identical bundles, apart from `build`."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from edge_embed.core.bundle import load_manifest
from edge_embed.quantize import repro


def _edit_manifest(bundle: Path, **fields: object) -> None:
    path = bundle / "bundle.json"
    data = json.loads(path.read_text(encoding="utf-8"))
    data.update(fields)
    path.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")


def test_differences_ignore_build_and_nothing_else(tiny_bundle: Path, tmp_path: Path) -> None:
    a = Path(shutil.copytree(tiny_bundle, tmp_path / "a"))
    b = Path(shutil.copytree(tiny_bundle, tmp_path / "b"))
    _edit_manifest(b, build={"created": "another day", "seconds": 99.0})
    assert repro.bundle_differences(a, b) == []
    _edit_manifest(b, id="other")
    (b / "tokenizer.json").write_bytes((b / "tokenizer.json").read_bytes() + b" ")
    (b / "extra.txt").write_text("x", encoding="utf-8")
    assert repro.bundle_differences(a, b) == [
        f"extra.txt: only in {b}", "tokenizer.json: bytes differ",
        "bundle.json: field 'id' differs"]


def test_build_time_facts_live_in_build_only(tiny_bundle: Path, tiny_int8_bundle: Path) -> None:
    fp32, int8 = load_manifest(tiny_bundle), load_manifest(tiny_int8_bundle)
    assert set(fp32.build) == {"created"}
    assert set(int8.build) == {"created", "seconds", "attempts"}  # attempts: seconds per method
    assert int8.quantization is not None and "seconds" not in int8.quantization
    raw = json.loads((tiny_int8_bundle / "bundle.json").read_text(encoding="utf-8"))
    assert "created" not in raw


def test_two_builds_are_byte_identical(tiny_st_model: Path, tmp_path: Path,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    # Export and quantize twice, each in fresh processes with different hash seeds.
    assert repro.main([str(tiny_st_model), "--work", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "fp32: identical" in out and "int8: identical" in out, out
    for kind in ("fp32", "int8"):
        first, second = tmp_path / "run1" / kind, tmp_path / "run2" / kind
        for name in ("model.onnx", "tokenizer.json"):
            assert (first / name).read_bytes() == (second / name).read_bytes(), (kind, name)
        assert repro.manifest_without_build(first) == repro.manifest_without_build(second)
