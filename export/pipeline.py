"""The export, step by step: resolve, read settings, load, export, tokenizer, manifest, parity.

Everything is built inside tooling.atomic_output: the bundle appears whole, or not at all.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edge_embed.core.bundle import Pooling
from edge_embed.core.evalset import load_eval_set
from edge_embed.core.tooling import Reporter, ToolError, atomic_output, check_output

from . import manifest as manifest_mod
from . import (
    onnx_export,
    parity,
    remote_code,
    source,
    st_config,
    st_reference,
    tokenizer,
    torch_model,
)

# The bundle id rule of core/bundle.py (_ID_RE): what a derived id is cleaned to.
_ID_CHARS = re.compile(r"[^a-z0-9._:/-]+")
_ID_MAX = 128


@dataclass(frozen=True)
class ExportOptions:
    src: str
    out: Path
    bundle_id: str | None = None
    aliases: tuple[str, ...] = ()
    max_tokens: int | None = None
    pooling: Pooling | None = None
    normalize: bool | None = None  # None: as the model says; False: --no-normalize
    matryoshka: tuple[int, ...] = ()
    opset: int | None = None
    revision: str | None = None
    force: bool = False
    min_cosine: float = parity.MIN_COSINE
    trust_remote_code: bool = False
    external_data: bool = False  # weights in model.onnx_data even below protobuf's 2 GB


def default_id(name: str) -> str:
    """'sentence-transformers/all-MiniLM-L6-v2' -> 'all-minilm-l6-v2'."""
    base = name.rstrip("/").split("/")[-1].lower()
    cleaned = _ID_CHARS.sub("-", base).strip("-._:/")[:_ID_MAX]
    if not cleaned:
        raise ToolError(f"cannot derive a bundle id from '{name}'; pass --id")
    return cleaned


def run(opts: ExportOptions, reporter: Reporter) -> Path:
    # Refuse an existing or unwritable output before minutes of work.
    check_output(opts.out, opts.force)
    src = source.resolve(opts.src, opts.revision)
    reporter.step(f"reading the model's configuration in {src.folder}")
    # before anything transformers loads: loading is what runs a model's own code
    remote_code.check(src.folder, opts.trust_remote_code)
    settings = st_config.read_settings(src.folder, max_tokens=opts.max_tokens,
                                       pooling=opts.pooling, normalize=opts.normalize)
    for dim in opts.matryoshka:
        if not 0 < dim <= settings.dimensions:
            raise ToolError(f"--matryoshka {dim} is outside 1..{settings.dimensions} (the "
                            "model's dimensions)")
    onnx_export.check_supported(settings.model_type)
    torch_model.weights_file(src.folder)
    bundle_id = opts.bundle_id or default_id(src.name)
    eval_set = load_eval_set()

    source_tokenizer: Any
    if settings.library == "sentence-transformers":
        reporter.step("loading it with sentence-transformers: its token limit and tokenization")
        reference = st_reference.load(src.folder, eval_set.texts, max_tokens=opts.max_tokens,
                                      trust_remote_code=opts.trust_remote_code)
        settings = st_config.with_st_limit(settings, reference.max_tokens)
        source_tokenizer, tokens = reference.tokenizer, reference.tokens
    else:
        source_tokenizer = tokenizer.source_tokenizer(src.folder, opts.trust_remote_code)
        tokens = parity.transformers_reference(source_tokenizer, eval_set.texts,
                                               settings.max_tokens)

    reporter.step(f"loading {settings.model_type} weights with transformers")
    model = torch_model.load(src.folder, opts.trust_remote_code)
    with atomic_output(opts.out, opts.force) as tmp:
        reporter.step("exporting to ONNX with optimum (feature-extraction, last_hidden_state)")
        graph = onnx_export.export(model, tmp, opts.opset, opts.external_data)
        reporter.step(f"writing tokenizer.json (truncation at {settings.max_tokens} tokens)")
        tok = tokenizer.write(src.folder, tmp, settings.max_tokens, settings.pad_token_id,
                              source_tokenizer)
        vocab = tok.get_vocab_size(with_added_tokens=True)
        if settings.vocab_size is not None:
            # token ids past the embedding table would fail inside the graph
            vocab = min(vocab, settings.vocab_size)
        draft = manifest_mod.build(bundle_id=bundle_id, aliases=opts.aliases, source=src,
                                   settings=settings, graph=graph, vocab_size=vocab,
                                   matryoshka=opts.matryoshka)
        draft.write(tmp)
        parity.check_tokenizer(tmp, tokens)
        reporter.step(f"checking the graph against torch on {len(eval_set.texts)} inputs "
                      f"({eval_set.name})")
        quality = parity.measure(tmp, model, eval_set.texts, eval_set.name, reporter)
        parity.check(quality, opts.min_cosine)
        final = manifest_mod.finalize(draft, quality, tmp, eval_set)
        final.write(tmp)
    reporter.step(f"wrote {opts.out} (id {bundle_id}; cosine vs torch min "
                  f"{quality.cosine_min:.7f}, max abs diff {quality.max_abs_diff:.2g})")
    return opts.out
