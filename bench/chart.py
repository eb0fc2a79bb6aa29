"""The PNG chart: throughput and p50 latency per workload, the service against its baselines."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .report import SYSTEM_LABELS


def chart(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")  # no display on servers and CI
    import matplotlib.pyplot as plt

    res: dict[str, dict[str, dict[str, Any]]] = result["results"]
    systems = [s for s in SYSTEM_LABELS if s in res]
    names = list(result["workloads"])
    titles = [result["workloads"][w]["title"] for w in names]
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(11, 8), constrained_layout=True)
    width = 0.8 / max(len(systems), 1)
    for i, system in enumerate(systems):
        xs = [j + (i - (len(systems) - 1) / 2) * width for j in range(len(names))]
        thr = [res[system].get(w, {}).get("throughput", 0.0) for w in names]
        p50 = [res[system].get(w, {}).get("p50_ms", 0.0) for w in names]
        top.bar(xs, thr, width, label=SYSTEM_LABELS[system])
        bottom.bar(xs, p50, width, label=SYSTEM_LABELS[system])
    for ax, label in ((top, "inputs / s (higher is better)"),
                      (bottom, "p50 ms per request or batch (lower is better)")):
        ax.set_xticks(range(len(names)), titles, fontsize=8)
        ax.set_ylabel(label)
        ax.set_yscale("log")
        ax.grid(axis="y", alpha=0.3)
    top.legend(fontsize=8)
    top.set_title("edge-embed: int8 service vs raw onnxruntime, fp32 service, "
                  "sentence-transformers (torch fp32)")
    fig.savefig(path, dpi=110)
    plt.close(fig)
