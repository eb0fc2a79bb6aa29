"""edge-embed: the serving runtime (aiohttp + onnxruntime)."""

__version__ = "0.1.0"
