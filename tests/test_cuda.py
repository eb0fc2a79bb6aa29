"""The CUDA provider serving an fp16 bundle. Runs only where onnxruntime-gpu sees a GPU."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from edge_embed.core.encoder import BundleModel
from edge_embed.core.runtime import RuntimeOptions
from tests.fixtures.quantized import build_tiny_int8

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(
        "CUDAExecutionProvider" not in ort.get_available_providers(),
        reason="no CUDA here: the installed onnxruntime has no CUDAExecutionProvider "
               "(run `make install-gpu` on a machine with an NVIDIA GPU)"),
]
TEXTS = ["a short one", "the quick brown fox jumps over the lazy dog " * 3, "x"]


def test_fp16_bundle_on_cuda_matches_fp32_on_cpu(tiny_bundle: Path, tmp_path: Path) -> None:
    fp16 = build_tiny_int8(tiny_bundle, tmp_path / "fp16", ["--precision", "fp16",
                                                            "--id", "tiny-fp16"])
    gpu = BundleModel(fp16, RuntimeOptions(providers=("cuda",)))
    assert gpu.providers.used[0] == "CUDAExecutionProvider"
    assert not gpu.providers.fell_back
    cpu = BundleModel(tiny_bundle)
    cos = np.sum(gpu.embed(TEXTS) * cpu.embed(TEXTS), axis=1)
    assert cos.min() >= 0.999


def test_cuda_vectors_are_batch_invariant(tiny_bundle: Path) -> None:
    gpu = BundleModel(tiny_bundle, RuntimeOptions(providers=("cuda",)))
    alone = np.concatenate([gpu.embed([t]) for t in TEXTS])
    together = gpu.embed(TEXTS)
    assert np.sum(alone * together, axis=1).min() >= 0.9999
