"""What a model folder says about itself: the sentence-transformers config, else the HF config.

sentence-transformers keeps the settings that make a vector what it is outside config.json:
pooling (1_Pooling/config.json), normalization (a Normalize module in modules.json) and prompts
(config_sentence_transformers.json). Two folder formats are read: the classic one (what hub
models ship: `sentence_transformers.models.*` module types, one `pooling_mode_*` flag per mode)
and the one sentence-transformers 5.x saves (module types under their new packages, a single
`"pooling_mode": "mean"`). Without those files (a plain Hugging Face folder) we fall back to
config.json and record which values are defaults.

The token limit of a sentence-transformers folder is not read here: sentence-transformers
decides it in several files (export/st_reference.py asks it); `with_st_limit` applies it.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edge_embed.core.bundle import Pooling
from edge_embed.core.tooling import ToolError

# sentence-transformers' module types we understand, as both folder formats name them; anything
# else after the Transformer changes the vector in a way a bundle cannot reproduce (Dense
# projections, etc.).
_TRANSFORMER = frozenset({"sentence_transformers.models.Transformer",
                          "sentence_transformers.base.modules.transformer.Transformer"})
_POOLING = frozenset({"sentence_transformers.models.Pooling",
                      "sentence_transformers.sentence_transformer.modules.pooling.Pooling"})
_NORMALIZE = frozenset({"sentence_transformers.models.Normalize",
                        "sentence_transformers.sentence_transformer.modules.normalize.Normalize"})
# The classic format's pooling flags in 1_Pooling/config.json -> the mode's name in the 5.x
# format's `pooling_mode` (sentence-transformers' own mapping).
_POOLING_FLAGS = {
    "pooling_mode_cls_token": "cls",
    "pooling_mode_max_tokens": "max",
    "pooling_mode_mean_tokens": "mean",
    "pooling_mode_mean_sqrt_len_tokens": "mean_sqrt_len_tokens",
    "pooling_mode_weightedmean_tokens": "weightedmean",
    "pooling_mode_lasttoken": "lasttoken",
}
# sentence-transformers' pooling mode -> ours (None: refused, numpy pooling would differ from
# what the model was trained with).
_POOLING_MODES: dict[str, Pooling | None] = {
    "mean": "mean", "cls": "cls", "lasttoken": "last",
    "max": None, "mean_sqrt_len_tokens": None, "weightedmean": None,
}
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
    positions: int | None  # tokens the position embeddings hold, where config.json says


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


def _pooling_mode(config: dict[str, Any], path: Path) -> str:
    """sentence-transformers' mode name, from either folder format."""
    if "pooling_mode" in config:  # the 5.x format: a name, or a list of names (concatenated)
        raw = config["pooling_mode"]
        modes = [raw] if isinstance(raw, str) else raw
        if not isinstance(modes, list) or not all(isinstance(m, str) for m in modes):
            raise ToolError(f"{path}: field 'pooling_mode' must be a mode name, got {raw!r}")
    else:  # the classic format: one boolean flag per mode
        modes = [mode for flag, mode in _POOLING_FLAGS.items() if config.get(flag)]
    if len(modes) != 1:
        raise ToolError(f"{path}: expected exactly one pooling mode, found "
                        f"{', '.join(modes) if modes else 'none'} (edge-embed bundles pool "
                        "with one mode, not a concatenation)")
    return modes[0]


def _pooling(folder: Path, module_path: str, prompts: dict[str, str]) -> Pooling:
    path = folder / module_path / "config.json"
    config = read_json(path)
    if not isinstance(config, dict):
        raise ToolError(f"{path} must be a JSON object")
    name = _pooling_mode(config, path)
    if name not in _POOLING_MODES:
        raise ToolError(f"{path}: unknown pooling mode '{name}'")
    mode = _POOLING_MODES[name]
    if mode is None:
        raise ToolError(f"{path}: pooling '{name}' is not supported (edge-embed "
                        "bundles pool with mean, cls or last token)")
    if config.get("include_prompt") is False and any(prompts.values()):
        # sentence-transformers then pools over the input's tokens only, leaving the prompt's
        # out; the service pools every token it feeds.
        raise ToolError(f"{path}: include_prompt false (the prompt's tokens left out of the "
                        "pooling) is not supported")
    return mode


