"""The machine a bundle's figures were measured on: CPU and the instruction sets that pick
onnxruntime's int8 kernels (core/tooling.py's measured_on adds onnxruntime's version).

The same int8 graph gives cosines that differ in the 4th-5th digit from one CPU to another
(AVX-512 VNNI sums u8 x s8 products in 32 bits, AVX2 saturates pair sums at 16 bits), so a
manifest's quality figures and the sensitivity search's steps are only comparable between
machines with the same kernels; the manifest says which ones these were.

It also names the machine's int8 *target*: the instruction-set family whose kernels decide
which int8 graph variant is fastest (quantize --target, quantize/targets.py), so that quantize
can pick one for the build machine and the service can tell when a bundle runs on another.
"""

from __future__ import annotations

import platform
from pathlib import Path

CPUINFO = Path("/proc/cpuinfo")
# The /proc/cpuinfo flags that decide which int8 matmul kernel MLAS runs: x86 (AVX2, AVX-512,
# the VNNI dot-product extensions, AMX tiles) and arm64 (dot product, int8 matrix multiply).
ISA_FLAGS = ("avx2", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni", "amx_tile", "amx_int8",
             "asimddp", "i8mm", "sve")
# Where /proc/cpuinfo names the processor: x86 "model name", some arm kernels "Hardware" or
# "Processor"; arm64 often names none, and the architecture stands in.
_NAME_KEYS = ("model name", "hardware", "processor name", "cpu model")


# The int8 targets a CPU can be, by what its flags say (the first that matches wins): AVX-512
# VNNI and AVX-VNNI reach the same MLAS u8s8 dot-product kernels (vpdpbusd, 32-bit sums), so
# both are one target; AVX2 without either runs the 16-bit saturating vpmaddubsw path; any arm64
# CPU (`asimd` in its Features) is one target, its dot-product flavours (udot/sdot, i8mm) all
# summing in 32 bits.
VNNI_FLAGS = ("avx512_vnni", "avx_vnni")
X86_TARGETS = ("avx512-vnni", "avx2")
ARM_TARGET = "arm64"
ARM_FLAGS = ("asimd",)


def _fields(text: str) -> dict[str, str]:
    """The first processor's `key: value` lines, keys lowercased."""
    fields: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip().lower() not in fields:
            fields[key.strip().lower()] = value.strip()
    return fields


def _read(cpuinfo: Path) -> dict[str, str]:
    try:
        return _fields(cpuinfo.read_text(encoding="utf-8", errors="replace"))
    except OSError:
        return {}


def _flags(fields: dict[str, str]) -> set[str]:
    return set((fields.get("flags") or fields.get("features") or "").split())


def _target(flags: set[str]) -> str | None:
    if flags & set(VNNI_FLAGS) and "avx2" in flags:
        return X86_TARGETS[0]
    if "avx2" in flags:
        return X86_TARGETS[1]
    if flags & set(ARM_FLAGS):
        return ARM_TARGET
    return None


def this_target(cpuinfo: Path = CPUINFO) -> str | None:
    """This machine's int8 target (None where /proc/cpuinfo is unreadable or names none)."""
    return _target(_flags(_read(cpuinfo)))


def cpu_facts(cpuinfo: Path = CPUINFO) -> dict[str, object]:
    """{cpu, isa, target}: this CPU's name, its int8-kernel flags and its int8 target."""
    fields = _read(cpuinfo)
    flags = _flags(fields)
    cpu = next((fields[k] for k in _NAME_KEYS if fields.get(k)), "") or platform.machine()
    return {"cpu": cpu, "isa": [f for f in ISA_FLAGS if f in flags], "target": _target(flags)}
