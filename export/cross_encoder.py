"""Cross-encoders (rerankers): a folder that scores (query, document) pairs becomes a rerank bundle.

Recognised, before anything treats the folder as an embedder:
- sentence-transformers' CrossEncoder as 5.x saves it: `config_sentence_transformers.json` with
  `"model_type": "CrossEncoder"` (and its `activation_fn`), modules.json naming the Transformer;
- the classic layout hub rerankers ship (ms-marco-MiniLM, bge-reranker): a Hugging Face
  `*ForSequenceClassification` folder, the activation in config.json
  (`sentence_transformers.activation_fn`, or the older `sbert_ce_default_activation_function`);
- a plain `*ForSequenceClassification` folder, which CrossEncoder loads the same way.

One output label only: a reranker's score is that one logit, through the activation
CrossEncoder.predict applies (named in the folder, else sigmoid). Refused in one line: classifiers
of several labels, and rerankers that score through a decoder's yes/no logits (Qwen3-Reranker:
CrossEncoder's LogitScore module over a *ForCausalLM).

The export loads the folder with CrossEncoder itself (offline, on the CPU) for its token limit,
its tokenization of pairs and its scores of the rerank evaluation set; the bundle must tokenize
every pair (over-long ones included) as it does, and score within SCORE_TOLERANCE of
CrossEncoder.predict, or nothing is written.
"""

from __future__ import annotations

import dataclasses
import gc
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edge_embed.core.agreement import ranking_quality
from edge_embed.core.bundle import Activation, Manifest, RankingQuality, RerankInfo
from edge_embed.core.evalset import RerankSet, load_eval_set, load_rerank_set
from edge_embed.core.files import entries
from edge_embed.core.pooling import F32
from edge_embed.core.rerank import RerankModel, unpack
from edge_embed.core.runtime import RuntimeOptions
from edge_embed.core.tooling import Reporter, ToolError, atomic_output, now, tool_versions

from . import onnx_export, parity, tokenizer, torch_model
from .manifest import EXPORT_TOOLS, source_info
from .source import Source
from .st_config import DEFAULT_MAX_TOKENS, read_hf_config, read_json
from .torch_model import load_error, weights_file

ST_CONFIG = "config_sentence_transformers.json"
CROSS_ENCODER = "CrossEncoder"
# CrossEncoder.predict's activations as the folders name them (a dotted torch path) -> ours.
_ACTIVATIONS: dict[str, Activation] = {
    "torch.nn.modules.activation.Sigmoid": "sigmoid", "torch.nn.Sigmoid": "sigmoid",
    "torch.nn.modules.linear.Identity": "identity", "torch.nn.Identity": "identity",
}
# The bundle's scores against CrossEncoder.predict's: a faithful fp32 graph agrees to ~1e-7
# (float32 kernels); 1e-4 still catches a dropped token_type_ids or a wrong activation.
SCORE_TOLERANCE = 1e-4
# Pairs per predict call and per parity batch: padding included, memory kept small.
_BATCH = 16
# The sequence classifier's module type in modules.json that means "decoder logits" rerankers.
_LOGIT_SCORE = "LogitScore"
# RoBERTa-family position embeddings count from the pad id + 1 (st_config's rule).
_POSITION_OFFSET = {"roberta": 2, "xlm-roberta": 2, "camembert": 2}


@dataclass(frozen=True)
class CrossEncoderSettings:
    model_type: str
    architecture: str
    activation: Activation
    activation_from: str  # where it was read, or "default (one label: sigmoid)"
    library: str  # "sentence-transformers" (a CrossEncoder config) or "transformers"
    pad_token_id: int | None
    vocab_size: int | None
    positions: int | None


def _st_config(folder: Path) -> dict[str, Any]:
    path = folder / ST_CONFIG
    if not path.is_file():
        return {}
    data = read_json(path)
    return data if isinstance(data, dict) else {}


