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
    quantization = manifest.quantization or {}
    target = quantization.get("target")
    built_for = target.get("name") if isinstance(target, dict) else None
    recorded = target.get("variant") if isinstance(target, dict) else None
    variant = recorded.get("name") if isinstance(recorded, dict) else None
    params = quantization.get("params")
    saturation_free = isinstance(params, dict) and params.get("saturation_free") is True
    wrong_cpu = mismatch(built_for if isinstance(built_for, str) else None,
                         here if here is not None else _here(),
                         variant if isinstance(variant, str) else None, saturation_free)
    if wrong_cpu:
        out.append(wrong_cpu)
    if OPENVINO_PROVIDER in providers_used and manifest.precision != "fp32":
        out.append(f"{manifest.precision} bundle on OpenVINO: {OPENVINO_ADVICE}")
    return out
