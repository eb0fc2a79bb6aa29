"""OpenTelemetry traces: a live server with --otlp-endpoint sends its spans to a real OTLP/HTTP
receiver (an aiohttp server here that decodes the protobuf), and without the flag nothing of
opentelemetry is imported."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import textwrap
from pathlib import Path

from opentelemetry.proto.trace.v1.trace_pb2 import Span

from tests.fixtures.otlp import EXPORT_DELAY_MS, Receiver, attributes
from tests.fixtures.server import ROOT, AiohttpClient, Live
from tests.reliability_server import http

# The caller's trace: W3C traceparent version 00, sampled.
TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_ID = "00f067aa0ba902b7"
TRACEPARENT = f"00-{TRACE_ID}-{PARENT_ID}-01"
SUBPROCESS_TIMEOUT_S = 120


def embed(url: str) -> int:
    status, _, _ = http("POST", url + "/v1/embeddings", headers={"traceparent": TRACEPARENT},
                        body={"model": "tiny", "input": ["a short one", "and a second input"]})
    return status


async def test_request_spans_reach_an_otlp_receiver(tiny_bundle: Path,
                                                     aiohttp_client: AiohttpClient) -> None:
    receiver = Receiver()
    client = await aiohttp_client(receiver.app)
    endpoint = str(client.make_url(""))
    live = await asyncio.to_thread(
        lambda: Live([tiny_bundle], ["--otlp-endpoint", endpoint],
                     env={"OTEL_BSP_SCHEDULE_DELAY": EXPORT_DELAY_MS}).start())
    try:
        assert await asyncio.to_thread(embed, live.url) == 200
        names = {"POST /v1/embeddings", "tokenize", "queue", "inference"}
        await receiver.arrived(names)
    finally:
        await asyncio.to_thread(live.stop)

    by_name = {s.name: s for s in receiver.spans}
    assert names <= set(by_name), sorted(by_name)
    server = by_name["POST /v1/embeddings"]
    # the caller's traceparent is honoured: same trace, the caller's span as parent
    assert server.trace_id.hex() == TRACE_ID and server.parent_span_id.hex() == PARENT_ID
    assert server.kind == Span.SpanKind.SPAN_KIND_SERVER
    attrs = attributes(server)
    assert attrs["edge_embed.model"] == "tiny" and attrs["edge_embed.inputs"] == 2
    assert attrs["edge_embed.tokens"] > 0 and attrs["http.response.status_code"] == 200
    for name in ("tokenize", "queue", "inference"):
        child = by_name[name]
        assert child.trace_id == server.trace_id and child.parent_span_id == server.span_id
        assert server.start_time_unix_nano <= child.start_time_unix_nano
        assert child.start_time_unix_nano <= child.end_time_unix_nano
        assert child.end_time_unix_nano <= server.end_time_unix_nano
        assert attributes(child)["edge_embed.model"] == "tiny"
    assert attributes(by_name["tokenize"])["edge_embed.tokens"] == attrs["edge_embed.tokens"]
    assert attributes(by_name["inference"])["edge_embed.batch_size"] >= 2
    # the queue wait ends where the first run starts
    assert by_name["queue"].end_time_unix_nano <= by_name["inference"].start_time_unix_nano
    assert {"service.name": "edge-embed"}.items() <= receiver.resources[0].items()


# Builds the app over the tiny bundle, serves one embeddings request in-process (with an endpoint:
# builds it only, as nothing listens there to take a request's spans), and prints the
# opentelemetry modules then imported.
_SERVE_ONE = textwrap.dedent("""
    import asyncio, sys
    from pathlib import Path
    from aiohttp.test_utils import TestClient, TestServer
    from edge_embed.service.app import create_app
    from edge_embed.service.settings import Settings

    async def main():
        endpoint = sys.argv[2] if len(sys.argv) > 2 else None
        app = create_app(Settings(models=(Path(sys.argv[1]),), otlp_endpoint=endpoint))
        if endpoint:
            return
        async with TestClient(TestServer(app)) as client:
            response = await client.post("/v1/embeddings", json={"model": "tiny", "input": "hi"})
            assert response.status == 200, response.status

    asyncio.run(main())
    print(sorted(m for m in sys.modules if m.split(".")[0] == "opentelemetry"))
""")


def imported_otel(*args: str) -> list[str]:
    done = subprocess.run([sys.executable, "-c", _SERVE_ONE, *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=SUBPROCESS_TIMEOUT_S,
                          check=True)
    modules: list[str] = json.loads(done.stdout.strip().splitlines()[-1].replace("'", '"'))
    return modules


def test_without_the_flag_nothing_of_opentelemetry_is_imported(tiny_bundle: Path) -> None:
    assert imported_otel(str(tiny_bundle)) == []
    # the same script with the flag does import it: the check above can see an import
    assert "opentelemetry.sdk.trace" in imported_otel(str(tiny_bundle), "http://127.0.0.1:9")


def test_flag_without_the_extra_is_a_clear_startup_error(tiny_bundle: Path) -> None:
    # opentelemetry made unimportable, as in an install without the extra
    script = ("import sys; sys.modules['opentelemetry'] = None\n"
              "from edge_embed.service.serve import main\n"
              f"sys.exit(main(['--model', {str(tiny_bundle)!r}, '--port', '0', "
              "'--otlp-endpoint', 'http://127.0.0.1:4318']))")
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True,
                          text=True, timeout=SUBPROCESS_TIMEOUT_S, check=False)
    assert done.returncode == 2
    assert "--otlp-endpoint (EDGE_EMBED_OTLP_ENDPOINT) needs OpenTelemetry" in done.stderr
    assert "pip install 'edge-embed[otel]'" in done.stderr
    assert "Traceback" not in done.stderr
