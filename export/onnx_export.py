"""optimum's ONNX exporter, as the `transformers` library: the bare encoder, pooling left out.

With library_name "transformers" and task feature-extraction the graph returns
`last_hidden_state` (token embeddings); the service pools in numpy, so one graph serves every
pooling mode and quantization sees only the encoder. The graph agrees with torch within 3e-7
on MiniLM, opset 18 (docs/measurements.md, Export).
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import sys
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from edge_embed.core.errors import UnsupportedGraphInput
from edge_embed.core.feeds import check_inputs
from edge_embed.core.tooling import ToolError

if TYPE_CHECKING:
    import onnx
    from transformers import PreTrainedModel

TASK = "feature-extraction"
LIBRARY = "transformers"
OUTPUT = "last_hidden_state"
# A cross-encoder: the sequence classifier whole, its logits [batch, labels] the output.
RERANK_TASK = "text-classification"
RERANK_OUTPUT = "logits"
MODEL_FILE = "model.onnx"
# optimum's own switch for writing external data below the 2 GB it needs it at (read when the
# export runs).
_FORCE_EXTERNAL_ENV = "FORCE_ONNX_EXTERNAL_DATA"
# Scratch folder inside the bundle being built: optimum also writes config and tokenizer files,
# of which the bundle keeps only the graph (and its external data, for models over 2 GB).
_SCRATCH = ".onnx-export"
# Named in the unsupported-architecture message: the usual sentence-embedding backbones.
_TEXT_ENCODERS = ("bert", "roberta", "xlm-roberta", "mpnet", "distilbert", "modernbert",
                  "deberta-v2", "electra", "qwen2", "qwen3", "gemma3_text")


@dataclass(frozen=True)
class ExportedGraph:
    inputs: tuple[str, ...]
    output: str
    opset: int


def check_supported(model_type: str, task: str = TASK) -> None:
    """Refuse, before loading any weights, an architecture optimum cannot export."""
    # Importing the ONNX exporter registers its model types with the TasksManager.
    import optimum.exporters.onnx.model_configs  # noqa: F401
    from optimum.exporters.tasks import TasksManager

    try:
        tasks = TasksManager.get_supported_tasks_for_model_type(model_type, "onnx",
                                                                library_name=LIBRARY)
    except (KeyError, ValueError):
        known = TasksManager._LIBRARY_TO_SUPPORTED_MODEL_TYPES.get(LIBRARY, {})
        encoders = [t for t in _TEXT_ENCODERS if t in known]
        raise ToolError(f"model_type '{model_type}' is not supported by optimum's ONNX exporter "
                        f"(text encoders it supports include {', '.join(encoders)})") from None
    if task not in tasks:
        raise ToolError(f"model_type '{model_type}' cannot be exported for {task} by optimum "
                        f"(it supports: {', '.join(tasks)})")


@contextlib.contextmanager
def _stdout_silenced() -> Iterator[None]:
    """Send file descriptor 1 to /dev/null: on a failed export torch prints its whole IR graph
    (hundreds of lines) to stdout, and the user must see one line."""
    sys.stdout.flush()
    saved = os.dup(1)
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 1)
            yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)


@contextlib.contextmanager
def _external_data(force: bool) -> Iterator[None]:
    saved = os.environ.get(_FORCE_EXTERNAL_ENV)
    if force:
        os.environ[_FORCE_EXTERNAL_ENV] = "1"
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop(_FORCE_EXTERNAL_ENV, None)
        else:
            os.environ[_FORCE_EXTERNAL_ENV] = saved


def _tensors(graph: onnx.GraphProto) -> Iterator[onnx.TensorProto]:
    """Every tensor a graph holds: initializers, and constants inside nodes and subgraphs."""
    yield from graph.initializer
    for node in graph.node:
        for attr in node.attribute:
            if attr.HasField("t"):
                yield attr.t
            yield from attr.tensors
            if attr.HasField("g"):
                yield from _tensors(attr.g)
            for sub in attr.graphs:
                yield from _tensors(sub)


def external_files(model: onnx.ModelProto) -> list[str]:
    """The files, beside the graph, that a graph's external tensors name."""
    import onnx

    names = {entry.value for tensor in _tensors(model.graph)
             if tensor.data_location == onnx.TensorProto.EXTERNAL
             for entry in tensor.external_data if entry.key == "location"}
    return sorted(names)


def export(model: PreTrainedModel, out: Path, opset: int | None,
           external_data: bool = False, task: str = TASK,
           output: str = OUTPUT) -> ExportedGraph:
    """Write `out/model.onnx` from the loaded torch model, its weights in `model.onnx_data`
    beside it when they pass protobuf's 2 GB or `external_data` asks for it."""
    import onnx
    from optimum.exporters.onnx.convert import onnx_export_from_model

    scratch = out / _SCRATCH
    # optimum logs each step at INFO and warns about dynamic axes it handles itself.
    for name in ("optimum", "torch.onnx"):
        logging.getLogger(name).setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), _stdout_silenced(), _external_data(external_data):
            # torch.jit's TracerWarnings about constants in attention-mask helpers: the graph
            # is checked against torch afterwards, which is the test that matters.
            warnings.simplefilter("ignore")
            onnx_export_from_model(model, output=scratch, opset=opset, task=task,
                                   do_validation=False)
    except Exception as exc:  # the exporter raises many kinds; the user needs one line
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise ToolError(f"optimum could not export model_type '{model.config.model_type}': "
                        f"{type(exc).__name__}: {first[:300]}") from None
    graph_path = scratch / MODEL_FILE
    if not graph_path.is_file():
        raise ToolError(f"optimum wrote no {MODEL_FILE} for model_type "
                        f"'{model.config.model_type}'")
    # the graph's structure only: its weights, possibly GBs, stay on disk
    proto = onnx.load(str(graph_path), load_external_data=False)
    for name in (MODEL_FILE, *external_files(proto)):
        os.replace(scratch / name, out / name)
    shutil.rmtree(scratch, ignore_errors=True)
    initializers = {i.name for i in proto.graph.initializer}
    inputs = tuple(i.name for i in proto.graph.input if i.name not in initializers)
    try:
        # refused here, inside the temporary folder: no bundle the service could not feed
        check_inputs(inputs)
    except UnsupportedGraphInput as exc:
        raise ToolError(f"{exc}; model_type '{model.config.model_type}' cannot be served, no "
                        "bundle written") from None
    outputs = [o.name for o in proto.graph.output]
    if output not in outputs:
        raise ToolError(f"the exported graph has no '{output}' output (it has "
                        f"{', '.join(outputs)})")
    opsets = [o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")]
    return ExportedGraph(inputs=inputs, output=output, opset=opsets[0] if opsets else 0)
