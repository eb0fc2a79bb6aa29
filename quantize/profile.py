"""Where a bundle's time goes, per operator type: onnxruntime's own profiler, the service's
session settings.

    python -m edge_embed.quantize.profile BUNDLE [BUNDLE ...] [--runs 8] [--threads 1]

For each bundle and each workload (the speed test's: 32 short sentences, and the 32 longest
evaluation texts, ~256 tokens), the session runs the batch `--runs` times with profiling on;
the per-node kernel times are summed by operator type and printed as milliseconds per run and
as a share of the run. The CPU's int8 instruction sets are printed first: the int8 operators'
share depends on them (AVX-512 VNNI sums u8 x s8 in one instruction; AVX2 takes three).
"""

from __future__ import annotations

import argparse
import json
import tempfile
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

import onnxruntime as ort

from edge_embed.core.encoder import BundleModel
from edge_embed.core.runtime import RuntimeOptions, session_options
from edge_embed.core.tooling import measured_on

from .speedtest import eval_batches

# Runs counted per workload after one warm-up run (packing weights, growing the arena):
# 8 keeps a long batch (~0.3-0.6 s a run) under 5 s per bundle on 2 cores.
RUNS = 8
# How many operator types to print per workload; the rest are summed into one line.
TOP = 12
# onnxruntime's profile events for a node's kernel end in this; "cat" is "Node" for them.
_KERNEL_SUFFIX = "_kernel_time"


def op_times(events: Sequence[dict[str, object]]) -> dict[str, float]:
    """Microseconds per operator type over all node-kernel events of a profile."""
    totals: dict[str, float] = defaultdict(float)
    for e in events:
        name = e.get("name")
        args = e.get("args")
        dur = e.get("dur")
        if (e.get("cat") == "Node" and isinstance(name, str) and name.endswith(_KERNEL_SUFFIX)
                and isinstance(args, dict) and isinstance(dur, (int, float))):
            totals[str(args.get("op_name", "?"))] += float(dur)
    return dict(totals)


def after_first_run(events: Sequence[dict[str, object]]) -> list[dict[str, object]]:
    """The events from the second run on: the first packs weights and grows the arena."""
    starts = sorted(float(e["ts"]) for e in events  # type: ignore[arg-type]
                    if e.get("cat") == "Session" and e.get("name") == "model_run")
    if len(starts) < 2:
        return list(events)
    return [e for e in events if float(e.get("ts", 0)) >= starts[1]]  # type: ignore[arg-type]


def profile(bundle: Path, runs: int = RUNS,
            threads: int | None = None) -> dict[str, dict[str, float]]:
    """{workload: {op type: ms per run}} for one bundle."""
    options = RuntimeOptions(intra_op_threads=threads)
    model = BundleModel(bundle, options)  # the tokenizer and the feeds, as the service builds them
    result: dict[str, dict[str, float]] = {}
    for kind, batch in eval_batches(model).items():
        feed = model.feed(batch).arrays
        with tempfile.TemporaryDirectory(prefix="edge-embed-profile-") as tmp:
            so = session_options(model.manifest, options)
            so.enable_profiling = True
            so.profile_file_prefix = str(Path(tmp) / "ort")
            session = ort.InferenceSession(str(bundle / model.manifest.model_file), so,
                                           providers=["CPUExecutionProvider"])
            for _ in range(runs + 1):
                session.run(None, feed)
            events = json.loads(Path(session.end_profiling()).read_text())
        totals = op_times(after_first_run(events))
        result[kind] = {op: us / 1000 / runs for op, us in totals.items()}
    return result


def render(name: str, times: dict[str, dict[str, float]], top: int = TOP) -> str:
    lines = []
    for kind, ops in times.items():
        total = sum(ops.values())
        lines.append(f"{name} — {kind}: {total:.2f} ms per run in operators")
        ranked = sorted(ops.items(), key=lambda kv: -kv[1])
        for op, ms in ranked[:top]:
            lines.append(f"  {op:34s} {ms:8.2f} ms  {100 * ms / total:5.1f} %")
        rest = sum(ms for _, ms in ranked[top:])
        if rest:
            lines.append(f"  {'(other)':34s} {rest:8.2f} ms  {100 * rest / total:5.1f} %")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m edge_embed.quantize.profile", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("bundles", type=Path, nargs="+", metavar="BUNDLE")
    p.add_argument("--runs", type=int, default=RUNS)
    p.add_argument("--threads", type=int, default=None, help="intra-op threads (default: every "
                   "usable CPU, as the service)")
    args = p.parse_args(argv)
    machine = measured_on()
    print(f"CPU: {machine['cpu']}; int8 flags: {' '.join(map(str, machine['isa']))}; "  # type: ignore[call-overload]
          f"target: {machine['target']}; onnxruntime {machine['onnxruntime']}")
    for bundle in args.bundles:
        print(render(bundle.name, profile(bundle, args.runs, args.threads)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
