"""Do two CPUs give the same vectors? Embed a few short texts here, compare files from elsewhere.

    python -m edge_embed.quantize.crosscpu embed BUNDLE OUT.npy     (on each machine)
    python -m edge_embed.quantize.crosscpu compare A.npy B.npy ...  (anywhere)

`embed` needs only the serving runtime (onnxruntime, tokenizers, numpy), so that it runs inside
a bare arm64 root under emulation, and it embeds short texts only: emulated, a batch padded to
256 tokens takes many minutes. `compare` prints the worst cosine between the first file and
each other one, and exits 1 where it falls below --min; with --record BUNDLE it also writes
the figures into that bundle's manifest (`quantization.cross_cpu`).

Each file is named BUNDLE.MACHINE.npy (run.sh names them so); MACHINE is what is recorded.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

import numpy as np

from edge_embed.core.agreement import cosines
from edge_embed.core.bundle import Quantization, load_manifest
from edge_embed.core.encoder import BundleModel

# Short texts of the kinds int8 finds hardest (one word, a phrase, a sentence, digits): the
# evaluation set's worst cases are short inputs, and emulation is ~100x slower than native.
TEXTS = (
    "hello",
    "Paris",
    "quantization",
    "What is the capital of France?",
    "The cat sat on the mat.",
    "A man is playing a guitar on stage.",
    "Stock markets fell sharply on Monday.",
    "E = mc^2",
    "1234 5678",
    "résumé naïve café",
)
# The agreement the same int8 bundle must reach between CPUs: 0.9999 is the batch-invariance
# gate's level (float operators round differently by a few ulps between kernels; saturating
# 16-bit sums gave 0.988).
MIN_AGREEMENT = 0.9999


def embed(bundle: Path, out: Path) -> None:
    model = BundleModel(bundle)
    vectors = model.finish(model.embed(list(TEXTS)))
    np.save(out, vectors.astype(np.float32))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m edge_embed.quantize.crosscpu",
                                description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    e = sub.add_parser("embed")
    e.add_argument("bundle", type=Path)
    e.add_argument("out", type=Path)
    c = sub.add_parser("compare")
    c.add_argument("files", type=Path, nargs="+")
    c.add_argument("--min", type=float, default=MIN_AGREEMENT)
    c.add_argument("--record", type=Path, metavar="BUNDLE",
                   help="write the figures into BUNDLE's bundle.json (quantization.cross_cpu)")
    args = p.parse_args(argv)
    if args.cmd == "embed":
        embed(args.bundle, args.out)
        return 0
    missing = [str(f) for f in args.files if not f.is_file()]
    if missing or len(args.files) < 2:
        print(f"crosscpu compare: needs two or more vector files; missing: {', '.join(missing)}",
              file=sys.stderr)
        return 2
    vectors = {f: np.load(f) for f in args.files}
    pairs: dict[str, float] = {}
    for i, first in enumerate(args.files):
        for other in args.files[i + 1:]:
            cos = float(cosines(vectors[first], vectors[other]).min())
            pairs[f"{machine(first)} vs {machine(other)}"] = round(cos, 7)
            print(f"{first.name} vs {other.name}: min cosine {cos:.7f}")
    worst = min(pairs.values())
    if args.record is not None:
        record(args.record, pairs)
    return 0 if worst >= args.min else 1


def machine(path: Path) -> str:
    """MACHINE of BUNDLE.MACHINE.npy."""
    return path.name.removesuffix(".npy").rsplit(".", 1)[-1]


def record(bundle: Path, pairs: dict[str, float]) -> None:
    manifest = load_manifest(bundle)
    quantization = dict(manifest.quantization or {})
    quantization["cross_cpu"] = {"texts": len(TEXTS), "min_cosine": pairs,
                                 "worst": min(pairs.values())}
    dataclasses.replace(manifest, quantization=Quantization.of(quantization)).write(bundle)


if __name__ == "__main__":
    raise SystemExit(main())
