"""The quality gates a quantized bundle must pass, and which criterion judges its neighbours.

Every candidate is held to the mean cosine and batch-invariance gates (and the optional min
cosine). Its neighbourhoods are judged by nearest-neighbour agreement where the reference lets
that judge, else by the rank agreement of pairwise similarities (see geometry.py): the verdict
says which, and why, in words that go into the manifest and the refusal.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .evaluate import Evaluation

NN_CRITERION = "nn_agreement"
RANK_CRITERION = "rank_agreement"


@dataclass(frozen=True)
class Gates:
    # The required quality: mean cosine >= 0.99, nearest-neighbour agreement >= 0.97, and a vector
    # alone vs inside a padded batch >= 0.9999 (the service batches callers together).
    mean: float = 0.99
    nn: float = 0.97
    invariance: float = 0.9999
    min: float | None = None  # optional floor on the worst cosine
    # Where nearest neighbours cannot judge: Spearman of the pairwise similarities. all-MiniLM-L6-v2
    # per-token int8 scores 0.9971; 0.995 holds a candidate's similarity noise to about a tenth of
    # the spread of the reference's similarities (for normal noise, Pearson = 1/sqrt(1 + r^2),
    # r = noise / spread: 0.995 is r ~ 0.1).
    rank: float = 0.995


@dataclass(frozen=True)
class Verdict:
    criterion: str  # NN_CRITERION or RANK_CRITERION
    why: str  # why that criterion, with the figures behind the choice
    failures: tuple[str, ...]

    @property
    def passed(self) -> bool:
        return not self.failures

    def to_json(self) -> dict[str, object]:
        return {"neighbour_criterion": self.criterion, "why": self.why,
                "passed": self.passed, "failures": list(self.failures)}


def neighbour_criterion(gates: Gates, ev: Evaluation) -> tuple[str, str]:
    """NN agreement where a candidate whose only fault were its noise would meet the NN gate."""
    g = ev.geometry
    if g.nn_expected >= gates.nn:
        return NN_CRITERION, (
            f"nearest neighbours are resolvable: at this candidate's similarity noise "
            f"{g.similarity_noise:.2g} a noise-only candidate would score {g.nn_expected:.4f} "
            f">= the gate {gates.nn}")
    return RANK_CRITERION, (
        f"nearest neighbours are tied within the noise (median gap to the second nearest "
        f"{g.nn_gap_median:.2g}, similarity noise {g.similarity_noise:.2g}, spread of the "
        f"reference's similarities {g.similarity_spread:.2g}): a noise-only candidate would "
        f"score NN agreement {g.nn_expected:.4f} < the gate {gates.nn}, so the rank agreement "
        "of all pairwise similarities judges instead")


def quality_failures(gates: Gates, ev: Evaluation) -> tuple[str, str, list[str]]:
    """The gates that do not need the invariance probe: (criterion, why, failures)."""
    failed = []
    if ev.cosine_mean < gates.mean:
        failed.append(f"mean cosine {ev.cosine_mean:.5f} < {gates.mean}")
    criterion, why = neighbour_criterion(gates, ev)
    if criterion == NN_CRITERION and ev.nn_agreement < gates.nn:
        failed.append(f"nearest-neighbour agreement {ev.nn_agreement:.4f} < {gates.nn}")
    if criterion == RANK_CRITERION and ev.geometry.rank_agreement < gates.rank:
        failed.append(f"rank agreement {ev.geometry.rank_agreement:.5f} < {gates.rank}")
    if gates.min is not None and ev.cosine_min < gates.min:
        failed.append(f"min cosine {ev.cosine_min:.5f} < {gates.min}")
    return criterion, why, failed


def judge(gates: Gates, ev: Evaluation) -> Verdict:
    criterion, why, failed = quality_failures(gates, ev)
    if ev.batch_invariance_min is None:
        if not failed:  # skipped only after another gate failed; never a silent pass
            failed.append("batch invariance not measured")
    elif ev.batch_invariance_min < gates.invariance:
        failed.append(f"batch invariance {ev.batch_invariance_min:.6f} < {gates.invariance}")
    return Verdict(criterion, why, tuple(failed))
