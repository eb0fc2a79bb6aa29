"""/tokenize, /detokenize and /decode (service/tokenize.py): TEI's and vLLM's shapes, counts equal
to what /v1/embeddings reports for the same input, the cut said, bad bodies named."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from tokenizers import Tokenizer

from edge_embed.core.encoder import BundleModel
from tests.fixtures.server import MakeClient

TEXTS = ["The quick brown fox jumps over the lazy dog.", "A cat sleeps on the windowsill."]
KEY = "sk-tokenize-test-0123456789"


@pytest.fixture(scope="module")
def reference(tiny_bundle: Path) -> BundleModel:
    return BundleModel(tiny_bundle)


async def post(client: Any, path: str, body: Any,
               headers: dict[str, str] | None = None) -> tuple[int, Any, Any]:
    resp = await client.post(path, json=body, headers=headers or {})
    return resp.status, await resp.json(), resp.headers


async def usage(client: Any, text: str, **extra: Any) -> tuple[int, int]:
    """(prompt_tokens, inputs cut) that /v1/embeddings reports for `text`."""
    status, body, headers = await post(client, "/v1/embeddings",
                                       {"model": "tiny", "input": text, **extra})
    assert status == 200, body
    return body["usage"]["prompt_tokens"], int(headers["X-Edge-Embed-Truncated"])


@pytest.mark.parametrize("input_type", [None, "query", "passage"])
async def test_vllm_count_is_the_embeddings_usage(make_client: MakeClient,
                                                  reference: BundleModel,
                                                  input_type: str | None) -> None:
    client = await make_client()
    limit = reference.manifest.max_tokens
    for text in (TEXTS[0], " ".join(["fox"] * (limit * 2))):
        body: dict[str, Any] = {"model": "tiny", "prompt": text}
        if input_type is not None:
            body["input_type"] = input_type
        status, got, _ = await post(client, "/tokenize", body)
        assert status == 200, got
        used, cut = await usage(client, text, **({"input_type": input_type}
                                                  if input_type else {}))
        assert got["used_tokens"] == len(got["tokens"]) == used
        assert got["truncated"] is bool(cut) and got["max_model_len"] == limit
        prompt = reference.manifest.prompts.get(input_type or "", "")
        whole = reference.tokenizer.encode([prompt + text])[0]
        assert got["count"] == whole.original_tokens and got["tokens"] == whole.ids.tolist()
    assert got["truncated"] and got["count"] > limit == got["used_tokens"]


async def test_tei_tokens_with_offsets_and_the_cut(make_client: MakeClient,
                                                   reference: BundleModel) -> None:
    client = await make_client()
    long = " ".join(["fox"] * 100)
    status, got, headers = await post(client, "/tokenize", {
        "model": "tiny", "inputs": [TEXTS[0], long], "prompt_name": "query"})
    assert status == 200 and headers["X-Edge-Embed-Truncated"] == "1"
    first, second = got
    assert first[0]["special"] and first[0]["start"] is None and first[-1]["special"]
    prompt_tokens = [t for t in first if not t["special"] and t["start"] is None]
    assert "".join(t["text"] for t in prompt_tokens) == "query:"
    for token in first:
        if token["start"] is not None:
            assert TEXTS[0][token["start"]:token["stop"]] == token["text"]
    ids = reference.tokenizer.encode(["query: " + TEXTS[0]])[0].ids.tolist()
    assert [t["id"] for t in first] == ids
    assert len(second) == reference.manifest.max_tokens
    assert [t["id"] for t in second] == reference.tokenizer.encode(
        ["query: " + long])[0].ids.tolist()

    status, plain, _ = await post(client, "/tokenize", {
        "model": "tiny", "inputs": TEXTS[1], "add_special_tokens": False})
    assert status == 200 and not any(t["special"] for t in plain[0])
    assert [t["id"] for t in plain[0]] == reference.tokenizer.encode(
        [TEXTS[1]])[0].ids.tolist()[1:-1]


async def test_model_may_be_left_out_only_where_one_is_usable(make_client: MakeClient) -> None:
    client = await make_client(api_keys=(KEY,))
    auth = {"Authorization": f"Bearer {KEY}"}
    status, body, _ = await post(client, "/tokenize", {"inputs": "hello"}, auth)
    assert status == 400 and body["error"]["param"] == "model"
    assert (await post(client, "/tokenize", {"inputs": "hello", "model": "tiny"}))[0] == 401
    assert (await post(client, "/tokenize", {"inputs": "hello", "model": "tiny"}, auth))[0] == 200


async def test_detokenize_round_trips(make_client: MakeClient, reference: BundleModel) -> None:
    client = await make_client()
    ids = reference.tokenizer.encode([TEXTS[1]])[0].ids.tolist()
    status, body, _ = await post(client, "/detokenize", {"model": "tiny", "tokens": ids})
    expected = Tokenizer.from_file(str(reference.folder / "tokenizer.json")).decode(ids)
    assert status == 200 and body == {"prompt": expected}
    assert expected.lower().startswith("a cat")
    status, body, _ = await post(client, "/decode", {"model": "tiny", "ids": [ids, ids[:3]]})
    assert status == 200 and body[0] == expected and len(body) == 2
    status, body, _ = await post(client, "/decode", {"model": "tiny", "ids": ids,
                                                    "skip_special_tokens": False})
    assert status == 200 and body.startswith("[CLS]")


@pytest.mark.parametrize(("path", "body", "param"), [
    ("/tokenize", {"model": "tiny"}, "inputs"),
    ("/tokenize", {"model": "tiny", "inputs": "x", "prompt": "y"}, "prompt"),
    ("/tokenize", {"model": "tiny", "inputs": ""}, "inputs"),
    ("/tokenize", {"model": "tiny", "inputs": ["x", 3]}, "inputs"),
    ("/tokenize", {"model": "tiny", "inputs": []}, "inputs"),
    ("/tokenize", {"model": "tiny", "prompt": ["x"]}, "prompt"),
    ("/tokenize", {"model": "tiny", "prompt": "x", "add_special_tokens": "yes"},
     "add_special_tokens"),
    ("/tokenize", {"model": "tiny", "inputs": "x", "prompt_name": "code"}, "prompt_name"),
    ("/tokenize", {"model": "tiny", "prompt": "x", "input_type": 7}, "input_type"),
    ("/tokenize", {"model": "tiny", "inputs": "x", "input_type": "query"}, "input_type"),
    ("/tokenize", {"model": 5, "inputs": "x"}, "model"),
    ("/tokenize", ["x"], "body"),
    ("/detokenize", {"model": "tiny", "tokens": [1, 2.5]}, "tokens"),
    ("/detokenize", {"model": "tiny", "tokens": [1, 10**9]}, "tokens"),
    ("/detokenize", {"model": "tiny", "tokens": []}, "tokens"),
    ("/detokenize", {"model": "tiny", "tokens": [1], "ids": [1]}, "ids"),
    ("/decode", {"model": "tiny", "ids": [[1], "x"]}, "ids"),
    ("/decode", {"model": "tiny", "ids": [1], "skip_special_tokens": 1}, "skip_special_tokens"),
])
async def test_bad_bodies_name_the_field(make_client: MakeClient, path: str, body: Any,
                                         param: str) -> None:
    client = await make_client()
    status, got, _ = await post(client, path, body)
    assert status == 400, got
    assert got["error"]["param"] == param, got
    assert got["error"]["type"] == "invalid_request_error"


async def test_unknown_model_is_404(make_client: MakeClient) -> None:
    client = await make_client()
    status, got, _ = await post(client, "/tokenize", {"model": "nope", "prompt": "x"})
    assert status == 404 and got["error"]["code"] == "model_not_found"


def test_start_cut_keeps_the_end_as_left_truncation_does(reference: BundleModel) -> None:
    """`cut="start"`, from a bounded suffix, gives the tokenizer's own left truncation."""
    tokenizer = reference.tokenizer
    limit = reference.manifest.max_tokens
    left = Tokenizer.from_file(str(reference.folder / "tokenizer.json"))
    left.enable_truncation(limit, direction="left")
    texts = [" ".join(TEXTS * 40), "x" + "the lazy dog jumps. " * 300, TEXTS[0]]
    got = tokenizer.encode(texts, cut="start")
    for text, tok in zip(texts, got, strict=True):
        assert tok.ids.tolist() == left.encode(text).ids
    # with a prompt: the prompt stays, the text after it loses its start
    (cut,) = tokenizer.encode(["query: " + texts[0]], cut="start", keep=len("query: "))
    prompt = tokenizer.encode(["query: "])[0].ids.tolist()[1:-1]
    room = limit - 2 - len(prompt)
    assert cut.ids.tolist() == [*left.encode(texts[0]).ids[:1], *prompt,
                                *left.encode(texts[0]).ids[-1 - room:]]
