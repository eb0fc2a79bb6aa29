"""`edge-embed quantize`: fp32 bundle -> int8 / fp16 bundle, measured against fp32, gated.

Steps: read and check the input bundle; fuse the graph with onnxruntime's transformer optimizer
(where it knows the architecture); choose the matmuls to keep in fp32 by measuring them;
quantize; write the bundle into a temporary folder; evaluate it against the input bundle with
the service's own encoder; refuse it (exit 3, nothing written) when a gate fails.
"""

from __future__ import annotations

import dataclasses
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import onnx

from edge_embed.export.onnx_export import EXTERNAL_DATA_SUFFIX
from edge_embed.export.tooling import (
    Reporter,
    ToolError,
    atomic_output,
    now,
    tool_versions,
)
from edge_embed.service.bundle import Manifest, Precision, load_manifest
from edge_embed.service.errors import BundleError, UnsupportedGraphInput
from edge_embed.service.feeds import check_inputs
from edge_embed.service.files import entries
from edge_embed.service.runtime import graph_level

from .evalset import load_eval_set
from .evaluate import Evaluation, evaluate
from .fusion import fuse
from .graph import weight_matmuls
from .machine import measured_on
from .methods import Quantized, apply, float16

# Exit code for a bundle that was built but failed a quality gate (2 is bad input, 1 a fault).
EXIT_GATE = 3
# ONNX protobufs cannot exceed 2 GiB; above this the weights go to an external data file.
_EXTERNAL_DATA_BYTES = 1_800_000_000
# Tensors below this stay inside the graph even with external data (scales, shapes): optimum's
# threshold, which it sets because some operators fail with their small inputs outside.
_INLINE_BYTES = 100


@dataclass(frozen=True)
class Gates:
    # The required quality: mean cosine >= 0.99, nearest-neighbour agreement >= 0.97, and a vector
    # alone vs inside a padded batch >= 0.9999 (the service batches callers together).
    mean: float = 0.99
    nn: float = 0.97
    invariance: float = 0.9999
    min: float | None = None  # optional floor on the worst cosine

    def failures(self, ev: Evaluation) -> list[str]:
        failed = []
        if ev.cosine_mean < self.mean:
            failed.append(f"mean cosine {ev.cosine_mean:.5f} < {self.mean}")
        if ev.nn_agreement < self.nn:
            failed.append(f"nearest-neighbour agreement {ev.nn_agreement:.4f} < {self.nn}")
        if ev.batch_invariance_min < self.invariance:
            failed.append(f"batch invariance {ev.batch_invariance_min:.6f} < {self.invariance}")
        if self.min is not None and ev.cosine_min < self.min:
            failed.append(f"min cosine {ev.cosine_min:.5f} < {self.min}")
        return failed


@dataclass(frozen=True)
class QuantizeOptions:
    bundle: Path
    out: Path
    precision: Precision = "int8"
    method: str = "pertoken"
    bundle_id: str | None = None
    aliases: tuple[str, ...] = ()
    gates: Gates = Gates()
    exclude: str = "auto"  # "auto" (measured), "none", or comma-separated MatMul node names
    fuse: bool = True
    eval_set: Path | None = None
    force: bool = False
    keep_failed: bool = False
    quiet: bool = False
    external_data: bool = False  # weights in model.onnx_data even below protobuf's 2 GB


class GateFailed(Exception):
    def __init__(self, failures: list[str], kept: bool) -> None:
        self.failures = failures
        self.kept = kept
        super().__init__("; ".join(failures))


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


def _exclusions(opts: QuantizeOptions, model: onnx.ModelProto, manifest: Manifest,
                fused: bool, texts: list[str],
                reporter: Reporter) -> tuple[list[str], dict[str, Any] | None]:
    if opts.exclude == "none" or opts.precision != "int8":
        return [], None
    if opts.exclude != "auto":
        names = [n.strip() for n in opts.exclude.split(",") if n.strip()]
        known = {m.name for m in weight_matmuls(model)}
        unknown = [n for n in names if n not in known]
        if unknown:
            raise ToolError(f"--exclude: not a weight MatMul of this graph: {', '.join(unknown)}"
                            f" (candidates: {', '.join(sorted(known)[:6])}, ...)")
        return names, None
    if opts.method != "pertoken":
        return [], None  # the measured search is built on the per-token graph
    from .sensitivity import choose_fp32_matmuls

    quantization = {"fused": fused}
    level = graph_level(dataclasses.replace(manifest, quantization=quantization), "auto")
    search = choose_fp32_matmuls(model, manifest, opts.bundle, texts, level, reporter)
    return search.excluded, search.summary()


