"""`edge-embed quantize` on a rerank bundle: per-token int8, judged on what ranking needs.

A reranker's int8 build is per-token only: its activation scale is a row's own, so a pair's
score cannot depend on the other pairs of its batch (dynamic int8's whole-batch scale would let
one request's documents move another's scores). The graph is fused and quantized as an
embedder's (quantize/build.py's steps, the recipe's levers; smoothing calibrated on the rerank
evaluation set's pairs), then judged against the fp32 bundle on that set
(edge_embed/core/data/rerank_eval.jsonl), per query: the order of its candidates (Kendall tau),
whether the best candidate stays first (top-1) and the top 3 stay the top 3, and the scores'
absolute error; and every pair scored alone against inside a padded batch of mixed pairs. The
measured-exclusion search of embedders (cosines of vectors) does not apply: `--exclude` names
matmuls to keep in fp32, or none are.
"""

from __future__ import annotations

import dataclasses
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from edge_embed.core.agreement import ranking_quality
from edge_embed.core.bundle import (
    Quantization,
    RankingQuality,
    RerankInfo,
    load_manifest,
)
from edge_embed.core.errors import BundleError
from edge_embed.core.evalset import RerankSet, load_rerank_set
from edge_embed.core.files import entries
from edge_embed.core.pooling import F32
from edge_embed.core.rerank import RerankModel, unpack
from edge_embed.core.runtime import RuntimeOptions
from edge_embed.core.tooling import (
    Reporter,
    ToolError,
    atomic_output,
    measured_on,
    now,
    tool_versions,
)

from .build import GateFailed, QuantizeOptions, named_exclusions, read_source, save_graph
from .fusion import fuse
from .graph import weight_matmuls
from .methods import AUTO, apply
from .smooth import calibrate, factors
from .targets import TargetError, resolve

METHOD = "pertoken"
# The ranking gates' defaults. A reranker is judged by the order it gives each query's
# candidates: a mean Kendall tau of 0.9 over 8 candidates allows about one swapped pair in a
# query's 28; the best candidate must stay first, and the top 3 stay the top 3, in 9 queries of
# 10 (a pipeline keeps the top few).
GATE_KENDALL_TAU_MEAN = 0.9
GATE_TOP1 = 0.9
GATE_TOP3 = 0.9
# The scores' mean absolute error, as a share of the spread (standard deviation) of the fp32
# scores over the set: a fifth keeps the typical score's noise inside the gaps that order a
# query's candidates (the worst error is recorded, not gated: the order gates judge its effect).
GATE_SCORE_ERROR = 0.2
# A pair alone against inside a padded batch: per-token int8 keeps integer arithmetic exact, so
# the two agree to float rounding at most (measured: exactly 0.0 on the tiny twins).
GATE_INVARIANCE = 1e-6
# Pairs per padded batch of the invariance probe, mixed long and short.
INVARIANCE_BATCH = 17


@dataclass(frozen=True)
class RankingGates:
    kendall_tau_mean: float = GATE_KENDALL_TAU_MEAN
    top1: float = GATE_TOP1
    top3: float = GATE_TOP3
    score_error: float = GATE_SCORE_ERROR  # mean, as a share of the fp32 scores' std
    invariance: float = GATE_INVARIANCE  # largest |score alone - score batched|


def is_rerank_bundle(folder: Path) -> bool:
    """Whether `folder` holds a rerank bundle (a folder that is no bundle: not one; the
    embedder's path then says what is wrong with it)."""
    try:
        return load_manifest(folder).task == "rerank"
    except BundleError:
        return False


def _scores(model: RerankModel, rerank_set: RerankSet) -> list[F32]:
    return [model.rerank(q.query, q.documents) for q in rerank_set.queries]


def invariance(model: RerankModel, rerank_set: RerankSet) -> float:
    """The largest |logit alone - logit inside a padded batch of mixed pairs| over the set."""
    rows = [t.ids for q in rerank_set.queries for t in model.pairs.encode(q.query, q.documents)]
    worst = 0.0
    for start in range(0, len(rows), INVARIANCE_BATCH):
        batch = rows[start:start + INVARIANCE_BATCH]
        together = np.asarray(model.run(batch), dtype=np.float64)[:, 0]
        alone = np.array([float(model.run([row])[0, 0]) for row in batch])
        worst = max(worst, float(np.abs(together - alone).max()))
    return worst


def judge(gates: RankingGates, quality: RankingQuality, spread: float) -> list[str]:
    failed = []
    if quality.kendall_tau_mean < gates.kendall_tau_mean:
        failed.append(f"Kendall tau mean {quality.kendall_tau_mean:.4f} < "
                      f"{gates.kendall_tau_mean}")
    if quality.top1_agreement < gates.top1:
        failed.append(f"top-1 agreement {quality.top1_agreement:.4f} < {gates.top1}")
    if quality.top3_agreement < gates.top3:
        failed.append(f"top-3 agreement {quality.top3_agreement:.4f} < {gates.top3}")
    if quality.score_abs_mean > gates.score_error * spread:
        failed.append(f"score mean abs error {quality.score_abs_mean:.3g} > {gates.score_error} "
                      f"x the fp32 scores' spread {spread:.3g}")
    inv = quality.batch_invariance_max_abs_diff
    if inv is None or inv > gates.invariance:
        failed.append(f"a pair alone vs batched differs by {inv:.3g} > {gates.invariance}")
    return failed


