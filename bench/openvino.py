"""OpenVINO against onnxruntime's CPU provider, on the same bundles, in one process.

    python -m edge_embed.bench.openvino --fp32 FP32_BUNDLE [--int8 INT8_BUNDLE ...] [--out FILE]

Runs in the OpenVINO venv (`make bench-openvino`; onnxruntime-openvino carries both
providers). Every configuration runs the speed test's batches (32 short sentences; the 32
longest evaluation texts, ~256 tokens) in rotating order, round after round; each figure is
the median ratio to the fp32 bundle on the CPU provider, measured seconds apart (on a shared
machine absolute times swing; ratios taken together do not). Prints a table and writes JSON.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path

from edge_embed.core.encoder import BundleModel
from edge_embed.core.errors import ProviderError
from edge_embed.core.runtime import RuntimeOptions
from edge_embed.core.tooling import measured_on
from edge_embed.quantize.speedtest import measure_models

# Interleaved rounds: onnxruntime int8 under OpenVINO runs 4-8x slower than on the CPU provider,
# so each round of four configurations takes several seconds on 2 cores.
ROUNDS = 6
PROVIDERS = ("cpu", "openvino")


def run(fp32: Path, others: Sequence[Path], rounds: int) -> dict[str, object]:
    configs: dict[str, BundleModel] = {}
    refused: dict[str, str] = {}
    for bundle in (fp32, *others):
        for provider in PROVIDERS:
            label = f"{bundle.name} {provider}"
            try:
                configs[label] = BundleModel(bundle, RuntimeOptions(providers=(provider,)))
            except ProviderError as exc:  # a graph the provider cannot run (per-token int8)
                refused[label] = str(exc)
    figures = measure_models(configs, rounds)
    return {"machine": measured_on(), "baseline": next(iter(configs)), "rounds": rounds,
            "providers_used": {k: list(m.providers.used) for k, m in configs.items()},
            "results": figures, "refused": refused}


def render(result: dict[str, object]) -> str:
    machine = result["machine"]
    assert isinstance(machine, dict)
    lines = [f"OpenVINO vs CPU provider on {machine['cpu']} "
             f"(int8 flags: {' '.join(machine['isa'])}); ratio to fp32 on the CPU provider, "
             "higher is faster",
             f"{'configuration':16s} {'short x':>8s} {'long x':>8s} {'short ms':>9s} "
             f"{'long ms':>9s}"]
    results = result["results"]
    assert isinstance(results, dict)
    width = max(16, *(len(n) for n in results))
    for name, r in results.items():
        lines.append(f"{name:{width}s} {r['short']:8.2f} {r['long']:8.2f} {r['short_ms']:9.1f} "
                     f"{r['long_ms']:9.1f}")
    refused = result["refused"]
    assert isinstance(refused, dict)
    lines.extend(f"{name:{width}s} not run: {why}" for name, why in refused.items())
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m edge_embed.bench.openvino", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--fp32", type=Path, required=True, metavar="BUNDLE")
    p.add_argument("--int8", type=Path, action="append", default=[], metavar="BUNDLE",
                   help="an int8 bundle to run on both providers too (repeatable)")
    p.add_argument("--rounds", type=int, default=ROUNDS)
    p.add_argument("--out", type=Path, help="write the figures here as JSON")
    args = p.parse_args(argv)
    import onnxruntime as ort

    if "OpenVINOExecutionProvider" not in ort.get_available_providers():
        print("bench openvino: this onnxruntime has no OpenVINOExecutionProvider; run it from "
              "the OpenVINO venv (make install-openvino, then make bench-openvino)")
        return 2
    result = run(args.fp32, args.int8, args.rounds)
    print(render(result))
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
