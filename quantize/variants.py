"""The per-token int8 graph's variants: which integer types the matmul kernel sees, and where the
row scale is applied (in `MatMulIntegerToFloat`, or a graph `Mul`: `rowmul`). Every variant keeps
a scale per activation row (token), so every one is batch-invariant; they differ in which
onnxruntime (MLAS) integer GEMM they reach. What MLAS runs for each on x86 and arm64, and the
figures: docs/int8-variants.md, "The variants".

A variant is only the kernel's types and the row scale's place; value ranges and smoothing are the
recipe's levers (quantize/recipe.py; saturation.py owns which ranges cannot saturate) and compose
with any variant. A new kernel arrangement adds a `Variant` with `register`; `quantize_pertoken`
reads only the fields below.
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
