"""Which matmuls to keep in fp32: measured on the evaluation set, not guessed from node names.

One onnxruntime session holds every quantized matmul next to its fp32 twin, with a bool input
per matmul choosing between them (`quantize_pertoken(..., switches=True)`), so any subset can be
tried by feeding flags instead of building a session per subset. Then, greedily: find the
inputs int8 gets most wrong, try leaving each remaining matmul in fp32, keep the one that lifts
the worst cosine most for its size, repeat until the worst cosine reaches the target.

"For its size": a matmul kept in fp32 costs time in proportion to its weight (K x N), so the gain
is divided by that. MiniLM's FFN matmuls are 4x its attention ones; picking by raw gain kept an
FFN matmul in fp32 where two attention ones did as well for half the cost.

The feed and the pooling are the service's own (service.feeds, service.pooling), so what is
measured here is what the service will compute.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

from edge_embed.export.tooling import Reporter
from edge_embed.service.bundle import Manifest
from edge_embed.service.encoder import TextTokenizer
from edge_embed.service.feeds import build_feeds, check_inputs
from edge_embed.service.pooling import F32, finish, pool_output

from .evaluate import cosines
from .graph import weight_matmuls
from .pertoken import quantize_pertoken

# Stop when the worst cosine on the probe inputs reaches this: the aim is min >= 0.98
# against fp32; the probe set is the worst of the evaluation set, so a little margin is kept.
TARGET_MIN_COSINE = 0.985
# At most this share of the matmuls stays fp32: each one gives back part of int8's speed.
MAX_EXCLUDED_SHARE = 0.12
# A step that lifts the worst cosine by less than this is not worth a matmul's speed.
MIN_GAIN = 0.001
# Probe inputs: the evaluation set's worst under all-int8 (32 short rows: one session call).
PROBES = 32
# After the first step (every matmul tried), later steps try only the matmuls whose exclusion
# helped most at the first step: MiniLM's later picks all came from its first step's top dozen,
# and this keeps the search at ~60 session calls instead of ~105 (`make model` budget).
SHORTLIST = 12
# The scan that finds them cuts inputs at this many tokens: the worst cases are short inputs
# (FINDINGS.md), and a 256-token scan of the long inputs would dominate `make model`'s time.
SCAN_MAX_TOKENS = 64
# Rows per session call during the scan.
SCAN_BATCH = 64


@dataclass(frozen=True)
class Step:
    excluded: str
    cosine_min: float
    cosine_mean: float


@dataclass
class Search:
    candidates: int
    start_min: float
    start_mean: float
    excluded: list[str] = field(default_factory=list)
    steps: list[Step] = field(default_factory=list)
    # per-node gain on the worst cosine at the first step: the sensitivity profile
    first_gains: dict[str, float] = field(default_factory=dict)

    def summary(self) -> dict[str, object]:
        top = sorted(self.first_gains.items(), key=lambda kv: -kv[1])[:SHORTLIST]
        return {"candidates": self.candidates, "probes": PROBES, "shortlist": SHORTLIST,
                "target_min_cosine": TARGET_MIN_COSINE,
                "all_int8": {"cosine_min": round(self.start_min, 6),
                             "cosine_mean": round(self.start_mean, 6)},
                "steps": [{"excluded": s.excluded, "cosine_min": round(s.cosine_min, 6),
                           "cosine_mean": round(s.cosine_mean, 6)} for s in self.steps],
                "most_sensitive": [[name, round(gain, 6)] for name, gain in top]}


class _Switchboard:
    def __init__(self, model: onnx.ModelProto, manifest: Manifest, tokenizer: TextTokenizer,
                 graph_level: ort.GraphOptimizationLevel) -> None:
        result = quantize_pertoken(model, switches=True)
        self.switches = result.switches
        so = ort.SessionOptions()
        so.graph_optimization_level = graph_level
        so.log_severity_level = 3
        self.session = ort.InferenceSession(result.model.SerializeToString(), so,
                                            providers=["CPUExecutionProvider"])
        self.manifest = manifest
        self.tokenizer = tokenizer
        flags = set(self.switches.values())
        # the model's own inputs, filled as the service fills them; the flags are ours
        self.inputs = [i.name for i in self.session.get_inputs() if i.name not in flags]
        check_inputs(self.inputs)

    def embed(self, rows: Sequence[np.ndarray], fp32: set[str]) -> F32:
        flags = {flag: np.array(name in fp32) for name, flag in self.switches.items()}
        out = np.empty((len(rows), self.manifest.dimensions), dtype=np.float32)
        order = sorted(range(len(rows)), key=lambda i: len(rows[i]))
        for start in range(0, len(order), SCAN_BATCH):
            chunk = order[start:start + SCAN_BATCH]
            feed = build_feeds([rows[i] for i in chunk], self.inputs,
                               pad_id=self.tokenizer.pad_id, side=self.tokenizer.padding_side)
            (hidden,) = self.session.run([self.manifest.output], {**feed.arrays, **flags})
            out[chunk] = pool_output(hidden, feed.mask, self.manifest.output_kind,
                                     self.manifest.pooling)
        return finish(out, dimensions=None, normalized=True)


def choose_fp32_matmuls(model: onnx.ModelProto, manifest: Manifest, bundle: Path,
                        texts: Sequence[str], graph_level: ort.GraphOptimizationLevel,
                        reporter: Reporter) -> Search:
    tokenizer = TextTokenizer(bundle / manifest.tokenizer_file, manifest.max_tokens)
    rows = [t.ids[:SCAN_MAX_TOKENS] if len(t.ids) > SCAN_MAX_TOKENS else t.ids
            for t in tokenizer.encode(list(texts))]
    matmuls = weight_matmuls(model)
    names = [m.name for m in matmuls]
    smallest = min(m.k * m.n for m in matmuls)
    size = {m.name: m.k * m.n / smallest for m in matmuls}
    board = _Switchboard(model, manifest, tokenizer, graph_level)
    everything = set(board.switches)
    reporter.step(f"measuring {len(names)} matmuls' effect on the worst inputs")
    reference = board.embed(rows, everything)
    scan = cosines(reference, board.embed(rows, set()))
    probes = list(np.argsort(scan)[:PROBES])
    probe_rows = [rows[i] for i in probes]
    probe_ref = reference[probes]
    search = Search(candidates=len(names), start_min=float(scan.min()),
                    start_mean=float(scan.mean()))
    budget = max(0, math.floor(MAX_EXCLUDED_SHARE * len(names)))
    current = float(scan[probes].min())
    while current < TARGET_MIN_COSINE and len(search.excluded) < budget:
        scores: dict[str, tuple[float, float]] = {}
        pool_names = names if not search.steps else sorted(
            search.first_gains, key=lambda n: -search.first_gains[n])[:SHORTLIST]
        for name in reporter.progress([n for n in pool_names if n not in search.excluded],
                                      desc=f"sensitivity, step {len(search.steps) + 1}"):
            cos = cosines(probe_ref, board.embed(probe_rows, {*search.excluded, name}))
            scores[name] = (float(cos.min()), float(cos.mean()))
        if not search.steps:
            search.first_gains = {n: s[0] - current for n, s in scores.items()}
        best = max(scores, key=lambda n: ((scores[n][0] - current) / size[n], scores[n][1]))
        if scores[best][0] - current < MIN_GAIN:
            break
        search.excluded.append(best)
        current = scores[best][0]
        search.steps.append(Step(best, *scores[best]))
    return search
