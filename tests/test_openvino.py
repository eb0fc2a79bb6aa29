"""The OpenVINO execution provider, for real: fp32 bundles served through
`OpenVINOExecutionProvider` over HTTP agree with the CPU provider, stay batch-invariant and
report truncation; the service says which provider really runs; a per-token int8 bundle
is refused (OpenVINO cannot run per-token int8) or, with --provider-fallback, runs on the
CPU saying why; other int8 graphs run under OpenVINO with the advice to serve the fp32 bundle.

These run only in the OpenVINO venv (`make test-openvino`: onnxruntime-openvino replaces
onnxruntime there); the default suite deselects the `openvino` marker.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest

from edge_embed.core.encoder import BundleModel
from edge_embed.core.runtime import PERTOKEN_ON_OPENVINO, RuntimeOptions
from edge_embed.core.targets import OPENVINO_ADVICE
from tests.fixtures.minilm import models_dir
from tests.fixtures.quantized import build_quantized, build_tiny_int8
from tests.fixtures.server import Live, live_server
from tests.fixtures.tiny import TINY_BUNDLE_ID, committed_copy
from tests.reliability_server import get_json, http
from tests.test_service_live import run_serve

pytestmark = pytest.mark.openvino

OPENVINO = "OpenVINOExecutionProvider"
# fp32 through OpenVINO's own kernels against onnxruntime's CPU kernels: the same arithmetic in
# another order (measured on MiniLM: cosine 0.99999+); the bar the CPU provider's fp32 meets.
AGREEMENT = 0.9999
TEXTS = ["The quick brown fox jumps over the lazy dog.", "A cat sleeps on the windowsill.",
         "hello", "Quarterly revenue rose 12% on strong demand for cloud services in Europe.",
         "café crème brûlée"]
LONG = " ".join(["word"] * 2000)  # past any bundle's token limit


@pytest.fixture(scope="module")
def tiny_fp32(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The committed tiny fp32 bundle: the OpenVINO venv has no torch to export one."""
    return committed_copy(TINY_BUNDLE_ID, tmp_path_factory)


@pytest.fixture(scope="module")
def tiny_int8(tiny_fp32: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_int8(tiny_fp32, tmp_path_factory.mktemp("int8") / "tiny-int8",
                           ["--exclude", "none"])


def _fp32_bundles(tiny_fp32: Path) -> list[Path]:
    bundles = [tiny_fp32]
    models = models_dir()
    minilm = models / "all-minilm-l6-v2-fp32" if models is not None else None
    if minilm is not None and (minilm / "bundle.json").is_file():
        bundles.append(minilm)
    elif models is not None:
        pytest.fail(f"EDGE_EMBED_MODELS={models} has no all-minilm-l6-v2-fp32 (make model)")
    return bundles


def _post(live: Live, body: dict[str, Any]) -> tuple[dict[str, Any], dict[str, str]]:
    status, headers, answer = http("POST", f"{live.url}/v1/embeddings", body=body)
    assert status == 200 and isinstance(answer, dict), (status, answer)
    return answer, headers


def _vectors(answer: dict[str, Any]) -> np.ndarray:
    return np.asarray([d["embedding"] for d in answer["data"]], dtype=np.float32)


def test_openvino_is_installed() -> None:
    assert OPENVINO in ort.get_available_providers(), (
        "onnxruntime-openvino is not the onnxruntime here: run these in .venv-openvino "
        "(make test-openvino)")


def test_fp32_over_http_agrees_with_cpu(tiny_fp32: Path) -> None:
    for bundle in _fp32_bundles(tiny_fp32):
        cpu = BundleModel(bundle, RuntimeOptions(providers=("cpu",)))
        model_id = cpu.manifest.id
        with live_server([bundle], ["--provider", "openvino"]) as s:
            info = get_json(f"{s.url}/v1/models/{model_id}")
            # what the session reports, not what was asked for
            assert info["provider"][0] == OPENVINO and info["provider_fell_back"] is False
            health = get_json(f"{s.url}/health")
            assert health["models"][model_id]["warnings"] == []
            batched = _vectors(_post(s, {"model": model_id, "input": TEXTS,
                                         "encoding_format": "float"})[0])
            alone = np.concatenate([
                _vectors(_post(s, {"model": model_id, "input": t,
                                   "encoding_format": "float"})[0]) for t in TEXTS])
            answer, headers = _post(s, {"model": model_id, "input": ["short", LONG],
                                        "encoding_format": "float", "truncate": True})
        ref = cpu.embed(TEXTS)
        assert (batched * ref).sum(axis=1).min() >= AGREEMENT, bundle.name
        assert (alone * batched).sum(axis=1).min() >= AGREEMENT, bundle.name  # batch-invariant
        assert headers["X-Edge-Embed-Truncated"] == "1"
        assert [w["index"] for w in answer["warnings"]] == [1]
        truncated = _vectors(answer)
        assert float(truncated[1] @ cpu.embed([LONG])[0]) >= AGREEMENT


def test_pertoken_int8_is_refused_on_openvino(tiny_int8: Path) -> None:
    # OpenVINO fails on the first run of a per-token graph: the service refuses at start-up
    done = run_serve("--model", str(tiny_int8), "--provider", "openvino")
    assert done.returncode == 2
    assert PERTOKEN_ON_OPENVINO in done.stderr and "--provider-fallback" in done.stderr
    assert "Traceback" not in done.stderr


def test_pertoken_int8_falls_back_to_cpu_and_says_why(tiny_int8: Path) -> None:
    with live_server([tiny_int8], ["--provider", "openvino", "--provider-fallback"]) as s:
        health = get_json(f"{s.url}/health")
        model = health["models"]["tiny-int8"]
        assert model["provider"] == ["CPUExecutionProvider"] and model["provider_fell_back"]
        assert PERTOKEN_ON_OPENVINO in model["provider_message"]
        answer, _ = _post(s, {"model": "tiny-int8", "input": TEXTS})
        assert len(answer["data"]) == len(TEXTS)
        log = s.log_text()
    assert any(" WARNING " in ln and PERTOKEN_ON_OPENVINO in ln for ln in log.splitlines())


def test_other_int8_on_openvino_runs_with_the_fp32_advice(tiny_fp32: Path,
                                                          tmp_path: Path) -> None:
    # onnxruntime's own dynamic int8 graph runs under OpenVINO, slowly: served, with the advice
    dynamic = build_quantized(tiny_fp32, tmp_path / "dynamic", "--id", "tiny-dynamic",
                              "--method", "dynamic", "--gate-invariance", "0")
    with live_server([dynamic], ["--provider", "openvino"]) as s:
        health = get_json(f"{s.url}/health")
        model = health["models"]["tiny-dynamic"]
        assert model["provider"][0] == OPENVINO
        assert any(OPENVINO_ADVICE in w for w in model["warnings"])
        log = s.log_text()
    assert any(" WARNING " in ln and OPENVINO_ADVICE in ln for ln in log.splitlines())
