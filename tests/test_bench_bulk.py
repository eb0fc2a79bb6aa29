"""`edge-embed bench bulk --quick`: the harness runs end to end and reports what it promises."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from edge_embed.bench.bulk import main

pytestmark = pytest.mark.slow


def test_bulk_quick(tmp_path: Path, tiny_bundle: Path, capsys: pytest.CaptureFixture[str]
                    ) -> None:
    assert main(["--model", str(tiny_bundle), "--quick", "--no-ray", "--out",
                 str(tmp_path)]) == 0
    result = json.loads((tmp_path / "bulk.json").read_text())
    assert set(result["inputs_per_s"]) == {"raw", "local"}
    assert all(rate > 0 for rate in result["inputs_per_s"].values())
    assert result["ratios"]["local/raw"] > 0
    rss = result["runs"]["local"][0]["rss_mb"]
    assert rss["samples"] > 0 and rss["max"] > 0
    assert "local/raw" in capsys.readouterr().out
    assert (tmp_path / "bulk.txt").read_text().startswith("bulk job:")
