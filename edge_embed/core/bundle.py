"""The bundle manifest (`bundle.json`): the one contract between the offline tools and the service.

A bundle is a folder the service loads with no other file and no network: `model.onnx`,
`tokenizer.json` and this manifest. The offline tools write it (`Manifest.to_json`), the service
reads it (`load_manifest`), and every refusal names the file and the field, so that a user who
hand-edits a bundle learns what is wrong without reading our code.

Pure standard library on purpose: the serving install imports it at start-up.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar, cast

from edge_embed.core.errors import BundleError

MANIFEST_NAME = "bundle.json"
FORMAT = "edge-embed.bundle"
# Bump on any change a reader of an older version would misread; readers refuse unknown ones.
FORMAT_VERSION = 1
# Where a graph's weights go when they do not fit in it (protobuf stops at 2 GB), or when asked:
# one file beside the graph, named as optimum names it (model.onnx_data); quantize writes the same.
EXTERNAL_DATA_SUFFIX = "_data"

Pooling = Literal["mean", "cls", "last"]
Precision = Literal["fp32", "fp16", "int8"]
OutputKind = Literal["token_embeddings", "sentence_embedding"]

POOLINGS: tuple[Pooling, ...] = ("mean", "cls", "last")
PRECISIONS: tuple[Precision, ...] = ("fp32", "fp16", "int8")
OUTPUT_KINDS: tuple[OutputKind, ...] = ("token_embeddings", "sentence_embedding")
_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:/-]{0,127}$")
_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")


@dataclass(frozen=True)
class FileEntry:
    """One file of the bundle as it was built (core/files.py checks it at start-up)."""

    size: int | None  # bytes; None in manifests written before sizes were recorded
    sha256: str


@dataclass(frozen=True)
class Quality:
    """Measured agreement of this bundle with its fp32 reference, on the repo's evaluation set."""

    reference: str  # what was compared against: "fp32-bundle" or "torch"
    eval_set: str  # the evaluation set's name and sha256 prefix
    n_inputs: int
    cosine_min: float
    cosine_mean: float
    nn_agreement: float | None  # nearest-neighbour agreement (top-1 over the set), if measured
    # cosine between an input embedded alone and inside a padded batch of mixed lengths
    batch_invariance_min: float | None = None
    max_abs_diff: float | None = None


@dataclass(frozen=True)
class CanaryInfo:
    """The bundle's canaries (core/canary.py): fixed inputs with their fp32 reference vectors,
    which the service embeds at start-up and compares against `gate`."""

    file: str  # in the bundle, listed in `files`
    count: int
    gate: float  # the least agreement (min cosine vs the reference) the service accepts
    gate_rule: str  # how `gate` was derived, in words
    build_agreement: float  # the agreement measured on the machine that built the bundle


# How `compact` names its conversion (core/compact.py); a reader refuses another scheme.
COMPACT_SCHEME = "symmetric-int8"


@dataclass(frozen=True)
class CompactScale:
    """The `compact` section: the int8 scale of the bundle's compact vectors (core/compact.py)
    and what it was chosen from. Bundles built before it have none: they serve binary and
    ubinary, and refuse int8 and uint8."""

    scheme: str  # COMPACT_SCHEME
    scale: float  # int8 = round(x * scale), at the bundle's full dimensions
    quantile: float  # the quantile of |x| over the evaluation set that maps to 127
    eval_set: str  # the evaluation set's name and sha256 prefix
    n_values: int  # values the quantile was taken over (inputs x dimensions)
    # measured on this bundle's own vectors for the evaluation set, at the full dimensions:
    clipped_fraction: float  # share of values past the int8 range
    inputs_clipped_fraction: float  # share of inputs with at least one value clipped
    max_abs: float  # the largest |x| seen; past 127 / scale it was clipped
    cosine_min: float  # int8 (as integers) against float, the worst input
    cosine_mean: float


