"""The source model in torch: loaded once, exported by optimum, and the reference for parity.

Loading it ourselves (rather than letting optimum's main_export load it) means a corrupt or
missing weights file fails here with one clear line, and parity compares against the very
module that was exported.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from edge_embed.core.feeds import I64
from edge_embed.core.pooling import F32
from edge_embed.core.tooling import ToolError

if TYPE_CHECKING:
    from transformers import PreTrainedModel

# The weight files transformers loads, in its own order of preference; sharded checkpoints
# name their parts in an index file.
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                "pytorch_model.bin.index.json")


def weights_file(folder: Path) -> Path:
    for name in WEIGHT_FILES:
        if (folder / name).is_file():
            return folder / name
    raise ToolError(f"{folder} has no model weights (none of {', '.join(WEIGHT_FILES)})")


def load_error(weights: Path, exc: Exception) -> ToolError:
    """One line for a model transformers could not load (safetensors, pickle, torch and config
    errors have no common base)."""
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    # transformers appends a TensorFlow hint to every unreadable .bin; it misleads here.
    first = first.split(" If you tried to load a PyTorch model from a TF")[0]
    return ToolError(f"cannot load the model from {weights}: {type(exc).__name__}: "
                     f"{first[:300]}")


def load(folder: Path, trust_remote_code: bool = False, *,
         classifier: bool = False) -> PreTrainedModel:
    """The bare encoder (AutoModel: last_hidden_state), or with `classifier` the sequence
    classifier whole (a cross-encoder: encoder and head, its logits), in eval mode so dropout
    is off."""
    weights = weights_file(folder)
    from transformers import AutoModel, AutoModelForSequenceClassification
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()  # "some weights were not used" is noise for an encoder
    auto = AutoModelForSequenceClassification if classifier else AutoModel
    try:
        model: PreTrainedModel = auto.from_pretrained(
            str(folder), local_files_only=True, trust_remote_code=trust_remote_code)
    except Exception as exc:
        raise load_error(weights, exc) from None
    model.eval()
    return model


def last_hidden_state(model: PreTrainedModel, arrays: Mapping[str, I64]) -> F32:
    """Token states [B, T, H] in float32 for the graph's input arrays: the reference the ONNX
    graph must match, fed the very arrays the graph gets (core.feeds builds them), so that
    the two sides differ only in the graph; pooling is left to the caller, in numpy."""
    import torch

    with torch.inference_mode():
        tensors = {name: torch.from_numpy(array) for name, array in arrays.items()}
        hidden = model(**tensors).last_hidden_state.float()
    return np.asarray(hidden.numpy(), dtype=np.float32)
