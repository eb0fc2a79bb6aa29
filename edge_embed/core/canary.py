"""Canaries: a few fixed inputs a bundle carries with its reference vectors, checked at start-up.

A bundle built on one machine is served on others whose kernels differ (int8 above all: AVX-512
VNNI, AVX2-only and ARM dot-product kernels do not round alike). The offline tools embed the
canary texts with the fp32 reference (export: the fp32 graph itself; quantize: the fp32 bundle
it is measured against) and store texts and vectors in `canary.json`, listed in the manifest's
`files` so that its sha256 is verified with the rest. The service embeds the same texts at
warm-up through the same tokenizer, cut, pooling and normalization it serves with, on this
machine's kernels, and compares: below the bundle's gate it refuses to serve the model unless
told otherwise (`--canary-failure serve`).

Standard library and numpy only: the serving install imports it.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from edge_embed.core.errors import BundleError, CanaryFailed

from .agreement import cosines
from .bundle import CanaryInfo, Manifest, Precision
from .encoder import BundleModel
from .pooling import F32

log = logging.getLogger("edge_embed.canary")

CANARY_FILE = "canary.json"
# The canaries, fixed here and nowhere else: short texts of the kinds requests carry (a query, a
# sentence, code, a number-heavy line, non-Latin script) and one long text, built per bundle to
# pass its token limit, so that the cut is part of what is checked.
CANARY_TEXTS: tuple[str, ...] = (
    "how do I reset my password?",
    "The quick brown fox jumps over the lazy dog near the riverbank.",
    "def add(a, b):\n    return a + b",
    "Order #4521 shipped on 2024-03-18: 3 items, total $129.90.",
    "東京は日本の首都です。",
)
_LONG_WORDS = ("edge", "embedding", "servers", "check", "their", "vectors", "against", "a",
               "reference", "before", "serving", "traffic")
# fp32 bundles: the same graph on any CPU agrees with itself to float32 rounding (a vector's
# cosine with its copy through another batch reads 0.9999999+); anything below this is a wrong
# graph, tokenizer or runtime, not rounding.
FP32_GATE = 0.9999
# Quantized bundles: the gate is the bundle's own measured worst case (quality.cosine_min, or
# the canaries' agreement on the build machine if lower) less this margin, because int8 vectors
# differ between CPUs: AVX-512 VNNI, AVX2-only (vpmaddubsw's 16-bit pair sums saturate) and ARM
# dot-product kernels. 0.01 is about three times the spread seen across those CPUs (figures:
# docs/measurements.md#quantized_kernel_margin).
QUANTIZED_KERNEL_MARGIN = 0.01
# Agreement figures are rounded to this many decimals: enough to see a 1e-5 drift, and an fp32
# bundle on its build machine reads exactly 1.0 rather than 0.99999994.
_DECIMALS = 6

CanaryStatus = Literal["pass", "failed-serving", "absent"]
CanaryFailure = Literal["refuse", "serve"]
CANARY_FAILURES: tuple[CanaryFailure, ...] = ("refuse", "serve")


def canary_texts(max_tokens: int) -> list[str]:
    """The canary texts for a model cut at `max_tokens`: the short ones, then the long one.

    Every word of the long text is at least one token, so `max_tokens + 1` words pass the cut
    whatever the tokenizer."""
    words = [_LONG_WORDS[i % len(_LONG_WORDS)] for i in range(max_tokens + 1)]
    return [*CANARY_TEXTS, " ".join(words)]


def embed(model: BundleModel, texts: Sequence[str]) -> F32:
    """The canaries' vectors through `model`, one input per run: padding the short ones to the
    long one's length would cost 6 x 256 tokens on all-MiniLM-L6-v2 where one at a time costs
    332, and the start-up check runs before the server is ready."""
    return model.embed(texts, batch_size=1)


def agreement(reference: F32, vectors: F32) -> float:
    """The canaries' worst cosine against their reference, rounded (see _DECIMALS)."""
    return round(float(cosines(reference, vectors).min()), _DECIMALS)


def gate_for(precision: Precision, quality_min: float | None, build_agreement: float) -> float:
    """The agreement a bundle of `precision` must reach on a serving machine."""
    if precision == "fp32":
        return FP32_GATE
    worst = build_agreement if quality_min is None else min(quality_min, build_agreement)
    return round(worst - QUANTIZED_KERNEL_MARGIN, _DECIMALS)


def gate_rule(precision: Precision) -> str:
    """The gate's rule in words, recorded beside it in bundle.json."""
    if precision == "fp32":
        return f"fp32: {FP32_GATE}"
    return (f"{precision}: min(quality.cosine_min, build_agreement) - {QUANTIZED_KERNEL_MARGIN} "
            "(quantized kernels differ between CPUs)")


