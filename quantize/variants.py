"""The per-token int8 graph's variants: which integer types the matmul kernel sees, and where the
row scale is applied. Every variant keeps a scale per activation row (token), so every one is
batch-invariant; they differ in which onnxruntime (MLAS) integer GEMM they reach.

What MLAS runs for each pair of types (onnxruntime's `core/mlas/lib/platform.cpp`, the
dispatch table it fills from CPUID; `qgemm.h`, `MlasGemmQuantGetDispatch`):

- x86 with AVX2 and no VNNI: u8 x s8 goes to the AVX2 U8S8 kernel, `vpmaddubsw`, which adds
  each pair of u8*s8 products into a *saturating* 16-bit lane before widening (two products of
  255*127 already exceed 32767); u8 x u8 goes to a separate AVX2 U8U8 kernel that widens both
  to 16 bits first and multiplies with `vpmaddwd` (no saturation, half the products per
  instruction). s8 activations have no AVX2 kernel at all: s8 x s8 and s8 x u8 fall to the
  portable C loop (`MlasGemmQuantDispatchDefault`).
- x86 with AVX-512 VNNI or AVX-VNNI: u8 x s8 runs `vpdpbusd` (u8*s8 products summed straight
  into 32 bits, no saturation); u8 x u8 is sent to the same dispatch (its B matrix is flipped
  to s8 while packing), yet measured 0.6-0.8x u8s8 on MiniLM; s8 activations again fall to the
  portable loop unless the CPU has AVX-VNNI-INT8 (`vpdpbssd`, newer Intel only).
- arm64 with the dot-product extension (`asimddp`): u8 x u8 and u8 x s8 run `udot` (B flipped
  to u8 while packing), s8 x s8 runs `sdot`; with `i8mm` they become `ummla` / `smmla`. All
  sum into 32 bits. Without `asimddp`: the plain NEON kernels.

Where the row scale goes: `MatMulIntegerToFloat` takes the row scale itself (onnxruntime then
scales the GEMM's output in a pass of its own, as a non-scalar A scale is not fused into the
GEMM's output stage), or the kernel gets a scalar A scale of 1 and the row scale is one `Mul`
in the graph (`rowmul`). Both give the same numbers up to float rounding; measured on MiniLM
with VNNI, `rowmul` was no faster (docs/int8-variants.md).

Not a variant: `DynamicQuantizeMatMul` quantizes its float input with one scale for the whole
tensor (the whole padded batch), which is what makes `quantize_dynamic` batch-dependent.

A variant is only the kernel's types and the row scale's place. The value ranges (7-bit or
pair-bounded weights, 7-bit activations, per-column clipping) and smoothing are the recipe's levers
(quantize/recipe.py; saturation.py owns which ranges cannot saturate) and compose with any variant;
a new kernel arrangement adds a `Variant` with `register`. `quantize_pertoken` reads only the fields
below.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Literal

IntType = Literal["u8", "s8"]
RowScale = Literal["kernel", "rowmul"]


@dataclass(frozen=True)
class Variant:
    name: str
    activations: IntType  # u8: symmetric around 128 (or one-sided from 0); s8: around 0
    weights: IntType  # s8: symmetric around 0; u8: the same values + 128, zero point 128
    row_scale: RowScale = "kernel"
    summary: str = ""

    def params(self) -> dict[str, object]:
        """What the manifest records about the variant."""
        return asdict(self)


DEFAULT = "u8s8"
VARIANTS: dict[str, Variant] = {}


def register(variant: Variant) -> Variant:
    if variant.name in VARIANTS:
        raise ValueError(f"int8 variant {variant.name} is already registered")
    VARIANTS[variant.name] = variant
    return variant


register(Variant("u8s8", "u8", "s8", summary="u8 activations x s8 weights: vpdpbusd on VNNI, "
                 "vpmaddubsw (16-bit saturating pair sums) on AVX2, udot on arm64"))
register(Variant("u8u8", "u8", "u8", summary="u8 x u8: AVX2's non-saturating U8U8 kernel "
                 "(vpmaddwd); on VNNI the same kernel as u8s8; udot on arm64"))
register(Variant("s8s8", "s8", "s8", summary="s8 x s8: sdot/smmla on arm64; on x86 only with "
                 "AVX-VNNI-INT8, else onnxruntime's portable C loop"))
register(Variant("u8s8-rowmul", "u8", "s8", row_scale="rowmul",
                 summary="u8s8 with the row scale as a graph Mul after the kernel"))
register(Variant("u8u8-rowmul", "u8", "u8", row_scale="rowmul",
                 summary="u8u8 with the row scale as a graph Mul after the kernel"))


def get(name: str) -> Variant:
    try:
        return VARIANTS[name]
    except KeyError:
        raise ValueError(f"unknown int8 variant '{name}' (known: {', '.join(VARIANTS)})") from None
