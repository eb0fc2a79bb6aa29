"""Reading sentence-transformers folders in both formats (classic, and what 5.x saves), plain
Hugging Face folders, the token limit sentence-transformers applies (proved at export), and
models that need remote code.

The format readers are tested on folders of JSON files alone (no weights needed); the limit's
proof and the remote-code refusal run the exporter as a user does.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edge_embed.core.bundle import load_manifest
from edge_embed.core.encoder import BundleModel
from edge_embed.core.tooling import ToolError
from edge_embed.export import st_config
from edge_embed.export.cli import main
from tests.fixtures.encoders import build_twin
from tests.fixtures.tiny import build_tiny_model, run_export

POSITIONS = 128
NEW_TRANSFORMER = "sentence_transformers.base.modules.transformer.Transformer"
NEW_POOLING = "sentence_transformers.sentence_transformer.modules.pooling.Pooling"
NEW_NORMALIZE = "sentence_transformers.sentence_transformer.modules.normalize.Normalize"
NEW_DENSE = "sentence_transformers.base.modules.dense.Dense"
OLD = "sentence_transformers.models."


def write(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data), encoding="utf-8")


def folder_of(tmp_path: Path, modules: list[str] | None, pooling: dict[str, Any] | None = None,
              st: dict[str, Any] | None = None) -> Path:
    """A model folder of configuration files only: config.json, and modules.json naming
    `modules` (with 1_Pooling/config.json = `pooling`) and config_sentence_transformers.json."""
    folder = tmp_path / "model"
    write(folder / "config.json", {"model_type": "bert", "hidden_size": 32, "vocab_size": 100,
                                   "max_position_embeddings": POSITIONS, "pad_token_id": 0})
    if modules is not None:
        paths = {"Pooling": "1_Pooling", "Normalize": "2_Normalize", "Dense": "2_Dense"}
        write(folder / "modules.json", [
            {"idx": i, "name": str(i), "type": kind,
             "path": next((p for k, p in paths.items() if kind.endswith(k)), "")}
            for i, kind in enumerate(modules)])
        write(folder / "1_Pooling" / "config.json", pooling or {"pooling_mode": "mean"})
    if st is not None:
        write(folder / "config_sentence_transformers.json", st)
    return folder


@pytest.mark.parametrize("pooling,expected", [
    ({"pooling_mode_mean_tokens": True, "pooling_mode_cls_token": False}, "mean"),
    ({"pooling_mode_cls_token": True}, "cls"),
    ({"pooling_mode_lasttoken": True}, "last"),
    ({"embedding_dimension": 32, "pooling_mode": "mean", "include_prompt": True}, "mean"),
    ({"pooling_mode": "cls"}, "cls"),
    ({"pooling_mode": "lasttoken"}, "last"),
    ({"pooling_mode": ["mean"]}, "mean"),
])
def test_pooling_in_either_format(tmp_path: Path, pooling: dict[str, Any],
                                  expected: str) -> None:
    for names in ([f"{OLD}Transformer", f"{OLD}Pooling", f"{OLD}Normalize"],
                  [NEW_TRANSFORMER, NEW_POOLING, NEW_NORMALIZE]):
        shutil.rmtree(tmp_path / "model", ignore_errors=True)
        settings = st_config.read_settings(folder_of(tmp_path, names, pooling))
        assert (settings.pooling, settings.normalize) == (expected, True)
        assert settings.library == "sentence-transformers"
        assert "pooling" not in settings.defaults and "normalize" not in settings.defaults


@pytest.mark.parametrize("pooling,needle", [
    ({"pooling_mode": "max"}, "pooling 'max' is not supported"),
    ({"pooling_mode": "weightedmean"}, "pooling 'weightedmean' is not supported"),
    ({"pooling_mode_mean_sqrt_len_tokens": True}, "pooling 'mean_sqrt_len_tokens'"),
    ({"pooling_mode": ["mean", "cls"]}, "found mean, cls"),
    ({"pooling_mode_mean_tokens": True, "pooling_mode_max_tokens": True}, "found max, mean"),
    ({"pooling_mode": "median"}, "unknown pooling mode 'median'"),
    ({"pooling_mode": 3}, "'pooling_mode' must be a mode name"),
])
def test_pooling_refusals_name_the_file(tmp_path: Path, pooling: dict[str, Any],
                                        needle: str) -> None:
    folder = folder_of(tmp_path, [NEW_TRANSFORMER, NEW_POOLING], pooling)
    with pytest.raises(ToolError, match=r"1_Pooling/config\.json") as info:
        st_config.read_settings(folder)
    assert needle in str(info.value)


@pytest.mark.parametrize("module", [NEW_DENSE, f"{OLD}Dense", "custom_st.Transformer"])
def test_a_module_after_the_transformer_is_refused(tmp_path: Path, module: str) -> None:
    folder = folder_of(tmp_path, [NEW_TRANSFORMER, NEW_POOLING, module])
    with pytest.raises(ToolError, match=f"modules.json: module '{module}' is not supported"):
        st_config.read_settings(folder)


def test_prompts_keep_an_empty_one(tmp_path: Path) -> None:
    # 5.x saves `"document": ""`: a valid prompt name that adds nothing, as in ST's encode
    prompts = {"query": "query: ", "document": ""}
    folder = folder_of(tmp_path, [NEW_TRANSFORMER, NEW_POOLING],
                       st={"prompts": prompts, "default_prompt_name": None})
    settings = st_config.read_settings(folder)
    assert settings.prompts == prompts and "prompts" not in settings.defaults


def test_a_default_prompt_is_refused(tmp_path: Path) -> None:
    folder = folder_of(tmp_path, [NEW_TRANSFORMER, NEW_POOLING],
                       st={"prompts": {"query": "q: "}, "default_prompt_name": "query"})
    with pytest.raises(ToolError, match="default_prompt_name 'query' is not supported"):
        st_config.read_settings(folder)


def test_pooling_without_the_prompt_is_refused(tmp_path: Path) -> None:
    folder = folder_of(tmp_path, [NEW_TRANSFORMER, NEW_POOLING],
                       {"pooling_mode": "mean", "include_prompt": False},
                       st={"prompts": {"query": "q: "}})
    with pytest.raises(ToolError, match="include_prompt false"):
        st_config.read_settings(folder)
    # without prompts there is nothing to leave out: the same vectors
    (folder / "config_sentence_transformers.json").unlink()
    assert st_config.read_settings(folder).pooling == "mean"


def test_plain_folder_records_its_fallbacks(tmp_path: Path) -> None:
    settings = st_config.read_settings(folder_of(tmp_path, None))
    assert settings.library == "transformers"
    assert (settings.pooling, settings.normalize, settings.max_tokens) == ("mean", False,
                                                                           POSITIONS)
    assert set(settings.defaults) == {"pooling", "normalize", "max_tokens", "prompts"}


def test_the_st_limit_replaces_the_fallback_unless_given(tmp_path: Path) -> None:
    folder = folder_of(tmp_path, [NEW_TRANSFORMER, NEW_POOLING])
    settings = st_config.with_st_limit(st_config.read_settings(folder), 32)
    assert settings.max_tokens == 32 and "max_tokens" not in settings.defaults
    given = st_config.read_settings(folder, max_tokens=16)
    assert st_config.with_st_limit(given, 32).max_tokens == 16
    with pytest.raises(ToolError, match="cuts this model's inputs at 600 tokens, beyond its 128"):
        st_config.with_st_limit(st_config.read_settings(folder), 600)


# ---- the exporter, as a user runs it ----------------------------------------------------------
def refusal(result: subprocess.CompletedProcess[str]) -> str:
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2, result.stderr
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert lines[0].startswith("edge-embed export: error: ")
    return lines[0]


@pytest.fixture(scope="module")
def st5_bert(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny BERT as sentence-transformers 5.x saves it, limit 48 (no max_seq_length in
    sentence_bert_config.json: the limit is in tokenizer_config.json)."""
    return build_twin(tmp_path_factory.mktemp("st5") / "bert", "bert-cls", "st5")


