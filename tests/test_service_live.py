"""A live `python -m edge_embed.service` on a free port, driven by the official `openai` client."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import openai
import pytest

from edge_embed.core.encoder import BundleModel
from tests.fixtures.server import LIVE_KEY, LIVE_LIMITED, ROOT, Live, live_server
from tests.reliability_server import get_json, http

KEY, LIMITED = LIVE_KEY, LIVE_LIMITED
TEXTS = ["The quick brown fox jumps over the lazy dog.", "A cat sleeps on the windowsill."]


@pytest.fixture(scope="module")
def live(keyed_live: Live) -> Live:
    return keyed_live


def client(live: Live, key: str = KEY) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{live.url}/v1", api_key=key, max_retries=0, timeout=30)


def test_default_base64_equals_float(live: Live, tiny_bundle: Path) -> None:
    c = client(live)
    default = c.embeddings.create(model="tiny", input=TEXTS)  # the SDK asks for base64
    floats = c.embeddings.create(model="tiny", input=TEXTS, encoding_format="float")
    a = np.asarray([d.embedding for d in default.data], dtype=np.float32)
    b = np.asarray([d.embedding for d in floats.data], dtype=np.float32)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_allclose(a, BundleModel(tiny_bundle).embed(TEXTS), atol=1e-5)
    assert default.model == "tiny" and default.usage.prompt_tokens > 0


def test_string_token_ids_and_lists(live: Live, tiny_bundle: Path) -> None:
    c = client(live)
    tok = BundleModel(tiny_bundle).tokenizer
    ids = [tok.encode([t])[0].ids[1:-1].tolist() for t in TEXTS]
    one = c.embeddings.create(model="tiny", input=TEXTS[0]).data[0].embedding
    by_ids = c.embeddings.create(model="tiny", input=ids[0]).data[0].embedding
    lists = c.embeddings.create(model="tiny", input=ids)
    np.testing.assert_allclose(one, by_ids, atol=1e-6)
    assert len(lists.data) == 2
    np.testing.assert_allclose(lists.data[0].embedding, one, atol=1e-6)


def test_dimensions_and_extensions(live: Live) -> None:
    c = client(live)
    cut = c.embeddings.create(model="tiny-cls", input=TEXTS[0], dimensions=16)
    assert len(cut.data[0].embedding) == 16
    long = "fox " * 300
    resp = c.embeddings.create(model="tiny", input=[TEXTS[0], long],
                               extra_body={"input_type": "query"})
    warnings = (resp.model_extra or {}).get("warnings")
    assert warnings and warnings[0]["index"] == 1
    raw = c.embeddings.with_raw_response.create(model="tiny", input=long)
    assert raw.headers["x-edge-embed-truncated"] == "1"


def test_models_listing(live: Live) -> None:
    models = client(live).models.list()
    assert {m.id for m in models.data} == {"tiny", "tiny-cls"}
    assert [m.id for m in client(live, LIMITED).models.list().data] == ["tiny-cls"]
    assert client(live).models.retrieve("tiny").id == "tiny"


@pytest.mark.parametrize(("key", "kwargs", "error"), [
    ("wrong-key", {"model": "tiny", "input": "x"}, openai.AuthenticationError),
    (KEY, {"model": "no-such-model", "input": "x"}, openai.NotFoundError),
    (KEY, {"model": "tiny", "input": ""}, openai.BadRequestError),
    (KEY, {"model": "tiny", "input": [[10**9]]}, openai.BadRequestError),
    (KEY, {"model": "tiny", "input": "x", "dimensions": 8}, openai.BadRequestError),
    (LIMITED, {"model": "tiny", "input": "x"}, openai.NotFoundError),  # hidden from it
])
def test_errors_map_to_the_sdk_exceptions(live: Live, key: str, kwargs: dict[str, Any],
                                          error: type[Exception]) -> None:
    with pytest.raises(error) as info:
        client(live, key).embeddings.create(**kwargs)
    exc = info.value
    assert isinstance(exc, openai.APIStatusError)
    assert isinstance(exc.body, dict) and exc.body.get("message")  # the SDK unwraps "error"


def test_access_log_is_json_and_keyless(live: Live) -> None:
    client(live).embeddings.create(model="tiny", input=TEXTS)
    lines = [json.loads(line.split(" edge_embed.access ", 1)[1]) for line in
             live.log_text().splitlines() if " edge_embed.access " in line]
    ok = [x for x in lines if x["path"] == "/v1/embeddings" and x["status"] == 200]
    assert ok
    for field in ("request_id", "model", "inputs", "tokens", "truncated", "queue_ms",
                  "inference_ms"):
        assert field in ok[-1]
    assert KEY not in live.log_text() and LIMITED not in live.log_text()


def test_sigterm_drains_and_exits_zero(tiny_bundle: Path) -> None:
    with live_server([tiny_bundle]) as server:
        status, _, _ = http("POST", f"{server.url}/v1/embeddings",
                            body={"model": "tiny", "input": "x"})
        assert status == 200
        server.proc.send_signal(signal.SIGTERM)
        assert server.proc.wait(timeout=30) == 0
        assert "draining" in server.log_text() and "stopped" in server.log_text()


def run_serve(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "edge_embed.service", "--port", "0", *args],
                          cwd=ROOT,
                          capture_output=True, text=True, timeout=120)


def test_bad_bundle_is_one_line_and_exit_2(tiny_bundle: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad"
    bad.mkdir()
    for name in ("model.onnx", "tokenizer.json"):
        (bad / name).write_bytes((tiny_bundle / name).read_bytes())
    manifest = json.loads((tiny_bundle / "bundle.json").read_text())
    manifest["pooling"] = "max"
    (bad / "bundle.json").write_text(json.dumps(manifest))
    done = run_serve("--model", str(bad))
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "bundle.json" in lines[0] and "'pooling'" in lines[0]


def test_missing_provider_names_the_extra(tiny_bundle: Path) -> None:
    import onnxruntime

    if "OpenVINOExecutionProvider" in onnxruntime.get_available_providers():
        pytest.skip("OpenVINO is installed here; the refusal needs a missing provider")
    done = run_serve("--model", str(tiny_bundle), "--provider", "openvino")
    assert done.returncode == 2
    assert "edge-embed[openvino]" in done.stderr and "--provider-fallback" in done.stderr


def test_provider_fallback_is_reported(tiny_bundle: Path) -> None:
    import onnxruntime

    if "OpenVINOExecutionProvider" in onnxruntime.get_available_providers():
        pytest.skip("OpenVINO is installed here; no fallback would happen")
    with live_server([tiny_bundle], ["--provider", "openvino", "--provider-fallback"]) as s:
        info = get_json(f"{s.url}/info")
        assert info["providers"]["fell_back"]["tiny"]
        health = get_json(f"{s.url}/health")
        assert health["models"]["tiny"]["provider_fell_back"] is True
        model = get_json(f"{s.url}/v1/models/tiny")
        assert model["provider_fell_back"] is True
        assert model["provider"] == ["CPUExecutionProvider"]
        assert "provider fallback" in s.log_text()
