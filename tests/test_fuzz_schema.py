"""Schema fuzzing: schemathesis against the live server's own /openapi.json.

`st run URL --checks all` (the CLI, as a user runs it) against two live servers, keys off and
on: every check in every phase (examples, coverage, fuzzing, stateful), schema-valid and
schema-invalid requests. No answer may be a 5xx; every answer must be as declared (status,
content type, body, headers); schema-valid requests must be accepted and invalid ones refused;
where the document asks for the key, its absence must be refused; undeclared methods must get
405 with Allow. Seeded and bounded (ST_EXAMPLES per operation and phase): about a minute on 2
shared cores. The key's absence is fuzzed on its own too, through the pytest integration.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any
from xml.etree import ElementTree

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tests.fixtures.server import ROOT, Live, live_server
from tests.reliability_server import openapi_document

CHECKS: list[Callable[..., Any]] = [
    not_a_server_error, status_code_conformance, content_type_conformance,
    response_schema_conformance, response_headers_conformance]
KEY = "sk-fuzz-key-0123456789"
# Without a key every protected answer is the same 401: a few examples per operation suffice.
KEYLESS_EXAMPLES = 5
# Examples per operation and phase of `st run`: with the coverage phase's own cases, ~2,000
# requests a server, about half a minute each on 2 shared cores.
ST_EXAMPLES = 30
# Fixed, so that a failure is reproduced by the same command (`st run ... --seed 1`).
SEED = 1
# A hung run fails the test instead of holding the suite.
ST_TIMEOUT_S = 300
ARTIFACTS = ROOT / "build" / "test-artifacts"


@pytest.fixture(scope="module")
def server(tiny_bundle: Path, tiny_cls_bundle: Path) -> Iterator[Live]:
    with live_server([tiny_bundle, tiny_cls_bundle]) as live:
        yield live


@pytest.fixture(scope="module")
def schema(server: Live) -> Any:
    return schemathesis.openapi.from_url(f"{server.url}/openapi.json")


def operations(schema: Any) -> list[Any]:
    out = []
    for result in schema.get_all_operations():
        try:
            out.append(result.ok())
        except AttributeError:
            pytest.fail(f"/openapi.json declares an operation schemathesis cannot use: "
                        f"{result.err()}")
    return out


def test_schema_declares_the_contract(schema: Any) -> None:
    labels = {op.label for op in operations(schema)}
    for needed in ("POST /v1/embeddings", "GET /v1/models", "GET /v1/models/{model}",
                   "GET /health", "GET /ready", "GET /metrics"):
        path = needed.split(" ", 1)
        assert any(label.startswith(path[0]) and label.split(" ", 1)[1].split("{")[0]
                   == path[1].split("{")[0] for label in labels), f"{needed} not in {labels}"


def fuzz_operation(op: Any, mode: GenerationMode, checks: list[Callable[..., Any]], base: str,
                   tried: dict[str, int], examples: int) -> None:
    @given(case=op.as_strategy(generation_mode=mode))
    @settings(max_examples=examples, deadline=None, database=None,
              phases=[Phase.explicit, Phase.generate],
              suppress_health_check=list(HealthCheck))
    def run(case: Any) -> None:
        tried[op.label] += 1
        response = case.call(base_url=base, timeout=30)
        case.validate_response(response, checks=checks)

    run()


def st_run(live: Live, report: Path, headers: Sequence[str] = ()) -> str:
    """`st run URL --checks all` against `live`, seeded and bounded, its JUnit report written to
    `report`; its output. Run from a temporary folder: the CLI keeps a cache folder where it
    runs."""
    report.parent.mkdir(parents=True, exist_ok=True)
    args = [str(Path(sys.executable).with_name("st")), "run", f"{live.url}/openapi.json",
            "--checks", "all", "--seed", str(SEED), "--max-examples", str(ST_EXAMPLES),
            "--workers", "1", "--generation-database", "none",
            "--report", "junit", "--report-junit-path", str(report)]
    for header in headers:
        args += ["-H", header]
    with tempfile.TemporaryDirectory() as cwd:
        done = subprocess.run(args, cwd=cwd, capture_output=True, text=True,
                              timeout=ST_TIMEOUT_S, check=False)
    out = done.stdout + done.stderr
    assert done.returncode == 0, out[-6000:]
    return out


@pytest.mark.parametrize("keyed", [False, True], ids=["open", "keyed"])
def test_schemathesis_all_checks_find_nothing(server: Live, keyed_server: Live,
                                              keyed: bool) -> None:
    # Every check, every phase (examples, coverage, fuzzing, stateful), both modes: no 5xx, every
    # answer as declared, schema-valid bodies accepted and invalid ones refused, the key's
    # absence refused where the document asks for it, other methods refused with Allow.
    live = keyed_server if keyed else server
    report = ARTIFACTS / f"schemathesis-{'keyed' if keyed else 'open'}.xml"
    out = st_run(live, report, [f"Authorization: Bearer {KEY}"] if keyed else [])
    spec = openapi_document(live.url, KEY if keyed else None)
    declared = {f"{method.upper()} {path}" for path, item in spec["paths"].items()
                for method in item}
    # The CLI leaves out the operation it reads the document from (GET /openapi.json); the
    # key-less run below and tests/test_openapi.py have it.
    tested = {case.get("name") for case in ElementTree.parse(report).iter("testcase")}
    assert tested - {"Stateful tests"} == declared - {"GET /openapi.json"}, out[-3000:]


@pytest.fixture(scope="module")
def keyed_server(tiny_bundle: Path, tiny_cls_bundle: Path) -> Iterator[Live]:
    with live_server([tiny_bundle, tiny_cls_bundle], ["--api-key", KEY]) as live:
        yield live


def test_every_operation_without_the_key(keyed_server: Live) -> None:
    # With auth on and no key sent, protected operations answer 401: those answers too must be
    # declared by the schema and match it (the schema is read with the key; it may be open).
    schema = schemathesis.openapi.from_url(f"{keyed_server.url}/openapi.json",
                                           headers={"Authorization": f"Bearer {KEY}"})
    tried: dict[str, int] = {}
    for op in operations(schema):
        tried[op.label] = 0
        fuzz_operation(op, GenerationMode.POSITIVE, CHECKS, keyed_server.url, tried,
                       examples=KEYLESS_EXAMPLES)
    assert all(tried.values()), tried
