"""The machine a bundle's figures were measured on: CPU, the instruction sets that pick
onnxruntime's int8 kernels, and onnxruntime's version.

The same int8 graph gives cosines that differ in the 4th-5th digit from one CPU to another
(AVX-512 VNNI sums u8 x s8 products in 32 bits, AVX2 saturates pair sums at 16 bits), so a
manifest's quality figures and the sensitivity search's steps are only comparable between
machines with the same kernels; the manifest says which ones these were.
"""

from __future__ import annotations

import platform
from pathlib import Path

from edge_embed.export.tooling import tool_versions

CPUINFO = Path("/proc/cpuinfo")
# The /proc/cpuinfo flags that decide which int8 matmul kernel MLAS runs: x86 (AVX2, AVX-512,
# the VNNI dot-product extensions, AMX tiles) and arm64 (dot product, int8 matrix multiply).
ISA_FLAGS = ("avx2", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni", "amx_tile", "amx_int8",
             "asimddp", "i8mm", "sve")
# Where /proc/cpuinfo names the processor: x86 "model name", some arm kernels "Hardware" or
# "Processor"; arm64 often names none, and the architecture stands in.
_NAME_KEYS = ("model name", "hardware", "processor name", "cpu model")


def _fields(text: str) -> dict[str, str]:
    """The first processor's `key: value` lines, keys lowercased."""
    fields: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip().lower() not in fields:
            fields[key.strip().lower()] = value.strip()
    return fields


def measured_on(cpuinfo: Path = CPUINFO) -> dict[str, object]:
    """{cpu, isa, onnxruntime}: what a manifest records beside figures measured here."""
    try:
        fields = _fields(cpuinfo.read_text(encoding="utf-8", errors="replace"))
    except OSError:
        fields = {}
    flags = set((fields.get("flags") or fields.get("features") or "").split())
    cpu = next((fields[k] for k in _NAME_KEYS if fields.get(k)), "") or platform.machine()
    return {"cpu": cpu, "isa": [f for f in ISA_FLAGS if f in flags],
            "onnxruntime": tool_versions().get("onnxruntime", "")}
