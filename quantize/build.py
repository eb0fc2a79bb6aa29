"""`edge-embed quantize`: fp32 bundle -> int8 / fp16 bundle, measured against fp32, gated.

Steps: read and check the input bundle; fuse the graph with onnxruntime's transformer optimizer
(where it knows the architecture); embed the evaluation set with the input bundle once; then for
each method tried (`--method auto`: per-token int8, then blockwise 8-bit; otherwise the one
named): choose the matmuls to keep in fp32 by measuring them (per-token), quantize, write the
bundle into a temporary folder, evaluate it against the input bundle with the service's own
encoder, and stop at the first that passes the gates. None passing: refuse (exit 3, nothing
written), listing each method's figures. The manifest records every method tried, its figures,
and why the chosen one was chosen.
"""

from __future__ import annotations

import dataclasses
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import onnx

from edge_embed.core import canary, compact
from edge_embed.core.bundle import (
    EXTERNAL_DATA_SUFFIX,
    CompactScale,
    Manifest,
    Precision,
    Quantization,
    load_manifest,
)
from edge_embed.core.encoder import BundleModel
from edge_embed.core.errors import BundleError, UnsupportedGraphInput
from edge_embed.core.evalset import EvalSet, load_eval_set
from edge_embed.core.feeds import check_inputs
from edge_embed.core.files import entries
from edge_embed.core.runtime import graph_level
from edge_embed.core.tooling import (
    Reporter,
    ToolError,
    atomic_output,
    measured_on,
    now,
    tool_versions,
)

from .evaluate import Evaluation, Reference, evaluate, figures, reference
from .fusion import fuse
from .gates import RANK_CRITERION, Gates, Verdict, judge, quality_failures
from .graph import F32, weight_matmuls
from .methods import AUTO, AUTO_ORDER, Quantized, apply, float16
from .recipe import Recipe
from .sensitivity import choose_fp32_matmuls
from .smooth import smoothing
from .targets import TargetError, resolve
from .variants import DEFAULT

# Exit code for a bundle that was built but failed a quality gate (2 is bad input, 1 a fault).
EXIT_GATE = 3
# ONNX protobufs cannot exceed 2 GiB; above this the weights go to an external data file.
_EXTERNAL_DATA_BYTES = 1_800_000_000
# Tensors below this stay inside the graph even with external data (scales, shapes): optimum's
# threshold, which it sets because some operators fail with their small inputs outside.
_INLINE_BYTES = 100


@dataclass(frozen=True)
class QuantizeOptions:
    bundle: Path
    out: Path
    precision: Precision = "int8"
    method: str = AUTO  # "auto" or one of methods.METHODS
    bundle_id: str | None = None
    aliases: tuple[str, ...] = ()
    gates: Gates = field(default_factory=Gates)
    exclude: str = "auto"  # "auto" (measured), "none", or comma-separated MatMul node names
    fuse: bool = True
    eval_set: Path | None = None
    force: bool = False
    keep_failed: bool = False
    quiet: bool = False
    external_data: bool = False  # weights in model.onnx_data even below protobuf's 2 GB
    target: str = "auto"  # the CPU family the int8 graph is built for (quantize/targets.py)
    variant: str | None = None  # an int8 variant instead of the target's (for measurements)
    recipe: Recipe = field(default_factory=Recipe)  # the per-token levers


class GateFailed(Exception):
    def __init__(self, failures: list[str], kept: bool) -> None:
        self.failures = failures
        self.kept = kept
        super().__init__("; ".join(failures))


@dataclass(frozen=True)
class Attempt:
    """One method tried: what it built and how it measured."""

    method: str
    result: Quantized
    excluded: list[str]
    search: dict[str, Any] | None
    evaluation: Evaluation
    verdict: Verdict
    seconds: float

    def to_json(self) -> dict[str, object]:
        return {"method": self.method, "passed": self.verdict.passed,
                "failures": list(self.verdict.failures),
                "neighbour_criterion": self.verdict.criterion,
                "figures": figures(self.evaluation), "excluded": len(self.excluded),
                "quantized_matmuls": self.result.quantized_nodes}

    def summary(self) -> str:
        f = self.evaluation
        nn = (f"rank agreement {f.geometry.rank_agreement:.5f}"
              if self.verdict.criterion == RANK_CRITERION else f"NN {f.nn_agreement:.4f}")
        return (f"{self.method} (cosine min {f.cosine_min:.4f}, mean {f.cosine_mean:.5f}, {nn}): "
                + ("passed" if self.verdict.passed else "; ".join(self.verdict.failures)))


