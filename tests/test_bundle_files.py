"""A bundle's files against its manifest: every file listed with its size and sha256, checked at
start-up; a missing, truncated or replaced file stops the service with the file's name (exit 2).
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from edge_embed.core.bundle import MANIFEST_NAME, FileEntry, load_manifest, parse_manifest
from edge_embed.core.errors import BundleError, BundleFileError, StartupError
from edge_embed.core.files import verify
from edge_embed.core.runtime import RuntimeOptions
from edge_embed.service.models import Registry
from edge_embed.service.settings import parse_settings

ROOT = Path(__file__).resolve().parent.parent
# Start-up of a tiny bundle takes a second; a machine busy with other tests much longer.
SERVE_TIMEOUT_S = 120
# A vocabulary entry of the tiny tokenizer, and a word of the same length that is not one: the
# file keeps its size and stays a valid tokenizer, only its bytes change.
WORD, OTHER_WORD = b'"museum"', b'"museun"'


def copy(bundle: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(bundle, tmp_path / bundle.name))


def manifest_json(bundle: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((bundle / MANIFEST_NAME).read_text(encoding="utf-8"))
    return data


def replace_a_word(path: Path) -> None:
    data = path.read_bytes()
    assert WORD in data
    path.write_bytes(data.replace(WORD, OTHER_WORD, 1))


def test_every_file_is_listed_with_its_size_and_hash(tiny_bundle: Path) -> None:
    m = load_manifest(tiny_bundle)
    on_disk = {p.name for p in tiny_bundle.iterdir()} - {MANIFEST_NAME}
    assert set(m.files) == on_disk
    for name, entry in m.files.items():
        data = (tiny_bundle / name).read_bytes()
        assert entry == FileEntry(len(data), hashlib.sha256(data).hexdigest())
    assert verify(tiny_bundle, m) == sum(e.size or 0 for e in m.files.values())


def test_a_manifest_without_sizes_still_loads_and_is_checked(tiny_bundle: Path,
                                                              tmp_path: Path) -> None:
    bundle = copy(tiny_bundle, tmp_path)
    data = manifest_json(bundle)
    data["files"] = {name: entry["sha256"] for name, entry in data["files"].items()}
    (bundle / MANIFEST_NAME).write_text(json.dumps(data), encoding="utf-8")
    m = load_manifest(bundle)
    assert all(entry.size is None for entry in m.files.values())
    verify(bundle, m)
    replace_a_word(bundle / "tokenizer.json")
    with pytest.raises(BundleFileError, match=r"tokenizer\.json: sha256 "):
        verify(bundle, m)


@pytest.mark.parametrize("files,needle", [
    ({"../model.onnx": {"size": 1, "sha256": "0" * 64}}, "must be a plain file name"),
    ({"bundle.json": {"size": 1, "sha256": "0" * 64}}, "must be a plain file name"),
    ({"model.onnx": {"size": 1, "sha256": "xyz"}}, "sha256 must be 64 lowercase hex digits"),
    ({"model.onnx": {"size": -1, "sha256": "0" * 64}}, "size must be a number of bytes"),
    ({"model.onnx": {"size": True, "sha256": "0" * 64}}, "size must be a number of bytes"),
    ({"model.onnx": 7}, "must be an object with size and sha256"),
    (["model.onnx"], "must be an object"),
])
def test_a_malformed_files_field_is_refused(tiny_bundle: Path, files: Any, needle: str) -> None:
    data = manifest_json(tiny_bundle)
    data["files"] = files
    with pytest.raises(BundleError, match="field 'files'") as caught:
        parse_manifest(data, tiny_bundle / MANIFEST_NAME)
    assert needle in str(caught.value)


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


@pytest.mark.parametrize("damage,name,needle", [
    (truncate, "model.onnx", "where bundle.json lists"),
    (replace_a_word, "tokenizer.json", "the file was replaced or changed"),
])
def test_a_damaged_file_stops_start_up_naming_it(tiny_bundle: Path, tmp_path: Path,
                                                 damage: Any, name: str, needle: str) -> None:
    bundle = copy(tiny_bundle, tmp_path)
    damage(bundle / name)
    done = subprocess.run([sys.executable, "-m", "edge_embed.service", "--port", "0",
                           "--model", str(bundle)], cwd=ROOT, capture_output=True, text=True,
                          timeout=SERVE_TIMEOUT_S)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in done.stderr, done.stderr
    assert str(bundle / name) in lines[0] and needle in lines[0], lines[0]


def test_size_mode_checks_sizes_only(tiny_bundle: Path, tmp_path: Path) -> None:
    bundle = copy(tiny_bundle, tmp_path)
    replace_a_word(bundle / "tokenizer.json")
    options = RuntimeOptions(intra_op_threads=1, spinning=False)
    with pytest.raises(StartupError, match=r"tokenizer\.json: sha256"):
        Registry.load((bundle,), options)
    assert [s.id for s in Registry.load((bundle,), options, verify="size")] == ["tiny"]
    truncate(bundle / "model.onnx")
    with pytest.raises(BundleFileError, match=r"model\.onnx: is \d+ bytes where bundle\.json"):
        Registry.load((bundle,), options, verify="size")


def test_verify_files_setting() -> None:
    assert parse_settings(["--model", "m"]).verify_files == "sha256"
    assert parse_settings(["--model", "m", "--verify-files", "size"]).verify_files == "size"
    env = {"EDGE_EMBED_VERIFY_FILES": "size"}
    assert parse_settings(["--model", "m"], environ=env).verify_files == "size"
    with pytest.raises(SystemExit):
        parse_settings(["--model", "m", "--verify-files", "md5"])
