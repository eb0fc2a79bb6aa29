"""What the service tells an operator about a bundle on this machine, at start-up (a WARNING
log line) and in /health: an int8 bundle built for another CPU family's kernels, and an int8
bundle served through OpenVINO."""

from __future__ import annotations

import functools

from edge_embed.core.bundle import Manifest
from edge_embed.core.machine import this_target
from edge_embed.core.targets import OPENVINO_ADVICE, mismatch

OPENVINO_PROVIDER = "OpenVINOExecutionProvider"


@functools.cache
def _here() -> str | None:
    return this_target()


def bundle_warnings(manifest: Manifest, providers_used: tuple[str, ...],
                    here: str | None = None) -> list[str]:
    """Each thing about serving `manifest` with these providers that the operator should fix."""
    out: list[str] = []
    q = manifest.quantization
    wrong_cpu = (None if q is None else
                 mismatch(q.target, here if here is not None else _here(), q.variant,
                          q.saturation_free))
    if wrong_cpu:
        out.append(wrong_cpu)
    if OPENVINO_PROVIDER in providers_used and manifest.precision != "fp32":
        out.append(f"{manifest.precision} bundle on OpenVINO: {OPENVINO_ADVICE}")
    return out
