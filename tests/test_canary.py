"""Bundle canaries: what the bundle carries, and the service's start-up check over real HTTP.

The tampered bundles are copies of the tiny fp32 bundle whose `canary.json` reference vectors
were changed and whose manifest lists the changed file's new hash: a bundle that passes the file
check but whose canaries no longer match what this machine computes.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edge_embed.core import canary
from edge_embed.core.bundle import MANIFEST_NAME, load_manifest, parse_manifest
from edge_embed.core.encoder import BundleModel
from edge_embed.core.errors import BundleError
from edge_embed.core.files import sha256
from edge_embed.service.settings import parse_settings
from tests.fixtures.server import ROOT, live_server
from tests.reliability_server import get, scrape

# A refused start-up exits long before this; a hung one fails the test instead of the suite.
START_TIMEOUT_S = 60


def rewrite(bundle: Path, out: Path, change: Any) -> Path:
    """A copy of `bundle` with `change(canary data)` applied and the manifest's hash updated."""
    shutil.copytree(bundle, out)
    path = out / canary.CANARY_FILE
    data = json.loads(path.read_text(encoding="utf-8"))
    change(data)
    path.write_text(json.dumps(data), encoding="utf-8")
    manifest = json.loads((out / MANIFEST_NAME).read_text(encoding="utf-8"))
    manifest["files"][canary.CANARY_FILE] = {"size": path.stat().st_size, "sha256": sha256(path)}
    (out / MANIFEST_NAME).write_text(json.dumps(manifest), encoding="utf-8")
    return out


def turn_first_vector(data: dict[str, Any]) -> None:
    # the first reference vector rolled by one place: same norm, a cosine far below any gate
    data["vectors"][0] = data["vectors"][0][1:] + data["vectors"][0][:1]


@pytest.fixture
def tampered(tiny_bundle: Path, tmp_path: Path) -> Path:
    return rewrite(tiny_bundle, tmp_path / "tiny", turn_first_vector)


def start(bundle: Path, *args: str, env: dict[str, str] | None = None
          ) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "edge_embed.service", "--model", str(bundle),
                           "--port", "0", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=START_TIMEOUT_S, env=env, check=False)


# ---- what a bundle carries --------------------------------------------------------------------
def test_bundle_carries_canaries_listed_and_hashed(tiny_bundle: Path) -> None:
    manifest = load_manifest(tiny_bundle)
    info = manifest.canary
    assert info is not None
    assert manifest.files[info.file].sha256 == sha256(tiny_bundle / info.file)
    carried = canary.load(tiny_bundle, manifest)
    assert carried is not None
    assert carried.texts == canary.canary_texts(manifest.max_tokens) and info.count == 6
    assert (info.gate, info.build_agreement) == (canary.FP32_GATE, 1.0)
    # the long one passes the model's cut, so that the cut is part of the check
    tokens = BundleModel(tiny_bundle).tokenizer.encode(carried.texts)
    assert tokens[-1].truncated and not any(t.truncated for t in tokens[:-1])
    # the reference is the fp32 graph's own vectors
    np.testing.assert_allclose(carried.vectors, BundleModel(tiny_bundle).embed(carried.texts),
                               atol=1e-6)


def test_quantized_gate_is_measured_worst_less_the_kernel_margin() -> None:
    assert canary.gate_for("fp32", 0.5, 0.5) == canary.FP32_GATE
    assert canary.gate_for("int8", 0.9875, 0.9930) == pytest.approx(0.9775)
    # the canaries' own agreement on the build machine, when lower, is what the margin is from
    assert canary.gate_for("int8", 0.9875, 0.9850) == pytest.approx(0.9750)


def test_malformed_canary_file_is_refused_naming_file_and_field(tiny_bundle: Path,
                                                                tmp_path: Path) -> None:
    def short_vector(data: dict[str, Any]) -> None:
        data["vectors"][2] = data["vectors"][2][:-1]

    bundle = rewrite(tiny_bundle, tmp_path / "tiny", short_vector)
    done = start(bundle)
    assert done.returncode == 2
    assert f"{bundle / canary.CANARY_FILE}: field 'vectors': must be 6 lists of" in done.stderr
    assert "Traceback" not in done.stderr


# ---- the start-up check, over HTTP ------------------------------------------------------------
def test_untampered_bundle_passes_with_agreement_one(tiny_bundle: Path) -> None:
    with live_server([tiny_bundle]) as live:
        status, health = get(live.url + "/health")
        _, models = get(live.url + "/v1/models")
        metrics = scrape(live.url)
        log = live.log_text()
    expected = {"status": "pass", "agreement": 1.0, "gate": canary.FP32_GATE, "count": 6,
                "build_agreement": 1.0}
    assert status == 200 and health["status"] == "ok"
    assert health["models"]["tiny"]["canary"] == expected
    assert models["data"][0]["canary"] == expected
    assert 'edge_embed_canary_agreement{model="tiny"} 1.0' in metrics
    assert 'edge_embed_canary_failed{model="tiny"} 0.0' in metrics
    assert "canaries tiny: agreement 1.000000 >= gate 0.999900 over 6 inputs" in log