def methods_to_try(opts: QuantizeOptions) -> tuple[str, ...]:
    if opts.precision != "int8":
        return ("float16",)
    return AUTO_ORDER if opts.method == AUTO else (opts.method,)


def read_source(folder: Path) -> tuple[Manifest, onnx.ModelProto]:
    if not folder.exists():
        raise ToolError(f"input bundle {folder} does not exist")
    if not folder.is_dir():
        raise ToolError(f"input bundle {folder} is not a folder")
    try:
        manifest = load_manifest(folder)
    except BundleError as exc:
        raise ToolError(str(exc)) from None
    if manifest.precision != "fp32":
        raise ToolError(f"{folder}: precision is {manifest.precision}; quantize reads an fp32 "
                        "bundle (build one with `edge-embed export`)")
    path = folder / manifest.model_file
    try:
        # by path: the checker reads external data itself, where a loaded graph past 2 GB
        # could not be checked
        onnx.checker.check_model(str(path))
        model = onnx.load(str(path))
    except Exception as exc:  # protobuf and checker errors have many types
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ToolError(f"{path} is not a valid ONNX model ({first[:200]})") from None
    if not model.graph.node:
        raise ToolError(f"{path} has an empty graph")
    initializers = {i.name for i in model.graph.initializer}
    try:
        check_inputs([i.name for i in model.graph.input if i.name not in initializers])
    except UnsupportedGraphInput as exc:
        raise ToolError(f"{path}: {exc}") from None
    return manifest, model


def named_exclusions(spec: str, model: onnx.ModelProto) -> list[str]:
    """The MatMul nodes `--exclude NAME,NAME` keeps in fp32, each checked against the graph."""
    names = [n.strip() for n in spec.split(",") if n.strip()]
    known = {m.name for m in weight_matmuls(model)}
    unknown = [n for n in names if n not in known]
    if unknown:
        raise ToolError(f"--exclude: not a weight MatMul of this graph: {', '.join(unknown)}"
                        f" (candidates: {', '.join(sorted(known)[:6])}, ...)")
    return names


def _exclusions(opts: QuantizeOptions, method: str, model: onnx.ModelProto,
                manifest: Manifest, fused: bool, texts: list[str], variant: str,
                reporter: Reporter,
                smooth: dict[str, F32] | None) -> tuple[list[str], dict[str, Any] | None]:
    if opts.exclude == "none" or opts.precision != "int8":
        return [], None
    if opts.exclude != "auto":
        return named_exclusions(opts.exclude, model), None
    if method != "pertoken":
        return [], None  # the measured search is built on the per-token graph
    quantization = Quantization.of({"fused": fused})
    level = graph_level(dataclasses.replace(manifest, quantization=quantization), "auto")
    search = choose_fp32_matmuls(model, manifest, opts.bundle, texts, level, reporter, variant,
                                 opts.recipe, smooth)
    return search.excluded, search.summary()


def save_graph(model: onnx.ModelProto, path: Path, external: bool) -> None:
    if external or model.ByteSize() > _EXTERNAL_DATA_BYTES:
        # one file beside the graph, named as the export names it
        onnx.save(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                  location=path.name + EXTERNAL_DATA_SUFFIX, size_threshold=_INLINE_BYTES)
    else:
        onnx.save(model, str(path))


