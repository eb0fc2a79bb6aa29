"""The benchmark harness: runs end to end on the tiny bundle (--quick) and writes valid results.

No timing assertions: figures from a seconds-long run on a shared machine mean nothing. What is
checked is that every part ran (real servers over real HTTP, real onnxruntime, real torch) and
that the JSON, table and chart carry every workload, system and target.
"""

from __future__ import annotations

import itertools
import json
import sys
from pathlib import Path
from typing import Any

import pytest
from tokenizers import Tokenizer

from edge_embed.bench import sweep, workloads
from edge_embed.bench.cli import main
from edge_embed.bench.server import parse_counters
from edge_embed.bench.stats import percentile
from edge_embed.bench.sweep import KNOB_NAMES, thread_values
from edge_embed.bench.targets import evaluate
from edge_embed.bench.worker import Worker
from edge_embed.core.bundle import load_manifest
from edge_embed.core.runtime import graph_level_name
from edge_embed.service.settings import Settings

SYSTEMS = {"service_int8", "service_int8_lone", "service_int8_base", "service_fp32", "ort_int8",
           "peer_int8", "fastembed"}
SERVICES = {"service_int8", "service_int8_lone", "service_int8_base", "service_fp32"}
# HTTP servers without the embedding cache: they run every workload but the cache hits.
UNCACHED_SERVERS = {"fastembed"}
WORKLOADS = {"single_c1", "single_c16", "short32", "long8", "mixed", "cached_short32"}
CACHED = {"cached_short32"}  # cache hits: the services alone run it
TARGETS = {"serving_efficiency", "vs_torch_short", "vs_torch_long", "latency_c1_p50",
           "c16_vs_raw_batch16", "padding_share", "memory_rss_growth", "memory_throughput_cost",
           "cold_start", "runtime_install", "c1_vs_peer", "short_vs_peer", "long_vs_peer",
           "layout_vs_lone", "c1_vs_fastembed", "c1_tail", "cold_start_vs_fastembed",
           "rss_ready", "rss_after", "short_vs_base", "long_vs_base"}


def _tokenizer(bundle: Path) -> Tokenizer:
    tok = Tokenizer.from_file(str(bundle / "tokenizer.json"))
    tok.no_truncation()
    tok.no_padding()
    return tok


def _fake_venv(root: Path) -> Path:
    site = root / "lib" / "python3.11" / "site-packages"
    (site / "pip").mkdir(parents=True)
    (site / "pip" / "__init__.py").write_bytes(b"x" * 1000)
    (site / "onnxruntime").mkdir()
    (site / "onnxruntime" / "lib.so").write_bytes(b"x" * 3_000_000)
    (root / "bin").mkdir()
    (root / "bin" / "python").write_text("")
    return root


