"""The served models: bundles loaded into onnxruntime, found by id or alias."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from edge_embed.core import files
from edge_embed.core.bundle import RerankInfo, Task, load_manifest
from edge_embed.core.compact import SCALED_TYPES
from edge_embed.core.encoder import BundleModel
from edge_embed.core.errors import BundleError
from edge_embed.core.files import VerifyMode
from edge_embed.core.rerank import open_bundle
from edge_embed.core.runtime import RuntimeOptions

from .advice import bundle_warnings
from .errors import InvalidRequest, ModelNotFound
from .schema import EMBEDDING_TYPES

log = logging.getLogger("edge_embed.models")

_TASK_WORDS: dict[Task, str] = {"embed": "it is an embedding model (vectors)",
                                "rerank": "it is a reranker (a cross-encoder scoring pairs)"}


@dataclass(frozen=True)
class ServedModel:
    """A loaded bundle and the names it answers to; its engine lives in the app's `Engines`."""

    model: BundleModel

    @property
    def id(self) -> str:
        return self.model.manifest.id

    @property
    def names(self) -> tuple[str, ...]:
        return (self.id, *self.model.manifest.aliases)

    @property
    def task(self) -> Task:
        return self.model.manifest.task

    def require(self, task: Task) -> None:
        """400 naming this model's task where a request asks it for another."""
        if self.task != task:
            route = "/v1/rerank" if self.task == "rerank" else "/v1/embeddings"
            raise InvalidRequest(
                f"The model '{self.id}' serves task '{self.task}', not '{task}': "
                f"{_TASK_WORDS[self.task]}; send it to {route}, or name a model of task "
                f"'{task}' (GET /v1/models lists each model's task).", param="model",
                code="wrong_model_task")

    @property
    def embedding_types(self) -> list[str]:
        """What /v2/embed and the embeddings extension serve for it (core/compact.py): the
        scaled types only where its bundle has a scale; none for a reranker (no vectors)."""
        if self.task != "embed":
            return []
        compact = self.model.manifest.compact
        return [t for t in EMBEDDING_TYPES if compact is not None or t not in SCALED_TYPES]

    def warnings(self) -> list[str]:
        """What the operator should fix about serving this bundle here (service/advice.py)."""
        return bundle_warnings(self.model.manifest, self.model.providers.used)

    def info(self, created: int, canary: dict[str, Any] | None = None) -> dict[str, Any]:
        """OpenAI's model object plus what a caller needs to use this one well (`canary`: the
        start-up check of its canaries on this machine)."""
        m = self.model.manifest
        p = self.model.providers
        quality = None
        if m.quality is not None:
            q = m.quality
            quality = {"reference": q.reference, "eval_set": q.eval_set, "n_inputs": q.n_inputs,
                       "cosine_min": q.cosine_min, "cosine_mean": q.cosine_mean,
                       "nn_agreement": q.nn_agreement,
                       "batch_invariance_min": q.batch_invariance_min}
        return {
            "id": m.id, "object": "model", "created": created, "owned_by": "edge-embed",
            "aliases": list(m.aliases), "dimensions": m.dimensions,
            "matryoshka_dimensions": list(m.matryoshka_dimensions), "max_tokens": m.max_tokens,
            "pooling": m.pooling, "normalized": m.normalize, "precision": m.precision,
            "input_types": sorted(m.prompts), "provider": list(p.used),
            "provider_requested": list(p.requested), "provider_fell_back": p.fell_back,
            "provider_message": p.message or None, "quality": quality,
            "source": m.source.get("model"), "canary": canary, "task": m.task,
            "rerank": None if m.rerank is None else _rerank_info(m.rerank),
            "embedding_types": self.embedding_types,
        }


def _rerank_info(info: RerankInfo) -> dict[str, Any]:
    """A reranker's scoring and its measured ranking agreement (parity with torch for fp32,
    against the fp32 bundle for a quantized one)."""
    return {"activation": info.activation, "truncation": info.truncation,
            "parity": None if info.parity is None else asdict(info.parity),
            "quality": None if info.quality is None else asdict(info.quality)}


class Registry:
    def __init__(self, served: list[ServedModel]) -> None:
        self.models = served
        self._by_name: dict[str, ServedModel] = {}
        for s in served:
            for name in s.names:
                other = self._by_name.get(name)
                if other is not None and other is not s:
                    raise BundleError(s.model.folder / "bundle.json",
                                      f"'{name}' is already served by {other.model.folder}",
                                      "aliases" if name != s.id else "id")
                self._by_name[name] = s

    @classmethod
    def load(cls, folders: tuple[Path, ...], options: RuntimeOptions,
             verify: VerifyMode = "sha256") -> Registry:
        """Each bundle's files checked against its manifest (`verify`), then loaded."""
        served = []
        for folder in folders:
            started = time.perf_counter()
            checked = files.verify(folder, load_manifest(folder), verify)
            log.info("bundle %s: files match bundle.json (%s, %.1f MB) in %.0f ms", folder, verify,
                     checked / 1e6, (time.perf_counter() - started) * 1000)
            served.append(ServedModel(open_bundle(folder, options)))
        return cls(served)

    def __iter__(self) -> Iterator[ServedModel]:
        return iter(self.models)

    def get(self, name: str,
            visible: Callable[[Sequence[str]], bool] = lambda names: True) -> ServedModel:
        """The model called `name`, if `visible` (given its names) lets the caller see it; else
        404 listing only the names of the models the caller may see."""
        served = self._by_name.get(name)
        if served is None or not visible(served.names):
            known = ", ".join(sorted(n for s in self.models if visible(s.names) for n in s.names))
            raise ModelNotFound(f"The model '{name[:200]}' does not exist. Served: {known}.",
                                param="model")
        return served

    def find(self, name: str) -> ServedModel | None:
        return self._by_name.get(name)