def _save(model: onnx.ModelProto, path: Path, external: bool) -> None:
    if external or model.ByteSize() > _EXTERNAL_DATA_BYTES:
        # one file beside the graph, named as the export names it
        onnx.save(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                  location=path.name + EXTERNAL_DATA_SUFFIX, size_threshold=_INLINE_BYTES)
    else:
        onnx.save(model, str(path))


def run(opts: QuantizeOptions) -> int:
    reporter = Reporter(opts.quiet, prog="edge-embed quantize")
    started = time.monotonic()
    source, model = read_source(opts.bundle)
    eval_set = load_eval_set(opts.eval_set)
    bundle_id = opts.bundle_id or f"{source.id.removesuffix('-fp32')}-{opts.precision}"
    with atomic_output(opts.out, opts.force) as tmp:
        fused, fusion_ops = False, {}
        if opts.fuse:
            reporter.step("fusing the graph (onnxruntime transformer optimizer)")
            # No SkipLayerNormalization: measured on MiniLM (2 cores, onnxruntime 1.31), its CPU
            # kernel took ~2.2 ms per node where LayerNormalization + Add took ~0.25 ms; with it
            # per-token int8 ran 1.55x fp32, without it 1.8x (quantize.speedtest).
            fusion = fuse(model, skip_layer_norm=False)
            model, fused, fusion_ops = fusion.model, fusion.fused, fusion.ops
        candidates = len(weight_matmuls(model))
        excluded, search = _exclusions(opts, model, source, fused, eval_set.texts,
                                       reporter)
        reporter.step(f"quantizing: {opts.precision}"
                      + (f", {opts.method}" if opts.precision == "int8" else "")
                      + (f", {len(excluded)} matmul(s) kept in fp32" if excluded else ""))
        result: Quantized = (apply(opts.method, model, excluded) if opts.precision == "int8"
                             else float16(model))
        _save(result.model, tmp / "model.onnx", opts.external_data)
        shutil.copy2(opts.bundle / source.tokenizer_file, tmp / source.tokenizer_file)
        reference_file = source.files.get(source.model_file)
        reference_sha256 = reference_file.sha256 if reference_file else ""
        quantization: dict[str, Any] = {
            "method": opts.method if opts.precision == "int8" else "float16",
            "precision": opts.precision,
            "params": result.params,
            "fused": fused,
            "fusion": fusion_ops,
            "exclude_policy": opts.exclude if opts.exclude in ("auto", "none") else "names",
            "excluded": excluded,
            "candidate_matmuls": candidates,
            "quantized_matmuls": result.quantized_nodes,
            "sensitivity": search,
            # the search's cosines and the quality figures depend on the CPU's int8 kernels
            "measured_on": measured_on(),
            "reference": {"id": source.id, "model_sha256": reference_sha256},
        }
        manifest = dataclasses.replace(
            source, id=bundle_id, aliases=opts.aliases or (), precision=opts.precision,
            model_file="model.onnx",
            inputs=tuple(i.name for i in result.model.graph.input),
            quantization=quantization, quality=None, parity=None, build={"created": now()})
        manifest.write(tmp)
        ev = evaluate(opts.bundle, tmp, eval_set, reporter)
        quantization["per_kind"] = ev.per_kind_json()
        quantization["reference_batch_invariance_min"] = round(ev.reference_invariance_min, 7)
        quantization["batch_invariance_max_abs_diff"] = float(
            f"{ev.batch_invariance_max_abs_diff:.3g}")
        quantization["gates"] = dataclasses.asdict(opts.gates)
        manifest = dataclasses.replace(
            manifest, quality=ev.quality(), files=entries(tmp), tools=tool_versions("onnx"),
            build={**manifest.build, "seconds": round(time.monotonic() - started, 1)})
        manifest.write(tmp)
        reporter.step(
            f"cosine vs fp32: min {ev.cosine_min:.4f}, mean {ev.cosine_mean:.5f}; "
            f"nearest-neighbour agreement {ev.nn_agreement:.4f}; "
            f"batch invariance {ev.batch_invariance_min:.6f}")
        failures = opts.gates.failures(ev)
        if failures and not opts.keep_failed:
            raise GateFailed(failures, kept=False)
    if failures:  # --keep-failed: the bundle is written, the exit code still says it failed
        raise GateFailed(failures, kept=True)
    reporter.step(f"wrote {opts.out} ({opts.precision}) in {time.monotonic() - started:.0f} s")
    return 0
