"""int8 numerics of an AVX2-only CPU on this machine, under `qemu-x86_64 -cpu Haswell`
(quantize/emulate.py): the emulated onnxruntime really takes the AVX2 kernels, and the bundles
quantize writes for AVX2 and for VNNI pass their canary gate there and stay batch-invariant.

Needs qemu-user (`make test-emulated`; CI installs it); the default suite deselects `qemu`.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from edge_embed.core.canary import FP32_GATE
from edge_embed.core.machine import this_target
from edge_embed.quantize.emulate import report, saturation_probe
from tests.fixtures.quantized import build_tiny_int8

pytestmark = pytest.mark.qemu

# Batch invariance: the canary agreement's own bar for fp32 (per-token int8 measured 1.0 natively
# and under emulation).
INVARIANCE = FP32_GATE


def test_native_probe_matches_this_cpu() -> None:
    # VNNI sums u8 x s8 in 32 bits; AVX2 without it clips pair sums at 16 bits
    assert saturation_probe() == (this_target() == "avx2")


# The default recipe's pair-bounded 8-bit weights and 7-bit weights (u8s8 for both targets: their
# pair sums cannot saturate) and AVX2's plain 8-bit bundle (u8u8): each computes on the emulated
# AVX2 CPU what it computes here.
@pytest.mark.parametrize(("target", "bits"), [("avx2", "8"), ("avx512-vnni", "8"),
                                              ("avx512-vnni", "7"), ("avx2", "8-plain")])
def test_bundle_under_avx2_emulation(target: str, bits: str, tiny_bundle: Path,
                                     tmp_path: Path) -> None:
    recipe = (["--weight-bits", "8", "--no-weight-pairs"] if bits == "8-plain"
              else ["--weight-bits", bits])
    bundle = build_tiny_int8(tiny_bundle, tmp_path / f"{target}-{bits}",
                             ["--target", target, "--exclude", "none", *recipe])
    result = report(bundle)
    assert result["emulated_saturates"] is True, "the emulated CPU did not take the AVX2 kernels"
    assert result["emulated_passes_gate"] is True, result
    batch = result["emulated_batch_invariance_min"]
    assert isinstance(batch, float) and batch >= INVARIANCE, result
    same = result["emulated_vs_native_min"]
    assert isinstance(same, float) and same >= INVARIANCE, result
