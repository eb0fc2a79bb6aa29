"""The run's results as a plain-text table with ratios, and as JSON."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

SYSTEM_LABELS = {
    "service_int8": "service int8",
    "service_int8_lone": "service int8 with the lone session",
    "service_int8_base": "service int8, the build before",
    "fastembed": "fastembed server",
    "peer_int8": "peers' int8 graph, raw",
    "ort_int8": "raw ort int8",
    "service_fp32": "service fp32",
    "st_fp32": "torch ST fp32",
}


MB_TO_MIB = 1e6 / 2**20


def _fmt(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def _grid(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    line = "  ".join("-" * w for w in widths)
    fmt = [header[0].ljust(widths[0]), *(h.rjust(w) for h, w in zip(header[1:], widths[1:],
                                                                       strict=True))]
    out = ["  ".join(fmt), line]
    for r in rows:
        out.append("  ".join([r[0].ljust(widths[0]),
                              *(c.rjust(w) for c, w in zip(r[1:], widths[1:], strict=True))]))
    return "\n".join(out)


def table(result: dict[str, Any]) -> str:
    res: dict[str, dict[str, dict[str, Any]]] = result["results"]
    svc = res.get("service_int8", {})
    ratios: dict[str, dict[str, float]] = result.get("ratios", {})

    def ratio(wl: str, other: str) -> str:
        value = ratios.get(wl, {}).get(f"service_int8/{other}")
        return "-" if value is None else f"{value:.2f}x"

    def thr(system: str, wl: str) -> float | None:
        value = res.get(system, {}).get(wl, {}).get("throughput")
        return None if value is None else float(value)

    def p50(system: str, wl: str) -> float | None:
        value = res.get(system, {}).get(wl, {}).get("p50_ms")
        return None if value is None else float(value)

    header = ["workload (inputs/s; latency ms)", "svc int8", "p50", "p99", "fastembed",
              "fe p50", "fe p99", "svc/fe", "lone p50", "svc/lone", "svc/before", "peer int8",
              "peer p50", "svc/peer", "raw ort", "svc/raw", "svc fp32", "int8/fp32", "torch ST",
              "svc/ST"]
    rows = []
    for wl, info in result["workloads"].items():
        s = svc.get(wl, {})
        rows.append([
            info["title"], _fmt(thr("service_int8", wl)), _fmt(s.get("p50_ms"), 2),
            _fmt(s.get("p99_ms"), 2), _fmt(thr("fastembed", wl)), _fmt(p50("fastembed", wl), 2),
            _fmt(res.get("fastembed", {}).get(wl, {}).get("p99_ms"), 2), ratio(wl, "fastembed"),
            _fmt(p50("service_int8_lone", wl), 2), ratio(wl, "service_int8_lone"),
            ratio(wl, "service_int8_base"), _fmt(thr("peer_int8", wl)),
            _fmt(p50("peer_int8", wl), 2), ratio(wl, "peer_int8"), _fmt(thr("ort_int8", wl)),
            ratio(wl, "ort_int8"), _fmt(thr("service_fp32", wl)), ratio(wl, "service_fp32"),
            _fmt(thr("st_fp32", wl)), ratio(wl, "st_fp32"),
        ])
    machine = result.get("machine") or {}
    parts = [f"CPU: {machine.get('cpu', '?')}; instruction sets: "
             f"{', '.join(machine.get('isa', [])) or '-'}; onnxruntime "
             f"{machine.get('onnxruntime', '?')}",
             _grid(header, rows) + "\n(throughput: median over rounds; ratios: median of "
             "ratios of back-to-back windows; cache off on every workload but CACHE HITS, where "
             "a fixed corpus is cycled with the cache on and only the services run; fastembed: "
             "its TextEmbedding on the peers' int8 graph behind a minimal aiohttp layer; lone: "
             "the service with a second session with every CPU for a run alone in flight; "
             "before: --baseline-python's build; "
             "peer: onnxruntime quantize_dynamic of the fp32 graph, raw in-process, every CPU, "
             "one batch at a time)"]

    facts = []
    cold = result.get("cold_start")
    if cold:
        facts.append(f"cold start (int8, process start -> first embedding): median "
                     f"{cold['median_s']:.3f} s over {len(cold['runs_s'])} run(s)")
    cold_fe = result.get("cold_start_fastembed")
    if cold_fe:
        facts.append(f"cold start, fastembed server: median {cold_fe['median_s']:.3f} s over "
                     f"{len(cold_fe['runs_s'])} run(s)")
    for name, rss in result.get("rss", {}).items():
        facts.append(f"RSS {SYSTEM_LABELS.get(name, name)}: {rss['ready_mb'] * MB_TO_MIB:.0f} "
                     f"MiB ready, {rss.get('after_load_mb', 0) * MB_TO_MIB:.0f} MiB after the "
                     "workloads")
    mem = result.get("memory")
    if mem:
        facts.append(f"memory run ({mem['seconds']:.0f} s mixed): RSS {mem['rss_warm_mb']:.0f} -> "
                     f"{mem['rss_after_mb']:.0f} MB (peak {mem['rss_peak_mb']:.0f}), "
                     f"{mem['throughput']:.0f} inputs/s")
        ref = mem.get("reference")
        if ref:
            facts.append(f"  reference {' '.join(ref['args'])}: RSS {ref['rss_warm_mb']:.0f} -> "
                         f"{ref['rss_after_mb']:.0f} MB, {ref['throughput']:.0f} inputs/s")
    for wl, b in result.get("batches", {}).items():
        if b.get("padding_share") is not None:
            facts.append(f"engine batches on {wl}: padding {b['padding_share'] * 100:.1f} % of "
                         f"computed tokens, {_fmt(b.get('mean_batch_inputs'))} inputs per run")
    install = result.get("install")
    if install and "runtime_mb" in install:
        facts.append(f"runtime install: {install['runtime_mb']:.0f} MB (site-packages "
                     f"{install['site_packages_mb']:.0f} MB incl. pip/setuptools)")
    parts.append("\n".join(facts))

    trows = []
    for t in result.get("targets", []):
        value = "-" if t["value"] is None else f"{t['value']:.3g}{t['unit']}"
        trows.append([t["status"].upper(), t["id"], f"{value} {t['op']} {t['threshold']:g}"
                      f"{t['unit']}", t["note"]])
    parts.append(_grid(["status", "target", "measured", "note"], trows))
    return "\n\n".join(parts) + "\n"


def write_json(result: dict[str, Any], path: Path) -> None:
    path.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
