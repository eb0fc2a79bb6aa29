"""Weights outside the graph (ONNX external data), as models past protobuf's 2 GB are written:
forced on the tiny model with --external-data, through export, quantize and the service.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from edge_embed.core.bundle import load_manifest
from edge_embed.core.encoder import BundleModel
from edge_embed.core.errors import BundleFileError
from edge_embed.core.runtime import RuntimeOptions
from edge_embed.export.cli import main
from edge_embed.service.models import Registry
from tests.fixtures.quantized import build_tiny_int8

DATA = "model.onnx_data"
TEXTS = ["hello", "The quick brown fox jumps over the lazy dog.",
         " ".join(["the museum opens at ten and closes at six on weekdays"] * 20)]
# Same graph, same weights, same onnxruntime: the place the weights are read from changes
# nothing but float32 rounding in the kernels' order, if that.
SAME_VECTORS = 1e-6
OPTIONS = RuntimeOptions(intra_op_threads=1, spinning=False)


@pytest.fixture(scope="module")
def external(tiny_st_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("external") / "tiny-ext"
    assert main([str(tiny_st_model), "--out", str(out), "--id", "tiny-ext", "--external-data",
                 "--quiet"]) == 0
    return out


def test_export_writes_the_weights_beside_the_graph(external: Path, tiny_bundle: Path) -> None:
    import onnx

    assert {p.name for p in external.iterdir()} == {"bundle.json", "model.onnx", DATA,
                                                    "tokenizer.json", "canary.json"}
    graph = onnx.load(str(external / "model.onnx"), load_external_data=False)
    outside = [t for t in graph.graph.initializer
               if t.data_location == onnx.TensorProto.EXTERNAL]
    assert outside and {e.value for t in outside for e in t.external_data
                        if e.key == "location"} == {DATA}
    # the weights are in the data file: the graph alone is a small part of the inline one
    inline = (tiny_bundle / "model.onnx").stat().st_size
    assert (external / "model.onnx").stat().st_size < inline / 2
    files = load_manifest(external).files
    assert set(files) == {"model.onnx", DATA, "tokenizer.json", "canary.json"}
    assert files[DATA].size == (external / DATA).stat().st_size
    umask = os.umask(0)
    os.umask(umask)
    assert (external / DATA).stat().st_mode & 0o777 == 0o666 & ~umask  # readable like the rest


def test_served_vectors_do_not_depend_on_where_the_weights_are(external: Path,
                                                               tiny_bundle: Path) -> None:
    (served,) = Registry.load((external,), OPTIONS)
    got = served.model.embed(TEXTS)
    want = BundleModel(tiny_bundle, OPTIONS).embed(TEXTS)
    assert float(np.abs(got - want).max()) <= SAME_VECTORS


def test_a_missing_data_file_stops_start_up(external: Path, tmp_path: Path) -> None:
    import shutil

    bundle = Path(shutil.copytree(external, tmp_path / "b"))
    (bundle / DATA).unlink()
    with pytest.raises(BundleFileError, match=rf"{DATA}: is missing; bundle\.json lists it"):
        Registry.load((bundle,), OPTIONS)


@pytest.mark.parametrize("forced", [False, True])
def test_quantize_reads_external_data_and_writes_it_when_asked(external: Path, tmp_path: Path,
                                                               forced: bool) -> None:
    out = build_tiny_int8(external, tmp_path / "int8", ("--external-data",) if forced else ())
    names = {p.name for p in out.iterdir()}
    # a tiny int8 graph fits in protobuf: the data file only when asked for
    assert (DATA in names) is forced
    assert set(load_manifest(out).files) == names - {"bundle.json"}
    (served,) = Registry.load((out,), OPTIONS)
    vectors = served.model.embed(TEXTS)
    assert vectors.shape == (len(TEXTS), load_manifest(out).dimensions)
