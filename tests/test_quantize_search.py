"""The sensitivity search: the service's feed and pooling in its switchboard."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import onnx

from edge_embed.quantize import sensitivity
from edge_embed.quantize.evaluate import cosines
from edge_embed.quantize.fusion import fuse
from edge_embed.service.bundle import load_manifest
from edge_embed.service.encoder import BundleModel, TextTokenizer
from edge_embed.service.runtime import graph_level
from tests.fixtures.quantized import build_tiny_int8

TEXTS = ["hello world", "a", "The quick brown fox jumps over the lazy dog.", "café",
         "query: what is the capital of France?", "Numbers like 3.14159 and 2718.",
         " ".join(["the museum opens at ten and closes at six on weekdays"] * 6)]


def _switchboard(bundle: Path, fused: bool) -> tuple[sensitivity._Switchboard, list[np.ndarray]]:
    manifest = load_manifest(bundle)
    model = onnx.load(str(bundle / manifest.model_file))
    if fused:
        model = fuse(model, skip_layer_norm=False).model
    tokenizer = TextTokenizer(bundle / manifest.tokenizer_file, manifest.max_tokens)
    level = graph_level(dataclasses.replace(manifest, quantization={"fused": fused}), "auto")
    board = sensitivity._Switchboard(model, manifest, tokenizer, level)
    return board, [t.ids for t in tokenizer.encode(TEXTS)]


def test_switchboard_all_fp32_is_the_fp32_bundle(tiny_bundle: Path) -> None:
    board, rows = _switchboard(tiny_bundle, fused=False)
    got = board.embed(rows, set(board.switches))
    want = BundleModel(tiny_bundle).embed(TEXTS)
    assert cosines(got, want).min() > 1 - 1e-6


def test_switchboard_all_int8_is_the_int8_bundle(tiny_bundle: Path, tmp_path: Path) -> None:
    # Every matmul in int8, fused as quantize fuses: the bundle quantize writes, vector for vector.
    int8 = build_tiny_int8(tiny_bundle, tmp_path / "int8", ["--exclude", "none"])
    board, rows = _switchboard(tiny_bundle, fused=True)
    got = board.embed(rows, set())
    want = BundleModel(int8).embed(TEXTS)
    assert cosines(got, want).min() > 1 - 1e-6
    # and it is int8: not the fp32 vectors
    assert np.abs(got - board.embed(rows, set(board.switches))).max() > 1e-6
