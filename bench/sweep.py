"""`edge-embed bench sweep`: every tuning knob's values, each against the current defaults.

The serving defaults (threads, graph optimization per bundle, batch token budget, batching delay,
thread spinning) are to be chosen from these numbers. One knob varies at a time; every other
setting stays at its default. A baseline service with the defaults runs for the whole sweep;
each candidate value gets a service of its own, started once, and the two are driven from
separate client processes in alternating windows (baseline first in even rounds, candidate
first in odd ones), as `bench.run` drives its systems. On a shared 2-core machine only such
back-to-back ratios are trustworthy, so a value is reported as the median over rounds of
candidate/baseline throughput per workload (bench.run's own pairing). An A/A control, a second
service with the defaults against the baseline, shows how far from 1.00 noise alone moves a
ratio.
"""

from __future__ import annotations

import argparse
import hashlib
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tokenizers import Tokenizer

import edge_embed.service
from edge_embed.core.bundle import Manifest, load_manifest
from edge_embed.core.cpus import plan_lone_threads, plan_threads, usable_cpus
from edge_embed.core.runtime import graph_level_name
from edge_embed.core.tooling import ToolError, check_bundles, run_cli
from edge_embed.service.process import ServerError
from edge_embed.service.settings import Settings

from . import workloads
from .report import _fmt, _grid, write_json
from .run import PAIRS, Say, _client, _paired_ratios, _summary, add_run_options
from .server import BatchCounters, Server
from .stats import Window
from .worker import Worker, WorkerError

RESULT_JSON = "sweep.json"
RESULT_TABLE = "sweep.txt"
# What OpenAI's clients ask for, and what `bench.run` measures by default.
ENCODING = "base64"
# The defaults every knob varies from: the service's own, so the sweep follows them when they
# change.
DEFAULTS = Settings()

# Single-run layouts tried, with this many intra-op threads (and every usable CPU): one thread
# leaves a core to the event loop and the tokenizer; two is all of this 2-core box.
THREAD_COUNTS = (1, 2)
# The other way to use the cores: this many model runs at once, CPUs / runs threads each (the
# default layout, core.cpus.plan_threads, is added wherever it is not among these).
CONCURRENT_RUNS = 2
GRAPH_LEVELS = ("basic", "extended", "all")
# Around the default 1024 (4 MiniLM-long texts, 32 x 32 short ones), up to 32 x 256.
BATCH_TOKENS = (512, 1024, 2048, 8192)
# 0 never waits; 5 ms is already ~2x a short sentence's c=1 latency on 2 cores.
BATCH_DELAYS_MS = (0.0, 1.0, 2.0, 5.0)
SPINNING = ("on", "off")

ALL_WORKLOADS = workloads.NAMES
# The token budget binds where a batch's padded size can pass it: long texts and the mixed
# stream's tail. 16 short sentences (c=16, ~300 padded tokens) stay below every value swept; a
# short32 batch (32 x 10-20 tokens) can pass 512 but not the 1024 default, so 512's effect on it
# is not measured here.
BATCH_TOKEN_WORKLOADS = ("long8", "mixed")
KNOB_NAMES = ("threads", "graph_optimization_int8", "batch_tokens", "batch_delay_ms",
              "spinning", "graph_optimization_fp32")
# A 2-core box stays that busy for this share of a window's length while it warms up (the
# untimed warm-up requests before each window run for at most a fifth of it, see client.py).
WARMUP_SHARE = 0.2


@dataclass(frozen=True)
class SweepPlan:
    """How long each pair of windows runs; `quick` is a seconds-long smoke run for tests."""

    # Per value about 3 rounds x 5 workloads x 2 windows: 1 s windows keep the whole MiniLM
    # sweep near 10 minutes while a long8 window still holds ~10 requests (fp32: ~7).
    window_s: float = 1.0
    rounds: int = 3  # interleaved rounds; each ratio is the median over them
    # A window also stops after this many requests: bounds the c=1 workload on a fast box.
    max_requests: int = 100_000
    warmup: int = 8  # untimed requests before each window

    @staticmethod
    def quick() -> SweepPlan:
        return SweepPlan(window_s=0.05, rounds=1, max_requests=50, warmup=1)