def _smoothing(opts: QuantizeOptions, model: onnx.ModelProto, reference: RerankModel,
               rerank_set: RerankSet) -> dict[str, F32] | None:
    """SmoothQuant factors calibrated on the set's pairs (their token ids; the calibration
    reads activation ranges, which the token types move little)."""
    alpha = opts.recipe.smooth_alpha
    if alpha is None:
        return None
    matmuls = weight_matmuls(model)
    rows = [unpack(t.ids)[0] for q in rerank_set.queries
            for t in reference.pairs.encode(q.query, q.documents)]
    tokenizer = reference.tokenizer
    calibration = calibrate(model, sorted({m.activation for m in matmuls}), rows,
                            tokenizer.pad_id, tokenizer.padding_side)
    return factors(model, matmuls, calibration, alpha)


def run(opts: QuantizeOptions, gates: RankingGates | None = None) -> int:
    gates = gates or RankingGates()
    reporter = Reporter(opts.quiet, prog="edge-embed quantize")
    started = time.monotonic()
    if opts.precision != "int8" or opts.method not in (AUTO, METHOD):
        raise ToolError("a rerank bundle is quantized with per-token int8 only (--precision "
                        "int8 --method pertoken): its row-wise scale keeps a pair's score "
                        "independent of the other pairs in its batch")
    try:
        target = resolve(opts.target, variant=opts.variant,
                         saturation_free=opts.recipe.saturation_free)
    except TargetError as exc:
        raise ToolError(str(exc)) from None
    source, model = read_source(opts.bundle)
    assert source.rerank is not None  # a rerank bundle's manifest always has the section
    rerank_set = load_rerank_set()
    bundle_id = opts.bundle_id or f"{source.id.removesuffix('-fp32')}-{opts.precision}"
    with atomic_output(opts.out, opts.force) as tmp:
        fused, fusion_ops = False, {}
        if opts.fuse:
            reporter.step("fusing the graph (onnxruntime transformer optimizer)")
            fusion = fuse(model, skip_layer_norm=False,
                          embed_layer_norm=not opts.recipe.int8_embeddings)
            model, fused, fusion_ops = fusion.model, fusion.fused, fusion.ops
        shutil.copy2(opts.bundle / source.tokenizer_file, tmp / source.tokenizer_file)
        reporter.step(f"scoring {rerank_set.n_pairs} pairs ({rerank_set.name}) with the fp32 "
                      "bundle")
        reference = RerankModel(opts.bundle, RuntimeOptions(spinning=False))
        ref = _scores(reference, rerank_set)
        smooth = _smoothing(opts, model, reference, rerank_set)
        excluded = ([] if opts.exclude in ("auto", "none")
                    else named_exclusions(opts.exclude, model))
        reporter.step(f"quantizing: int8, {METHOD}"
                      + (f", {len(excluded)} matmul(s) kept in fp32" if excluded else ""))
        result = apply(METHOD, onnx.ModelProto.FromString(model.SerializeToString()), excluded,
                       target.variant, opts.recipe, smooth)
        save_graph(result.model, tmp / "model.onnx", opts.external_data)
        draft = dataclasses.replace(
            source, precision="int8", model_file="model.onnx",
            inputs=tuple(i.name for i in result.model.graph.input),
            quantization=Quantization.of({"method": METHOD, "fused": fused}), quality=None,
            parity=None, canary=None, rerank=RerankInfo(source.rerank.activation,
                                                        source.rerank.truncation))
        draft.write(tmp)  # measured as the service loads it
        candidate = RerankModel(tmp, RuntimeOptions(spinning=False))
        reporter.step("scoring the set with the int8 graph; each pair alone and batched")
        got = _scores(candidate, rerank_set)
        quality = ranking_quality(ref, got, reference_name="fp32-bundle",
                                  eval_set=rerank_set.name,
                                  invariance=float(f"{invariance(candidate, rerank_set):.3g}"))
        spread = float(np.std(np.concatenate(ref)))
        failures = judge(gates, quality, spread)
        reporter.step(f"{METHOD}: Kendall tau mean {quality.kendall_tau_mean:.4f} (min "
                      f"{quality.kendall_tau_min:.4f}), top-1 {quality.top1_agreement:.4f}, "
                      f"top-3 {quality.top3_agreement:.4f}, score abs error mean "
                      f"{quality.score_abs_mean:.3g}, max {quality.score_abs_max:.3g} (fp32 "
                      f"spread {spread:.3g}), batch "
                      f"invariance {quality.batch_invariance_max_abs_diff:.3g}"
                      + (f"; failed: {'; '.join(failures)}" if failures else ""))
        source_file = source.files.get(source.model_file)
        quantization: dict[str, Any] = {
            "method": METHOD, "precision": "int8", "params": result.params, "fused": fused,
            "fusion": fusion_ops,
            "exclude_policy": opts.exclude if opts.exclude in ("auto", "none") else "names",
            "excluded": excluded, "candidate_matmuls": len(weight_matmuls(model)),
            "quantized_matmuls": result.quantized_nodes, "measured_on": measured_on(),
            "target": target.to_json(),
            "reference": {"id": source.id,
                          "model_sha256": source_file.sha256 if source_file else ""},
            "gates": {"ranking": dataclasses.asdict(gates), "score_spread": round(spread, 6)},
            "verdict": {"passed": not failures, "failures": failures},
        }
        manifest = dataclasses.replace(
            draft, id=bundle_id, aliases=opts.aliases or (),
            quantization=Quantization.of(quantization),
            rerank=RerankInfo(source.rerank.activation, source.rerank.truncation,
                              quality=quality),
            files=entries(tmp), tools=tool_versions("onnx"),
            build={"created": now(), "seconds": round(time.monotonic() - started, 1)})
        manifest.write(tmp)
        del reference, candidate
        if failures and not opts.keep_failed:
            raise GateFailed(failures, kept=False)
    if failures:
        raise GateFailed(failures, kept=True)
    reporter.step(f"wrote {opts.out} (int8, {METHOD}) in {time.monotonic() - started:.0f} s")
    return 0

