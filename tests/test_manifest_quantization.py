"""The manifest's `quantization` section: parsed once into typed fields (what the runtime and the
service act on), written back exactly as recorded."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

from edge_embed.core.bundle import MANIFEST_NAME, Quantization, parse_manifest
from edge_embed.core.errors import BundleError
from edge_embed.core.runtime import graph_level_name, refused_providers
from edge_embed.service.advice import bundle_warnings
from tests.fixtures.tiny import COMMITTED_BUNDLES, TINY_BUNDLE_ID

# What quantize records, in its order, with provenance the readers never look at.
SECTION: dict[str, Any] = {
    "method": "pertoken", "precision": "int8",
    "params": {"variant": {"name": "u8s8"}, "saturation_free": True, "qmax": 127.0},
    "fused": True, "fusion": {"MultiHeadAttention": 2},
    "selection": {"tried": [{"method": "pertoken", "figures": {"cosine_min": 0.99}}]},
    "target": {"name": "avx2", "detected": True, "variant": {"name": "u8s8"}},
    "verdict": {"passed": True},
}


def int8_manifest_json(section: Any) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(
        (COMMITTED_BUNDLES / TINY_BUNDLE_ID / MANIFEST_NAME).read_text("utf-8"))
    data.update(precision="int8", quantization=copy.deepcopy(section))
    return data


def test_the_section_is_typed_once_and_written_back_byte_for_byte() -> None:
    data = int8_manifest_json(SECTION)
    manifest = parse_manifest(data, Path(MANIFEST_NAME))
    q = manifest.quantization
    assert isinstance(q, Quantization)
    assert (q.method, q.fused, q.target, q.variant, q.saturation_free) == (
        "pertoken", True, "avx2", "u8s8", True)
    assert q["selection"]["tried"][0]["figures"]["cosine_min"] == 0.99  # provenance, as read
    assert manifest.to_json() == json.dumps(data, indent=2, ensure_ascii=False) + "\n"
    # what the runtime and the service decide from it
    assert graph_level_name(manifest, "auto") == "basic"
    assert set(refused_providers(manifest)) == {"openvino"}
    assert bundle_warnings(manifest, ("CPUExecutionProvider",), here="avx512-vnni") == []
    [warning] = bundle_warnings(manifest, ("CPUExecutionProvider",), here="arm64")
    assert "built for avx2" in warning


def test_a_section_recorded_before_targets_reads_as_no_target() -> None:
    manifest = parse_manifest(int8_manifest_json({"method": "dynamic"}), Path(MANIFEST_NAME))
    q = manifest.quantization
    assert q is not None and (q.target, q.variant, q.fused, q.saturation_free) == (
        None, None, False, False)
    assert graph_level_name(manifest, "auto") == "all" and refused_providers(manifest) == {}


@pytest.mark.parametrize(("change", "field"), [
    ({"method": 8}, "quantization.method"),
    ({"fused": "yes"}, "quantization.fused"),
    ({"target": "avx2"}, "quantization.target"),
    ({"target": {"name": 2}}, "quantization.target.name"),
    ({"target": {"name": "avx2", "variant": "u8s8"}}, "quantization.target.variant"),
    ({"params": []}, "quantization.params"),
])
def test_a_wrong_type_is_refused_naming_the_field(change: dict[str, Any], field: str) -> None:
    with pytest.raises(BundleError, match=f"field '{field}'"):
        parse_manifest(int8_manifest_json({**SECTION, **change}), Path(MANIFEST_NAME))
