"""The repository stands alone: no tracked file cites notes kept outside it, and the committed test
data stays small."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

from tests.fixtures.tiny import COMMITTED_BUNDLES, TINY_BUNDLE_ID, TINY_CLS_BUNDLE_ID

ROOT = Path(__file__).resolve().parents[1]
# Citations of documents that are not in the repository: the team's notes files, the folder they
# live in beside the checkout, and issues, by number or not. A comment or doc states the fact
# itself instead. Each pattern is written so that it does not match its own source.
CITATION = re.compile(
    r"FINDING[S]"
    r"|DESIG[N]\.md"
    r"|\.\.[/]shared"
    r"|\b[Ii]ssue\W{0,4}[0-9]"  # a number after it, also across a wrapped comment line
    r"|\b[Tt]he (?:\w+ )?[i]ssue\b"  # after "the", with at most one word between
)
# Both committed tiny bundles together: two ~170 KB graphs and their tokenizers. A megabyte
# would mean a much larger model was committed by mistake.
MAX_TEST_DATA_BYTES = 1_000_000


def tracked_files() -> list[Path]:
    result = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True)
    return [ROOT / name for name in result.stdout.decode().split("\0") if name]


def citations(text: str) -> list[str]:
    return [m.group(0) for m in CITATION.finditer(text)]


def test_the_pattern_finds_every_kind_of_citation() -> None:
    cited = ["see FIND" + "INGS.md", "the contract of DESIGN" + ".md", "in .." + "/shared/",
             "Deadlines (issue" + " 5, item 2)", "Issue" + " 2's defaults", "(issue\n# " + "2)",
             "the " + "issue asks", "The " + "issue's bar", "the benchmark " + "issue (item 2)"]
    assert [len(citations(text)) for text in cited] == [1] * len(cited)
    plain = ["issues of the week", "to issue a request", "tissue", "findings were published"]
    assert [citations(text) for text in plain] == [[]] * len(plain)


def test_no_tracked_file_cites_notes_outside_the_repository() -> None:
    files = tracked_files()
    assert ROOT / "pyproject.toml" in files
    found = []
    for path in files:
        if not path.is_file():  # deleted in the work tree, not yet in the index
            continue
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:  # a binary file (the committed ONNX graphs)
            continue
        for number, line in enumerate(text.splitlines(), 1):
            found += [f"{path.relative_to(ROOT)}:{number}: {hit!r}" for hit in citations(line)]
        # A citation wrapped over two comment lines
        found += [f"{path.relative_to(ROOT)}: {hit!r} (over two lines)"
                  for hit in citations(text) if "\n" in hit]
    assert not found, "state the fact itself, or put it in docs/:\n" + "\n".join(found)


def test_committed_tiny_bundles_are_small_and_whole() -> None:
    folders = [COMMITTED_BUNDLES / TINY_BUNDLE_ID, COMMITTED_BUNDLES / TINY_CLS_BUNDLE_ID]
    for folder in folders:
        assert sorted(p.name for p in folder.iterdir()) == [
            "bundle.json", "canary.json", "model.onnx", "tokenizer.json"], folder
    size = sum(p.stat().st_size for folder in folders for p in folder.iterdir())
    assert 0 < size < MAX_TEST_DATA_BYTES
