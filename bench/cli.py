"""`edge-embed bench`: run the benchmark, print the table, write JSON, text and a PNG chart.

`edge-embed bench sweep` measures the tuning knobs instead (bench/sweep.py), `bench compact`
the compact vector types' search quality (bench/compact.py).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from edge_embed.core.tooling import ToolError, check_bundles, run_cli

from .bulk import main as bulk_main
from .chart import chart
from .compact import main as compact_main
from .fastembed_peer import FASTEMBED_VENV
from .report import table, write_json
from .rerank import main as rerank_main
from .run import Config, Plan, add_run_options, run
from .sweep import main as sweep_main
from .workloads import NAMES

RESULT_JSON = "bench.json"
RESULT_TABLE = "bench.txt"
RESULT_CHART = "bench.png"


def parser(prog: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description=__doc__.splitlines()[0], epilog=(
        f"`{prog} sweep --help`: the tuning sweep, each knob's values against the defaults; "
        f"`{prog} bulk --help`: the corpus job against raw onnxruntime; "
        f"`{prog} compact --help`: the compact vector types' search quality; `{prog} rerank "
        "--help`: rerank pairs/s and p50, int8 and fp32 services and CrossEncoder on torch"))
    add_run_options(p, int8="the bundle under test (the default int8 bundle)",
                    fp32="the fp32 bundle, served too",
                    window="seconds per system per workload per round",
                    rounds="interleaved rounds (median reported)")
    p.add_argument("--source", type=Path, metavar="DIR",
                   help="the sentence-transformers folder, for the torch baseline")
    p.add_argument("--memory-seconds", type=float, help="length of the memory run (0: skip)")
    p.add_argument("--cold-runs", type=int, help="cold starts measured, median reported (0: skip)")
    p.add_argument("--workload", action="append", default=[], choices=NAMES,
                   help="measure only this workload (repeat; tuning runs)")
    p.add_argument("--encoding", choices=("base64", "float"), default="base64",
                   help="encoding_format the client asks for (OpenAI's clients send base64)")
    p.add_argument("--server-arg", action="append", default=[], metavar="ARG",
                   help="an extra flag for every service started (repeat; e.g. "
                        "--server-arg=--batch-tokens=4096)")
    p.add_argument("--memory-reference-arg", action="append", metavar="ARG",
                   help="run the memory run again with these extra flags, to price the memory "
                        "bounds in throughput (repeat)")
    p.add_argument("--peer-cache", type=Path, metavar="DIR",
                   help="where the peers' int8 graph is cached (default: beside the fp32 bundle)")
    p.add_argument("--no-lone", action="store_true",
                   help="do not serve the lone-session layout (--lone-threads=CPUs) beside the "
                        "default")
    p.add_argument("--fastembed-venv", type=Path, default=FASTEMBED_VENV, metavar="VENV",
                   help="the venv with fastembed for its server beside ours (make "
                        "install-fastembed; absent: skipped)")
    p.add_argument("--baseline-python", type=Path, metavar="PYTHON",
                   help="another checkout's venv python: serves the int8 bundle beside ours as "
                        "the build before (e.g. ../main/.venv/bin/python)")
    p.add_argument("--runtime-venv", type=Path, help="venv of the runtime install to measure")
    p.add_argument("--no-install", action="store_true",
                   help="do not create the runtime venv when it is missing")
    return p


def main(argv: list[str] | None = None, prog: str = "edge-embed bench") -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["sweep"]:
        return sweep_main(argv[1:], prog=f"{prog} sweep")
    if argv[:1] == ["bulk"]:
        return bulk_main(argv[1:], prog=f"{prog} bulk")
    if argv[:1] == ["rerank"]:
        return rerank_main(argv[1:], prog=f"{prog} rerank")
    if argv[:1] == ["compact"]:
        return compact_main(argv[1:], prog=f"{prog} compact")
    args = parser(prog).parse_args(argv)

    def body() -> int:
        check_bundles({"--int8": args.int8, "--fp32": args.fp32})
        if args.source is not None and not (args.source / "modules.json").is_file():
            raise ToolError(f"--source: {args.source} is not a sentence-transformers folder "
                            "(no modules.json)")
        plan = Plan.quick() if args.quick else Plan()
        overrides = {"window_s": args.window, "rounds": args.rounds,
                     "memory_s": args.memory_seconds, "cold_runs": args.cold_runs}
        for key, value in overrides.items():
            if value is not None:
                if value < 0 or (value == 0 and key in ("window_s", "rounds")):
                    raise ToolError(f"{key}: must be positive (memory and cold runs: 0 skips)")
                plan = Plan(**{**plan.__dict__, key: value})
        if args.no_install:
            plan = Plan(**{**plan.__dict__, "create_runtime_venv": False})
        cfg = Config(int8=args.int8, out=args.out, fp32=args.fp32, source=args.source, plan=plan,
                     quick=args.quick, server_args=args.server_arg,
                     memory_reference_args=args.memory_reference_arg, encoding=args.encoding,
                     only=args.workload, peer_cache=args.peer_cache,
                     lone_layout=not args.no_lone, fastembed_venv=args.fastembed_venv,
                     baseline_python=args.baseline_python)
        if args.runtime_venv is not None:
            cfg.runtime_venv = args.runtime_venv
        args.out.mkdir(parents=True, exist_ok=True)
        result = run(cfg)
        text = table(result)
        print(text, end="")
        write_json(result, args.out / RESULT_JSON)
        (args.out / RESULT_TABLE).write_text(text, encoding="utf-8")
        chart(result, args.out / RESULT_CHART)
        print(f"\nwrote {args.out / RESULT_JSON}, {args.out / RESULT_TABLE}, "
              f"{args.out / RESULT_CHART}")
        return 0

    return run_cli(prog, body)
