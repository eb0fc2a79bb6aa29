"""The per-token int8 recipe: the levers on top of per-token scales, each its own option.

- smoothing (smooth.py): per-channel factors from the evaluation set's activations, alpha;
- weight bits: 8, or 7 for arithmetic that cannot saturate on any CPU (saturation.py);
- activation bits: 8, or 7 (the other saturation-free choice);
- the word-embedding table in int8 with a scale per row (gather.py).

The defaults are the measured best (see docs/quantization.md for the table they come from).
"""

from __future__ import annotations

from dataclasses import dataclass

from .pertoken import QMAX
from .saturation import SATURATION_FREE_QMAX

# SmoothQuant's alpha: the share of each channel's range moved from the activation into the
# weight. Measured on all-MiniLM-L6-v2 (evaluation set, per-token int8, every matmul int8):
# alpha 0 (no smoothing) min 0.974 / mean 0.9969, 0.5 min 0.9926 / mean 0.9989.
DEFAULT_ALPHA = 0.5
BITS = (7, 8)


@dataclass(frozen=True)
class Recipe:
    smooth_alpha: float | None = DEFAULT_ALPHA  # None: no smoothing
    weight_bits: int = 8
    activation_bits: int = 8
    weight_clip: bool = False  # each weight column's range by least squared error
    int8_embeddings: bool = True

    def __post_init__(self) -> None:
        if self.weight_bits not in BITS or self.activation_bits not in BITS:
            raise ValueError("weight and activation bits must be 7 or 8")
        if self.smooth_alpha is not None and not 0.0 < self.smooth_alpha < 1.0:
            raise ValueError(f"smoothing alpha must be in (0, 1), not {self.smooth_alpha}")

    @property
    def weight_qmax(self) -> float:
        return SATURATION_FREE_QMAX if self.weight_bits == 7 else QMAX

    def to_json(self) -> dict[str, object]:
        return {"smooth_alpha": self.smooth_alpha, "weight_bits": self.weight_bits,
                "activation_bits": self.activation_bits, "weight_clip": self.weight_clip,
                "int8_embeddings": self.int8_embeddings}
