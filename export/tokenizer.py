"""The bundle's tokenizer.json: the source's tokenizer, cut at the model's real limit.

Tokenizer files often carry settings for some other use: all-MiniLM-L6-v2's pads and truncates
to a fixed 128 tokens while the model was trained at 256. The bundle's file truncates at the
manifest's max_tokens and pads only to the longest input of a batch (never to a fixed length);
the padding entry stays so that readers learn the pad token's id (RoBERTa-style models derive
position ids from it) and the side the model pads on (decoders pad on the left).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from edge_embed.core.tooling import ToolError

TOKENIZER_FILE = "tokenizer.json"


def source_tokenizer(folder: Path, trust_remote_code: bool = False) -> Any:
    """The tokenizer transformers (and so sentence-transformers) really uses for this folder.

    Its backend, not the raw tokenizer.json: transformers re-applies tokenizer_config.json
    (BertTokenizerFast rebuilds the normalizer when `do_lower_case` disagrees with the file), and
    the bundle must tokenize as the model was used. Older folders without tokenizer.json (only
    vocab.txt or a sentencepiece model) are converted the same way.
    """
    try:
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(  # type: ignore[no-untyped-call]
            str(folder), use_fast=True, local_files_only=True,
            trust_remote_code=trust_remote_code)
    except Exception as exc:  # tokenizer loading raises many kinds
        raise ToolError(f"transformers could not load the tokenizer in {folder}: "
                        f"{type(exc).__name__}: {str(exc).strip()[:200]}") from None


def _load(folder: Path, fast: Any) -> tuple[Any, str]:
    """The backend tokenizer and the side transformers pads on for this model.

    Special tokens come with the backend: its post-processor adds them (Qwen3-Embedding's
    tokenizer.json appends `<|endoftext|>`; for Llama/Mistral tokenizers transformers rebuilds it
    from tokenizer_config.json's `add_bos_token` / `add_eos_token` at load time), and a cut keeps
    them, as sentence-transformers' own tokenizer call does.
    """
    side = "left" if getattr(fast, "padding_side", "right") == "left" else "right"
    if getattr(fast, "truncation_side", "right") == "left":
        # The service cuts an over-long input at its end (tokenizer.json's truncation, and the
        # same cut for token-id input); a model that keeps the end of its inputs would get
        # other tokens than sentence-transformers feeds it.
        raise ToolError(f"{folder / 'tokenizer_config.json'}: truncation_side 'left' is not "
                        "supported (edge-embed cuts over-long inputs at their end); no bundle "
                        "written")
    if not getattr(fast, "is_fast", False):
        if (folder / TOKENIZER_FILE).is_file():
            from tokenizers import Tokenizer

            try:
                return Tokenizer.from_file(str(folder / TOKENIZER_FILE)), side
            except Exception as exc:  # tokenizers raises a bare Exception on a bad file
                raise ToolError(f"{folder / TOKENIZER_FILE} is not a valid tokenizers file "
                                f"({exc})") from None
        raise ToolError(f"{folder} has no {TOKENIZER_FILE} and no fast tokenizer to convert")
    from tokenizers import Tokenizer

    # a copy: the bundle's truncation and padding must not change the caller's tokenizer
    return Tokenizer.from_str(fast.backend_tokenizer.to_str()), side


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


def write(folder: Path, out: Path, max_tokens: int, pad_token_id: int | None,
          source: Any) -> Any:
    """Write `out/tokenizer.json` from `source`, the transformers tokenizer the model is used
    with (`source_tokenizer`, or the one sentence-transformers loaded for an ST folder);
    returns the tokenizers.Tokenizer."""
    tok, side = _load(folder, source)
    pad = _pad_token(tok, pad_token_id)
    tok.enable_truncation(max_length=max_tokens)
    if pad is None:
        tok.no_padding()
    else:
        # length=None: pad to the batch's longest input, never to a fixed size. The side is the
        # model's own (decoders pad on the left): the service pads as the file says.
        tok.enable_padding(pad_id=pad[1], pad_token=pad[0], length=None, direction=side)
    tok.save(str(out / TOKENIZER_FILE))
    return tok
