"""`quantize --target`: the CPU family a bundle is built for, and the int8 variant it gets.

avx512-vnni: u8s8; avx2: u8s8 for a saturation-free recipe, else u8u8; arm64: s8s8; openvino:
refused (serve the fp32 bundle). Why each, with the figures: docs/int8-variants.md, "Per target:
the choice and why".
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
