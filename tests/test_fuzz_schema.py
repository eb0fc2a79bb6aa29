"""Schema fuzzing: schemathesis against the live server's own /openapi.json.

Every operation the schema declares gets schema-valid (positive) and schema-invalid (negative)
requests, bodies included. No answer may be a 5xx; every answer must match what the schema
declares (status code, content type, body schema, headers); invalid data must be refused with a
4xx. Bounded by MAX_EXAMPLES per operation and mode (the whole file runs in well under 60 s).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tests.fixtures.server import Live, live_server

# Examples per operation and generation mode: ~12 operations x 2 modes x 25 requests of a few ms
# each, plus Hypothesis's generation, keeps the file well under a minute on 2 shared cores.
MAX_EXAMPLES = 25
POSITIVE_CHECKS: list[Callable[..., Any]] = [
    not_a_server_error, status_code_conformance, content_type_conformance,
    response_schema_conformance, response_headers_conformance]
NEGATIVE_CHECKS = [*POSITIVE_CHECKS, negative_data_rejection]
KEY = "sk-fuzz-key-0123456789"
# Without a key every protected answer is the same 401: a few examples per operation suffice.
KEYLESS_EXAMPLES = 5


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
                   tried: dict[str, int], examples: int = MAX_EXAMPLES) -> None:
    @given(case=op.as_strategy(generation_mode=mode))
    @settings(max_examples=examples, deadline=None, database=None,
              phases=[Phase.explicit, Phase.generate],
              suppress_health_check=list(HealthCheck))
    def run(case: Any) -> None:
        tried[op.label] += 1
        response = case.call(base_url=base, timeout=30)
        case.validate_response(response, checks=checks)

    run()


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE],
                         ids=["positive", "negative"])
def test_every_operation(server: Live, schema: Any, mode: GenerationMode) -> None:
    checks = POSITIVE_CHECKS if mode == GenerationMode.POSITIVE else NEGATIVE_CHECKS
    ops = operations(schema)
    assert ops, "/openapi.json declares no operation"
    tried: dict[str, int] = {}
    for op in ops:
        tried[op.label] = 0
        try:
            fuzz_operation(op, mode, checks, server.url, tried)
        except Exception as exc:
            # Operations with nothing to negate (no parameters, no body) have no invalid form.
            if mode == GenerationMode.NEGATIVE and type(exc).__name__ == "Unsatisfiable":
                continue
            raise
    untried = [label for label, n in tried.items()
               if n == 0 and (mode == GenerationMode.POSITIVE or label.startswith("POST"))]
    assert not untried, f"operations never exercised: {untried}"
    assert server.proc.poll() is None, "the server died"


@pytest.fixture(scope="module")
def keyed_server(tiny_bundle: Path) -> Iterator[Live]:
    with live_server([tiny_bundle], ["--api-key", KEY]) as live:
        yield live


def test_every_operation_without_the_key(keyed_server: Live) -> None:
    # With auth on and no key sent, protected operations answer 401: those answers too must be
    # declared by the schema and match it (the schema is read with the key; it may be open).
    schema = schemathesis.openapi.from_url(f"{keyed_server.url}/openapi.json",
                                           headers={"Authorization": f"Bearer {KEY}"})
    tried: dict[str, int] = {}
    for op in operations(schema):
        tried[op.label] = 0
        fuzz_operation(op, GenerationMode.POSITIVE, POSITIVE_CHECKS, keyed_server.url, tried,
                       examples=KEYLESS_EXAMPLES)
    assert all(tried.values()), tried
