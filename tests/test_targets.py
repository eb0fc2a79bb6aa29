"""quantize --target's CPU families: detection from /proc/cpuinfo texts, the choice per target,
the refusals, and what the service says about a bundle built for another CPU."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from edge_embed.core.bundle import Manifest, Precision, Quantization
from edge_embed.core.errors import ProviderError
from edge_embed.core.machine import this_target
from edge_embed.core.runtime import PERTOKEN_ON_OPENVINO, refused_providers, resolve_providers
from edge_embed.core.targets import OPENVINO_ADVICE, VARIANT_FOR, mismatch
from edge_embed.quantize.recipe import Recipe
from edge_embed.quantize.targets import TargetError, resolve
from edge_embed.quantize.variants import VARIANTS, Variant, register
from edge_embed.service.advice import bundle_warnings

# Abridged /proc/cpuinfo texts of real CPU kinds (first processor block, flags shortened).
ZEN4_VNNI = ("processor\t: 0\nvendor_id\t: AuthenticAMD\nmodel name\t: AMD EPYC 9R14\n"
             "flags\t\t: fpu sse sse2 avx avx2 fma avx512f avx512bw avx512vl avx512_vnni "
             "avx512_bf16\n\nprocessor\t: 1\nflags\t\t: fpu\n")
HASWELL_AVX2 = ("processor\t: 0\nmodel name\t: Intel(R) Xeon(R) CPU E5-2680 v3\n"
                "flags\t\t: fpu sse sse2 ssse3 sse4_1 sse4_2 avx avx2 fma bmi2\n")
ZEN2_AVX2 = ("processor\t: 0\nmodel name\t: AMD EPYC 7R32\n"
             "flags\t\t: fpu sse2 avx avx2 fma sha_ni\n")
ALDER_LAKE_AVX_VNNI = ("processor\t: 0\nmodel name\t: 12th Gen Intel(R) Core(TM) i5-12400\n"
                       "flags\t\t: fpu sse2 avx avx2 fma avx_vnni\n")
GRAVITON3 = ("processor\t: 0\nBogoMIPS\t: 2100.00\nFeatures\t: fp asimd evtstrm aes pmull "
             "sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm jscvt fcma lrcpc dcpop sha3 "
             "sm3 sm4 asimddp sha512 sve asimdfhm dit uscat ilrcpc flagm ssbs paca pacg dcpodp "
             "svei8mm svebf16 i8mm bf16 dgh rng\nCPU implementer\t: 0x41\nCPU architecture: 8\n")
RASPBERRY_PI4 = ("processor\t: 0\nBogoMIPS\t: 108.00\nFeatures\t: fp asimd evtstrm crc32 cpuid\n"
                 "CPU implementer\t: 0x41\nCPU architecture: 8\n")
OLD_X86 = "processor\t: 0\nmodel name\t: Intel(R) Atom(TM)\nflags\t\t: fpu sse sse2 ssse3\n"


@pytest.mark.parametrize(("text", "target"), [
    (ZEN4_VNNI, "avx512-vnni"), (ALDER_LAKE_AVX_VNNI, "avx512-vnni"),
    (HASWELL_AVX2, "avx2"), (ZEN2_AVX2, "avx2"),
    (GRAVITON3, "arm64"), (RASPBERRY_PI4, "arm64"),
    (OLD_X86, None), ("", None),
])
def test_target_detected_from_cpuinfo(text: str, target: str | None, tmp_path: Path) -> None:
    assert this_target(cpuinfo(tmp_path, text)) == target


def test_only_the_first_processor_counts(tmp_path: Path) -> None:
    # a later block's flags are not this CPU's first core's: the first block decides
    text = "processor\t: 0\nflags\t\t: fpu sse2\n\nprocessor\t: 1\nflags\t\t: avx2\n"
    assert this_target(cpuinfo(tmp_path, text)) is None


def cpuinfo(folder: Path, text: str) -> Path:
    """A /proc/cpuinfo stand-in holding `text`."""
    path = folder / "cpuinfo"
    path.write_text(text, encoding="utf-8")
    return path


def test_each_target_picks_a_registered_variant() -> None:
    assert set(VARIANT_FOR) == {"avx512-vnni", "avx2", "arm64"}
    for target, variant in VARIANT_FOR.items():
        chosen = resolve(target)
        assert chosen.variant == variant in VARIANTS and not chosen.detected
    assert resolve("auto", detected="avx2").variant == VARIANT_FOR["avx2"]
    assert resolve("auto", detected="avx2").detected


def test_saturation_free_recipe_keeps_avx2_on_u8s8() -> None:
    assert resolve("avx2", saturation_free=True).variant == "u8s8"
    assert resolve("avx2", saturation_free=False).variant == "u8u8"
    assert resolve("auto", detected="avx2", saturation_free=True).variant == "u8s8"
    for target in ("avx512-vnni", "arm64"):  # no saturating kernel there: the same choice
        assert resolve(target, saturation_free=True).variant == VARIANT_FOR[target]
    assert Recipe().saturation_free  # the default: 8-bit weights bounded by pairs
    assert Recipe(weight_bits=7, weight_pairs=False).saturation_free
    assert Recipe(weight_bits=8, activation_bits=7).saturation_free
    assert not Recipe(weight_bits=8, activation_bits=8, weight_pairs=False).saturation_free


def test_unknown_or_undetectable_target_is_refused() -> None:
    with pytest.raises(TargetError, match="unknown target 'sse2'"):
        resolve("sse2")
    with pytest.raises(TargetError, match="--variant: unknown int8 variant 'u4'"):
        resolve("avx2", variant="u4")


def test_openvino_target_is_refused_with_the_fp32_advice() -> None:
    with pytest.raises(TargetError) as err:
        resolve("openvino")
    assert OPENVINO_ADVICE in str(err.value) and "fp32 bundle" in str(err.value)


def test_variant_override_is_recorded() -> None:
    t = resolve("avx512-vnni", variant="u8s8-rowmul")
    assert t.variant == "u8s8-rowmul" and t.to_json()["variant_chosen_by"] == "--variant"
    assert resolve("avx2").to_json()["variant_chosen_by"] == "target"


def test_registry_refuses_a_second_variant_of_the_same_name() -> None:
    with pytest.raises(ValueError, match="already registered"):
        register(Variant("u8s8", "u8", "s8"))


def _manifest(precision: Precision, target: str | None) -> Manifest:
    quantization = None if target is None else Quantization.of({"target": {"name": target}})
    return Manifest(id="m", dimensions=8, max_tokens=16, pooling="mean", normalize=True,
                    precision=precision, inputs=("input_ids",), output="last_hidden_state",
                    quantization=quantization)


def test_mismatch_names_both_and_the_fix() -> None:
    text = mismatch("avx2", "avx512-vnni")
    assert text is not None and "avx2" in text and "--target avx512-vnni" in text
    assert mismatch("avx2", "avx2") is None
    assert mismatch(None, "avx2") is None  # a bundle from before targets: nothing to compare
    assert mismatch("arm64", None) is None  # a CPU whose family we cannot tell
    # a saturation-free u8s8 bundle built for avx2 is the graph VNNI's target builds: no warning
    assert mismatch("avx2", "avx512-vnni", "u8s8", saturation_free=True) is None
    assert mismatch("avx512-vnni", "avx2", "u8s8", saturation_free=True) is None
    # an 8-bit u8s8 bundle saturates on AVX2, and a u8u8 one is slower on VNNI: warned
    warned = mismatch("avx512-vnni", "avx2", "u8s8", saturation_free=False)
    assert warned is not None and "u8u8" in warned
    assert mismatch("avx2", "avx512-vnni", "u8u8", saturation_free=False) is not None


def test_bundle_warnings() -> None:
    cpu = ("CPUExecutionProvider",)
    ov = ("OpenVINOExecutionProvider", "CPUExecutionProvider")
    assert bundle_warnings(_manifest("int8", "avx2"), cpu, here="avx2") == []
    assert bundle_warnings(_manifest("fp32", None), ov, here="avx2") == []
    [wrong] = bundle_warnings(_manifest("int8", "arm64"), cpu, here="avx2")
    assert "arm64" in wrong
    [advice] = bundle_warnings(_manifest("int8", "avx2"), ov, here="avx2")
    assert "fp32 bundle" in advice


def test_pertoken_int8_is_refused_by_openvino_whatever_is_installed() -> None:
    pertoken = dataclasses.replace(_manifest("int8", "avx2"), quantization=Quantization.of(
        {"method": "pertoken", "target": {"name": "avx2"}}))
    refused = refused_providers(pertoken)
    assert refused == {"openvino": PERTOKEN_ON_OPENVINO}
    assert refused_providers(_manifest("fp32", None)) == {}
    installed = ["OpenVINOExecutionProvider", "CPUExecutionProvider"]
    with pytest.raises(ProviderError) as err:
        resolve_providers(("openvino",), False, installed, refused)
    assert PERTOKEN_ON_OPENVINO in str(err.value) and "--provider-fallback" in str(err.value)
    chosen, choice = resolve_providers(("openvino",), True, installed, refused)
    assert chosen == ["CPUExecutionProvider"] and choice.fell_back
    assert PERTOKEN_ON_OPENVINO in choice.message
    chosen, choice = resolve_providers(("openvino",), False, installed, {})
    assert chosen[0] == "OpenVINOExecutionProvider" and not choice.fell_back
