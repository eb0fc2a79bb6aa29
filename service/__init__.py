"""edge-embed: the serving runtime (aiohttp + onnxruntime)."""
