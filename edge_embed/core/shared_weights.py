"""Weights read once from an ONNX file, for several onnxruntime sessions of one graph to share.

The service keeps two sessions of a model when a lone request may use every core (runtime.py);
without this, each holds its own copy of every weight. Only the protobuf fields needed are read
(the runtime install has no `onnx`): the nodes, and the initializers' name, type, shape and bytes.
Only weights that no prepacking kernel consumes are shared (the embedding tables above all):
onnxruntime repacks a matmul's constant weight per session, so a shared copy would stay alive
beside each packed one (figures: docs/measurements.md, "The thread layout that follows the load").
"""

from __future__ import annotations

import mmap
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort

# Tensors smaller than this stay in each session: sharing them saves nothing worth the lookups.
SHARE_MIN_BYTES = 64 * 1024
# Operators whose CPU kernels prepack a constant input (the weights of a matmul, a convolution
# or a fused attention), keeping their own copy per session.
PREPACKING_OPS = frozenset({
    "MatMul", "Gemm", "FusedMatMul", "MatMulInteger", "MatMulIntegerToFloat",
    "DynamicQuantizeMatMul", "QLinearMatMul", "MatMulNBits", "Conv", "FusedConv", "QLinearConv",
    "Attention", "QAttention", "MultiHeadAttention",
})
# ONNX TensorProto data types with a fixed-size numpy equivalent.
_DTYPES: dict[int, type[np.generic]] = {
    1: np.float32, 2: np.uint8, 3: np.int8, 4: np.uint16, 5: np.int16, 6: np.int32,
    7: np.int64, 10: np.float16, 11: np.float64, 12: np.uint32, 13: np.uint64,
}
# Field numbers in onnx.proto.
_MODEL_GRAPH = 7
_GRAPH_NODE, _GRAPH_INITIALIZER = 1, 5
_NODE_INPUT, _NODE_OP_TYPE = 1, 4
_TENSOR_DIMS, _TENSOR_TYPE, _TENSOR_NAME, _TENSOR_RAW, _TENSOR_LOCATION = 1, 2, 8, 9, 14
_VARINT, _FIXED64, _BYTES, _FIXED32 = 0, 1, 2, 5


class ProtoError(ValueError):
    """The file is not a protobuf this reader understands."""


def _varint(buf: memoryview, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= len(buf):
            raise ProtoError("truncated varint")
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos
        shift += 7


def _fields(buf: memoryview) -> Iterator[tuple[int, int, int | memoryview]]:
    """(field number, wire type, value) of one message: ints for varints, views for the rest."""
    pos = 0
    while pos < len(buf):
        key, pos = _varint(buf, pos)
        number, wire = key >> 3, key & 7
        value: int | memoryview
        if wire == _VARINT:
            value, pos = _varint(buf, pos)
        elif wire == _BYTES:
            size, pos = _varint(buf, pos)
            if pos + size > len(buf):
                raise ProtoError("field runs past the end of its message")
            value, pos = buf[pos:pos + size], pos + size
        elif wire == _FIXED64:
            value, pos = buf[pos:pos + 8], pos + 8
        elif wire == _FIXED32:
            value, pos = buf[pos:pos + 4], pos + 4
        else:
            raise ProtoError(f"unsupported wire type {wire}")
        yield number, wire, value


def _packed_varints(view: memoryview) -> list[int]:
    out: list[int] = []
    pos = 0
    while pos < len(view):
        value, pos = _varint(view, pos)
        out.append(value)
    return out


@dataclass(frozen=True)
class _Tensor:
    name: str
    dtype: int
    dims: tuple[int, ...]
    raw: memoryview | None  # None: the values are elsewhere (typed fields, external data)


def _tensor(buf: memoryview) -> _Tensor:
    name, dtype, dims, raw, external = "", 0, [], None, False
    for number, wire, value in _fields(buf):
        if number == _TENSOR_DIMS:
            dims += _packed_varints(value) if isinstance(value, memoryview) else [int(value)]
        elif number == _TENSOR_TYPE and isinstance(value, int):
            dtype = value
        elif number == _TENSOR_NAME and isinstance(value, memoryview):
            name = bytes(value).decode("utf-8")
        elif number == _TENSOR_RAW and isinstance(value, memoryview):
            raw = value
        elif number == _TENSOR_LOCATION and value == 1:
            external = True
        del wire
    return _Tensor(name, dtype, tuple(dims), None if external else raw)


def _graph(model: memoryview) -> memoryview:
    for number, _, value in _fields(model):
        if number == _MODEL_GRAPH and isinstance(value, memoryview):
            return value
    raise ProtoError("no graph in the model")


def shareable(path: Path, min_bytes: int = SHARE_MIN_BYTES) -> dict[str, np.ndarray]:
    """The initializers of the ONNX file at `path` that sessions can share, as numpy arrays.

    Raises ProtoError for a file that is not an ONNX model; an initializer this reader cannot
    take (external data, a type without a numpy equivalent) is simply not shared.
    """
    with path.open("rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mapped:
        # Mapped, not read: only the graph's structure and the shared tensors' pages are touched.
        data = memoryview(mapped)
        try:
            return _shareable(data, min_bytes)
        finally:
            data.release()


def _shareable(data: memoryview, min_bytes: int) -> dict[str, np.ndarray]:
    prepacked: set[str] = set()
    tensors: list[_Tensor] = []
    for number, _, value in _fields(_graph(data)):
        if not isinstance(value, memoryview):
            continue
        if number == _GRAPH_NODE:
            inputs: list[str] = []
            op = ""
            for n, _, v in _fields(value):
                if n == _NODE_INPUT and isinstance(v, memoryview):
                    inputs.append(bytes(v).decode("utf-8"))
                elif n == _NODE_OP_TYPE and isinstance(v, memoryview):
                    op = bytes(v).decode("utf-8")
            if op in PREPACKING_OPS:
                prepacked.update(inputs)
        elif number == _GRAPH_INITIALIZER:
            tensors.append(_tensor(value))
    out: dict[str, np.ndarray] = {}
    for t in tensors:
        dtype = _DTYPES.get(t.dtype)
        if t.raw is None or dtype is None or t.name in prepacked or len(t.raw) < min_bytes:
            continue
        array = np.frombuffer(t.raw, dtype=np.dtype(dtype).newbyteorder("<"))
        if array.size != int(np.prod(t.dims, dtype=np.int64)):
            raise ProtoError(f"initializer {t.name!r}: {array.size} values for shape {t.dims}")
        # A copy of its own: the file is unmapped once this returns.
        out[t.name] = array.reshape(t.dims).astype(dtype, copy=True)
        del array
    return out


def as_ort_values(arrays: dict[str, np.ndarray]) -> dict[str, ort.OrtValue]:
    """OrtValues over the arrays' own memory (no copy); keep `arrays` alive while they are used."""
    return {name: ort.OrtValue.ortvalue_from_numpy(a) for name, a in arrays.items()}
