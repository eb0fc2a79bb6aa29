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

from edge_embed.core.machine import ARM_TARGET, X86_TARGETS, this_target

from .variants import get

AUTO = "auto"
OPENVINO = "openvino"
# Each target's variant for a recipe whose u8 x s8 pair sums can saturate (8-bit both ways).
VARIANT_FOR: dict[str, str] = {X86_TARGETS[0]: "u8s8", X86_TARGETS[1]: "u8u8",
                               ARM_TARGET: "s8s8"}
# Where a saturation-free recipe (recipe.Recipe.saturation_free) chooses otherwise: AVX2's u8s8
# kernel is exact then, and faster than its u8u8 one.
SATURATION_FREE_VARIANT_FOR: dict[str, str] = {**VARIANT_FOR, X86_TARGETS[1]: "u8s8"}
TARGETS = (AUTO, *VARIANT_FOR, OPENVINO)
OPENVINO_ADVICE = ("OpenVINO runs onnxruntime's int8 graphs several times slower than the CPU "
                   "provider (and cannot run per-token ones), and no batch-invariant int8 graph "
                   "in OpenVINO's own format is written here: serve the fp32 bundle with "
                   "--provider openvino")


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


def mismatch(bundle_target: str | None, here: str | None, variant: str | None = None,
             saturation_free: bool = False) -> str | None:
    """The warning for a bundle built for another CPU family than this one, else None.
    `variant` and `saturation_free`: what the bundle's manifest records; a bundle whose variant
    is the one this CPU's target would pick for the same recipe (a saturation-free u8s8 bundle
    built for avx2, served on VNNI) is the graph a rebuild would write: no warning."""
    if bundle_target is None or here is None or bundle_target == here:
        return None
    choice = SATURATION_FREE_VARIANT_FOR if saturation_free else VARIANT_FOR
    if variant is not None and variant == choice.get(here):
        return None
    built = variant or VARIANT_FOR.get(bundle_target, "?")
    return (f"bundle built for {bundle_target} ({built} int8 kernels) runs on a {here} CPU, "
            f"whose variant for this recipe is {choice.get(here, '?')}: rebuild it with "
            f"`edge-embed quantize --target {here}` (or --target auto on this machine)")