@dataclass(frozen=True)
class Quantization(Mapping[str, Any]):
    """The `quantization` section of a quantized bundle, parsed once (`Quantization.of`).

    The facts the runtime and the service act on are typed fields; the whole section as the tool
    recorded it (method, parameters, the search, the selection, the figures: provenance) is
    `recorded`, read through the Mapping interface and written back unchanged."""

    recorded: dict[str, Any]
    method: str | None = None  # "pertoken", "dynamic", "blockwise", "fp16", ...
    fused: bool = False  # quantized after onnxruntime's transformer fusions
    target: str | None = None  # the CPU family it was built for (quantize --target)
    variant: str | None = None  # that build's int8 variant (u8s8, u8u8, s8s8)
    saturation_free: bool = False  # its u8 x s8 pair sums cannot saturate (params)

    @classmethod
    def of(cls, section: dict[str, Any], path: Path = Path(MANIFEST_NAME)) -> Quantization:
        """Read `section`; a field of the wrong type is refused naming `path` and the field."""
        method = section.get("method")
        if method is not None and not isinstance(method, str):
            raise BundleError(path, "must be a string or null", "quantization.method")
        fused = section.get("fused", False)
        if not isinstance(fused, bool):
            raise BundleError(path, "must be a boolean", "quantization.fused")
        target = _object(section, "target", path, "quantization")
        name = target.get("name")
        if name is not None and not isinstance(name, str):
            raise BundleError(path, "must be a string", "quantization.target.name")
        variant = _object(target, "variant", path, "quantization.target").get("name")
        if variant is not None and not isinstance(variant, str):
            raise BundleError(path, "must be a string", "quantization.target.variant.name")
        params = _object(section, "params", path, "quantization")
        return cls(section, method, fused, name, variant, params.get("saturation_free") is True)

    def __getitem__(self, key: str) -> Any:
        return self.recorded[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self.recorded)

    def __len__(self) -> int:
        return len(self.recorded)


def _object(data: dict[str, Any], key: str, path: Path, within: str) -> dict[str, Any]:
    """`data[key]` where it must be an object or null ({} for null or absent)."""
    value = data.get(key)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise BundleError(path, "must be an object or null", f"{within}.{key}")
    return value


@dataclass(frozen=True)
class Manifest:
    id: str
    dimensions: int
    max_tokens: int  # the limit the model was trained for (sentence-transformers' max_seq_length)
    pooling: Pooling
    normalize: bool
    precision: Precision
    inputs: tuple[str, ...]  # the ONNX graph's input names, in graph order
    output: str  # the ONNX output used
    output_kind: OutputKind = "token_embeddings"
    model_file: str = "model.onnx"
    tokenizer_file: str = "tokenizer.json"
    aliases: tuple[str, ...] = ()
    source: dict[str, Any] = field(default_factory=dict)  # model, revision, library
    vocab_size: int | None = None
    matryoshka_dimensions: tuple[int, ...] = ()
    prompts: dict[str, str] = field(default_factory=dict)  # input_type -> prefix ("query: ")
    # which of pooling/normalize/max_tokens/prompts were defaults rather than read from the model
    defaults: tuple[str, ...] = ()
    quantization: Quantization | None = None
    quality: Quality | None = None
    parity: Quality | None = None  # fp32 bundles: the ONNX graph against torch
    # absent in bundles built before canaries: they load, and report {"status": "absent"}
    canary: CanaryInfo | None = None
    # absent in bundles built before compact vectors: int8/uint8 are refused for them
    compact: CompactScale | None = None
    # every file of the bundle but this manifest: the graph, its external data, the tokenizer
    files: dict[str, FileEntry] = field(default_factory=dict)
    tools: dict[str, str] = field(default_factory=dict)
    # The only facts that differ between two builds from the same inputs: when it was built
    # ("created") and, for quantize, how long it took ("seconds"). Everything else, and every
    # file the manifest hashes, is byte-identical from one run to the next on the same machine.
    build: dict[str, Any] = field(default_factory=dict)
    format: str = FORMAT
    format_version: int = FORMAT_VERSION

    def to_json(self) -> str:
        data = asdict(self)
        # as recorded, not the parsed fields: the section round-trips byte for byte
        data["quantization"] = None if self.quantization is None else self.quantization.recorded
        return json.dumps(data, indent=2, ensure_ascii=False, sort_keys=False) + "\n"

    def write(self, folder: Path) -> Path:
        path = folder / MANIFEST_NAME
        path.write_text(self.to_json(), encoding="utf-8")
        return path


def _require(data: dict[str, Any], key: str, kind: type | tuple[type, ...], path: Path) -> Any:
    if key not in data:
        raise BundleError(path, "is missing", key)
    value = data[key]
    # bool is an int in Python; a manifest saying `"dimensions": true` is still wrong.
    if isinstance(value, bool) and bool not in (kind if isinstance(kind, tuple) else (kind,)):
        raise BundleError(path, f"must be {_kind_name(kind)}, got {json.dumps(value)}", key)
    if not isinstance(value, kind):
        raise BundleError(path, f"must be {_kind_name(kind)}, got {json.dumps(value)[:60]}", key)
    return value


