"""How far a candidate bundle is from its fp32 reference, and whether its vectors depend on batches.

Both bundles are loaded with the service's own `BundleModel`, so what is measured here is exactly
what the service will serve (same tokenizer, padding, pooling and session settings).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edge_embed.core import canary
from edge_embed.core.agreement import cosines, nn_agreement
from edge_embed.core.bundle import Quality
from edge_embed.core.encoder import BundleModel
from edge_embed.core.evalset import EvalSet
from edge_embed.core.pooling import F32
from edge_embed.core.runtime import RuntimeOptions
from edge_embed.core.tooling import Reporter

from .geometry import Geometry, measure

# Batch-invariance probe: each probe input alone vs inside a padded batch of this many rows, the
# batch that showed dynamic int8's dependence (docs/measurements.md, Quantization).
INVARIANCE_BATCH = 17
# How many inputs are probed; spread over the kinds.
INVARIANCE_PROBES = 16
# Probes that share one padded batch (the rest of its rows are the long, short and mid-length
# mates). One probe per batch cost 16 batches padded to the model's limit: 15 of MiniLM
# quantize's 51 s; four per batch is a quarter of that, and each probe still sits beside the
# set's longest and shortest inputs.
PROBES_PER_BATCH = 4
# Worst cases listed per kind in the report and manifest.
WORST_PER_KIND = 3


@dataclass(frozen=True)
class KindStats:
    n: int
    cosine_min: float
    cosine_mean: float
    worst: tuple[tuple[str, float], ...]  # (item id, cosine), worst first


@dataclass(frozen=True)
class Evaluation:
    eval_set: str
    n_inputs: int
    cosine_min: float
    cosine_mean: float
    nn_agreement: float
    geometry: Geometry
    # None: not measured, because a cheaper gate had already failed
    batch_invariance_min: float | None
    reference_invariance_min: float  # the fp32 bundle's own, for scale
    batch_invariance_max_abs_diff: float | None
    max_abs_diff: float
    per_kind: dict[str, KindStats] = field(default_factory=dict)
    # the candidate's own vectors for the set: its compact scale's clipping is measured on them
    vectors: F32 | None = field(default=None, repr=False, compare=False)

    def quality(self) -> Quality:
        return Quality(reference="fp32-bundle", eval_set=self.eval_set, n_inputs=self.n_inputs,
                       cosine_min=round(self.cosine_min, 6),
                       cosine_mean=round(self.cosine_mean, 6),
                       nn_agreement=round(self.nn_agreement, 6),
                       batch_invariance_min=(None if self.batch_invariance_min is None
                                             else round(self.batch_invariance_min, 7)),
                       max_abs_diff=round(self.max_abs_diff, 6))

    def per_kind_json(self) -> dict[str, dict[str, object]]:
        return {kind: {"n": s.n, "cosine_min": round(s.cosine_min, 6),
                       "cosine_mean": round(s.cosine_mean, 6),
                       "worst": [[i, round(c, 6)] for i, c in s.worst]}
                for kind, s in self.per_kind.items()}


def figures(ev: Evaluation) -> dict[str, object]:
    """One candidate's figures, as the manifest and a refusal list them."""
    return {"cosine_min": round(ev.cosine_min, 6), "cosine_mean": round(ev.cosine_mean, 6),
            "nn_agreement": round(ev.nn_agreement, 6), **ev.geometry.to_json(),
            "batch_invariance_min": (None if ev.batch_invariance_min is None
                                     else round(ev.batch_invariance_min, 7))}


def probe_indices(eval_set: EvalSet, count: int = INVARIANCE_PROBES) -> list[int]:
    """Probe inputs spread over the kinds, deterministic, so every run probes the same ones."""
    by_kind: dict[str, list[int]] = {}
    for index, item in enumerate(eval_set.items):
        by_kind.setdefault(item.kind, []).append(index)
    chosen: list[int] = []
    lists = list(by_kind.values())
    step = 0
    while len(chosen) < min(count, len(eval_set.items)):
        for indices in lists:
            pick = step * 7  # a stride, so that consecutive ids (often near-duplicates) are skipped
            if pick < len(indices) and len(chosen) < count:
                chosen.append(indices[pick])
        step += 1
        if step * 7 >= max(len(x) for x in lists):
            break
    return chosen


@dataclass(frozen=True)
class Invariance:
    cosine_min: float
    max_abs_diff: float  # over normalized vectors: 0.0 when the batch changes nothing at all


