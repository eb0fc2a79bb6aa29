"""Models whose Python code comes with the model folder (config `auto_map`: nomic-bert,
jina-bert, ...): refused unless the user says they trust it.

transformers runs such code when it loads the config, the tokenizer or the weights, so the
check happens before anything is loaded; with --trust-remote-code the choice is passed on to
transformers and sentence-transformers (optimum exports the module transformers built).
"""

from __future__ import annotations

from pathlib import Path

from edge_embed.core.tooling import ToolError

from .st_config import read_json

# The files whose `auto_map` makes transformers import code from the model folder or the hub.
_CODE_MAPS = ("config.json", "tokenizer_config.json")


def needs_remote_code(folder: Path) -> tuple[Path, list[str]] | None:
    """The first file naming remote code, and the classes it names; None when there is none."""
    for name in _CODE_MAPS:
        path = folder / name
        if not path.is_file():
            continue
        data = read_json(path)
        auto_map = data.get("auto_map") if isinstance(data, dict) else None
        if auto_map:
            refs = auto_map.values() if isinstance(auto_map, dict) else [auto_map]
            classes = [r for ref in refs for r in (ref if isinstance(ref, list) else [ref])
                       if isinstance(r, str)]
            return path, classes
    return None


def check(folder: Path, trust_remote_code: bool) -> None:
    found = needs_remote_code(folder)
    if found is None or trust_remote_code:
        return
    path, classes = found
    named = f" ({', '.join(sorted(set(classes))[:4])})" if classes else ""
    raise ToolError(f"{path}: the model needs remote code: 'auto_map' names Python classes"
                    f"{named} that would run on this machine; pass --trust-remote-code if you "
                    "trust them")
