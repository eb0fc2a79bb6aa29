"""`quantize --target`: the CPU family a bundle is built for, and the int8 variant it gets.

Why each choice (the kernels behind each variant: quantize/variants.py; the figures:
docs/int8-variants.md):

- avx512-vnni (also AVX-VNNI): u8s8. `vpdpbusd` multiplies u8 by s8 and sums in 32 bits; u8u8
  is sent to the same dispatch and measured 0.6-0.8x u8s8, and s8 activations fall to
  onnxruntime's portable C loop (measured 5-8x slower).
- avx2 (no VNNI): u8s8 for a saturation-free recipe (the default's 8-bit weights bounded per lane
  pair, 7-bit weights, or 7-bit activations), else u8u8. The u8s8 kernel's `vpmaddubsw` sums each
  pair of u8*s8 products into a saturating 16-bit lane: with plain 8-bit weights and our u8
  activations around 128, large weights overflow it (MiniLM's canaries under emulated AVX2: min
  cosine 0.9961 against the same graph on VNNI, where u8u8 gives 0.9999). With |w| <= 63 (or
  activations <= 127) a pair stays below 32767 (saturation.py), and so does each lane pair whose
  same-sign weights add up to at most 128 (pairs.py): the u8s8 sums are exact and its vectors are
  the VNNI ones (the 7-bit and the pair-bounded MiniLM bundles' canaries under emulated AVX2: min
  cosine 0.99999 against VNNI, the float operators' rounding alone), at twice the products per
  instruction of the U8U8 kernel, which widens to 16 bits first. So u8u8 is kept only for recipes
  that can saturate (plain 8-bit weights and 8-bit activations).
- arm64: s8s8. `sdot` (or `smmla` with i8mm) takes both operands signed, the symmetric form of
  our quantization with no zero-point correction; u8 inputs reach `udot` after a flip of B
  while packing, the same speed class. All sum in 32 bits: no saturation on any arm64 path.
- openvino: refused. OpenVINO cannot run the per-token graphs at all (it turns their per-row
  QuantizeLinear into a FakeQuantize whose shape check fails), runs onnxruntime's other int8
  graphs several times slower than the CPU provider, and its own int8 format is not written
  here batch-invariantly: serve the fp32 bundle with OpenVINO (figures: docs/int8-variants.md).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from edge_embed.core.machine import this_target
from edge_embed.core.targets import (
    OPENVINO_ADVICE,
    SATURATION_FREE_VARIANT_FOR,
    VARIANT_FOR,
)

from .variants import get

AUTO = "auto"
OPENVINO = "openvino"
TARGETS = (AUTO, *VARIANT_FOR, OPENVINO)


class TargetError(ValueError):
    """A target that cannot be built for (OpenVINO's int8) or cannot be detected."""


@dataclass(frozen=True)
class Target:
    name: str
    variant: str
    detected: bool  # from this machine's /proc/cpuinfo (--target auto)
    overridden: bool = False  # the variant named by --variant instead of the target's choice

    def to_json(self) -> dict[str, object]:
        return {"name": self.name, "detected": self.detected,
                "variant_chosen_by": "--variant" if self.overridden else "target",
                "variant": get(self.variant).params()}


def resolve(requested: str, detected: str | None = None, variant: str | None = None,
            saturation_free: bool = False) -> Target:
    """The target `requested` means here (auto: this machine's, or `detected` where given),
    with `variant` instead of its own choice where one is named; `saturation_free`: the
    recipe's u8 x s8 pair sums cannot saturate (quantize/saturation.py)."""
    if variant is not None:
        try:
            get(variant)
        except ValueError as exc:
            raise TargetError(f"--variant: {exc}") from None
        return dataclasses.replace(resolve(requested, detected, None, saturation_free),
                                   variant=variant, overridden=True)
    choice = SATURATION_FREE_VARIANT_FOR if saturation_free else VARIANT_FOR
    if requested == OPENVINO:
        raise TargetError(f"--target openvino: {OPENVINO_ADVICE}")
    if requested == AUTO:
        name = detected if detected is not None else this_target()
        if name is None:
            raise TargetError("--target auto: this CPU's /proc/cpuinfo names none of "
                              f"{', '.join(VARIANT_FOR)}; name the target with --target")
        return Target(name, choice[name], detected=True)
    if requested not in VARIANT_FOR:
        raise TargetError(f"--target: unknown target '{requested}' (choose from "
                          f"{', '.join(TARGETS)})")
    return Target(requested, choice[requested], detected=False)