def _attempt(method: str, opts: QuantizeOptions, model: onnx.ModelProto, source: Manifest,
             fused: bool, ref: Reference, eval_set: EvalSet, tmp: Path, reporter: Reporter,
             variant: str, *, last: bool) -> Attempt:
    """Build `method`'s bundle in `tmp` (replacing any earlier attempt's) and measure it."""
    started = time.monotonic()
    smooth = None
    if method == "pertoken" and opts.recipe.smooth_alpha is not None:
        reporter.step(f"calibrating smoothing (alpha {opts.recipe.smooth_alpha}) on "
                      f"{eval_set.name}")
        smooth = smoothing(model, opts.bundle / source.tokenizer_file, source.max_tokens,
                           eval_set.texts, opts.recipe.smooth_alpha)
    excluded, search = _exclusions(opts, method, model, source, fused, eval_set.texts,
                                   variant, reporter, smooth)
    reporter.step(f"quantizing: {opts.precision}"
                  + (f", {method}" if opts.precision == "int8" else "")
                  + (f", {len(excluded)} matmul(s) kept in fp32" if excluded else ""))
    # each method gets its own copy: onnxruntime's blockwise quantizer edits its input in place
    copy = onnx.ModelProto.FromString(model.SerializeToString())
    result = (apply(method, copy, excluded, variant, opts.recipe, smooth)
              if opts.precision == "int8"
              else float16(copy))
    for old in tmp.glob("model.onnx*"):
        old.unlink()
    save_graph(result.model, tmp / "model.onnx", opts.external_data)
    draft = dataclasses.replace(
        source, precision=opts.precision, model_file="model.onnx",
        inputs=tuple(i.name for i in result.model.graph.input),
        quantization=Quantization.of({"fused": fused}), quality=None, parity=None, canary=None)
    draft.write(tmp)  # the evaluation loads the candidate as the service would

    def worth_probing(ev: Evaluation) -> bool:
        # batch invariance costs a padded batch per 4 probes: skipped for a candidate that
        # failed a cheaper gate when another method follows; the last one tried is measured
        # whole, for the refusal's figures (and a bundle --keep-failed writes)
        return last or opts.keep_failed or not quality_failures(opts.gates, ev)[2]

    ev = evaluate(ref, tmp, eval_set, reporter, check_invariance=worth_probing)
    verdict = judge(opts.gates, ev)
    inv = ("not measured" if ev.batch_invariance_min is None
           else f"{ev.batch_invariance_min:.6f}")
    reporter.step(
        f"{method}: cosine vs fp32 min {ev.cosine_min:.4f}, mean {ev.cosine_mean:.5f}; "
        f"nearest-neighbour agreement {ev.nn_agreement:.4f}; rank agreement "
        f"{ev.geometry.rank_agreement:.5f} ({verdict.criterion} judges); batch invariance {inv}"
        + ("" if verdict.passed else f"; failed: {'; '.join(verdict.failures)}"))
    return Attempt(method, result, excluded, search, ev, verdict, time.monotonic() - started)


def int8_tables(opts: QuantizeOptions) -> bool:
    return opts.precision == "int8" and opts.recipe.int8_embeddings


def _why(opts: QuantizeOptions, attempts: list[Attempt]) -> str:
    chosen = attempts[-1]
    if opts.precision != "int8" or opts.method != AUTO:
        return f"named on the command line (--method {opts.method}, --precision {opts.precision})"
    failed = [f"{a.method} failed ({'; '.join(a.verdict.failures)})" for a in attempts[:-1]]
    ok = (f"{chosen.method} passed every gate" if chosen.verdict.passed
          else f"{chosen.method} failed too, kept by --keep-failed")
    return "; ".join([*failed, ok]) + f" (auto tries {', '.join(AUTO_ORDER)} in that order)"


