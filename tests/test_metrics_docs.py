"""The metrics as a live server exposes them, against what documents and uses them: the table in
docs/metrics.md (every metric, its type and labels) and the Grafana dashboard in deploy/grafana/
(every metric name its PromQL uses exists; the JSON is a dashboard Grafana can import)."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.fixtures.server import ROOT, Live, live_server
from tests.reliability_server import http, scrape

DOCS = ROOT / "docs" / "metrics.md"
DASHBOARD = ROOT / "deploy" / "grafana" / "edge-embed.json"
# A row of the docs' table: | `name` | type | labels | meaning |
_ROW = re.compile(r"^\| `([a-z_]+)` \| (counter|gauge|histogram) \|\s*([a-z_, ]*?)\s*\| .+ \|$")
_METRIC_NAME = re.compile(r"\b((?:edge_embed|process)_[a-z_]+)\b")
# The sample names each type exposes on the wire (prometheus_client, text format 0.0.4).
_SUFFIXES = {"counter": ("_total", "_created"), "gauge": ("",),
             "histogram": ("_bucket", "_sum", "_count", "_created")}
# The tiny bundles cut at 64 tokens: this input is cut, so that the truncation counter has a
# sample to show its labels.
LONG_INPUT = "word " * 200


@dataclass(frozen=True)
class Family:
    type: str
    labels: frozenset[str] | None  # None: no sample in the scrape to read them from


@pytest.fixture(scope="module")
def live(tiny_bundle: Path) -> Iterator[Live]:
    with live_server([tiny_bundle]) as server:
        yield server


@pytest.fixture(scope="module")
def scraped(live: Live) -> dict[str, Family]:
    """The live /metrics after requests that give most labelled metrics a sample."""
    for _ in range(2):  # the second time from the cache: both results of the lookup counter
        status, _, answer = http("POST", live.url + "/v1/embeddings",
                                 body={"model": "tiny", "input": ["a short input", LONG_INPUT]})
        assert status == 200, answer
    text = scrape(live.url)
    families = {f.name: f for f in text_string_to_metric_families(text)}
    out: dict[str, Family] = {}
    for name, family in families.items():
        # the parser reports a counter's or histogram's `_created` series as a family of its own
        base = name.removesuffix("_created")
        if name != base and families.get(base) is not None and \
                families[base].type in ("counter", "histogram"):
            continue
        labels = ({key for s in family.samples for key in s.labels} - {"le"}
                  if family.samples else None)
        out[name] = Family(family.type, None if labels is None else frozenset(labels))
    return out


def documented() -> dict[str, Family]:
    rows: dict[str, Family] = {}
    for line in DOCS.read_text(encoding="utf-8").splitlines():
        match = _ROW.match(line)
        if match:
            name, kind, labels = match.groups()
            assert name not in rows, f"{name} documented twice"
            rows[name] = Family(kind, frozenset(x.strip() for x in labels.split(",")
                                                if x.strip()))
    return rows


def test_every_scraped_metric_is_documented_and_vice_versa(scraped: dict[str, Family]) -> None:
    docs = documented()
    assert sorted(set(scraped) - set(docs)) == [], "exposed but not in docs/metrics.md"
    assert sorted(set(docs) - set(scraped)) == [], "in docs/metrics.md but not exposed"
    for name, family in scraped.items():
        assert docs[name].type == family.type, name
    checked = [name for name, family in scraped.items() if family.labels is not None]
    for name in checked:
        assert docs[name].labels == scraped[name].labels, name
    # the requests above gave the labelled families samples: the label check is not vacuous
    for name in ("edge_embed_requests", "edge_embed_inputs", "edge_embed_cache",
                 "edge_embed_batch_tokens", "edge_embed_truncated_inputs",
                 "edge_embed_canary_agreement", "edge_embed_request_seconds"):
        assert name in checked, name


def dashboard() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    return data


def queries(data: dict[str, Any]) -> list[str]:
    out = [t["expr"] for p in data["panels"] for t in p["targets"]]
    for variable in data["templating"]["list"]:
        query = variable.get("query")
        out.append(query["query"] if isinstance(query, dict) else str(query))
    return out


def test_dashboard_is_a_grafana_dashboard() -> None:
    data = dashboard()
    assert isinstance(data["schemaVersion"], int) and data["schemaVersion"] >= 36
    assert data["title"] and data["uid"]
    assert data["panels"]
    ids = [p["id"] for p in data["panels"]]
    assert len(ids) == len(set(ids))
    for panel in data["panels"]:
        assert panel["type"] and panel["title"]
        assert panel["datasource"]["type"] == "prometheus", panel["title"]
        assert {"h", "w", "x", "y"} <= set(panel["gridPos"]), panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["expr"] and target["refId"], panel["title"]
            assert target["datasource"] == panel["datasource"], panel["title"]
    variables = {v["name"] for v in data["templating"]["list"]}
    uses = {m for q in queries(data) for m in re.findall(r"\$\{?(\w+)", q)} - {"__rate_interval"}
    uses |= {panel["datasource"]["uid"].strip("${}") for panel in data["panels"]}
    assert uses <= variables, uses - variables


def test_dashboard_metrics_exist_in_a_live_scrape(scraped: dict[str, Family]) -> None:
    exposed = {name + suffix for name, family in scraped.items()
               for suffix in _SUFFIXES[family.type]}
    used = {name for query in queries(dashboard()) for name in _METRIC_NAME.findall(query)}
    assert len(used) >= 15  # what the panels chart: the check has something to check
    assert sorted(used - exposed) == [], "the dashboard queries metrics the server lacks"
