"""The bundle's tokenizer.json: the source's tokenizer, cut at the model's real limit.

Tokenizer files often carry settings for some other use: all-MiniLM-L6-v2's pads and truncates
to a fixed 128 tokens while the model was trained at 256. The bundle's file truncates at the
manifest's max_tokens and pads only to the longest input of a batch (never to a fixed length);
the padding entry stays so that readers learn the pad token's id (RoBERTa-style models derive
position ids from it).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .tooling import ToolError

TOKENIZER_FILE = "tokenizer.json"


def _load(folder: Path) -> Any:
    from tokenizers import Tokenizer

    path = folder / TOKENIZER_FILE
    if path.is_file():
        try:
            return Tokenizer.from_file(str(path))
        except Exception as exc:  # tokenizers raises a bare Exception on a bad file
            raise ToolError(f"{path} is not a valid tokenizers file ({exc})") from None
    # No tokenizer.json (older models ship vocab.txt / sentencepiece only): let transformers
    # build the fast tokenizer it would use, and keep its backend.
    try:
        from transformers import AutoTokenizer

        fast = AutoTokenizer.from_pretrained(  # type: ignore[no-untyped-call]
            str(folder), use_fast=True, local_files_only=True)
    except Exception as exc:
        raise ToolError(f"{folder} has no {TOKENIZER_FILE} and transformers could not build "
                        f"one: {type(exc).__name__}: {str(exc).strip()[:200]}") from None
    if not getattr(fast, "is_fast", False):
        raise ToolError(f"{folder} has no {TOKENIZER_FILE} and no fast tokenizer to convert")
    return fast.backend_tokenizer


def _pad_token(tok: Any, pad_token_id: int | None) -> tuple[str, int] | None:
    padding = tok.padding
    if padding:
        return str(padding["pad_token"]), int(padding["pad_id"])
    if pad_token_id is not None:
        token = tok.id_to_token(pad_token_id)
        if token is not None:
            return str(token), pad_token_id
    for name in ("[PAD]", "<pad>", "<|pad|>"):
        token_id = tok.token_to_id(name)
        if token_id is not None:
            return name, int(token_id)
    return None


def write(folder: Path, out: Path, max_tokens: int, pad_token_id: int | None) -> Any:
    """Write `out/tokenizer.json` from the source folder; returns the tokenizers.Tokenizer."""
    tok = _load(folder)
    pad = _pad_token(tok, pad_token_id)
    tok.enable_truncation(max_length=max_tokens)
    if pad is None:
        tok.no_padding()
    else:
        # length=None: pad to the batch's longest input, never to a fixed size.
        tok.enable_padding(pad_id=pad[1], pad_token=pad[0], length=None)
    tok.save(str(out / TOKENIZER_FILE))
    return tok
