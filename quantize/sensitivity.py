"""Which matmuls to keep in fp32: measured on the evaluation set, not guessed from node names.

One session holds every quantized matmul beside its fp32 twin, switched by a bool input each
(`quantize_pertoken(..., switches=True)`, an `If`: only the chosen branch runs), so any subset is
tried by feeding flags. Greedily: find the inputs int8 gets most wrong, try each remaining matmul
in fp32, keep the one that lifts the worst cosine most per unit of weight size (its cost in time),
repeat until the target. Choices are the same on every machine: cosines on a grid (SCORE_STEP),
near-ties broken by a fixed order (TIE_STEPS). The feed and pooling are the service's own.
What the search finds on MiniLM and mpnet: docs/quantization.md, "The fewest non-int8 matmuls".
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

from edge_embed.core.agreement import cosines
from edge_embed.core.bundle import Manifest
from edge_embed.core.encoder import TextTokenizer
from edge_embed.core.feeds import build_feeds, check_inputs
from edge_embed.core.pooling import F32, finish, pool_output
from edge_embed.core.tooling import Reporter

from .graph import weight_matmuls
from .pertoken import quantize_pertoken
from .recipe import Recipe
from .variants import DEFAULT

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
# helped most at the first step, which keeps the search within `make model`'s time budget
# (figures: docs/quantization.md#shortlist).
SHORTLIST = 12
# The scan that finds them cuts inputs at this many tokens: the worst cases are short inputs
# (one-word inputs are int8's usual worst), and a 256-token scan of the long inputs would
# dominate `make model`'s time.
SCAN_MAX_TOKENS = 64
# Rows per session call during the scan.
SCAN_BATCH = 64
# Every cosine the search compares is first put on a grid of this step. The int8 kernels differ
# between CPUs: AVX-512 VNNI accumulates u8 x s8 products in 32 bits, the AVX2 path
# (vpmaddubsw) sums pairs into 16 bits with saturation, so the same graph's cosines differ in
# their 4th-5th digit from one machine to the next. Compared raw, two matmuls whose gains differ
# by 1e-6 swap places between machines and the bundles differ; on a 1e-4 grid such digits are
# gone, and a step of 1e-4 is still ten times finer than MIN_GAIN, the smallest gain that counts.
SCORE_STEP = 1e-4
# A candidate must beat another by more than this many grid steps (of gain per unit of weight
# size) to be preferred; within it they are tied and the fixed order decides (smaller matmul
# first, then node name). Two steps: each of the two cosines behind a gain may round one step
# either way on another CPU. No rule on measured numbers is free of edges: a cosine within a
# kernel's noise of a rounding or tie boundary can still go either way. What the grid and the
# ties remove is the common case, near-equal candidates (the same matmul in two layers).
TIE_STEPS = 2


def on_grid(value: float) -> int:
    """`value` in whole SCORE_STEPs: what the search compares instead of raw cosines."""
    return round(value / SCORE_STEP)


@dataclass(frozen=True)
class Candidate:
    """One matmul tried in fp32 at one step: the probes' worst and mean cosine with it."""

    name: str
    size: float  # its weight's K x N over the smallest candidate's
    cosine_min: float
    cosine_mean: float


def pick(candidates: Sequence[Candidate], current: float) -> Candidate | None:
    """The matmul to keep in fp32 next, or None when none lifts the worst cosine by MIN_GAIN.

    Scored on the grid: steps of worst-cosine gain per unit of weight size, among those that
    gain at least MIN_GAIN. Every candidate within TIE_STEPS of the best score is a tie, and the
    smallest, then the first by name, of those wins, so the choice does not hang on digits that
    differ between CPUs.
    """
    base = on_grid(current)
    gains = {c.name: on_grid(c.cosine_min) - base for c in candidates}
    worth = [c for c in candidates if gains[c.name] >= on_grid(MIN_GAIN)]
    if not worth:
        return None
    scores = {c.name: gains[c.name] / c.size for c in worth}
    top = max(scores.values())
    tied = [c for c in worth if scores[c.name] >= top - TIE_STEPS]
    return min(tied, key=lambda c: (c.size, c.name))


def shortlist(first_gains: dict[str, float], size: dict[str, float]) -> list[str]:
    """The SHORTLIST matmuls that helped most at the first step, in the same fixed order."""
    return sorted(first_gains, key=lambda n: (-on_grid(first_gains[n]), size[n], n))[:SHORTLIST]