@pytest.mark.slow
def test_quick_run_writes_complete_results(tiny_bundle: Path, tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "results"
    venv = _fake_venv(tmp_path / "venv")
    fastembed = Path(".venv-fastembed")
    assert (fastembed / "bin" / "python").exists(), "make install-fastembed (make test does)"
    code = main(["--quick", "--int8", str(tiny_bundle), "--fp32", str(tiny_bundle),
                 "--out", str(out), "--runtime-venv", str(venv),
                 "--peer-cache", str(tmp_path / "peer"), "--fastembed-venv", str(fastembed),
                 # this very build as "the build before": the pairing is what is checked
                 "--baseline-python", sys.executable])
    printed = capsys.readouterr().out
    assert code == 0
    result: dict[str, Any] = json.loads((out / "bench.json").read_text())

    assert set(result["systems"]) == SYSTEMS
    assert set(result["workloads"]) == WORKLOADS
    assert result["machine"]["cpu"] and isinstance(result["machine"]["isa"], list)
    for system in SYSTEMS:
        for wl in WORKLOADS:
            if wl in CACHED and (system not in SERVICES or system in UNCACHED_SERVERS):
                assert wl not in result["results"][system], (system, wl)
                continue
            summary = result["results"][system][wl]
            assert summary["errors"] == 0, (system, wl, summary["first_error"])
            assert summary["throughput"] > 0 and summary["inputs"] > 0, (system, wl)
            assert 0 < summary["p50_ms"] <= summary["p90_ms"] <= summary["p99_ms"], (system, wl)
    for info in result["workloads"].values():
        assert info["requests"] > 0 and info["tokens_mean"] > 0
    assert result["workloads"]["short32"]["inputs_per_request"] == 32
    assert result["workloads"]["long8"]["inputs_per_request"] == 8

    assert result["cold_start"]["median_s"] > 0
    assert result["cold_start_fastembed"]["median_s"] > 0
    assert (tmp_path / "peer" / "tiny-fastembed" / "model.onnx").is_file()
    for rss in result["rss"].values():
        assert rss["ready_mb"] > 0 and rss["after_load_mb"] > 0
    memory = result["memory"]
    assert memory["rss_warm_mb"] > 0 and memory["rss_after_mb"] > 0 and memory["throughput"] > 0
    assert len(memory["samples"]) >= 2
    # The service reports its batches in /metrics; the mixed stream's padding share is a fraction.
    mixed = result["batches"]["mixed"]
    assert mixed["real_tokens"] > 0 and 0 <= mixed["padding_share"] < 1
    for wl in WORKLOADS:
        pairs = {"service_int8/service_fp32", "service_int8/service_int8_lone",
                 "service_int8/service_int8_base"}
        if wl not in CACHED:
            pairs |= {"service_int8/ort_int8", "service_int8/peer_int8",
                      "service_int8/fastembed"}
        assert set(result["ratios"][wl]) == pairs, wl
        assert all(v > 0 for v in result["ratios"][wl].values())
    assert result["workloads"]["cached_short32"]["cache"] == "on (hits)"
    assert result["workloads"]["short32"]["cache"] == "off"
    assert (tmp_path / "peer" / "tiny-peer-int8" / "bundle.json").is_file()
    assert result["install"]["runtime_mb"] == 3.0 and result["install"]["venv_tooling_mb"] == 0.0

    targets = {t["id"]: t for t in result["targets"]}
    assert set(targets) == TARGETS
    for t in targets.values():
        assert t["status"] in ("met", "not met", "not measured")
        if t["value"] is None:
            assert t["status"] == "not measured"
        else:
            ok = t["value"] >= t["threshold"] if t["op"] == ">=" else t["value"] <= t["threshold"]
            assert t["status"] == ("met" if ok else "not met"), t
    # No torch source given: those two are honestly unmeasured, not dropped or faked.
    assert targets["vs_torch_short"]["status"] == "not measured"
    for tid in ("serving_efficiency", "latency_c1_p50", "c16_vs_raw_batch16", "padding_share",
                "memory_rss_growth", "cold_start", "runtime_install", "c1_vs_peer",
                "short_vs_peer", "long_vs_peer", "layout_vs_lone", "c1_vs_fastembed", "c1_tail",
                "cold_start_vs_fastembed", "rss_ready", "rss_after", "short_vs_base",
                "long_vs_base"):
        assert targets[tid]["value"] is not None, tid

    assert (out / "bench.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    table = (out / "bench.txt").read_text()
    assert table in printed
    for tid in TARGETS:
        assert tid in table


def test_torch_baseline_worker_embeds_the_workload(tiny_bundle: Path, tiny_st_model: Path,
                                                   tmp_path: Path) -> None:
    wls = workloads.build(_tokenizer(tiny_bundle), 64, quick=True)
    wl_file = tmp_path / "workloads.json"
    workloads.save(wls, wl_file)
    worker = Worker("st", [sys.executable, "-m", "edge_embed.bench.inproc", "--kind", "st",
                           "--model",
                           str(tiny_st_model), "--workloads", str(wl_file)], tmp_path / "st.log")
    try:
        w = worker.measure("short32", 0.2, 3, 1)
    finally:
        worker.close()
    assert w.errors == 0 and 1 <= w.requests <= 3 and w.inputs == 32 * w.requests


def test_workloads_are_deterministic_and_sized_in_tokens(tiny_bundle: Path) -> None:
    tok = _tokenizer(tiny_bundle)
    first = workloads.build(tok, 64, quick=True)
    again = workloads.build(tok, 64, quick=True)
    assert first == again
    other_seed = workloads.build(tok, 64, quick=True, seed=1)
    assert other_seed[0].requests != first[0].requests
    by_name = {w.name: w for w in first}
    longs = [len(e.ids) for r in by_name["long8"].requests for e in tok.encode_batch(list(r))]
    # at most the model's limit (never truncated), and close to it
    assert max(longs) <= 64 and min(longs) >= 48
    # c=16 in-process baselines run 16 requests as one batch
    assert all(len(b) == 16 for b in by_name["single_c16"].batches()[:-1])
    assert {len(r) for r in by_name["short32"].requests} == {32}


def test_workloads_round_trip(tmp_path: Path, tiny_bundle: Path) -> None:
    wls = workloads.build(_tokenizer(tiny_bundle), 64, quick=True)
    workloads.save(wls, tmp_path / "w.json")
    assert list(workloads.load(tmp_path / "w.json").values()) == wls


def test_percentile_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 50) == 50.0
    assert percentile(values, 99) == 99.0
    assert percentile([3.0], 99) == 3.0
    assert percentile([], 50) == 0.0


def test_parse_counters_sums_models_and_kinds() -> None:
    text = """# TYPE edge_embed_batch_tokens counter
edge_embed_batch_tokens_total{kind="real",model="a"} 90.0
edge_embed_batch_tokens_total{kind="padding",model="a"} 10.0
edge_embed_batch_tokens_total{kind="real",model="b"} 10.0
# TYPE edge_embed_batch_size histogram
edge_embed_batch_size_bucket{le="+Inf",model="a"} 4.0
edge_embed_batch_size_count{model="a"} 4.0
edge_embed_batch_size_sum{model="a"} 20.0
"""
    c = parse_counters(text)
    assert c.real_tokens == 100 and c.padding_tokens == 10
    assert c.padding_share == pytest.approx(10 / 110)
    assert c.mean_batch == 5.0
    assert parse_counters("").padding_share is None


def test_targets_evaluate_ratios_and_missing_baselines() -> None:
    ratios = {"short32": {"service_int8/ort_int8": 0.95},
              "long8": {"service_int8/ort_int8": 0.8},
              "single_c16": {"service_int8/ort_int8": 0.85},
              "single_c1": {"service_int8/fastembed": 0.9}}
    p50 = {"service_int8": {"single_c1": 1.5}, "fastembed": {"single_c1": 1.4}}
    p99 = {"service_int8": {"single_c1": 4.5}}
    rss = {"service_int8": {"ready_mb": 150.0, "after_load_mb": 220.0}}
    memory = {"seconds": 120.0, "rss_warm_mb": 100.0, "rss_after_mb": 160.0, "rss_peak_mb": 170.0,
              "throughput": 95.0,
              "reference": {"args": ["--x"], "throughput": 100.0, "rss_warm_mb": 100.0,
                            "rss_after_mb": 500.0}}
    got = {t.id: t for t in evaluate(ratios, p50, 0.05, memory, 0.3, None, p99_ms=p99, rss=rss,
                                     cold_start_fastembed_s=0.6)}
    assert got["serving_efficiency"].value == pytest.approx(0.8)  # the worse of the two
    assert got["serving_efficiency"].status == "not met"
    assert got["latency_c1_p50"].status == "met"
    assert got["c16_vs_raw_batch16"].status == "met"
    assert got["vs_torch_long"].status == "not measured"
    assert got["memory_rss_growth"].status == "not met"  # 1.6x
    assert got["memory_throughput_cost"].value == pytest.approx(0.05)
    assert got["runtime_install"].status == "not measured"
    assert got["c1_vs_fastembed"].status == "not met"  # 0.9x
    assert got["c1_tail"].value == pytest.approx(3.0) and got["c1_tail"].status == "not met"
    assert got["cold_start_vs_fastembed"].value == pytest.approx(0.5)
    assert got["rss_ready"].value == pytest.approx(143.1)  # 150e6 bytes in MiB: met
    assert got["rss_ready"].status == "met" and got["rss_after"].status == "not met"
    assert got["short_vs_base"].status == "not measured"  # no build before was served


def test_cli_refuses_a_missing_bundle(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["--int8", str(tmp_path / "nope"), "--out", str(tmp_path / "r")])
    err = capsys.readouterr().err
    assert code == 2
    assert "--int8" in err and "nope" in err and "Traceback" not in err
    assert not (tmp_path / "r").exists()


@pytest.mark.slow
def test_quick_sweep_writes_every_knob(tiny_bundle: Path, tmp_path: Path,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "sweep"
    code = main(["sweep", "--quick", "--int8", str(tiny_bundle), "--fp32", str(tiny_bundle),
                 "--out", str(out)])
    printed = capsys.readouterr().out
    assert code == 0
    result: dict[str, Any] = json.loads((out / "sweep.json").read_text())

    assert set(result["knobs"]) == set(KNOB_NAMES)
    # One version per bundle: nothing is edited during the test run.
    assert {k: len(v) for k, v in result["served_versions"].items()} == {"int8": 1, "fp32": 1}
    flags = {"threads": "--threads", "graph_optimization_int8": "--graph-optimization",
             "graph_optimization_fp32": "--graph-optimization", "batch_tokens": "--batch-tokens",
             "batch_delay_ms": "--batch-delay-ms", "spinning": "--spinning"}
    for name, entry in [("control", result["control"]), *result["knobs"].items()]:
        assert set(entry["workloads"]) <= WORKLOADS and entry["workloads"], name
        defaults = [v for v in entry["values"] if v["default"]]
        measured = [v for v in entry["values"] if not v["default"]]
        # The baseline is the default: exactly one row of a knob, none of the control's.
        assert len(defaults) == (0 if name == "control" else 1), name
        assert measured, name
        for row in entry["values"]:
            assert "error" not in row, (name, row)
            assert row["errors"] == 0, (name, row["value"])
            assert set(row["ratios"]) == set(entry["workloads"]), (name, row["value"])
            assert all(r > 0 for r in row["ratios"].values()), (name, row["value"])
            share = row["padding_share"].get("mixed")
            if "mixed" in entry["workloads"]:
                assert share is not None and 0 <= share < 1, (name, row["value"])
            if "single_c1" in entry["workloads"]:
                assert row["c1_p50_ms"] > 0 and row["baseline_c1_p50_ms"] > 0
        for row in measured:
            for wl in entry["workloads"]:
                assert row["candidate"][wl]["inputs"] > 0 and row["baseline"][wl]["inputs"] > 0
            if name != "control":
                assert row["args"][0] in (flags[name], "--concurrent-runs"), (name, row["args"])
        if name != "control":
            assert entry["flag"] == flags[name]
            assert {v["value"] for v in defaults} == {entry["default"]}
    level = graph_level_name(load_manifest(tiny_bundle), Settings().graph_optimization)
    assert result["knobs"]["graph_optimization_int8"]["default"] == level
    assert {v["value"] for v in result["knobs"]["spinning"]["values"]} == {"on", "off"}

    table = (out / "sweep.txt").read_text()
    assert table in printed
    for name in KNOB_NAMES:
        assert name in table


@pytest.mark.slow
def test_sweep_restarts_the_baseline_when_what_it_serves_changes(
        tiny_bundle: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    # A commit or a rebuilt bundle landing mid-sweep (the checkout is shared): each candidate is
    # then paired with a baseline started on the same version, and the report says they differ.
    versions = itertools.chain(["v1"], itertools.repeat("v2"))  # the control's, then new code
    monkeypatch.setattr(sweep, "served_fingerprint", lambda bundle: next(versions))
    out = tmp_path / "sweep"
    code = main(["sweep", "--quick", "--knob", "spinning", "--int8", str(tiny_bundle),
                 "--out", str(out)])
    captured = capsys.readouterr()
    assert code == 0
    result = json.loads((out / "sweep.json").read_text())
    assert result["served_versions"] == {"int8": ["v1", "v2"]}
    assert set(result["knobs"]) == {"spinning"} and "control" in result
    assert "restarting the baseline" in captured.err
    assert "int8 bundle changed during the sweep (v1 -> v2)" in captured.out


def test_sweep_thread_values_follow_the_cpus() -> None:
    def labels(cpus: int) -> dict[str, bool]:
        return {v.label: v.default for v in thread_values(cpus)}

    # Whatever the defaults, exactly one value is the default configuration (the baseline).
    for cpus in (1, 2, 4):
        assert sum(labels(cpus).values()) == 1, cpus
    assert {"1", "2", "2 runs x 1 thread"} <= set(labels(2))
    assert {"1", "2", "4", "2 runs x 2 threads"} <= set(labels(4))
    assert not any("runs" in label for label in labels(1))
    # Every layout names both flags, so none leans on the other flag's default.
    for value in thread_values(4):
        assert value.args[0] == "--concurrent-runs" and value.args[2] == "--threads"
