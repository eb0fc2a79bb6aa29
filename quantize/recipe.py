"""The per-token int8 recipe: the levers on top of per-token scales, each its own option.

- smoothing (smooth.py): per-channel factors from the evaluation set's activations, alpha;
- weight bits: 8, or 7 for arithmetic that cannot saturate on any CPU (saturation.py), or 8
  with the pairs that AVX2 adds in 16 bits kept inside int16 (pairs.py);
- activation bits: 8, or 7 (the other saturation-free choice);
- the word-embedding table in int8 with a scale per row (gather.py).

The defaults are the measured best (see docs/quantization.md for the table they come from).
"""

from __future__ import annotations

from dataclasses import dataclass

from .pertoken import QMAX, UQMAX, UQMAX_7BIT
from .saturation import SATURATION_FREE_QMAX, pair_sums_fit

# The default recipe: 8-bit weights bounded per AVX2 lane pair (plain 8-bit ones saturate AVX2's
# 16-bit pair sums), least-squares ranges and alpha 0.55: one set of vectors on every x86 at plain
# 8-bit accuracy. Figures: docs/quantization.md#default_alpha
DEFAULT_ALPHA = 0.55
BITS = (7, 8)
KEPT_AS = ("fp32", "blocks")


@dataclass(frozen=True)
class Recipe:
    smooth_alpha: float | None = DEFAULT_ALPHA  # None: no smoothing
    weight_bits: int = 8
    activation_bits: int = 8
    weight_clip: bool = True  # each weight column's range by least squared error
    int8_embeddings: bool = True
    # 8-bit weights whose AVX2 lane pairs cannot saturate (7-bit weights meet the bound anyway)
    weight_pairs: bool = True
    # the matmuls kept out of per-token int8 (--exclude): fp32, or MatMulNBits 8-bit blocks of
    # 32 (an activation scale per block of K in each row: batch-invariant, near-lossless)
    kept_as: str = "fp32"

    def __post_init__(self) -> None:
        if self.weight_bits not in BITS or self.activation_bits not in BITS:
            raise ValueError("weight and activation bits must be 7 or 8")
        if self.smooth_alpha is not None and not 0.0 < self.smooth_alpha < 1.0:
            raise ValueError(f"smoothing alpha must be in (0, 1), not {self.smooth_alpha}")
        if self.kept_as not in KEPT_AS:
            raise ValueError(f"kept matmuls run as {' or '.join(KEPT_AS)}, not {self.kept_as}")

    @property
    def weight_qmax(self) -> float:
        return SATURATION_FREE_QMAX if self.weight_bits == 7 else QMAX

    @property
    def pair_bound(self) -> bool:
        """8-bit weights quantized under the pair bound (pairs.py)."""
        return self.weight_pairs and self.weight_bits == 8

    @property
    def saturation_free(self) -> bool:
        """No u8 x s8 pair sum can saturate on AVX2 (7-bit weights, 7-bit activations, or
        8-bit weights bounded by pairs), so the u8s8 kernel is exact there too."""
        widest_row = UQMAX_7BIT if self.activation_bits == 7 else UQMAX
        return self.pair_bound or pair_sums_fit(self.weight_qmax, widest_row)

    def to_json(self) -> dict[str, object]:
        return {"smooth_alpha": self.smooth_alpha, "weight_bits": self.weight_bits,
                "activation_bits": self.activation_bits, "weight_clip": self.weight_clip,
                "int8_embeddings": self.int8_embeddings, "weight_pairs": self.pair_bound,
                "kept_as": self.kept_as,
                "saturation_free": self.saturation_free}