def _kind_name(kind: type | tuple[type, ...]) -> str:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    names = {str: "a string", int: "an integer", bool: "a boolean", list: "a list",
             dict: "an object", float: "a number"}
    return " or ".join(names.get(k, k.__name__) for k in kinds)


Section = TypeVar("Section")


def _section(data: Any, path: Path, key: str, kind: type[Section]) -> Section | None:
    """An optional object section as the dataclass `kind` (None when null or absent); its
    fields' values are the caller's to check."""
    if data is None:
        return None
    if not isinstance(data, dict):
        raise BundleError(path, "must be an object or null", key)
    try:
        return kind(**data)
    except TypeError as exc:
        raise BundleError(path, f"has unexpected content ({exc})", key) from None


def _quality(data: Any, path: Path, key: str) -> Quality | None:
    return _section(data, path, key, Quality)


def _canary(data: Any, path: Path) -> CanaryInfo | None:
    info = _section(data, path, "canary", CanaryInfo)
    if info is None:
        return None
    if not isinstance(info.file, str) or not _plain_name(info.file):
        raise BundleError(path, "file must be a plain file name inside the bundle", "canary")
    if isinstance(info.count, bool) or not isinstance(info.count, int) or info.count <= 0:
        raise BundleError(path, "count must be a positive integer", "canary")
    for key in ("gate", "build_agreement"):
        value = getattr(info, key)
        if isinstance(value, bool) or not isinstance(value, int | float) or not -1 <= value <= 1:
            raise BundleError(path, f"{key} must be a cosine, a number in [-1, 1]", "canary")
    return info


def _compact(data: Any, path: Path) -> CompactScale | None:
    info = _section(data, path, "compact", CompactScale)
    if info is None:
        return None
    if info.scheme != COMPACT_SCHEME:
        raise BundleError(path, f"scheme must be '{COMPACT_SCHEME}', got "
                          f"{json.dumps(info.scheme)[:60]}", "compact")
    scale = info.scale
    if isinstance(scale, bool) or not isinstance(scale, int | float) or not 0 < scale < 1e12:
        raise BundleError(path, "scale must be a positive number", "compact")
    return info


def _files(data: Any, path: Path) -> dict[str, FileEntry]:
    if not isinstance(data, dict):
        raise BundleError(path, "must be an object", "files")
    out: dict[str, FileEntry] = {}
    for name, entry in data.items():
        if not _plain_name(name) or name == MANIFEST_NAME:
            raise BundleError(path, f"'{name}' must be a plain file name inside the bundle",
                              "files")
        if isinstance(entry, str):  # manifests written before sizes were recorded
            entry = {"sha256": entry}
        if not isinstance(entry, dict):
            raise BundleError(path, f"'{name}' must be an object with size and sha256",
                              "files")
        digest, size = entry.get("sha256"), entry.get("size")
        if not isinstance(digest, str) or not _SHA256_RE.match(digest):
            raise BundleError(path, f"'{name}': sha256 must be 64 lowercase hex digits", "files")
        if size is not None and (isinstance(size, bool) or not isinstance(size, int)
                                 or size < 0):
            raise BundleError(path, f"'{name}': size must be a number of bytes", "files")
        out[name] = FileEntry(size, digest)
    return out


def _plain_name(name: str) -> bool:
    return "/" not in name and "\\" not in name and not name.startswith(".")


