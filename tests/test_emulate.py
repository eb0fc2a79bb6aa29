"""int8 numerics of an AVX2-only CPU on this machine, under `qemu-x86_64 -cpu Haswell`
(quantize/emulate.py): the emulated onnxruntime really takes the AVX2 kernels, and the variants
quantize writes for AVX2 and for VNNI stay correct and batch-invariant there.

Needs qemu-user (`make test-emulated`; CI installs it); the default suite deselects `qemu`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edge_embed.quantize.emulate import embed, emulate, saturation_probe, texts
from edge_embed.quantize.machine import this_target
from edge_embed.quantize.targets import VARIANT_FOR
from tests.fixtures.quantized import build_tiny_int8

pytestmark = pytest.mark.qemu

# Few short texts: each emulated run starts Python and onnxruntime under emulation (~30 s).
COUNT = 6
# As tests/test_quantize_variants.py: the tiny model's int8 against its fp32.
AGREEMENT = 0.999
INVARIANCE = 0.9999


def test_native_probe_matches_this_cpu() -> None:
    # VNNI sums u8 x s8 in 32 bits; AVX2 without it clips pair sums at 16 bits
    assert saturation_probe() == (this_target() == "avx2")


@pytest.mark.parametrize("target", ["avx2", "avx512-vnni"])
def test_variant_under_avx2_emulation(target: str, tiny_bundle: Path, tmp_path: Path) -> None:
    bundle = build_tiny_int8(tiny_bundle, tmp_path / target,
                             ["--target", target, "--exclude", "none"])
    run = emulate(bundle, COUNT)
    assert run.saturates, "the emulated CPU did not take onnxruntime's AVX2 int8 kernels"
    ref, _ = embed(tiny_bundle, texts(COUNT))  # fp32, natively
    assert np.all((run.alone * ref).sum(axis=1) >= AGREEMENT), VARIANT_FOR[target]
    assert np.all((run.alone * run.batched).sum(axis=1) >= INVARIANCE), VARIANT_FOR[target]