def _modules(folder: Path) -> list[str]:
    path = folder / "modules.json"
    if not path.is_file():
        return []
    data = read_json(path)
    return [str(m.get("type", "")) for m in data if isinstance(m, dict)] if isinstance(
        data, list) else []


def _labels(config: dict[str, Any]) -> int:
    """transformers' rule: id2label's size where the config has it, else num_labels, else 2."""
    id2label = config.get("id2label")
    if isinstance(id2label, dict) and id2label:
        return len(id2label)
    labels = config.get("num_labels")
    return labels if isinstance(labels, int) and not isinstance(labels, bool) else 2


def _activation(folder: Path, st: dict[str, Any], config: dict[str, Any]) -> tuple[Activation,
                                                                                     str]:
    """What CrossEncoder applies, in its own order: config_sentence_transformers.json, then
    config.json's sentence_transformers section, then its pre-4.0 key, then sigmoid."""
    hf = config.get("sentence_transformers")
    candidates = [(st.get("activation_fn"), f"{ST_CONFIG}: activation_fn"),
                  (hf.get("activation_fn") if isinstance(hf, dict) else None,
                   "config.json: sentence_transformers.activation_fn"),
                  (config.get("sbert_ce_default_activation_function"),
                   "config.json: sbert_ce_default_activation_function")]
    for name, where in candidates:
        if name is None:
            continue
        if not isinstance(name, str) or name not in _ACTIVATIONS:
            raise ToolError(f"{folder}: {where} is {name!r}; a rerank bundle applies "
                            f"{' or '.join(sorted(set(_ACTIVATIONS.values())))} only, no bundle "
                            "written")
        return _ACTIVATIONS[name], where
    return "sigmoid", "default (one label: sigmoid, as CrossEncoder.predict)"


def detect(folder: Path) -> CrossEncoderSettings | None:
    """The folder's cross-encoder settings; None for an embedder's folder. A reranker that no
    bundle can serve right is refused here, in one line."""
    config = read_hf_config(folder)
    st = _st_config(folder)
    st_type = st.get("model_type")
    architectures = [str(a) for a in config.get("architectures") or []]
    classifier = next((a for a in architectures if a.endswith("ForSequenceClassification")),
                      None)
    causal = next((a for a in architectures if a.endswith("ForCausalLM")), None)
    if st_type not in (None, CROSS_ENCODER) or (st_type is None and classifier is None):
        return None  # a SentenceTransformer (or another kind, which the embedder path reads)
    if causal is not None or any(m.endswith(_LOGIT_SCORE) for m in _modules(folder)):
        raise ToolError(f"{folder}: a reranker that scores through a decoder's yes/no logits "
                        f"({causal or _LOGIT_SCORE}, as Qwen3-Reranker) is not supported: "
                        "edge-embed serves *ForSequenceClassification cross-encoders; no bundle "
                        "written")
    if classifier is None:
        raise ToolError(f"{folder}: a CrossEncoder whose model is "
                        f"{', '.join(architectures) or 'of no named architecture'}, not a "
                        "*ForSequenceClassification; no bundle written")
    labels = _labels(config)
    if labels != 1:
        raise ToolError(f"{folder}: {classifier} has {labels} output labels; a reranker scores "
                        "with one (a classifier of several labels is not a reranker); no "
                        "bundle written")
    activation, where = _activation(folder, st, config)
    model_type = str(config["model_type"])
    positions = config.get("max_position_embeddings")
    if isinstance(positions, int) and not isinstance(positions, bool):
        positions -= _POSITION_OFFSET.get(model_type, 0)
    else:
        positions = None
    pad, vocab = config.get("pad_token_id"), config.get("vocab_size")
    return CrossEncoderSettings(
        model_type=model_type, architecture=classifier, activation=activation,
        activation_from=where,
        library="sentence-transformers" if st_type == CROSS_ENCODER else "transformers",
        pad_token_id=pad if isinstance(pad, int) and not isinstance(pad, bool) else None,
        vocab_size=vocab if isinstance(vocab, int) and not isinstance(vocab, bool) else None,
        positions=positions)


