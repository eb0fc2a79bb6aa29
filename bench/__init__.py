"""`edge-embed bench`: the service against raw onnxruntime and sentence-transformers, over HTTP."""
