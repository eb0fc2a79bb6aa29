"""The container's health check (`python -m edge_embed.service.healthcheck`): where it looks, what
it calls healthy, and that it stays light enough to run every few seconds beside the server."""

from __future__ import annotations

import http.server
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from edge_embed.bench.server import free_port
from edge_embed.service.address import DEFAULT_PORT
from edge_embed.service.healthcheck import check, health_url
from edge_embed.service.settings import parse_settings


@contextmanager
def answering(code: int) -> Iterator[int]:
    """A server on 127.0.0.1 that answers every GET with `code`; yields its port."""
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(code)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize(("env", "url"), [
    ({}, f"http://127.0.0.1:{DEFAULT_PORT}/health"),
    ({"EDGE_EMBED_HOST": "0.0.0.0", "EDGE_EMBED_PORT": "9001"}, "http://127.0.0.1:9001/health"),
    ({"EDGE_EMBED_HOST": "::"}, f"http://[::1]:{DEFAULT_PORT}/health"),
    ({"EDGE_EMBED_HOST": "10.1.2.3", "EDGE_EMBED_PORT": "81"}, "http://10.1.2.3:81/health"),
])
def test_it_probes_where_the_server_listens(env: dict[str, str], url: str) -> None:
    assert health_url(env) == url
    settings = parse_settings(["--model", "m"], environ=env)
    assert url.endswith(f":{settings.port}/health")  # the server reads them the same way


def test_200_is_healthy_anything_else_is_not() -> None:
    with answering(200) as port:
        assert check(f"http://127.0.0.1:{port}/health") is None
    with answering(503) as port:
        url = f"http://127.0.0.1:{port}/health"
        assert check(url) == f"{url}: HTTP 503"
    problem = check(f"http://127.0.0.1:{free_port()}/health", timeout=1.0)
    assert problem is not None and "refused" in problem.lower()


def test_command_exit_codes_and_no_serving_stack_imported() -> None:
    code = ("import sys, runpy; sys.argv = ['healthcheck']\n"
            "try:\n    runpy.run_module('edge_embed.service.healthcheck', run_name='__main__')\n"
            "except SystemExit as e:\n"
            "    heavy = [m for m in ('onnxruntime', 'numpy', 'aiohttp') if m in sys.modules]\n"
            "    print(e.code, heavy)\n")
    with answering(200) as port:
        ok = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            env={"EDGE_EMBED_PORT": str(port)}, timeout=60, check=True)
    assert ok.stdout.strip() == "0 []"
    down = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env={"EDGE_EMBED_PORT": str(free_port())}, timeout=60, check=True)
    assert down.stdout.strip() == "1 []"
    assert "unhealthy: http://127.0.0.1:" in down.stderr


def test_ready_flag_probes_ready_and_other_arguments_are_refused(
        capsys: pytest.CaptureFixture[str]) -> None:
    from edge_embed.service.healthcheck import main

    assert health_url({"EDGE_EMBED_PORT": "81"}, "/ready") == "http://127.0.0.1:81/ready"
    assert main(["--bogus"]) == 2 and "usage" in capsys.readouterr().err
    assert main(["--ready", "--ready"]) == 2