def test_tampered_reference_is_refused_with_a_clear_message(tampered: Path) -> None:
    done = start(tampered)
    assert done.returncode == 2
    message = done.stderr.strip().splitlines()[-1]
    figure = float(message.split("on this machine is ")[1].split(",")[0])
    assert figure < canary.FP32_GATE
    assert str(tampered) in message
    assert f"below the bundle's gate {canary.FP32_GATE:.6f}" in message
    assert "--canary-failure serve" in message and "EDGE_EMBED_CANARY_FAILURE=serve" in message
    assert "Traceback" not in done.stderr


def test_tampered_reference_serves_loudly_when_told_to(tampered: Path, tiny_cls_bundle: Path
                                                       ) -> None:
    with live_server([tampered, tiny_cls_bundle],
                     env={"EDGE_EMBED_CANARY_FAILURE": "serve"}) as live:
        status, health = get(live.url + "/health")
        ready, _ = get(live.url + "/ready")
        _, model = get(live.url + "/v1/models/tiny")
        metrics = scrape(live.url)
        log = live.log_text()
    assert status == 200 and ready == 200  # alive and ready: the operator chose to serve it
    assert health["status"] == "failed-serving"
    report = health["models"]["tiny"]["canary"]
    assert report["status"] == "failed-serving" and report["agreement"] < report["gate"]
    assert health["models"]["tiny-cls"]["canary"]["status"] == "pass"
    assert model["canary"] == report
    assert 'edge_embed_canary_failed{model="tiny"} 1.0' in metrics
    assert f'edge_embed_canary_agreement{{model="tiny"}} {report["agreement"]}' in metrics
    assert "WARNING edge_embed.canary CANARY FAILED for tiny" in log


def test_bundle_without_canaries_loads_and_reports_absent(tiny_bundle: Path,
                                                          tmp_path: Path) -> None:
    old = Path(shutil.copytree(tiny_bundle, tmp_path / "tiny"))
    manifest = json.loads((old / MANIFEST_NAME).read_text(encoding="utf-8"))
    del manifest["canary"], manifest["files"][canary.CANARY_FILE]
    (old / MANIFEST_NAME).write_text(json.dumps(manifest), encoding="utf-8")
    (old / canary.CANARY_FILE).unlink()
    with live_server([old]) as live:
        status, health = get(live.url + "/health")
        _, models = get(live.url + "/v1/models")
        metrics = scrape(live.url)
    assert status == 200 and health["status"] == "ok"
    assert health["models"]["tiny"]["canary"] == {"status": "absent"}
    assert models["data"][0]["canary"] == {"status": "absent"}
    assert 'edge_embed_canary_agreement{model="tiny"}' not in metrics


@pytest.mark.parametrize(("section", "needle"), [
    ("yes", "must be an object or null"),
    ({"file": "canary.json", "count": 6, "gate": 0.9999, "gate_rule": "fp32"},
     "has unexpected content"),
    ({"file": "../canary.json", "count": 6, "gate": 0.9999, "gate_rule": "", "build_agreement": 1},
     "file must be a plain file name"),
    ({"file": "canary.json", "count": 0, "gate": 0.9999, "gate_rule": "", "build_agreement": 1},
     "count must be a positive integer"),
    ({"file": "canary.json", "count": 6, "gate": "high", "gate_rule": "", "build_agreement": 1},
     "gate must be a cosine"),
])
def test_malformed_canary_section_is_refused(tiny_bundle: Path, section: Any,
                                             needle: str) -> None:
    path = tiny_bundle / MANIFEST_NAME
    data = json.loads(path.read_text(encoding="utf-8"))
    data["canary"] = section
    with pytest.raises(BundleError, match="field 'canary'") as caught:
        parse_manifest(data, path)
    assert needle in str(caught.value)


def test_canary_failure_setting() -> None:
    assert parse_settings(["--model", "m"]).canary_failure == "refuse"
    assert parse_settings(["--model", "m", "--canary-failure", "serve"]).canary_failure == "serve"
    env = {"EDGE_EMBED_CANARY_FAILURE": "serve"}
    assert parse_settings(["--model", "m"], environ=env).canary_failure == "serve"
    with pytest.raises(SystemExit):
        parse_settings(["--model", "m", "--canary-failure", "ignore"])