# ---- what CrossEncoder itself does -----------------------------------------------------------
@dataclass(frozen=True)
class PairReference:
    max_tokens: int
    tokenizer: Any  # the transformers tokenizer CrossEncoder uses
    pairs: tuple[tuple[str, str], ...]  # the evaluation pairs, then the over-long ones
    ids: tuple[tuple[int, ...], ...]
    segments: tuple[tuple[int, ...], ...] | None  # None: the tokenizer gives no token types
    scores: tuple[F32, ...]  # CrossEncoder.predict, per query of the set


def _pairs(rerank_set: RerankSet) -> list[tuple[str, str]]:
    return [(q.query, d) for q in rerank_set.queries for d in q.documents]


def reference(folder: Path, rerank_set: RerankSet, settings: CrossEncoderSettings, *,
              max_tokens: int | None, trust_remote_code: bool) -> PairReference:
    from sentence_transformers import CrossEncoder
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    logging.getLogger("sentence_transformers").setLevel(logging.ERROR)
    try:
        model = CrossEncoder(str(folder), device="cpu", local_files_only=True,
                             trust_remote_code=trust_remote_code)
    except Exception as exc:  # transformers' and sentence-transformers' failures alike
        raise load_error(weights_file(folder), exc) from None
    try:
        limit = max_tokens or model.max_seq_length
        if not isinstance(limit, int) or limit <= 0 or (
                settings.positions is not None and limit > settings.positions):
            # no limit named (a plain folder's tokenizer says "unbounded"): the positions'
            limit = settings.positions or DEFAULT_MAX_TOKENS
        model.max_seq_length = limit
        tok = model.tokenizer
        pairs = _pairs(rerank_set)
        long = parity.over_long_text(tok, load_eval_set().texts, limit)
        # a long document after a short query (the document gives way), and the other way round
        pairs += [(rerank_set.queries[0].query, long), (long, rerank_set.queries[0].documents[0])]
        encoded = tok([q for q, _ in pairs], [d for _, d in pairs], truncation="longest_first",
                      max_length=limit, verbose=False)
        segments = encoded.get("token_type_ids")
        flat = np.asarray(model.predict(_pairs(rerank_set), batch_size=_BATCH,
                                        show_progress_bar=False, convert_to_numpy=True),
                          dtype=np.float32).reshape(-1)
        scores: list[F32] = []
        at = 0
        for q in rerank_set.queries:
            scores.append(flat[at:at + len(q.documents)])
            at += len(q.documents)
        return PairReference(
            limit, tok, tuple(pairs), tuple(tuple(i) for i in encoded["input_ids"]),
            None if segments is None else tuple(tuple(s) for s in segments), tuple(scores))
    finally:
        del model
        gc.collect()


def check_tokenizer(model: RerankModel, ref: PairReference) -> None:
    """The bundle must give every pair CrossEncoder's token ids and token types, cut included."""
    for i, (query, doc) in enumerate(ref.pairs):
        (got,) = model.pairs.encode(query, [doc])
        ids, segments = unpack(got.ids)
        same = ids.tolist() == list(ref.ids[i]) and (
            ref.segments is None or segments.tolist() == list(ref.segments[i]))
        if not same:
            raise ToolError(f"the bundle's pair tokenization disagrees with CrossEncoder's on "
                            f"({query[:40]!r}, {doc[:40]!r}): {len(ids)} tokens against "
                            f"{len(ref.ids[i])}; no bundle written")


def measure(model: RerankModel, rerank_set: RerankSet, ref: PairReference) -> RankingQuality:
    got = [model.rerank(q.query, q.documents, batch_size=_BATCH) for q in rerank_set.queries]
    return ranking_quality(ref.scores, got, reference_name="cross-encoder",
                           eval_set=rerank_set.name)