@dataclass(frozen=True)
class Value:
    label: str
    args: tuple[str, ...]  # the service flags that set it
    default: bool = False  # the current default: it is the baseline, not measured against itself


@dataclass(frozen=True)
class Knob:
    name: str
    flag: str
    bundle: str  # "int8" or "fp32": the service whose setting varies
    workloads: tuple[str, ...]
    values: tuple[Value, ...]

    @property
    def default(self) -> str:
        return next((v.label for v in self.values if v.default), "-")


@dataclass
class SweepConfig:
    int8: Path
    fp32: Path | None = None
    plan: SweepPlan = field(default_factory=SweepPlan)
    quick: bool = False
    only: Sequence[str] = ()  # sweep just these knobs (tuning runs); empty: all


def _say(message: str) -> None:
    print(f"bench sweep: {message}", file=sys.stderr, flush=True)


def _number(value: float) -> str:
    return f"{value:g}"


def _numeric_values(flag: str, values: Sequence[float], default: float) -> tuple[Value, ...]:
    """The swept values, with the default among them even where the list does not name it."""
    return tuple(Value(_number(v), (flag, _number(v)), v == default)
                 for v in sorted({*values, default}))


def thread_values(cpus: int) -> tuple[Value, ...]:
    """Runs x threads layouts, each given with both flags (so that none depends on the other's
    default): one run on every CPU, one run on one thread, and CONCURRENT_RUNS runs sharing the
    CPUs; the default layout (core.cpus.plan_threads) among them."""
    default = plan_threads(cpus, DEFAULTS.threads, DEFAULTS.concurrent_runs)
    layouts = {(c, 1) for c in (*THREAD_COUNTS, cpus) if c <= cpus}
    if cpus >= CONCURRENT_RUNS:
        layouts.add((max(1, cpus // CONCURRENT_RUNS), CONCURRENT_RUNS))
    layouts.add(default)
    out = []
    for threads, runs in sorted(layouts, key=lambda tr: (tr[1], tr[0])):
        label = str(threads) if runs == 1 else (
            f"{runs} runs x {threads} {'thread' if threads == 1 else 'threads'}")
        flags = ("--concurrent-runs", str(runs), "--threads", str(threads))
        is_default = (threads, runs) == default
        # Where the defaults build the lone session (a run alone in flight on every CPU), the
        # default is also measured without it; every other value is the fixed layout its label
        # names.
        if is_default and plan_lone_threads(cpus, threads, DEFAULTS.lone_threads) is not None:
            out.append(Value(f"{label}, no lone session", (*flags, "--lone-threads",
                                                           str(threads)), False))
        out.append(Value(label, flags if is_default else (*flags, "--lone-threads",
                                                          str(threads)), is_default))
    return tuple(out)


def graph_values(manifest: Manifest) -> tuple[Value, ...]:
    default = graph_level_name(manifest, DEFAULTS.graph_optimization)
    return tuple(Value(level, ("--graph-optimization", level), level == default)
                 for level in GRAPH_LEVELS)


def knobs(manifest8: Manifest, manifest32: Manifest | None, cpus: int,
          only: Sequence[str] = ()) -> list[Knob]:
    default_spinning = "on" if DEFAULTS.spinning else "off"
    out = [
        Knob("threads", "--threads", "int8", ALL_WORKLOADS, thread_values(cpus)),
        Knob("graph_optimization_int8", "--graph-optimization", "int8", ALL_WORKLOADS,
             graph_values(manifest8)),
        Knob("batch_tokens", "--batch-tokens", "int8", BATCH_TOKEN_WORKLOADS,
             _numeric_values("--batch-tokens", BATCH_TOKENS, DEFAULTS.batching.max_tokens)),
        Knob("batch_delay_ms", "--batch-delay-ms", "int8", ALL_WORKLOADS,
             _numeric_values("--batch-delay-ms", BATCH_DELAYS_MS, DEFAULTS.batching.delay_ms)),
        Knob("spinning", "--spinning", "int8", ALL_WORKLOADS,
             tuple(Value(s, ("--spinning", s), s == default_spinning) for s in SPINNING)),
    ]
    # Last: the fp32 baseline then replaces the int8 one instead of running beside it.
    if manifest32 is not None:
        out.append(Knob("graph_optimization_fp32", "--graph-optimization", "fp32",
                        ALL_WORKLOADS, graph_values(manifest32)))
    return [k for k in out if not only or k.name in only]


CONTROL = Knob("control", "(none)", "int8", ALL_WORKLOADS, (Value("defaults again", ()),))


@dataclass
class _Bundle:
    path: Path
    manifest: Manifest


class Side:
    """One service and the client process that drives it, started together."""

    def __init__(self, bundle: Path, model_id: str, args: Sequence[str], wl_file: Path,
                 logs: Path, name: str) -> None:
        self.name = name
        self.server = Server(bundle, logs / f"{name}.log", args)
        self.client: Worker | None = None
        try:
            self.client = _client(self.server, model_id, wl_file, logs, f"client-{name}",
                                  ENCODING)
            self.server.wait_ready()
            self.client.wait_ready()
        except BaseException:
            self.close()
            raise

    def measure(self, workload: str, plan: SweepPlan) -> tuple[Window, BatchCounters]:
        assert self.client is not None
        before = self.server.counters()
        w = self.client.measure(workload, plan.window_s, plan.max_requests, plan.warmup)
        return w, self.server.counters() - before

    def close(self) -> None:
        if self.client is not None:
            self.client.close()
        self.server.stop()


def served_fingerprint(bundle: Path) -> str:
    """A hash of what a service started now would run: the service's sources and the bundle.

    The checkout is shared: a commit or a rebuilt bundle landing mid-sweep would pair a
    baseline started on the old version with candidates started on the new one, and the ratios
    would measure the change. Bundle files count by name, size and modification time (a model
    is tens of MB; it is replaced whole, never edited in place).
    """
    root = Path(edge_embed.service.__file__).parent
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*.py")):
        digest.update(path.relative_to(root).as_posix().encode() + b"\0" + path.read_bytes())
    try:
        for path in sorted(bundle.resolve().iterdir()):
            st = path.stat()
            digest.update(f"{path.name}\0{st.st_size}\0{st.st_mtime_ns}\0".encode())
    except OSError as exc:  # being rebuilt by someone else: no baseline to pair with
        raise ToolError(f"{bundle}: unreadable mid-sweep ({exc.strerror}); run the sweep again "
                        "once it is rebuilt") from None
    return digest.hexdigest()[:16]


class Baseline:
    """The defaults' service for the bundle tuned; restarted when what it runs changes."""

    def __init__(self, bundles: dict[str, _Bundle], wl_file: Path, logs: Path, say: Say) -> None:
        self.bundles = bundles
        self.wl_file = wl_file
        self.logs = logs
        self.say = say
        self.side: Side | None = None
        self.bundle = ""
        self.code = ""
        self.codes: dict[str, list[str]] = {}  # per bundle, every version a baseline ran
        self.starts = 0

    def get(self, bundle: str) -> Side:
        """The baseline to pair the next candidate with; call just before starting that one."""
        code = served_fingerprint(self.bundles[bundle].path)
        if self.side is not None and self.bundle == bundle and self.code == code:
            return self.side
        if self.side is not None:
            if self.bundle == bundle:
                self.say(f"the service's code or bundle changed ({self.code} -> {code}): "
                         "restarting the baseline, so that each pair runs one version")
            self.side.close()
            self.side = None
        self.say(f"starting the baseline: {bundle} bundle, defaults")
        b = self.bundles[bundle]
        self.starts += 1
        self.side = Side(b.path, b.manifest.id, (), self.wl_file, self.logs,
                         f"baseline-{bundle}-{self.starts}")
        self.bundle, self.code = bundle, code
        if code not in self.codes.setdefault(bundle, []):
            self.codes[bundle].append(code)
        return self.side

    def close(self) -> None:
        if self.side is not None:
            self.side.close()
            self.side = None


@dataclass
class Record:
    """One side's windows and engine counters, per workload, over the rounds."""

    windows: dict[str, list[Window]] = field(default_factory=dict)
    counters: dict[str, BatchCounters] = field(default_factory=dict)

    def add(self, workload: str, w: Window, c: BatchCounters) -> None:
        self.windows.setdefault(workload, []).append(w)
        self.counters[workload] = c + self.counters.get(workload, BatchCounters())

    def extend(self, other: Record) -> None:
        for wl, ws in other.windows.items():
            self.windows.setdefault(wl, []).extend(ws)
        for wl, c in other.counters.items():
            self.counters[wl] = c + self.counters.get(wl, BatchCounters())

    def errors(self) -> int:
        return sum(w.errors for ws in self.windows.values() for w in ws)

    def p50(self, workload: str) -> float | None:
        ws = self.windows.get(workload)
        return _summary(ws)["p50_ms"] if ws else None

    def padding(self) -> dict[str, float | None]:
        return {wl: None if c.padding_share is None else round(c.padding_share, 4)
                for wl, c in self.counters.items()}


def paired_ratios(candidate: dict[str, list[Window]],
                  baseline: dict[str, list[Window]]) -> dict[str, float]:
    """Candidate/baseline throughput per workload, by bench.run's pairing of its first pair."""
    a, b = PAIRS[0]
    key = f"{a}/{b}"
    by_workload = _paired_ratios({a: candidate, b: baseline})
    return {wl: pair[key] for wl, pair in by_workload.items() if key in pair}


def _measure(base: Side, cand: Side, knob: Knob, plan: SweepPlan,
             say: Say) -> tuple[Record, Record]:
    mine, theirs = Record(), Record()
    for r in range(plan.rounds):
        for wl in knob.workloads:
            # Alternate who goes first: a machine that warms up or throttles within a pair of
            # windows then favours neither side.
            sides = ((base, theirs), (cand, mine)) if r % 2 == 0 else ((cand, mine), (base, theirs))
            for side, record in sides:
                w, c = side.measure(wl, plan)
                if w.errors:
                    say(f"  {side.name} on {wl}: {w.errors} failed requests: {w.first_error}")
                record.add(wl, w, c)
    return mine, theirs


def _value_result(value: Value, mine: Record, theirs: Record) -> dict[str, Any]:
    return {
        "value": value.label, "args": list(value.args), "default": False,
        "ratios": paired_ratios(mine.windows, theirs.windows),
        "c1_p50_ms": mine.p50("single_c1"), "baseline_c1_p50_ms": theirs.p50("single_c1"),
        "padding_share": mine.padding(), "baseline_padding_share": theirs.padding(),
        "errors": mine.errors() + theirs.errors(),
        "candidate": {wl: _summary(ws) for wl, ws in mine.windows.items()},
        "baseline": {wl: _summary(ws) for wl, ws in theirs.windows.items()},
    }


def _default_result(value: Value, knob: Knob, theirs: Record) -> dict[str, Any]:
    """The default's row: the baseline itself, over every window of the knob's sweep."""
    return {
        "value": value.label, "args": list(value.args), "default": True,
        "ratios": {wl: 1.0 for wl in knob.workloads if wl in theirs.windows},
        "c1_p50_ms": theirs.p50("single_c1"), "baseline_c1_p50_ms": theirs.p50("single_c1"),
        "padding_share": theirs.padding(), "baseline_padding_share": theirs.padding(),
        "errors": theirs.errors(),
        "baseline": {wl: _summary(ws) for wl, ws in theirs.windows.items()},
    }


def sweep(cfg: SweepConfig, say: Say = _say) -> dict[str, Any]:
    plan = cfg.plan
    started = time.time()
    bundles = {"int8": _Bundle(cfg.int8, load_manifest(cfg.int8))}
    if cfg.fp32 is not None:
        bundles["fp32"] = _Bundle(cfg.fp32, load_manifest(cfg.fp32))
    m8 = bundles["int8"].manifest
    tokenizer = Tokenizer.from_file(str(cfg.int8 / m8.tokenizer_file))
    tokenizer.no_truncation()
    tokenizer.no_padding()
    wls = workloads.build(tokenizer, m8.max_tokens, quick=cfg.quick)
    cpus = usable_cpus()
    swept = knobs(m8, bundles["fp32"].manifest if "fp32" in bundles else None, cpus, cfg.only)
    todo = [CONTROL, *swept]
    pairs = sum(len(k.workloads) * sum(not v.default for v in k.values) for k in todo)
    say(f"{len(todo)} knobs (control included), {pairs} workload pairs x {plan.rounds} rounds: "
        f"about {pairs * plan.rounds * 2 * plan.window_s * (1 + WARMUP_SHARE) / 60:.1f} min "
        "of windows")

    result: dict[str, Any] = {
        "quick": cfg.quick, "plan": asdict(plan), "encoding": ENCODING, "usable_cpus": cpus,
        "bundles": {name: str(b.path) for name, b in bundles.items()},
        "workloads": workloads.describe(wls, tokenizer),
        "knobs": {},
    }
    with tempfile.TemporaryDirectory(prefix="edge-embed-sweep-") as tmp:
        logs = Path(tmp)
        wl_file = logs / "workloads.json"
        workloads.save(wls, wl_file)
        baseline = Baseline(bundles, wl_file, logs, say)
        try:
            for knob in todo:
                entry = _sweep_knob(knob, bundles[knob.bundle], baseline, plan, wl_file, logs,
                                    say)
                if knob is CONTROL:
                    result["control"] = entry
                else:
                    result["knobs"][knob.name] = entry
        finally:
            baseline.close()
        result["served_versions"] = baseline.codes
    if cfg.fp32 is None and (not cfg.only or "graph_optimization_fp32" in cfg.only):
        result["knobs"]["graph_optimization_fp32"] = {"skipped": "no --fp32 bundle given"}
    result["seconds"] = round(time.time() - started, 1)
    return result


def _sweep_knob(knob: Knob, bundle: _Bundle, baseline: Baseline, plan: SweepPlan,
                wl_file: Path, logs: Path, say: Say) -> dict[str, Any]:
    rows: list[dict[str, Any] | None] = []
    all_base = Record()
    for i, value in enumerate(knob.values):
        if value.default:
            rows.append(None)  # filled in below, from every baseline window of this knob
            continue
        base = baseline.get(knob.bundle)
        say(f"{knob.name} = {value.label} ({' '.join(value.args) or 'defaults'}) "
            f"on {', '.join(knob.workloads)}")
        try:
            cand = Side(bundle.path, bundle.manifest.id, value.args, wl_file, logs,
                        f"{knob.name}-{i}")
        except (ServerError, WorkerError) as exc:
            say(f"  {value.label}: did not start: {exc}")
            rows.append({"value": value.label, "args": list(value.args), "default": False,
                         "error": str(exc)})
            continue
        try:
            mine, theirs = _measure(base, cand, knob, plan, say)
        except WorkerError as exc:
            say(f"  {value.label}: {exc}")
            rows.append({"value": value.label, "args": list(value.args), "default": False,
                         "error": str(exc)})
            continue
        finally:
            cand.close()
        all_base.extend(theirs)
        rows.append(_value_result(value, mine, theirs))
    values = [row if row is not None else _default_result(v, knob, all_base)
              for v, row in zip(knob.values, rows, strict=True)]
    return {"flag": knob.flag, "bundle": knob.bundle, "default": knob.default,
            "workloads": list(knob.workloads), "values": values}


def _ratio_cell(row: dict[str, Any], wl: str) -> str:
    value = row.get("ratios", {}).get(wl)
    return "-" if value is None else f"{value:.2f}x"


def _pair_cell(mine: float | None, theirs: float | None, digits: int, scale: float = 1.0) -> str:
    if mine is None:
        return "-"
    base = None if theirs is None else theirs * scale
    return f"{_fmt(mine * scale, digits)} / {_fmt(base, digits)}"


def _knob_table(title: str, entry: dict[str, Any]) -> str:
    wls: list[str] = entry["workloads"]
    header = ["value", *wls, "c1 p50 ms (value / base)", "mixed padding % (value / base)"]
    rows = []
    for row in entry["values"]:
        label = row["value"] + (" (default)" if row["default"] else "")
        if "error" in row:
            rows.append([label, *(["-"] * len(wls)), "-", row["error"][:60]])
            continue
        rows.append([
            label, *(_ratio_cell(row, wl) for wl in wls),
            _pair_cell(row["c1_p50_ms"], row["baseline_c1_p50_ms"], 2),
            _pair_cell(row["padding_share"].get("mixed"),
                       row["baseline_padding_share"].get("mixed"), 1, 100.0),
        ])
    return f"{title}\n{_grid(header, rows)}"


def table(result: dict[str, Any]) -> str:
    plan = result["plan"]
    parts = [f"throughput ratios value/default: median over {plan['rounds']} round(s) of "
             f"{plan['window_s']:g} s windows measured back to back; {result['usable_cpus']} "
             "usable CPUs"]
    for bundle, codes in result.get("served_versions", {}).items():
        if len(codes) < 2:
            continue
        parts.append(f"NOTE: the service's code or the {bundle} bundle changed during the sweep "
                     f"({' -> '.join(codes)}); "
                     "the baseline was restarted each time, so every ratio pairs one version, "
                     "but rows measured on different versions are not comparable")
    control = result.get("control")
    if control:
        parts.append(_knob_table("A/A control: a second service with the defaults against the "
                                 "baseline (noise alone)", control))
    for name, entry in result["knobs"].items():
        if "skipped" in entry:
            parts.append(f"{name}: skipped ({entry['skipped']})")
            continue
        parts.append(_knob_table(f"{name}: {entry['flag']} on the {entry['bundle']} bundle "
                                 f"(default {entry['default']})", entry))
    return "\n\n".join(parts) + "\n"


def parser(prog: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_run_options(p, int8="the default bundle, whose service every knob but one tunes",
                    fp32="the fp32 bundle, for its own graph optimization level",
                    window="seconds per side per workload per round",
                    rounds="interleaved rounds (median of ratios reported)")
    p.add_argument("--knob", action="append", default=[], choices=KNOB_NAMES,
                   help="sweep only this knob (repeat); the A/A control always runs")
    return p


def main(argv: list[str] | None = None, prog: str = "edge-embed bench sweep") -> int:
    args = parser(prog).parse_args(argv)

    def body() -> int:
        check_bundles({"--int8": args.int8, "--fp32": args.fp32})
        plan = SweepPlan.quick() if args.quick else SweepPlan()
        if args.window is not None:
            if not args.window > 0:
                raise ToolError("--window: must be positive")
            plan = SweepPlan(**{**asdict(plan), "window_s": args.window})
        if args.rounds is not None:
            if args.rounds <= 0:
                raise ToolError("--rounds: must be positive")
            plan = SweepPlan(**{**asdict(plan), "rounds": args.rounds})
        args.out.mkdir(parents=True, exist_ok=True)
        result = sweep(SweepConfig(int8=args.int8, fp32=args.fp32, plan=plan,
                                   quick=args.quick, only=args.knob))
        text = table(result)
        print(text, end="")
        write_json(result, args.out / RESULT_JSON)
        (args.out / RESULT_TABLE).write_text(text, encoding="utf-8")
        print(f"\nwrote {args.out / RESULT_JSON}, {args.out / RESULT_TABLE}")
        return 0

    return run_cli(prog, body)


if __name__ == "__main__":
    raise SystemExit(main(prog="python -m edge_embed.bench.sweep"))
