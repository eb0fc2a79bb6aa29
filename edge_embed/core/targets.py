"""The int8 variant each CPU target's kernels want (u8s8, u8u8 or s8s8), and the warning for a
bundle served on another target than it was built for. Why each choice: quantize/targets.py and
docs/int8-variants.md; the build side (`quantize --target`) lives there too.
"""

from __future__ import annotations

from .machine import ARM_TARGET, X86_TARGETS

# Each target's variant for a recipe whose u8 x s8 pair sums can saturate (8-bit both ways).
VARIANT_FOR: dict[str, str] = {X86_TARGETS[0]: "u8s8", X86_TARGETS[1]: "u8u8",
                               ARM_TARGET: "s8s8"}
# Where a saturation-free recipe (quantize/recipe.py) chooses otherwise: AVX2's u8s8
# kernel is exact then, and faster than its u8u8 one.
SATURATION_FREE_VARIANT_FOR: dict[str, str] = {**VARIANT_FOR, X86_TARGETS[1]: "u8s8"}
OPENVINO_ADVICE = ("OpenVINO runs onnxruntime's int8 graphs several times slower than the CPU "
                   "provider (and cannot run per-token ones), and no batch-invariant int8 graph "
                   "in OpenVINO's own format is written here: serve the fp32 bundle with "
                   "--provider openvino")


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