def test_the_5x_folder_keeps_its_limit_outside_sentence_bert_config(st5_bert: Path,
                                                                    tmp_path: Path) -> None:
    config = json.loads((st5_bert / "sentence_bert_config.json").read_text(encoding="utf-8"))
    assert "max_seq_length" not in config  # what made the old reader fall back to 128
    modules = json.loads((st5_bert / "modules.json").read_text(encoding="utf-8"))
    assert modules[0]["type"] == NEW_TRANSFORMER
    assert main([str(st5_bert), "--out", str(tmp_path / "b"), "--quiet"]) == 0
    assert load_manifest(tmp_path / "b").max_tokens == 48


def test_a_cut_that_differs_from_sentence_transformers_is_refused(st5_bert: Path,
                                                                  tmp_path: Path) -> None:
    # sentence-transformers honours processor arguments saved with the module: here it cuts at
    # 16 although max_seq_length says 48. The bundle would cut at 48; the export must notice.
    src = Path(shutil.copytree(st5_bert, tmp_path / "src"))
    path = src / "sentence_bert_config.json"
    config = json.loads(path.read_text(encoding="utf-8"))
    config["processing_kwargs"] = {"text": {"max_length": 16}}
    path.write_text(json.dumps(config), encoding="utf-8")
    line = refusal(run_export(str(src), "--out", str(tmp_path / "out")))
    assert "sentence-transformers cuts an over-long input at 16 tokens, the bundle at 48" in line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src"]
    # the user's own limit, where sentence-transformers then cuts too, is accepted
    assert main([str(src), "--out", str(tmp_path / "out"), "--max-tokens", "16",
                 "--quiet"]) == 0
    assert load_manifest(tmp_path / "out").max_tokens == 16


