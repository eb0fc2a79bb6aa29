"""The one evaluation set and its loader, which export's parity check and quantize's judging
both read (so that both name the same texts alike in the manifests they write)."""

from __future__ import annotations

from pathlib import Path

import pytest

from edge_embed.core.evalset import DEFAULT_EVAL_SET, load_eval_set
from edge_embed.core.tooling import ToolError


def test_the_shipped_set_is_package_data_beside_the_loader() -> None:
    shipped = load_eval_set()
    assert DEFAULT_EVAL_SET.is_file() and DEFAULT_EVAL_SET.parent.parent.name == "core"
    assert shipped.name.startswith("eval.jsonl@") and len(shipped.items) > 100
    assert len(shipped.texts) == len(shipped.items)  # file order, nothing dropped or merged
    assert {"para", "word", "long", "multi"} <= set(shipped.kinds())


def test_items_in_file_order_and_named_by_content(tmp_path: Path) -> None:
    path = tmp_path / "eval.jsonl"
    path.write_text('{"id": "1", "text": "one"}\n\n{"id": "2", "kind": "word", "text": "two"}\n'
                    '{"id": "3", "text": "  "}\n', encoding="utf-8")
    loaded = load_eval_set(path)
    assert loaded.texts == ["one", "two"] and loaded.kinds() == ["para", "word"]
    renamed = tmp_path / "other.jsonl"
    renamed.write_bytes(path.read_bytes() + b'{"id": "4", "text": "four"}\n')
    assert load_eval_set(renamed).name.split("@")[1] != loaded.name.split("@")[1]


BAD_LINE = "eval.jsonl:2: not an evaluation item"


@pytest.mark.parametrize(("content", "says"), [
    ('{"id": "1", "text": "one"}\n{"id": "2", "text": "two"\n', BAD_LINE),
    ('{"id": "1", "text": "one"}\n{"text": "no id"}\n', BAD_LINE),
    ('{"id": "1", "text": "one"}\n["a list"]\n', BAD_LINE),
    ('{"id": "1", "text": "one"}\n', "needs at least two non-empty items"),
])
def test_a_bad_file_is_refused_by_line(tmp_path: Path, content: str, says: str) -> None:
    path = tmp_path / "eval.jsonl"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(ToolError, match=says):
        load_eval_set(path)


def test_a_missing_file_is_refused_by_name(tmp_path: Path) -> None:
    with pytest.raises(ToolError, match=r"cannot read the evaluation set .*absent\.jsonl"):
        load_eval_set(tmp_path / "absent.jsonl")