def batch_invariance(model: BundleModel, texts: Sequence[str], probes: Sequence[int],
                     batch: int = INVARIANCE_BATCH,
                     per_batch: int = PROBES_PER_BATCH) -> Invariance:
    """Min cosine between each probe embedded alone and inside a padded mixed-length batch.

    The batch-mates are the set's longest input (so the batch is padded to the model's limit),
    its shortest, and others spread over the length range: the worst neighbours a caller's text
    can get in the service's micro-batches. `per_batch` probes share a batch, each at its own
    position.
    """
    tokens = model.tokenizer.encode(list(texts))
    by_length = sorted(range(len(tokens)), key=lambda i: len(tokens[i].ids))
    stride = max(1, len(by_length) // (batch - 1))
    mates_all = [by_length[-1], by_length[0], *by_length[stride::stride]]
    worst, diff = 1.0, 0.0
    for first in range(0, len(probes), per_batch):
        group = list(probes[first:first + per_batch])
        rows = [tokens[i].ids for i in mates_all if i not in group][: batch - len(group)]
        positions: list[int] = []
        for slot, probe in enumerate(group, start=first):
            position = slot % (len(rows) + 1)  # vary where the probes sit in the batch
            rows.insert(position, tokens[probe].ids)
            positions = [p + 1 if p >= position else p for p in positions] + [position]
        together = model.finish(model.run(rows))
        for probe, position in zip(group, positions, strict=True):
            alone = model.finish(model.run([tokens[probe].ids]))
            inside = together[position: position + 1]
            worst = min(worst, float(cosines(alone, inside)[0]))
            diff = max(diff, float(np.abs(alone - inside).max()))
    return Invariance(worst, diff)


def embed_all(model: BundleModel, texts: Sequence[str]) -> F32:
    """Pooled vectors (before normalization), in the service's sorted batches."""
    return model.embed(texts)


@dataclass(frozen=True)
class Reference:
    """The fp32 bundle's side of every comparison, measured once however many candidates."""

    folder: Path
    vectors: F32
    invariance_min: float
    # the bundle's canaries (core/canary.py) and the fp32 bundle's vectors for them
    canary_texts: list[str] = field(default_factory=list)
    canary_vectors: F32 = field(default_factory=lambda: np.empty((0, 0), np.float32))


def reference(folder: Path, eval_set: EvalSet, reporter: Reporter | None = None,
              options: RuntimeOptions | None = None) -> Reference:
    reporter = reporter or Reporter(quiet=True)
    model = BundleModel(folder, options)
    reporter.step(f"embedding {eval_set.name} ({len(eval_set.items)} inputs) with {folder.name}")
    vectors = embed_all(model, eval_set.texts)
    # the fp32 bundle's own invariance, for scale: one batch of probes is enough
    own = batch_invariance(model, eval_set.texts, probe_indices(eval_set)[:PROBES_PER_BATCH])
    texts = canary.canary_texts(model.manifest.max_tokens)
    return Reference(folder, vectors, own.cosine_min, texts, canary.embed(model, texts))


def evaluate(ref: Reference, candidate: Path, eval_set: EvalSet,
             reporter: Reporter | None = None, options: RuntimeOptions | None = None,
             check_invariance: Callable[[Evaluation], bool] | None = None) -> Evaluation:
    """The candidate against the reference; the batch-invariance probe runs unless
    `check_invariance(evaluation so far)` says it is not worth it (a gate already failed)."""
    reporter = reporter or Reporter(quiet=True)
    texts = eval_set.texts
    cand_model = BundleModel(candidate, options)
    reporter.step(f"evaluating against {ref.folder.name} on {eval_set.name} "
                  f"({len(texts)} inputs)")
    cand = embed_all(cand_model, texts)
    cos = cosines(ref.vectors, cand)
    per_kind: dict[str, KindStats] = {}
    kinds = np.array([item.kind for item in eval_set.items])
    for kind in eval_set.kinds():
        idx = np.flatnonzero(kinds == kind)
        order = idx[np.argsort(cos[idx])][:WORST_PER_KIND]
        per_kind[kind] = KindStats(
            n=len(idx), cosine_min=float(cos[idx].min()), cosine_mean=float(cos[idx].mean()),
            worst=tuple((eval_set.items[i].id, float(cos[i])) for i in order))
    ev = Evaluation(
        eval_set=eval_set.name, n_inputs=len(texts),
        cosine_min=float(cos.min()), cosine_mean=float(cos.mean()),
        nn_agreement=nn_agreement(ref.vectors, cand), geometry=measure(ref.vectors, cand),
        batch_invariance_min=None, reference_invariance_min=ref.invariance_min,
        batch_invariance_max_abs_diff=None, max_abs_diff=float(np.abs(ref.vectors - cand).max()),
        per_kind=per_kind, vectors=cand)
    if check_invariance is not None and not check_invariance(ev):
        return ev
    reporter.step("checking batch invariance (alone vs inside a padded batch of "
                  f"{INVARIANCE_BATCH})")
    invariance = batch_invariance(cand_model, texts, probe_indices(eval_set))
    return dataclasses.replace(ev, batch_invariance_min=invariance.cosine_min,
                               batch_invariance_max_abs_diff=invariance.max_abs_diff)