REMOTE_CODE = '''
from transformers import BertModel


class ShiftedBert(BertModel):
    """A test's remote code: BERT with every token state shifted, so the export shows it ran."""

    def forward(self, input_ids=None, attention_mask=None, token_type_ids=None, **kwargs):
        out = super().forward(input_ids=input_ids, attention_mask=attention_mask,
                              token_type_ids=token_type_ids, **kwargs)
        out.last_hidden_state = out.last_hidden_state + 1.0
        return out
'''


@pytest.fixture()
def remote_model(tmp_path: Path) -> Path:
    src = build_tiny_model(tmp_path / "remote", sentence_transformers=False)
    (src / "modeling_shifted.py").write_text(REMOTE_CODE, encoding="utf-8")
    config = json.loads((src / "config.json").read_text(encoding="utf-8"))
    config["auto_map"] = {"AutoModel": "modeling_shifted.ShiftedBert"}
    (src / "config.json").write_text(json.dumps(config), encoding="utf-8")
    return src


def test_remote_code_is_refused_without_the_flag(remote_model: Path, tmp_path: Path) -> None:
    line = refusal(run_export(str(remote_model), "--out", str(tmp_path / "out")))
    assert "config.json: the model needs remote code" in line
    assert "modeling_shifted.ShiftedBert" in line and "--trust-remote-code" in line
    assert not (tmp_path / "out").exists()


def test_remote_code_runs_with_the_flag(remote_model: Path, tmp_path: Path) -> None:
    env = {"HF_MODULES_CACHE": str(tmp_path / "modules")}  # transformers copies the code here
    result = run_export(str(remote_model), "--out", str(tmp_path / "out"),
                        "--trust-remote-code", env=env)
    assert result.returncode == 0, result.stderr
    plain = Path(shutil.copytree(remote_model, tmp_path / "plain"))
    config = json.loads((plain / "config.json").read_text(encoding="utf-8"))
    del config["auto_map"]
    (plain / "config.json").write_text(json.dumps(config), encoding="utf-8")
    assert main([str(plain), "--out", str(tmp_path / "plain-out"), "--quiet"]) == 0
    texts = ["hello", "The quick brown fox jumps over the lazy dog."]
    shifted = BundleModel(tmp_path / "out").embed(texts)
    unshifted = BundleModel(tmp_path / "plain-out").embed(texts)
    # the remote module (states + 1) is what was exported, not the plain BERT it extends
    assert np.allclose(shifted, unshifted + 1.0, atol=1e-4)
