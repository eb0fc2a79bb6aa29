"""What a model folder says about itself: the sentence-transformers config, else the HF config.

sentence-transformers keeps the settings that make a vector what it is outside config.json:
pooling (1_Pooling/config.json), normalization (a Normalize module in modules.json), the token
limit the model was trained for (sentence_bert_config.json `max_seq_length`, which can be below
the position-embedding size: all-MiniLM-L6-v2 has 512 positions but was trained at 256) and
prompts. Without those files we fall back to config.json and record which values are defaults.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edge_embed.service.bundle import Pooling

from .tooling import ToolError

# sentence-transformers' module types we understand; anything else after the Transformer changes
# the vector in a way a bundle cannot reproduce (Dense projections, etc.).
_TRANSFORMER = "sentence_transformers.models.Transformer"
_POOLING = "sentence_transformers.models.Pooling"
_NORMALIZE = "sentence_transformers.models.Normalize"
# Pooling keys in 1_Pooling/config.json -> our pooling name (None: refused, numpy pooling
# would differ from what the model was trained with).
_POOLING_KEYS: dict[str, Pooling | None] = {
    "pooling_mode_mean_tokens": "mean",
    "pooling_mode_cls_token": "cls",
    "pooling_mode_lasttoken": "last",
    "pooling_mode_max_tokens": None,
    "pooling_mode_mean_sqrt_len_tokens": None,
    "pooling_mode_weightedmean_tokens": None,
}
_ST_NAMES = {"pooling_mode_max_tokens": "max", "pooling_mode_mean_sqrt_len_tokens":
             "mean_sqrt_len", "pooling_mode_weightedmean_tokens": "weightedmean"}
# Fallback limit when config.json names no max_position_embeddings (BERT's own default).
DEFAULT_MAX_TOKENS = 512
# RoBERTa-family models number positions from padding_idx + 1, so 514 position embeddings hold
# 512 tokens (transformers' create_position_ids_from_input_ids).
_POSITION_OFFSET = {"roberta": 2, "xlm-roberta": 2, "camembert": 2, "mpnet": 2,
                    "data2vec-text": 2, "longformer": 2}


@dataclass(frozen=True)
class ModelSettings:
    model_type: str
    dimensions: int
    vocab_size: int | None
    max_tokens: int
    pooling: Pooling
    normalize: bool
    prompts: dict[str, str]
    defaults: tuple[str, ...]  # which of the values above were defaults, not read from the model
    library: str  # "sentence-transformers" or "transformers"
    pad_token_id: int | None


def read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else str(exc)
        raise ToolError(f"{path} is not readable JSON ({reason})") from None


def read_hf_config(folder: Path) -> dict[str, Any]:
    path = folder / "config.json"
    if not path.is_file():
        raise ToolError(f"{folder} has no config.json: not a Hugging Face model folder")
    config = read_json(path)
    if not isinstance(config, dict):
        raise ToolError(f"{path} must be a JSON object")
    if not isinstance(config.get("model_type"), str):
        raise ToolError(f"{path}: field 'model_type' is missing; cannot tell the architecture")
    return config


def _int_field(config: dict[str, Any], names: tuple[str, ...], path: Path) -> int | None:
    for name in names:
        value = config.get(name)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise ToolError(f"{path}: field '{name}' must be a positive integer, got {value!r}")
        return value
    return None


def _pooling(folder: Path, module_path: str) -> Pooling:
    path = folder / module_path / "config.json"
    config = read_json(path)
    if not isinstance(config, dict):
        raise ToolError(f"{path} must be a JSON object")
    on = [key for key in _POOLING_KEYS if config.get(key)]
    if len(on) != 1:
        raise ToolError(f"{path}: expected exactly one pooling mode, found "
                        f"{', '.join(on) if on else 'none'}")
    mode = _POOLING_KEYS[on[0]]
    if mode is None:
        raise ToolError(f"{path}: pooling '{_ST_NAMES[on[0]]}' is not supported (edge-embed "
                        "bundles pool with mean, cls or last token)")
    return mode


def read_settings(folder: Path, *, max_tokens: int | None = None, pooling: Pooling | None = None,
                  normalize: bool | None = None) -> ModelSettings:
    """The model's settings; explicit arguments (CLI flags) win over what the folder says."""
    config_path = folder / "config.json"
    config = read_hf_config(folder)
    dims = _int_field(config, ("hidden_size", "d_model", "dim"), config_path)
    if dims is None:
        raise ToolError(f"{config_path}: field 'hidden_size' is missing")
    positions = _int_field(config, ("max_position_embeddings", "n_positions"), config_path)
    if positions is not None:
        positions -= _POSITION_OFFSET.get(str(config["model_type"]), 0)
    vocab = _int_field(config, ("vocab_size",), config_path)
    pad = config.get("pad_token_id")
    defaults: list[str] = []

    st_pooling: Pooling | None = None
    st_normalize: bool | None = None
    modules_path = folder / "modules.json"
    if modules_path.is_file():
        modules = read_json(modules_path)
        if not isinstance(modules, list) or not all(isinstance(m, dict) for m in modules):
            raise ToolError(f"{modules_path} must be a list of module objects")
        st_normalize = False
        for module in modules:
            kind = str(module.get("type", ""))
            if kind == _POOLING:
                st_pooling = _pooling(folder, str(module.get("path", "")))
            elif kind == _NORMALIZE:
                st_normalize = True
            elif kind != _TRANSFORMER:
                raise ToolError(f"{modules_path}: module '{kind}' is not supported (edge-embed "
                                "bundles are a transformer, pooling and optional normalization)")
    st_config_path = folder / "sentence_bert_config.json"
    st_max: int | None = None
    if st_config_path.is_file():
        st_config = read_json(st_config_path)
        if isinstance(st_config, dict):
            st_max = _int_field(st_config, ("max_seq_length",), st_config_path)
    prompts: dict[str, str] = {}
    prompts_path = folder / "config_sentence_transformers.json"
    if prompts_path.is_file():
        data = read_json(prompts_path)
        raw = data.get("prompts") if isinstance(data, dict) else None
        if isinstance(raw, dict):
            prompts = {str(k): v for k, v in raw.items() if isinstance(v, str) and v}

    if pooling is None:
        pooling = st_pooling
    if pooling is None:
        pooling = "mean"
        defaults.append("pooling")
    if normalize is None:
        normalize = st_normalize
    if normalize is None:
        normalize = False
        defaults.append("normalize")
    if max_tokens is None:
        max_tokens = st_max
    if max_tokens is None:
        max_tokens = positions or DEFAULT_MAX_TOKENS
        defaults.append("max_tokens")
    if positions is not None and max_tokens > positions:
        raise ToolError(f"max tokens {max_tokens} exceeds the model's {positions} position "
                        "embeddings")
    if not prompts_path.is_file():
        defaults.append("prompts")
    library = "sentence-transformers" if modules_path.is_file() else "transformers"
    return ModelSettings(
        model_type=str(config["model_type"]), dimensions=dims, vocab_size=vocab,
        max_tokens=max_tokens, pooling=pooling, normalize=normalize, prompts=prompts,
        defaults=tuple(defaults), library=library,
        pad_token_id=pad if isinstance(pad, int) and not isinstance(pad, bool) else None)
