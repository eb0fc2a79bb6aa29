"""The one model-input builder (core.feeds) and the one pooling (core.pooling).

The end-to-end checks run a hand-built ONNX graph whose output for a token depends on its id
and its position only (an embedding lookup plus a position embedding, no mixing between
tokens), so a row's vectors can be compared exactly between left and right padding: they agree
only if position_ids and pooling both find the real tokens wherever the padding put them.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from edge_embed.core.encoder import BundleModel
from edge_embed.core.errors import BundleError, UnsupportedGraphInput
from edge_embed.core.feeds import FILLED_INPUTS, PADDING_SIDES, build_feeds, check_inputs
from edge_embed.core.pooling import pool

ALL_INPUTS = ("input_ids", "attention_mask", "token_type_ids", "position_ids")
PAD = 0
ROWS = [np.array([5, 6, 7, 8], dtype=np.int64), np.array([9], dtype=np.int64),
        np.array([3, 4], dtype=np.int64)]
# The toy graph's sizes: token ids below VOCAB, positions below POSITIONS.
VOCAB = 16
POSITIONS = 8
HIDDEN = 4


def test_every_declared_input_is_filled_and_nothing_else() -> None:
    feed = build_feeds(ROWS, ALL_INPUTS, pad_id=PAD)
    assert list(feed.arrays) == list(ALL_INPUTS)
    for array in feed.arrays.values():
        assert array.shape == (3, 4) and array.dtype == np.int64
    assert feed.arrays["input_ids"].tolist() == [[5, 6, 7, 8], [9, 0, 0, 0], [3, 4, 0, 0]]
    assert feed.arrays["attention_mask"].tolist() == [[1, 1, 1, 1], [1, 0, 0, 0], [1, 1, 0, 0]]
    assert not feed.arrays["token_type_ids"].any()
    # a graph that declares fewer inputs gets only those; the mask is still there for pooling
    only_ids = build_feeds(ROWS, ("input_ids",), pad_id=PAD)
    assert list(only_ids.arrays) == ["input_ids"]
    assert only_ids.mask.tolist() == feed.arrays["attention_mask"].tolist()


def test_left_padding_puts_the_tokens_at_the_end() -> None:
    feed = build_feeds(ROWS, ALL_INPUTS, pad_id=PAD, side="left")
    assert feed.arrays["input_ids"].tolist() == [[5, 6, 7, 8], [0, 0, 0, 9], [0, 0, 3, 4]]
    assert feed.mask.tolist() == [[1, 1, 1, 1], [0, 0, 0, 1], [0, 0, 1, 1]]


def test_position_ids_right_padding() -> None:
    positions = build_feeds(ROWS, ALL_INPUTS, pad_id=PAD).arrays["position_ids"]
    assert positions.tolist() == [[0, 1, 2, 3]] * 3


def test_position_ids_left_padding_count_from_the_first_real_token() -> None:
    positions = build_feeds(ROWS, ALL_INPUTS, pad_id=PAD, side="left").arrays["position_ids"]
    assert positions.tolist() == [[0, 1, 2, 3], [0, 0, 0, 0], [0, 0, 0, 1]]


def test_width_pads_at_least_that_far_but_never_a_lone_row() -> None:
    wide = build_feeds(ROWS, ALL_INPUTS, pad_id=PAD, width=6)
    assert wide.arrays["input_ids"].shape == (3, 6)
    narrow = build_feeds(ROWS, ALL_INPUTS, pad_id=PAD, width=2)
    assert narrow.arrays["input_ids"].shape == (3, 4)  # never cut below the longest row
    alone = build_feeds(ROWS[:1], ALL_INPUTS, pad_id=PAD, width=16)
    assert alone.arrays["input_ids"].tolist() == [[5, 6, 7, 8]]


def test_pad_id_is_the_tokenizers() -> None:
    feed = build_feeds(ROWS, ("input_ids",), pad_id=1, side="left")
    assert feed.arrays["input_ids"][1].tolist() == [1, 1, 1, 9]


@pytest.mark.parametrize("name", ["past_key_values.0.key", "pixel_values", "inputs_embeds"])
def test_unknown_input_refused_by_name(name: str) -> None:
    with pytest.raises(UnsupportedGraphInput, match=name) as caught:
        build_feeds(ROWS, ("input_ids", name), pad_id=PAD)
    assert caught.value.name == name
    with pytest.raises(UnsupportedGraphInput, match=name):
        check_inputs(["input_ids", "attention_mask", name])
    check_inputs(FILLED_INPUTS)  # the ones it fills pass


def test_last_and_cls_pooling_find_the_real_tokens_on_either_side() -> None:
    rng = np.random.default_rng(0)
    right = build_feeds(ROWS, ("input_ids",), pad_id=PAD)
    left = build_feeds(ROWS, ("input_ids",), pad_id=PAD, side="left")
    # token states that depend on the token only: the same row padded either way
    table = rng.normal(size=(VOCAB, HIDDEN)).astype(np.float32)
    hidden_right = table[right.arrays["input_ids"]]
    hidden_left = table[left.arrays["input_ids"]]
    for mode in ("last", "cls", "mean"):
        a = pool(hidden_right, right.mask, mode)
        b = pool(hidden_left, left.mask, mode)
        assert np.array_equal(a, b), mode
    last = pool(hidden_left, left.mask, "last")
    assert np.array_equal(last, table[[8, 9, 4]])  # each row's last real token
    first = pool(hidden_left, left.mask, "cls")
    assert np.array_equal(first, table[[5, 9, 3]])


def toy_graph(inputs: tuple[str, ...]) -> bytes:
    """hidden[b, t] = token_table[input_ids] + position_table[position_ids] (+ mask * 0)."""
    rng = np.random.default_rng(1)
    tokens = numpy_helper.from_array(rng.normal(size=(VOCAB, HIDDEN)).astype(np.float32), "tok")
    positions = numpy_helper.from_array(
        rng.normal(size=(POSITIONS, HIDDEN)).astype(np.float32), "pos")
    nodes = [helper.make_node("Gather", ["tok", "input_ids"], ["t"]),
             helper.make_node("Gather", ["pos", "position_ids"], ["p"]),
             helper.make_node("Add", ["t", "p"], ["last_hidden_state"])]
    declared = [helper.make_tensor_value_info(name, TensorProto.INT64, ["batch", "seq"])
                for name in inputs]
    graph = helper.make_graph(
        nodes, "toy", declared,
        [helper.make_tensor_value_info("last_hidden_state", TensorProto.FLOAT,
                                       ["batch", "seq", HIDDEN])], [tokens, positions])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    return bytes(model.SerializeToString())


def test_left_and_right_padding_give_the_same_vectors_through_a_graph() -> None:
    inputs = ("input_ids", "attention_mask", "position_ids")
    session = ort.InferenceSession(toy_graph(inputs), providers=["CPUExecutionProvider"])
    declared = [i.name for i in session.get_inputs()]
    out: dict[str, dict[str, np.ndarray]] = {}
    for side in PADDING_SIDES:
        feed = build_feeds(ROWS, declared, pad_id=PAD, side=side)
        (hidden,) = session.run(["last_hidden_state"], feed.arrays)
        out[side] = {mode: pool(np.asarray(hidden), feed.mask, mode)
                     for mode in ("last", "mean", "cls")}
    for mode in ("last", "mean", "cls"):
        assert np.allclose(out["right"][mode], out["left"][mode], atol=1e-6), mode
    # and each agrees with the row run alone, unpadded
    for i, row in enumerate(ROWS):
        alone = build_feeds([row], declared, pad_id=PAD)
        (hidden,) = session.run(["last_hidden_state"], alone.arrays)
        assert np.allclose(pool(np.asarray(hidden), alone.mask, "last"), out["left"]["last"][i])


def test_wrong_left_positions_would_show() -> None:
    # The check above can fail: left-padded rows given plain 0..width-1 positions (what right
    # padding uses) put the real tokens at shifted positions, and their vectors move.
    session = ort.InferenceSession(toy_graph(("input_ids", "attention_mask", "position_ids")),
                                   providers=["CPUExecutionProvider"])
    left = build_feeds(ROWS, ("input_ids", "attention_mask", "position_ids"), pad_id=PAD,
                       side="left")
    right = build_feeds(ROWS, ("input_ids", "attention_mask", "position_ids"), pad_id=PAD)
    wrong = {**left.arrays, "position_ids": right.arrays["position_ids"]}
    (good,) = session.run(["last_hidden_state"], right.arrays)
    (bad,) = session.run(["last_hidden_state"], wrong)
    assert not np.allclose(pool(np.asarray(good), right.mask, "last"),
                           pool(np.asarray(bad), left.mask, "last"), atol=1e-3)


def add_graph_input(model_path: Path, name: str) -> None:
    model = onnx.load(str(model_path))
    model.graph.input.append(helper.make_tensor_value_info(name, TensorProto.INT64, ["b", "s"]))
    onnx.save(model, str(model_path))


def test_bundle_with_an_input_the_service_cannot_fill_is_refused(tiny_bundle: Path,
                                                                 tmp_path: Path) -> None:
    bundle = Path(shutil.copytree(tiny_bundle, tmp_path / "odd"))
    add_graph_input(bundle / "model.onnx", "pixel_values")
    with pytest.raises(BundleError, match="'pixel_values'") as caught:
        BundleModel(bundle)
    assert "model.onnx" in str(caught.value)


def test_bundle_padding_side_comes_from_its_tokenizer(tiny_bundle: Path, tmp_path: Path) -> None:
    assert BundleModel(tiny_bundle).tokenizer.padding_side == "right"
    bundle = Path(shutil.copytree(tiny_bundle, tmp_path / "left"))
    data = json.loads((bundle / "tokenizer.json").read_text(encoding="utf-8"))
    data["padding"]["direction"] = "Left"
    (bundle / "tokenizer.json").write_text(json.dumps(data), encoding="utf-8")
    model = BundleModel(bundle)
    assert model.tokenizer.padding_side == "left"
    rows = [t.ids for t in model.tokenizer.encode(["dog", "the quick brown fox jumps"])]
    assert len(rows[0]) < len(rows[1])
    mask = model.feed(rows).mask
    assert mask[0, -1] == 1 and mask[0, 0] == 0  # the short row is padded at its start