def worst_inputs(scan: np.ndarray, count: int = PROBES) -> list[int]:
    """Indices of the `count` lowest cosines, compared on the grid, ties by input order."""
    graded = np.array([on_grid(float(c)) for c in scan], dtype=np.int64)
    return [int(i) for i in np.argsort(graded, kind="stable")[:count]]


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
    size: dict[str, float] = field(default_factory=dict)

    def summary(self) -> dict[str, object]:
        top = shortlist(self.first_gains, self.size) if self.first_gains else []
        return {"candidates": self.candidates, "probes": PROBES, "shortlist": SHORTLIST,
                "target_min_cosine": TARGET_MIN_COSINE, "score_step": SCORE_STEP,
                "tie_steps": TIE_STEPS,
                "all_int8": {"cosine_min": round(self.start_min, 6),
                             "cosine_mean": round(self.start_mean, 6)},
                "steps": [{"excluded": s.excluded, "cosine_min": round(s.cosine_min, 6),
                           "cosine_mean": round(s.cosine_mean, 6)} for s in self.steps],
                "most_sensitive": [[name, round(self.first_gains[name], 6)] for name in top]}


class _Switchboard:
    def __init__(self, model: onnx.ModelProto, manifest: Manifest, tokenizer: TextTokenizer,
                 graph_level: ort.GraphOptimizationLevel, variant: str = DEFAULT,
                 recipe: Recipe | None = None, smooth: dict[str, F32] | None = None) -> None:
        # the search measures the graph quantize will write: the target's variant, the recipe
        recipe = recipe or Recipe()
        result = quantize_pertoken(model, switches=True, variant=variant, smooth=smooth,
                                   weight_qmax=recipe.weight_qmax,
                                   activation_bits=recipe.activation_bits,
                                   weight_clip=recipe.weight_clip,
                                   weight_pairs=recipe.pair_bound)
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
                        reporter: Reporter, variant: str = DEFAULT,
                        recipe: Recipe | None = None,
                        smooth: dict[str, F32] | None = None) -> Search:
    """The matmuls to keep in fp32, measured on the graph `variant`, `recipe` and `smooth`
    build (the word-embedding table stays float here: it changes every input alike and is
    measured in the evaluation that follows)."""
    tokenizer = TextTokenizer(bundle / manifest.tokenizer_file, manifest.max_tokens)
    rows = [t.ids[:SCAN_MAX_TOKENS] if len(t.ids) > SCAN_MAX_TOKENS else t.ids
            for t in tokenizer.encode(list(texts))]
    matmuls = weight_matmuls(model)
    names = [m.name for m in matmuls]
    smallest = min(m.k * m.n for m in matmuls)
    size = {m.name: m.k * m.n / smallest for m in matmuls}
    board = _Switchboard(model, manifest, tokenizer, graph_level, variant, recipe, smooth)
    everything = set(board.switches)
    reporter.step(f"measuring {len(names)} matmuls' effect on the worst inputs")
    reference = board.embed(rows, everything)
    scan = cosines(reference, board.embed(rows, set()))
    probes = worst_inputs(scan)
    probe_rows = [rows[i] for i in probes]
    probe_ref = reference[probes]
    search = Search(candidates=len(names), start_min=float(scan.min()),
                    start_mean=float(scan.mean()), size=size)
    budget = max(0, math.floor(MAX_EXCLUDED_SHARE * len(names)))
    current = float(scan[probes].min())
    while on_grid(current) < on_grid(TARGET_MIN_COSINE) and len(search.excluded) < budget:
        tried: list[Candidate] = []
        pool_names = shortlist(search.first_gains, size) if search.steps else names
        for name in reporter.progress([n for n in pool_names if n not in search.excluded],
                                      desc=f"sensitivity, step {len(search.steps) + 1}"):
            cos = cosines(probe_ref, board.embed(probe_rows, {*search.excluded, name}))
            tried.append(Candidate(name, size[name], float(cos.min()), float(cos.mean())))
        if not search.steps:
            search.first_gains = {c.name: c.cosine_min - current for c in tried}
        best = pick(tried, current)
        if best is None:
            break
        search.excluded.append(best.name)
        current = best.cosine_min
        search.steps.append(Step(best.name, best.cosine_min, best.cosine_mean))
    return search