def _prompts(folder: Path) -> dict[str, str] | None:
    """The named prompts; an empty one is kept (its name is valid and adds nothing, as in
    sentence-transformers). None when the folder has no config_sentence_transformers.json."""
    path = folder / "config_sentence_transformers.json"
    if not path.is_file():
        return None
    data = read_json(path)
    if not isinstance(data, dict):
        return {}
    default = data.get("default_prompt_name")
    if default:
        # sentence-transformers prepends that prompt to every input given no prompt name; a
        # bundle applies a prompt only for the input_type a request names.
        raise ToolError(f"{path}: default_prompt_name '{default}' is not supported (edge-embed "
                        "applies a prompt only for the input_type a request names)")
    raw = data.get("prompts")
    if not isinstance(raw, dict):
        return {}
    return {str(k): v for k, v in raw.items() if isinstance(v, str)}


def _modules(folder: Path, prompts: dict[str, str]) -> tuple[Pooling | None, bool] | None:
    """(pooling, normalize) from modules.json; None when the folder has none."""
    modules_path = folder / "modules.json"
    if not modules_path.is_file():
        return None
    modules = read_json(modules_path)
    if not isinstance(modules, list) or not all(isinstance(m, dict) for m in modules):
        raise ToolError(f"{modules_path} must be a list of module objects")
    pooling: Pooling | None = None
    normalize = False
    for module in modules:
        kind = str(module.get("type", ""))
        if kind in _POOLING:
            pooling = _pooling(folder, str(module.get("path", "")), prompts)
        elif kind in _NORMALIZE:
            normalize = True
        elif kind not in _TRANSFORMER:
            raise ToolError(f"{modules_path}: module '{kind}' is not supported (edge-embed "
                            "bundles are a transformer, pooling and optional normalization)")
    return pooling, normalize


def check_positions(max_tokens: int, positions: int | None) -> None:
    if positions is not None and max_tokens > positions:
        raise ToolError(f"max tokens {max_tokens} exceeds the model's {positions} position "
                        "embeddings (pass --max-tokens)")


def read_settings(folder: Path, *, max_tokens: int | None = None, pooling: Pooling | None = None,
                  normalize: bool | None = None) -> ModelSettings:
    """The model's settings; explicit arguments (CLI flags) win over what the folder says.

    Without --max-tokens the limit is, until `with_st_limit` replaces it for a
    sentence-transformers folder, the position embeddings' (a default).
    """
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

    prompts = _prompts(folder)
    modules = _modules(folder, prompts or {})
    st_pooling, st_normalize = modules if modules is not None else (None, None)
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
        max_tokens = positions or DEFAULT_MAX_TOKENS
        defaults.append("max_tokens")
    check_positions(max_tokens, positions)
    if prompts is None:
        defaults.append("prompts")
    library = "sentence-transformers" if modules is not None else "transformers"
    return ModelSettings(
        model_type=str(config["model_type"]), dimensions=dims, vocab_size=vocab,
        max_tokens=max_tokens, pooling=pooling, normalize=normalize, prompts=prompts or {},
        defaults=tuple(defaults), library=library,
        pad_token_id=pad if isinstance(pad, int) and not isinstance(pad, bool) else None,
        positions=positions)


def with_st_limit(settings: ModelSettings, limit: int) -> ModelSettings:
    """The settings with the limit sentence-transformers applies to this folder, unless
    --max-tokens named one."""
    if "max_tokens" not in settings.defaults:
        return settings
    if settings.positions is not None and limit > settings.positions:
        # sentence-transformers itself would fail on such an input (no position for it)
        raise ToolError(f"sentence-transformers cuts this model's inputs at {limit} tokens, "
                        f"beyond its {settings.positions} position embeddings (pass "
                        "--max-tokens)")
    return dataclasses.replace(settings, max_tokens=limit,
                               defaults=tuple(d for d in settings.defaults if d != "max_tokens"))
