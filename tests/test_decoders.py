"""Decoder embedders (Qwen3-Embedding and E5-Mistral style, last-token pooling) end to end.

Tiny random-weight twins (tests/fixtures/decoders.py) go through the real export, against
sentence-transformers' own `encode`, through the service's tokenizer and batching, and through
`edge-embed quantize` with its default `--method auto`.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from edge_embed.export.cli import main as export_main
from edge_embed.quantize.evaluate import cosines
from edge_embed.quantize.gates import NN_CRITERION, RANK_CRITERION, Gates
from edge_embed.service.bundle import load_manifest
from edge_embed.service.encoder import BundleModel
from tests.fixtures.decoders import (
    DECODER_MAX_SEQ_LENGTH,
    MISTRAL_PROMPTS,
    QWEN_EOS,
    QWEN_PROMPTS,
)
from tests.fixtures.quantized import build_quantized

# What export promises against torch, here against sentence-transformers' encode.
PARITY = 0.9999
# A vector alone vs inside a padded batch: float rounding only (the quantize gate's own bar).
INVARIANCE = 0.9999
EXIT_USAGE = 2
TEXTS = ["hello world", "a", "The quick brown fox jumps over the lazy dog.", "café",
         "Der Hund spielt im Garten mit einem roten Ball.", "Numbers like 3.14159 and 2718.",
         " ".join(["the museum opens at ten and closes at six on weekdays"] * 12)]
LONG = " ".join(["The committee will meet again next month to review the proposal."] * 30)


def export(src: Path, out: Path) -> Path:
    code = export_main([str(src), "--out", str(out), "--quiet", "--force"])
    assert code == 0
    return out


@pytest.fixture(scope="module")
def qwen_bundle(tiny_qwen3_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return export(tiny_qwen3_model, tmp_path_factory.mktemp("dec") / "qwen-fp32")


@pytest.fixture(scope="module")
def mistral_bundle(tiny_mistral_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return export(tiny_mistral_model, tmp_path_factory.mktemp("dec") / "mistral-fp32")


@pytest.fixture(scope="module", params=["qwen", "mistral"])
def pair(request: pytest.FixtureRequest) -> tuple[Path, Path]:
    """(source folder, fp32 bundle) for each decoder family."""
    if request.param == "qwen":
        return (request.getfixturevalue("tiny_qwen3_model"),
                request.getfixturevalue("qwen_bundle"))
    return (request.getfixturevalue("tiny_mistral_model"),
            request.getfixturevalue("mistral_bundle"))


def st_model(folder: Path) -> object:
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(folder), device="cpu")


def test_manifest_says_last_token_and_prompts(qwen_bundle: Path, mistral_bundle: Path) -> None:
    qwen, mistral = load_manifest(qwen_bundle), load_manifest(mistral_bundle)
    for manifest in (qwen, mistral):
        assert manifest.pooling == "last" and manifest.normalize
        assert manifest.max_tokens == DECODER_MAX_SEQ_LENGTH
        assert "position_ids" in manifest.inputs
    # empty prompts (documents) are no prompt at all
    # An empty prompt is kept: input_type names it as in sentence-transformers.
    assert qwen.prompts == QWEN_PROMPTS
    assert mistral.prompts == MISTRAL_PROMPTS


def test_tokenizer_reproduces_eos_and_padding_side(
        tiny_qwen3_model: Path, tiny_mistral_model: Path, qwen_bundle: Path,
        mistral_bundle: Path) -> None:
    from transformers import AutoTokenizer

    for src, bundle, side in ((tiny_qwen3_model, qwen_bundle, "left"),
                              (tiny_mistral_model, mistral_bundle, "right")):
        reference = AutoTokenizer.from_pretrained(str(src))  # type: ignore[no-untyped-call]
        tok = BundleModel(bundle).tokenizer
        assert tok.padding_side == side == reference.padding_side
        for text in TEXTS:
            want = reference(text, truncation=True, max_length=DECODER_MAX_SEQ_LENGTH)
            assert tok.encode([text])[0].ids.tolist() == want["input_ids"]
        # every input ends with the EOS the model was trained to read
        eos = reference.convert_tokens_to_ids(QWEN_EOS if src == tiny_qwen3_model else "</s>")
        assert tok.suffix == [eos]
    # Mistral's EOS comes from tokenizer_config.json's add_eos_token, not its tokenizer.json
    saved = json.loads((tiny_mistral_model / "tokenizer.json").read_text(encoding="utf-8"))
    assert "</s>" not in json.dumps(saved["post_processor"])
    assert BundleModel(mistral_bundle).tokenizer.prefix == [1]  # <s>


def test_parity_with_sentence_transformers_encode(pair: tuple[Path, Path]) -> None:
    src, bundle = pair
    st = st_model(src)
    model = BundleModel(bundle)
    texts = [*TEXTS, LONG]
    want = st.encode(texts, batch_size=4, convert_to_numpy=True)  # type: ignore[attr-defined]
    got = model.embed(texts)
    assert cosines(want, got).min() >= PARITY
    for name, prompt in st.prompts.items():  # type: ignore[attr-defined]
        want = st.encode(texts, prompt_name=name, batch_size=4)  # type: ignore[attr-defined]
        assert cosines(want, model.embed(texts, prompt=prompt)).min() >= PARITY, name


def test_truncation_counts_and_eos_as_sentence_transformers(pair: tuple[Path, Path]) -> None:
    src, bundle = pair
    st = st_model(src)
    tokenizer = st.tokenizer  # type: ignore[attr-defined]
    cut = tokenizer(LONG, truncation=True, max_length=st.max_seq_length)["input_ids"]  # type: ignore[attr-defined]
    full = tokenizer(LONG)["input_ids"]
    got = BundleModel(bundle).tokenizer.encode([LONG])[0]
    assert got.truncated
    assert got.original_tokens == len(full) > DECODER_MAX_SEQ_LENGTH
    assert got.ids.tolist() == cut
    assert got.ids[-1] == full[-1]  # the EOS survives the cut, as in sentence-transformers


def test_last_real_token_whatever_the_padding_side(pair: tuple[Path, Path],
                                                   tmp_path: Path) -> None:
    _, bundle = pair
    flipped = Path(shutil.copytree(bundle, tmp_path / "flipped"))
    data = json.loads((flipped / "tokenizer.json").read_text(encoding="utf-8"))
    side = data["padding"]["direction"]
    data["padding"]["direction"] = "Right" if side == "Left" else "Left"
    (flipped / "tokenizer.json").write_text(json.dumps(data), encoding="utf-8")
    a, b = BundleModel(bundle), BundleModel(flipped)
    assert a.tokenizer.padding_side != b.tokenizer.padding_side
    texts = [*TEXTS, LONG]
    assert cosines(a.embed(texts), b.embed(texts)).min() >= INVARIANCE


def test_batch_invariant(pair: tuple[Path, Path]) -> None:
    _, bundle = pair
    model = BundleModel(bundle)
    rows = [t.ids for t in model.tokenizer.encode([LONG, *TEXTS])]
    together = model.finish(model.run(rows))
    for i, row in enumerate(rows):
        alone = model.finish(model.run([row]))
        assert float(cosines(alone, together[i:i + 1])[0]) >= INVARIANCE, i


def test_quantize_auto(pair: tuple[Path, Path], tmp_path: Path) -> None:
    _, bundle = pair
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


def test_export_refuses_left_truncation(tiny_qwen3_model: Path, tmp_path: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    src = Path(shutil.copytree(tiny_qwen3_model, tmp_path / "left-cut"))
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


def test_vectors_differ_between_inputs(qwen_bundle: Path) -> None:
    # the twins are not collapsed to one vector: the checks above compare something
    vectors = BundleModel(qwen_bundle).embed(TEXTS)
    sims = vectors @ vectors.T
    assert float(np.min(sims)) < 0.9