def parse_manifest(data: Any, path: Path) -> Manifest:
    """Validate a decoded manifest; every refusal names `path` and the field."""
    if not isinstance(data, dict):
        raise BundleError(path, "the manifest must be a JSON object")
    fmt = data.get("format")
    if fmt != FORMAT:
        raise BundleError(path, f"must be '{FORMAT}', got {json.dumps(fmt)}", "format")
    version = _require(data, "format_version", int, path)
    if version != FORMAT_VERSION:
        raise BundleError(
            path, f"unknown format version {version}; this edge-embed reads version "
            f"{FORMAT_VERSION} (rebuild the bundle, or upgrade edge-embed)", "format_version")
    bundle_id = _require(data, "id", str, path)
    if not _ID_RE.match(bundle_id):
        raise BundleError(path, "must be 1-128 letters, digits or ._:/- characters", "id")
    dimensions = _require(data, "dimensions", int, path)
    if dimensions <= 0:
        raise BundleError(path, "must be positive", "dimensions")
    max_tokens = _require(data, "max_tokens", int, path)
    if max_tokens < 2:
        raise BundleError(path, "must be at least 2", "max_tokens")
    pooling = _require(data, "pooling", str, path)
    if pooling not in POOLINGS:
        raise BundleError(path, f"must be one of {', '.join(POOLINGS)}, got '{pooling}'", "pooling")
    precision = _require(data, "precision", str, path)
    if precision not in PRECISIONS:
        raise BundleError(path, f"must be one of {', '.join(PRECISIONS)}", "precision")
    output_kind = data.get("output_kind", "token_embeddings")
    if output_kind not in OUTPUT_KINDS:
        raise BundleError(path, f"must be one of {', '.join(OUTPUT_KINDS)}", "output_kind")
    inputs = _require(data, "inputs", list, path)
    if not inputs or not all(isinstance(i, str) for i in inputs):
        raise BundleError(path, "must be a non-empty list of input names", "inputs")
    if "input_ids" not in inputs:
        raise BundleError(path, "must include 'input_ids'", "inputs")
    matryoshka = data.get("matryoshka_dimensions") or []
    if not isinstance(matryoshka, list) or not all(
        isinstance(d, int) and not isinstance(d, bool) and 0 < d <= dimensions for d in matryoshka
    ):
        raise BundleError(path, f"must be a list of integers in 1..{dimensions}",
                          "matryoshka_dimensions")
    prompts = data.get("prompts") or {}
    if not isinstance(prompts, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in prompts.items()
    ):
        raise BundleError(path, "must map input types to prompt strings", "prompts")
    aliases = data.get("aliases") or []
    if not isinstance(aliases, list) or not all(isinstance(a, str) for a in aliases):
        raise BundleError(path, "must be a list of strings", "aliases")
    vocab_size = data.get("vocab_size")
    if vocab_size is not None and (not isinstance(vocab_size, int) or vocab_size <= 0):
        raise BundleError(path, "must be a positive integer or null", "vocab_size")
    quantization = data.get("quantization")
    if quantization is not None and not isinstance(quantization, dict):
        raise BundleError(path, "must be an object or null", "quantization")
    for key in ("source", "tools", "build"):
        if not isinstance(data.get(key, {}), dict):
            raise BundleError(path, "must be an object", key)
    normalize = _require(data, "normalize", bool, path)
    return Manifest(
        id=bundle_id,
        dimensions=dimensions,
        max_tokens=max_tokens,
        pooling=cast(Pooling, pooling),
        normalize=normalize,
        precision=cast(Precision, precision),
        inputs=tuple(inputs),
        output=_require(data, "output", str, path),
        output_kind=cast(OutputKind, output_kind),
        model_file=(_require(data, "model_file", str, path) if "model_file" in data
                    else "model.onnx"),
        tokenizer_file=data.get("tokenizer_file", "tokenizer.json"),
        aliases=tuple(aliases),
        source=dict(data.get("source", {})),
        vocab_size=vocab_size,
        matryoshka_dimensions=tuple(sorted(set(matryoshka), reverse=True)),
        prompts=dict(prompts),
        defaults=tuple(data.get("defaults") or ()),
        quantization=None if quantization is None else Quantization.of(quantization, path),
        quality=_quality(data.get("quality"), path, "quality"),
        parity=_quality(data.get("parity"), path, "parity"),
        canary=_canary(data.get("canary"), path),
        compact=_compact(data.get("compact"), path),
        files=_files(data.get("files", {}), path),
        tools=dict(data.get("tools", {})),
        build=dict(data.get("build", {})),
    )


def load_manifest(folder: Path | str) -> Manifest:
    """Read and validate `folder/bundle.json`, and check the files it names are there."""
    folder = Path(folder)
    path = folder / MANIFEST_NAME
    if not folder.is_dir():
        raise BundleError(folder, "is not a bundle folder (no such directory)")
    if not path.is_file():
        raise BundleError(path, "is missing: not an edge-embed bundle (build one with "
                          "`edge-embed export`)")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BundleError(path, f"is not valid JSON ({exc})") from None
    manifest = parse_manifest(data, path)
    for key, name in (("model_file", manifest.model_file),
                      ("tokenizer_file", manifest.tokenizer_file)):
        if not _plain_name(name):
            raise BundleError(path, "must be a plain file name inside the bundle", key)
        if not (folder / name).is_file():
            raise BundleError(path, f"names '{name}', which is not in the bundle", key)
    return manifest