def run(opts: QuantizeOptions) -> int:
    reporter = Reporter(opts.quiet, prog="edge-embed quantize")
    started = time.monotonic()
    try:
        # the recipe's ranges decide whether AVX2 may use its u8s8 kernel (quantize/targets.py)
        target = (resolve(opts.target, variant=opts.variant,
                          saturation_free=opts.recipe.saturation_free)
                  if opts.precision == "int8" else None)
    except TargetError as exc:
        raise ToolError(str(exc)) from None
    source, model = read_source(opts.bundle)
    eval_set = load_eval_set(opts.eval_set)
    if target is not None:
        reporter.step(f"target {target.name}" + (" (this machine)" if target.detected else "")
                      + f": int8 variant {target.variant}")
    bundle_id = opts.bundle_id or f"{source.id.removesuffix('-fp32')}-{opts.precision}"
    with atomic_output(opts.out, opts.force) as tmp:
        fused, fusion_ops = False, {}
        if opts.fuse:
            reporter.step("fusing the graph (onnxruntime transformer optimizer)")
            # No SkipLayerNormalization: its CPU kernel is slower than LayerNormalization + Add
            # (docs/measurements.md, "onnxruntime sessions on 2 cores"; quantize.speedtest).
            # The int8 word-embedding table needs the lookups as plain Gathers.
            fusion = fuse(model, skip_layer_norm=False,
                          embed_layer_norm=not int8_tables(opts))
            model, fused, fusion_ops = fusion.model, fusion.fused, fusion.ops
        candidates = len(weight_matmuls(model))
        shutil.copy2(opts.bundle / source.tokenizer_file, tmp / source.tokenizer_file)
        ref = reference(opts.bundle, eval_set, reporter)
        reference_file = source.files.get(source.model_file)
        reference_sha256 = reference_file.sha256 if reference_file else ""
        attempts: list[Attempt] = []
        plan = methods_to_try(opts)
        for method in plan:
            attempts.append(_attempt(method, opts, model, source, fused, ref, eval_set, tmp,
                                     reporter, target.variant if target else DEFAULT,
                                     last=method == plan[-1]))
            if attempts[-1].verdict.passed:
                break
        chosen = attempts[-1]
        ev, result = chosen.evaluation, chosen.result
        quantization: dict[str, Any] = {
            "method": chosen.method,
            "precision": opts.precision,
            "params": result.params,
            "fused": fused,
            "fusion": fusion_ops,
            "exclude_policy": opts.exclude if opts.exclude in ("auto", "none") else "names",
            "excluded": chosen.excluded,
            "candidate_matmuls": candidates,
            "quantized_matmuls": result.quantized_nodes,
            "sensitivity": chosen.search,
            "selection": {"policy": opts.method if opts.precision == "int8" else "float16",
                          "tried": [a.to_json() for a in attempts],
                          "chosen": chosen.method, "why": _why(opts, attempts)},
            # the search's cosines and the quality figures depend on the CPU's int8 kernels
            "measured_on": measured_on(),
            # the CPU family the graph was built for; the service warns on another one
            "target": (target.to_json() if target is not None and chosen.method == "pertoken"
                       else None),
            "reference": {"id": source.id, "model_sha256": reference_sha256},
            "per_kind": ev.per_kind_json(),
            "reference_batch_invariance_min": round(ev.reference_invariance_min, 7),
            "batch_invariance_max_abs_diff": (
                None if ev.batch_invariance_max_abs_diff is None
                else float(f"{ev.batch_invariance_max_abs_diff:.3g}")),
            "gates": dataclasses.asdict(opts.gates),
            "verdict": chosen.verdict.to_json(),
        }
        # the chosen method's bundle is the one in tmp: the last one built
        canaries = canary.build(tmp, ref.canary_texts, ref.canary_vectors, BundleModel(tmp),
                                quality_min=ev.quality().cosine_min)
        manifest = dataclasses.replace(
            source, id=bundle_id, aliases=opts.aliases or (), precision=opts.precision,
            model_file="model.onnx", inputs=tuple(i.name for i in result.model.graph.input),
            quantization=Quantization.of(quantization), quality=ev.quality(), parity=None,
            canary=canaries, compact=_compact(source, ref, ev, eval_set.name),
            files=entries(tmp), tools=tool_versions("onnx"),
            # how long: the one build-time fact, kept apart from what reproduces byte for byte
            build={"created": now(), "seconds": round(time.monotonic() - started, 1),
                   "attempts": {a.method: round(a.seconds, 1) for a in attempts}})
        manifest.write(tmp)
        failures = [a.summary() for a in attempts] if not chosen.verdict.passed else []
        if failures and not opts.keep_failed:
            raise GateFailed(failures, kept=False)
    if failures:  # --keep-failed: the bundle is written, the exit code still says it failed
        raise GateFailed(failures, kept=True)
    reporter.step(f"wrote {opts.out} ({opts.precision}, {chosen.method}) in "
                  f"{time.monotonic() - started:.0f} s")
    return 0


def _compact(source: Manifest, ref: Reference, ev: Evaluation, eval_set: str) -> CompactScale:
    """The source bundle's int8 scale, so that compact vectors from either bundle can share one
    index (calibrated on its vectors where it has none), measured on the quantized vectors."""
    scale = (source.compact.scale if source.compact is not None
             else compact.calibrate(ref.vectors, eval_set).scale)
    vectors = ev.vectors if ev.vectors is not None else ref.vectors
    return compact.measure(vectors, scale, eval_set)