# ---- the file ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class Canaries:
    texts: list[str]
    vectors: F32  # [len(texts), dimensions]: the reference


def write(folder: Path, texts: list[str], vectors: F32) -> Path:
    """`canary.json`: texts and reference vectors, the same bytes for the same vectors."""
    path = folder / CANARY_FILE
    data = {"texts": texts,
            "vectors": [[float(x) for x in row] for row in np.asarray(vectors, np.float32)]}
    path.write_text(json.dumps(data, ensure_ascii=False) + "\n", encoding="utf-8")
    return path


def build(folder: Path, texts: list[str], reference: F32, candidate: BundleModel,
          quality_min: float | None) -> CanaryInfo:
    """For the offline tools: write `texts` and their `reference` vectors into `folder` (the
    bundle being built, whose model is `candidate`), measure `candidate` against them on this
    machine as the service will, and return the manifest's `canary` section."""
    write(folder, texts, reference)
    measured = agreement(reference, embed(candidate, texts))
    precision = candidate.manifest.precision
    return CanaryInfo(file=CANARY_FILE, count=len(texts),
                      gate=gate_for(precision, quality_min, measured),
                      gate_rule=gate_rule(precision), build_agreement=measured)


def load(folder: Path, manifest: Manifest) -> Canaries | None:
    """The bundle's canaries, or None for a bundle built without them."""
    info = manifest.canary
    if info is None:
        return None
    path = folder / info.file
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise BundleError(path, "is missing; bundle.json's canary section names it") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BundleError(path, f"is not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise BundleError(path, "must be a JSON object with texts and vectors")
    texts, rows = data.get("texts"), data.get("vectors")
    if not isinstance(texts, list) or not texts or not all(isinstance(t, str) for t in texts):
        raise BundleError(path, "must be a non-empty list of strings", "texts")
    if len(texts) != info.count:
        raise BundleError(path, f"has {len(texts)} texts where bundle.json's canary.count says "
                          f"{info.count}", "texts")
    if (not isinstance(rows, list) or len(rows) != len(texts)
            or not all(_is_vector(r, manifest.dimensions) for r in rows)):
        raise BundleError(path, f"must be {len(texts)} lists of {manifest.dimensions} finite "
                          "numbers, one per text", "vectors")
    return Canaries(texts, np.asarray(rows, dtype=np.float32))


def _is_vector(row: Any, dimensions: int) -> bool:
    return (isinstance(row, list) and len(row) == dimensions
            and all(isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x)
                    for x in row))


# ---- the start-up check -----------------------------------------------------------------------
def measure(model: BundleModel, canaries: Canaries) -> float:
    """The canaries through `model` as a request goes (tokenizer, cut, pooling, normalization),
    on this machine's kernels, against their reference."""
    return agreement(canaries.vectors, embed(model, canaries.texts))


@dataclass(frozen=True)
class CanaryReport:
    """One model's canary check on this machine, as /health, /v1/models and /metrics show it."""

    status: CanaryStatus
    agreement: float | None = None  # min cosine vs the reference on this machine
    gate: float | None = None
    count: int = 0
    build_agreement: float | None = None  # the same figure on the machine that built it

    def to_json(self) -> dict[str, Any]:
        if self.status == "absent":
            return {"status": "absent"}
        return {"status": self.status, "agreement": self.agreement, "gate": self.gate,
                "count": self.count, "build_agreement": self.build_agreement}


def check_gate(bundle: Path, manifest: Manifest, measured: float,
          on_failure: CanaryFailure) -> CanaryReport:
    """Pass, serve loudly, or refuse (CanaryFailed) on the agreement measured here."""
    info = manifest.canary
    assert info is not None  # only bundles with canaries are measured
    report = CanaryReport("pass", measured, info.gate, info.count, info.build_agreement)
    if measured >= info.gate:
        log.info("canaries %s: agreement %.6f >= gate %.6f over %d inputs (build machine: "
                 "%.6f)", manifest.id, measured, info.gate, info.count, info.build_agreement)
        return report
    if on_failure == "refuse":
        raise CanaryFailed(bundle, measured, info.gate)
    log.warning("CANARY FAILED for %s (%s): agreement %.6f is below the gate %.6f over %d inputs "
                "(build machine: %.6f); serving anyway because of --canary-failure serve: its "
                "vectors may not match the ones it was built and measured with", manifest.id,
                bundle, measured, info.gate, info.count, info.build_agreement)
    return CanaryReport("failed-serving", measured, info.gate, info.count, info.build_agreement)
