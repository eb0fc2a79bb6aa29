"""What a run is (its spec) and what it wrote (the manifest), as JSON in the output folder.

`run.json` is written before the first shard: the bundle (its id and the sha256 of each of its
files, as the bundle's own manifest lists them), every input (path, format, size, sha256) and
the options that change the output. A restart compares its own spec with it and refuses to mix
two runs' shards. `manifest.json` is written last, after every shard: the spec, the counts, the
truncation summary and the shard list. Its presence means the output is complete.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edge_embed.core.bundle import Manifest
from edge_embed.core.files import sha256
from edge_embed.core.tooling import Reporter

from .readers import Fields, Source
from .shards import shard_stats

FORMAT = "edge-embed.corpus"
# Bump when shards or manifests change in a way an older reader would misread.
FORMAT_VERSION = 1
RUN_NAME = "run.json"
MANIFEST_NAME = "manifest.json"
def bundle_identity(folder: Path, manifest: Manifest) -> dict[str, Any]:
    """The bundle's id and its files' sha256 (from its manifest; hashed here if it lists none)."""
    files = {name: {"size": e.size, "sha256": e.sha256} for name, e in manifest.files.items()}
    if not files:
        for name in (manifest.model_file, manifest.tokenizer_file):
            path = folder / name
            files[name] = {"size": path.stat().st_size, "sha256": sha256(path)}
    return {"id": manifest.id, "precision": manifest.precision,
            "dimensions": manifest.dimensions, "max_tokens": manifest.max_tokens,
            "normalize": manifest.normalize, "files": files}


def input_identity(sources: Sequence[Source]) -> list[dict[str, Any]]:
    return [{"path": str(s.path), "format": s.format, "size": s.path.stat().st_size,
             "sha256": sha256(s.path)} for s in sources]


@dataclass(frozen=True)
class Spec:
    """Everything that decides the output's bytes; two runs with equal specs write equal shards."""

    bundle: dict[str, Any]
    inputs: list[dict[str, Any]]
    fields: Fields
    truncate: bool
    shard_rows: int
    mode: str  # "local" or "ray": the shard layouts differ

    def to_dict(self) -> dict[str, Any]:
        return {"format": FORMAT, "format_version": FORMAT_VERSION, "mode": self.mode,
                "bundle": self.bundle, "inputs": self.inputs,
                "options": {"text_field": self.fields.text, "id_field": self.fields.id,
                            "truncate": self.truncate, "shard_rows": self.shard_rows}}

    def differences(self, other: dict[str, Any]) -> list[str]:
        """What differs from a recorded spec, in words (empty when they match)."""
        mine = self.to_dict()
        out: list[str] = []
        if other.get("bundle") != mine["bundle"]:
            out.append(f"the bundle (recorded {_bundle_name(other.get('bundle'))}, now "
                       f"{_bundle_name(mine['bundle'])})")
        old_inputs = other.get("inputs") or []
        if [i.get("path") for i in old_inputs] != [i["path"] for i in mine["inputs"]]:
            out.append("the list of inputs")
        else:
            for old, new in zip(old_inputs, mine["inputs"], strict=True):
                if old != new:
                    out.append(f"input {new['path']} (its size or sha256 changed)")
        for key in ("options", "mode", "format_version"):
            if other.get(key) != mine[key]:
                out.append(f"{key} (recorded {json.dumps(other.get(key))}, now "
                           f"{json.dumps(mine[key])})")
        return out


def _bundle_name(bundle: Any) -> str:
    if not isinstance(bundle, dict):
        return "none"
    model = (bundle.get("files") or {}).get("model.onnx") or {}
    return f"{bundle.get('id')} {str(model.get('sha256', ''))[:12]}".strip()


def write_json_atomic(path: Path, data: dict[str, Any]) -> None:
    """Write `path` whole or not at all: a temporary file, fsync, rename."""
    tmp = path.with_name(f".{path.name}.tmp")
    with tmp.open("w", encoding="utf-8") as f:
        json.dump(data, f, indent=2, ensure_ascii=False)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def summary(spec: Spec, shards: list[dict[str, Any]], rows: int, tokens: int,
            truncated: int, max_original: int) -> dict[str, Any]:
    return {**spec.to_dict(),
            "counts": {"documents": rows, "tokens": tokens, "shards": len(shards)},
            "truncation": {"truncated": truncated, "limit": spec.bundle["max_tokens"],
                           "max_original_tokens": max_original,
                           "policy": "cut" if spec.truncate else "refuse"},
            "shards": shards}


def write_manifest(out: Path, spec: Spec, names: list[str]) -> dict[str, Any]:
    shards = [shard_stats(out, name) for name in names]
    data = summary(spec, shards, rows=sum(s["rows"] for s in shards),
                   tokens=sum(s["tokens"] for s in shards),
                   truncated=sum(s["truncated"] for s in shards),
                   max_original=max((s["max_original_tokens"] for s in shards), default=0))
    write_json_atomic(out / MANIFEST_NAME, data)
    return data


def report(reporter: Reporter, out: Path, manifest: dict[str, Any]) -> None:
    """The run's last words: what was written, and what was cut (as the service warns)."""
    counts, cut = manifest["counts"], manifest["truncation"]
    reporter.step(f"wrote {counts['documents']} vectors in {counts['shards']} shard(s) to {out}")
    if cut["truncated"]:
        reporter.step(f"{cut['truncated']} input(s) were cut to the model's limit of "
                      f"{cut['limit']} tokens (the longest had {cut['max_original_tokens']}); "
                      "their rows say truncated=true (pass --no-truncate to get an error instead)")
