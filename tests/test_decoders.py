"""Decoder embedders (Qwen3-Embedding and E5-Mistral style, last-token pooling): what only a
decoder needs, in both sentence-transformers folder formats.

The tiny twins (tests/fixtures/decoders.py) are built by the architecture matrix's fixture
(tests/fixtures/matrix.py), which also serves them against sentence-transformers' own `encode`
(vectors, prompts, truncation counts, batch invariance: tests/test_architecture_matrix.py). Here:
the tokenizer's padding side and EOS, the EOS kept after a cut, the last real token pooled
whichever side pads, and `edge-embed quantize` with its default `--method auto` and gates.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from edge_embed.core.agreement import cosines
from edge_embed.core.bundle import load_manifest
from edge_embed.core.encoder import BundleModel
from edge_embed.export.cli import main as export_main
from edge_embed.quantize.gates import NN_CRITERION, RANK_CRITERION, Gates
from tests.fixtures.decoders import DECODER_MAX_SEQ_LENGTH, QWEN_EOS
from tests.fixtures.encoders import FORMATS, TWINS
from tests.fixtures.matrix import Builds, Built
from tests.fixtures.quantized import build_quantized

# A vector alone vs inside a padded batch: float rounding only (the quantize gate's own bar).
INVARIANCE = 0.9999
EXIT_USAGE = 2
TEXTS = ["hello world", "a", "The quick brown fox jumps over the lazy dog.", "café",
         "Der Hund spielt im Garten mit einem roten Ball.", "Numbers like 3.14159 and 2718.",
         " ".join(["the museum opens at ten and closes at six on weekdays"] * 12)]
LONG = " ".join(["The committee will meet again next month to review the proposal."] * 30)
DECODERS = [name for name, twin in TWINS.items() if twin.pooling == "lasttoken"]
# Each decoder's padding side and the EOS its tokenizer appends.
SIDES = {"qwen3": "left", "mistral": "right"}
EOS = {"qwen3": QWEN_EOS, "mistral": "</s>"}


@pytest.fixture(params=[(name, fmt) for name in DECODERS for fmt in FORMATS],
                ids=lambda case: "-".join(case))
def built(request: pytest.FixtureRequest, builds: Builds) -> Built:
    name, fmt = request.param
    return builds.get(name, fmt)


def test_manifest_says_last_token_with_positions(built: Built) -> None:
    manifest = built.manifest
    assert manifest.pooling == "last" and manifest.normalize
    assert manifest.max_tokens == DECODER_MAX_SEQ_LENGTH
    # rotary positions: the service numbers each row from its first real token, either side
    assert "position_ids" in manifest.inputs


def test_tokenizer_reproduces_eos_and_padding_side(built: Built) -> None:
    from transformers import AutoTokenizer

    name = built.twin.name
    reference = AutoTokenizer.from_pretrained(str(built.folder))  # type: ignore[no-untyped-call]
    tok = BundleModel(built.fp32).tokenizer
    assert tok.padding_side == SIDES[name] == reference.padding_side
    for text in TEXTS:
        want = reference(text, truncation=True, max_length=DECODER_MAX_SEQ_LENGTH)
        assert tok.encode([text])[0].ids.tolist() == want["input_ids"]
    # every input ends with the EOS the model was trained to read
    assert tok.suffix == [reference.convert_tokens_to_ids(EOS[name])]
    if name == "mistral":
        assert tok.prefix == [reference.convert_tokens_to_ids("<s>")]


def test_mistral_eos_comes_from_add_eos_token(builds: Builds) -> None:
    # the classic folder's tokenizer.json appends no </s>: transformers rebuilds the
    # post-processor from tokenizer_config.json's add_eos_token, and the bundle must follow it
    built = builds.get("mistral", "classic")
    saved = json.loads((built.folder / "tokenizer.json").read_text(encoding="utf-8"))
    assert "</s>" not in json.dumps(saved["post_processor"])
    eos = BundleModel(built.fp32).tokenizer.suffix
    assert eos == [built.st.tokenizer.convert_tokens_to_ids("</s>")]


def test_truncation_counts_and_eos_as_sentence_transformers(built: Built) -> None:
    tokenizer = built.st.tokenizer
    cut = built.ids(LONG)
    full = tokenizer(LONG)["input_ids"]
    got = BundleModel(built.fp32).tokenizer.encode([LONG])[0]
    assert got.truncated
    assert got.original_tokens == len(full) > DECODER_MAX_SEQ_LENGTH == len(cut)
    assert got.ids.tolist() == cut
    # the EOS survives the cut, as in sentence-transformers
    assert got.ids[-1] == full[-1] == tokenizer.convert_tokens_to_ids(EOS[built.twin.name])


def test_last_real_token_whatever_the_padding_side(built: Built, tmp_path: Path) -> None:
    bundle = built.fp32
    flipped = Path(shutil.copytree(bundle, tmp_path / "flipped"))
    data = json.loads((flipped / "tokenizer.json").read_text(encoding="utf-8"))
    side = data["padding"]["direction"]
    data["padding"]["direction"] = "Right" if side == "Left" else "Left"
    (flipped / "tokenizer.json").write_text(json.dumps(data), encoding="utf-8")
    a, b = BundleModel(bundle), BundleModel(flipped)
    assert a.tokenizer.padding_side != b.tokenizer.padding_side
    texts = [*TEXTS, LONG]
    assert cosines(a.embed(texts), b.embed(texts)).min() >= INVARIANCE


def test_quantize_auto_with_the_default_gates(built: Built, tmp_path: Path) -> None:
    bundle = built.fp32
    out = build_quantized(bundle, tmp_path / "int8")
    manifest = load_manifest(out)
    q = manifest.quantization
    assert q is not None and manifest.quality is not None
    selection = q["selection"]
    assert selection["policy"] == "auto" and selection["chosen"] == q["method"]
    assert selection["tried"][-1]["passed"] is True
    assert [t["method"] for t in selection["tried"]] == ["pertoken", "blockwise"][
        :len(selection["tried"])]
    # the criterion follows the figures: NN agreement only where a noise-only candidate
    # could meet its gate
    figures = selection["tried"][-1]["figures"]
    criterion = NN_CRITERION if figures["nn_expected"] >= Gates.nn else RANK_CRITERION
    assert q["verdict"]["neighbour_criterion"] == criterion
    assert manifest.quality.cosine_mean >= Gates.mean
    # the quantized bundle still pools the last real token on its padding side
    texts = [*TEXTS, LONG]
    assert cosines(BundleModel(bundle).embed(texts), BundleModel(out).embed(texts)).min() > 0.99


def test_export_refuses_left_truncation(builds: Builds, tmp_path: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    src = Path(shutil.copytree(builds.get("qwen3", "classic").folder, tmp_path / "left-cut"))
    config_path = src / "tokenizer_config.json"
    config = json.loads(config_path.read_text(encoding="utf-8"))
    config["truncation_side"] = "left"
    config_path.write_text(json.dumps(config), encoding="utf-8")
    out = tmp_path / "out"
    code = export_main([str(src), "--out", str(out), "--quiet"])
    err = capsys.readouterr().err
    assert code == EXIT_USAGE, err
    assert "tokenizer_config.json" in err and "truncation_side 'left'" in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not out.exists()


def test_vectors_differ_between_inputs(built: Built) -> None:
    # the twins are not collapsed to one vector: the checks above compare something
    vectors = BundleModel(built.fp32).embed(TEXTS)
    sims = vectors @ vectors.T
    assert float(np.min(sims)) < 0.9
