"""The peers' int8 graph: what fastembed and infinity serve, as the ceiling of any server on it.

Both serve onnxruntime's `quantize_dynamic` of the fp32 export (int8 weights, one scale per
output channel; activations quantized per tensor at run time). Built here from the fp32 bundle's
own graph, so tokenizer, pooling and inputs are ours and only the graph differs; run raw
in-process (bench/inproc.py, `--kind peer`) with every usable CPU on one run at a time, which is
how those servers run a request. Cached beside the fp32 bundle (make bench: models/), rebuilt
when the fp32 graph changes.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

from edge_embed.core.bundle import load_manifest
from edge_embed.core.files import sha256

PEER_SUFFIX = "-peer-int8"
# bundle.json field naming the fp32 graph (sha256) the cached peer graph was quantized from.
SOURCE_FIELD = "peer_of"


def peer_folder(fp32: Path, cache: Path | None = None) -> Path:
    """Where the peer bundle of `fp32` is cached: beside it unless `cache` is given."""
    name = fp32.name.removesuffix("-fp32") + PEER_SUFFIX
    return (cache or fp32.parent) / name


def peer_bundle(fp32: Path, cache: Path | None = None) -> Path:
    """The peer bundle of the fp32 bundle `fp32`: cached, or quantized now (seconds)."""
    manifest = load_manifest(fp32)
    source = fp32 / manifest.model_file
    source_sha = sha256(source)
    out = peer_folder(fp32, cache)
    meta = out / "bundle.json"
    if meta.is_file():
        try:
            if json.loads(meta.read_text(encoding="utf-8")).get(SOURCE_FIELD) == source_sha:
                return out
        except (OSError, ValueError):
            pass  # unreadable: built again below
    # Imported here: the export stack (onnx), which the service's runtime install lacks.
    from onnxruntime.quantization import QuantType, quantize_dynamic

    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="peer-int8-", dir=out.parent) as tmp:
        staged = Path(tmp) / out.name
        staged.mkdir()
        model = staged / manifest.model_file
        quantize_dynamic(source, model, per_channel=True, weight_type=QuantType.QInt8)
        shutil.copyfile(fp32 / manifest.tokenizer_file, staged / manifest.tokenizer_file)
        data = json.loads((fp32 / "bundle.json").read_text(encoding="utf-8"))
        data.update({"id": out.name, "precision": "int8", SOURCE_FIELD: source_sha,
                     "quantization": {"method": "onnxruntime quantize_dynamic",
                                      "params": {"per_channel": True, "weight_type": "QInt8"}}})
        files = data.get("files")
        if isinstance(files, dict) and manifest.model_file in files:
            files[manifest.model_file] = {"sha256": sha256(model),
                                          "size": model.stat().st_size}
        (staged / "bundle.json").write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
        if out.exists():
            shutil.rmtree(out)
        staged.rename(out)
    return out
