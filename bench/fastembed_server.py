"""fastembed's `TextEmbedding` behind a minimal HTTP layer: the lone-query peer `make bench` runs.

    .venv-fastembed/bin/python bench/fastembed_server.py --model-dir DIR --host H --port P

Runs in a venv of its own (`make install-fastembed`: fastembed pins a newer `tokenizers` than the
export stack), so it imports nothing of edge_embed: the standard library, aiohttp, numpy and
fastembed alone. DIR is what bench/fastembed_peer.py lays out: the peers' int8 graph (onnxruntime
`quantize_dynamic` of our fp32 graph) with the bundle's tokenizer, loaded through fastembed's
custom-model API from that folder (`specific_model_path`, no download). fastembed builds its
onnxruntime session itself (one session, its own thread count: every CPU).

The layer is as thin as a server can be: the handler embeds inline on the event loop (no thread
hop, no batching across requests), parses with the standard library and answers base64 or float
vectors in OpenAI's shape. It listens only once the model is loaded and has embedded once, so its
first answer is its first embedding.
"""

from __future__ import annotations

import argparse
import base64
import json
import sys
from typing import Any

import numpy as np
from aiohttp import web
from fastembed import TextEmbedding
from fastembed.common.model_description import ModelSource, PoolingType

# The name the custom model is registered under in fastembed (any name it does not ship).
MODEL_NAME = "edge-embed/peer-int8"


def load(model_dir: str, dim: int) -> TextEmbedding:
    TextEmbedding.add_custom_model(model=MODEL_NAME, pooling=PoolingType.MEAN, normalization=True,
                                   sources=ModelSource(hf=MODEL_NAME), dim=dim,
                                   model_file="model.onnx")
    return TextEmbedding(model_name=MODEL_NAME, specific_model_path=model_dir)


def app(model: TextEmbedding, served_as: str) -> web.Application:
    async def embeddings(request: web.Request) -> web.Response:
        try:
            body: dict[str, Any] = json.loads(await request.read())
            texts = body["input"]
            texts = [texts] if isinstance(texts, str) else list(texts)
        except (ValueError, KeyError, TypeError) as exc:
            return web.json_response({"error": {"message": str(exc)}}, status=400)
        vectors = np.stack(list(model.embed(texts))).astype(np.float32)
        if body.get("encoding_format") == "base64":
            data = [{"object": "embedding", "index": i,
                     "embedding": base64.b64encode(v.tobytes()).decode()}
                    for i, v in enumerate(vectors)]
        else:
            data = [{"object": "embedding", "index": i, "embedding": v.tolist()}
                    for i, v in enumerate(vectors)]
        return web.json_response({"object": "list", "data": data, "model": served_as})

    async def ready(request: web.Request) -> web.Response:
        return web.json_response({"status": "ready"})

    application = web.Application(client_max_size=16 * 1024 * 1024)
    application.router.add_post("/v1/embeddings", embeddings)
    application.router.add_get("/ready", ready)
    return application


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model-dir", required=True)
    p.add_argument("--dim", type=int, required=True)
    p.add_argument("--served-as", default=MODEL_NAME)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    args = p.parse_args(argv)
    model = load(args.model_dir, args.dim)
    list(model.embed(["warm up"]))
    print(f"fastembed {MODEL_NAME} from {args.model_dir} on {args.host}:{args.port}",
          file=sys.stderr, flush=True)
    web.run_app(app(model, args.served_as), host=args.host, port=args.port, access_log=None,
                print=None)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