def refuse_embedding_flags(flags: dict[str, bool]) -> None:
    """`flags`: an embedder's option -> whether the command line gave it."""
    named = [flag for flag, given in flags.items() if given]
    if named:
        raise ToolError(f"{', '.join(named)}: an embedder's option; this folder is a "
                        "cross-encoder (a reranker), which has no vectors")


@dataclass(frozen=True)
class RerankExport:
    out: Path
    bundle_id: str
    aliases: tuple[str, ...]
    max_tokens: int | None
    opset: int | None
    external_data: bool
    force: bool
    trust_remote_code: bool


def run(opts: RerankExport, src: Source, settings: CrossEncoderSettings,
        reporter: Reporter) -> Path:
    bundle_id = opts.bundle_id
    onnx_export.check_supported(settings.model_type, onnx_export.RERANK_TASK)
    weights_file(src.folder)
    rerank_set = load_rerank_set()
    reporter.step(f"a cross-encoder ({settings.architecture}, score activation "
                  f"{settings.activation}: {settings.activation_from}); loading it with "
                  "sentence-transformers' CrossEncoder: its token limit, pair tokenization and "
                  "scores")
    ref = reference(src.folder, rerank_set, settings, max_tokens=opts.max_tokens,
                    trust_remote_code=opts.trust_remote_code)
    reporter.step(f"loading {settings.architecture} weights with transformers")
    model = torch_model.load(src.folder, opts.trust_remote_code, classifier=True)
    with atomic_output(opts.out, opts.force) as tmp:
        reporter.step("exporting to ONNX with optimum (text-classification, logits)")
        graph = onnx_export.export(model, tmp, opts.opset, opts.external_data,
                                   task=onnx_export.RERANK_TASK,
                                   output=onnx_export.RERANK_OUTPUT)
        reporter.step(f"writing tokenizer.json (pairs cut longest-first at {ref.max_tokens} "
                      "tokens)")
        tok = tokenizer.write(src.folder, tmp, ref.max_tokens, settings.pad_token_id,
                              ref.tokenizer)
        vocab = tok.get_vocab_size(with_added_tokens=True)
        if settings.vocab_size is not None:
            vocab = min(vocab, settings.vocab_size)
        draft = Manifest(
            id=bundle_id, dimensions=1, max_tokens=ref.max_tokens, pooling="cls",
            normalize=False, precision="fp32", inputs=graph.inputs, output=graph.output,
            output_kind="logits", tokenizer_file=tokenizer.TOKENIZER_FILE, aliases=opts.aliases,
            source=source_info(src, settings, graph), vocab_size=vocab,
            tools=tool_versions(*EXPORT_TOOLS), build={"created": now()}, task="rerank",
            rerank=RerankInfo(settings.activation, "longest_first"))
        draft.write(tmp)
        onnx_model = RerankModel(tmp, RuntimeOptions(spinning=False))
        check_tokenizer(onnx_model, ref)
        reporter.step(f"checking the graph's scores against CrossEncoder.predict on "
                      f"{rerank_set.n_pairs} pairs ({rerank_set.name})")
        quality = measure(onnx_model, rerank_set, ref)
        del onnx_model
        if not quality.score_abs_max <= SCORE_TOLERANCE:
            raise ToolError(f"the exported graph's scores disagree with CrossEncoder.predict: "
                            f"max abs diff {quality.score_abs_max:.3g} > {SCORE_TOLERANCE} "
                            f"(Kendall tau min {quality.kendall_tau_min:.4f}); no bundle written")
        final = dataclasses.replace(draft, files=entries(tmp), rerank=RerankInfo(
            settings.activation, "longest_first", parity=quality))
        final.write(tmp)
    reporter.step(f"wrote {opts.out} (id {bundle_id}, a reranker; scores vs CrossEncoder.predict "
                  f"max abs diff {quality.score_abs_max:.2g}, Kendall tau min "
                  f"{quality.kendall_tau_min:.4f})")
    return opts.out

