"""The per-architecture table: every tiny twin (tests/fixtures/encoders.py: TWINS) in each
sentence-transformers folder format, through the real export and `edge-embed quantize` with its
defaults (`--method auto`, the default gates), measured, printed as a Markdown table.

    python -m tests.architecture_table [--keep DIR]

Columns: whether the export wrote a bundle; the fp32 bundle's minimum cosine against
sentence-transformers' own `encode` on the export's evaluation set; the method `--method auto`
chose (or "refused"); the int8 bundle's cosine min/mean against the fp32 bundle and its batch
invariance (quantize's own figures, on the same evaluation set, which bundle.json keeps to six
decimals); the neighbour criterion that judged. The twins have random weights: the figures say
the pipeline reproduces each architecture, not how well a real model of it quantizes.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edge_embed.core.agreement import cosines
from edge_embed.core.bundle import load_manifest
from edge_embed.core.encoder import BundleModel
from edge_embed.core.evalset import load_eval_set
from tests.fixtures.encoders import FORMATS, TWINS, build_twin
from tests.fixtures.quantized import build_quantized
from tests.fixtures.tiny import build_tiny_bundle

HEADER = ("twin", "format", "export", "fp32 cos min vs ST", "auto method",
          "int8 cos min / mean vs fp32", "int8 batch invariance", "neighbour criterion")


@dataclass(frozen=True)
class Row:
    twin: str
    fmt: str
    export: str
    fp32_min: str = "-"
    method: str = "-"
    int8: str = "-"
    invariance: str = "-"
    criterion: str = "-"

    def cells(self) -> tuple[str, ...]:
        return (self.twin, self.fmt, self.export, self.fp32_min, self.method, self.int8,
                self.invariance, self.criterion)


def measure(name: str, fmt: str, root: Path, texts: Sequence[str]) -> Row:
    from sentence_transformers import SentenceTransformer

    base = root / f"{name}-{fmt}"
    folder = build_twin(base / "src", name, fmt)
    try:
        fp32 = build_tiny_bundle(folder, base / "fp32", bundle_id=f"{name}-{fmt}")
    except RuntimeError:
        return Row(name, fmt, "refused")
    st = SentenceTransformer(str(folder), device="cpu")
    want = np.asarray(st.encode(list(texts), convert_to_numpy=True))
    fp32_min = float(cosines(want, BundleModel(fp32).embed(list(texts))).min())
    try:
        int8 = build_quantized(fp32, base / "int8", "--id", f"{name}-{fmt}-int8")
    except RuntimeError:
        return Row(name, fmt, "ok", f"{fp32_min:.7f}", "refused")
    manifest = load_manifest(int8)
    q, quality = manifest.quantization, manifest.quality
    if q is None or quality is None:
        raise RuntimeError(f"{int8}/bundle.json has no quantization or quality record")
    invariance = quality.batch_invariance_min
    return Row(name, fmt, "ok", f"{fp32_min:.7f}", str(q["selection"]["chosen"]),
               f"{quality.cosine_min:.6f} / {quality.cosine_mean:.6f}",
               "-" if invariance is None else f"{invariance:.6f}",
               str(q["verdict"]["neighbour_criterion"]))


def table(rows: Sequence[Row]) -> str:
    lines = ["| " + " | ".join(HEADER) + " |", "|" + " --- |" * len(HEADER)]
    lines += ["| " + " | ".join(row.cells()) + " |" for row in rows]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--keep", type=Path, metavar="DIR",
                        help="build in DIR and keep it (default: a temporary folder, removed)")
    args = parser.parse_args(argv)
    eval_set = load_eval_set()
    with tempfile.TemporaryDirectory() as tmp:
        root = args.keep or Path(tmp)
        rows = []
        for name in TWINS:
            for fmt in FORMATS:
                rows.append(measure(name, fmt, root, eval_set.texts))
                print(f"measured {name} ({fmt})", file=sys.stderr, flush=True)
    print(f"eval set: {eval_set.name}, {len(eval_set.texts)} inputs")
    print(table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
