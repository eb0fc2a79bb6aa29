"""The fp32 bundle's manifest: what the model is, where it came from, and how it was checked."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from edge_embed.core import canary, compact
from edge_embed.core.bundle import Manifest, Quality
from edge_embed.core.encoder import BundleModel
from edge_embed.core.evalset import EvalSet
from edge_embed.core.files import entries, sha256
from edge_embed.core.tooling import now, tool_versions

from .onnx_export import ExportedGraph
from .source import Source
from .st_config import ModelSettings
from .tokenizer import TOKENIZER_FILE
from .torch_model import weights_file

# The offline stack's versions, recorded so a bundle can be rebuilt the same way.
EXPORT_TOOLS = ("torch", "transformers", "optimum", "optimum-onnx", "sentence-transformers",
                "huggingface-hub")


def source_info(source: Source, settings: ModelSettings, graph: ExportedGraph) -> dict[str, object]:
    weights = weights_file(source.folder)
    return {
        "model": source.name,
        "revision": source.revision,
        "hub": source.hub,
        "path": None if source.hub else str(source.folder),
        "library": settings.library,
        "model_type": settings.model_type,
        # the weights' own hash: provenance even when the folder names no revision
        "weights": {weights.name: sha256(weights)},
        "opset": graph.opset,
    }


def build(*, bundle_id: str, aliases: tuple[str, ...], source: Source, settings: ModelSettings,
          graph: ExportedGraph, vocab_size: int, matryoshka: tuple[int, ...]) -> Manifest:
    """The manifest before parity is measured (the parity check loads the bundle through it)."""
    return Manifest(
        id=bundle_id, dimensions=settings.dimensions, max_tokens=settings.max_tokens,
        pooling=settings.pooling, normalize=settings.normalize, precision="fp32",
        inputs=graph.inputs, output=graph.output, output_kind="token_embeddings",
        tokenizer_file=TOKENIZER_FILE, aliases=aliases,
        source=source_info(source, settings, graph), vocab_size=vocab_size,
        matryoshka_dimensions=tuple(sorted(set(matryoshka), reverse=True)),
        prompts=dict(settings.prompts), defaults=settings.defaults,
        tools=tool_versions(*EXPORT_TOOLS), build={"created": now()})


def finalize(manifest: Manifest, parity: Quality, folder: Path, eval_set: EvalSet) -> Manifest:
    """Add the canaries (the graph's own vectors for them are the reference), the measured
    parity, the compact vectors' int8 scale (from the bundle's vectors for the evaluation set),
    and the files' sizes and hashes (taken last, over the finished files)."""
    model = BundleModel(folder)
    texts = canary.canary_texts(manifest.max_tokens)
    info = canary.build(folder, texts, canary.embed(model, texts), model, quality_min=None)
    scale = compact.calibrate(model.embed(eval_set.texts), eval_set.name)
    return dataclasses.replace(manifest, parity=parity, canary=info, compact=scale,
                               files=entries(folder))
